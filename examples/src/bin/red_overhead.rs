//! RED layer cost: the same axum router called in-process (no sockets)
//! with and without `RedLayer`, interleaved over rounds; the difference of
//! the medians is the layer's cost per request. Then the same with two
//! threads hammering one route at once (shared counters contended), and
//! `RedMetrics::record` alone.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin red_overhead -- [--rounds 11] [--requests 200000]
//! ```

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use stethoscope::red::RedMetrics;
use stethoscope_examples::bench::{arg, interleaved_on_threads, median};
use tower::{Service, ServiceExt};

fn app() -> Router {
    Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/health", get(|| async { "ok" }))
}

/// Nanoseconds per request over `n` sequential requests.
async fn run(mut app: Router, n: usize) -> f64 {
    let started = Instant::now();
    for i in 0..n {
        let request = Request::get(if i % 2 == 0 { "/items/42" } else { "/items/7" })
            .body(Body::empty())
            .expect("request");
        let service = ServiceExt::<Request<Body>>::ready(&mut app)
            .await
            .expect("ready");
        let response = service.call(request).await.expect("response");
        std::hint::black_box(response.status());
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let rounds = arg("--rounds", 11).max(1);
    let n = arg("--requests", 200_000).max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let metrics = RedMetrics::new();
    let plain = app();
    let layered = app().layer(metrics.layer());
    // Warm-up: create the series, fault in code and caches.
    runtime.block_on(run(plain.clone(), n / 10));
    runtime.block_on(run(layered.clone(), n / 10));

    let (mut without, mut with, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which variant goes first.
        let (a, b) = if round % 2 == 0 {
            let a = runtime.block_on(run(plain.clone(), n));
            (a, runtime.block_on(run(layered.clone(), n)))
        } else {
            let b = runtime.block_on(run(layered.clone(), n));
            (runtime.block_on(run(plain.clone(), n)), b)
        };
        without.push(a);
        with.push(b);
        diffs.push(b - a);
    }
    println!("single thread, {rounds} rounds x {n} requests (in-process axum Router, no sockets)");
    println!(
        "  without layer: {:8.1} ns/request (median)",
        median(&mut without)
    );
    println!(
        "  with layer:    {:8.1} ns/request (median)",
        median(&mut with)
    );
    println!(
        "  layer cost:    {:8.1} ns/request (median of per-round differences)",
        median(&mut diffs)
    );

    // Two threads on one route: the route's counters are shared.
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let (mut without, mut with) =
        interleaved_on_threads(rounds.div_ceil(2), threads, |layered_run| {
            let app = if layered_run {
                layered.clone()
            } else {
                plain.clone()
            };
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
                .block_on(run(app, n / 2))
        });
    let (w, l) = (median(&mut without), median(&mut with));
    println!("{threads} threads on one route at once");
    println!("  without layer: {w:8.1} ns/request per thread (median)");
    println!("  with layer:    {l:8.1} ns/request per thread (median)");
    println!("  layer cost:    {:8.1} ns/request", l - w);

    let started = Instant::now();
    for i in 0..n {
        metrics.record(
            "GET",
            Some("/items/{id}"),
            200,
            Duration::from_nanos(i as u64),
        );
    }
    println!(
        "RedMetrics::record alone: {:.1} ns/call",
        started.elapsed().as_nanos() as f64 / n as f64
    );
    println!("series kept: {}", metrics.series_count());
}
