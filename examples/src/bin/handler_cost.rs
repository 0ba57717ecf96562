//! The CPU sampler's SIGPROF handler, per sample, in CPU time rather than
//! wall time: one thread `--depth` frames deep sends itself SIGPROF in
//! batches (`tgkill`; the signal is delivered before the call returns) and
//! reads its own CPU clock around each batch — once with a handler that
//! does nothing (the kernel's delivery and return alone), once inside a
//! CPU profile window (the sampler's handler claims a context, unwinds,
//! and records). The difference is what the handler's own work costs the
//! interrupted thread; preemption does not count, unlike the sampler's own
//! `handler_time` (wall time inside the handler), printed beside it.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin handler_cost -- [--rounds 15] [--batch 256] [--depth 40]
//! ```
//!
//! Rounds alternate the two kinds of batch; the results are medians.
//! Under `valgrind --tool=callgrind --toggle-collect='*on_sigprof*'` the
//! same run counts the handler's instructions per call.

use std::time::Duration;

use stethoscope::cpu::{CpuProfiler, ProfileRequest};
use stethoscope_examples::workload::thread_cpu_time;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn option(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

/// Sends this thread `count` SIGPROFs, `depth` frames below the caller;
/// returns the thread's CPU time spent.
#[inline(never)]
fn signal_self(depth: u32, count: u32) -> Duration {
    if depth > 0 {
        let spent = signal_self(depth - 1, count);
        std::hint::black_box(depth);
        return spent;
    }
    // SAFETY: getpid and gettid have no preconditions; tgkill sends SIGPROF
    // to this thread, whose handler the profiler installed (and never
    // resets to SIG_DFL once installed).
    #[allow(unsafe_code)]
    let (pid, tid) = unsafe {
        (
            libc::getpid(),
            libc::syscall(libc::SYS_gettid) as libc::pid_t,
        )
    };
    let started = thread_cpu_time();
    for _ in 0..count {
        #[allow(unsafe_code)]
        // SAFETY: see above.
        unsafe {
            libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGPROF);
        }
    }
    thread_cpu_time().saturating_sub(started)
}

/// A handler that does nothing: what the kernel's delivery costs alone.
extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Sets SIGPROF's disposition (`SIG_IGN` between measurements, as the
/// sampler leaves it when it stops).
fn set_sigprof(disposition: usize) {
    // SAFETY: a zeroed sigaction with an empty mask and either SIG_IGN or
    // a handler that does nothing is valid; the sampler is stopped, so no
    // handler of its own is replaced.
    #[allow(unsafe_code)]
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = disposition;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut());
    }
}

fn main() {
    let rounds = option("--rounds", 15).max(1) as usize;
    let batch = option("--batch", 256).clamp(1, 512) as u32;
    let depth = option("--depth", 40) as u32;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1)
        }
    };
    let profiler = CpuProfiler::global();
    // A first profile installs the handler for good.
    let _ = runtime.block_on(profiler.profile(ProfileRequest::new(Duration::from_millis(200))));
    // Each active batch runs inside a profile window of its own, on a
    // thread of its own; idle batches run between windows, when the
    // sampler is stopped. The ring is drained every 25 ms and holds 1,024
    // samples, so a batch of 512 at most never fills it.
    let (mut idle, mut active) = (Vec::new(), Vec::new());
    let before = profiler.status();
    for _ in 0..rounds {
        set_sigprof(noop_handler as *const () as usize);
        idle.push(signal_self(depth, batch).as_nanos() as f64 / f64::from(batch));
        set_sigprof(libc::SIG_IGN);
        let window = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                let request = ProfileRequest::new(Duration::from_millis(100)).hz(99);
                let _ = runtime.block_on(CpuProfiler::global().profile(request));
            }
        });
        while profiler.status().running_hz.is_none() && !window.is_finished() {
            std::thread::sleep(Duration::from_millis(2));
        }
        // The sampler publishes its handler's state right after it starts.
        std::thread::sleep(Duration::from_millis(10));
        active.push(signal_self(depth, batch).as_nanos() as f64 / f64::from(batch));
        let _ = window.join();
        while profiler.status().running_hz.is_some() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let after = profiler.status();
    let recorded = after.samples_recorded - before.samples_recorded;
    let dropped = after.samples_dropped - before.samples_dropped;
    let handler_ns = (after.handler_time - before.handler_time).as_nanos();
    let (idle, active) = (median(&mut idle), median(&mut active));
    println!("# SIGPROF handler cost, {depth} frames deep, {rounds} rounds × {batch} signals");
    println!(
        "delivery, empty handler: {:.2} µs CPU per signal",
        idle / 1e3
    );
    println!(
        "delivery, the sampler:   {:.2} µs CPU per signal",
        active / 1e3
    );
    println!(
        "the handler's own work:  {:.2} µs CPU per sample; \
         the sampler's own wall-time measure: {:.2} µs per sample over {recorded} ({dropped} dropped)",
        (active - idle) / 1e3,
        handler_ns as f64 / 1e3 / recorded.max(1) as f64
    );
}
