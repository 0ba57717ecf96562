//! The hung service: requests that wait for ever while the CPU idles, seen
//! in flight (`/debug/red`), in every thread's stack (`/debug/threads`), in
//! the task dump (`/debug/tasks`, in the demo built with tokio_unstable)
//! and by the doctor (`requests_stuck`, `tasks_climbing`).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use stethoscope::doctor::{DoctorSettings, RuleWindows};
use stethoscope::Agent;

use crate::support::*;

/// Requests sent to each hanging route.
const HUNG_PER_ROUTE: usize = 12;

/// Opens `count` connections to `addr` and sends `GET path` on each,
/// never reading the answer: requests the service holds until the
/// connections close.
fn hang(addr: SocketAddr, path: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .filter_map(|_| {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).ok()?;
            Some(stream)
        })
        .collect()
}

/// The agent's doctor JSON.
fn doctor(agent: SocketAddr) -> Value {
    let reply = get(agent, "/debug/doctor", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn finding(agent: SocketAddr, rule: &str) -> Option<Value> {
    doctor(agent)["findings"]
        .as_array()?
        .iter()
        .find(|f| f["rule"] == rule)
        .cloned()
}

/// The route row of `/debug/red` JSON.
fn red_route<'a>(red: &'a Value, route: &str) -> Option<&'a Value> {
    red["routes"]
        .as_array()?
        .iter()
        .find(|r| r["route"] == route)
}

#[test]
fn stuck_requests_are_in_flight_in_red_named_by_the_doctor_and_the_workers_are_parked() {
    if !is_child() {
        return in_child(
            "hung::stuck_requests_are_in_flight_in_red_named_by_the_doctor_and_the_workers_are_parked",
            &[],
        );
    }
    let runtime = service_runtime();
    let mut settings = DoctorSettings::default();
    // The shipped thresholds (30 s, 10× p99); only the hysteresis shorter.
    settings.config.windows = RuleWindows::all(Duration::from_secs(3));
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .watch_runtime(runtime.handle().clone())
        .doctor(settings)
        .start()
        .expect("agent starts");
    let app = stethoscope_examples::demo::router(stethoscope_examples::demo::DemoPool::new(4))
        .layer(agent.red_layer());
    let service = runtime.block_on(serve(app));
    let debug = agent.local_addr();

    let started = Instant::now();
    let permits = hang(service, "/trouble/hang/permit", HUNG_PER_ROUTE);
    let channels = hang(service, "/trouble/hang/channel", HUNG_PER_ROUTE);
    assert_eq!(permits.len() + channels.len(), 2 * HUNG_PER_ROUTE);

    // In flight per route, with their age.
    let mut red = Value::Null;
    let all_in = wait_until(Duration::from_secs(20), || {
        red = get(debug, "/debug/red", None).json();
        ["/trouble/hang/permit", "/trouble/hang/channel"]
            .iter()
            .all(|route| {
                red_route(&red, route).and_then(|r| r["in_flight"].as_u64())
                    == Some(HUNG_PER_ROUTE as u64)
            })
    });
    assert!(all_in, "not all in flight: {red:#}");
    std::thread::sleep(Duration::from_secs(3));
    let asked = Instant::now();
    let red = get(debug, "/debug/red", None).json();
    let elapsed = started.elapsed().as_secs_f64();
    let answered = asked.elapsed().as_secs_f64();
    for route in ["/trouble/hang/permit", "/trouble/hang/channel"] {
        let row = red_route(&red, route).expect("route row");
        assert_eq!(row["in_flight"], HUNG_PER_ROUTE as u64, "{row}");
        let oldest = row["oldest_in_flight_ms"].as_f64().expect("oldest age") / 1e3;
        assert!(
            (oldest - elapsed).abs() <= 2.0 + answered,
            "{route}: oldest {oldest:.2} s, sent {elapsed:.2} s ago"
        );
    }
    assert_eq!(red["in_flight"], 2 * HUNG_PER_ROUTE as u64, "{red}");
    let text = get(debug, "/debug/red?format=text", None).text();
    assert!(
        text.contains("IN FLIGHT") && text.contains("requests in flight; the oldest"),
        "{text}"
    );

    // Every thread's stack: the runtime's workers are parked.
    let reply = get(debug, "/debug/threads?format=json&trim=none", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let dump = reply.json();
    assert!(dump["took_ms"].as_f64().unwrap() <= 150.0, "{dump}");
    assert_eq!(dump["threads"], dump["answered"], "{dump}");
    let workers: Vec<&Value> = dump["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| {
            g["threads"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["name"] == "tokio-rt-worker")
                .map(move |_| g)
        })
        .collect();
    assert_eq!(workers.len(), 2, "two workers: {dump:#}");
    for group in workers {
        assert_eq!(group["state"], "sleeping", "a worker not parked: {group:#}");
        let frames = group["frames"].to_string();
        assert!(frames.contains("park"), "a worker not in park: {group:#}");
    }

    // The doctor names both routes and their counts within 60 s of the
    // requests' start (30 s to be stuck, then the window).
    let mut stuck = None;
    wait_until(
        Duration::from_secs(60).saturating_sub(started.elapsed()),
        || {
            stuck = finding(debug, "requests_stuck");
            stuck.is_some()
        },
    );
    let stuck = stuck.unwrap_or_else(|| {
        panic!(
            "no requests_stuck finding after {:.0} s:\n{}",
            started.elapsed().as_secs_f64(),
            get(debug, "/debug/doctor?format=text", None).text()
        )
    });
    let title = stuck["title"].as_str().unwrap();
    assert!(title.starts_with("24 requests stuck"), "{title}");
    for route in ["/trouble/hang/permit", "/trouble/hang/channel"] {
        assert!(title.contains(&format!("12 on GET {route}")), "{title}");
    }
    // Its thread dump, captured when it opened, is kept and served.
    let mut artifact = None;
    wait_until(Duration::from_secs(10), || {
        artifact = finding(debug, "requests_stuck").and_then(|f| {
            f["artifacts"]
                .as_array()?
                .iter()
                .find(|a| a["kind"] == "thread_dump")
                .cloned()
        });
        artifact.is_some()
    });
    let artifact = artifact.expect("a thread dump artifact");
    let reply = get(debug, artifact["url"].as_str().unwrap(), None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("tokio-rt-worker"), "{}", reply.text());
    // No task dump in this build: 501, pointing at what works.
    let reply = get(debug, "/debug/tasks", None);
    assert_eq!(reply.status, 501, "{}", reply.text());
    let hint = reply.json()["hint"].as_str().unwrap_or("").to_owned();
    assert!(
        hint.contains("tokio_unstable") && hint.contains("/debug/threads"),
        "{hint}"
    );
    drop((permits, channels));
    drop(runtime);
}

/// Sleeps in a function of its own name until `stop`.
#[inline(never)]
fn sleeps_in_a_named_function(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spins in a function of its own name until `stop`.
#[inline(never)]
fn spins_in_a_named_function(stop: &AtomicBool) {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    std::hint::black_box(x);
}

#[test]
fn threads_sleeping_spinning_and_300_idle_are_listed_within_the_bound() {
    if !is_child() {
        return in_child(
            "hung::threads_sleeping_spinning_and_300_idle_are_listed_within_the_bound",
            &[],
        );
    }
    let agent = start_agent();
    let debug = agent.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (name, work) in [
        ("sleeper", sleeps_in_a_named_function as fn(&AtomicBool)),
        ("spinner", spins_in_a_named_function),
    ] {
        let stop = Arc::clone(&stop);
        threads.push(
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || work(&stop))
                .expect("spawn"),
        );
    }
    // 300 idle threads, each blocked on its own channel.
    let (senders, idle): (Vec<_>, Vec<_>) = (0..300)
        .map(|i| {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("idle-{i}"))
                .spawn(move || {
                    let _ = rx.recv();
                })
                .expect("spawn an idle thread");
            (tx, thread)
        })
        .unzip();
    std::thread::sleep(Duration::from_millis(300));

    let reply = get(debug, "/debug/threads?format=json&debug=2", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let dump = reply.json();
    let total = dump["threads"].as_u64().unwrap();
    assert!(total >= 302, "{total} threads");
    // The bound: 100 ms for 256 threads, proportionally more beyond. A
    // thread the machine does not run in time (a contended 2-core box) is
    // listed as not answering, not waited for: the bound holds either way.
    let bound = 100.0 * (total as f64 / 256.0).max(1.0);
    let took = dump["took_ms"].as_f64().unwrap();
    assert!(took <= bound + 50.0, "took {took} ms for {total} threads");
    let groups = dump["groups"].as_array().unwrap();
    let listed: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["threads"].as_array().unwrap().iter())
        .collect();
    assert_eq!(listed.len() as u64, total, "every thread listed once");
    let answered = listed.iter().filter(|t| t["answered"] == true).count();
    assert_eq!(dump["answered"], answered as u64);
    // Those that did not answer form the last group, without a stack.
    if answered < listed.len() {
        let last = groups.last().unwrap();
        assert!(
            last["state"].is_null() && last["frames"].as_array().unwrap().is_empty(),
            "{last:#}"
        );
        assert_eq!(last["count"], (listed.len() - answered) as u64, "{last:#}");
    }
    // No capture signal is left pending on any thread: a late thread's
    // signal was discarded, not queued for later.
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status
            .lines()
            .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
        {
            let mask =
                u64::from_str_radix(line.split_whitespace().nth(1).unwrap_or("0"), 16).unwrap_or(0);
            // Real-time signals only (the capture signal is one).
            assert_eq!(mask >> 32, 0, "a real-time signal pending: {line}");
        }
    }
    let thread = |name: &str| {
        groups
            .iter()
            .find(|g| g["threads"][0]["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {dump:#}"))
    };
    let sleeper = thread("sleeper");
    assert_eq!(sleeper["state"], "sleeping", "{sleeper:#}");
    assert!(
        sleeper["frames"]
            .to_string()
            .contains("sleeps_in_a_named_function"),
        "{sleeper:#}"
    );
    let spinner = thread("spinner");
    assert_eq!(spinner["state"], "running", "{spinner:#}");
    assert!(
        spinner["frames"]
            .to_string()
            .contains("spins_in_a_named_function"),
        "{spinner:#}"
    );
    let spinner_cpu = spinner["threads"][0]["cpu_seconds"].as_f64().unwrap();
    assert!(spinner_cpu > 0.0, "{spinner:#}");
    let listed_idle = listed
        .iter()
        .filter(|t| t["name"].as_str().is_some_and(|n| n.starts_with("idle-")))
        .count();
    assert_eq!(listed_idle, 300);

    // Grouped (the default): the idle threads share one stack, the
    // largest group, first; with those that did not answer, all 300.
    let grouped = get(debug, "/debug/threads?format=json", None).json();
    let groups = grouped["groups"].as_array().unwrap();
    let idle_in = |g: &Value| {
        g["threads"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"].as_str().is_some_and(|n| n.starts_with("idle-")))
            .count()
    };
    let first = &groups[0];
    assert_eq!(
        idle_in(first),
        first["count"].as_u64().unwrap() as usize,
        "{first:#}"
    );
    let silent = groups
        .last()
        .filter(|g| g["state"].is_null())
        .map_or(0, idle_in);
    assert_eq!(
        idle_in(first) + silent,
        300,
        "the idle threads are one group"
    );
    let text = get(debug, "/debug/threads", None).text();
    assert!(
        text.contains("threads sleeping: idle-") && text.contains(" more"),
        "{}",
        &text[..text.len().min(2000)]
    );

    // pprof: a count profile go tool pprof reads, one trace per thread.
    let reply = get(debug, "/debug/threads?format=pprof", None);
    assert_eq!(reply.status, 200);
    let file = scratch_dir("threads").join("threads.pb.gz");
    std::fs::write(&file, &reply.body).expect("write the profile");
    let (ok, out, err) = go_pprof(&["-traces", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("spins_in_a_named_function"), "{out}");
    assert!(
        out.contains("thread:spinner") || out.contains("spinner"),
        "{out}"
    );

    stop.store(true, Ordering::Relaxed);
    drop(senders);
    for thread in threads.into_iter().chain(idle) {
        let _ = thread.join();
    }
}

#[test]
fn junk_parameters_and_unsafe_task_dumps_are_refused_with_a_hint() {
    if !is_child() {
        return in_child(
            "hung::junk_parameters_and_unsafe_task_dumps_are_refused_with_a_hint",
            &[],
        );
    }
    // A current_thread runtime: a task dump is refused (tokio#8391).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .watch_runtime(runtime.handle().clone())
        .start()
        .expect("agent starts");
    let debug = agent.local_addr();
    for path in [
        "/debug/threads?format=svg",
        "/debug/threads?debug=3",
        "/debug/threads?debug=x",
        "/debug/threads?trim=%FF",
        "/debug/tasks?format=pprof",
        "/debug/tasks?format=folded",
    ] {
        let reply = get(debug, path, None);
        assert!(
            (400..500).contains(&reply.status),
            "{path}: {}",
            reply.status
        );
        let json = reply.json();
        assert!(
            json["error"].is_string() && json["hint"].is_string(),
            "{path}: {json}"
        );
    }
    let reply = get(debug, "/debug/tasks", None);
    assert_eq!(reply.status, 409, "{}", reply.text());
    let json = reply.json();
    assert!(
        json["error"].as_str().unwrap().contains("tokio#8391"),
        "{json}"
    );
    assert!(
        json["hint"].as_str().unwrap().contains("/debug/threads"),
        "{json}"
    );
    drop(runtime);
}

#[test]
fn a_task_leak_opens_tasks_climbing_and_steady_short_tasks_do_not() {
    if !is_child() {
        return in_child(
            "hung::a_task_leak_opens_tasks_climbing_and_steady_short_tasks_do_not",
            &[],
        );
    }
    let runtime = service_runtime();
    let mut settings = DoctorSettings::default();
    settings.config.windows = RuleWindows::all(Duration::from_secs(3));
    settings.config.lookback = Duration::from_secs(3);
    settings.config.count_slope_window = Duration::from_secs(20);
    settings.config.task_growth_min = 60.0;
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .watch_runtime(runtime.handle().clone())
        .doctor(settings)
        .start()
        .expect("agent starts");
    let app = stethoscope_examples::demo::router(stethoscope_examples::demo::DemoPool::new(4))
        .layer(agent.red_layer());
    let service = runtime.block_on(serve(app));
    let debug = agent.local_addr();

    // Steady load of many short tasks for 25 s: alive tasks go up and down,
    // never climb.
    let until = Instant::now() + Duration::from_secs(25);
    let mut rounds = 0;
    while Instant::now() < until && rounds < 2_000 {
        let reply = get(service, "/spawn?n=200", None);
        assert_eq!(reply.status, 200);
        rounds += 1;
        assert!(
            finding(debug, "tasks_climbing").is_none(),
            "a steady load climbs:\n{}",
            get(debug, "/debug/doctor?format=text", None).text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rounds >= 10, "{rounds} rounds of short tasks");

    // A task spawned every 100 ms that never finishes.
    let reply = get(service, "/trouble/tasks?secs=60", None);
    assert_eq!(reply.status, 200);
    let mut found = None;
    wait_until(Duration::from_secs(60), || {
        found = finding(debug, "tasks_climbing");
        found.is_some()
    });
    let found = found.unwrap_or_else(|| {
        panic!(
            "no tasks_climbing:\n{}",
            get(debug, "/debug/doctor?format=text", None).text()
        )
    });
    let values = &found["evidence"]["values"];
    let per_s = values["growth_per_s"].as_f64().unwrap_or(0.0);
    // 10 tasks a second are spawned; on a slow machine the spawner's
    // sleeps stretch, so the slope may be lower, never higher.
    assert!((3.0..=11.0).contains(&per_s), "{found:#}");
    assert!(
        found["title"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("tokio tasks alive"),
        "{found}"
    );
    drop(runtime);
}

/// The demo built with `--cfg tokio_unstable` and the `taskdump` feature:
/// `STETHOSCOPE_TASKDUMP_DEMO` when `tests/run.sh` built it, else built
/// here into a target directory of its own (a full build: minutes).
fn taskdump_demo() -> PathBuf {
    if let Some(path) = std::env::var_os("STETHOSCOPE_TASKDUMP_DEMO") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let output = Command::new(cargo)
        .current_dir(&root)
        .env("RUSTFLAGS", "--cfg tokio_unstable")
        .env("CARGO_TARGET_DIR", root.join("target/taskdump"))
        .args([
            "build",
            "--quiet",
            "-p",
            "stethoscope-examples",
            "--bin",
            "demo",
            "--features",
            "taskdump",
            "--message-format=json",
        ])
        .output()
        .expect("run cargo build for the task-dump demo");
    assert!(
        output.status.success(),
        "cargo build of the task-dump demo failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["target"]["name"] == "demo")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported the demo executable")
}

/// The longest a worker of the demo at `agent` is away from its
/// scheduler now, in milliseconds.
fn longest_away_ms(agent: SocketAddr) -> f64 {
    get(agent, "/debug/runtime", None).json()["per_worker"]
        .as_array()
        .map(|workers| {
            workers
                .iter()
                .filter_map(|w| w["away_ms"].as_f64())
                .fold(0.0, f64::max)
        })
        .unwrap_or(0.0)
}

#[test]
fn the_task_dump_groups_each_route_s_stuck_requests_into_one_trace() {
    // The doctor takes task dumps by itself only when asked to.
    let demo = DemoProcess::start_binary(
        &taskdump_demo(),
        &[("STETHOSCOPE_AUTO_CAPTURE_TASK_DUMPS", "on")],
    );
    let permits = hang(demo.service, "/trouble/hang/permit", HUNG_PER_ROUTE);
    let channels = hang(demo.service, "/trouble/hang/channel", HUNG_PER_ROUTE);
    let all_in = wait_until(Duration::from_secs(20), || {
        get(demo.agent, "/debug/red", None).json()["in_flight"] == 2 * HUNG_PER_ROUTE as u64
    });
    assert!(
        all_in,
        "{}",
        get(demo.agent, "/debug/red?format=text", None).text()
    );

    let reply = get(demo.agent, "/debug/tasks?format=json", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let dump = reply.json();
    let groups = dump["groups"].as_array().expect("groups");
    for (function, leaf) in [
        ("wait_for_a_leaked_permit", "semaphore"),
        ("wait_for_a_silent_channel", "mpsc"),
    ] {
        let group = groups
            .iter()
            .find(|g| g["traces"].to_string().contains(function))
            .unwrap_or_else(|| panic!("no group waits in {function}: {dump:#}"));
        assert_eq!(
            group["count"], HUNG_PER_ROUTE as u64,
            "all {function} requests in one group: {dump:#}"
        );
        let trace = group["traces"]
            .as_array()
            .expect("traces")
            .iter()
            .find(|t| t.to_string().contains(function))
            .expect("the handler's trace");
        let leaf_frame = trace[0].as_str().unwrap_or("");
        assert!(
            leaf_frame.contains(leaf),
            "{function} waits at {leaf_frame}: {group:#}"
        );
    }
    // After any dump, dumps may turn themselves off for the process: when
    // the dump took a barrier round (250 ms) or a worker was then held at
    // tokio's barrier (it saw the request after the round; its arrival
    // stays counted and the next dump would park a worker for good). A
    // busy machine causes both. Then every dump is a 409 naming the
    // barrier; whichever way it goes, no worker may be lost.
    let off = |reply: &Reply| {
        reply.status == 409
            && reply.json()["error"]
                .as_str()
                .unwrap_or("")
                .contains("250 ms barrier")
    };
    let text = get(demo.agent, "/debug/tasks", None);
    eprintln!(
        "first dump took {} ms; the second: {}",
        dump["took_ms"], text.status
    );
    if !off(&text) {
        // Text too, and a second dump right after (dumps run one at a
        // time, they are not used up).
        assert_eq!(text.status, 200, "{}", text.text());
        assert!(text.text().contains("12 tasks (ids"), "{}", text.text());
    }

    // While a worker is inside a poll, a dump is refused, not started: a
    // dump that meets a worker inside a poll can leave it parked for good.
    // (Not within the 0.4 s the agent watches the workers after a dump: a
    // long poll then turns dumps off, as a worker held at the barrier.)
    std::thread::sleep(Duration::from_secs(1));
    let service = demo.service;
    let blocker = std::thread::spawn(move || get(service, "/block?ms=1500", None));
    let seen_away = wait_until(Duration::from_secs(10), || {
        longest_away_ms(demo.agent) >= 150.0
    });
    assert!(
        seen_away,
        "the blocked worker is seen away from its scheduler"
    );
    let refused = get(demo.agent, "/debug/tasks", None);
    assert_eq!(refused.status, 409, "{}", refused.text());
    let error = refused.json()["error"].as_str().unwrap_or("").to_owned();
    assert!(
        error.contains("poll") || error.contains("250 ms barrier"),
        "{error}"
    );
    assert_eq!(blocker.join().expect("the blocking request").status, 200);
    // The worker comes back, and dumps work again (or stay off).
    let mut again = None;
    let answered = wait_until(Duration::from_secs(10), || {
        let reply = get(demo.agent, "/debug/tasks?format=json", None);
        let done = reply.status == 200 || off(&reply);
        again = Some(reply);
        done
    });
    let again = again.expect("a reply");
    eprintln!("after the block: {}", again.status);
    assert!(answered, "{}", again.text());
    if again.status == 200 {
        assert!(
            again.text().contains("wait_for_a_leaked_permit"),
            "{}",
            again.text()
        );
    }

    // Asked to (STETHOSCOPE_AUTO_CAPTURE_TASK_DUMPS=on), the doctor's
    // requests_stuck finding carries a thread dump and — where dumps are
    // still on when it opens, every worker parked — a task dump.
    let mut kinds = Vec::new();
    let mut task_dump = None;
    let mut look = |kind: &str| {
        let Some(stuck) = finding(demo.agent, "requests_stuck") else {
            std::thread::sleep(Duration::from_millis(250));
            return false;
        };
        let artifacts = stuck["artifacts"].as_array().cloned().unwrap_or_default();
        kinds = artifacts.iter().map(|a| a["kind"].to_string()).collect();
        task_dump = artifacts.iter().find(|a| a["kind"] == "task_dump").cloned();
        let found = artifacts.iter().any(|a| a["kind"] == kind);
        if !found {
            std::thread::sleep(Duration::from_millis(250));
        }
        found
    };
    // The thread dump first, the task dump right after it.
    wait_until(Duration::from_secs(75), || look("thread_dump"));
    wait_until(Duration::from_secs(15), || look("task_dump"));
    assert!(
        kinds.iter().any(|k| k.contains("thread_dump")),
        "no thread dump with requests_stuck (artifacts {kinds:?}):\n{}",
        get(demo.agent, "/debug/doctor?format=text", None).text()
    );
    let still_on = !off(&get(demo.agent, "/debug/tasks", None));
    if still_on {
        let task_dump = task_dump.as_ref().unwrap_or_else(|| {
            panic!(
                "dumps on, but no task dump with requests_stuck (artifacts {kinds:?}):\n{}",
                get(demo.agent, "/debug/doctor?format=text", None).text()
            )
        });
        let reply = get(demo.agent, task_dump["url"].as_str().unwrap_or(""), None);
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            reply.text().contains("wait_for_a_silent_channel"),
            "{}",
            reply.text()
        );
    }
    eprintln!("task dumps still on at the end: {still_on}");

    // Whatever happened, the runtime kept every worker: none is held away
    // from its scheduler (a worker parked for good at the dump's barrier
    // would be, for ever).
    let back = wait_until(Duration::from_secs(5), || {
        longest_away_ms(demo.agent) < 500.0
    });
    assert!(
        back,
        "a worker is held: {}",
        get(demo.agent, "/debug/runtime?format=text", None).text()
    );
    drop((permits, channels));
}
