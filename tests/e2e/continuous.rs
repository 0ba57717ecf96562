//! Continuous profiling: the ring of segments answers look-backs at once
//! and truly (a phase-changing workload, CPU time against `/proc`), lets
//! on-demand profiles at other rates run without a gap, keeps an
//! incident's pinned profile after it wraps, and refuses junk windows with
//! a hint. Each test runs alone in a child process: the sampler is
//! process-wide.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use stethoscope::cpu::ContinuousSettings;
use stethoscope::Agent;

use super::support::{
    burn_slice, copy_slice, get, in_child, is_child, proc_cpu_time, profiler_lock, share_tolerance,
    stacks_through, wait_until, Burners,
};

/// (wall time, process CPU time) every 100 ms while the test runs.
struct CpuLog {
    points: Arc<Mutex<Vec<(SystemTime, Duration)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CpuLog {
    fn start() -> Self {
        let points = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (points, stop) = (Arc::clone(&points), Arc::clone(&stop));
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300)
                {
                    points
                        .lock()
                        .unwrap()
                        .push((SystemTime::now(), proc_cpu_time()));
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        CpuLog {
            points,
            stop,
            thread: Some(thread),
        }
    }

    /// Process CPU time between two wall-clock times (nearest points).
    fn between(&self, from: SystemTime, to: SystemTime) -> Duration {
        let points = self.points.lock().unwrap();
        let at = |t: SystemTime| {
            points
                .iter()
                .min_by_key(|(when, _)| {
                    when.duration_since(t)
                        .or_else(|_| t.duration_since(*when))
                        .unwrap_or_default()
                })
                .map(|(_, cpu)| *cpu)
                .unwrap_or_default()
        };
        at(to).saturating_sub(at(from))
    }
}

impl Drop for CpuLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `X-Stethoscope-Coverage`'s `from=` and `to=`.
fn covered(header: &str) -> (SystemTime, SystemTime) {
    let field = |name: &str| {
        header
            .split("; ")
            .find_map(|part| part.strip_prefix(name))
            .and_then(|text| humantime::parse_rfc3339(text).ok())
            .unwrap_or_else(|| panic!("no {name} in {header:?}"))
    };
    (field("from="), field("to="))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// CPU nanoseconds of the stacks through `function`, and of all stacks.
fn cpu_through(doc: &Value, function: &str) -> (f64, f64) {
    let part: f64 = stacks_through(doc, function)
        .filter_map(|s| s["values"]["cpu"].as_f64())
        .sum();
    (part, doc["totals"]["cpu"].as_f64().unwrap_or(0.0))
}

/// The share of the CPU of the stacks through `first` or `second` that
/// goes through `first`, and the number of samples behind it: each
/// delivered sample is one independent look, weighted by the CPU it
/// stands for, and samples of unequal weight count less (Kish's effective
/// size: (Σ cpu)² / Σ cpu²/samples per stack).
fn share_through(doc: &Value, first: &str, second: &str) -> (f64, f64) {
    let (mut part, mut all, mut squares) = (0.0, 0.0, 0.0);
    for (function, is_first) in [(first, true), (second, false)] {
        for stack in stacks_through(doc, function) {
            let cpu = stack["values"]["cpu"].as_f64().unwrap_or(0.0);
            let samples = stack["values"]["samples"].as_f64().unwrap_or(0.0).max(1.0);
            if is_first {
                part += cpu;
            }
            all += cpu;
            squares += cpu * cpu / samples;
        }
    }
    let effective = if squares > 0.0 {
        all * all / squares
    } else {
        0.0
    };
    (part / all.max(1.0), effective)
}

/// `burn_hot`'s share of the burners' CPU, and how far from the workload's
/// true 3:1 it may honestly be for the samples delivered
/// ([`share_tolerance`], never under 5 points).
fn hot_share(doc: &Value) -> (f64, f64) {
    let (share, effective) = share_through(doc, "workload::burn_hot", "workload::burn_cold");
    assert!(
        effective >= 100.0,
        "only {effective:.0} samples on the burners"
    );
    let tolerance = share_tolerance(0.75, effective, 0.05);
    eprintln!(
        "burn_hot {share:.3} of the burners' CPU, ± {tolerance:.3} ({effective:.0} effective samples)"
    );
    (share, tolerance)
}

fn agent_with_ring(segment: Duration, keep: Duration) -> Agent {
    Agent::builder()
        .listen("127.0.0.1:0")
        .continuous(ContinuousSettings::new(19).segment(segment).keep(keep))
        .start()
        .expect("agent with continuous profiling")
}

#[test]
fn look_back_windows_see_each_phase_and_the_mix_with_true_cpu_time() {
    if !is_child() {
        let _alone = profiler_lock();
        return in_child(
            "continuous::look_back_windows_see_each_phase_and_the_mix_with_true_cpu_time",
            &[],
        );
    }
    let agent = agent_with_ring(Duration::from_secs(2), Duration::from_secs(120));
    let addr = agent.local_addr();
    let log = CpuLog::start();
    std::thread::sleep(Duration::from_millis(500));
    // Phase A: burn (burn_hot/burn_cold) on two threads; phase B: copies.
    let phase = Duration::from_secs(14);
    let run = |name: &str, work: fn()| {
        let burners = Burners::start(2, name, phase, work);
        std::thread::sleep(phase);
        burners.stop();
    };
    let a_start = SystemTime::now();
    run("phase-a", burn_slice);
    let switch = SystemTime::now();
    run("phase-b", copy_slice);
    let b_end = SystemTime::now();
    std::thread::sleep(Duration::from_millis(300));

    let window = |from: SystemTime, to: SystemTime| {
        let reply = get(
            addr,
            &format!(
                "/debug/pprof/profile?start={}&end={}&format=json",
                rfc3339(from),
                rfc3339(to)
            ),
            None,
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        let header = reply
            .header("x-stethoscope-coverage")
            .unwrap_or_default()
            .to_owned();
        (reply.json(), header)
    };
    let secs = Duration::from_secs;
    for (name, from, to, a_expected) in [
        ("A only", a_start + secs(3), switch - secs(3), Some(1.0)),
        ("B only", switch + secs(3), b_end - secs(3), Some(0.0)),
        ("the mix", switch - secs(5), switch + secs(5), None),
    ] {
        let (doc, header) = window(from, to);
        assert!(header.starts_with("full;"), "{name}: {header}");
        let (got_from, got_to) = covered(&header);
        // Ground truth of the mix: the share of the process's CPU over the
        // covered time that it got before the switch (what each phase got
        // on this machine, not how long it lasted).
        let expected = a_expected.unwrap_or_else(|| {
            let before = log.between(got_from, switch).as_secs_f64();
            let all = log.between(got_from, got_to).as_secs_f64();
            before / all.max(1e-9)
        });
        let (a, total) = cpu_through(&doc, "workload::burn");
        let (b, _) = cpu_through(&doc, "workload::copy_buffers");
        assert!(total > 0.0, "{name}: {doc}");
        // 19 Hz over a few seconds is a few hundred samples: the share may
        // be off by four binomial σ of those (5 points at the least).
        let (share, effective) = share_through(&doc, "workload::burn", "workload::copy_buffers");
        let tolerance = share_tolerance(expected, effective, 0.05);
        assert!(
            (share - expected).abs() <= tolerance,
            "{name}: phase A's share {share:.3}, expected {expected:.3} ± {tolerance:.3} \
             ({effective:.0} samples; {header})"
        );
        assert!(
            (a + b) / total >= 0.90,
            "{name}: the phases are {:.3} of the CPU",
            (a + b) / total
        );
        // CPU time against /proc over the same (covered) time.
        let truth = log.between(got_from, got_to).as_secs_f64() * 1e9;
        assert!(
            (total - truth).abs() <= 0.15 * truth,
            "{name}: profile says {:.3} s of CPU, /proc {:.3} s ({header})",
            total / 1e9,
            truth / 1e9
        );
    }
    // since= is the same look-back, relative to now; pprof and svg too.
    let pprof = get(addr, "/debug/pprof/profile?since=-20s", None);
    assert_eq!(pprof.status, 200);
    assert!(pprof.body.starts_with(&[0x1f, 0x8b]), "gzip pprof");
    let svg = get(addr, "/debug/pprof/flamegraph?since=-20s", None).text();
    assert!(
        svg.contains("copy_buffers"),
        "the flame graph of the last 20 s"
    );
    // A scraper's read: the newest closed segment alone.
    let latest = get(
        addr,
        "/debug/pprof/profile?segment=latest&format=json",
        None,
    );
    assert_eq!(latest.status, 200, "{}", latest.text());
    let header = latest.header("x-stethoscope-coverage").unwrap_or_default();
    assert!(header.contains("segments=1"), "{header}");
    let (from, to) = covered(header);
    assert_eq!(
        to.duration_since(from).map(|d| d.as_secs()).unwrap_or(0),
        2,
        "{header}"
    );
    // /health, the index and /metrics report the ring.
    let health = get(addr, "/health", None).json();
    assert_eq!(health["cpu_sampler"]["continuous_hz"], 19, "{health}");
    let index = get(addr, "/debug/pprof/", None).text();
    assert!(
        index.contains("Continuous profiling: on at 19 Hz"),
        "{index}"
    );
    let metrics = get(addr, "/metrics", None).text();
    let bytes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stethoscope_continuous_profile_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("the ring's memory in /metrics");
    assert!(bytes > 0.0 && bytes < 16.0 * 1048576.0, "{bytes}");
    drop(log);
    drop(agent);
}

#[test]
fn on_demand_profiles_at_other_rates_run_and_the_ring_has_no_gap() {
    if !is_child() {
        let _alone = profiler_lock();
        return in_child(
            "continuous::on_demand_profiles_at_other_rates_run_and_the_ring_has_no_gap",
            &[],
        );
    }
    let agent = agent_with_ring(Duration::from_secs(2), Duration::from_secs(120));
    let addr = agent.local_addr();
    assert_eq!(agent.cpu().status().sampling_hz, Some(19));
    let log = CpuLog::start();
    let burners = Burners::start(2, "burner", Duration::from_secs(60), burn_slice);
    let started = SystemTime::now();
    std::thread::sleep(Duration::from_secs(3));
    for hz in [99, 999] {
        let reply = get(
            addr,
            &format!("/debug/pprof/profile?seconds=3&hz={hz}&format=json"),
            None,
        );
        assert_eq!(reply.status, 200, "{hz} Hz: {}", reply.text());
        let doc = reply.json();
        let total = doc["totals"]["cpu"].as_f64().unwrap_or(0.0);
        let from = humantime::parse_rfc3339(doc["started_at"].as_str().unwrap_or_default())
            .expect("started_at");
        let to = from + Duration::from_secs_f64(doc["duration_ms"].as_f64().unwrap_or(0.0) / 1e3);
        let truth = log.between(from, to).as_secs_f64() * 1e9;
        assert!(
            (total - truth).abs() <= 0.15 * truth,
            "{hz} Hz: {:.3} s of CPU in the profile, {:.3} s in /proc over its window",
            total / 1e9,
            truth / 1e9
        );
        let (split, tolerance) = hot_share(&doc);
        assert!(
            (split - 0.75).abs() <= tolerance,
            "{hz} Hz: burn_hot {split:.3}, expected 0.75 ± {tolerance:.3}"
        );
        // Back to the ring's rate once it ends.
        assert!(
            wait_until(Duration::from_secs(5), || agent.cpu().status().sampling_hz
                == Some(19)),
            "{:?}",
            agent.cpu().status()
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    burners.stop();
    // The ring covered the whole time, on-demand profiles included, and
    // weighted the faster samples down: the split stays 3:1.
    let reply = get(
        addr,
        &format!(
            "/debug/pprof/profile?start={}&format=json",
            rfc3339(started)
        ),
        None,
    );
    let header = reply
        .header("x-stethoscope-coverage")
        .unwrap_or_default()
        .to_owned();
    assert!(header.starts_with("full;"), "a gap in the ring: {header}");
    let doc = reply.json();
    assert!(
        doc["comments"].to_string().contains("19 Hz and at 999 Hz"),
        "{}",
        doc["comments"]
    );
    let (split, tolerance) = hot_share(&doc);
    assert!(
        (split - 0.75).abs() <= tolerance,
        "the ring's split: {split:.3}, expected 0.75 ± {tolerance:.3}"
    );
    drop(agent);
}

#[test]
fn an_incident_keeps_its_pinned_profile_after_the_ring_wraps() {
    if !is_child() {
        let _alone = profiler_lock();
        return in_child(
            "continuous::an_incident_keeps_its_pinned_profile_after_the_ring_wraps",
            &[],
        );
    }
    use stethoscope::doctor::{Budget, DoctorSettings, RuleWindows};
    let mut settings = DoctorSettings::default();
    settings.config.windows = RuleWindows::all(Duration::from_secs(3));
    settings.config.lookback = Duration::from_secs(3);
    let runtime = super::support::service_runtime();
    let agent = {
        let _guard = runtime.enter();
        Agent::builder()
            .listen("127.0.0.1:0")
            .continuous(
                ContinuousSettings::new(19)
                    .segment(Duration::from_secs(1))
                    .keep(Duration::from_secs(5)),
            )
            .doctor(settings)
            .budget(Budget::route("GET /spin").p95(Duration::from_millis(20)))
            .start()
            .expect("agent")
    };
    // An SLO breach: every request spins 60 ms of CPU in its handler.
    let app = axum::Router::new()
        .route(
            "/spin",
            axum::routing::get(|| async {
                stethoscope_examples::workload::spin(Duration::from_millis(60));
                "spun"
            }),
        )
        .layer(agent.red_layer());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let service = listener.local_addr().expect("addr");
    runtime.spawn(async move { axum::serve(listener, app).await });
    let doctor = agent.local_addr();
    let mut url = None;
    let started = Instant::now();
    while url.is_none() && started.elapsed() < Duration::from_secs(40) {
        for _ in 0..5 {
            let _ = get(service, "/spin", None);
        }
        let report = get(doctor, "/debug/doctor", None).json();
        url = report["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["rule"] == "route_over_budget")
            .flat_map(|f| f["artifacts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["kind"] == "profile_segment")
            .and_then(|a| a["url"].as_str().map(str::to_owned));
    }
    let url = url.expect("route_over_budget with a pinned profile_segment artifact");
    // The ring (5 s) wraps several times over with no spinning at all.
    std::thread::sleep(Duration::from_secs(9));
    let recent = get(doctor, "/debug/pprof/profile?since=-5s&format=text", None).text();
    assert!(
        !recent.contains("workload::spin"),
        "the ring wrapped:\n{recent}"
    );
    let pinned = get(doctor, &url.replace("format=svg", "format=text"), None);
    assert_eq!(pinned.status, 200, "{url}: {}", pinned.text());
    assert!(
        pinned.text().contains("workload::spin"),
        "the incident's profile names the handler's work:\n{}",
        pinned.text()
    );
    drop(agent);
    drop(runtime);
}

#[test]
fn junk_windows_get_400_with_a_hint_and_an_agent_without_a_ring_says_so() {
    let _alone = profiler_lock();
    let plain = Agent::builder()
        .listen("127.0.0.1:0")
        .start()
        .expect("agent");
    let off = get(plain.local_addr(), "/debug/pprof/profile?since=-5m", None);
    assert_eq!(off.status, 400, "{}", off.text());
    assert!(
        off.text().contains("STETHOSCOPE_CONTINUOUS_HZ"),
        "{}",
        off.text()
    );
    drop(plain);
    for (query, needle) in [
        ("since=yesterday", "since="),
        ("since=5m", "minus"),
        ("start=2099-01-01T00:00:00Z", "future"),
        ("start=-1m&end=-2m", "reversed"),
        ("end=-1m", "end= needs start="),
        ("since=-1m&start=-2m", "do not go together"),
        ("pin=abc", "not a pin id"),
        ("pin=1&since=-1m", "does not go with"),
        ("since=-1m&mode=wall", "cannot look back"),
        ("segment=first", "not known"),
        ("segment=latest&since=-1m", "does not go with"),
    ] {
        // Parameters are checked before the ring is consulted.
        let agent = Agent::builder()
            .listen("127.0.0.1:0")
            .start()
            .expect("agent");
        let reply = get(
            agent.local_addr(),
            &format!("/debug/pprof/profile?{query}"),
            None,
        );
        assert_eq!(reply.status, 400, "{query}: {}", reply.text());
        assert!(reply.text().contains(needle), "{query}: {}", reply.text());
        drop(agent);
    }
}
