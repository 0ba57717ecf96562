//! `/metrics` with real tools: `promtool check metrics` on the exposition,
//! and a real Prometheus server scraping the demo service's agent every
//! second, queried through its HTTP API.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stethoscope::Agent;
use stethoscope_examples::demo::{self, DemoPool};

use crate::support::*;

/// The demo service with its agent, on a multi-thread runtime, as
/// `cargo run --bin demo` wires it.
struct Demo {
    runtime: tokio::runtime::Runtime,
    agent: Agent,
    service: SocketAddr,
}

impl Demo {
    fn start() -> Demo {
        let runtime = service_runtime();
        let pool = DemoPool::new(demo::POOL_SIZE);
        let agent = runtime.block_on(async {
            Agent::builder()
                .listen("127.0.0.1:0")
                .resource(pool.clone())
                .start()
                .unwrap()
        });
        let app = demo::router(pool).layer(agent.red_layer());
        let service = runtime.block_on(serve(app));
        Demo {
            runtime,
            agent,
            service,
        }
    }

    /// `rounds` × (one `/items/{id}` and one `/flaky`).
    fn traffic(&self, rounds: usize) {
        for i in 0..rounds {
            let _ = get(self.service, &format!("/items/{i}"), None);
            let _ = get(self.service, "/flaky", None);
        }
    }

    fn stop(self) {
        self.runtime.block_on(self.agent.shutdown());
    }
}

#[test]
fn promtool_accepts_the_exposition_and_formats_are_negotiated() {
    // Keeps this load off the CPU-profile ground-truth tests' windows.
    let _quiet = profiler_lock();
    let demo = Demo::start();
    demo.traffic(10);
    let addr = demo.agent.local_addr();

    let text = get(addr, "/metrics", None);
    assert_eq!(text.status, 200);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = text.text();
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
        "stethoscope_tokio_workers 2",
        "stethoscope_tokio_worker_busy_seconds_total{worker=\"1\"}",
        "stethoscope_tokio_global_queue_depth",
        "stethoscope_cpu_profiler_samples_total",
        "stethoscope_executor_lag_seconds_bucket{le=\"0.001\"}",
        "stethoscope_executor_lag_seconds_count",
        "stethoscope_tokio_stalls_total",
        "stethoscope_jemalloc_allocated_bytes",
        "stethoscope_jemalloc_active_bytes",
        "stethoscope_jemalloc_resident_bytes",
        "stethoscope_jemalloc_mapped_bytes",
        "stethoscope_jemalloc_retained_bytes",
        "stethoscope_jemalloc_metadata_bytes",
        "stethoscope_heap_profiling_active 1",
        "stethoscope_use_utilization_ratio{resource=\"heap\"}",
        "stethoscope_use_utilization_ratio{resource=\"db_pool\"}",
        "http_server_request_duration_seconds_bucket{method=\"GET\",route=\"/items/{id}\",status=\"200\",le=\"0.025\"}",
        "http_server_request_duration_seconds_count{method=\"GET\",route=\"/flaky\",status=\"500\"} 1",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    let (ok, report) = promtool_check(&body);
    assert!(
        ok,
        "promtool check metrics failed:\n{report}\n--- exposition ---\n{body}"
    );

    let openmetrics = get_with(
        addr,
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
    );
    assert!(openmetrics
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    let om = openmetrics.text();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE process_cpu_seconds counter\n# UNIT process_cpu_seconds seconds\n"));
    let forced = get(addr, "/metrics?format=openmetrics", None);
    assert!(forced.text().ends_with("# EOF\n"));
    let bad = get(addr, "/metrics?format=json", None);
    assert_eq!(bad.status, 400);
    assert!(bad.json()["hint"].is_string());

    // Prometheus asks for gzip; the exposition shrinks severalfold.
    let compressed = get_with(addr, "/metrics", &[("Accept-Encoding", "gzip")]);
    assert_eq!(compressed.status, 200);
    assert_eq!(compressed.header("content-encoding"), Some("gzip"));
    assert_eq!(compressed.header("vary"), Some("Accept-Encoding"));
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(compressed.body.as_slice()),
        &mut unzipped,
    )
    .expect("a gzip stream");
    assert!(
        unzipped.contains("\nprocess_resident_memory_bytes "),
        "{unzipped}"
    );
    assert!(
        compressed.body.len() * 3 < unzipped.len(),
        "{} bytes compressed to {}",
        unzipped.len(),
        compressed.body.len()
    );
    assert_eq!(text.header("content-encoding"), None);
    demo.stop();
}

/// Runs `promtool check metrics` on `exposition`.
pub(crate) fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); install the prometheus package (bash tests/run.sh does)")
        });
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(exposition.as_bytes())
            .expect("write to promtool");
    }
    let output = child.wait_with_output().expect("promtool");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second.
    ///
    /// Prometheus cannot be handed a bound socket, so its port is found by
    /// binding `127.0.0.1:0` and closing it: another process could take the
    /// port in between. A start that fails is retried with a new port.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = scratch_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: demo\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        for attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("probe a free port")
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run prometheus ({e}); install the prometheus package (bash tests/run.sh does)")
                });
            let mut server = Prometheus { child, addr, log };
            let ready = wait_until(Duration::from_secs(20), || {
                if matches!(server.child.try_wait(), Ok(Some(_))) {
                    return true;
                }
                std::net::TcpStream::connect(addr).is_ok()
                    && get(addr, "/-/ready", None).status == 200
            });
            if ready && matches!(server.child.try_wait(), Ok(None)) {
                return server;
            }
            eprintln!(
                "prometheus did not start on {addr} (attempt {attempt}):\n{}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
            let _ = server.child.kill();
        }
        panic!("prometheus did not start in three attempts");
    }

    /// Result vector of an instant query.
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let query: String = form_encode(promql);
        let reply = get(self.addr, &format!("/api/v1/query?query={query}"), None);
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_demo() {
    // Keeps this load off the CPU-profile ground-truth tests' windows.
    let _quiet = profiler_lock();
    let demo = Demo::start();
    let prometheus = Prometheus::start(demo.agent.local_addr());
    let started = Instant::now();
    let wanted = vec![
        "process_resident_memory_bytes".to_owned(),
        "http_server_request_duration_seconds_count{route=\"/items/{id}\"}".to_owned(),
        "http_server_request_duration_seconds_count{route=\"/flaky\",status=\"500\"}".to_owned(),
        "stethoscope_use_utilization_ratio{resource=\"db_pool\"}".to_owned(),
        "stethoscope_tokio_workers".to_owned(),
        "stethoscope_executor_lag_seconds_bucket".to_owned(),
    ];
    let mut missing = wanted.clone();
    let found = wait_until(Duration::from_secs(30), || {
        demo.traffic(5);
        missing.retain(|query| prometheus.query(query).is_empty());
        missing.is_empty()
    });
    let targets = get(prometheus.addr, "/api/v1/targets", None).json();
    assert!(
        found,
        "Prometheus has no series for {missing:?} after {:?}; targets: {targets}\nlog:\n{}",
        started.elapsed(),
        std::fs::read_to_string(&prometheus.log).unwrap_or_default()
    );
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target}");
    assert_eq!(target["lastError"], "", "{target}");
    let rss = prometheus.query("process_resident_memory_bytes");
    let value: f64 = rss[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(value > 1e6, "{rss:?}");
    eprintln!(
        "Prometheus saw {} series in {:?}",
        wanted.len(),
        started.elapsed()
    );
    drop(prometheus);
    demo.stop();
}
