//! Shared helpers: an in-process agent on an ephemeral port, an HTTP
//! client, `go tool pprof`, ground-truth workloads and process CPU time.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use stethoscope::cpu::CpuProfiler;
use stethoscope::Agent;

/// Tests that use the process-wide CPU sampler hold this lock, and so do
/// tests that put load on the machine (a Prometheus server, bursts of
/// requests), so the CPU ground-truth windows run on a quiet machine.
pub(crate) fn profiler_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tests that toggle or depend on jemalloc's process-wide profiling state
/// hold this lock.
pub(crate) fn heap_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Set in a copy of this test binary that runs one test alone
/// ([`in_child`]).
const CHILD: &str = "STETHOSCOPE_E2E_CHILD";

/// Whether this process is the child [`in_child`] started.
pub(crate) fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs the test `name` (its full path, e.g. `heap::x`) again in a child
/// process of this test binary, alone, with `env` set, and asserts that it
/// passed. The test calls this when [`is_child`] is false and does its
/// work when it is true.
pub(crate) fn in_child(name: &str, env: &[(&str, &std::ffi::OsStr)]) {
    run_child(target_command(std::env::current_exe().unwrap()), name, env);
}

/// [`in_child`] with `command` (this test binary, perhaps behind a
/// wrapper) as the child.
pub(crate) fn run_child(mut command: Command, name: &str, env: &[(&str, &std::ffi::OsStr)]) {
    command
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("re-run the test binary");
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child failed ({}):\n{log}",
        output.status
    );
    assert!(log.contains("1 passed"), "the child ran no test:\n{log}");
    // Its measurements, for the log of this test.
    for line in log.lines().filter(|l| l.starts_with("measured: ")) {
        eprintln!("{line}");
    }
}

/// Set by `tests/aarch64.sh` when this binary runs under an emulator: the
/// command that runs binaries built for this target (`qemu-aarch64-static`),
/// which the host kernel cannot run by itself.
const RUNNER: &str = "STETHOSCOPE_E2E_RUNNER";

/// Set by `tests/aarch64.sh`: the demo binary built for this target, used
/// instead of building one with cargo (which would build for the host).
const DEMO: &str = "STETHOSCOPE_E2E_DEMO";

/// The emulator that runs this test's binaries ([`RUNNER`]), if any.
pub(crate) fn runner() -> Option<std::ffi::OsString> {
    std::env::var_os(RUNNER)
}

/// A command running `binary`, a program built for this test's target:
/// through [`RUNNER`] when one is set.
pub(crate) fn target_command(binary: impl AsRef<std::ffi::OsStr>) -> Command {
    match runner() {
        Some(runner) => {
            let mut command = Command::new(runner);
            command.arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// Whether this process runs under an emulator (qemu-user), which makes
/// code 5–10× slower than native and writes `/proc/self/stat` itself (its
/// CPU, memory and thread fields read 0; the CPU clocks stay true).
pub(crate) fn emulated() -> bool {
    runner().is_some() || stat_is_emulated()
}

/// Whether `/proc/self/stat` says this process has no thread: only an
/// emulator writes that.
fn stat_is_emulated() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    // num_threads is the 20th field overall, the 18th after ')'.
    after.split_whitespace().nth(17) == Some("0")
}

/// Sends `method path` with an optional body; any status is returned.
pub(crate) fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Reply {
    let agent = client();
    let url = format!("http://{addr}{path}");
    let result = match (method, body) {
        ("POST", Some(body)) => agent.post(&url).send(body),
        ("POST", None) => agent.post(&url).send_empty(),
        ("PUT", Some(body)) => agent.put(&url).send(body),
        ("PUT", None) => agent.put(&url).send_empty(),
        ("DELETE", _) => agent.delete(&url).call(),
        _ => agent.get(&url).call(),
    };
    reply_of(result.expect("request reaches the agent"))
}

/// An agent bound to `127.0.0.1:0`.
pub(crate) fn start_agent() -> Agent {
    Agent::builder()
        .listen("127.0.0.1:0")
        .start()
        .expect("agent starts on an ephemeral loopback port")
}

/// A response read completely.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// GET `http://{addr}{path}` with an optional bearer token; any status is
/// returned, not turned into an error. Bounded by a 120 s timeout.
pub(crate) fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    get_with(addr, path, &headers)
}

/// Runs `go tool pprof` with `args`; panics with a how-to if Go is missing.
pub(crate) fn go_pprof(args: &[&str]) -> (bool, String, String) {
    let scratch = scratch_dir("pprof");
    let output = Command::new("go")
        .arg("tool")
        .arg("pprof")
        .args(args)
        .env("PPROF_TMPDIR", &scratch)
        .env("HOME", &scratch)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `go tool pprof` ({e}); install golang-go (bash tests/run.sh does)")
        });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A fresh directory for one test's files.
pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "stethoscope-e2e-{}-{name}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Polls `condition` every 10 ms for at most `limit`.
pub(crate) fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// Waits until `n` requests are subscribed to the sampler.
pub(crate) fn wait_for_subscribers(n: usize) {
    let profiler = CpuProfiler::global();
    assert!(
        wait_until(Duration::from_secs(10), || profiler.status().subscribers
            >= n),
        "the profile request did not reach the sampler: {:?}",
        profiler.status()
    );
}

/// Waits until the sampler has stopped.
pub(crate) fn wait_for_idle_sampler() -> bool {
    let profiler = CpuProfiler::global();
    wait_until(Duration::from_secs(10), || {
        profiler.status().running_hz.is_none()
    })
}

/// utime + stime of this process from `/proc/self/stat`.
pub(crate) fn proc_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, i.e. the 12th and 13th after ')'.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// Whether SIGPROF is ignored, from the kernel's view of this process.
pub(crate) fn sigprof_ignored() -> bool {
    signal_ignored(libc::SIGPROF)
}

/// Whether the wall-clock sampler's signal (`SIGRTMIN + 6`) is ignored.
pub(crate) fn wall_signal_ignored() -> bool {
    signal_ignored(libc::SIGRTMIN() + 6)
}

/// Whether `signal` is ignored, as `sigaction` reports it (the kernel's
/// disposition; under qemu-user, the emulated one: the host's
/// `/proc/self/status` shows qemu's own handlers there).
fn signal_ignored(signal: libc::c_int) -> bool {
    // SAFETY: a zeroed sigaction is a valid out-parameter; querying the
    // disposition changes nothing.
    #[allow(unsafe_code)]
    let current = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(signal, std::ptr::null(), &mut current),
            0,
            "sigaction({signal})"
        );
        current
    };
    current.sa_sigaction == libc::SIG_IGN
}

/// Threads running a workload until stopped.
pub(crate) struct Burners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<CpuTrace>>,
}

impl Burners {
    /// `count` threads named `name` calling `work` (one slice of CPU) in a
    /// loop, for at most `limit` of wall time. Each keeps a trace of its
    /// own CPU clock, read after every slice.
    pub(crate) fn start(count: usize, name: &str, limit: Duration, work: fn()) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::Builder::new()
                    .name(name.to_owned())
                    .spawn(move || {
                        let started = Instant::now();
                        let mut trace = CpuTrace::default();
                        trace.record(stethoscope_examples::workload::thread_cpu_time());
                        while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                            work();
                            trace.record(stethoscope_examples::workload::thread_cpu_time());
                        }
                        trace
                    })
                    .expect("spawn burner")
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the threads and returns the CPU time they burned together.
    pub(crate) fn stop(self) -> Duration {
        self.stop_traced().iter().map(CpuTrace::total).sum()
    }

    /// Stops the threads and returns each one's trace of its CPU clock.
    pub(crate) fn stop_traced(self) -> Vec<CpuTrace> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("burner"))
            .collect()
    }
}

/// A CPU clock read over wall time: (wall time, CPU time) in order, so the
/// CPU a thread or the process got between two instants (a profile's
/// window, say) can be read off afterwards, whenever the window began.
#[derive(Debug, Default, Clone)]
pub(crate) struct CpuTrace(Vec<(SystemTime, Duration)>);

impl CpuTrace {
    /// Adds a reading taken now.
    pub(crate) fn record(&mut self, cpu: Duration) {
        self.0.push((SystemTime::now(), cpu));
    }

    /// The CPU clock at `t`, interpolated linearly between the readings
    /// around it (the first or last reading outside them).
    pub(crate) fn at(&self, t: SystemTime) -> Duration {
        let Some(after) = self.0.iter().position(|(at, _)| *at >= t) else {
            return self.0.last().map_or(Duration::ZERO, |r| r.1);
        };
        if after == 0 {
            return self.0[0].1;
        }
        let ((t0, c0), (t1, c1)) = (self.0[after - 1], self.0[after]);
        let span = t1.duration_since(t0).unwrap_or_default().as_secs_f64();
        let into = t.duration_since(t0).unwrap_or_default().as_secs_f64();
        let fraction = if span > 0.0 { into / span } else { 1.0 };
        c0 + (c1.saturating_sub(c0)).mul_f64(fraction.clamp(0.0, 1.0))
    }

    /// CPU time from `from` to `to`.
    pub(crate) fn between(&self, from: SystemTime, to: SystemTime) -> Duration {
        self.at(to).saturating_sub(self.at(from))
    }

    /// CPU time from the first reading to the last.
    pub(crate) fn total(&self) -> Duration {
        match (self.0.first(), self.0.last()) {
            (Some(first), Some(last)) => last.1.saturating_sub(first.1),
            _ => Duration::ZERO,
        }
    }
}

/// A thread reading this process's CPU clock every 2 ms until stopped.
pub(crate) struct ProcessCpuWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<CpuTrace>,
}

impl ProcessCpuWatch {
    pub(crate) fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut trace = CpuTrace::default();
            let started = Instant::now();
            // Bounded: no test watches for longer than ten minutes.
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
                trace.record(stethoscope_examples::workload::process_cpu_time());
                std::thread::sleep(Duration::from_millis(2));
            }
            trace.record(stethoscope_examples::workload::process_cpu_time());
            trace
        });
        ProcessCpuWatch { stop, thread }
    }

    pub(crate) fn stop(self) -> CpuTrace {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("CPU watch")
    }
}

/// The window of a pprof profile as `go tool pprof -raw` prints it
/// (`Time:` and `Duration:`): its wall-clock start and end.
pub(crate) fn pprof_window(raw: &str) -> (SystemTime, SystemTime) {
    let field = |name: &str| {
        raw.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in go tool pprof -raw:\n{raw}"))
    };
    // `2026-12-06 04:01:20.285123456 +0000 UTC`: Go's default time format.
    let time = field("Time:");
    let mut parts = time.split_whitespace();
    let (date, clock) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let offset = parts.next().unwrap_or("+0000");
    let start = humantime::parse_rfc3339_weak(&format!("{date} {clock}"))
        .unwrap_or_else(|e| panic!("pprof time {time:?}: {e}"));
    // go tool pprof prints local time; undo the offset it names.
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let digits = offset.trim_start_matches(['+', '-']);
    let hours: i64 = digits.get(..2).and_then(|h| h.parse().ok()).unwrap_or(0);
    let minutes: i64 = digits.get(2..4).and_then(|m| m.parse().ok()).unwrap_or(0);
    let shift = Duration::from_secs(((hours * 60 + minutes) * 60) as u64);
    let start = if sign > 0 {
        start - shift
    } else {
        start + shift
    };
    let duration =
        go_duration(field("Duration:")).unwrap_or_else(|| panic!("pprof duration in:\n{raw}"));
    (start, start + duration)
}

/// A Go `time.Duration` string (`6.00312s`, `1m2.5s`, `850ms`), or the
/// truncated form `go tool pprof -raw` prints (`%.4v`: `6.00` for 6.003 s,
/// seconds without the unit; 10 ms precision for windows under 10 s).
fn go_duration(text: &str) -> Option<Duration> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Some(Duration::from_secs_f64(seconds));
    }
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_digit() || n == '.' {
                break;
            }
            unit.push(n);
            chars.next();
        }
        let value: f64 = number.parse().ok()?;
        number.clear();
        total += value
            * match unit.as_str() {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 1e-3,
                "us" | "µs" => 1e-6,
                "ns" => 1e-9,
                _ => return None,
            };
    }
    number.is_empty().then(|| Duration::from_secs_f64(total))
}

/// Waits until `n` on-demand windows are being sampled (the sampler has
/// started and stamped their start).
pub(crate) fn wait_for_active_windows(n: usize) {
    let profiler = CpuProfiler::global();
    assert!(
        wait_until(Duration::from_secs(60), || profiler.status().active_windows
            >= n),
        "the profile window did not start: {:?}",
        profiler.status()
    );
}

/// How far a share measured from `samples` independent samples may
/// honestly be from its true value `p`: four binomial standard deviations,
/// never under `floor`. On a contended machine the workload gets less CPU,
/// so fewer samples and a wider bound — which still rejects a broken
/// attribution (3:1 read as 2:1 or 9:1 is tens of σ away).
pub(crate) fn share_tolerance(p: f64, samples: f64, floor: f64) -> f64 {
    (4.0 * (p * (1.0 - p) / samples.max(1.0)).sqrt()).max(floor)
}

/// One 20 ms slice of the 3:1 ground-truth workload.
pub(crate) fn burn_slice() {
    stethoscope_examples::workload::burn(Duration::from_millis(20));
}

/// 1 ms of the 3:1 workload, then 2 ms asleep: a thread that runs in
/// bursts shorter than a scheduler tick.
pub(crate) fn bursty_slice() {
    stethoscope_examples::workload::burn(Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(2));
}

/// About 5 ms of reading a small file and copying it around: in and out of
/// the kernel all the time, like a service doing I/O.
pub(crate) fn syscall_slice() {
    let start = stethoscope_examples::workload::thread_cpu_time();
    while stethoscope_examples::workload::thread_cpu_time() - start < Duration::from_millis(5) {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let copies: Vec<String> = (0..16).map(|_| text.clone()).collect();
        std::hint::black_box(copies);
    }
}

/// About 20 ms of walks down the call tree (`descend` is inlined into
/// `branch_left`/`branch_right` even in debug builds).
pub(crate) fn tree_slice() {
    let start = stethoscope_examples::workload::thread_cpu_time();
    let mut seed = start.as_nanos() as u64;
    while stethoscope_examples::workload::thread_cpu_time() - start < Duration::from_millis(20) {
        for _ in 0..64 {
            seed = seed.wrapping_add(1);
            std::hint::black_box(stethoscope_examples::workload::walk_call_tree(seed, 200));
        }
    }
}

/// One 20 ms slice of memcpy-heavy work.
pub(crate) fn copy_slice() {
    stethoscope_examples::workload::copy_buffers(Duration::from_millis(20));
}

/// Parses `go tool pprof -top` rows into (function, flat s, cum s), and the
/// "Total samples = X" value in seconds.
pub(crate) fn parse_top(output: &str) -> (f64, Vec<(String, f64, f64)>) {
    let seconds = |text: &str| -> f64 {
        let text = text.trim();
        if let Some(ms) = text.strip_suffix("ms") {
            ms.parse::<f64>().unwrap_or(0.0) / 1e3
        } else if let Some(us) = text.strip_suffix("us") {
            us.parse::<f64>().unwrap_or(0.0) / 1e6
        } else if let Some(mins) = text.strip_suffix("mins") {
            mins.parse::<f64>().unwrap_or(0.0) * 60.0
        } else if let Some(s) = text.strip_suffix('s') {
            s.parse::<f64>().unwrap_or(0.0)
        } else {
            text.parse::<f64>().unwrap_or(0.0)
        }
    };
    let total = output
        .lines()
        .find_map(|l| l.split("Total samples = ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(seconds)
        .unwrap_or_else(|| panic!("no 'Total samples' in:\n{output}"));
    let rows = output
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() < 6 {
                return None;
            }
            Some((parts[5..].join(" "), seconds(parts[0]), seconds(parts[3])))
        })
        .collect();
    (total, rows)
}

/// A two-worker multi-thread runtime, like a small service's.
pub(crate) fn service_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Serves `app` on `127.0.0.1:0` on the current runtime; returns its address.
pub(crate) async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the test service");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// GET with extra request headers; any status is returned, not turned into
/// an error. Bounded by a 120 s timeout.
pub(crate) fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let agent = client();
    let mut request = agent.get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    reply_of(request.call().expect("request reaches the server"))
}

/// A client that returns every status as a response, bounded by 120 s.
pub(crate) fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn reply_of(mut response: ureq::http::Response<ureq::Body>) -> Reply {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut body = Vec::new();
    response
        .body_mut()
        .as_reader()
        .read_to_end(&mut body)
        .expect("body");
    Reply {
        status,
        headers,
        body,
    }
}

/// The stacks of a `format=json` profile whose frames include a function
/// whose name ends with `function`.
pub(crate) fn stacks_through<'a>(
    doc: &'a serde_json::Value,
    function: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    doc["stacks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(move |stack| {
            stack["frames"].as_array().is_some_and(|frames| {
                frames
                    .iter()
                    .any(|f| f.as_str().is_some_and(|f| f.ends_with(function)))
            })
        })
}

/// Asserts that `h` has every field of the histogram summary shape of
/// docs/endpoints.md (used by RED latency and executor lag).
pub(crate) fn assert_histogram_shape(h: &serde_json::Value, what: &str) {
    for field in [
        "count",
        "min_ms",
        "max_ms",
        "mean_ms",
        "stddev_ms",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
    ] {
        assert!(h[field].is_number(), "{what}.{field} missing: {h}");
    }
}

/// The `demo` binary, built once per test process with the profile of
/// this test binary (a no-op when it is fresh).
pub(crate) fn demo_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(demo) = std::env::var_os(DEMO) {
                return PathBuf::from(demo);
            }
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let mut command = Command::new(cargo);
            command.current_dir(env!("CARGO_MANIFEST_DIR")).args([
                "build",
                "--quiet",
                "-p",
                "stethoscope-examples",
                "--bin",
                "demo",
                "--message-format=json",
            ]);
            if !cfg!(debug_assertions) {
                command.arg("--release");
            }
            let output = command.output().expect("run cargo build for the demo");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "cargo build of the demo failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            stdout
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|message| message["target"]["name"] == "demo")
                .find_map(|message| message["executable"].as_str().map(PathBuf::from))
                .expect("cargo reported the demo executable")
        })
        .clone()
}

/// The demo service as a separate process (`cargo run --bin demo`), both
/// servers on ephemeral loopback ports, its output (logs included)
/// collected line by line. Killed on drop.
pub(crate) struct DemoProcess {
    child: std::process::Child,
    /// The demo service.
    pub(crate) service: SocketAddr,
    /// Its stethoscope agent.
    pub(crate) agent: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl DemoProcess {
    pub(crate) fn start() -> DemoProcess {
        DemoProcess::start_with(&[])
    }

    /// The demo with `env` set on top of the defaults (e.g. a token).
    pub(crate) fn start_with(env: &[(&str, &str)]) -> DemoProcess {
        DemoProcess::start_binary(&demo_binary(), env)
    }

    /// The demo built as `binary` (another build of it), with `env`.
    pub(crate) fn start_binary(binary: &std::path::Path, env: &[(&str, &str)]) -> DemoProcess {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut command = target_command(binary);
        command
            .env("DEMO_ADDR", "127.0.0.1:0")
            .env("STETHOSCOPE_ADDR", "127.0.0.1:0")
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("STETHOSCOPE_TOKEN")
            .env_remove("STETHOSCOPE_ALLOW");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let outputs: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for output in outputs {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(output).lines() {
                    let Ok(line) = line else { return };
                    lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            });
        }
        let mut demo = DemoProcess {
            child,
            service: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
        };
        let address = |demo: &DemoProcess, prefix: &str| {
            demo.lines().iter().find_map(|line| {
                let rest = line.strip_prefix(prefix)?.trim();
                let rest = rest.strip_prefix("http://")?;
                rest.split('/').next()?.parse::<SocketAddr>().ok()
            })
        };
        let started = wait_until(Duration::from_secs(60), || {
            address(&demo, "stethoscope agent:").is_some()
        });
        assert!(
            started,
            "the demo did not start:\n{}",
            demo.lines().join("\n")
        );
        demo.service = address(&demo, "demo service:").expect("demo service address");
        demo.agent = address(&demo, "stethoscope agent:").expect("agent address");
        demo
    }

    /// CPU time the demo's threads have consumed, from the scheduler's
    /// exact accounting (`/proc/<pid>/task/*/schedstat`).
    pub(crate) fn cpu_time(&self) -> Duration {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return Duration::ZERO;
        };
        let ns: u64 = tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(ns)
    }

    /// Every line the demo wrote so far (stdout and stderr).
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Up to `count` connections to `addr` from the local address `from`
/// (another loopback address: another host, as the agent sees it), opened
/// within `limit` and kept open, sending nothing.
pub(crate) fn sockets_from(
    from: [u8; 4],
    addr: SocketAddr,
    count: usize,
    limit: Duration,
) -> Vec<std::net::TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime to connect with");
    let deadline = Instant::now() + limit;
    let mut held = Vec::new();
    while held.len() < count && Instant::now() < deadline {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            break;
        };
        if socket.bind(SocketAddr::from((from, 0))).is_err() {
            break;
        }
        let connected = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await
        });
        if let Ok(Ok(stream)) = connected {
            if let Ok(stream) = stream.into_std() {
                let _ = stream.set_nonblocking(false);
                held.push(stream);
            }
        }
    }
    held
}
