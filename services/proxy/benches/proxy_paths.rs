//! Criterion benches for the proxy: route matching at 10 and 10,000 routes (matching must
//! not grow with the route count), compiling a 10,000-route snapshot, and what an
//! `ai-proxy-multi` route adds per request (hash key, pick, outcome report; issue 12: a
//! 4-instance weighted route under 2 µs), and a consumer key's lookup at 1,000 and 100,000
//! consumers (issue 19: flat in the number of consumers). SigV4 and the plan stage are benched in
//! `aigw-providers`, picking alone in `aigw-balance`.
//! `cargo bench -p aigw-proxy`.

use std::hint::black_box;
use std::time::Duration;

use aigw_model::vars::{Var, VarSource, VarValue};
use aigw_proxy::compiled::CompileCtx;
use aigw_proxy::router::MatchInput;
use aigw_proxy::runtime::compile;
use aigw_proxy::upstream::Upstreams;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

struct NoVars;
impl VarSource for NoVars {
    fn get<'a>(&'a self, _var: &Var) -> Option<VarValue<'a>> {
        None
    }
}

fn routes(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let uri = if i % 2 == 0 { format!("/team{i}/v1/chat/completions") } else { format!("/team{i}/*") };
            json!({"id": format!("r{i:05}"), "uri": uri, "methods": ["POST"],
                   "plugins": {"ai-proxy": {"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}},
                       "options": {"model": "m"}, "override": {"endpoint": "http://127.0.0.1:1/v1/chat/completions"}}}})
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let ups = Upstreams::default();
    for n in [10usize, 10_000] {
        let cfg = compile("v", routes(n), &CompileCtx::bare(&ups)).unwrap();
        let (exact, prefix) = (format!("/team{}/v1/chat/completions", n - 2), format!("/team{}/v1/embeddings", n - 1));
        c.bench_function(&format!("route_match/exact/{n}_routes"), |b| {
            b.iter(|| cfg.router.find(&MatchInput { path: black_box(&exact), method: "POST", host: "h" }, &NoVars).is_some())
        });
        c.bench_function(&format!("route_match/prefix/{n}_routes"), |b| {
            b.iter(|| cfg.router.find(&MatchInput { path: black_box(&prefix), method: "POST", host: "h" }, &NoVars).is_some())
        });
    }
    // ai-proxy-multi: the work a request adds before its attempt and after its answer.
    let inst = |i: usize, w: u32| {
        json!({"name": format!("i{i}"), "provider": "openai-compatible", "weight": w, "auth": {"header": {"Authorization": "Bearer k"}},
               "override": {"endpoint": "http://127.0.0.1:1/v1/chat/completions"}})
    };
    let remote: std::net::SocketAddr = "10.1.2.3:4567".parse().unwrap();
    let parts = http::Request::post("/m").header("x-user-id", "user-42").body(()).unwrap().into_parts().0;
    for (name, plugin) in [
        ("1 instance", json!({"instances": [inst(0, 1)]})),
        ("4 weighted", json!({"instances": [inst(0, 1), inst(1, 3), inst(2, 2), inst(3, 5)]})),
        (
            "4 chash by header",
            json!({"instances": [inst(0, 1), inst(1, 3), inst(2, 2), inst(3, 5)], "balancer": {"algorithm": "chash", "hash_on": "header", "key": "x-user-id"}}),
        ),
    ] {
        let cfg =
            compile("v", vec![json!({"id": "m", "uri": "/m", "plugins": {"ai-proxy-multi": plugin}})], &CompileCtx::bare(&ups)).unwrap();
        let m = cfg.routes[0].multi.as_ref().unwrap();
        c.bench_function(&format!("multi/key+pick+report/{name}"), |b| {
            b.iter(|| {
                let key = m.hash.key(black_box(&parts), remote, None);
                let i = m.balancer.pick(key.as_bytes(), &[]).unwrap();
                m.balancer.report(i, &aigw_balance::Outcome::Status(200))
            })
        });
    }
    let big = routes(10_000);
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("compile/10000_routes", |b| b.iter(|| compile("v", big.clone(), &CompileCtx::bare(&ups)).unwrap().routes.len()));
    g.finish();
}

/// Consumer key lookups (one HMAC, one probe) at 1,000 and 100,000 consumers: the cost must
/// not grow with the consumer count, and a wrong key costs what a right one does.
fn key_lookup(c: &mut Criterion) {
    use aigw_model::keyauth::KeyHasher;
    use aigw_proxy::consumers::{Change, ConsumerSet, Kind};
    let ups = Upstreams::default();
    let ctx = CompileCtx::bare(&ups);
    let hasher = KeyHasher::new(&[5u8; 32]);
    use base64::Engine as _;
    let settings = json!({"hash_key": base64::engine::general_purpose::STANDARD.encode([5u8; 32])});
    for n in [1_000usize, 100_000] {
        let mut changes =
            vec![Change { kind: Kind::Settings, name: "key-auth".into(), version: "s".into(), value: Some(settings.clone()) }];
        for i in 0..n {
            let v = json!({"username": format!("c{i}"), "plugins": {"key-auth": {"key": hasher.stored(&format!("aigw-key-{i:08}"))}}});
            changes.push(Change { kind: Kind::Consumer, name: format!("c{i}"), version: format!("v{i}"), value: Some(v) });
        }
        let set = ConsumerSet::apply(&ConsumerSet::default(), true, changes, &ctx, None).unwrap();
        let hit = format!("aigw-key-{:08}", n / 2);
        c.bench_function(&format!("key_auth/lookup_hit/{n}_consumers"), |b| b.iter(|| set.table.with_key(black_box(&hit)).is_some()));
        c.bench_function(&format!("key_auth/lookup_miss/{n}_consumers"), |b| {
            b.iter(|| set.table.with_key(black_box("aigw-key-nobody-has-this-one")).is_none())
        });
    }
}

criterion_group!(proxy_paths, benches, key_lookup);
criterion_main!(proxy_paths);
