//! Heap profiling through the HTTP API, checked against known allocations.

use std::time::{Duration, Instant};

use stethoscope::Agent;
use stethoscope_examples::workload::{churn, retain_chunks};

use crate::support::*;

const MIB: f64 = 1024.0 * 1024.0;

/// Estimated live bytes of the stacks that pass through `function`.
fn bytes_through(doc: &serde_json::Value, function: &str) -> f64 {
    doc["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .filter(|s| {
            s["frames"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|f| f.as_str().is_some_and(|f| f.contains(function)))
            })
        })
        .map(|s| s["values"]["inuse_space"].as_f64().unwrap_or(0.0))
        .sum()
}

#[inline(never)]
fn hold_64_mib() -> Vec<Vec<u8>> {
    // In a release build too: not a tail call (the frame stays on the
    // stack), and not the same code as its twin's (which would be merged).
    std::hint::black_box((retain_chunks(64 << 20), "hold_64_mib")).0
}

#[test]
fn a_known_64_mib_retention_shows_up_within_20_percent() {
    let _heap = heap_lock();
    let agent = start_agent();
    let backtraces = |addr| get(addr, "/debug/heap/profiling", None).json()["backtraces"].clone();
    let before = backtraces(agent.local_addr());
    let held = hold_64_mib();
    let after = backtraces(agent.local_addr());
    // The samples of the retention (~128 at one per 512 KiB) were unwound
    // by the agent's framehop hook, not handed back to jemalloc's.
    assert_eq!(after["unwinder"], "framehop", "{after}");
    let count = |v: &serde_json::Value, key: &str| v[key].as_u64().unwrap_or(0);
    let fast = count(&after, "fast") - count(&before, "fast");
    let deferred = count(&after, "deferred") - count(&before, "deferred");
    assert!(
        fast >= 64 && deferred * 100 <= fast,
        "fast {fast}, deferred {deferred}"
    );
    let reply = get(agent.local_addr(), "/debug/pprof/heap?format=json", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let estimated = bytes_through(&reply.json(), "hold_64_mib");
    eprintln!(
        "64 MiB retained, heap profile estimates {:.1} MiB",
        estimated / MIB
    );
    assert!(
        (estimated / (64.0 * MIB) - 1.0).abs() <= 0.20,
        "estimated {:.1} MiB for a known 64 MiB",
        estimated / MIB
    );
    // go tool pprof reads the gzip protobuf, with both sample types.
    let url = format!("http://{}/debug/pprof/heap", agent.local_addr());
    let (ok, top, stderr) = go_pprof(&["-top", "-sample_index=inuse_space", &url]);
    assert!(ok, "{stderr}");
    assert!(top.contains("hold_64_mib"), "{top}");
    let (ok, raw, stderr) = go_pprof(&["-raw", &url]);
    assert!(ok, "{stderr}");
    assert!(
        raw.contains("inuse_objects/count") && raw.contains("inuse_space/bytes"),
        "{raw}"
    );
    drop(held);
}

#[inline(never)]
fn hold_steady() -> Vec<Vec<u8>> {
    // In a release build too: not a tail call (the frame stays on the
    // stack), and not the same code as its twin's (which would be merged).
    std::hint::black_box((retain_chunks(48 << 20), "hold_steady")).0
}

#[inline(never)]
fn grow_the_leak() -> Vec<Vec<u8>> {
    // In a release build too: not a tail call (the frame stays on the
    // stack), and not the same code as its twin's (which would be merged).
    std::hint::black_box((retain_chunks(48 << 20), "grow_the_leak")).0
}

#[test]
fn the_diff_ranks_a_known_48_mib_leak_first_and_not_steady_memory() {
    let _heap = heap_lock();
    let agent = start_agent();
    let addr = agent.local_addr();
    let steady = hold_steady();
    let base = send(addr, "POST", "/debug/heap/snapshots", None);
    assert_eq!(base.status, 201, "{}", base.text());
    assert!(base
        .header("location")
        .is_some_and(|l| l.starts_with("/debug/heap/snapshots/")));
    let base = base.json();
    for field in ["id", "taken_at", "total_bytes", "stacks"] {
        assert!(
            !base[field].is_null(),
            "snapshot shape: {field} missing in {base}"
        );
    }
    let leak = grow_the_leak();
    churn(64 << 20); // allocator traffic that leaves nothing behind
    let target = send(addr, "POST", "/debug/heap/snapshots", None).json();
    let path = format!(
        "/debug/heap/diff?base={}&target={}&format=json",
        base["id"], target["id"]
    );
    let diff = get(addr, &path, None);
    assert_eq!(diff.status, 200, "{}", diff.text());
    let diff = diff.json();
    assert_eq!(diff["base"], base["id"]);
    assert_eq!(diff["target"], target["id"]);
    let stacks = diff["stacks"].as_array().expect("stacks");
    let frames = |i: usize| stacks[i]["frames"].to_string();
    assert!(
        frames(0).contains("grow_the_leak"),
        "the leak is ranked first: {}",
        frames(0)
    );
    let delta = stacks[0]["delta_bytes"].as_f64().unwrap();
    eprintln!(
        "48 MiB leaked, the diff's first stack grew {:.1} MiB",
        delta / MIB
    );
    assert!(
        (delta / (48.0 * MIB) - 1.0).abs() <= 0.20,
        "the leak's delta is {:.1} MiB for a known 48 MiB",
        delta / MIB
    );
    for i in 0..stacks.len().min(3) {
        assert!(
            !frames(i).contains("hold_steady"),
            "steady memory ranked {i}: {}",
            frames(i)
        );
    }
    // The other formats: text names the leak on its first row, SVG is a
    // differential flame graph, pprof is a delta profile go tool pprof reads.
    let text = get(addr, &path.replace("format=json", "format=text"), None).text();
    let first_row = text.lines().nth(3).unwrap_or_default();
    assert!(first_row.contains("grow_the_leak"), "{text}");
    let svg = get(addr, &path.replace("format=json", "format=svg"), None);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(&svg.text(), options).expect("SVG parses as XML");
    assert!(svg.text().contains("grow_the_leak"));
    let delta_url = format!(
        "http://{addr}{}",
        path.replace("format=json", "format=pprof")
    );
    let (ok, top, stderr) = go_pprof(&["-top", "-sample_index=inuse_space", &delta_url]);
    assert!(ok, "{stderr}");
    assert!(top.contains("grow_the_leak"), "{top}");
    drop((steady, leak));
}

#[inline(never)]
fn allocated_while_paused() -> Vec<Vec<u8>> {
    // In a release build too: not a tail call (the frame stays on the
    // stack), and not the same code as its twin's (which would be merged).
    std::hint::black_box((retain_chunks(32 << 20), "allocated_while_paused")).0
}

#[inline(never)]
fn allocated_before_the_pause() -> Vec<Vec<u8>> {
    // In a release build too: not a tail call (the frame stays on the
    // stack), and not the same code as its twin's (which would be merged).
    std::hint::black_box((retain_chunks(32 << 20), "allocated_before_the_pause")).0
}

#[test]
fn stats_toggle_and_snapshot_lifecycle() {
    let _heap = heap_lock();
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .heap_snapshots(2)
        .start()
        .unwrap();
    let addr = agent.local_addr();

    let stats = get(addr, "/debug/heap/stats", None).json();
    for field in [
        "allocated_bytes",
        "active_bytes",
        "resident_bytes",
        "mapped_bytes",
        "retained_bytes",
        "metadata_bytes",
    ] {
        assert!(
            stats[field].as_u64().is_some_and(|v| v > 0),
            "{field}: {stats}"
        );
    }
    assert!(
        stats["fragmentation"].as_f64().is_some_and(|f| f >= 1.0),
        "{stats}"
    );
    assert!(get(addr, "/debug/heap/stats?format=text", None)
        .text()
        .contains("fragmentation"));

    let state = get(addr, "/debug/heap/profiling", None).json();
    assert_eq!(state["active"], true);
    assert_eq!(state["lg_prof_sample"], 16);
    assert_eq!(state["sample_interval_bytes"], 65536);

    // Paused: new allocations are not sampled; resuming keeps old samples.
    let seen = allocated_before_the_pause();
    let paused = send(
        addr,
        "PUT",
        "/debug/heap/profiling",
        Some(r#"{"active": false}"#),
    );
    assert_eq!(paused.json()["active"], false);
    let unseen = allocated_while_paused();
    let resumed = send(
        addr,
        "PUT",
        "/debug/heap/profiling",
        Some(r#"{"active": true}"#),
    );
    assert_eq!(resumed.json()["active"], true);
    let profile = get(addr, "/debug/pprof/heap?format=json", None).json();
    assert_eq!(bytes_through(&profile, "allocated_while_paused"), 0.0);
    let kept = bytes_through(&profile, "allocated_before_the_pause") / MIB;
    assert!(
        (32.0 * 0.8..=32.0 * 1.2).contains(&kept),
        "samples from before the pause: {kept:.1} MiB, want 32 ±20 %"
    );
    drop((seen, unseen));
    for bad in [
        "",
        "{}",
        r#"{"active":"yes"}"#,
        r#"{"active":true,"reset":true}"#,
        "[]",
    ] {
        let reply = send(addr, "PUT", "/debug/heap/profiling", Some(bad));
        assert_eq!(reply.status, 400, "{bad:?}: {}", reply.text());
    }

    // The ring keeps two snapshots; the oldest goes first.
    let ids: Vec<u64> = (0..3)
        .map(|_| {
            send(addr, "POST", "/debug/heap/snapshots", None).json()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let list = get(addr, "/debug/heap/snapshots", None).json();
    let kept: Vec<u64> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, ids[1..].to_vec());
    assert_eq!(list["capacity"], 2);
    assert!(list["memory_bytes"].as_u64().is_some_and(|b| b > 0));

    let evicted = get(addr, &format!("/debug/heap/snapshots/{}", ids[0]), None);
    assert_eq!(evicted.status, 404);
    assert!(evicted.json()["hint"]
        .as_str()
        .unwrap()
        .contains(&ids[2].to_string()));
    let one = get(
        addr,
        &format!("/debug/heap/snapshots/{}?format=text", ids[2]),
        None,
    );
    assert_eq!(one.status, 200);
    assert!(one.text().contains("Heap profile"));
    assert_eq!(get(addr, "/debug/heap/snapshots/abc", None).status, 400);
    assert_eq!(
        get(addr, "/debug/heap/diff?base=1&limit=999999", None).status,
        400
    );
    assert_eq!(
        get(addr, "/debug/heap/diff?base=1&format=bmp", None).status,
        400
    );
    let unknown = get(addr, "/debug/heap/diff?base=999&target=now", None);
    assert_eq!(unknown.status, 404);
    let deleted = send(
        addr,
        "DELETE",
        &format!("/debug/heap/snapshots/{}", ids[2]),
        None,
    );
    assert_eq!(deleted.status, 204);
    assert_eq!(
        get(addr, &format!("/debug/heap/snapshots/{}", ids[2]), None).status,
        404
    );
}

/// CPU profiling at 999 Hz alternating with wall-clock profiling of every
/// thread, and heap dumps, back to back and at the same time, while four
/// threads allocate hard, a service labels its requests (RED layer, a named
/// task) and a flood of idle sockets and slow bodies hits the agent: no
/// crash, no hang, every request answered, labels in the profiles;
/// afterwards the process's threads and RSS return to where they were and
/// the samplers' signals are ignored, never `SIG_DFL`.
/// `STETHOSCOPE_SOAK_SECS` makes it longer (default 120). Runs in a child
/// process, so other tests' threads and memory do not blur the baseline.
#[test]
fn cpu_and_heap_profiling_soak_together_under_allocation_load() {
    if !is_child() {
        let _cpu = profiler_lock();
        let _heap = heap_lock();
        let secs = std::env::var("STETHOSCOPE_SOAK_SECS").unwrap_or_else(|_| "120".into());
        in_child(
            "heap::cpu_and_heap_profiling_soak_together_under_allocation_load",
            &[("STETHOSCOPE_SOAK_SECS", secs.as_ref())],
        );
        return;
    }
    let secs: u64 = std::env::var("STETHOSCOPE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let agent = start_agent();
    let addr = agent.local_addr();
    let (runtime, service) = labelled_service(&agent);
    // Warm up (debug info, the blocking pool), then take the baseline.
    assert_eq!(
        get(addr, "/debug/pprof/profile?seconds=1", None).status,
        200
    );
    assert_eq!(
        get(addr, "/debug/pprof/profile?seconds=1&mode=wall", None).status,
        200
    );
    assert_eq!(get(addr, "/debug/pprof/heap", None).status, 200);
    std::thread::sleep(Duration::from_secs(11));
    let (threads_before, rss_before) = (process_threads(), process_rss());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let allocators = Burners::start(4, "allocator", Duration::from_secs(secs + 30), || {
        let held = retain_chunks(2 << 20);
        churn(8 << 20);
        drop(held);
    });
    let requests = std::thread::spawn(move || {
        let mut served = 0u64;
        while Instant::now() < deadline {
            assert_eq!(get(service, &format!("/work/{served}"), None).status, 200);
            served += 1;
        }
        served
    });
    // CPU and wall-clock windows take turns on the one sampler.
    let cpu = std::thread::spawn(move || {
        let (mut answered, mut labelled) = (0u32, 0u32);
        while Instant::now() < deadline {
            let reply = get(
                addr,
                "/debug/pprof/profile?seconds=2&hz=999&format=json&by=route",
                None,
            );
            if reply.status == 409 {
                // The doctor's own capture (a CPU finding under this load)
                // holds the sampler at its rate: retry as told.
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            assert_eq!(reply.status, 200, "CPU profile: {}", reply.text());
            // The sampler served the window it was asked for, however long
            // the report then took to render under this load.
            let window_ms = reply.json()["duration_ms"].as_f64().unwrap_or(0.0);
            assert!(
                (1_950.0..=2_500.0).contains(&window_ms),
                "a 2 s window lasted {window_ms} ms"
            );
            let routes = reply.json()["values"].clone();
            let has_route = routes
                .as_array()
                .is_some_and(|rows| rows.iter().any(|r| r["value"] == "/work/{n}"));
            labelled += u32::from(has_route);
            let wall = get(addr, "/debug/pprof/profile?seconds=2&mode=wall", None);
            if wall.status == 409 {
                std::thread::sleep(Duration::from_millis(500));
                answered += 1;
                continue;
            }
            assert_eq!(wall.status, 200, "wall-clock profile: {}", wall.text());
            answered += 2;
        }
        (answered, labelled)
    });
    let heap = std::thread::spawn(move || {
        let mut answered = 0u32;
        while Instant::now() < deadline {
            let reply = get(addr, "/debug/pprof/heap", None);
            assert_eq!(reply.status, 200, "heap profile: {}", reply.text());
            let snapshot = send(addr, "POST", "/debug/heap/snapshots", None);
            assert_eq!(snapshot.status, 201, "snapshot: {}", snapshot.text());
            let id = snapshot.json()["id"].as_u64().unwrap();
            let diff = get(
                addr,
                &format!("/debug/heap/diff?base={id}&target=now&format=json"),
                None,
            );
            assert_eq!(diff.status, 200, "diff: {}", diff.text());
            answered += 3;
        }
        answered
    });
    // Waves of 150 idle sockets and 20 slow bodies from another host,
    // held for two seconds.
    let flood = std::thread::spawn(move || {
        let mut waves = 0u32;
        while Instant::now() < deadline {
            let idle = sockets_from([127, 0, 0, 2], addr, 150, Duration::from_secs(10));
            let slow: Vec<_> = sockets_from([127, 0, 0, 2], addr, 20, Duration::from_secs(10))
                .into_iter()
                .filter_map(|mut stream| {
                    std::io::Write::write_all(
                        &mut stream,
                        b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0x1",
                    )
                    .ok()?;
                    Some(stream)
                })
                .collect();
            std::thread::sleep(Duration::from_secs(2));
            drop((idle, slow));
            waves += 1;
        }
        waves
    });
    let (cpu_answered, labelled) = cpu.join().expect("CPU profiles kept being answered");
    let heap_answered = heap.join().expect("heap requests kept being answered");
    let waves = flood.join().expect("flood");
    let served = requests
        .join()
        .expect("the labelled service kept answering");
    allocators.stop();
    runtime.shutdown_timeout(Duration::from_secs(5));
    eprintln!(
        "soak {secs} s: {cpu_answered} CPU and wall-clock profiles ({labelled} CPU profiles with \
         route labels) and {heap_answered} heap requests answered through {waves} flood waves; \
         {served} labelled requests served"
    );
    assert!(
        labelled * 2 >= cpu_answered / 2,
        "{labelled} of {} CPU profiles had the service's route label",
        cpu_answered / 2
    );
    assert!(served >= secs, "{served} labelled requests in {secs} s");
    assert!(sigprof_ignored(), "SIGPROF is SIG_IGN after the soak");
    assert!(
        wall_signal_ignored(),
        "SIGRTMIN+6 is SIG_IGN after the soak"
    );
    // How many 2 s windows fit depends on how long their reports take to
    // render in a debug build under this load (3 to 10 s a report, machine
    // by machine): what must hold is that every request was answered (a
    // hang fails its 120 s timeout), every window lasted as asked (above),
    // and both kinds took turns.
    assert!(
        cpu_answered >= 2,
        "{cpu_answered} CPU and wall-clock profiles in {secs} s"
    );
    assert!(heap_answered >= 3, "{heap_answered} heap requests");
    assert_eq!(get(addr, "/health", None).status, 200);
    // Idle blocking threads exit after 10 s; jemalloc returns dirty pages
    // after 10 s of decay.
    let settled = wait_until(Duration::from_secs(40), || {
        process_threads() <= threads_before + 1 && process_rss() <= rss_before + (48 << 20)
    });
    let connections = get(addr, "/health", None).json()["connections"].clone();
    assert!(
        settled,
        "threads {threads_before} → {}, RSS {:.1} → {:.1} MiB; {connections}",
        process_threads(),
        rss_before as f64 / 1048576.0,
        process_rss() as f64 / 1048576.0
    );
    assert!(connections["open"].as_u64().unwrap() <= 2, "{connections}");
}

/// A two-worker service with the RED layer whose requests allocate, keep
/// some memory for a moment and burn a little CPU, and a named task doing
/// the same until the runtime shuts down.
fn labelled_service(agent: &Agent) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    #[inline(never)]
    fn request_work(n: u64) -> String {
        let held = retain_chunks(256 << 10);
        churn(1 << 20);
        stethoscope_examples::workload::burn_hot(Duration::from_millis(2));
        format!("{n} {}", held.len())
    }
    let runtime = service_runtime();
    let app = axum::Router::new()
        .route(
            "/work/{n}",
            axum::routing::get(
                |axum::extract::Path(n): axum::extract::Path<u64>| async move { request_work(n) },
            ),
        )
        .layer(agent.red_layer());
    let service = runtime.block_on(serve(app));
    runtime.spawn(stethoscope::labels::task("soak-background", async move {
        loop {
            std::hint::black_box(request_work(0));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }));
    (runtime, service)
}

/// Threads of this process.
fn process_threads() -> u64 {
    status_value("Threads:")
}

/// Resident set of this process, bytes.
fn process_rss() -> u64 {
    status_value("VmRSS:") * 1024
}

fn status_value(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// With jemalloc started `prof:false`, every heap endpoint answers 501 with
/// the fix, and the rest of the agent works. Runs in a child process:
/// jemalloc reads its options once, at start.
#[test]
fn prof_false_gives_501_with_the_fix_on_every_heap_endpoint() {
    if !is_child() {
        let _heap = heap_lock();
        in_child(
            "heap::prof_false_gives_501_with_the_fix_on_every_heap_endpoint",
            &[("_RJEM_MALLOC_CONF", "prof:false".as_ref())],
        );
        return;
    }
    let agent = start_agent();
    let addr = agent.local_addr();
    for (method, path, body) in [
        ("GET", "/debug/pprof/heap", None),
        ("GET", "/debug/pprof/allocs", None),
        ("GET", "/debug/heap/profiling", None),
        ("PUT", "/debug/heap/profiling", Some(r#"{"active":true}"#)),
        ("POST", "/debug/heap/snapshots", None),
        ("GET", "/debug/heap/snapshots", None),
        ("GET", "/debug/heap/snapshots/1", None),
        ("DELETE", "/debug/heap/snapshots/1", None),
        ("GET", "/debug/heap/diff?base=1", None),
    ] {
        let reply = send(addr, method, path, body);
        let text = reply.text();
        assert_eq!(reply.status, 501, "{method} {path}: {text}");
        if path.starts_with("/debug/pprof/") {
            // Go-style plain-text errors on the pprof paths.
            assert!(
                text.contains("prof:false") && text.contains("prof:true"),
                "{path}: {text}"
            );
        } else {
            let doc = reply.json();
            assert!(
                doc["error"].as_str().unwrap().contains("prof:false"),
                "{doc}"
            );
            assert!(
                doc["hint"].as_str().unwrap().contains("heap_profiling!"),
                "{doc}"
            );
        }
    }
    // jemalloc is still the allocator: its statistics work without profiling.
    assert_eq!(get(addr, "/debug/heap/stats", None).status, 200);
    for path in ["/health", "/debug/use", "/debug/pprof/profile?seconds=1"] {
        assert_eq!(get(addr, path, None).status, 200, "{path}");
    }
}

/// Heap dumps go to a private directory under `TMPDIR` that is gone once
/// the request is answered. Runs in a child process with its own `TMPDIR`.
#[test]
fn heap_dumps_leave_nothing_in_the_temp_directory() {
    if !is_child() {
        let _heap = heap_lock();
        let scratch = std::env::temp_dir().join(format!("stethoscope-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        in_child(
            "heap::heap_dumps_leave_nothing_in_the_temp_directory",
            &[("TMPDIR", scratch.as_os_str())],
        );
        let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().collect();
        let _ = std::fs::remove_dir_all(&scratch);
        assert!(left.is_empty(), "left behind: {left:?}");
        return;
    }
    assert!(std::env::temp_dir().ends_with(format!("stethoscope-e2e-{}", parent_pid())));
    let agent = start_agent();
    let addr = agent.local_addr();
    for path in ["/debug/pprof/heap", "/debug/pprof/heap?format=text"] {
        assert_eq!(get(addr, path, None).status, 200, "{path}");
    }
    let snapshot = send(addr, "POST", "/debug/heap/snapshots", None);
    assert_eq!(snapshot.status, 201, "{}", snapshot.text());
    let diff = get(addr, "/debug/heap/diff?base=1&target=now", None);
    assert_eq!(diff.status, 200, "{}", diff.text());
}

/// The process id of the parent (the test binary that started this child).
fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}

/// A leak in a handler that runs under the RED layer is the application's;
/// the agent's own debug-info tables (loaded by the first symbolized
/// snapshot) are the agent's. Runs in a child process so the symbolizer
/// starts cold.
#[test]
fn leaks_are_attributed_to_whoever_allocated() {
    if !is_child() {
        let _quiet = profiler_lock();
        let _heap = heap_lock();
        in_child("heap::leaks_are_attributed_to_whoever_allocated", &[]);
        return;
    }
    let runtime = service_runtime();
    let agent = runtime.block_on(async { start_agent() });
    let addr = agent.local_addr();
    let app = stethoscope_examples::demo::router(stethoscope_examples::demo::DemoPool::new(4))
        .layer(agent.red_layer());
    let service = runtime.block_on(serve(app));
    let first = send(addr, "POST", "/debug/heap/snapshots", None);
    assert_eq!(first.status, 201, "{}", first.text());
    let leaked = get(service, "/leak?mb=48", None);
    assert_eq!(leaked.status, 200, "{}", leaked.text());
    let second = send(addr, "POST", "/debug/heap/snapshots", None);
    assert_eq!(second.status, 201, "{}", second.text());
    let diff = get(
        addr,
        "/debug/heap/diff?base=1&target=2&format=json&limit=200",
        None,
    )
    .json();
    let stacks = diff["stacks"].as_array().expect("stacks");
    let through = |s: &serde_json::Value, name: &str| {
        s["frames"].as_array().is_some_and(|f| {
            f.iter()
                .any(|f| f.as_str().is_some_and(|f| f.contains(name)))
        })
    };
    let leak: Vec<_> = stacks
        .iter()
        .filter(|s| through(s, "leak_chunks"))
        .collect();
    assert!(!leak.is_empty(), "no leak stack in {diff}");
    assert!(
        leak.iter().all(|s| through(s, "stethoscope::red::")),
        "the leak runs under the RED layer"
    );
    assert!(
        leak.iter().all(|s| s["agent"] == false),
        "the application's leak is marked as the agent's: {leak:?}"
    );
    let tables: Vec<_> = stacks
        .iter()
        .filter(|s| through(s, "::dwarf::") && s["delta_bytes"].as_i64() > Some(0))
        .collect();
    assert!(
        !tables.is_empty(),
        "the symbolizer's tables did not grow: {diff}"
    );
    assert!(
        tables.iter().all(|s| s["agent"] == true),
        "the agent's debug-info tables are not marked: {tables:?}"
    );
    let text = get(addr, "/debug/heap/diff?base=1&target=2&format=text", None).text();
    let leak_line = text
        .lines()
        .find(|l| l.contains("leak_chunks"))
        .expect("leak line");
    assert!(!leak_line.contains("stethoscope agent"), "{leak_line}");
}
