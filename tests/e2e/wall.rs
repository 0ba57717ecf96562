//! Wall-clock profiles (`mode=wall`) through the HTTP API: a worker blocked
//! half of each poll is half `waiting` in the function that blocks, an
//! idle runtime's workers are `parked`, and wall and CPU requests share
//! the one sampler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stethoscope::cpu::CpuProfiler;

use crate::support::*;

/// Spins for `wall` of real time: the thread is running (or ready to run).
#[inline(never)]
fn spin_awake(wall: Duration) -> u64 {
    let started = Instant::now();
    let mut x = 1u64;
    while started.elapsed() < wall {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
    x
}

/// Half awake, half asleep (a blocking `std::thread::sleep` inside the
/// poll that calls it).
#[inline(never)]
fn half_asleep() -> u64 {
    let x = spin_awake(Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(20));
    x
}

/// Stacks of a JSON profile through `function`: samples per `state`,
/// split by whether they carry label `task`.
fn states_through(doc: &serde_json::Value, function: &str, labelled: bool) -> Vec<(String, i64)> {
    let mut states: Vec<(String, i64)> = Vec::new();
    for stack in stacks_through(doc, function) {
        if stack["labels"]["task"].is_string() != labelled {
            continue;
        }
        let state = stack["labels"]["state"]
            .as_str()
            .unwrap_or("none")
            .to_owned();
        let n = stack["values"]["samples"].as_i64().unwrap();
        match states.iter_mut().find(|(s, _)| *s == state) {
            Some(row) => row.1 += n,
            None => states.push((state, n)),
        }
    }
    states
}

fn share(states: &[(String, i64)], state: &str) -> (f64, i64) {
    let total: i64 = states.iter().map(|r| r.1).sum();
    let n = states.iter().find(|(s, _)| s == state).map_or(0, |r| r.1);
    (100.0 * n as f64 / total.max(1) as f64, total)
}

#[test]
fn a_worker_blocked_half_of_each_poll_is_half_waiting_in_that_function() {
    let _serial = profiler_lock();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wall-e2e")
        .enable_all()
        .build()
        .unwrap();
    let agent = runtime.block_on(async { start_agent() });
    let addr = agent.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);
    // Two tasks, one per worker, each blocking its worker half the time:
    // one named (labelled), one plain.
    let blocking_loop = |stop: Arc<AtomicBool>| async move {
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::hint::black_box(half_asleep());
        }
    };
    let named = runtime.spawn(stethoscope::labels::task(
        "half-asleep",
        blocking_loop(Arc::clone(&stop)),
    ));
    let plain = runtime.spawn(blocking_loop(Arc::clone(&stop)));
    std::thread::sleep(Duration::from_millis(200));

    let all = get(
        addr,
        "/debug/pprof/profile?seconds=5&mode=wall&format=json",
        None,
    );
    assert_eq!(all.status, 200, "{}", all.text());
    assert!(
        all.header("content-disposition")
            .unwrap_or_default()
            .contains("wall-"),
        "{:?}",
        all.header("content-disposition")
    );
    let workers = get(
        addr,
        "/debug/pprof/profile?seconds=2&mode=wall&threads=workers&format=json",
        None,
    );
    let by_state = get(
        addr,
        "/debug/pprof/profile?seconds=1&mode=wall&format=text&by=state",
        None,
    );
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        named.await.unwrap();
        plain.await.unwrap();
    });

    let doc = all.json();
    assert_eq!(doc["sample_types"][1]["type"], "wall");
    assert_eq!(doc["period_type"]["unit"], "nanoseconds");
    for labelled in [true, false] {
        let states = states_through(&doc, "half_asleep", labelled);
        let (waiting, total) = share(&states, "waiting");
        eprintln!("half_asleep, labelled {labelled}: {states:?}");
        // 5 s at 99 Hz: the worker is sampled whether it runs or sleeps.
        assert!(
            (370..=560).contains(&total),
            "{total} wall samples of the worker in half_asleep (labelled {labelled}): {states:?}"
        );
        assert!(
            (40.0..=60.0).contains(&waiting),
            "half_asleep is {waiting:.1}% waiting (labelled {labelled}), expected 50 ± 10: {states:?}"
        );
        let (parked, _) = share(&states, "parked");
        assert_eq!(
            parked, 0.0,
            "a worker blocked inside a poll is not parked: {states:?}"
        );
    }
    // Waiting samples sit in the sleep, running ones in the spin.
    let sleeping_in_spin = doc["stacks"].as_array().unwrap().iter().any(|s| {
        s["labels"]["state"] == "waiting"
            && s["frames"][0]
                .as_str()
                .unwrap_or_default()
                .contains("spin_awake")
    });
    assert!(
        !sleeping_in_spin,
        "a waiting sample's leaf is in the spin loop"
    );

    // threads=workers: only tokio worker threads, ours among them.
    assert_eq!(workers.status, 200, "{}", workers.text());
    let workers = workers.json();
    let threads: Vec<&str> = workers["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["thread"].as_str())
        .collect();
    assert!(threads.contains(&"wall-e2e"), "{threads:?}");
    assert!(
        threads.iter().all(|t| !t.starts_with("stethoscope")),
        "the agent's threads are no tokio workers: {threads:?}"
    );
    // by=state ranks states by wall time.
    assert_eq!(by_state.status, 200, "{}", by_state.text());
    let table = by_state.text();
    assert!(table.contains("Total wall:"), "{table}");
    for state in ["running", "waiting", "parked"] {
        assert!(table.contains(&format!("  {state}")), "{state}:\n{table}");
    }
    drop(agent);
    runtime.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn an_idle_runtime_has_parked_workers_and_wall_and_cpu_share_one_sampler() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let addr = agent.local_addr();
    let idle = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("idle-e2e")
        .enable_all()
        .build()
        .unwrap();
    let sessions = CpuProfiler::global().status().sessions_started;
    let wall = std::thread::spawn(move || {
        get(addr, "/debug/pprof/profile?seconds=3&mode=wall&hz=49", None)
    });
    wait_for_subscribers(1);
    // Another CPU or wall request at another hz or mode: 409 with
    // Retry-After; the same one joins.
    let cpu = get(addr, "/debug/pprof/profile?seconds=1&format=text", None);
    assert_eq!(cpu.status, 409, "{}", cpu.text());
    assert!(cpu.text().contains("mode=wall&hz=49"), "{}", cpu.text());
    assert!(cpu.header("retry-after").is_some());
    let other = get(
        addr,
        "/debug/pprof/profile?seconds=1&mode=wall&threads=workers&hz=49",
        None,
    );
    assert_eq!(other.status, 409, "{}", other.text());
    let joined = get(
        addr,
        "/debug/pprof/profile?seconds=1&mode=wall&hz=49&format=json",
        None,
    );
    assert_eq!(joined.status, 200, "{}", joined.text());
    let wall = wall.join().unwrap();
    assert_eq!(wall.status, 200, "{}", wall.text());
    assert_eq!(
        CpuProfiler::global().status().sessions_started,
        sessions + 1,
        "the second wall request joined the running sampler"
    );

    // The pprof profile, through go tool pprof: idle workers are parked.
    let file = scratch_dir("wall").join("wall.pb.gz");
    std::fs::write(&file, &wall.body).unwrap();
    let (ok, tags, stderr) =
        go_pprof(&["-tags", "-tagfocus=thread=idle-e2e", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let parked = tags
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("state:"))
        .find(|l| l.trim_end().ends_with(": parked"))
        .unwrap_or_else(|| panic!("no parked state on the idle workers:\n{tags}"));
    let percent: f64 = parked
        .rsplit_once('(')
        .and_then(|(_, rest)| rest.split_once('%'))
        .and_then(|(p, _)| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{parked}"));
    assert!(percent >= 90.0, "idle workers {percent}% parked:\n{tags}");
    let (ok, raw, stderr) = go_pprof(&["-raw", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        raw.contains("wall/nanoseconds"),
        "sample type:\n{}",
        &raw[..raw.len().min(2000)]
    );
    assert!(wait_for_idle_sampler());
    assert!(
        wall_signal_ignored(),
        "the wall-clock signal must be SIG_IGN after sampling, never SIG_DFL"
    );
    idle.shutdown_timeout(Duration::from_secs(1));
}
