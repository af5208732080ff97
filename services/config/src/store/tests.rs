//! The store interface, checked the same way against both implementations: the file
//! store in a temporary directory and the etcd store on a real etcd (Debian's
//! etcd-server, started by the test kit).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aigw_testkit::etcd::EtcdCluster;
use aigw_testkit::proc::TempDir;
use tokio::sync::mpsc;

use super::etcd::{EtcdOptions, EtcdStore};
use super::file::FileStore;
use super::*;

fn put(key: &str, v: &str) -> Op {
    Op::Put { key: key.into(), value: v.as_bytes().to_vec() }
}

fn rev(key: &str, revision: Rev) -> Guard {
    Guard::Revision { key: key.into(), revision }
}

fn applied(c: Commit) -> Rev {
    match c {
        Commit::Applied { revision, failed } if failed.is_empty() => revision,
        other => panic!("not applied: {other:?}"),
    }
}

/// The next Changes of the feed (Progress items skipped), events sorted by key.
async fn changes(feed: &mut mpsc::Receiver<Feed>) -> (Rev, Vec<Event>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), feed.recv()).await.expect("a change in time").expect("feed open") {
            Feed::Changes { revision, mut events } => {
                events.sort_by(|a, b| key_of(a).cmp(key_of(b)));
                return (revision, events);
            }
            Feed::Progress { .. } => continue,
            Feed::Reset(l) => panic!("unexpected reset {l:?}"),
        }
    }
}

fn key_of(e: &Event) -> &str {
    match e {
        Event::Put { key, .. } | Event::Delete { key, .. } => key,
    }
}

fn content(l: &Loaded) -> BTreeMap<String, String> {
    l.entries.iter().map(|(k, e)| (k.clone(), String::from_utf8_lossy(&e.value).into_owned())).collect()
}

/// One scenario for any store; `reopen` opens a second instance on the same data.
async fn check(store: Arc<dyn Store>, reopen: impl AsyncFnOnce() -> Arc<dyn Store>) {
    let (loaded, mut feed) = store.open().await.unwrap();
    assert!(loaded.entries.is_empty(), "{loaded:?}");
    assert!(store.health().borrow().fresh);
    // Create two keys (a name with `/`: prices {provider}/{model}); both come back on the feed.
    let r1 = applied(
        store
            .commit(
                Batch { guards: vec![rev("routes/a", 0)], ops: vec![put("routes/a", "{\"v\":1}"), put("prices/openai/gpt-4o", "{}")] },
                true,
            )
            .await
            .unwrap(),
    );
    let (r, events) = changes(&mut feed).await;
    assert_eq!(r, r1);
    assert_eq!(
        events,
        vec![
            Event::Put { key: "prices/openai/gpt-4o".into(), value: b"{}".to_vec(), revision: r1 },
            Event::Put { key: "routes/a".into(), value: b"{\"v\":1}".to_vec(), revision: r1 },
        ]
    );
    // A guard on an outdated revision: nothing is applied.
    let c = store.commit(Batch { guards: vec![rev("routes/a", 0)], ops: vec![put("routes/a", "{\"v\":9}")] }, true).await.unwrap();
    assert!(matches!(c, Commit::Conflict { revision } if revision >= r1), "{c:?}");
    let r2 =
        applied(store.commit(Batch { guards: vec![rev("routes/a", r1)], ops: vec![put("routes/a", "{\"v\":2}")] }, true).await.unwrap());
    assert!(r2 > r1);
    assert_eq!(changes(&mut feed).await.1, vec![Event::Put { key: "routes/a".into(), value: b"{\"v\":2}".to_vec(), revision: r2 }]);
    // Uniqueness across a kind: nothing under routes/ may have changed since r1.
    let since = |revision| Guard::PrefixUnchangedSince { prefix: "routes/".into(), revision };
    let c = store.commit(Batch { guards: vec![since(r1)], ops: vec![put("routes/b", "{}")] }, true).await.unwrap();
    assert!(matches!(c, Commit::Conflict { .. }), "{c:?}");
    let r3 = applied(store.commit(Batch { guards: vec![since(r2)], ops: vec![put("routes/b", "{}")] }, true).await.unwrap());
    changes(&mut feed).await;
    // Cascading delete: consumers/bob and its credentials, not bobby's.
    let ops = vec![
        put("consumers/bob", "{}"),
        put("consumers/bob/credentials/c1", "{}"),
        put("consumers/bobby", "{}"),
        put("consumers/bobby/credentials/c2", "{}"),
    ];
    let r4 = applied(store.commit(Batch { guards: vec![], ops }, true).await.unwrap());
    assert!(r4 > r3);
    assert_eq!(changes(&mut feed).await.1.len(), 4);
    let cascade = Batch {
        guards: vec![rev("consumers/bob", r4)],
        ops: vec![Op::Delete { key: "consumers/bob".into() }, Op::DeletePrefix { prefix: "consumers/bob/credentials/".into() }],
    };
    let r5 = applied(store.commit(cascade, true).await.unwrap());
    let (_, events) = changes(&mut feed).await;
    assert_eq!(
        events,
        vec![
            Event::Delete { key: "consumers/bob".into(), revision: r5 },
            Event::Delete { key: "consumers/bob/credentials/c1".into(), revision: r5 },
        ]
    );
    // Progress: the feed says every change up to now was delivered.
    store.request_progress();
    let p = match tokio::time::timeout(Duration::from_secs(10), feed.recv()).await.expect("progress in time") {
        Some(Feed::Progress { revision }) => revision,
        other => panic!("unexpected {other:?}"),
    };
    assert!(p >= r5, "{p} < {r5}");
    // Everything is there for the next process, at its revision.
    let again = reopen().await;
    let (loaded, _feed) = again.open().await.unwrap();
    let want: BTreeMap<String, String> = [
        ("consumers/bobby", "{}"),
        ("consumers/bobby/credentials/c2", "{}"),
        ("prices/openai/gpt-4o", "{}"),
        ("routes/a", "{\"v\":2}"),
        ("routes/b", "{}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(content(&loaded), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_implements_the_interface() {
    let dir = TempDir::new("store-file");
    let d = dir.path().to_owned();
    check(Arc::new(FileStore::open(&d).unwrap()), async || Arc::new(FileStore::open(&d).unwrap()) as Arc<dyn Store>).await;
    // The names are files of their kind's directory; `/` in a name is encoded.
    assert!(d.join("routes/a.json").exists());
    assert!(d.join("prices/openai%2Fgpt-4o.json").exists());
    assert!(d.join("consumers/bobby%2Fcredentials%2Fc2.json").exists());
}

fn etcd_store(etcd: &EtcdCluster, prefix: &str) -> Arc<dyn Store> {
    let client = aigw_etcd::Options::new(etcd.endpoints().split(',').map(str::to_owned).collect());
    Arc::new(EtcdStore::new(EtcdOptions { client, prefix: prefix.into(), max_txn_ops: 128 }).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_implements_the_interface() {
    let etcd = EtcdCluster::single().await;
    // Another prefix's keys are not seen.
    etcd.ctl(&["put", "/other/routes/x", "{}"]).await.unwrap();
    check(etcd_store(&etcd, "/aigw"), async || etcd_store(&etcd, "/aigw")).await;
    let keys = etcd.ctl(&["get", "--prefix", "--keys-only", "/aigw/"]).await.unwrap();
    let mut keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "/aigw/consumers/bobby",
            "/aigw/consumers/bobby/credentials/c2",
            "/aigw/prices/openai/gpt-4o",
            "/aigw/routes/a",
            "/aigw/routes/b"
        ],
        "CONTRACT §15's keys"
    );
}

#[test]
fn names_encode_to_one_file_name_and_back() {
    for (name, file) in [("r1", "r1"), (".tmp-x", ".tmp-x"), ("openai/gpt-4o", "openai%2Fgpt-4o"), ("a%2Fb", "a%252Fb"), ("é/%", "é%2F%25")]
    {
        assert_eq!(encode_name(name), file);
        assert_eq!(decode_name(file), name);
    }
    assert_eq!(decode_name("100%"), "100%");
    assert_eq!(decode_name("a%zz"), "a%zz");
}
