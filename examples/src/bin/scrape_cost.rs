//! `/metrics` scrape cost while the host is busy: an agent with the demo's
//! RED layer and pool, ~100 RED series, and every core burning CPU in
//! alternate rounds. Reports the time to encode the exposition in-process
//! and the HTTP round trip of `GET /metrics` over loopback (what a scraper
//! sees) — uncompressed, and gzip-compressed as Prometheus asks for it
//! (`Accept-Encoding: gzip`) — as p50 / p99 / max per condition.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin scrape_cost -- [--rounds 6] [--scrapes 100]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stethoscope::metrics::ExpositionFormat;
use stethoscope_examples::bench::arg;
use stethoscope_examples::demo::{DemoPool, POOL_SIZE};
use stethoscope_examples::workload::walk_call_tree;

/// One `GET /metrics` over a fresh connection, asking for gzip or not;
/// returns (duration, bytes received).
fn scrape(addr: SocketAddr, gzip: bool) -> (Duration, usize) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    let encoding = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept: application/openmetrics-text;version=1.0.0\r\n{encoding}Connection: close\r\n\r\n").as_bytes())
        .expect("write");
    let mut body = Vec::new();
    stream.read_to_end(&mut body).expect("read");
    (started.elapsed(), body.len())
}

fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[index].as_secs_f64() * 1e3
    };
    (at(0.5), at(0.99), at(1.0))
}

fn main() {
    let rounds = arg("--rounds", 6).max(2);
    let scrapes = arg("--scrapes", 100).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pool = DemoPool::new(POOL_SIZE);
    let agent = runtime.block_on(async {
        stethoscope::Agent::builder()
            .listen("127.0.0.1:0")
            .resource(pool)
            .start()
            .expect("agent")
    });
    // ~100 series: 25 routes x 2 methods x 2 statuses.
    for route in 0..25 {
        for method in ["GET", "POST"] {
            for (status, ms) in [(200, 3), (500, 40)] {
                for _ in 0..50 {
                    agent.red().record(
                        method,
                        Some(&format!("/api/v1/resource{route}/{{id}}")),
                        status,
                        Duration::from_millis(ms),
                    );
                }
            }
        }
    }
    let addr = agent.local_addr();
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    // [encode, GET, GET with gzip] x [idle, busy]
    let mut samples: [[Vec<Duration>; 2]; 3] = Default::default();
    let (mut size, mut gzipped) = (0, 0);
    for round in 0..rounds {
        let busy = round % 2 == 1;
        let stop = Arc::new(AtomicBool::new(false));
        let burners: Vec<_> = (0..if busy { threads } else { 0 })
            .map(|t| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut seed = t as u64;
                    while !stop.load(Ordering::Relaxed) {
                        seed = seed.wrapping_add(1);
                        std::hint::black_box(walk_call_tree(seed, 200));
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..scrapes {
            let started = Instant::now();
            let text = agent.metrics().encode(ExpositionFormat::OpenMetrics);
            let encoded = started.elapsed();
            size = text.len();
            let load = usize::from(busy);
            samples[0][load].push(encoded);
            std::thread::sleep(Duration::from_millis(5));
            let (http, _) = scrape(addr, false);
            samples[1][load].push(http);
            std::thread::sleep(Duration::from_millis(5));
            let (http, bytes) = scrape(addr, true);
            gzipped = bytes;
            samples[2][load].push(http);
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        for burner in burners {
            let _ = burner.join();
        }
    }
    println!(
        "{rounds} rounds (idle / {threads} threads burning CPU, alternating) x {scrapes} scrapes; \
         {} RED series, exposition {size} bytes ({gzipped} bytes as gzip, headers included)",
        agent.red().series_count()
    );
    for (what, by_load) in ["encode", "GET /metrics", "GET /metrics gzip"]
        .iter()
        .zip(samples.iter_mut())
    {
        for (load, samples) in ["idle host", "busy host"].iter().zip(by_load.iter_mut()) {
            let (p50, p99, max) = percentiles(samples);
            let name = format!("{what}, {load}");
            println!("  {name:<30} p50 {p50:6.2} ms   p99 {p99:6.2} ms   max {max:6.2} ms");
        }
    }
    runtime.block_on(agent.shutdown());
}
