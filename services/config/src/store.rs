//! Durable embedded store: one JSON file per route under `<data-dir>/routes/`.
//!
//! A write goes to a temporary file that is fsynced, renamed over the route's file and
//! followed by an fsync of the directory, so an acknowledged write survives `kill -9`
//! and a torn write leaves only a temporary file, which the next start removes.
//! Writes are committed in groups ([`Store::commit`]): the files of a group are written
//! and fsynced in parallel (the filesystem journal merges concurrent fsyncs) and the
//! directory is fsynced once for the whole group.
//!
//! The data dir and the routes dir are 0700, every file 0600 (tightened at open).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupted route file: {msg}")]
    Corrupt { path: PathBuf, msg: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    tmp_counter: AtomicU64,
}

/// Temporary files end in `.tmp`; route files end in `.json`, so no route id can collide.
const TMP_SUFFIX: &str = ".tmp";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Threads writing one group's files in parallel.
const WRITERS: usize = 8;

/// Makes `path` private (mode `mode`) when it is not already.
fn tighten(path: &Path, mode: u32) -> Result<(), StoreError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    if meta.permissions().mode() & 0o777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))?;
        tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "made private");
    }
    Ok(())
}

impl Store {
    /// Opens (creating) the store, makes it private and loads every route.
    pub fn open(data_dir: &Path) -> Result<(Store, BTreeMap<String, Value>), StoreError> {
        let dir = data_dir.join("routes");
        fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&dir).map_err(io(&dir))?;
        tighten(data_dir, DIR_MODE)?;
        tighten(&dir, DIR_MODE)?;
        let mut routes = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(TMP_SUFFIX) {
                // Left by a write that never completed: it was never acknowledged.
                tracing::info!(file = %path.display(), "removing incomplete write");
                fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else { continue };
            tighten(&path, FILE_MODE)?;
            let bytes = fs::read(&path).map_err(io(&path))?;
            let value: Value =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { path: path.clone(), msg: e.to_string() })?;
            routes.insert(id.to_owned(), value);
        }
        Ok((Store { dir, tmp_counter: AtomicU64::new(0) }, routes))
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))
    }

    /// Writes one route's file durably except for the directory entry (temp file,
    /// fsync, rename).
    fn write_file(&self, id: &str, value: &Value) -> Result<(), StoreError> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{id}-{}-{n}{TMP_SUFFIX}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io { path: tmp, source: e });
        }
        let dst = self.file(id);
        fs::rename(&tmp, &dst).map_err(io(&dst))
    }

    fn remove_file(&self, id: &str) -> Result<(), StoreError> {
        let path = self.file(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Commits a group of changes (`Some` = write, `None` = delete; ids are validated,
    /// so safe as file names). Returns one result per change, in order: a change is
    /// durable when its result is Ok. Files are written in parallel; the directory is
    /// fsynced once.
    pub fn commit(&self, changes: &[(&str, Option<&Value>)]) -> Vec<Result<(), StoreError>> {
        let mut results: Vec<Option<Result<(), StoreError>>> = changes.iter().map(|_| None).collect();
        let chunk = changes.len().div_ceil(WRITERS).max(1);
        std::thread::scope(|s| {
            for (slots, work) in results.chunks_mut(chunk).zip(changes.chunks(chunk)) {
                s.spawn(move || {
                    for (slot, (id, value)) in slots.iter_mut().zip(work) {
                        *slot = Some(match value {
                            Some(v) => self.write_file(id, v),
                            None => self.remove_file(id),
                        });
                    }
                });
            }
        });
        let dir = self.sync_dir();
        results
            .into_iter()
            .map(|r| match (r.unwrap_or(Ok(())), &dir) {
                (Ok(()), Err(StoreError::Io { path, source })) => {
                    Err(StoreError::Io { path: path.clone(), source: std::io::Error::new(source.kind(), source.to_string()) })
                }
                (r, _) => r,
            })
            .collect()
    }

    /// Durably writes one route.
    pub fn put(&self, id: &str, value: &Value) -> Result<(), StoreError> {
        self.commit(&[(id, Some(value))]).pop().unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn commit_reopen_torn_writes_and_private_files() {
        let dir = std::env::temp_dir().join(format!("aigw-store-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (s, routes) = Store::open(&dir).unwrap();
        assert!(routes.is_empty());
        let (a1, b, a2) = (json!({"id": "a", "uri": "/a"}), json!({"id": "b"}), json!({"id": "a", "uri": "/a2"}));
        assert!(s.commit(&[("a", Some(&a1)), ("b", Some(&b))]).iter().all(Result::is_ok));
        s.put("a", &a2).unwrap();
        let many: Vec<(String, Value)> = (0..40).map(|i| (format!("m{i}"), json!({"id": format!("m{i}")}))).collect();
        let changes: Vec<(&str, Option<&Value>)> = many.iter().map(|(id, v)| (id.as_str(), Some(v))).collect();
        assert!(s.commit(&changes).iter().all(Result::is_ok));
        let deletes: Vec<(&str, Option<&Value>)> = many.iter().map(|(id, _)| (id.as_str(), None)).chain([("b", None)]).collect();
        assert!(s.commit(&deletes).iter().all(Result::is_ok));
        // Ids that look like temporary files are still routes.
        s.put(".tmp-x", &json!({"id": ".tmp-x"})).unwrap();
        // A torn write: a temporary file that was never renamed.
        fs::write(dir.join("routes/.c-1-0.tmp"), b"{\"id\": \"c\", \"ur").unwrap();
        // Files and dirs are private, and made so at open when they were not.
        assert_eq!((mode(&dir), mode(&dir.join("routes")), mode(&dir.join("routes/a.json"))), (0o700, 0o700, 0o600));
        fs::set_permissions(dir.join("routes/a.json"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let (_s, routes) = Store::open(&dir).unwrap();
        assert_eq!((mode(&dir), mode(&dir.join("routes/a.json"))), (0o700, 0o600));
        assert_eq!(routes.len(), 2);
        assert_eq!(routes["a"]["uri"], "/a2");
        assert!(routes.contains_key(".tmp-x"));
        assert!(!dir.join("routes/.c-1-0.tmp").exists());
        // A corrupted route file is reported, not silently dropped.
        fs::write(dir.join("routes/x.json"), b"{oops").unwrap();
        assert!(matches!(Store::open(&dir).unwrap_err(), StoreError::Corrupt { .. }));
        fs::remove_dir_all(&dir).unwrap();
    }
}
