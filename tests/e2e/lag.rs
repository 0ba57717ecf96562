//! Executor lag, runtime health and stalls through the HTTP API, against
//! workloads whose blocking is known: an idle runtime, a task that blocks
//! its worker 200 ms every second, the demo's `blocking_handler`, every
//! worker blocked at once, 30 s of busy-but-yielding load, and a stall
//! while a CPU profile runs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stethoscope::Agent;
use stethoscope_examples::demo::{self, DemoPool};

use crate::support::*;

/// The demo service with its agent on a two-worker runtime.
struct Service {
    runtime: tokio::runtime::Runtime,
    agent: Agent,
    addr: SocketAddr,
}

impl Service {
    fn start() -> Service {
        Service::start_with(|app, _| app)
    }

    /// The demo with the RED layer, as `cargo run --bin demo` wires it.
    fn start_with_red() -> Service {
        Service::start_with(|app, agent| app.layer(agent.red_layer()))
    }

    fn start_with(wrap: impl FnOnce(axum::Router, &Agent) -> axum::Router) -> Service {
        let runtime = service_runtime();
        let agent = runtime.block_on(async { start_agent() });
        let monitor = agent.task_monitor("demo_spawned");
        let app = wrap(
            demo::router_with_monitor(DemoPool::new(demo::POOL_SIZE), monitor),
            &agent,
        );
        let addr = runtime.block_on(serve(app));
        Service {
            runtime,
            agent,
            addr,
        }
    }

    fn debug(&self) -> SocketAddr {
        self.agent.local_addr()
    }

    fn stop(self) {
        self.runtime.block_on(self.agent.shutdown());
    }
}

fn ms(value: &serde_json::Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

fn stalls(addr: SocketAddr) -> Vec<serde_json::Value> {
    let reply = get(addr, "/debug/runtime", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["stalls"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn frames_contain(stall: &serde_json::Value, name: &str) -> bool {
    stall["frames"].as_array().is_some_and(|frames| {
        frames
            .iter()
            .any(|f| f.as_str().is_some_and(|f| f.contains(name)))
    })
}

/// Waits for a finished stall whose frames name `function`.
fn wait_for_stall(addr: SocketAddr, function: &str) -> Option<serde_json::Value> {
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = stalls(addr)
            .into_iter()
            .find(|s| s["ongoing"] == false && frames_contain(s, function));
        found.is_some()
    });
    found
}

#[test]
fn an_idle_runtime_has_sub_2ms_lag_and_the_shapes_of_the_contract() {
    let _quiet = profiler_lock();
    let service = Service::start();
    let addr = service.debug();
    std::thread::sleep(Duration::from_secs(5));
    let reply = get(addr, "/debug/lag?format=json", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let lag = reply.json();
    assert_eq!(lag["resolution_ms"], 10.0);
    for window in ["all", "10s", "1m", "5m"] {
        assert_histogram_shape(&lag["windows"][window], window);
    }
    let ten = &lag["windows"]["10s"];
    // A quiet runtime is probed every two seconds.
    assert!(ten["count"].as_u64().unwrap() >= 2, "{lag}");
    assert!(ms(&ten["p99_ms"]) <= 2.0, "idle p99 above 2 ms: {lag}");

    let runtime = get(addr, "/debug/runtime", None).json();
    assert_eq!(runtime["workers"], 2, "{runtime}");
    assert!(runtime["alive_tasks"].is_number() && runtime["global_queue_depth"].is_number());
    let workers = runtime["per_worker"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert!(w["worker"].is_number() && w["parks"].is_number(), "{w}");
        let busy = ms(&w["busy_ratio"]);
        assert!((0.0..=0.2).contains(&busy), "idle worker busy {busy}: {w}");
    }
    assert_eq!(runtime["stalls"], serde_json::json!([]), "{runtime}");
    // Built with RUSTFLAGS="--cfg tokio_unstable", tokio's extra counters
    // appear; without it, no empty placeholders.
    #[cfg(tokio_unstable)]
    {
        assert!(
            runtime["unstable"]["spawned_tasks"].as_u64().unwrap() > 0,
            "{runtime}"
        );
        for w in workers {
            assert!(w["unstable"]["polls"].is_number(), "{w}");
            assert!(w["unstable"]["mean_poll_ms"].is_number(), "{w}");
        }
    }
    #[cfg(not(tokio_unstable))]
    {
        assert!(runtime.get("unstable").is_none(), "{runtime}");
        assert!(workers.iter().all(|w| w.get("unstable").is_none()));
    }

    let text = get(addr, "/debug/lag?format=text", None);
    assert_eq!(text.status, 200);
    assert!(text.text().contains("P99"));
    let svg = get(addr, "/debug/lag?format=svg", None);
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    let doc = svg.text();
    let parsed = roxmltree::Document::parse(&doc).expect("the SVG is well-formed XML");
    assert!(parsed
        .descendants()
        .any(|n| n.attribute("class") == Some("p99")));
    assert_eq!(get(addr, "/debug/lag?format=png", None).status, 400);
    assert_eq!(get(addr, "/debug/runtime?format=xml", None).status, 400);
    service.stop();
}

#[test]
fn a_worker_blocked_200ms_every_second_shows_in_the_10s_window() {
    let _quiet = profiler_lock();
    let service = Service::start();
    let addr = service.debug();
    // One task on a two-worker runtime blocks whichever worker runs it;
    // the other worker stays free, so a single probe would never see it.
    let blocker = service.runtime.spawn(async {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    service.runtime.block_on(blocker).expect("blocker");
    let lag = get(addr, "/debug/lag", None).json();
    let max = ms(&lag["windows"]["10s"]["max_ms"]);
    assert!((190.0..=260.0).contains(&max), "10 s max {max} ms: {lag}");
    let found = stalls(addr);
    assert!(found.len() >= 5, "one stall per block: {found:?}");
    for stall in &found {
        let d = ms(&stall["duration_ms"]);
        assert!((190.0..=260.0).contains(&d), "stall of {d} ms: {stall}");
    }
    let metrics = get(addr, "/metrics", None).text();
    assert!(metrics.contains("stethoscope_executor_lag_seconds_bucket{le=\"0.25\"}"));
    assert!(metrics.contains("stethoscope_tokio_stalls_total"));
    service.stop();
}

#[test]
fn a_blocking_handler_is_a_stall_with_its_stack() {
    let _quiet = profiler_lock();
    let service = Service::start();
    let reply = get(service.addr, "/block?ms=300", None);
    assert_eq!(reply.status, 200);
    let stall = wait_for_stall(service.debug(), "blocking_handler").unwrap_or_else(|| {
        panic!(
            "no stall naming blocking_handler: {:?}",
            stalls(service.debug())
        )
    });
    assert!(ms(&stall["duration_ms"]) >= 250.0, "{stall}");
    assert!(stall["worker"].is_number(), "{stall}");
    let started = stall["started_at"].as_str().unwrap();
    assert!(
        started.ends_with('Z') && started.contains('T'),
        "RFC 3339: {started}"
    );
    let frames = stall["frames"].as_array().unwrap();
    let leaf = frames[0].as_str().unwrap_or_default();
    assert!(
        frames
            .iter()
            .take(8)
            .any(|f| f.as_str().unwrap_or_default().contains("sleep")),
        "the leaf frames are the sleep ({leaf}…): {stall}"
    );
    assert_ne!(stall["attribution"], "unavailable", "{stall}");
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&stall).unwrap_or_default()
    );
    let text = get(service.debug(), "/debug/runtime?format=text", None).text();
    assert!(text.contains("blocking_handler"), "{text}");
    service.stop();
}

/// A quiet runtime lets the watchdog sleep (a look every 200 ms, a probe
/// every 2 s); the first request through the RED layer wakes it, so a
/// stall that begins right after a quiet spell — shorter than the threshold
/// plus a dormant look — is still caught with its stack. Five times over: a
/// dormant watchdog that was not woken would catch each 150 ms stall with a
/// chance of about five in eight, all five with one in ten.
#[test]
fn a_stall_right_after_a_quiet_spell_is_caught_with_its_stack() {
    let _quiet = profiler_lock();
    let service = Service::start_with_red();
    for round in 0..5 {
        // Quiet: every worker parked, nothing published for several looks.
        std::thread::sleep(Duration::from_millis(1500));
        let before = stalls(service.debug()).len();
        let reply = get(service.addr, "/block?ms=150", None);
        assert_eq!(reply.status, 200);
        let caught = wait_until(Duration::from_secs(10), || {
            let all = stalls(service.debug());
            all.len() > before
                && all
                    .last()
                    .is_some_and(|s| s["ongoing"] == false && frames_contain(s, "blocking_handler"))
        });
        assert!(
            caught,
            "round {round}: the stall after a quiet spell was missed: {:?}",
            stalls(service.debug())
        );
        let stall = stalls(service.debug()).pop().unwrap();
        assert!(ms(&stall["duration_ms"]) >= 140.0, "{stall}");
    }
    service.stop();
}

#[test]
fn the_debug_server_answers_while_every_worker_is_blocked() {
    let _quiet = profiler_lock();
    let service = Service::start();
    let addr = service.debug();
    std::thread::sleep(Duration::from_millis(300));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    for _ in 0..2 {
        let barrier = std::sync::Arc::clone(&barrier);
        service.runtime.spawn(async move {
            // Both workers hold a task here before either sleeps.
            barrier.wait();
            std::thread::sleep(Duration::from_secs(2));
        });
    }
    std::thread::sleep(Duration::from_millis(400));
    let mut slowest = Duration::ZERO;
    let mut away = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        for path in ["/debug/lag", "/debug/runtime", "/health"] {
            let t = Instant::now();
            let reply = get(addr, path, None);
            let took = t.elapsed();
            assert_eq!(reply.status, 200, "{path}: {}", reply.text());
            slowest = slowest.max(took);
            assert!(took <= Duration::from_millis(100), "{path} took {took:?}");
            if path == "/debug/runtime" {
                away = reply.json()["per_worker"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w["away_ms"].as_f64().unwrap_or(0.0))
                    .collect();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        away.iter().all(|&a| a >= 300.0),
        "both workers are seen away from the scheduler: {away:?}"
    );
    let lag = get(addr, "/debug/lag", None).json();
    assert!(
        lag["probe_waiting_ms"].as_f64().unwrap_or(0.0) >= 300.0,
        "the probe in flight is seen waiting: {lag}"
    );
    // Once released, both workers' stalls are in the history.
    assert!(wait_until(Duration::from_secs(10), || {
        let list = stalls(addr);
        list.iter()
            .filter(|s| s["ongoing"] == false && ms(&s["duration_ms"]) >= 1900.0)
            .count()
            >= 2
    }));
    eprintln!("slowest debug answer while blocked: {slowest:?}");
    service.stop();
}

#[test]
fn busy_but_yielding_load_raises_no_stall() {
    let _quiet = profiler_lock();
    let service = Service::start();
    let addr = service.debug();
    let load = service.runtime.spawn(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut round = 0u64;
        while tokio::time::Instant::now() < deadline {
            round += 1;
            let mut tasks = Vec::new();
            // CPU in short polls, timers, and a burst of tiny tasks.
            for i in 0..8u64 {
                tasks.push(tokio::spawn(async move {
                    for _ in 0..20 {
                        stethoscope_examples::workload::spin(Duration::from_micros(
                            200 + (i * 97 + round) % 600,
                        ));
                        tokio::task::yield_now().await;
                    }
                    tokio::time::sleep(Duration::from_millis(1 + i % 3)).await;
                }));
            }
            for _ in 0..200 {
                tasks.push(tokio::spawn(async {
                    stethoscope_examples::workload::spin(Duration::from_micros(20));
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        round
    });
    let rounds = service.runtime.block_on(load).expect("load");
    let spawned = get(service.addr, "/spawn?n=5000", None);
    assert_eq!(spawned.status, 200);
    let runtime = get(addr, "/debug/runtime", None).json();
    assert_eq!(
        runtime["stalls_total"], 0,
        "false positives after {rounds} rounds: {runtime}"
    );
    let monitor = runtime["task_monitors"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "demo_spawned").cloned())
        .unwrap_or_else(|| panic!("no demo_spawned monitor: {runtime}"));
    assert_eq!(monitor["instrumented"], 5000, "{monitor}");
    assert!(
        monitor["polls"].as_u64().unwrap() >= 10_000,
        "two polls per task: {monitor}"
    );
    // Each task spins 50 µs in its first poll and yields: the mean poll is
    // about half of that, and every yield is a reschedule.
    let mean_poll = ms(&monitor["mean_poll_ms"]);
    assert!((0.01..=1.0).contains(&mean_poll), "{monitor}");
    assert!(monitor["scheduled"].as_u64().unwrap() >= 5000, "{monitor}");
    assert!(ms(&monitor["mean_scheduled_ms"]) >= 0.0, "{monitor}");
    assert!(
        (0.0..=1.0).contains(&ms(&monitor["slow_poll_ratio"])),
        "{monitor}"
    );
    for field in [
        "mean_first_poll_delay_ms",
        "mean_idle_ms",
        "slow_poll_threshold_ms",
    ] {
        assert!(monitor[field].is_number(), "{field}: {monitor}");
    }
    let busy: f64 = runtime["per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["busy_ratio"].as_f64().unwrap_or(0.0))
        .sum();
    assert!(busy <= 2.0);
    service.stop();
}

#[test]
fn a_stall_is_captured_while_a_cpu_profile_runs() {
    let _lock = profiler_lock();
    let service = Service::start();
    let debug = service.debug();
    let profile =
        std::thread::spawn(move || get(debug, "/debug/pprof/profile?seconds=3&format=text", None));
    wait_for_subscribers(1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(service.addr, "/block?ms=300", None).status, 200);
    let stall = wait_for_stall(debug, "blocking_handler");
    let profile = profile.join().expect("profile thread");
    assert_eq!(profile.status, 200, "{}", profile.text());
    assert!(
        stall.is_some(),
        "no stall with its stack: {:?}",
        stalls(debug)
    );
    assert!(wait_for_idle_sampler());
    assert!(sigprof_ignored(), "SIGPROF is left ignored");
    service.stop();
}

#[test]
fn without_a_runtime_lag_and_runtime_report_unavailable() {
    let agent = start_agent();
    let lag = get(agent.local_addr(), "/debug/lag", None);
    assert_eq!(lag.status, 200);
    let lag = lag.json();
    assert_eq!(lag["available"], false);
    assert!(lag["reason"].as_str().unwrap().contains("runtime"));
    assert_eq!(lag["windows"]["10s"]["count"], 0);
    let runtime = get(agent.local_addr(), "/debug/runtime", None).json();
    assert_eq!(runtime["available"], false);
    assert_eq!(runtime["stalls"], serde_json::json!([]));
    assert_eq!(
        get(agent.local_addr(), "/debug/lag?format=svg", None).status,
        503
    );
}
