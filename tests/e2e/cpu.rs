//! CPU profiling through the HTTP API, checked against ground truth with
//! real clients.

use std::io::Write;
use std::time::Duration;

use stethoscope::cpu::CpuProfiler;

use crate::support::*;

/// Profiles the ground-truth workload (3/4 `burn_hot`, 1/4 `burn_cold`)
/// with `go tool pprof` and checks the split, the attributed CPU time
/// against the CPU the workload's threads got inside the window, and the
/// total against the process's CPU clock over the window.
///
/// Ground truth comes from clocks, not from the machine's speed: two
/// burner threads keep a trace of their own CPU clock and a watcher one of
/// the process's, and the window's start and length come from the profile
/// itself (`go tool pprof -raw`). So the burn may start before the window
/// and outlast it, other tests may run in this process meanwhile, and the
/// machine may be slow or have one core taken by someone else: the
/// comparisons stay exact up to the clocks' interpolation (one 20 ms slice
/// per thread at each end). `window_s` is long enough for ~1,000 samples on
/// the burners even when they get half a core each: the split's binomial
/// noise is then ±1.4 points (1 σ).
///
/// `clock` is what must send the samples: a CPU timer per thread, or
/// `ITIMER_PROF` where a sandbox forbids those (its per-thread credit is
/// held to the same ±4 % at 99 Hz; at 999 Hz it drifts: docs/overhead.md).
pub(crate) fn split_and_cpu_time_are_true_at(hz: u32, window_s: u64, clock: &str) {
    let _serial = profiler_lock();
    let agent = start_agent();
    let url = format!("/debug/pprof/profile?seconds={window_s}&hz={hz}",);
    // Warm the symbolizer so its one-time DWARF load does not land in the
    // measured window.
    let warm = Burners::start(1, "warmup", Duration::from_secs(5), burn_slice);
    let _ = get(
        agent.local_addr(),
        "/debug/pprof/profile?seconds=1&format=text",
        None,
    );
    warm.stop();
    assert!(wait_for_idle_sampler());

    let process = ProcessCpuWatch::start();
    let burners = Burners::start(2, "burner", Duration::from_secs(window_s + 120), burn_slice);
    let addr = agent.local_addr();
    let fetch = std::thread::spawn(move || get(addr, &url, None));
    wait_for_active_windows(1);
    let running = CpuProfiler::global().status().clock;
    let reply = fetch.join().unwrap();
    let burners = burners.stop_traced();
    let process = process.stop();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let file = scratch_dir("split").join("cpu.pb.gz");
    std::fs::write(&file, &reply.body).expect("write the profile");
    let file = file.to_string_lossy().into_owned();
    let (ok, stdout, stderr) = go_pprof(&["-top", &file]);
    assert!(ok, "go tool pprof failed:\n{stderr}");
    let (ok, raw, stderr) = go_pprof(&["-raw", &file]);
    assert!(ok, "go tool pprof -raw failed:\n{stderr}");
    let (start, end) = pprof_window(&raw);

    let (total, rows) = parse_top(&stdout);
    let cum = |name: &str| {
        rows.iter()
            .find(|(f, _, _)| f.ends_with(name))
            .map(|r| r.2)
            .unwrap_or_else(|| panic!("{name} missing from go tool pprof -top:\n{stdout}"))
    };
    let (hot, cold) = (cum("workload::burn_hot"), cum("workload::burn_cold"));
    let share = 100.0 * hot / (hot + cold);
    let known: f64 = burners
        .iter()
        .map(|t| t.between(start, end).as_secs_f64())
        .sum();
    let proc = process.between(start, end).as_secs_f64();
    eprintln!(
        "measured: {hz} Hz ({}): burn_hot {share:.1}% of hot+cold; attributed {:.2} s of the \
         {known:.2} s the burners got in the window; profile total {total:.2} s, process clock \
         {proc:.2} s",
        running.unwrap_or("?"),
        hot + cold
    );
    assert_eq!(running, Some(clock), "what sent the samples");
    assert!(
        (70.0..=80.0).contains(&share),
        "burn_hot has {share:.1}% of hot+cold at {hz} Hz, expected 75 ± 5:\n{stdout}"
    );
    // The burners' own clocks say what they got inside the window; every
    // sample carries the periods its thread's timer counted, so the sum is
    // that thread CPU time up to a period at each end, whatever the noise
    // in which stacks were sampled.
    let attributed = hot + cold;
    assert!(
        known > 0.5,
        "the burners got only {known:.2} s of CPU in the window"
    );
    assert!(
        (attributed - known).abs() <= 0.04 * known,
        "burn functions got {attributed:.2} s at {hz} Hz, the burners' clocks say {known:.2} s:\n{stdout}"
    );
    // The total is the process's CPU clock over the window, read at its
    // start and end; the watcher reads it every 2 ms and `-raw` prints the
    // window's length to 10 ms (20 ms of CPU on two cores).
    assert!(
        (total - proc).abs() <= 0.03 * proc + 0.03,
        "profile total {total:.2} s vs the process clock {proc:.2} s at {hz} Hz:\n{stdout}"
    );
}

/// Each thread's samples add up to the CPU time its own clock measured in
/// the window — steady burners, threads running in bursts shorter than a
/// tick, and a thread forever entering the kernel alike — because every
/// thread has its own CPU timer and each sample carries the periods its
/// timer could not deliver. The comparison is with each thread's clock, so
/// it holds on a slow or contended machine too.
#[test]
fn each_thread_is_credited_the_cpu_its_own_clock_measured() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let limit = Duration::from_secs(120);
    let groups = [
        ("steady", Burners::start(2, "steady", limit, burn_slice)),
        ("bursty", Burners::start(2, "bursty", limit, bursty_slice)),
        (
            "syscalls",
            Burners::start(1, "syscalls", limit, syscall_slice),
        ),
    ];
    let reply = get(
        agent.local_addr(),
        "/debug/pprof/profile?seconds=4&hz=999&format=json",
        None,
    );
    let traces: Vec<(&str, Vec<CpuTrace>)> = groups
        .into_iter()
        .map(|(name, burners)| (name, burners.stop_traced()))
        .collect();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let doc = reply.json();
    let start = humantime::parse_rfc3339_weak(doc["started_at"].as_str().unwrap_or_default())
        .expect("started_at");
    let end = start + Duration::from_secs_f64(doc["duration_ms"].as_f64().unwrap() / 1e3);
    for (name, traces) in &traces {
        let truth: f64 = traces
            .iter()
            .map(|t| t.between(start, end).as_secs_f64())
            .sum();
        let attributed: f64 = doc["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["thread"] == *name)
            .filter_map(|s| s["values"]["cpu"].as_f64())
            .sum::<f64>()
            / 1e9;
        eprintln!("{name}: credited {attributed:.3} s, its clocks {truth:.3} s");
        assert!(truth > 0.05, "{name} got only {truth:.3} s of CPU");
        // The window's start is stamped to the millisecond and each trace
        // is read every slice (≤ 20 ms): a few tens of ms at most.
        assert!(
            (attributed - truth).abs() <= 0.05 * truth + 0.03,
            "{name} threads were credited {attributed:.3} s, their clocks say {truth:.3} s"
        );
    }
}

/// [`stethoscope::cpu::SamplerStatus::clock`] of the default sampler.
pub(crate) const PER_THREAD_TIMERS: &str = "per-thread CPU timers";

#[test]
fn go_pprof_sees_the_true_split_and_cpu_time_at_99_hz() {
    split_and_cpu_time_are_true_at(99, 8, PER_THREAD_TIMERS);
}

#[test]
fn go_pprof_sees_the_true_split_and_cpu_time_at_999_hz() {
    // Above the scheduler tick (250/s here): each thread's timer counts
    // the periods it could not deliver, and every sample carries them.
    split_and_cpu_time_are_true_at(999, 6, PER_THREAD_TIMERS);
}

#[test]
fn svg_is_valid_xml_naming_both_functions_with_a_useful_title() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let burners = Burners::start(2, "burner", Duration::from_secs(20), burn_slice);
    let reply = get(
        agent.local_addr(),
        "/debug/pprof/flamegraph?seconds=2",
        None,
    );
    burners.stop();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("image/svg+xml"));
    let disposition = reply.header("content-disposition").unwrap_or_default();
    assert!(
        disposition.contains("filename=\"cpu-") && disposition.ends_with(".svg\""),
        "{disposition}"
    );
    let svg = reply.text();
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc =
        roxmltree::Document::parse_with_options(&svg, options).expect("the SVG is well-formed XML");
    let text: String = doc
        .descendants()
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(svg.contains("workload::burn_hot") && svg.contains("workload::burn_cold"));
    assert!(text.contains("CPU profile of"), "title names the process");
    assert!(
        text.contains("99 Hz") && text.contains("samples"),
        "subtitle: window, hz, samples"
    );
    assert!(
        svg.contains(">burner<") || svg.contains("burner ("),
        "thread names are roots"
    );
}

#[test]
fn concurrent_requests_share_one_sampler_and_get_their_own_windows() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let addr = agent.local_addr();
    let burners = Burners::start(2, "burner", Duration::from_secs(30), burn_slice);
    let sessions_before = CpuProfiler::global().status().sessions_started;
    let long =
        std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=4&format=json", None));
    wait_for_subscribers(1);
    std::thread::sleep(Duration::from_millis(500));
    let short = get(addr, "/debug/pprof/profile?seconds=2&format=json", None);
    let long = long.join().unwrap();
    burners.stop();
    assert_eq!(short.status, 200, "{}", short.text());
    assert_eq!(long.status, 200, "{}", long.text());
    assert_eq!(
        CpuProfiler::global().status().sessions_started,
        sessions_before + 1,
        "the second request joined the running sampler"
    );
    let (short, long) = (short.json(), long.json());
    let duration = |doc: &serde_json::Value| doc["duration_ms"].as_f64().unwrap();
    assert!(
        (1950.0..2300.0).contains(&duration(&short)),
        "{}",
        duration(&short)
    );
    assert!(
        (3950.0..4300.0).contains(&duration(&long)),
        "{}",
        duration(&long)
    );
    let samples = |doc: &serde_json::Value| doc["totals"]["samples"].as_f64().unwrap();
    let ratio = samples(&short) / samples(&long);
    assert!(
        (0.4..=0.6).contains(&ratio),
        "the 2 s window has {} samples, the 4 s window {}",
        samples(&short),
        samples(&long)
    );
    assert!(
        wait_for_idle_sampler(),
        "sampler stops after the last window"
    );
}

#[test]
fn a_request_at_another_frequency_gets_409_with_retry_after() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let addr = agent.local_addr();
    let running =
        std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=3&hz=99", None));
    wait_for_subscribers(1);
    let refused = get(addr, "/debug/pprof/profile?seconds=1&hz=199", None);
    assert_eq!(refused.status, 409, "{}", refused.text());
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    assert_eq!(refused.header("x-go-pprof"), Some("1"));
    assert!(refused.text().contains("99 Hz"), "{}", refused.text());
    assert_eq!(running.join().unwrap().status, 200);
    // Once a profile is delivered the sampler is already free: the next
    // request at another frequency is served, not refused.
    for _ in 0..3 {
        let next = get(
            addr,
            "/debug/pprof/profile?seconds=1&hz=199&format=text",
            None,
        );
        assert_eq!(next.status, 200, "{}", next.text());
        let next = get(
            addr,
            "/debug/pprof/profile?seconds=1&hz=99&format=text",
            None,
        );
        assert_eq!(next.status, 200, "{}", next.text());
    }
}

#[test]
fn a_client_that_disconnects_stops_the_sampler_and_sigprof_stays_ignored() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let mut stream = std::net::TcpStream::connect(agent.local_addr()).unwrap();
    stream
        .write_all(b"GET /debug/pprof/profile?seconds=60 HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    wait_for_subscribers(1);
    assert!(CpuProfiler::global().status().running_hz.is_some());
    drop(stream);
    assert!(
        wait_until(Duration::from_secs(5), || CpuProfiler::global()
            .status()
            .running_hz
            .is_none()),
        "the sampler kept running for a client that left: {:?}",
        CpuProfiler::global().status()
    );
    assert!(
        sigprof_ignored(),
        "SIGPROF must be SIG_IGN after sampling, never SIG_DFL"
    );
}

#[test]
fn time_in_libc_memcpy_is_attributed_to_its_caller_not_dropped() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let copiers = Burners::start(1, "copier", Duration::from_secs(20), copy_slice);
    let reply = get(
        agent.local_addr(),
        "/debug/pprof/profile?seconds=2&format=json&hz=250",
        None,
    );
    copiers.stop();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let doc = reply.json();
    let mut on_copier = 0i64;
    let mut in_libc_from_caller = 0i64;
    for stack in doc["stacks"].as_array().unwrap() {
        if stack["thread"] != "copier" {
            continue;
        }
        let n = stack["values"]["samples"].as_i64().unwrap();
        on_copier += n;
        let frames: Vec<&str> = stack["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        // Named when libc's debug symbols are installed (libc6-dbg, which
        // valgrind pulls in), else `libc.so.6+0x…`: either way in libc.
        let leaf_in_libc = frames[0].contains("memcpy")
            || frames[0].contains("memmove")
            || frames[0].starts_with("libc.so");
        if leaf_in_libc && frames.iter().any(|f| f.ends_with("workload::copy_buffers")) {
            in_libc_from_caller += n;
        }
    }
    assert!(on_copier >= 200, "{on_copier} samples on the copier thread");
    assert!(
        in_libc_from_caller as f64 >= 0.5 * on_copier as f64,
        "only {in_libc_from_caller} of {on_copier} copier samples sit in libc memcpy under copy_buffers"
    );
}

#[test]
fn go_pprof_raw_shows_addresses_mapping_build_id_and_inline_chains() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let burners = Burners::start(1, "burner", Duration::from_secs(20), burn_slice);
    let walkers = Burners::start(1, "walker", Duration::from_secs(20), tree_slice);
    let url = format!(
        "http://{}/debug/pprof/profile?seconds=1",
        agent.local_addr()
    );
    let (ok, stdout, stderr) = go_pprof(&["-raw", &url]);
    burners.stop();
    walkers.stop();
    assert!(ok, "{stderr}");
    let exe = std::env::current_exe().unwrap();
    let mappings: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Mappings"))
        .skip(1)
        .collect();
    let main = mappings
        .iter()
        .find(|l| l.contains(exe.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no mapping for the test binary:\n{stdout}"));
    // "1: 0x5555…/0x5555…/0x… /path/to/exe <build id> [FN][FL][LN][IN]"
    let build_id = main
        .split_whitespace()
        .find(|w| w.len() >= 32 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no build ID in {main}"));
    assert!(!build_id.is_empty());
    let locations: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Locations"))
        .skip(1)
        .take_while(|l| !l.starts_with("Mappings"))
        .collect();
    // A location is a header line with its address, then one line per
    // inlined caller; burn_hot may be either, depending on the samples.
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in &locations {
        if line.contains(": 0x") || blocks.is_empty() {
            blocks.push(vec![line]);
        } else if let Some(block) = blocks.last_mut() {
            block.push(line);
        }
    }
    let burn_hot = blocks
        .iter()
        .find(|b| b.iter().any(|l| l.contains("workload::burn_hot")))
        .unwrap_or_else(|| panic!("burn_hot not among locations:\n{stdout}"));
    assert!(burn_hot[0].contains(": 0x"), "real address: {burn_hot:?}");
    assert!(
        burn_hot
            .iter()
            .any(|l| l.contains("workload::burn_hot") && l.contains("workload.rs:")),
        "file and line: {burn_hot:?}"
    );
    let samples_header = stdout
        .lines()
        .find(|l| l.contains("samples/count") && l.contains("cpu/nanoseconds"));
    assert!(samples_header.is_some(), "sample types:\n{stdout}");
    assert!(
        stdout.contains("thread:[burner]") || stdout.contains("thread:burner"),
        "thread label"
    );
}

#[test]
fn the_demo_service_burns_on_request_and_shows_up_in_the_profile() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let demo = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                stethoscope_examples::demo::router(stethoscope_examples::demo::DemoPool::new(4)),
            )
            .await
        });
        addr
    });
    assert!(get(demo, "/", None).text().contains("/burn?ms=N"));
    let addr = agent.local_addr();
    let profile =
        std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=2&format=folded", None));
    wait_for_subscribers(1);
    let burned = get(demo, "/burn?ms=1000", None);
    assert_eq!(burned.status, 200);
    assert!(burned.text().starts_with("burned 1000 ms"));
    let folded = profile.join().unwrap();
    assert_eq!(folded.status, 200);
    let demo_lines: Vec<String> = folded
        .text()
        .lines()
        .filter(|l| l.contains("demo::burn") && l.contains("workload::burn_hot"))
        .map(str::to_owned)
        .collect();
    assert!(
        !demo_lines.is_empty(),
        "no stack through the demo handler into burn_hot:\n{}",
        folded.text()
    );
    // The handler runs on the demo's runtime workers (thread names are roots).
    assert!(
        demo_lines.iter().all(|l| l.starts_with("tokio-")),
        "{:?}",
        &demo_lines[0][..40]
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn an_unsymbolized_profile_is_symbolized_by_go_tool_pprof_remotely_and_locally() {
    let _serial = profiler_lock();
    let agent = start_agent();
    let burners = Burners::start(2, "burner", Duration::from_secs(30), burn_slice);
    let addr = agent.local_addr();
    // Text shows the unresolved names: binary+offset.
    let raw = get(
        addr,
        "/debug/pprof/profile?seconds=1&symbolize=false&format=text",
        None,
    );
    assert_eq!(raw.status, 200);
    assert!(
        !raw.text().contains("burn_hot"),
        "names stay unresolved:\n{}",
        raw.text()
    );
    assert!(raw.text().contains("+0x"), "{}", raw.text());

    // Remotely: go tool pprof asks /debug/pprof/symbol for the names.
    let url = format!("http://{addr}/debug/pprof/profile?seconds=2&symbolize=false");
    let (ok, remote, stderr) = go_pprof(&["-top", "-symbolize=remote", &url]);
    assert!(ok, "{stderr}");
    // Locally: from addresses, mappings and the binary on disk, as a
    // server-side symbolizer would.
    let file = scratch_dir("unsymbolized").join("cpu.pb.gz");
    let bytes = get(addr, "/debug/pprof/profile?seconds=2&symbolize=false", None);
    burners.stop();
    assert_eq!(bytes.status, 200);
    std::fs::write(&file, &bytes.body).unwrap();
    let (ok, local, stderr) = go_pprof(&["-top", "-symbolize=local", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    for (how, output) in [("remote", &remote), ("local", &local)] {
        let (_, rows) = parse_top(output);
        let cum = |name: &str| rows.iter().find(|r| r.0.ends_with(name)).map(|r| r.2);
        let (hot, cold) = (cum("burn_hot"), cum("burn_cold"));
        let (Some(hot), Some(cold)) = (hot, cold) else {
            panic!("{how} symbolization did not name both functions:\n{output}")
        };
        let share = 100.0 * hot / (hot + cold);
        assert!(
            (62.0..=88.0).contains(&share),
            "{how} symbolization gives burn_hot {share:.1}%:\n{output}"
        );
    }
}

#[test]
fn another_profiler_owning_sigprof_gets_503_not_a_stolen_signal() {
    let _serial = profiler_lock();
    let agent = start_agent();
    extern "C" fn foreign_handler(_: libc::c_int) {}
    // SAFETY: installs a no-op SIGPROF handler (no timer is armed, so it
    // never runs) and restores SIG_IGN afterwards; the profiler lock keeps
    // other sampling tests out meanwhile.
    #[allow(unsafe_code)]
    let install = |handler: libc::sighandler_t| unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut()),
            0
        );
    };
    install(foreign_handler as *const () as libc::sighandler_t);
    let reply = get(agent.local_addr(), "/debug/pprof/profile?seconds=1", None);
    install(libc::SIG_IGN);
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(
        reply.text().contains("another profiler"),
        "{}",
        reply.text()
    );
    assert!(wait_for_idle_sampler());
    // With SIGPROF free again, profiling works.
    let ok = get(
        agent.local_addr(),
        "/debug/pprof/profile?seconds=1&format=text",
        None,
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
}
