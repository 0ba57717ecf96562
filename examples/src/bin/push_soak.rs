//! A long outage of the push server, with the default push settings: the
//! server refuses connections for the first third of `--secs`, answers 500
//! for the second, accepts and never answers for the last, then comes
//! back. Every 10 s it prints the process's threads, descriptors, sockets
//! and resident memory and the pusher's queue and counters; at the end,
//! their ranges over the outage, and how delivery resumed.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin push_soak -- [--secs 300] [--segment 10] [--back 60]
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stethoscope::cpu::ContinuousSettings;
use stethoscope::push::PushSettings;
use stethoscope::Agent;
use stethoscope_examples::bench::arg;
use stethoscope_examples::receiver::{rss_bytes, threads_and_descriptors, Mode, Receiver};
use stethoscope_examples::workload::walk_call_tree;

fn main() {
    let secs = arg("--secs", 300).max(3) as u64;
    let segment = Duration::from_secs(arg("--segment", 10).max(1) as u64);
    let back = arg("--back", 60) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // Bound, not listening: refused until it listens.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let addr = socket.local_addr().expect("address");

    // A light workload: one thread walking the call tree a tenth of the time.
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seed = 7u64;
            while !stop.load(Ordering::Relaxed) {
                let until = Instant::now() + Duration::from_millis(10);
                while Instant::now() < until {
                    seed = seed.wrapping_add(1);
                    std::hint::black_box(walk_call_tree(seed, 200));
                }
                std::thread::sleep(Duration::from_millis(90));
            }
        })
    };
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .continuous(ContinuousSettings::new(19).segment(segment))
        .push(PushSettings::new(format!("http://{addr}")).service("push_soak"))
        .start()
        .expect("agent starts");
    let pusher = agent.push().expect("push is on").clone();
    std::thread::sleep(Duration::from_secs(2));

    let phase = secs / 3;
    println!(
        "outage of {secs} s ({phase} s refused, {phase} s 500, {} s hanging), {} s segments, default push settings; then {back} s back",
        secs - 2 * phase,
        segment.as_secs()
    );
    println!(
        "     s  phase      threads  fds  sockets  RSS MiB  queued  KiB  sent  dropped  errors"
    );
    let started = Instant::now();
    let mut receiver: Option<Receiver> = None;
    let mut socket = Some(socket);
    let (mut threads, mut fds, mut sockets, mut rss) = (
        (usize::MAX, 0),
        (usize::MAX, 0),
        (usize::MAX, 0),
        (u64::MAX, 0u64),
    );
    let mut queue_max = (0u64, 0u64);
    let mut phase_name = "refused";
    let mut back_at = None;
    let mut back_requests = 0;
    while started.elapsed() < Duration::from_secs(secs + back) {
        let t = started.elapsed().as_secs();
        if t >= phase && receiver.is_none() {
            let listener = runtime
                .block_on(async { socket.take().map(|s| s.listen(128)) })
                .expect("the socket")
                .expect("listen");
            let _guard = runtime.enter();
            let r = Receiver::serve(listener);
            r.set(Mode::Fail);
            receiver = Some(r);
            phase_name = "500";
        }
        if t >= 2 * phase && phase_name == "500" {
            if let Some(r) = &receiver {
                r.set(Mode::Hang);
            }
            phase_name = "hang";
        }
        if t >= secs && back_at.is_none() {
            if let Some(r) = &receiver {
                back_requests = r.counts.requests.load(Ordering::Relaxed);
                r.set(Mode::Accept);
            }
            back_at = Some(Instant::now());
            phase_name = "back";
        }
        let (th, fd, so) = threads_and_descriptors();
        let mem = rss_bytes();
        let status = pusher.status();
        if back_at.is_none() {
            threads = (threads.0.min(th), threads.1.max(th));
            fds = (fds.0.min(fd), fds.1.max(fd));
            sockets = (sockets.0.min(so), sockets.1.max(so));
            rss = (rss.0.min(mem), rss.1.max(mem));
            queue_max = (
                queue_max.0.max(status.queued),
                queue_max.1.max(status.queued_bytes),
            );
        }
        if t.is_multiple_of(10) {
            println!(
                "  {t:>4}  {phase_name:<9} {th:>7}  {fd:>3}  {so:>7}  {:>7.1}  {:>6}  {:>3}  {:>4}  {:>7}  {:>6}",
                mem as f64 / 1048576.0,
                status.queued,
                status.queued_bytes / 1024,
                status.sent,
                status.dropped,
                status.errors
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let status = pusher.status();
    let requests_back = receiver.as_ref().map_or(0, |r| {
        r.counts.requests.load(Ordering::Relaxed) - back_requests
    });
    println!(
        "over the outage: threads {}–{}, descriptors {}–{}, sockets {}–{}, RSS {:.1}–{:.1} MiB; the queue held at most {} profiles, {} KiB",
        threads.0,
        threads.1,
        fds.0,
        fds.1,
        sockets.0,
        sockets.1,
        rss.0 as f64 / 1048576.0,
        rss.1 as f64 / 1048576.0,
        queue_max.0,
        queue_max.1 / 1024
    );
    println!(
        "after {back} s back: {} sent, {requests_back} requests (the queue, then one a segment), {} dropped ({:?}), {} failed attempts ({:?}); taken {} = sent + dropped + queued {}",
        status.sent,
        status.dropped,
        status.dropped_by_reason,
        status.errors,
        status
            .errors_by_reason
            .iter()
            .filter(|(_, n)| **n > 0)
            .collect::<Vec<_>>(),
        status.taken,
        status.sent + status.dropped + status.queued
    );
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    drop(agent);
}
