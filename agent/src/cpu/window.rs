//! Per-request profile windows over one shared sample stream.
//!
//! Every sample is interned into a [`StackTable`] once and counted into each
//! open window whose time range contains it, so concurrent requests at the
//! same frequency share one sampler yet each get exactly their own window.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::{CpuProfile, CpuStack, ProfileMode, SampleState};
use crate::labels::LabelSet;
use crate::Error;

/// Where a finished profile goes.
pub(crate) type Reply = oneshot::Sender<Result<CpuProfile, Error>>;

/// One distinct sampled stack: the thread it ran on, its frames, the
/// label-set id of the code that ran and (wall-clock) the thread's state.
#[derive(Debug, Clone)]
pub(crate) struct StackKey {
    pub(crate) thread: Arc<str>,
    pub(crate) frames: Arc<[u64]>,
    pub(crate) labels: u32,
    pub(crate) state: u8,
}

fn stack_hash(
    hasher: &RandomState,
    thread: &Arc<str>,
    frames: &[u64],
    labels: u32,
    state: u8,
) -> u64 {
    // Thread names are interned, so their address identifies them.
    let thread = Arc::as_ptr(thread).cast::<u8>() as usize;
    hasher.hash_one((thread, frames, labels, state))
}

/// Distinct stacks seen by one sampler session.
#[derive(Debug, Default)]
pub(crate) struct StackTable {
    /// Stack hash → ids with that hash (collisions are compared in full).
    index: HashMap<u64, Vec<u32>>,
    stacks: Vec<StackKey>,
    threads: HashMap<Vec<u8>, Arc<str>>,
    hasher: RandomState,
}

impl StackTable {
    /// Returns the id of this stack and whether it is new. Allocates only
    /// for stacks (and thread names) not seen before.
    pub(crate) fn intern(
        &mut self,
        thread_name: &[u8],
        frames: &[u64],
        labels: u32,
        state: u8,
    ) -> (u32, bool) {
        let thread = match self.threads.get(thread_name) {
            Some(name) => Arc::clone(name),
            None => {
                let name: Arc<str> = if thread_name.is_empty() {
                    Arc::from("[unnamed]")
                } else {
                    Arc::from(String::from_utf8_lossy(thread_name).as_ref())
                };
                self.threads.insert(thread_name.to_vec(), Arc::clone(&name));
                name
            }
        };
        let hash = stack_hash(&self.hasher, &thread, frames, labels, state);
        let candidates = self.index.entry(hash).or_default();
        for &id in candidates.iter() {
            let known = &self.stacks[id as usize];
            if Arc::ptr_eq(&known.thread, &thread)
                && *known.frames == *frames
                && known.labels == labels
                && known.state == state
            {
                return (id, false);
            }
        }
        let id = self.stacks.len() as u32;
        self.stacks.push(StackKey {
            thread,
            frames: Arc::from(frames),
            labels,
            state,
        });
        candidates.push(id);
        (id, true)
    }

    pub(crate) fn get(&self, id: u32) -> Option<&StackKey> {
        self.stacks.get(id as usize)
    }

    pub(crate) fn len(&self) -> usize {
        self.stacks.len()
    }

    /// Drops stacks no open window counts any more and renumbers the rest,
    /// so a session kept alive by overlapping requests does not grow
    /// without bound.
    pub(crate) fn compact(&mut self, windows: &mut [Window]) {
        let referenced: HashSet<u32> = windows
            .iter()
            .flat_map(|w| w.counts.keys().copied())
            .collect();
        let mut renumber: HashMap<u32, u32> = HashMap::with_capacity(referenced.len());
        let mut kept = StackTable {
            hasher: self.hasher.clone(),
            threads: std::mem::take(&mut self.threads),
            ..StackTable::default()
        };
        for (old, key) in self.stacks.drain(..).enumerate() {
            let old = old as u32;
            if !referenced.contains(&old) {
                continue;
            }
            let new = kept.stacks.len() as u32;
            let hash = stack_hash(
                &kept.hasher,
                &key.thread,
                &key.frames,
                key.labels,
                key.state,
            );
            kept.index.entry(hash).or_default().push(new);
            kept.stacks.push(key);
            renumber.insert(old, new);
        }
        for window in windows.iter_mut() {
            window.counts = window
                .counts
                .drain()
                .filter_map(|(id, n)| Some((*renumber.get(&id)?, n)))
                .collect();
        }
        *self = kept;
    }
}

/// A request waiting for the sampler to adopt it.
#[derive(Debug)]
pub(crate) struct PendingWindow {
    pub(crate) duration: Duration,
    pub(crate) requester: Option<SocketAddr>,
    pub(crate) symbolize: bool,
    pub(crate) reply: Reply,
}

impl PendingWindow {
    /// Tells the requester its profile will not come.
    pub(crate) fn fail(self, error: Error) {
        let _ = self.reply.send(Err(error));
    }
}

/// When a window started, in the three clocks a profile reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowStart {
    pub(crate) wall: SystemTime,
    pub(crate) at_ns: u64,
    pub(crate) cpu_ns: u64,
    /// Sampler drop counter at the start.
    pub(crate) dropped: u64,
}

/// When a window ended: monotonic time, process CPU time, drops so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowEnd {
    pub(crate) at_ns: u64,
    pub(crate) cpu_ns: u64,
    pub(crate) dropped: u64,
}

/// One request's profile window, adopted by a running sampler.
#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) hz: u32,
    pub(crate) mode: ProfileMode,
    pub(crate) requester: Option<SocketAddr>,
    pub(crate) symbolize: bool,
    pub(crate) start: WindowStart,
    pub(crate) deadline_ns: u64,
    pub(crate) end: Option<WindowEnd>,
    /// Samples and sampling periods per stack.
    counts: HashMap<u32, (u64, u64)>,
    samples: u64,
    reply: Reply,
}

impl Window {
    /// Starts `pending` now, on a sampler running at `hz` in `mode`.
    pub(crate) fn start(
        pending: PendingWindow,
        hz: u32,
        mode: ProfileMode,
        start: WindowStart,
    ) -> Self {
        let length = u64::try_from(pending.duration.as_nanos()).unwrap_or(u64::MAX);
        Self {
            hz,
            mode,
            requester: pending.requester,
            symbolize: pending.symbolize,
            start,
            deadline_ns: start.at_ns.saturating_add(length),
            end: None,
            counts: HashMap::new(),
            samples: 0,
            reply: pending.reply,
        }
    }

    /// Whether a sample taken at `timestamp_ns` belongs to this window.
    pub(crate) fn covers(&self, timestamp_ns: u64) -> bool {
        timestamp_ns >= self.start.at_ns && self.end.is_none_or(|end| timestamp_ns < end.at_ns)
    }

    /// Counts one sample of `stack` standing for `periods` sampling periods.
    pub(crate) fn count(&mut self, stack: u32, periods: u32) {
        let count = self.counts.entry(stack).or_insert((0, 0));
        count.0 += 1;
        count.1 += u64::from(periods);
        self.samples += 1;
    }

    /// Distinct stacks counted so far.
    pub(crate) fn distinct_stacks(&self) -> usize {
        self.counts.len()
    }

    /// The requester stopped waiting (client disconnected, future dropped).
    pub(crate) fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    /// Builds the profile of this window; [`Finished::deliver`] hands it to
    /// the requester. CPU time is the process's measured CPU time over the
    /// window, which `CpuProfile` spreads over the samples.
    pub(crate) fn finish(self, table: &StackTable) -> Option<Finished> {
        let end = self.end?;
        let period_ns = 1_000_000_000 / u64::from(self.hz.max(1));
        let mut label_sets: HashMap<(u32, u8), LabelSet> = HashMap::new();
        let mut stacks: Vec<CpuStack> = self
            .counts
            .iter()
            .filter_map(|(&id, &(samples, periods))| {
                let key = table.get(id)?;
                let labels = label_sets
                    .entry((key.labels, key.state))
                    .or_insert_with(|| {
                        let set = crate::labels::resolve(key.labels);
                        match SampleState::from_code(key.state) {
                            Some(state) => set.with("state", state.as_str()),
                            None => set,
                        }
                    })
                    .clone();
                Some(CpuStack {
                    thread: Arc::clone(&key.thread),
                    frames: Arc::clone(&key.frames),
                    labels,
                    samples,
                    weight: periods.saturating_mul(period_ns),
                })
            })
            .collect();
        stacks.sort_by_key(|s| std::cmp::Reverse(s.samples));
        let profile = CpuProfile {
            notes: Vec::new(),
            started_at: self.start.wall,
            duration: Duration::from_nanos(end.at_ns.saturating_sub(self.start.at_ns)),
            hz: self.hz,
            mode: self.mode,
            cpu_time: Duration::from_nanos(end.cpu_ns.saturating_sub(self.start.cpu_ns)),
            samples: self.samples,
            dropped: end.dropped.saturating_sub(self.start.dropped),
            stacks,
        };
        Some(Finished {
            profile,
            reply: self.reply,
            requester: self.requester,
        })
    }
}

/// A finished window, not yet delivered.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) profile: CpuProfile,
    pub(crate) requester: Option<SocketAddr>,
    reply: Reply,
}

impl Finished {
    /// Hands the profile to the requester (if it still waits).
    pub(crate) fn deliver(self) {
        let _ = self.reply.send(Ok(self.profile));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start_ns: u64, secs: u64) -> (Window, oneshot::Receiver<Result<CpuProfile, Error>>) {
        let (tx, rx) = oneshot::channel();
        let pending = PendingWindow {
            duration: Duration::from_secs(secs),
            requester: None,
            symbolize: true,
            reply: tx,
        };
        let start = WindowStart {
            wall: SystemTime::UNIX_EPOCH,
            at_ns: start_ns,
            cpu_ns: 1_000,
            dropped: 1,
        };
        (Window::start(pending, 99, ProfileMode::Cpu, start), rx)
    }

    #[test]
    fn interning_dedups_by_thread_and_frames() {
        let mut table = StackTable::default();
        let (a, new_a) = table.intern(b"worker", &[1, 2, 3], 0, 0);
        let (b, new_b) = table.intern(b"worker", &[1, 2, 3], 0, 0);
        let (c, _) = table.intern(b"main", &[1, 2, 3], 0, 0);
        let (d, _) = table.intern(b"", &[9], 0, 0);
        let (e, _) = table.intern(b"worker", &[1, 2], 0, 0);
        assert!(new_a && !new_b);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, e);
        let (f, _) = table.intern(b"worker", &[1, 2, 3], 7, 0);
        let (g, _) = table.intern(b"worker", &[1, 2, 3], 7, SampleState::Waiting.code());
        assert!(f != a && g != f, "labels and state tell stacks apart");
        assert_eq!(&*table.get(d).unwrap().thread, "[unnamed]");
        assert_eq!(table.len(), 6);
    }

    #[test]
    fn a_window_counts_only_its_own_time_range() {
        let mut table = StackTable::default();
        let (id, _) = table.intern(b"t", &[1], 0, 0);
        let (mut w, mut rx) = window(100, 1);
        assert_eq!(w.deadline_ns, 100 + 1_000_000_000);
        assert!(!w.covers(99));
        assert!(w.covers(100));
        w.end = Some(WindowEnd {
            at_ns: 500,
            cpu_ns: 1_000 + 4_000_000,
            dropped: 3,
        });
        assert!(w.covers(499) && !w.covers(500));
        for _ in 0..4 {
            w.count(id, 1);
        }
        let finished = w.finish(&table).unwrap();
        let profile = finished.profile.clone();
        finished.deliver();
        assert_eq!(profile.sample_count(), 4);
        assert_eq!(profile.dropped_samples(), 2);
        assert_eq!(profile.cpu_time(), Duration::from_millis(4));
        // Rescaled: each sample stands for 1 ms of measured CPU.
        assert_eq!(profile.period(), Duration::from_millis(1));
        assert_eq!(rx.try_recv().unwrap().unwrap().sample_count(), 4);
    }

    #[test]
    fn an_abandoned_window_is_detected() {
        let (w, rx) = window(0, 1);
        assert!(!w.abandoned());
        drop(rx);
        assert!(w.abandoned());
    }

    #[test]
    fn compaction_keeps_only_referenced_stacks_and_their_counts() {
        let mut table = StackTable::default();
        let (old, _) = table.intern(b"t", &[1, 2], 0, 0);
        let (kept, _) = table.intern(b"t", &[3, 4], 0, 0);
        let (mut w, _rx) = window(0, 1);
        w.count(kept, 1);
        w.count(kept, 1);
        let mut windows = vec![w];
        table.compact(&mut windows);
        assert_eq!(table.len(), 1);
        let (id, is_new) = table.intern(b"t", &[3, 4], 0, 0);
        assert!(!is_new, "the kept stack is still known");
        assert_eq!(windows[0].counts.get(&id), Some(&(2, 2)));
        let (_, is_new) = table.intern(b"t", &[1, 2], 0, 0);
        assert!(is_new, "the dropped stack is forgotten");
        let _ = old;
    }
}
