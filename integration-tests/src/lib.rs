//! Tests live in `tests/it`; this crate has no library code, only the workspace-wide
//! checks below.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`, recursively.
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// The module arrows of one crate: top-level module → the top-level modules its
    /// non-test code names through `crate::` (comments and `#[cfg(test)]` code excluded;
    /// a directory module's files count as that module).
    fn arrows(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let mut all = Vec::new();
        files(src, &mut all);
        let module_of = |p: &Path| -> Option<String> {
            let rel = p.strip_prefix(src).ok()?;
            let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
            let m = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
            // The crate roots and binaries are not modules others import.
            (!matches!(m.as_str(), "lib" | "main" | "bin")).then_some(m)
        };
        let mods: BTreeSet<String> = all.iter().filter_map(|p| module_of(p)).collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = mods.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
        for p in &all {
            let Some(m) = module_of(p) else { continue };
            let text = std::fs::read_to_string(p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    // `aigw_x::crate::…` cannot occur; skip `$crate::` in macros.
                    if line[..i].ends_with('$') {
                        continue;
                    }
                    let dep: String =
                        line[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
                    if mods.contains(&dep) && dep != m {
                        edges.get_mut(&m).unwrap().insert(dep);
                    }
                }
            }
        }
        edges
    }

    fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
        fn visit(
            n: &str,
            edges: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<String> {
            if done.contains(n) {
                return None;
            }
            if path.iter().any(|p| p == n) {
                return Some(format!("{} -> {n}", path.join(" -> ")));
            }
            path.push(n.to_owned());
            for d in &edges[n] {
                if let Some(c) = visit(d, edges, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            done.insert(n.to_owned());
            None
        }
        let mut done = BTreeSet::new();
        edges.keys().find_map(|m| visit(m, edges, &mut Vec::new(), &mut done))
    }

    /// Module arrows inside every crate of the workspace point one way: a cycle is a
    /// failing test, not a review comment (ENGINEERING.md).
    #[test]
    fn no_import_cycles_between_modules_in_any_crate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut crates = 0;
        let mut proxy = None;
        for group in ["libs", "services"] {
            for e in std::fs::read_dir(root.join(group)).unwrap().flatten() {
                let src = e.path().join("src");
                if !src.is_dir() {
                    continue;
                }
                crates += 1;
                let edges = arrows(&src);
                if let Some(c) = cycle(&edges) {
                    panic!("import cycle in {}: {c}", e.path().display());
                }
                if e.file_name() == "proxy" {
                    proxy = Some(edges);
                }
            }
        }
        assert!(crates >= 12, "found only {crates} crates");
        // The scan sees the arrows (and directory modules).
        let p = proxy.expect("services/proxy");
        assert!(p["pipeline"].contains("respond") && p["respond"].contains("send"), "{p:?}");
        assert!(p["plugins"].contains("phases"), "{p:?}");
        // And finds a cycle when there is one.
        let mut bad = p.clone();
        bad.get_mut("phases").unwrap().insert("pipeline".into());
        assert!(cycle(&bad).is_some());
    }
}
