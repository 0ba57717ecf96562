//! Applying labels: [`Labelled`] around a future (set on every poll, so a
//! future moved between worker threads keeps them), [`LabelGuard`] around
//! synchronous code.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::slot;
use super::table::{merge, Labels, NO_LABELS};

impl Labels {
    /// Wraps `future` so that every sample taken while it is polled carries
    /// these labels, added to those of the code that polls it (a labelled
    /// future inside a request handler carries the request's `route` too).
    ///
    /// ```
    /// use stethoscope::labels::Labels;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let batch = Labels::new([("job", "reindex")]);
    /// let seen = batch.instrument(async { Labels::current() }).await;
    /// assert_eq!(seen, batch);
    /// # }
    /// ```
    pub fn instrument<F: IntoFuture>(self, future: F) -> Labelled<F::IntoFuture> {
        Labelled {
            inner: future.into_future(),
            labels: self.id,
            parent: NO_LABELS,
            merged: self.id,
        }
    }

    /// Sets these labels (added to the current ones) on this thread until
    /// the guard is dropped: for synchronous code. In async code use
    /// [`instrument`](Labels::instrument); the guard is not `Send` and must
    /// not be held across `.await`.
    ///
    /// ```
    /// use stethoscope::labels::Labels;
    ///
    /// let compaction = Labels::new([("job", "compaction")]);
    /// {
    ///     let _guard = compaction.enter();
    ///     assert_eq!(Labels::current(), compaction);
    /// }
    /// assert_eq!(Labels::current(), Labels::none());
    /// ```
    pub fn enter(self) -> LabelGuard {
        slot::note_thread();
        let id = merge(slot::current(), self.id);
        LabelGuard {
            previous: slot::enter(id),
            _not_send: PhantomData,
        }
    }
}

/// Runs `future` with `pairs` as labels of every CPU and wall-clock sample
/// taken while it is polled — Go's `pprof.Do`. The labels add to those of
/// the code polling it; a key present in both takes the value given here.
///
/// ```
/// use stethoscope::labels::{with_labels, Labels};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let tenant = with_labels([("tenant", "acme")], async {
///     // ... work whose CPU time is attributed to tenant=acme ...
///     Labels::current().set().get("tenant").map(str::to_owned)
/// })
/// .await;
/// assert_eq!(tenant.as_deref(), Some("acme"));
/// # }
/// ```
///
/// Each call interns the set (a shared lock on a table); for futures made
/// at a high rate, intern once with [`Labels::new`] and reuse
/// [`Labels::instrument`].
pub fn with_labels<I, K, V, F>(pairs: I, future: F) -> Labelled<F::IntoFuture>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
    F: IntoFuture,
{
    Labels::new(pairs).instrument(future)
}

/// Names a task: its samples carry `task=<name>`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handle = tokio::spawn(stethoscope::labels::task("cache-refresher", async {
///     // ... the task's loop ...
/// }));
/// handle.await.unwrap();
/// # }
/// ```
pub fn task<F: IntoFuture>(name: &str, future: F) -> Labelled<F::IntoFuture> {
    Labels::new([("task", name)]).instrument(future)
}

/// Sets `pairs` as labels of this thread's samples until the guard is
/// dropped: [`Labels::enter`] for synchronous code.
///
/// ```
/// let _guard = stethoscope::labels::scope([("job", "nightly-export")]);
/// assert_eq!(
///     stethoscope::labels::Labels::current().set().get("job"),
///     Some("nightly-export")
/// );
/// ```
pub fn scope<I, K, V>(pairs: I) -> LabelGuard
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    Labels::new(pairs).enter()
}

pin_project! {
    /// A future whose polls run with labels: see [`Labels::instrument`].
    ///
    /// Cost per poll: two thread-local loads and two stores (measured in
    /// `docs/overhead.md`); merging with the poller's labels is computed
    /// once per distinct poller and cached.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Labelled<F> {
        #[pin]
        inner: F,
        labels: u32,
        // The poller's labels the cached merge was made for.
        parent: u32,
        merged: u32,
    }
}

impl<F: Future> Future for Labelled<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        slot::note_thread();
        let parent = slot::current();
        if parent != *this.parent {
            *this.merged = merge(parent, *this.labels);
            *this.parent = parent;
        }
        let _restore = Restore(slot::enter(*this.merged));
        this.inner.poll(cx)
    }
}

/// Puts the poller's labels back, also when the inner poll panics.
struct Restore(u32);

impl Drop for Restore {
    #[inline]
    fn drop(&mut self) {
        slot::restore(self.0);
    }
}

/// Labels set on this thread until dropped: see [`Labels::enter`].
#[derive(Debug)]
#[must_use = "the labels apply until the guard is dropped"]
pub struct LabelGuard {
    previous: u32,
    _not_send: PhantomData<*const ()>,
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        slot::restore(self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn nested_labels_merge_and_are_restored_after_each_poll() {
        let outer = Labels::new([("route", "/a"), ("tenant", "x")]);
        let inner = Labels::new([("tenant", "y")]);
        let (seen_inner, seen_outer_after) = outer
            .instrument(async move {
                let seen = inner
                    .instrument(async {
                        tokio::task::yield_now().await;
                        Labels::current()
                    })
                    .await;
                (seen, Labels::current())
            })
            .await;
        assert_eq!(seen_inner.set().get("route"), Some("/a"));
        assert_eq!(seen_inner.set().get("tenant"), Some("y"));
        assert_eq!(seen_outer_after, outer);
        assert_eq!(Labels::current(), Labels::none(), "restored after the poll");
    }

    #[test]
    fn a_panicking_poll_restores_the_slot() {
        let labels = Labels::new([("k", "v")]);
        let result = std::panic::catch_unwind(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(labels.instrument(async { panic!("boom") }))
        });
        assert!(result.is_err());
        assert_eq!(Labels::current(), Labels::none());
    }

    #[test]
    fn a_future_moved_between_workers_keeps_its_labels_on_every_poll() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let labels = Labels::new([("job", "mover")]);
        // (worker index, labels) at each poll.
        type Polls = Vec<(Option<usize>, Labels)>;
        let seen: Arc<Mutex<Polls>> = Arc::default();
        let record = Arc::clone(&seen);
        runtime.block_on(async move {
            tokio::spawn(labels.instrument(async move {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while std::time::Instant::now() < deadline {
                    record
                        .lock()
                        .unwrap()
                        .push((tokio::runtime::worker_index(), Labels::current()));
                    // Occupy this worker (the blocker sits in its LIFO
                    // slot, which no other worker steals) while the task
                    // is woken from outside the runtime: the wake goes to
                    // the global queue, where the idle worker takes it.
                    tokio::spawn(async {
                        std::thread::sleep(std::time::Duration::from_millis(60));
                    });
                    let (wake, woken) = tokio::sync::oneshot::channel::<()>();
                    std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_millis(15));
                        let _ = wake.send(());
                    });
                    let _ = woken.await;
                    let workers: HashSet<_> = record.lock().unwrap().iter().map(|s| s.0).collect();
                    if workers.len() >= 2 {
                        break;
                    }
                }
            }))
            .await
            .unwrap();
        });
        let seen = seen.lock().unwrap();
        let workers: HashSet<_> = seen.iter().map(|(w, _)| *w).collect();
        assert!(workers.len() >= 2, "the task never moved: {workers:?}");
        assert!(seen.iter().all(|(_, l)| *l == labels));
    }

    #[test]
    fn the_guard_sets_and_restores_and_scope_merges() {
        let base = Labels::new([("a", "1")]);
        let guard = base.enter();
        {
            let _inner = scope([("b", "2")]);
            let set = Labels::current().set();
            assert_eq!((set.get("a"), set.get("b")), (Some("1"), Some("2")));
        }
        assert_eq!(Labels::current(), base);
        drop(guard);
        assert_eq!(Labels::current(), Labels::none());
    }
}
