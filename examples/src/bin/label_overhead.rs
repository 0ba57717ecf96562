//! Label cost: polls of a future with and without `Labels::instrument`
//! (the label switch every poll of a labelled future pays), nested labels,
//! interning a known set (what `with_labels` and the RED layer pay per
//! future), and a `LabelGuard`, interleaved over rounds; the cost is the
//! median of the per-round differences.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin label_overhead -- [--rounds 11] [--polls 20000000]
//! ```

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use stethoscope::labels::Labels;
use stethoscope_examples::bench::{arg, interleaved_on_threads, median};

/// A future that stays pending and counts its polls.
fn pending_counter() -> impl Future<Output = ()> {
    let mut polls = 0u64;
    std::future::poll_fn(move |_| {
        polls = std::hint::black_box(polls + 1);
        Poll::Pending
    })
}

/// Nanoseconds per poll of `future`, polled `n` times through a trait
/// object, as an executor polls its tasks (no inlining across polls).
fn ns_per_poll(future: impl Future<Output = ()>, n: usize) -> f64 {
    let mut future = pin!(future);
    // Hidden from the optimizer: a real call through the vtable every poll.
    let mut future: std::pin::Pin<&mut dyn Future<Output = ()>> =
        std::hint::black_box(future.as_mut());
    let mut cx = Context::from_waker(Waker::noop());
    let started = Instant::now();
    for _ in 0..n {
        let _ = std::hint::black_box(future.as_mut().poll(&mut cx));
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

/// Nanoseconds per call of `f`, called `n` times.
fn ns_per_call<T>(n: usize, mut f: impl FnMut(usize) -> T) -> f64 {
    let started = Instant::now();
    for i in 0..n {
        std::hint::black_box(f(i));
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

/// Interleaved rounds of `without` and `with`; prints the medians and the
/// median of the per-round differences.
fn compare(name: &str, rounds: usize, without: impl Fn() -> f64, with: impl Fn() -> f64) {
    let (mut a, mut b, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = without();
            (x, with())
        } else {
            let y = with();
            (without(), y)
        };
        a.push(x);
        b.push(y);
        diffs.push(y - x);
    }
    println!(
        "{name:<44} {:>8.2} ns → {:>8.2} ns: {:>6.2} ns (median of per-round differences)",
        median(&mut a),
        median(&mut b),
        median(&mut diffs)
    );
}

fn main() {
    let rounds = arg("--rounds", 11).max(1);
    let n = arg("--polls", 20_000_000).max(1);
    println!("{rounds} rounds × {n} operations, one thread unless said otherwise");
    let route = Labels::new([("method", "GET"), ("route", "/items/{id}")]);
    let tenant = Labels::new([("tenant", "acme")]);
    // Warm up: code, caches, the merged set of the nested case.
    ns_per_poll(
        route.instrument(tenant.instrument(pending_counter())),
        n / 10,
    );

    compare(
        "poll: labelled vs plain (label switch)",
        rounds,
        || ns_per_poll(pending_counter(), n),
        || ns_per_poll(route.instrument(pending_counter()), n),
    );
    compare(
        "poll: labelled inside labelled vs plain",
        rounds,
        || ns_per_poll(pending_counter(), n),
        || ns_per_poll(route.instrument(tenant.instrument(pending_counter())), n),
    );
    let enter = |labels: Labels| {
        ns_per_call(n, move |_| {
            let _guard = labels.enter();
        })
    };
    compare(
        "LabelGuard: enter + drop vs nothing",
        rounds,
        || ns_per_call(n, |i| i),
        || enter(route),
    );
    // Interning a known set: what the RED layer pays per request, with_labels per call.
    let methods = ["GET", "POST"];
    compare(
        "Labels::new of a known set vs nothing",
        rounds,
        || ns_per_call(n / 10, |i| i),
        || {
            ns_per_call(n / 10, |i| {
                Labels::new([("method", methods[i % 2]), ("route", "/items/{id}")])
            })
        },
    );
    // Two threads interning at once share the table's read lock.
    let (mut without, mut with) = interleaved_on_threads(rounds, 2, |intern| {
        if intern {
            ns_per_call(n / 10, |i| {
                Labels::new([("method", methods[i % 2]), ("route", "/items/{id}")])
            })
        } else {
            ns_per_call(n / 10, |i| i)
        }
    });
    let mut diffs: Vec<f64> = with.iter().zip(&without).map(|(w, o)| w - o).collect();
    println!(
        "{:<44} {:>8.2} ns → {:>8.2} ns: {:>6.2} ns (each of 2 threads at once)",
        "Labels::new of a known set, 2 threads",
        median(&mut without),
        median(&mut with),
        median(&mut diffs)
    );
}
