//! Span layer cost: the same spans through a bare `tracing_subscriber`
//! registry (tracing's own cost) and through the registry plus
//! stethoscope's `SpanLayer`, interleaved over rounds; the difference of
//! the medians is what the layer adds. Measured for an enter/exit pair of
//! an existing span, for a whole span (new + enter + exit + close) without
//! and with two fields, and for whole spans on every core at once (the
//! per-name counters shared).
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin span_overhead -- [--rounds 11] [--spans 200000] [--label-samples 0|1]
//! ```

use std::time::Instant;

use stethoscope::spans::SpanTimings;
use stethoscope_examples::bench::{arg, interleaved_on_threads, median};
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;

/// What one measurement does `n` times.
#[derive(Debug, Clone, Copy)]
enum Work {
    /// Enter and exit one span that already exists.
    EnterExit,
    /// Create, enter, exit and close a span without fields.
    Span,
    /// The same with two fields (an integer and a string).
    SpanWithFields,
}

/// Nanoseconds per operation over `n` operations under `dispatch`.
fn run(dispatch: &Dispatch, work: Work, n: usize) -> f64 {
    tracing::dispatcher::with_default(dispatch, || {
        let started = Instant::now();
        match work {
            Work::EnterExit => {
                let span = tracing::info_span!("bench_existing");
                for _ in 0..n {
                    let entered = span.enter();
                    std::hint::black_box(&entered);
                }
            }
            Work::Span => {
                for _ in 0..n {
                    let span = tracing::info_span!("bench_span");
                    let entered = span.enter();
                    std::hint::black_box(&entered);
                }
            }
            Work::SpanWithFields => {
                for i in 0..n {
                    let span = tracing::info_span!("bench_query", id = i, table = "items");
                    let entered = span.enter();
                    std::hint::black_box(&entered);
                }
            }
        }
        started.elapsed().as_nanos() as f64 / n as f64
    })
}

fn main() {
    let rounds = arg("--rounds", 11).max(1);
    let n = arg("--spans", 200_000).max(1);
    // `--label-samples 1`: spans also label CPU samples (span=<name>).
    let timings = SpanTimings::with_settings(
        stethoscope::spans::SpanSettings::default().label_samples(arg("--label-samples", 0) == 1),
    );
    let plain = Dispatch::new(tracing_subscriber::registry());
    let layered = Dispatch::new(tracing_subscriber::registry().with(timings.layer()));

    println!("single thread, {rounds} rounds x {n} operations, interleaved");
    println!(
        "{:<34} {:>14} {:>14} {:>14}",
        "operation", "registry ns", "+ layer ns", "layer adds ns"
    );
    for (work, label) in [
        (Work::EnterExit, "enter + exit of an existing span"),
        (Work::Span, "span: new + enter + exit + close"),
        (Work::SpanWithFields, "the same with 2 fields"),
    ] {
        // Warm-up: register the callsites, fault in code and caches.
        run(&plain, work, n / 10);
        run(&layered, work, n / 10);
        let (mut without, mut with, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (a, b) = if round % 2 == 0 {
                let a = run(&plain, work, n);
                (a, run(&layered, work, n))
            } else {
                let b = run(&layered, work, n);
                (run(&plain, work, n), b)
            };
            without.push(a);
            with.push(b);
            diffs.push(b - a);
        }
        println!(
            "{label:<34} {:>14.1} {:>14.1} {:>14.1}",
            median(&mut without),
            median(&mut with),
            median(&mut diffs)
        );
    }

    // Every core creating spans of one name at once: the name's
    // histograms and counters are shared.
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let (mut without, mut with) =
        interleaved_on_threads(rounds.div_ceil(2), threads, |layered_run| {
            let dispatch = if layered_run { &layered } else { &plain };
            run(dispatch, Work::SpanWithFields, n / 2)
        });
    let (w, l) = (median(&mut without), median(&mut with));
    println!("{threads} threads, spans with 2 fields of one name at once");
    println!(
        "{:<34} {w:>14.1} {l:>14.1} {:>14.1}",
        "span: new + enter + exit + close",
        l - w
    );
    let report = timings.report();
    let recorded: u64 = report.spans.iter().map(|s| s.count).sum();
    println!("spans recorded by the layer: {recorded}");
}
