//! Micro-benchmarks of the dispatcher's pure primitives: the weighted
//! router, the circuit breaker and the sliding outcome window.
//!
//! `cargo bench --bench dispatch`; `cargo test --all-targets` only builds
//! and runs each once, untimed.

#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use herald::dispatch::router::pick_weighted;
use herald::resilience::breaker::{Breaker, BreakerConfig, Signal};
use herald::resilience::window::OutcomeWindow;
use tokio::time::Instant;

fn router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router/pick_weighted");
    let mut rng = fastrand::Rng::with_seed(7);
    let three = [(0usize, 1u32), (1, 1), (2, 1)];
    g.bench_function("3 equal", |b| {
        b.iter(|| pick_weighted(black_box(three.iter().copied()), &mut rng))
    });
    let uneven = [(0usize, 5u32), (1, 0), (2, 3), (3, 1), (4, 0), (5, 7)];
    g.bench_function("6 uneven with zeros", |b| {
        b.iter(|| pick_weighted(black_box(uneven.iter().copied()), &mut rng))
    });
    // As the dispatcher calls it: a lazy map over the providers that zeroes
    // the weight of those that may not be used now.
    let healthy = [true, false, true];
    g.bench_function("3 via lazy map", |b| {
        b.iter(|| {
            let candidates = three
                .iter()
                .zip(black_box(&healthy))
                .map(|(&(i, w), &ok)| (i, if ok { w } else { 0 }));
            pick_weighted(candidates, &mut rng)
        })
    });
    g.finish();
}

fn breaker(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    let now = Instant::now();
    // The hot path: closed, a permit per attempt, a 50% failing provider
    // (well below the default 80% failure ratio, so it stays closed).
    let mut closed = Breaker::new(BreakerConfig::default());
    let mut n = 0u64;
    g.bench_function("acquire+record closed 50% failing", |b| {
        b.iter(|| {
            n += 1;
            let permit = closed.try_acquire(now).expect("closed admits");
            let signal = if n.is_multiple_of(2) {
                Signal::Success
            } else {
                Signal::Failure { unreachable: false }
            };
            closed.record(permit, signal, now);
        })
    });
    // Open: every ask is refused until the cooldown ends.
    let mut open = Breaker::new(BreakerConfig {
        cooldown_min: Duration::from_secs(3600),
        cooldown_max: Duration::from_secs(3600),
        ..BreakerConfig::default()
    });
    for _ in 0..10 {
        if let Some(p) = open.try_acquire(now) {
            open.record(p, Signal::Failure { unreachable: true }, now);
        }
    }
    g.bench_function("try_acquire refused while open", |b| {
        b.iter(|| black_box(open.try_acquire(black_box(now)).is_none()))
    });
    g.bench_function("state+admits_at", |b| {
        b.iter(|| (open.state(black_box(now)), open.admits_at(now)))
    });
    g.finish();
}

fn window(c: &mut Criterion) {
    let mut g = c.benchmark_group("window");
    for size in [50usize, 500, 5_000] {
        let mut w = OutcomeWindow::new(size);
        let mut n = 0u32;
        g.bench_function(format!("record+ratio {size}"), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                w.record(black_box(n.is_multiple_of(3)));
                w.failure_ratio()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, router, breaker, window);
criterion_main!(benches);
