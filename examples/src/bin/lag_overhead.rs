//! Cost of the agent at rest, and of the executor-lag probe and
//! stuck-worker watchdog in it: the CPU time the whole process burns while
//! a two-worker tokio runtime sits idle — the worst case, where every probe
//! wakes a parked worker — without an agent, with an agent that does not
//! watch the runtime (HTTP thread, USE sampling), and with one that does,
//! interleaved over rounds in rotating order. The differences of the
//! medians are the agent's and the watchdog's costs.
//!
//! With `--busy 1`, one task keeps one worker busy (0.5 ms of CPU, then
//! a yield, in a loop) while the other worker stays parked: the watchdog
//! then looks every 25 ms and the probe still wakes the parked worker
//! every 100 ms. With `--busy 2` two such tasks keep both workers busy:
//! the watchdog looks and probes every resolution.
//!
//! The watchdog thread's own CPU time is also read exactly from the
//! scheduler (`/proc/self/task/*/schedstat`), and compared with a bare
//! thread that only wakes up as often: on a VM, wake-ups dominate.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin lag_overhead -- [--rounds 9] [--secs 5] [--resolution-ms 10] [--busy 0|1|2]
//! ```

use std::time::{Duration, Instant};

use stethoscope::Agent;
use stethoscope_examples::bench::{arg, median, thread_cpu_ns};
use stethoscope_examples::workload::process_cpu_time;

/// CPU milliseconds per second of a thread that does nothing but wake up
/// every `every` (a condition-variable timed wait, like the watchdog's):
/// this machine's price of a wake-up, the floor under any watchdog.
fn bare_thread(every: Duration, secs: u64) -> f64 {
    const NAME: &str = "bare-sleeper";
    let thread = std::thread::Builder::new()
        .name(NAME.into())
        .spawn(move || {
            let lock = std::sync::Mutex::new(());
            let wake = std::sync::Condvar::new();
            let started = Instant::now();
            let cpu = thread_cpu_ns(NAME);
            let mut next = started;
            while started.elapsed() < Duration::from_secs(secs) {
                next += every;
                let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(left) = next.checked_duration_since(Instant::now()) {
                    guard = wake
                        .wait_timeout(guard, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            thread_cpu_ns(NAME).saturating_sub(cpu) as f64 / 1e6 / started.elapsed().as_secs_f64()
        })
        .expect("spawn");
    thread.join().unwrap_or(f64::NAN)
}

/// Which agent a round runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// No agent at all: the runtime's own cost.
    None,
    /// An agent that does not watch the runtime (server, USE sampling).
    Unwatched,
    /// An agent watching the runtime (probe and watchdog too).
    Watching,
}

/// What one round measured, in CPU milliseconds per second.
#[derive(Debug, Clone, Copy)]
struct Measured {
    process: f64,
    watchdog: f64,
    use_sampler: f64,
    /// The doctor's recorder thread (history row and rules, once a second).
    doctor: f64,
    /// Milliseconds to answer `GET /debug/doctor` (median of 20), watching
    /// rounds only.
    doctor_request_ms: f64,
}

/// Milliseconds to answer `GET path` on `addr` (a plain HTTP/1.1 request
/// on a fresh connection, the whole response read).
fn request_ms(addr: std::net::SocketAddr, path: &str) -> f64 {
    use std::io::{Read, Write};
    let started = Instant::now();
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return f64::NAN;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return f64::NAN;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    if !response.starts_with(b"HTTP/1.1 200") {
        return f64::NAN;
    }
    started.elapsed().as_secs_f64() * 1e3
}

/// CPU milliseconds the process burns per second over `secs` with `setup`,
/// and those of the watchdog and USE sampling threads alone.
fn round(
    runtime: &tokio::runtime::Runtime,
    setup: Setup,
    secs: u64,
    resolution: Duration,
    busy: usize,
) -> Measured {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..busy {
        let stop = std::sync::Arc::clone(&stop);
        runtime.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                stethoscope_examples::workload::spin(Duration::from_micros(500));
                tokio::task::yield_now().await;
            }
        });
    }
    let mut builder = Agent::builder()
        .listen("127.0.0.1:0")
        .lag_resolution(resolution)
        .stall_threshold(Duration::from_millis(100).max(2 * resolution));
    if setup == Setup::Watching {
        builder = builder.watch_runtime(runtime.handle().clone());
    }
    let agent = (setup != Setup::None).then(|| builder.start().expect("agent starts"));
    // Let start-up work (first USE sample, thread creation) pass.
    std::thread::sleep(Duration::from_millis(500));
    let cpu = process_cpu_time();
    let watchdog = thread_cpu_ns("stethoscope-lag");
    let use_sampler = thread_cpu_ns("stethoscope-use");
    let doctor = thread_cpu_ns("stethoscope-doc");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let used = process_cpu_time() - cpu;
    let watchdog = thread_cpu_ns("stethoscope-lag").saturating_sub(watchdog);
    let use_sampler = thread_cpu_ns("stethoscope-use").saturating_sub(use_sampler);
    let doctor = thread_cpu_ns("stethoscope-doc").saturating_sub(doctor);
    let elapsed = started.elapsed().as_secs_f64();
    let mut doctor_request_ms = f64::NAN;
    if let (Some(agent), Setup::Watching) = (&agent, setup) {
        let mut times: Vec<f64> = (0..20)
            .map(|_| request_ms(agent.local_addr(), "/debug/doctor"))
            .collect();
        doctor_request_ms = median(&mut times);
    }
    if let Some(agent) = agent {
        if setup == Setup::Watching {
            let lag = agent.runtime().lag().expect("lag");
            if busy > 0 {
                assert!(lag.windows.ten_seconds.count > 0, "the probe ran");
            }
        }
        runtime.block_on(agent.shutdown());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    Measured {
        process: used.as_secs_f64() * 1e3 / elapsed,
        watchdog: watchdog as f64 / 1e6 / elapsed,
        use_sampler: use_sampler as f64 / 1e6 / elapsed,
        doctor: doctor as f64 / 1e6 / elapsed,
        doctor_request_ms,
    }
}

fn main() {
    let rounds = arg("--rounds", 9).max(1);
    let secs = arg("--secs", 5).max(1) as u64;
    let resolution = Duration::from_millis(arg("--resolution-ms", 10).clamp(1, 1000) as u64);
    let busy = arg("--busy", 0).min(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Warm-up: fault in code, start the runtime's threads.
    for setup in [Setup::None, Setup::Unwatched, Setup::Watching] {
        round(&runtime, setup, 1, resolution, busy);
    }

    let (mut none, mut unwatched, mut watching) = (Vec::new(), Vec::new(), Vec::new());
    let (mut agent_total, mut watchdog_cost, mut threads, mut sampler) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut doctor, mut doctor_requests) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // A different order every round: drift on the machine spreads
        // evenly over the three setups.
        let mut order = [Setup::None, Setup::Unwatched, Setup::Watching];
        order.rotate_left(r % 3);
        let mut measured = [None; 3];
        for setup in order {
            measured[setup as usize] = Some(round(&runtime, setup, secs, resolution, busy));
        }
        let [Some(a), Some(b), Some(c)] = measured else {
            unreachable!("every setup ran");
        };
        println!(
            "round {r}: no agent {:.3} ms CPU/s, agent {:.3}, agent watching the runtime {:.3}; \
             agent at rest {:.3} ms/s",
            a.process,
            b.process,
            c.process,
            c.process - a.process
        );
        none.push(a.process);
        unwatched.push(b.process);
        watching.push(c.process);
        agent_total.push(c.process - a.process);
        watchdog_cost.push(c.process - b.process);
        threads.push(c.watchdog);
        sampler.push(c.use_sampler);
        doctor.push(c.doctor);
        doctor_requests.push(c.doctor_request_ms);
    }
    let total = median(&mut agent_total);
    println!(
        "{} two-worker runtime, {rounds} rounds x {secs} s, resolution {} ms",
        ["idle", "one worker busy,", "both workers busy,"][busy],
        resolution.as_millis()
    );
    println!(
        "  no agent:                    {:.3} ms of CPU per second (median)",
        median(&mut none)
    );
    println!(
        "  agent, runtime not watched:  {:.3} ms/s (median)",
        median(&mut unwatched)
    );
    println!(
        "  agent watching the runtime:  {:.3} ms/s (median)",
        median(&mut watching)
    );
    println!(
        "  the agent at rest, in all:   {total:.3} ms/s = {:.3} % of one core (median of per-round differences)",
        total / 10.0
    );
    let d = median(&mut watchdog_cost);
    println!(
        "  of which watchdog + probe:   {d:.3} ms/s = {:.3} % of one core",
        d / 10.0
    );
    let thread = median(&mut threads);
    println!(
        "  watchdog thread alone:       {thread:.3} ms/s = {:.3} % of one core (exact, from schedstat)",
        thread / 10.0
    );
    let use_thread = median(&mut sampler);
    println!(
        "  USE sampling thread alone:   {use_thread:.3} ms/s = {:.3} % of one core (exact, from schedstat)",
        use_thread / 10.0
    );
    let doctor = median(&mut doctor);
    println!(
        "  doctor thread alone:         {doctor:.3} ms/s = {:.3} % of one core (exact, from schedstat: a history row and every rule, once a second)",
        doctor / 10.0
    );
    println!(
        "  GET /debug/doctor:           {:.2} ms (median of 20 requests a round, median over rounds)",
        median(&mut doctor_requests)
    );
    println!(
        "  doctor history:              {} KiB for 15 minutes, allocated at start",
        stethoscope::Agent::builder()
            .listen("127.0.0.1:0")
            .start()
            .map(|agent| agent.doctor().history_bytes())
            .unwrap_or(0)
            / 1024
    );
    let looks = [50, 25, 10][busy];
    let bare = bare_thread(Duration::from_millis(looks), secs);
    println!(
        "  bare thread waking every {looks} ms (the watchdog's look interval here): {bare:.3} ms/s = {:.3} % of one core",
        bare / 10.0
    );
}
