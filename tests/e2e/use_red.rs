//! USE and RED through the HTTP API: every resource present, live cgroup
//! readings, and ground truth the tests set themselves (file descriptor
//! limit, RSS growth, a known mix of requests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use stethoscope::Agent;

use crate::support::*;

fn resource<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["resources"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no {name} row in {report}"))
}

#[test]
fn use_table_has_every_resource_with_values_or_reasons() {
    // Keeps this load off the CPU-profile ground-truth tests' windows.
    let _quiet = profiler_lock();
    let runtime = service_runtime();
    let agent = runtime.block_on(async { start_agent() });
    let addr = agent.local_addr();
    // Rates need two samples 200 ms apart; the agent samples every second.
    std::thread::sleep(Duration::from_millis(300));
    let reply = get(addr, "/debug/use", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let report = reply.json();
    for name in stethoscope::resources::BUILTIN_RESOURCES {
        let row = resource(&report, name);
        for field in ["utilization", "saturation", "errors", "limit", "used"] {
            assert!(row.get(field).is_some(), "{name}.{field} missing: {row}");
        }
        let source = row["source"].as_str().unwrap_or_default();
        assert!(!source.is_empty(), "{name} has no source");
    }
    let cpu = resource(&report, "cpu");
    assert!(cpu["limit"].as_f64().unwrap() >= 1.0, "{cpu}");
    assert!(cpu["utilization"].as_f64().is_some(), "{cpu}");
    let memory = resource(&report, "memory");
    assert!(memory["used"].as_f64().unwrap() > 1e6, "{memory}");
    // This host and CI run cgroup v1 (hybrid) or v2: the live hierarchy is read.
    assert!(
        memory["source"].as_str().unwrap().contains("cgroup v"),
        "{memory}"
    );
    assert_eq!(resource(&report, "executor")["limit"], 2.0);
    // The test binary allocates through jemalloc (heap_profiling!), so the
    // heap row reads its statistics.
    let heap = resource(&report, "heap");
    assert!(heap["used"].as_f64().is_some_and(|b| b > 1e6), "{heap}");
    assert!(
        heap["utilization"]
            .as_f64()
            .is_some_and(|u| u > 0.0 && u <= 1.0),
        "{heap}"
    );
    assert!(heap["source"].as_str().unwrap().contains("jemalloc"));

    let text = get(addr, "/debug/use?format=text", None);
    assert_eq!(text.status, 200);
    assert!(text.text().contains("file_descriptors"));
    let bad = get(addr, "/debug/use?format=xml", None);
    assert_eq!(bad.status, 400);
    assert!(bad.json()["hint"].as_str().unwrap().contains("json"));
    runtime.block_on(agent.shutdown());
}

/// Lowers `RLIMIT_NOFILE`, opens a known number of files and grows RSS by a
/// known amount, then checks `/debug/use`. Runs in a child process with no
/// other test, so nothing else opens files or allocates meanwhile.
#[test]
fn fd_and_rss_follow_known_changes() {
    if !is_child() {
        let _quiet = profiler_lock();
        in_child("use_red::fd_and_rss_follow_known_changes", &[]);
        return;
    }
    const LIMIT: u64 = 512;
    const OPENED: usize = 200;
    const GROWTH: usize = 96 << 20;
    let limit = libc::rlimit {
        rlim_cur: LIMIT,
        rlim_max: LIMIT,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());

    let agent = start_agent();
    let addr = agent.local_addr();
    let before = get(addr, "/debug/use", None).json();
    let fds_before = resource(&before, "file_descriptors")["used"]
        .as_f64()
        .unwrap();
    let rss_before = resource(&before, "memory")["details"]["resident_bytes"]
        .as_f64()
        .unwrap();

    let files: Vec<std::fs::File> = (0..OPENED)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let mut ballast = vec![0u8; GROWTH];
    for page in ballast.chunks_mut(4096) {
        page[0] = 1; // touch every page so it is resident
    }
    std::hint::black_box(&ballast);

    let after = get(addr, "/debug/use", None).json();
    let fds = resource(&after, "file_descriptors");
    eprintln!("before: {fds_before} fds; after: {fds}");
    assert_eq!(fds["limit"].as_f64(), Some(LIMIT as f64));
    assert_eq!(fds["used"].as_f64(), Some(fds_before + OPENED as f64));
    let utilization = fds["utilization"].as_f64().unwrap();
    assert!(
        (utilization - (fds_before + OPENED as f64) / LIMIT as f64).abs() < 1e-9,
        "{fds}"
    );
    let memory = resource(&after, "memory");
    let rss_after = memory["details"]["resident_bytes"].as_f64().unwrap();
    let grew = (rss_after - rss_before) / (1 << 20) as f64;
    eprintln!("RSS grew by {grew:.1} MiB for {} MiB touched", GROWTH >> 20);
    assert!(
        (90.0..=110.0).contains(&grew),
        "RSS grew by {grew:.1} MiB, expected ~96"
    );
    // `used` is RSS without a cgroup memory limit, else the cgroup's working
    // set: either way it follows the growth.
    let used_grew = (memory["used"].as_f64().unwrap()
        - resource(&before, "memory")["used"].as_f64().unwrap())
        / (1 << 20) as f64;
    assert!(used_grew >= 88.0, "memory.used grew by {used_grew:.1} MiB");
    drop(files);
    drop(ballast);
}

/// 300 requests, a known 10 % of 500s and a known 20 ms handler latency,
/// served by axum with the RED layer over real sockets.
#[test]
fn red_reports_known_requests_errors_and_latency() {
    // Keeps this load off the CPU-profile ground-truth tests' windows.
    let _quiet = profiler_lock();
    const REQUESTS: usize = 300;
    const LATENCY: Duration = Duration::from_millis(20);
    let runtime = service_runtime();
    let agent = runtime.block_on(async { start_agent() });
    let calls = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/orders/{id}",
            axum::routing::get(move || {
                let calls = Arc::clone(&calls);
                async move {
                    tokio::time::sleep(LATENCY).await;
                    if calls.fetch_add(1, Ordering::Relaxed).is_multiple_of(10) {
                        Err(StatusCode::INTERNAL_SERVER_ERROR)
                    } else {
                        Ok("order")
                    }
                }
            }),
        )
        .layer(agent.red_layer());
    let service = runtime.block_on(serve(app));

    let empty = get(agent.local_addr(), "/debug/red", None).json();
    assert_eq!(empty["layer_installed"], true);
    assert_eq!(empty["routes"].as_array().unwrap().len(), 0);

    // Ten clients at once, 30 requests each, distinct raw paths.
    std::thread::scope(|s| {
        for client in 0..10 {
            s.spawn(move || {
                for i in 0..REQUESTS / 10 {
                    let reply = get(service, &format!("/orders/{}", client * 1000 + i), None);
                    assert!(reply.status == 200 || reply.status == 500);
                }
            });
        }
    });
    let _ = get(service, "/not/a/route", None);

    let report = get(agent.local_addr(), "/debug/red", None).json();
    eprintln!("{report:#}");
    let routes = report["routes"].as_array().unwrap();
    let orders = routes
        .iter()
        .find(|r| r["route"] == "/orders/{id}")
        .unwrap_or_else(|| panic!("route template missing: {report}"));
    assert_eq!(orders["method"], "GET");
    assert_eq!(orders["requests"], REQUESTS as u64);
    assert_eq!(orders["errors"], (REQUESTS / 10) as u64);
    assert!((orders["error_ratio"].as_f64().unwrap() - 0.10).abs() < 1e-9);
    assert_eq!(orders["statuses"]["500"], 30);
    assert!(orders["rate_per_s"].as_f64().unwrap() > 0.0);
    let latency = &orders["latency"];
    assert_histogram_shape(latency, "latency");
    let p50 = latency["p50_ms"].as_f64().unwrap();
    let known = LATENCY.as_secs_f64() * 1e3;
    assert!(
        (p50 - known).abs() <= 0.2 * known,
        "p50 {p50:.2} ms is not within 20 % of {known} ms"
    );
    assert!(
        routes.iter().any(|r| r["route"] == "<unmatched>"),
        "unmatched requests get one route: {report}"
    );
    assert!(
        !report.to_string().contains("/orders/1"),
        "raw paths never become labels"
    );
    let text = get(agent.local_addr(), "/debug/red?format=text", None);
    assert!(text.text().contains("/orders/{id}"));
    runtime.block_on(agent.shutdown());
}

#[test]
fn red_without_a_layer_says_so() {
    let agent = Agent::builder().listen("127.0.0.1:0").start().unwrap();
    let report = get(agent.local_addr(), "/debug/red", None).json();
    assert_eq!(report["layer_installed"], false);
    assert!(report["hint"].as_str().unwrap().contains("red_layer"));
}
