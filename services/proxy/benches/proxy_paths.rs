//! Criterion benches for the proxy: route matching at 10 and 10,000 routes (matching must
//! not grow with the route count), compiling a 10,000-route snapshot, and what an
//! `ai-proxy-multi` route adds per request (hash key, pick, outcome report; issue 12: a
//! 4-instance weighted route under 2 µs). SigV4 and the plan stage are benched in
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

criterion_group!(proxy_paths, benches);
criterion_main!(proxy_paths);
