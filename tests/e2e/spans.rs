//! The tracing integration: the demo process's log level changed at
//! runtime (and reverting by itself), span timings against known sleeps,
//! and the demo's spans in `/debug/spans` and `/metrics`.

use std::time::{Duration, Instant};

use stethoscope::spans::SpanTimings;
use stethoscope::Agent;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

use crate::metrics::promtool_check;
use crate::support::*;

/// Lines of the demo's `debug` "query finished" log for row `id`.
fn query_debug_lines(demo: &DemoProcess, id: u64) -> usize {
    let id = format!(" id={id} ");
    demo.lines()
        .iter()
        .filter(|l| l.contains(" DEBUG ") && l.contains("query finished") && l.contains(&id))
        .count()
}

fn items(demo: &DemoProcess, ids: std::ops::Range<u64>) {
    for id in ids {
        let reply = get(demo.service, &format!("/items/{id}"), None);
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

#[test]
fn log_level_raises_one_target_for_a_ttl_and_a_bad_directive_changes_nothing() {
    // Building and running a second process: keep it off the CPU truth tests.
    let _quiet = profiler_lock();
    let demo = DemoProcess::start();
    let level = get(demo.agent, "/debug/log-level", None).json();
    assert_eq!(level["directive"], "info", "{level}");
    assert_eq!(level["origin"], "startup");
    assert_eq!(level["active"], true);

    items(&demo, 1..4);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !demo.lines().iter().any(|l| l.contains("query finished")),
        "debug lines at info:\n{}",
        demo.lines().join("\n")
    );

    // A malformed directive: 400 with the parser's message, nothing changes.
    let bad = send(
        demo.agent,
        "PUT",
        "/debug/log-level?ttl=2s",
        Some("info,stethoscope_examples::demo=loud"),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    let body = bad.json();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("stethoscope_examples::demo=loud"), "{body}");
    assert!(error.contains("level"), "the parser's message: {body}");
    assert!(body["hint"].is_string());
    assert_eq!(
        get(demo.agent, "/debug/log-level", None).json()["directive"],
        "info"
    );
    items(&demo, 100..103);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        (100..103)
            .map(|id| query_debug_lines(&demo, id))
            .sum::<usize>(),
        0
    );

    // One target raised to debug for 2 s.
    let put = send(
        demo.agent,
        "PUT",
        "/debug/log-level?ttl=2s",
        Some("info,stethoscope_examples::demo=debug"),
    );
    assert_eq!(put.status, 200, "{}", put.text());
    let changed_at = Instant::now();
    let body = put.json();
    assert_eq!(body["directive"], "info,stethoscope_examples::demo=debug");
    assert_eq!(body["origin"], "api");
    assert_eq!(body["revert_to"], "info");
    assert!(body["revert_at"].is_string());
    items(&demo, 200..203);
    assert!(
        wait_until(Duration::from_secs(5), || (200..203)
            .all(|id| query_debug_lines(&demo, id) == 1)),
        "no debug lines after raising the level:\n{}",
        demo.lines().join("\n")
    );
    // Other targets stay at info.
    assert!(!demo
        .lines()
        .iter()
        .any(|l| l.contains(" DEBUG ") && !l.contains("stethoscope_examples::demo")));
    assert!(demo
        .lines()
        .iter()
        .any(|l| l.contains("log filter changed") && l.contains("ttl=\"2s\"")));

    // After the ttl the filter reverts by itself and the debug lines stop.
    assert!(
        wait_until(Duration::from_secs(10), || {
            get(demo.agent, "/debug/log-level", None).json()["directive"] == "info"
        }),
        "no revert"
    );
    let reverted_after = changed_at.elapsed();
    assert!(
        reverted_after >= Duration::from_millis(1900),
        "reverted after {reverted_after:?}"
    );
    let level = get(demo.agent, "/debug/log-level", None).json();
    assert_eq!(level["origin"], "startup", "{level}");
    assert!(level["revert_at"].is_null());
    assert!(demo
        .lines()
        .iter()
        .any(|l| l.contains("log filter reverted")));
    items(&demo, 300..303);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        (300..303)
            .map(|id| query_debug_lines(&demo, id))
            .sum::<usize>(),
        0,
        "debug lines after the revert:\n{}",
        demo.lines().join("\n")
    );
}

#[test]
fn span_timings_match_known_sleeps_and_nested_busy_stays_within_total() {
    let _quiet = profiler_lock();
    let timings = SpanTimings::new(); // slow-span threshold 50 ms
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .spans(timings.clone())
        .start()
        .expect("agent");
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(timings.layer()));
    std::thread::scope(|s| {
        // Sync spans: entered for their whole life.
        s.spawn(|| {
            tracing::dispatcher::with_default(&dispatch, || {
                for i in 0..10u64 {
                    let _s = tracing::info_span!("sleep_20", i, kind = "short").entered();
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        });
        s.spawn(|| {
            tracing::dispatcher::with_default(&dispatch, || {
                let _batch = tracing::info_span!("batch").entered();
                for i in 0..10u64 {
                    let _s = tracing::info_span!("sleep_80", i, kind = "long").entered();
                    std::thread::sleep(Duration::from_millis(80));
                }
            })
        });
        // Async spans: busy only while polled.
        s.spawn(|| {
            tracing::dispatcher::with_default(&dispatch, || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("runtime");
                runtime.block_on(
                    async {
                        for _ in 0..10 {
                            tokio::time::sleep(Duration::from_millis(20))
                                .instrument(tracing::info_span!("db_wait"))
                                .await;
                        }
                    }
                    .instrument(tracing::info_span!("request")),
                );
            })
        });
    });

    let body = get(agent.local_addr(), "/debug/spans", None).json();
    assert_eq!(body["installed"], true);
    let spans = body["spans"].as_array().expect("spans");
    let span = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {body}"))
    };
    for (name, known) in [("sleep_20", 20.0), ("sleep_80", 80.0), ("db_wait", 20.0)] {
        let s = span(name);
        assert_eq!(s["count"], 10, "{s}");
        assert_histogram_shape(&s["total"], name);
        assert_histogram_shape(&s["busy"], name);
        let p50 = s["total"]["p50_ms"].as_f64().unwrap_or_default();
        assert!(
            (p50 - known).abs() <= known * 0.25,
            "{name}: p50 {p50:.2} ms is not within 25 % of {known} ms"
        );
    }
    for s in spans {
        let (busy, total) = (&s["busy"], &s["total"]);
        for field in ["p50_ms", "p99_ms", "max_ms"] {
            assert!(
                busy[field].as_f64() <= total[field].as_f64(),
                "busy > total: {s}"
            );
        }
        assert!(
            s["busy_time_ms"].as_f64() <= s["total_time_ms"].as_f64(),
            "{s}"
        );
    }
    // Sync spans are busy for their whole life, awaiting ones are not.
    let sleep_20 = span("sleep_20");
    assert!(
        sleep_20["busy"]["p50_ms"].as_f64().unwrap_or_default() >= 15.0,
        "{sleep_20}"
    );
    let db_wait = span("db_wait");
    assert!(
        db_wait["busy"]["p50_ms"].as_f64().unwrap_or(f64::MAX) < 5.0,
        "{db_wait}"
    );
    let request = span("request");
    assert!(request["total"]["max_ms"].as_f64() >= db_wait["total_time_ms"].as_f64());

    // The slow-span log holds the 80 ms spans with their fields, not the 20 ms ones.
    let slowest = body["slowest"].as_array().expect("slowest");
    let slow_80: Vec<_> = slowest.iter().filter(|s| s["name"] == "sleep_80").collect();
    assert_eq!(slow_80.len(), 10, "{body}");
    for s in &slow_80 {
        assert_eq!(s["fields"]["kind"], "long", "{s}");
        assert!(s["fields"]["i"].is_string(), "{s}");
        assert_eq!(s["parents"], serde_json::json!(["batch"]));
        assert!(s["total_ms"].as_f64().unwrap_or_default() >= 80.0, "{s}");
        assert!(s["busy_ms"].as_f64() <= s["total_ms"].as_f64());
    }
    let mut seen: Vec<_> = slow_80
        .iter()
        .filter_map(|s| s["fields"]["i"].as_str())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 10, "every 80 ms span, by its field i");
    assert!(!slowest
        .iter()
        .any(|s| s["name"] == "sleep_20" || s["name"] == "db_wait"));
    // `batch` (800 ms) and `request` (200 ms) are slow too.
    assert!(slowest.iter().any(|s| s["name"] == "batch"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(agent.shutdown());
}

#[test]
fn the_demo_times_its_queries_and_upstream_calls_and_exports_them() {
    let _quiet = profiler_lock();
    let demo = DemoProcess::start();
    let empty = get(demo.agent, "/debug/spans", None).json();
    assert_eq!(empty["installed"], true, "{empty}");
    for id in 1..=20u64 {
        let reply = get(demo.service, &format!("/checkout/{id}"), None);
        // Every 20th payments call fails.
        let want = if id == 20 { 502 } else { 200 };
        assert_eq!(reply.status, want, "{}", reply.text());
    }
    items(&demo, 1..6);

    let body = get(demo.agent, "/debug/spans", None).json();
    let spans = body["spans"].as_array().expect("spans");
    let span = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name && s["target"] == "stethoscope_examples::demo")
            .unwrap_or_else(|| panic!("no {name} in {body}"))
    };
    let query = span("db_query");
    assert_eq!(query["count"], 25, "{query}");
    let query_p50 = query["total"]["p50_ms"].as_f64().unwrap_or_default();
    assert!((5.0..=40.0).contains(&query_p50), "{query}");
    let upstream = span("upstream_call");
    assert_eq!(
        (upstream["count"].as_u64(), upstream["errors"].as_u64()),
        (Some(20), Some(1))
    );
    let upstream_max = upstream["total"]["max_ms"].as_f64().unwrap_or_default();
    assert!((78.0..=200.0).contains(&upstream_max), "{upstream}");

    let slowest = body["slowest"].as_array().expect("slowest");
    let slow: Vec<_> = slowest
        .iter()
        .filter(|s| s["name"] == "upstream_call")
        .collect();
    assert_eq!(slow.len(), 4, "every 5th call takes 80 ms: {body}");
    for s in &slow {
        assert_eq!(s["fields"]["service"], "payments", "{s}");
        assert!(s["fields"]["cart"].is_string());
    }
    let failed = slow
        .iter()
        .find(|s| s["error"] == true)
        .unwrap_or_else(|| panic!("the failed call is among the slow ones: {body}"));
    assert_eq!(failed["fields"]["status"], "502");
    assert_eq!(failed["fields"]["error"], "payments answered 502");

    // The handler's span encloses both and is the slowest kind.
    let checkout = span("checkout");
    assert_eq!(checkout["count"], 20);
    assert!(slow
        .iter()
        .all(|s| s["parents"] == serde_json::json!(["checkout"])));
    let text = get(demo.agent, "/debug/spans?format=text&sort=p99", None).text();
    let order: Vec<&str> = text
        .lines()
        .skip(1)
        .take(3)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(order, ["checkout", "upstream_call", "db_query"], "{text}");
    assert!(text.contains("service=payments"), "{text}");
    assert!(text.contains("(in checkout)"), "{text}");

    let metrics = get(demo.agent, "/metrics", None).text();
    for needle in [
        "# TYPE stethoscope_span_duration_seconds histogram",
        "stethoscope_span_duration_seconds_bucket{target=\"stethoscope_examples::demo\",name=\"upstream_call\",le=\"0.1\"} 20",
        "stethoscope_span_duration_seconds_count{target=\"stethoscope_examples::demo\",name=\"db_query\"} 25",
        "stethoscope_span_errors_total{target=\"stethoscope_examples::demo\",name=\"upstream_call\"} 1",
        "stethoscope_span_busy_seconds_total{target=\"stethoscope_examples::demo\",name=\"db_query\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from:\n{metrics}");
    }
    let (ok, report) = promtool_check(&metrics);
    assert!(ok, "promtool check metrics failed:\n{report}");
}

/// Two spans of known CPU weight on one thread, 3:1.
fn crunch_in_spans(stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
        tracing::info_span!("parse").in_scope(|| spin_cpu(Duration::from_millis(15)));
        tracing::info_span!("render").in_scope(|| spin_cpu(Duration::from_millis(5)));
    }
}

/// Spins for `cpu` of this thread's CPU time: 3:1 in CPU whatever share of
/// a core the thread gets (a wall-clock spin is not, on a busy machine).
fn spin_cpu(cpu: Duration) {
    use stethoscope_examples::workload::thread_cpu_time;
    let start = thread_cpu_time();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while thread_cpu_time().saturating_sub(start) < cpu {
        for _ in 0..256 {
            x = std::hint::black_box(x.rotate_left(7).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
    }
}

#[test]
fn span_names_label_cpu_samples_and_rank_by_span() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use stethoscope::spans::SpanSettings;
    let _quiet = profiler_lock();
    let timings = SpanTimings::with_settings(SpanSettings::default().label_samples(true));
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .spans(timings.clone())
        .start()
        .expect("agent");
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (stop, layer) = (Arc::clone(&stop), timings.layer());
        std::thread::Builder::new()
            .name("spanned".into())
            .spawn(move || {
                let subscriber = tracing_subscriber::registry().with(layer);
                tracing::subscriber::with_default(subscriber, || crunch_in_spans(&stop));
            })
            .expect("spawn")
    };
    std::thread::sleep(Duration::from_millis(300));
    let table = get(
        agent.local_addr(),
        "/debug/pprof/profile?seconds=3&hz=199&format=json&by=span",
        None,
    )
    .json();
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("worker");
    // (samples, CPU) of a span.
    let of = |value: &str, index: usize| {
        table["values"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["value"] == value)
            .and_then(|v| v["values"][index].as_f64())
            .unwrap_or(0.0)
    };
    let (parse, render) = (of("parse", 1), of("render", 1));
    let samples = of("parse", 0) + of("render", 0);
    assert!(parse > 0.0 && render > 0.0, "{table}");
    let share = parse / (parse + render);
    // The share may be off by four binomial σ of the samples the spans got
    // (7 points at the least): on a contended machine the thread gets less
    // CPU, so fewer samples.
    let tolerance = share_tolerance(0.75, samples, 0.07);
    assert!(
        (share - 0.75).abs() <= tolerance,
        "parse's share of the spans' CPU {share:.3}, expected 0.75 ± {tolerance:.3}: {table}"
    );
    drop(agent);
}
