//! The client against real etcd members (Debian's etcd-server, started by the test kit).

use std::time::{Duration, Instant};

use aigw_etcd::pb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, compare, request_op};
use aigw_etcd::{Client, Credentials, EtcdError, Options, Patience, prefix_end};
use aigw_testkit::etcd::EtcdCluster;

fn put(key: &str, value: &str) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestPut(PutRequest { key: key.into(), value: value.into(), ..Default::default() })) }
}

/// `key`'s mod revision equals `rev` (0: the key does not exist).
fn unchanged(key: &str, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.into(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        range_end: Vec::new(),
    }
}

fn txn(compares: Vec<Compare>, ops: Vec<RequestOp>) -> TxnRequest {
    TxnRequest { compare: compares, success: ops, failure: Vec::new() }
}

fn client(c: &EtcdCluster) -> Client {
    Client::new(Options::new(c.endpoints().split(',').map(str::to_owned).collect())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_ranges_watches_progress_and_compaction() {
    let etcd = EtcdCluster::single().await;
    let c = client(&etcd);
    let r = c.txn(txn(vec![unchanged("/t/a", 0)], vec![put("/t/a", "1"), put("/t/b", "1")]), Patience::UntilDeadline).await.unwrap();
    assert!(r.succeeded);
    let rev = r.header.unwrap().revision;
    // The same create again: the comparison fails, nothing is written.
    let r = c.txn(txn(vec![unchanged("/t/a", 0)], vec![put("/t/a", "2")]), Patience::UntilDeadline).await.unwrap();
    assert!(!r.succeeded);
    let r = c.txn(txn(vec![unchanged("/t/a", rev)], vec![put("/t/a", "3")]), Patience::UntilDeadline).await.unwrap();
    assert!(r.succeeded);
    let after = r.header.unwrap().revision;
    // A range over the prefix, paged.
    let all = RangeRequest { key: b"/t/".to_vec(), range_end: prefix_end(b"/t/"), limit: 1, ..Default::default() };
    let page = c.range(all.clone(), Patience::UntilDeadline).await.unwrap();
    assert_eq!((page.kvs.len(), page.more, page.count), (1, true, 2));
    assert_eq!(page.kvs[0].value, b"3");
    // A watch from the first revision sees both commits; a progress request answers with
    // the current revision.
    let create = WatchCreateRequest { key: b"/t/".to_vec(), range_end: prefix_end(b"/t/"), start_revision: rev, ..Default::default() };
    let mut w = c.watch(create.clone()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let resp = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap();
        seen.extend(
            resp.events
                .iter()
                .map(|e| (String::from_utf8_lossy(&e.kv.as_ref().unwrap().value).into_owned(), e.kv.as_ref().unwrap().mod_revision)),
        );
    }
    assert_eq!(seen, vec![("1".to_owned(), rev), ("1".to_owned(), rev), ("3".to_owned(), after)]);
    c.txn(txn(vec![], vec![put("/elsewhere", "x")]), Patience::UntilDeadline).await.unwrap();
    w.request_progress().await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap();
    assert!(p.events.is_empty(), "{p:?}");
    assert_eq!(p.header.unwrap().revision, after + 1, "progress names the store's revision");
    // Compacted: a watch from before the compaction is canceled with the compact revision.
    c.compact(after).await.unwrap();
    let mut w = c.watch(create).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap();
    assert!(r.canceled && r.compact_revision == after, "{r:?}");
    let at_old = RangeRequest { key: b"/t/a".to_vec(), revision: rev, ..Default::default() };
    assert!(matches!(c.range(at_old, Patience::UntilDeadline).await, Err(EtcdError::Compacted(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates_and_user_authentication() {
    let etcd = EtcdCluster::start(1, true).await;
    let t = etcd.tls().unwrap();
    let (ca, cert, key) = (std::fs::read(&t.ca).unwrap(), std::fs::read(&t.client_cert).unwrap(), std::fs::read(&t.client_key).unwrap());
    let tls = aigw_etcd::Tls { ca_pem: Some(ca.clone()), identity: Some((cert, key)) };
    etcd.ctl(&["user", "add", "root", "--new-user-password=s3cret-pw"]).await.unwrap();
    etcd.ctl(&["auth", "enable"]).await.unwrap();
    let open = |creds: Option<(&str, &str)>, tls: Option<aigw_etcd::Tls>| {
        let mut o = Options::new(vec![etcd.endpoint(0)]);
        o.tls = tls;
        o.credentials = creds.map(|(u, p)| Credentials { user: u.into(), password: p.into() });
        Client::new(o).unwrap()
    };
    let ok = open(Some(("root", "s3cret-pw")), Some(tls.clone()));
    assert!(ok.txn(txn(vec![], vec![put("/tls/a", "1")]), Patience::UntilDeadline).await.unwrap().succeeded);
    // Wrong password, no user: refused, and the password never shows.
    let e = open(Some(("root", "wrong-pw")), Some(tls.clone()))
        .txn(txn(vec![], vec![put("/tls/b", "1")]), Patience::UntilDeadline)
        .await
        .unwrap_err();
    assert!(matches!(e, EtcdError::Rejected(_)) && !e.to_string().contains("wrong-pw"), "{e}");
    let e = open(None, Some(tls)).txn(txn(vec![], vec![put("/tls/b", "1")]), Patience::UntilDeadline).await.unwrap_err();
    assert!(matches!(e, EtcdError::Rejected(_)), "{e}");
    // Without a client certificate the TLS handshake is refused.
    let no_cert = aigw_etcd::Tls { ca_pem: Some(ca), identity: None };
    let e = open(Some(("root", "s3cret-pw")), Some(no_cert))
        .range(RangeRequest { key: b"/tls/a".to_vec(), ..Default::default() }, Patience::OneRound)
        .await;
    assert!(matches!(e, Err(EtcdError::Unavailable(_))), "{e:?}");
    etcd.ctl(&["--user=root:s3cret-pw", "auth", "disable"]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_fail_over_and_without_quorum_requests_fail_within_the_timeout() {
    let mut etcd = EtcdCluster::start(3, false).await;
    let mut opts = Options::new(etcd.endpoints().split(',').map(str::to_owned).collect());
    opts.timeout = Duration::from_secs(2);
    let c = Client::new(opts).unwrap();
    assert!(c.txn(txn(vec![], vec![put("/q/a", "1")]), Patience::UntilDeadline).await.unwrap().succeeded);
    assert_eq!(c.current_endpoint(), etcd.endpoint(0));
    // The current member dies: the next request moves on (quorum holds: 2 of 3). Once
    // the others have a leader: a write sent while they still wait for a dead leader is
    // held by etcd until the deadline and then may or may not have been applied (that
    // window is one or two election timeouts; it answers 503 saying so).
    etcd.stop_member(0).await;
    etcd.wait_healthy(Duration::from_secs(20)).await.unwrap();
    assert!(c.txn(txn(vec![], vec![put("/q/b", "1")]), Patience::UntilDeadline).await.unwrap().succeeded);
    assert_ne!(c.current_endpoint(), etcd.endpoint(0));
    // Two of three down: no quorum. Writes fail with Unavailable naming etcd, within
    // the deadline; with OneRound at once.
    etcd.stop_member(1).await;
    let started = Instant::now();
    let e = c.txn(txn(vec![], vec![put("/q/c", "1")]), Patience::UntilDeadline).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, EtcdError::Unavailable(_)) && e.to_string().starts_with("etcd unavailable"), "{e}");
    assert!(took < Duration::from_secs(4), "bounded by the 2 s deadline (+ slack): {took:?}");
    let e = c.range(RangeRequest { key: b"/q/a".to_vec(), ..Default::default() }, Patience::OneRound).await.unwrap_err();
    assert!(matches!(e, EtcdError::Unavailable(_)), "{e}");
    // Quorum back: writes work again, and nothing acknowledged was lost.
    etcd.start_member(0).await;
    etcd.start_member(1).await;
    etcd.wait_healthy(Duration::from_secs(20)).await.unwrap();
    assert!(c.txn(txn(vec![], vec![put("/q/d", "1")]), Patience::UntilDeadline).await.unwrap().succeeded);
    let r = c
        .range(
            RangeRequest { key: b"/q/".to_vec(), range_end: prefix_end(b"/q/"), keys_only: true, ..Default::default() },
            Patience::UntilDeadline,
        )
        .await
        .unwrap();
    let keys: Vec<String> = r.kvs.iter().map(|k| String::from_utf8_lossy(&k.key).into_owned()).collect();
    assert!(keys.contains(&"/q/a".to_owned()) && keys.contains(&"/q/b".to_owned()) && keys.contains(&"/q/d".to_owned()), "{keys:?}");
}
