//! Criterion benches for the per-request picking cost (issue 12: a 4-instance weighted
//! route adds under 2 µs per request). `cargo bench -p aigw-balance`.

use aigw_balance::{Algorithm, Attempt, Balancer, FallbackPolicy, InstanceSpec, Outcome, PassivePolicy, retry};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn specs(weights: &[(u32, i32)]) -> Vec<InstanceSpec> {
    weights.iter().enumerate().map(|(i, (w, p))| InstanceSpec { name: format!("instance-{i}"), weight: *w, priority: *p }).collect()
}

fn benches(c: &mut Criterion) {
    let one = Balancer::new(specs(&[(1, 0)]), Algorithm::RoundRobin, PassivePolicy::default());
    c.bench_function("pick/1 instance", |b| b.iter(|| one.pick(black_box(b""), &[])));
    let four = Balancer::new(specs(&[(1, 0), (3, 0), (2, 0), (5, 0)]), Algorithm::RoundRobin, PassivePolicy::default());
    c.bench_function("pick/4 weighted (roundrobin)", |b| b.iter(|| four.pick(black_box(b""), &[])));
    c.bench_function("pick/4 weighted, retry excluding 1", |b| b.iter(|| four.pick(black_box(b""), black_box(&[1]))));
    let prio = Balancer::new(specs(&[(1, 1), (3, 1), (2, 0), (5, 0)]), Algorithm::RoundRobin, PassivePolicy::default());
    prio.set_active(0, aigw_balance::ActiveState::Unhealthy);
    c.bench_function("pick/4 in 2 priorities, 1 unhealthy", |b| b.iter(|| prio.pick(black_box(b""), &[])));
    let chash = Balancer::new(specs(&[(1, 0), (3, 0), (2, 0), (5, 0)]), Algorithm::ConsistentHash, PassivePolicy::default());
    c.bench_function("pick/4 weighted (chash)", |b| b.iter(|| chash.pick(black_box(b"user-1234567890"), &[])));
    c.bench_function("report(success)", |b| b.iter(|| four.report(black_box(2), &Outcome::Status(200))));
    let p = FallbackPolicy {
        on_429: true,
        on_5xx: true,
        on_rate_limit: false,
        statuses: vec![401],
        max_retries: Some(2),
        retry_within_ms: Some(1000),
    };
    let a = Attempt { outcome: Outcome::Status(503), sent_to_client: false, elapsed_ms: 20, attempts: 1 };
    c.bench_function("retry::decide", |b| b.iter(|| retry::decide(black_box(&p), black_box(&a))));
}

criterion_group!(pick, benches);
criterion_main!(pick);
