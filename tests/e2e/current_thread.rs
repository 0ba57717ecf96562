//! An agent started inside a `current_thread` runtime
//! (`#[tokio::main(flavor = "current_thread")]`): the service's only thread
//! is its only worker. The debug server runs on its own thread, so it
//! answers while that thread is blocked; the lag probe, the stuck-worker
//! watchdog, the doctor and both profilers work on the one thread.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::routing::get as route_get;
use serde::Deserialize;
use serde_json::Value;
use stethoscope::doctor::{DoctorSettings, RuleWindows};
use stethoscope::Agent;

use crate::support::*;

/// Name of the runtime's (only) thread.
const THREAD: &str = "only-thread";

#[derive(Debug, Deserialize)]
struct Ms {
    ms: u64,
}

/// Blocks the runtime's only thread: nothing else is polled meanwhile.
#[inline(never)]
async fn blocks_the_only_thread(Query(q): Query<Ms>) -> &'static str {
    std::thread::sleep(Duration::from_millis(q.ms.min(5_000)));
    "blocked"
}

/// Burns CPU on the runtime's only thread (3:1 `burn_hot`/`burn_cold`).
async fn burns_the_only_thread(Query(q): Query<Ms>) -> &'static str {
    stethoscope_examples::workload::burn(Duration::from_millis(q.ms.min(5_000)));
    "burned"
}

/// The service on a `current_thread` runtime on its own thread, with the
/// agent started inside it; stops when dropped.
struct CurrentThreadService {
    agent: SocketAddr,
    service: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CurrentThreadService {
    fn start() -> Self {
        let (ready, started) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("current_thread runtime");
                runtime.block_on(async move {
                    let mut settings = DoctorSettings::default();
                    settings.config.windows = RuleWindows::all(Duration::from_secs(3));
                    settings.config.lookback = Duration::from_secs(3);
                    settings.config.stall_recency = Duration::from_secs(10);
                    // The finding's automatic CPU profile, short.
                    settings.capture.profile = Duration::from_secs(2);
                    // Inside the runtime: the lag probe and the watchdog
                    // attach to it (Handle::current()).
                    let agent = Agent::builder()
                        .listen("127.0.0.1:0")
                        .doctor(settings)
                        .start()
                        .expect("agent starts");
                    let app = axum::Router::new()
                        .route("/block", route_get(blocks_the_only_thread))
                        .route("/burn", route_get(burns_the_only_thread))
                        .layer(agent.red_layer());
                    let service = serve(app).await;
                    let _ = ready.send((agent.local_addr(), service));
                    let _ = stopped.await;
                    agent.shutdown().await;
                });
            })
            .expect("spawn the runtime's thread");
        let (agent, service) = started
            .recv_timeout(Duration::from_secs(60))
            .expect("the service started");
        CurrentThreadService {
            agent,
            service,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Sends `path` to the service from another thread.
    fn request(&self, path: &str) -> std::thread::JoinHandle<Reply> {
        let (addr, path) = (self.service, path.to_owned());
        std::thread::spawn(move || get(addr, &path, None))
    }
}

impl Drop for CurrentThreadService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn frames_name(frames: &Value, function: &str) -> bool {
    frames.as_array().is_some_and(|f| {
        f.iter()
            .any(|f| f.as_str().is_some_and(|f| f.contains(function)))
    })
}

#[test]
fn a_current_thread_runtime_is_watched_profiled_and_diagnosed() {
    if !is_child() {
        let _alone = profiler_lock();
        return in_child(
            "current_thread::a_current_thread_runtime_is_watched_profiled_and_diagnosed",
            &[],
        );
    }
    let slow = if emulated() { 3 } else { 1 };
    let service = CurrentThreadService::start();
    let agent = service.agent;

    // The only thread blocked for 3 s: the debug server still answers, at
    // once, and sees the block as lag and as a stall with its culprit.
    let blocked = service.request("/block?ms=3000");
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    let health = get(agent, "/health", None);
    let took = asked.elapsed();
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(
        took < Duration::from_millis(500) * slow,
        "/health took {took:?} while the only thread was blocked"
    );
    let mut stall = Value::Null;
    let seen = wait_until(Duration::from_secs(10) * slow, || {
        let runtime = get(agent, "/debug/runtime", None).json();
        stall = runtime["stalls"]
            .as_array()
            .and_then(|s| {
                s.iter()
                    .find(|s| frames_name(&s["frames"], "blocks_the_only_thread"))
            })
            .cloned()
            .unwrap_or(Value::Null);
        !stall.is_null()
    });
    assert!(
        seen,
        "no stall naming the handler: {}",
        get(agent, "/debug/runtime", None).text()
    );
    assert!(frames_name(&stall["frames"], "sleep"), "{stall}");
    assert_eq!(blocked.join().unwrap().status, 200);
    // The probe records its lateness once the thread runs it again.
    let mut lag = Value::Null;
    let mut max_ms = 0.0;
    wait_until(Duration::from_secs(5) * slow, || {
        lag = get(agent, "/debug/lag?format=json", None).json();
        max_ms = lag["windows"]["all"]["max_ms"].as_f64().unwrap_or(0.0);
        max_ms >= 2_500.0
    });
    assert!(
        (2_500.0..10_000.0 * slow as f64).contains(&max_ms),
        "executor lag of a 3 s block: {lag}"
    );
    let runtime = get(agent, "/debug/runtime", None).json();
    assert_eq!(runtime["workers"], 1, "{runtime}");

    // The doctor names the blocking handler: blocks of 300 ms, repeated
    // until its finding opens (a 3 s window here).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let blocker = {
        let (stop, addr) = (std::sync::Arc::clone(&stop), service.service);
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(60)
            {
                get(addr, "/block?ms=300", None);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let mut finding = Value::Null;
    let opened = wait_until(Duration::from_secs(30) * slow, || {
        let doctor = get(agent, "/debug/doctor", None).json();
        finding = doctor["findings"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["rule"] == "event_loop_blocked"))
            .cloned()
            .unwrap_or(Value::Null);
        !finding.is_null()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    blocker.join().unwrap();
    assert!(
        opened,
        "no event_loop_blocked finding: {}",
        get(agent, "/debug/doctor?format=text", None).text()
    );
    assert!(
        frames_name(&finding["evidence"]["frames"], "blocks_the_only_thread"),
        "{finding}"
    );

    // CPU: the only thread burning inside a handler, its stack through
    // the runtime's frames to the named functions (once the profile the
    // finding captured is done).
    assert!(wait_for_idle_sampler(), "the doctor's capture did not end");
    let burning = service.request("/burn?ms=4000");
    let cpu = get(
        agent,
        "/debug/pprof/profile?seconds=2&format=json&hz=250",
        None,
    );
    burning.join().unwrap();
    assert_eq!(cpu.status, 200, "{}", cpu.text());
    let cpu = cpu.json();
    let on_thread: Vec<&Value> = stacks_through(&cpu, "workload::burn_hot")
        .filter(|s| s["thread"] == THREAD)
        .collect();
    assert!(
        on_thread
            .iter()
            .any(|s| frames_name(&s["frames"], "burns_the_only_thread")),
        "no stack from the handler to burn_hot on {THREAD}: {cpu}"
    );

    // Wall clock, workers only: the runtime's thread is found, and a block
    // inside a poll is `waiting` in the handler. (The 4 s burn blocked the
    // runtime too: a capture of the doctor's may hold the sampler.)
    assert!(wait_for_idle_sampler(), "the doctor's capture did not end");
    let blocked = service.request("/block?ms=3000");
    let wall = get(
        agent,
        "/debug/pprof/profile?seconds=2&mode=wall&threads=workers&hz=50&format=json",
        None,
    );
    blocked.join().unwrap();
    assert_eq!(wall.status, 200, "{}", wall.text());
    let wall = wall.json();
    let threads: Vec<&str> = wall["stacks"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["thread"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !threads.is_empty() && threads.iter().all(|t| *t == THREAD),
        "threads=workers samples the runtime's thread only: {threads:?}"
    );
    let waiting_in_handler = wall["stacks"].as_array().is_some_and(|stacks| {
        stacks.iter().any(|s| {
            frames_name(&s["frames"], "blocks_the_only_thread") && s["labels"]["state"] == "waiting"
        })
    });
    assert!(waiting_in_handler, "{wall}");

    // Idle again: the thread waits in the runtime, `parked`. The 3 s block
    // may have opened a finding whose CPU capture holds the sampler: wait
    // for it to end (a capture can start between the wait and the request:
    // then wait again, a bounded number of times).
    let mut wall = None;
    for _ in 0..3 {
        assert!(wait_for_idle_sampler(), "the doctor's capture did not end");
        let reply = get(
            agent,
            "/debug/pprof/profile?seconds=1&mode=wall&threads=workers&hz=50&format=json",
            None,
        );
        if reply.status != 409 {
            wall = Some(reply);
            break;
        }
    }
    let wall = wall.expect("the sampler stayed busy with other profiles");
    assert_eq!(wall.status, 200, "{}", wall.text());
    let wall = wall.json();
    let parked = wall["stacks"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["labels"]["state"] == "parked"));
    assert!(parked, "an idle current_thread runtime is parked: {wall}");
}
