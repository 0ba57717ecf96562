//! Cost of pushing to Pyroscope: throughput of a CPU-bound workload (random
//! walks down a call tree, thousands of distinct stacks, on `--threads`
//! threads) with the continuous profiler on in every arm, without push and
//! with push to a server that accepts, refuses connections, answers 500,
//! or never answers; arms interleaved in rotating order, medians of the
//! per-round ratios to "no push". Segments last `--segment` seconds (2 by
//! default: five times the default rate, so a short round sees several
//! pushes and the cost is overstated, not hidden). Also: the push thread's
//! CPU per segment, the bytes of each push, and the memory pushing adds
//! (the symbolizer's tables, the queue). `--otlp 1` adds an arm pushing
//! OTLP profiles to a server that accepts, to compare the two protocols'
//! CPU and bytes.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin push_overhead -- [--rounds 7] [--secs 6] [--threads 2] [--segment 2] [--symbolize 1] [--outages 1] [--otlp 0]
//! ```
//!
//! With `--receive PORT` it only runs the stand-in receiver on
//! 127.0.0.1:PORT for `--secs` (default 600) and prints what arrives every
//! 10 s: point the demo at it to see the bytes of its segments.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stethoscope::cpu::ContinuousSettings;
use stethoscope::push::{PushProtocol, PushSettings};
use stethoscope::Agent;
use stethoscope_examples::bench::{arg, median, thread_cpu_ns};
use stethoscope_examples::receiver::{self, rss_bytes, Mode};
use stethoscope_examples::workload::walk_call_tree;

/// Call-tree walks per second on `threads` threads for `secs`.
fn walks_per_second(threads: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let walks = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, walks) = (Arc::clone(&stop), Arc::clone(&walks));
            s.spawn(move || {
                let mut seed = t as u64 * 1_000_003;
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) {
                    seed = seed.wrapping_add(1);
                    std::hint::black_box(walk_call_tree(seed, 200));
                    done += 1;
                }
                walks.fetch_add(done, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    walks.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Off,
    Accept,
    Refused,
    Fail,
    Hang,
    /// OTLP profiles, server accepts.
    AcceptOtlp,
}

impl Arm {
    const ALL: [Arm; 5] = [Arm::Off, Arm::Accept, Arm::Refused, Arm::Fail, Arm::Hang];

    fn name(self) -> &'static str {
        match self {
            Arm::Off => "no push",
            Arm::Accept => "push, server accepts",
            Arm::Refused => "push, connection refused",
            Arm::Fail => "push, server answers 500",
            Arm::Hang => "push, server never answers",
            Arm::AcceptOtlp => "push OTLP, server accepts",
        }
    }
}

/// What one measured run of an arm gave.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    rate: f64,
    push_cpu_ns: u64,
    seconds: f64,
    sent: u64,
    sent_bytes: u64,
    errors: u64,
}

fn receive(port: usize) {
    let secs = arg("--secs", 600) as u64;
    let (receiver, addr) =
        receiver::spawn(&format!("127.0.0.1:{port}")).expect("the receiver binds its port");
    println!("receiving pushes on http://{addr} for {secs} s");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(10));
        let c = &receiver.counts;
        let (accepted, bytes) = (
            c.accepted.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed),
        );
        println!(
            "  {:>4.0} s: {accepted} pushes, {bytes} bytes, {:.0} bytes a push",
            started.elapsed().as_secs_f64(),
            bytes as f64 / accepted.max(1) as f64
        );
    }
}

fn main() {
    let port = arg("--receive", 0);
    if port != 0 {
        return receive(port);
    }
    let rounds = arg("--rounds", 7).max(1);
    let secs = arg("--secs", 6).max(1) as f64;
    let threads = arg("--threads", 2).max(1);
    let segment = Duration::from_secs(arg("--segment", 2).max(1) as u64);
    let symbolize = arg("--symbolize", 1) != 0;
    // `--outages 0`: only "no push" and "push, server accepts".
    let mut arms: Vec<Arm> = if arg("--outages", 1) == 0 {
        vec![Arm::Off, Arm::Accept]
    } else {
        Arm::ALL.to_vec()
    };
    if arg("--otlp", 0) != 0 {
        arms.push(Arm::AcceptOtlp);
    }

    let (receiver, addr) = receiver::spawn("127.0.0.1:0").expect("receiver");
    // Bound, never listening: connections to it are refused.
    let refusing = tokio::net::TcpSocket::new_v4().expect("socket");
    refusing
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let refused_addr = refusing.local_addr().expect("address");

    let start = |arm: Arm| -> Agent {
        let mut builder = Agent::builder().listen("127.0.0.1:0").continuous(
            ContinuousSettings::new(19)
                .segment(segment)
                .keep(Duration::from_secs(300)),
        );
        let target = match arm {
            Arm::Off => None,
            Arm::Refused => Some(refused_addr),
            Arm::Accept | Arm::Fail | Arm::Hang | Arm::AcceptOtlp => Some(addr),
        };
        receiver.set(match arm {
            Arm::Fail => Mode::Fail,
            Arm::Hang => Mode::Hang,
            _ => Mode::Accept,
        });
        if let Some(target) = target {
            builder = builder.push(
                PushSettings::new(format!("http://{target}"))
                    .service("push_overhead")
                    .symbolize(symbolize)
                    .protocol(if arm == Arm::AcceptOtlp {
                        PushProtocol::Otlp
                    } else {
                        PushProtocol::Pyroscope
                    }),
            );
        }
        builder.start().expect("agent starts")
    };
    let run = |arm: Arm, secs: f64| -> Run {
        let agent = start(arm);
        std::thread::sleep(Duration::from_millis(300));
        let cpu_before = thread_cpu_ns("stethoscope-push");
        let started = Instant::now();
        let rate = walks_per_second(threads, secs);
        let seconds = started.elapsed().as_secs_f64();
        // The pushes of the segments that closed inside the window.
        std::thread::sleep(Duration::from_millis(400));
        let status = agent.push().map(|p| p.status());
        let push_cpu_ns = thread_cpu_ns("stethoscope-push").saturating_sub(cpu_before);
        drop(agent);
        receiver.set(Mode::Accept);
        std::thread::sleep(Duration::from_millis(300));
        Run {
            rate,
            push_cpu_ns,
            seconds,
            sent: status.as_ref().map_or(0, |s| s.sent),
            sent_bytes: status.as_ref().map_or(0, |s| s.sent_bytes),
            errors: status.as_ref().map_or(0, |s| s.errors),
        }
    };

    // Warm-up: code faulted in; then the memory pushing adds (the first
    // push loads the symbolizer's tables).
    run(Arm::Off, 1.0);
    let rss_off = rss_bytes();
    let warm = run(Arm::Accept, (2 * segment).as_secs_f64() + 0.5);
    let rss_push = rss_bytes();

    let mut results: Vec<Vec<Run>> = vec![Vec::new(); arms.len()];
    for round in 0..rounds {
        let mut order = arms.clone();
        order.rotate_left(round % arms.len());
        for arm in order {
            let index = arms.iter().position(|a| *a == arm).unwrap_or(0);
            results[index].push(run(arm, secs));
        }
    }

    println!(
        "push at 19 Hz with {} s segments, {threads} busy threads, {rounds} rounds of {secs} s (arms interleaved, rotating), symbolize={symbolize}",
        segment.as_secs()
    );
    let off = &results[0];
    for (index, arm) in arms.iter().enumerate() {
        let runs = &results[index];
        let mut ratios: Vec<f64> = runs.iter().zip(off).map(|(r, o)| r.rate / o.rate).collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        let ratio = median(&mut ratios);
        let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
        let cpu_ms: f64 = runs.iter().map(|r| r.push_cpu_ns as f64 / 1e6).sum();
        let sent: u64 = runs.iter().map(|r| r.sent).sum();
        let bytes: u64 = runs.iter().map(|r| r.sent_bytes).sum();
        let errors: u64 = runs.iter().map(|r| r.errors).sum();
        let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
        println!(
            "  {:<28} throughput ×{ratio:.4} (range {low:.4}–{high:.4}), {:.0} walks/s; push thread {:.3} ms/s; {sent} sent, {errors} failed attempts{}",
            arm.name(),
            median(&mut rates),
            cpu_ms / seconds,
            if sent > 0 {
                format!(
                    "; {:.1} ms CPU and {:.1} KiB a push",
                    cpu_ms / sent as f64,
                    bytes as f64 / sent as f64 / 1024.0
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "  memory: RSS {:.1} MiB without push, {:.1} MiB after the first pushes (+{:.1} MiB: symbolizer tables, queue); warm-up pushes {}, {:.1} KiB each",
        rss_off as f64 / 1048576.0,
        rss_push as f64 / 1048576.0,
        (rss_push as f64 - rss_off as f64) / 1048576.0,
        warm.sent,
        warm.sent_bytes as f64 / warm.sent.max(1) as f64 / 1024.0
    );
    let per_push = results[1]
        .iter()
        .map(|r| r.push_cpu_ns as f64 / 1e6)
        .sum::<f64>()
        / results[1].iter().map(|r| r.sent).sum::<u64>().max(1) as f64;
    println!(
        "  one push a {} s segment: {per_push:.1} ms of CPU = {:.3} % of one core",
        segment.as_secs(),
        per_push / (segment.as_secs_f64() * 1e3) * 100.0
    );
}
