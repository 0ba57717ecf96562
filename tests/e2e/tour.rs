//! The README's 60-second tour, step by step, on the demo process: each
//! test sends what the tour sends (with other numbers) and checks the
//! promise the README makes for that step. The spans and log-level steps
//! are `spans.rs`'s, `/metrics` is `metrics.rs`'s.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;

/// Starts `GET {path}` on the demo service in the background (the tour's
/// `curl … &`) and waits `lead` so that the work is under way.
fn busy(demo: &DemoProcess, path: &str) -> std::thread::JoinHandle<Reply> {
    let (service, path) = (demo.service, path.to_owned());
    let before = demo.cpu_time();
    let handle = std::thread::spawn(move || get(service, &path, None));
    // The work has begun once the demo has burned 50 ms more CPU than it
    // had: on a slow or busy machine that takes longer than on a quiet one,
    // and a profile that starts earlier would see mostly idle time.
    assert!(
        wait_until(Duration::from_secs(20), || demo.cpu_time()
            >= before + Duration::from_millis(50)),
        "the demo did not start working on the request"
    );
    handle
}

/// The lines of the section of a text report that starts with `header`,
/// without its header and column line.
fn section<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.starts_with(header))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .collect()
}

/// The value of a `By your code` row (`3.01s  75.2%  function …`), in %.
fn share_of(rows: &[&str], function: &str) -> f64 {
    rows.iter()
        .find(|r| r.contains(function))
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|p| p.trim_end_matches('%').parse().ok())
        .unwrap_or(0.0)
}

fn url(agent: SocketAddr, path: &str) -> String {
    format!("http://{agent}{path}")
}

#[test]
fn the_doctor_step_names_the_blocking_handler_and_its_fix() {
    let _alone = profiler_lock();
    let demo = DemoProcess::start();
    // The tour's loop, shortened: the default window is 10 s.
    let started = std::time::Instant::now();
    let mut report = String::new();
    while started.elapsed() < Duration::from_secs(40) {
        get(demo.service, "/block?ms=250", None);
        std::thread::sleep(Duration::from_millis(250));
        if started.elapsed() > Duration::from_secs(10) {
            let json = get(demo.agent, "/debug/doctor", None).json();
            let open = json["findings"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["rule"] == "event_loop_blocked"));
            if open {
                report = get(demo.agent, "/debug/doctor?format=text", None).text();
                break;
            }
        }
    }
    assert!(
        report.contains("rule        event_loop_blocked"),
        "{report}"
    );
    assert!(report.contains("demo::blocking_handler"), "{report}");
    assert!(
        report.contains("spawn_blocking") && report.contains("tokio::time::sleep"),
        "{report}"
    );
    let history = get(
        demo.agent,
        "/debug/history?since=-1m&series=lag_max_ms,cpu_cores",
        None,
    )
    .json();
    let lag: Vec<f64> = history["series"]["lag_max_ms"]
        .as_array()
        .map(|v| v.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    assert!(lag.iter().any(|&l| l >= 200.0), "{history}");
}

#[test]
fn cpu_steps_flame_graph_top_table_go_pprof_and_memcpy() {
    let _alone = profiler_lock();
    let demo = DemoProcess::start();

    // Flame graph: the handler's work sits a few frames from the thread's
    // root, the async plumbing under it folded into one marker each run.
    let burn = busy(&demo, "/burn?ms=3500");
    let folded = get(
        demo.agent,
        "/debug/pprof/profile?seconds=2&format=folded",
        None,
    );
    assert_eq!(burn.join().expect("burn").status, 200);
    assert_eq!(folded.status, 200, "{}", folded.text());
    let folded = folded.text();
    let depth_of_burn_hot = folded
        .lines()
        .filter_map(|line| {
            let frames: Vec<&str> = line.rsplit_once(' ')?.0.split(';').collect();
            frames
                .iter()
                .position(|f| *f == "stethoscope_examples::workload::burn_hot")
        })
        .max()
        .unwrap_or_else(|| panic!("no burn_hot in:\n{folded}"));
    assert!(
        depth_of_burn_hot < 12,
        "burn_hot is {depth_of_burn_hot} frames from the root:\n{folded}"
    );
    assert!(
        folded.contains("tokio") && folded.contains(" frames]"),
        "{folded}"
    );
    // trim=none shows every frame again: burn_hot deep under the runtime.
    let burn = busy(&demo, "/burn?ms=2500");
    let full = get(
        demo.agent,
        "/debug/pprof/profile?seconds=1&format=folded&trim=none",
        None,
    )
    .text();
    burn.join().expect("burn");
    assert!(!full.contains(" frames]"), "{full}");
    assert!(
        full.contains("tokio::runtime::task::harness::poll_future"),
        "{full}"
    );

    // The top table leads with the service's code: 3/4 burn_hot, 1/4
    // burn_cold, in its first 20 lines.
    let burn = busy(&demo, "/burn?ms=3500");
    let text = get(
        demo.agent,
        "/debug/pprof/profile?seconds=2&format=text",
        None,
    )
    .text();
    burn.join().expect("burn");
    let head: String = text.lines().take(20).collect::<Vec<_>>().join("\n");
    let code = section(&head, "By your code");
    let (hot, cold) = (
        share_of(&code, "workload::burn_hot"),
        share_of(&code, "workload::burn_cold"),
    );
    assert!(hot > 0.0 && cold > 0.0, "{head}");
    let split = hot / (hot + cold);
    // The header says how many samples the window had ("N samples (…"):
    // the split may be off by four binomial σ of the burn's share of them
    // (10 points at the least) — one thread, a 2 s window, fewer samples
    // when the machine is busy.
    let samples: f64 = text
        .split(" samples (")
        .next()
        .and_then(|before| before.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sample count in:\n{head}"));
    let tolerance = share_tolerance(0.75, samples * (hot + cold) / 100.0, 0.10);
    assert!(
        (split - 0.75).abs() <= tolerance,
        "hot {hot}% cold {cold}% of {samples} samples, expected 3:1 ± {tolerance:.3}:\n{head}"
    );

    // go tool pprof reads the endpoint directly, with readable names.
    let burn = busy(&demo, "/burn?ms=3500");
    let (ok, top, stderr) = go_pprof(&["-top", &url(demo.agent, "/debug/pprof/profile?seconds=2")]);
    burn.join().expect("burn");
    assert!(ok, "{stderr}");
    let (_, rows) = parse_top(&top);
    assert!(
        rows.iter()
            .any(|(name, _, _)| name == "stethoscope_examples::workload::burn_hot"),
        "{top}"
    );
    let mangled: Vec<&String> = rows
        .iter()
        .map(|(name, _, _)| name)
        .filter(|name| name.starts_with("::"))
        .collect();
    assert!(
        mangled.is_empty(),
        "names shortened by pprof: {mangled:?}\n{top}"
    );

    // The web UI's graph view needs Graphviz; -svg is the same graph.
    let burn = busy(&demo, "/burn?ms=2500");
    let (ok, svg, stderr) = go_pprof(&["-svg", &url(demo.agent, "/debug/pprof/profile?seconds=1")]);
    burn.join().expect("burn");
    assert!(ok, "go tool pprof -svg (is graphviz installed?): {stderr}");
    assert!(svg.contains("<svg") && svg.contains("burn_hot"), "{stderr}");

    // memcpy is attributed to its Rust caller, within `head -12`.
    let copy = busy(&demo, "/memcpy?ms=3000");
    let text = get(
        demo.agent,
        "/debug/pprof/profile?seconds=2&format=text",
        None,
    )
    .text();
    copy.join().expect("memcpy");
    let head: Vec<&str> = text.lines().take(12).collect();
    let row = head
        .iter()
        .find(|l| l.contains("stethoscope_examples::workload::copy_buffers"))
        .unwrap_or_else(|| panic!("copy_buffers is not in the first 12 lines:\n{text}"));
    assert!(row.contains("memcpy"), "{row}\n{text}");
    assert!(share_of(&[row], "copy_buffers") > 50.0, "{row}");
}

#[test]
fn heap_steps_snapshot_leak_diff_and_go_pprof() {
    let _alone = profiler_lock();
    let demo = DemoProcess::start();
    let snapshot = |demo: &DemoProcess| {
        let reply = send(demo.agent, "POST", "/debug/heap/snapshots", None);
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["id"].as_u64().expect("snapshot id")
    };
    let base = snapshot(&demo);
    assert_eq!(get(demo.service, "/leak?mb=40", None).status, 200);
    let target = snapshot(&demo);

    // The leak leads the diff, as the application's, within `head -15`.
    let diff = get(
        demo.agent,
        &format!("/debug/heap/diff?base={base}&target={target}&format=text"),
        None,
    )
    .text();
    let first = diff
        .lines()
        .skip_while(|l| !l.contains("Δ MiB"))
        .nth(1)
        .unwrap_or_else(|| panic!("no rows:\n{diff}"));
    assert!(first.contains("leak_chunks"), "{diff}");
    assert!(!first.contains("(stethoscope agent)"), "{diff}");
    let mib: f64 = first
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    // The demo samples one allocation per 512 KiB on average: 640 chunks of
    // 64 KiB give ~75 samples, an estimate within ±11 % (one standard
    // deviation); ±35 % is three of them.
    assert!(
        (26.0..=54.0).contains(&mib),
        "{mib} MiB for a 40 MiB leak:\n{diff}"
    );

    // The differential flame graph names the leaking code.
    let svg = get(
        demo.agent,
        &format!("/debug/heap/diff?base={base}&target={target}&format=svg"),
        None,
    )
    .text();
    assert!(
        svg.contains("leak_chunks") && svg.contains(" frames]"),
        "folded"
    );

    // go tool pprof -top ranks the code that allocated, not alloc::raw_vec.
    let (ok, top, stderr) = go_pprof(&[
        "-top",
        "-sample_index=inuse_space",
        &url(demo.agent, "/debug/pprof/heap"),
    ]);
    assert!(ok, "{stderr}");
    let first_row = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        first_row.contains("stethoscope_examples::workload::"),
        "the first row is not the demo's allocating code:\n{top}"
    );
    assert!(!top.contains("alloc::raw_vec"), "{top}");
}

#[test]
fn red_use_runtime_and_lag_steps_speak_human() {
    let _alone = profiler_lock();
    let demo = DemoProcess::start();

    // RED: the routes by template, the flaky one with errors.
    for i in 0..30 {
        get(demo.service, &format!("/items/{i}"), None);
        get(demo.service, "/flaky", None);
    }
    let red = get(demo.agent, "/debug/red?format=text", None).text();
    assert!(
        red.contains("/items/{id}") && red.contains("/flaky"),
        "{red}"
    );

    // USE: percentages, human units, no raw OS error numbers.
    let table = get(demo.agent, "/debug/use?format=text", None).text();
    for row in ["cpu", "memory", "executor", "db_pool"] {
        assert!(
            table.lines().any(|l| l.starts_with(row)),
            "no {row} row:\n{table}"
        );
    }
    let memory = table
        .lines()
        .find(|l| l.starts_with("memory"))
        .unwrap_or_default();
    assert!(memory.contains("MiB") || memory.contains("GiB"), "{memory}");
    let rows: Vec<&str> = table.lines().take_while(|l| !l.is_empty()).collect();
    let scientific = rows
        .iter()
        .flat_map(|r| r.split_whitespace())
        .find(|token| token.starts_with(|c: char| c.is_ascii_digit()) && token.contains('e'));
    assert_eq!(scientific, None, "{table}");
    assert!(!table.contains("(os error"), "{table}");
    let db = table
        .lines()
        .find(|l| l.starts_with("db_pool"))
        .unwrap_or_default();
    assert!(db.contains("connections"), "{db}");

    // The stall names the blocking handler; many stalls keep the text short.
    for _ in 0..6 {
        assert_eq!(get(demo.service, "/block?ms=250", None).status, 200);
    }
    let named = wait_until(Duration::from_secs(10), || {
        let text = get(demo.agent, "/debug/runtime?format=text", None).text();
        section(&text, "stalls")
            .join("\n")
            .contains("blocking_handler")
            || text.contains("blocking_handler")
    });
    let text = get(demo.agent, "/debug/runtime?format=text", None).text();
    assert!(named, "{text}");
    let first_stall: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains(" stuck "))
        .take(12)
        .collect();
    assert!(
        first_stall.iter().any(|l| l.contains("blocking_handler")),
        "the newest stall's stack leads with the handler:\n{text}"
    );
    assert!(
        text.lines().count() < 150,
        "{} lines:\n{text}",
        text.lines().count()
    );

    // Lag: a table and a plot with one line per series.
    let lag = get(demo.agent, "/debug/lag?format=text", None).text();
    assert!(lag.contains("P99") && lag.contains("10s"), "{lag}");
    let svg = get(demo.agent, "/debug/lag?format=svg", None).text();
    for series in ["class=\"p50\"", "class=\"p99\"", "class=\"max\""] {
        assert!(svg.contains(series), "{series} missing");
    }
}
