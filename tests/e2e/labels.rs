//! Labelled CPU profiles through the HTTP API and `go tool pprof`: CPU per
//! route from the RED layer, labels that follow a future across workers,
//! and unlabelled work that stays unlabelled.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get as route_get;
use stethoscope::labels::{with_labels, Labels};
use stethoscope_examples::workload::{burn_cold, burn_hot};

use crate::support::*;

/// CPU each `/hot/{id}` request burns; `/cold/{id}` burns a third of it.
const HOT_MS: u64 = 24;

#[inline(never)]
fn hot_handler_work() -> u64 {
    burn_hot(Duration::from_millis(HOT_MS))
}

#[inline(never)]
fn cold_handler_work() -> u64 {
    burn_hot(Duration::from_millis(HOT_MS / 3))
}

/// An agent and a service with the RED layer and two routes burning CPU
/// 3:1 per request, on a two-worker runtime.
fn split_service() -> (
    stethoscope::Agent,
    tokio::runtime::Runtime,
    std::net::SocketAddr,
) {
    let agent = start_agent();
    let runtime = service_runtime();
    let app = axum::Router::new()
        .route(
            "/hot/{id}",
            route_get(|Path(id): Path<u64>| async move { (hot_handler_work() ^ id).to_string() }),
        )
        .route(
            "/cold/{id}",
            route_get(|Path(id): Path<u64>| async move { (cold_handler_work() ^ id).to_string() }),
        )
        .layer(agent.red_layer());
    let service = runtime.block_on(serve(app));
    (agent, runtime, service)
}

/// Clients alternating hot and cold requests (one of each per round, so
/// the CPU they cause is 3:1) until `stop`.
fn drive_hot_and_cold(
    service: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..2)
        .map(|client| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for path in ["hot", "cold"] {
                        let reply = get(service, &format!("/{path}/{}", rounds * 2 + client), None);
                        assert_eq!(reply.status, 200, "{}", reply.text());
                    }
                    rounds += 1;
                }
                rounds
            })
        })
        .collect()
}

/// `go tool pprof -tags` rows of one label key: value → share in percent.
fn pprof_tag_shares(output: &str, key: &str) -> Vec<(String, f64)> {
    // " route: Total 2.4s\n          1.8s (75.00%): /hot/{id}\n ..."
    output
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&format!("{key}:")))
        .skip(1)
        .take_while(|l| l.contains("%):"))
        .filter_map(|l| {
            let (left, value) = l.split_once("%):")?;
            let percent = left.rsplit_once('(')?.1.trim().parse().ok()?;
            Some((value.trim().to_owned(), percent))
        })
        .collect()
}

#[test]
fn cpu_by_route_shows_the_true_3_to_1_split_in_text_and_in_go_pprof() {
    let _serial = profiler_lock();
    let (agent, runtime, service) = split_service();
    let addr = agent.local_addr();
    // Warm the symbolizer and the service outside the measured window.
    let _ = get(addr, "/debug/pprof/profile?seconds=1&format=text", None);
    assert!(wait_for_idle_sampler());

    let stop = Arc::new(AtomicBool::new(false));
    let text = std::thread::spawn(move || {
        get(
            addr,
            "/debug/pprof/profile?seconds=6&format=text&by=route",
            None,
        )
    });
    let pprof = std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=6", None));
    wait_for_subscribers(2);
    let clients = drive_hot_and_cold(service, Arc::clone(&stop));
    let (text, pprof) = (text.join().unwrap(), pprof.join().unwrap());
    stop.store(true, Ordering::Relaxed);
    let rounds: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(rounds >= 20, "only {rounds} request pairs were served");
    assert_eq!(text.status, 200, "{}", text.text());
    assert_eq!(pprof.status, 200, "{}", pprof.text());

    // format=text&by=route: one row per route value, CPU first.
    let table = text.text();
    let cpu_of = |route: &str| -> f64 {
        let row = table
            .lines()
            .find(|l| l.trim_end().ends_with(&format!("  {route}")))
            .unwrap_or_else(|| panic!("no row for {route}:\n{table}"));
        let cell = row.split_whitespace().next().unwrap();
        if let Some(ms) = cell.strip_suffix("ms") {
            ms.parse::<f64>().unwrap() / 1e3
        } else {
            cell.trim_end_matches('s').parse::<f64>().unwrap()
        }
    };
    let (hot, cold) = (cpu_of("/hot/{id}"), cpu_of("/cold/{id}"));
    let share = 100.0 * hot / (hot + cold);
    // At 99 Hz a CPU-second of the two routes is 99 samples: the share may
    // be off by four binomial σ of those (5 points at the least).
    let tolerance = 100.0 * share_tolerance(0.75, (hot + cold) * 99.0, 0.05);
    eprintln!(
        "by=route: /hot {hot:.2} s, /cold {cold:.2} s: {share:.1}% hot (± {tolerance:.1})\n{table}"
    );
    assert!(
        (share - 75.0).abs() <= tolerance,
        "/hot/{{id}} has {share:.1}% of the two routes' CPU, expected 75 ± {tolerance:.1}:\n{table}"
    );
    assert!(
        table.contains(&format!("  {}", stethoscope::profile::UNLABELLED)),
        "{table}"
    );

    // /debug/red: each route's CPU in the last window.
    let red = get(addr, "/debug/red", None).json();
    let cpu_seconds = |route: &str| {
        red["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == route && r["method"] == "GET")
            .and_then(|r| r["cpu_seconds"].as_f64())
            .unwrap_or_else(|| panic!("no cpu_seconds for {route}: {red}"))
    };
    let (hot, cold) = (cpu_seconds("/hot/{id}"), cpu_seconds("/cold/{id}"));
    let share = 100.0 * hot / (hot + cold);
    // The same window's samples: the same bound.
    assert!(
        (share - 75.0).abs() <= tolerance && hot > 1.0,
        "/debug/red: /hot/{{id}} {hot:.2} s and /cold/{{id}} {cold:.2} s of CPU: {red}"
    );
    assert!(
        (5900.0..6500.0).contains(&red["cpu_window"]["duration_ms"].as_f64().unwrap()),
        "{red}"
    );

    // go tool pprof: -tags lists the routes, -tagfocus keeps one.
    let file = scratch_dir("labels").join("cpu.pb.gz");
    std::fs::write(&file, &pprof.body).unwrap();
    let file = file.to_str().unwrap();
    let (ok, tags, stderr) = go_pprof(&["-tags", file]);
    assert!(ok, "{stderr}");
    let routes = pprof_tag_shares(&tags, "route");
    let percent = |rows: &[(String, f64)], value: &str| {
        rows.iter()
            .find(|(v, _)| v == value)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("route {value} missing from go tool pprof -tags:\n{tags}"))
    };
    let (hot, cold) = (
        percent(&routes, "/hot/{id}"),
        percent(&routes, "/cold/{id}"),
    );
    let share = 100.0 * hot / (hot + cold);
    assert!(
        (share - 75.0).abs() <= tolerance,
        "go tool pprof -tags: /hot/{{id}} {share:.1}% of the two routes, expected 75 ± {tolerance:.1}:\n{tags}"
    );
    assert!(tags.contains("method:") && tags.contains("GET"), "{tags}");
    let (ok, focused, stderr) = go_pprof(&["-tagfocus=route=/hot/{id}", "-tags", file]);
    assert!(ok, "{stderr}");
    let only = pprof_tag_shares(&focused, "route");
    assert_eq!(only.len(), 1, "-tagfocus keeps one route:\n{focused}");
    assert_eq!(only[0].0, "/hot/{id}");
    let (ok, top, stderr) = go_pprof(&["-tagfocus=route=/hot/{id}", "-top", file]);
    assert!(ok, "{stderr}");
    assert!(top.contains("hot_handler_work"), "{top}");
    assert!(
        !top.contains("cold_handler_work"),
        "-tagfocus filtered out /cold:\n{top}"
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
}

#[inline(never)]
fn mover_slice() -> u64 {
    burn_hot(Duration::from_millis(2))
}

#[inline(never)]
fn unlabelled_slice() -> u64 {
    burn_cold(Duration::from_millis(2))
}

/// Asserts that of the (at least 50) samples in `format=json` whose frames
/// include `function`, 98 % or more have `value` as label `key` (`None`:
/// no such label).
fn assert_nearly_all(doc: &serde_json::Value, function: &str, key: &str, value: Option<&str>) {
    let mut total = 0;
    let mut matching = 0;
    let mut seen: Vec<(Option<String>, i64)> = Vec::new();
    for stack in stacks_through(doc, function) {
        let n = stack["values"]["samples"].as_i64().unwrap();
        let label = stack["labels"][key].as_str();
        total += n;
        if label == value {
            matching += n;
        }
        match seen.iter_mut().find(|(v, _)| v.as_deref() == label) {
            Some(row) => row.1 += n,
            None => seen.push((label.map(str::to_owned), n)),
        }
    }
    assert!(total >= 50, "{total} samples through {function}");
    assert!(
        matching as f64 >= 0.98 * total as f64,
        "{matching} of {total} samples through {function} have {key}={value:?}: {seen:?}"
    );
}

#[test]
fn a_labelled_future_keeps_its_labels_across_workers_and_unlabelled_work_has_none() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let addr = agent.local_addr();
    let runtime = service_runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    // A labelled task burning CPU in slices, pushed from worker to worker:
    // between slices it waits on a timer while another task occupies its
    // worker, so the other worker (holding the timer driver) resumes it.
    let mover = {
        let (stop, workers) = (Arc::clone(&stop), Arc::clone(&workers));
        runtime.spawn(with_labels([("job", "mover")], async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::hint::black_box(mover_slice());
                if let Some(worker) = tokio::runtime::worker_index() {
                    workers.lock().unwrap().insert(worker);
                }
                tokio::spawn(async { std::thread::sleep(Duration::from_millis(3)) });
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }))
    };
    // An unlabelled task on the same workers, and an unlabelled thread.
    let plain = {
        let stop = Arc::clone(&stop);
        runtime.spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::hint::black_box(unlabelled_slice());
                tokio::task::yield_now().await;
            }
        })
    };
    let burners = Burners::start(1, "unlabelled", Duration::from_secs(30), || {
        std::hint::black_box(unlabelled_slice());
    });
    let reply = get(
        addr,
        "/debug/pprof/profile?seconds=3&format=json&hz=199",
        None,
    );
    stop.store(true, Ordering::Relaxed);
    burners.stop();
    runtime.block_on(async {
        mover.await.unwrap();
        plain.await.unwrap();
    });
    assert_eq!(reply.status, 200, "{}", reply.text());
    let doc = reply.json();

    let moved_to = workers.lock().unwrap().len();
    assert!(
        moved_to >= 2,
        "the labelled task ran on {moved_to} worker(s) only"
    );
    // Every sample of the labelled task carries its label, wherever it ran;
    // no sample of the unlabelled work does.
    assert_nearly_all(&doc, "mover_slice", "job", Some("mover"));
    assert_nearly_all(&doc, "unlabelled_slice", "job", None);
    // The JSON by= view agrees.
    let by = get(
        addr,
        "/debug/pprof/profile?seconds=1&format=json&by=job",
        None,
    );
    assert_eq!(by.status, 200, "{}", by.text());
    assert_eq!(by.json()["key"], "job");
    assert_eq!(Labels::current(), Labels::none());
    runtime.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn group_roots_flame_graphs_and_folded_stacks_at_the_label_and_mistakes_get_400() {
    let _serial = profiler_lock();
    let (agent, runtime, service) = split_service();
    let addr = agent.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let folded = std::thread::spawn(move || {
        get(
            addr,
            "/debug/pprof/profile?seconds=2&format=folded&group=route",
            None,
        )
    });
    let svg = std::thread::spawn(move || {
        get(addr, "/debug/pprof/flamegraph?seconds=2&group=route", None)
    });
    wait_for_subscribers(2);
    let clients = drive_hot_and_cold(service, Arc::clone(&stop));
    let (folded, svg) = (folded.join().unwrap(), svg.join().unwrap());
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(folded.status, 200, "{}", folded.text());
    let text = folded.text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("route=/hot/{id};tokio-") && l.contains("hot_handler_work")),
        "{text}"
    );
    assert!(text.lines().all(|l| l.starts_with("route=")), "{text}");
    assert_eq!(svg.status, 200);
    assert!(svg.text().contains("route=/cold/{id}"));
    for bad in [
        "/debug/pprof/profile?seconds=1&by=route",
        "/debug/pprof/profile?seconds=1&format=svg&by=route",
        "/debug/pprof/profile?seconds=1&format=text&group=route",
        "/debug/pprof/profile?seconds=1&format=json&by=route&group=route",
    ] {
        let reply = get(addr, bad, None);
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
}
