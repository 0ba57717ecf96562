//! Cost of the dashboard: what one refresh tick (`GET
//! /debug/dashboard.json?since=…`, the page's only request while it is
//! open) costs the agent, and what the first tick (the whole history
//! window) costs, on a service with `--routes` routes under light load.
//!
//! The agent's CPU time is read exactly from the scheduler for its HTTP
//! threads (the server thread and its blocking pool, all named
//! `stethoscope-http`), so the client's own work is not counted; latency
//! is measured on a fresh connection per request, as a browser tab that
//! refreshes every few seconds would see it.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin dashboard_overhead -- [--rounds 7] [--ticks 100] [--routes 20] [--warm-secs 30]
//! ```

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use stethoscope::Agent;
use stethoscope_examples::bench::{arg, median, thread_cpu_ns};

/// `GET path` on a fresh connection: milliseconds and the body.
fn fetch(addr: SocketAddr, path: &str) -> Option<(f64, Vec<u8>)> {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    if !response.starts_with(b"HTTP/1.1 200") {
        return None;
    }
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(Vec::new(), |at| response[at + 4..].to_vec());
    Some((started.elapsed().as_secs_f64() * 1e3, body))
}

/// The tick's `now_ms`.
fn now_ms(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find("\"now_ms\":")? + "\"now_ms\":".len()..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Agent CPU milliseconds and median latency of `count` requests of `path`.
fn measure(agent: SocketAddr, path: &str, count: usize) -> (f64, f64, usize) {
    let cpu = thread_cpu_ns("stethoscope-http");
    let mut times = Vec::with_capacity(count);
    let mut bytes = 0;
    for _ in 0..count {
        if let Some((ms, body)) = fetch(agent, path) {
            times.push(ms);
            bytes = body.len();
        }
    }
    let used = thread_cpu_ns("stethoscope-http").saturating_sub(cpu) as f64 / 1e6;
    assert!(!times.is_empty(), "{path} answered");
    (used / times.len() as f64, median(&mut times), bytes)
}

fn main() {
    let rounds = arg("--rounds", 7).max(1);
    let ticks = arg("--ticks", 100).max(1);
    let routes = arg("--routes", 20).clamp(1, 200);
    let warm = Duration::from_secs(arg("--warm-secs", 30).max(3) as u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let agent = {
        let _guard = runtime.enter();
        Agent::builder()
            .listen("127.0.0.1:0")
            .start()
            .expect("agent starts")
    };
    let mut router = Router::new();
    for route in 0..routes {
        router = router.route(
            &format!("/r{route}/{{id}}"),
            get(|Path(id): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(id % 7)).await;
                "ok"
            }),
        );
    }
    let router = router.layer(agent.red_layer());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let service = listener.local_addr().expect("address");
    runtime.spawn(async move { axum::serve(listener, router).await });
    // Light load on every route: RED windows and history rows to read.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let _ = fetch(service, &format!("/r{}/{i}", i % routes as u64));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    eprintln!("warming up for {warm:?} (history rows, RED windows)…");
    std::thread::sleep(warm);
    let addr = agent.local_addr();
    let page = fetch(addr, "/debug").map_or(0, |(_, body)| body.len());

    let (mut tick_cpu, mut tick_ms, mut full_cpu, mut full_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut tick_bytes, mut full_bytes) = (0, 0);
    for _ in 0..rounds {
        // The first tick: the whole window.
        let (cpu, ms, bytes) = measure(addr, "/debug/dashboard.json", 5);
        full_cpu.push(cpu);
        full_ms.push(ms);
        full_bytes = bytes;
        // A refresh: the rows of the last 3 s.
        let since = fetch(addr, "/debug/dashboard.json")
            .and_then(|(_, body)| now_ms(&body))
            .expect("a tick's now_ms")
            .saturating_sub(3_000);
        let (cpu, ms, bytes) =
            measure(addr, &format!("/debug/dashboard.json?since={since}"), ticks);
        tick_cpu.push(cpu);
        tick_ms.push(ms);
        tick_bytes = bytes;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    let rows = fetch(addr, "/debug/doctor")
        .and_then(|(_, body)| {
            let text = String::from_utf8_lossy(&body).into_owned();
            let rest = &text[text.find("\"rows\":")? + 7..];
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    println!("dashboard cost ({routes} routes under load, ~{rows} history rows, {rounds} rounds)");
    println!("  page:           {:.1} KiB, static", page as f64 / 1024.0);
    println!(
        "  refresh tick:   {:.3} ms of agent CPU, {:.2} ms latency, {:.1} KiB (median over rounds of {ticks} ticks)",
        median(&mut tick_cpu),
        median(&mut tick_ms),
        tick_bytes as f64 / 1024.0
    );
    println!(
        "  first tick:     {:.3} ms of agent CPU, {:.2} ms latency, {:.1} KiB (the whole window)",
        median(&mut full_cpu),
        median(&mut full_ms),
        full_bytes as f64 / 1024.0
    );
    runtime.block_on(agent.shutdown());
}
