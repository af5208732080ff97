//! Durable embedded store: one JSON file per route under `<data-dir>/routes/`.
//!
//! A write goes to a temporary file that is fsynced, renamed over the route's file and
//! followed by an fsync of the directory, so an acknowledged write survives `kill -9`
//! and a torn write leaves only a temporary file, which the next start removes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
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

impl Store {
    /// Opens (creating) the store and loads every route.
    pub fn open(data_dir: &Path) -> Result<(Store, BTreeMap<String, Value>), StoreError> {
        let dir = data_dir.join("routes");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
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

    /// Durably writes a route (ids are validated: safe as file names).
    pub fn put(&self, id: &str, value: &Value) -> Result<(), StoreError> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{id}-{}-{n}{TMP_SUFFIX}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io { path: tmp, source: e });
        }
        let dst = self.file(id);
        fs::rename(&tmp, &dst).map_err(io(&dst))?;
        self.sync_dir()
    }

    /// Durably removes a route; Ok(false) when it did not exist.
    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let path = self.file(id);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.sync_dir()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn put_delete_reopen_and_torn_writes() {
        let dir = std::env::temp_dir().join(format!("aigw-store-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (s, routes) = Store::open(&dir).unwrap();
        assert!(routes.is_empty());
        s.put("a", &json!({"id": "a", "uri": "/a"})).unwrap();
        s.put("b", &json!({"id": "b"})).unwrap();
        s.put("a", &json!({"id": "a", "uri": "/a2"})).unwrap();
        assert!(s.delete("b").unwrap());
        assert!(!s.delete("b").unwrap());
        // Ids that look like temporary files are still routes.
        s.put(".tmp-x", &json!({"id": ".tmp-x"})).unwrap();
        // A torn write: a temporary file that was never renamed.
        fs::write(dir.join("routes/.c-1-0.tmp"), b"{\"id\": \"c\", \"ur").unwrap();
        let (_s, routes) = Store::open(&dir).unwrap();
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
