//! The embedded durable store: one JSON file per key, `DIR/{kind}/{name}.json`
//! (`DIR/routes/{id}.json` as in every release so far; names holding `/` or `%` are
//! percent-encoded into one file name, see [`super::encode_name`]).
//!
//! A write goes to a temporary file that is fsynced, renamed over the key's file and
//! followed by an fsync of the directory, so an acknowledged write survives `kill -9`
//! and a torn write leaves only a temporary file, which the next start removes. A batch
//! is one group commit: its files are written and fsynced in parallel (the filesystem
//! journal merges concurrent fsyncs) and each directory is fsynced once.
//!
//! This process is the only writer: revisions are counted here (every key loaded at
//! start is at revision 1), guards are checked against that index, and each batch's
//! changes go to the feed before the commit returns.
//!
//! The data dir and its directories are 0700, every file 0600 (tightened at open).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::{Batch, Commit, Entry, Event, Feed, Guard, Health, Loaded, Op, Rev, Store, StoreError, decode_name, encode_name};

/// Temporary files end in `.tmp`; key files end in `.json`, so no name can collide.
const TMP_SUFFIX: &str = ".tmp";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Threads writing one batch's files in parallel.
const WRITERS: usize = 8;
/// Largest batch (the committer's group).
const MAX_OPS: usize = 512;

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{}: {e}", path.display()))
}

/// Makes `path` private (mode `mode`) when it is not already.
fn tighten(path: &Path, mode: u32) -> Result<(), StoreError> {
    let meta = fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.permissions().mode() & 0o777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| io_err(path, e))?;
        tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "made private");
    }
    Ok(())
}

/// A directory name a key may start with: what kinds use (`routes`, `consumer_groups`).
fn is_dir_segment(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

struct Index {
    revision: Rev,
    keys: BTreeMap<String, Rev>,
}

struct Inner {
    dir: PathBuf,
    tmp_counter: AtomicU64,
    index: Mutex<Index>,
    feed: mpsc::Sender<Feed>,
}

pub struct FileStore {
    inner: Arc<Inner>,
    opened: Mutex<Option<(Loaded, mpsc::Receiver<Feed>)>>,
    health: watch::Sender<Health>,
}

impl FileStore {
    /// Opens (creating) the store, makes it private and loads every key.
    pub fn open(data_dir: &Path) -> Result<FileStore, StoreError> {
        let routes = data_dir.join("routes");
        fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&routes).map_err(|e| io_err(&routes, e))?;
        tighten(data_dir, DIR_MODE)?;
        let mut entries = BTreeMap::new();
        let mut dirs: Vec<(String, PathBuf)> = Vec::new();
        for d in fs::read_dir(data_dir).map_err(|e| io_err(data_dir, e))? {
            let d = d.map_err(|e| io_err(data_dir, e))?;
            let name = d.file_name().to_string_lossy().into_owned();
            if d.file_type().map_err(|e| io_err(&d.path(), e))?.is_dir() && is_dir_segment(&name) {
                dirs.push((name, d.path()));
            }
        }
        for (segment, dir) in dirs {
            tighten(&dir, DIR_MODE)?;
            for entry in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
                let entry = entry.map_err(|e| io_err(&dir, e))?;
                let path = entry.path();
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.ends_with(TMP_SUFFIX) {
                    // Left by a write that never completed: it was never acknowledged.
                    tracing::info!(file = %path.display(), "removing incomplete write");
                    fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                    continue;
                }
                let Some(stem) = file.strip_suffix(".json") else { continue };
                tighten(&path, FILE_MODE)?;
                let bytes = fs::read(&path).map_err(|e| io_err(&path, e))?;
                if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    return Err(StoreError::Corrupt(format!("{}: corrupted file: {e}", path.display())));
                }
                entries.insert(format!("{segment}/{}", decode_name(stem)), Entry { value: bytes, revision: 1 });
            }
        }
        let keys = entries.keys().map(|k| (k.clone(), 1)).collect();
        let (feed, rx) = mpsc::channel(1024);
        let loaded = Loaded { revision: 1, entries };
        let inner = Arc::new(Inner {
            dir: data_dir.to_owned(),
            tmp_counter: AtomicU64::new(0),
            index: Mutex::new(Index { revision: 1, keys }),
            feed,
        });
        let (health, _) = watch::channel(Health { fresh: true, detail: format!("file:{}", data_dir.display()) });
        Ok(FileStore { inner, opened: Mutex::new(Some((loaded, rx))), health })
    }
}

impl Inner {
    /// `DIR/{segment}` and the file of a key.
    fn file(&self, key: &str) -> Result<(PathBuf, PathBuf), StoreError> {
        let (segment, name) = key.split_once('/').filter(|(s, n)| is_dir_segment(s) && !n.is_empty()).ok_or_else(|| {
            let shown: String = key.chars().take(80).collect();
            StoreError::Rejected(format!("key {shown:?} is not {{kind}}/{{name}}"))
        })?;
        let dir = self.dir.join(segment);
        let file = dir.join(format!("{}.json", encode_name(name)));
        Ok((dir, file))
    }

    fn ensure_dir(&self, dir: &Path) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new().mode(DIR_MODE).create(dir).map_err(|e| io_err(dir, e))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io_err(&self.dir, e))
    }

    /// Writes one key's file durably except for the directory entry (temp file, fsync,
    /// rename).
    fn write_file(&self, dir: &Path, file: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{stem}-{}-{n}{TMP_SUFFIX}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp, e));
        }
        fs::rename(&tmp, file).map_err(|e| io_err(file, e))
    }

    fn remove_file(&self, file: &Path) -> Result<(), StoreError> {
        match fs::remove_file(file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(file, e)),
        }
    }

    fn commit(&self, batch: Batch) -> Result<Commit, StoreError> {
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let holds = batch.guards.iter().all(|g| match g {
            Guard::Revision { key, revision } => index.keys.get(key).copied().unwrap_or(0) == *revision,
            Guard::PrefixUnchangedSince { prefix, revision } => index
                .keys
                .range::<str, _>((std::ops::Bound::Included(prefix.as_str()), std::ops::Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                .all(|(_, r)| r <= revision),
        });
        if !holds {
            return Ok(Commit::Conflict { revision: index.revision });
        }
        // What each key becomes (the last operation on it wins).
        let mut changes: BTreeMap<String, Option<&[u8]>> = BTreeMap::new();
        for op in &batch.ops {
            match op {
                Op::Put { key, value } => {
                    changes.insert(key.clone(), Some(value));
                }
                Op::Delete { key } => {
                    changes.insert(key.clone(), None);
                }
                Op::DeletePrefix { prefix } => {
                    let under: Vec<String> = index
                        .keys
                        .range::<str, _>((std::ops::Bound::Included(prefix.as_str()), std::ops::Bound::Unbounded))
                        .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in under {
                        changes.insert(k, None);
                    }
                }
            }
        }
        let mut work: Vec<(String, PathBuf, PathBuf, Option<&[u8]>)> = Vec::with_capacity(changes.len());
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in changes {
            match self.file(&key) {
                Ok((dir, file)) => {
                    if value.is_some()
                        && let Err(e) = self.ensure_dir(&dir)
                    {
                        failed.insert(key, e.to_string());
                        continue;
                    }
                    work.push((key, dir, file, value));
                }
                Err(e) => {
                    failed.insert(key, e.to_string());
                }
            }
        }
        let mut results: Vec<Option<Result<(), StoreError>>> = work.iter().map(|_| None).collect();
        let chunk = work.len().div_ceil(WRITERS).max(1);
        std::thread::scope(|s| {
            for (slots, part) in results.chunks_mut(chunk).zip(work.chunks(chunk)) {
                s.spawn(move || {
                    for (slot, (_, dir, file, value)) in slots.iter_mut().zip(part) {
                        *slot = Some(match value {
                            Some(v) => self.write_file(dir, file, v),
                            None => self.remove_file(file),
                        });
                    }
                });
            }
        });
        let dirs: BTreeSet<&PathBuf> = work.iter().map(|(_, d, _, _)| d).collect();
        let mut dir_errors: BTreeMap<&PathBuf, String> = BTreeMap::new();
        for d in dirs {
            if d.is_dir()
                && let Err(e) = File::open(d).and_then(|f| f.sync_all())
            {
                dir_errors.insert(d, io_err(d, e).to_string());
            }
        }
        index.revision += 1;
        let revision = index.revision;
        let mut events = Vec::with_capacity(work.len());
        for ((key, dir, _, value), result) in work.iter().zip(results) {
            let result = match (result.unwrap_or(Ok(())), dir_errors.get(dir)) {
                (Ok(()), Some(e)) => Err(e.clone()),
                (r, _) => r.map_err(|e| e.to_string()),
            };
            if let Err(e) = result {
                tracing::error!(key = %key, error = %e, "write failed; the key is unchanged");
                failed.insert(key.clone(), e);
                continue;
            }
            match value {
                Some(v) => {
                    index.keys.insert(key.clone(), revision);
                    events.push(Event::Put { key: key.clone(), value: v.to_vec(), revision });
                }
                None => {
                    if index.keys.remove(key).is_some() {
                        events.push(Event::Delete { key: key.clone(), revision });
                    }
                }
            }
        }
        // Delivered before the commit returns: the committer waits for it to be applied.
        let _ = self.feed.blocking_send(Feed::Changes { revision, events });
        Ok(Commit::Applied { revision, failed })
    }
}

#[async_trait::async_trait]
impl Store for FileStore {
    fn describe(&self) -> String {
        format!("file:{}", self.inner.dir.display())
    }

    fn kind(&self) -> &'static str {
        "file"
    }

    async fn open(&self) -> Result<(Loaded, mpsc::Receiver<Feed>), StoreError> {
        self.opened.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| StoreError::Io("the file store was opened twice".into()))
    }

    async fn commit(&self, batch: Batch, _patient: bool) -> Result<Commit, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.commit(batch)).await.map_err(|e| StoreError::Io(format!("commit task failed: {e}")))?
    }

    fn max_ops(&self) -> usize {
        MAX_OPS
    }

    fn max_bytes(&self) -> usize {
        usize::MAX
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    fn request_progress(&self) {
        // A commit holding the index delivers its own changes; nothing to add then.
        if let Ok(index) = self.inner.index.try_lock() {
            let _ = self.inner.feed.try_send(Feed::Progress { revision: index.revision });
        }
    }

    fn rewrites_at_open(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn put(key: &str, v: &str) -> Op {
        Op::Put { key: key.into(), value: v.as_bytes().to_vec() }
    }

    #[tokio::test]
    async fn reopen_torn_writes_private_files_and_corruption() {
        let dir = std::env::temp_dir().join(format!("aigw-store-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = FileStore::open(&dir).unwrap();
        let ops = (0..40).map(|i| put(&format!("routes/m{i}"), "{}")).chain([put("routes/a", "{\"uri\":\"/a2\"}")]).collect();
        assert!(
            matches!(s.commit(Batch { guards: vec![], ops }, true).await.unwrap(), Commit::Applied { failed, .. } if failed.is_empty())
        );
        let deletes = (0..40).map(|i| Op::Delete { key: format!("routes/m{i}") }).collect();
        s.commit(Batch { guards: vec![], ops: deletes }, true).await.unwrap();
        // Ids that look like temporary files are still keys.
        s.commit(Batch { guards: vec![], ops: vec![put("routes/.tmp-x", "{}")] }, true).await.unwrap();
        // A key that is not {kind}/{name} is refused, the rest of the batch written.
        match s.commit(Batch { guards: vec![], ops: vec![put("../x", "{}"), put("routes/ok", "{}")] }, true).await.unwrap() {
            Commit::Applied { failed, .. } => assert_eq!(failed.keys().collect::<Vec<_>>(), vec!["../x"]),
            c => panic!("{c:?}"),
        }
        // A torn write: a temporary file that was never renamed.
        fs::write(dir.join("routes/.c-1-0.tmp"), b"{\"id\": \"c\", \"ur").unwrap();
        // Files and dirs are private, and made so at open when they were not.
        assert_eq!((mode(&dir), mode(&dir.join("routes")), mode(&dir.join("routes/a.json"))), (0o700, 0o700, 0o600));
        fs::set_permissions(dir.join("routes/a.json"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let s = FileStore::open(&dir).unwrap();
        let (loaded, _feed) = s.open().await.unwrap();
        assert_eq!((mode(&dir), mode(&dir.join("routes/a.json"))), (0o700, 0o600));
        assert_eq!(loaded.entries.keys().collect::<Vec<_>>(), vec!["routes/.tmp-x", "routes/a", "routes/ok"]);
        assert!(!dir.join("routes/.c-1-0.tmp").exists());
        // A corrupted file is reported, not silently dropped.
        fs::write(dir.join("routes/x.json"), b"{oops").unwrap();
        assert!(matches!(FileStore::open(&dir).err().unwrap(), StoreError::Corrupt(_)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
