//! The store interface: a key-value store of `{kind}/{name}` → the admin API's JSON
//! (secrets encrypted), with revisions, guarded batches and a feed of changes.
//!
//! Keys are relative (`routes/r1`, `consumers/bob/credentials/c1`,
//! `prices/openai/gpt-4o`); etcd prefixes them with `--etcd-prefix`, the file store maps
//! them to files. Two implementations:
//! - [`file::FileStore`] (`--store file:DIR`, the default): one JSON file per key,
//!   fsynced; the only writer is this process.
//! - [`etcd::EtcdStore`] (`--store etcd://…`): keys under the prefix; any number of
//!   aigw-config replicas write and watch them.
//!
//! The service never applies its own writes directly: every change — its own or another
//! replica's — comes back through the feed ([`Feed`]), in revision order, so every
//! replica builds its view (and its published snapshot) from the same sequence.

pub mod etcd;
pub mod file;

use std::collections::BTreeMap;

use tokio::sync::{mpsc, watch};

/// A store revision: increases with every committed batch.
pub type Rev = i64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or has no quorum; the message names it.
    #[error("{0}")]
    Unavailable(String),
    /// The store refused the batch (too large, permission denied…).
    #[error("{0}")]
    Rejected(String),
    /// A local I/O failure (file store).
    #[error("{0}")]
    Io(String),
    /// Stored data that cannot be read at all (file store: a corrupted file).
    #[error("{0}")]
    Corrupt(String),
}

/// One stored value: the raw bytes (JSON) and the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub revision: Rev,
}

/// The whole content at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    pub revision: Rev,
    pub entries: BTreeMap<String, Entry>,
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Every key that starts with `prefix` (which ends in `/`, so `consumers/bob/`
    /// never touches `consumers/bobby/…`).
    DeletePrefix {
        prefix: String,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
            Op::DeletePrefix { prefix } => prefix,
        }
    }

    /// Bytes it adds to a request (keys and values), for the store's size limit.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len() + 16,
            Op::Delete { key } => key.len() + 16,
            Op::DeletePrefix { prefix } => 2 * prefix.len() + 16,
        }
    }
}

/// A condition a batch needs: all hold, or nothing of the batch is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The key was last written at `revision` (0: it does not exist).
    Revision { key: String, revision: Rev },
    /// No key that starts with `prefix` was created or changed after `revision`
    /// (uniqueness checks across the resources of a kind).
    PrefixUnchangedSince { prefix: String, revision: Rev },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub guards: Vec<Guard>,
    pub ops: Vec<Op>,
}

/// The outcome of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Applied at `revision`. `failed`: keys whose write failed although the batch went
    /// through (file store only: each file is written on its own; etcd is all or nothing).
    Applied { revision: Rev, failed: BTreeMap<String, String> },
    /// A guard did not hold; nothing was applied. `revision` is the store's revision
    /// then: once the view has caught up with it, the batch can be decided again.
    Conflict { revision: Rev },
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put { key: String, value: Vec<u8>, revision: Rev },
    Delete { key: String, revision: Rev },
}

/// What the feed delivers, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// Changes up to `revision` (one batch, or what a watch response carried).
    Changes { revision: Rev, events: Vec<Event> },
    /// Every change up to `revision` was delivered (nothing new under the prefix).
    Progress { revision: Rev },
    /// History was lost (a watch's start revision was compacted): the whole content,
    /// which replaces the view.
    Reset(Loaded),
}

/// Whether the view built from the feed is known to be current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The feed is connected and the store showed quorum recently.
    pub fresh: bool,
    /// Why not, or where it is connected.
    pub detail: String,
}

/// A store (see the module documentation).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// `file:DIR` or `etcd://HOST:PORT,… prefix /aigw`, for logs and `/status/store`.
    fn describe(&self) -> String;

    /// `"file"` or `"etcd"`.
    fn kind(&self) -> &'static str;

    /// The content and the feed of every change after it. Called once.
    async fn open(&self) -> Result<(Loaded, mpsc::Receiver<Feed>), StoreError>;

    /// Applies a batch, atomically when the guards say so. `patient`: keep trying
    /// within the store's timeout (false: fail fast, e.g. while quorum is known lost).
    /// An `Ok` commit is durable (fsynced, or in etcd with quorum).
    async fn commit(&self, batch: Batch, patient: bool) -> Result<Commit, StoreError>;

    /// Most guards, and most operations, in one batch.
    fn max_ops(&self) -> usize;

    /// Most bytes (keys and values) in one batch.
    fn max_bytes(&self) -> usize;

    /// The freshness of the view built from the feed.
    fn health(&self) -> watch::Receiver<Health>;

    /// Asks the feed for a [`Feed::Progress`] (to catch up with a revision seen in a
    /// commit answer when no change of ours may follow).
    fn request_progress(&self);

    /// The file store rewrites values at open (secrets stored in clear before a key was
    /// set get encrypted); a shared store never rewrites what others wrote.
    fn rewrites_at_open(&self) -> bool;
}

/// `%` and `/` percent-encoded: one file name for a key's name (names may contain `/`,
/// e.g. prices `{provider}/{model}`). Route ids ([a-zA-Z0-9._-]) are unchanged.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`encode_name`] (an escape it did not write is kept as it is).
pub fn decode_name(file: &str) -> String {
    let mut out = String::with_capacity(file.len());
    let mut rest = file;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3);
        match esc {
            Some("%25") => out.push('%'),
            Some("%2F") | Some("%2f") => out.push('/'),
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
                continue;
            }
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
