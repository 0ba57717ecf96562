//! Per-request profile windows over one shared sample stream.
//!
//! Every sample is interned into a [`StackTable`] once and counted into each
//! open window whose time range contains it, so concurrent requests at the
//! same frequency share one sampler yet each get exactly their own window.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::{CpuProfile, CpuStack};
use crate::Error;

/// Distinct (thread name, stack) pairs seen by one sampler session.
#[derive(Debug, Default)]
pub(crate) struct StackTable {
    index: HashMap<(Arc<str>, Arc<[u64]>), u32>,
    stacks: Vec<(Arc<str>, Arc<[u64]>)>,
    threads: HashMap<Vec<u8>, Arc<str>>,
}

impl StackTable {
    /// Returns the id of this stack and whether it is new.
    pub(crate) fn intern(&mut self, thread_name: &[u8], frames: &[u64]) -> (u32, bool) {
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
        let frames: Arc<[u64]> = Arc::from(frames);
        let key = (thread, frames);
        if let Some(&id) = self.index.get(&key) {
            return (id, false);
        }
        let id = self.stacks.len() as u32;
        self.stacks.push(key.clone());
        self.index.insert(key, id);
        (id, true)
    }

    pub(crate) fn get(&self, id: u32) -> Option<&(Arc<str>, Arc<[u64]>)> {
        self.stacks.get(id as usize)
    }

    pub(crate) fn len(&self) -> usize {
        self.stacks.len()
    }
}

/// When and how a window ended: monotonic time and process CPU time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowEnd {
    pub(crate) at_ns: u64,
    pub(crate) cpu_ns: u64,
    pub(crate) dropped_total: u64,
}

/// One request's profile window.
#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) hz: u32,
    pub(crate) requester: Option<SocketAddr>,
    pub(crate) started_at: SystemTime,
    pub(crate) start_ns: u64,
    pub(crate) deadline_ns: u64,
    pub(crate) cpu_start_ns: u64,
    /// Sampler drop counter when the window joined the control thread.
    pub(crate) dropped_at_start: Option<u64>,
    pub(crate) end: Option<WindowEnd>,
    counts: HashMap<u32, u64>,
    samples: u64,
    reply: oneshot::Sender<Result<CpuProfile, Error>>,
}

impl Window {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        hz: u32,
        requester: Option<SocketAddr>,
        started_at: SystemTime,
        start_ns: u64,
        duration: Duration,
        cpu_start_ns: u64,
        reply: oneshot::Sender<Result<CpuProfile, Error>>,
    ) -> Self {
        let length = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Self {
            hz,
            requester,
            started_at,
            start_ns,
            deadline_ns: start_ns.saturating_add(length),
            cpu_start_ns,
            dropped_at_start: None,
            end: None,
            counts: HashMap::new(),
            samples: 0,
            reply,
        }
    }

    /// Whether a sample taken at `timestamp_ns` belongs to this window.
    pub(crate) fn covers(&self, timestamp_ns: u64) -> bool {
        timestamp_ns >= self.start_ns && self.end.is_none_or(|end| timestamp_ns < end.at_ns)
    }

    pub(crate) fn count(&mut self, stack: u32) {
        *self.counts.entry(stack).or_insert(0) += 1;
        self.samples += 1;
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
        let cpu_time = Duration::from_nanos(end.cpu_ns.saturating_sub(self.cpu_start_ns));
        let duration = Duration::from_nanos(end.at_ns.saturating_sub(self.start_ns));
        let mut stacks: Vec<CpuStack> = self
            .counts
            .iter()
            .filter_map(|(&id, &samples)| {
                let (thread, frames) = table.get(id)?;
                Some(CpuStack {
                    thread: Arc::clone(thread),
                    frames: Arc::clone(frames),
                    samples,
                })
            })
            .collect();
        stacks.sort_by_key(|s| std::cmp::Reverse(s.samples));
        let profile = CpuProfile {
            started_at: self.started_at,
            duration,
            hz: self.hz,
            cpu_time,
            samples: self.samples,
            dropped: end
                .dropped_total
                .saturating_sub(self.dropped_at_start.unwrap_or(end.dropped_total)),
            stacks,
        };
        Some(Finished {
            profile,
            reply: self.reply,
            requester: self.requester,
        })
    }

    /// Tells the requester the sampler went away.
    pub(crate) fn fail(self, error: Error) {
        let _ = self.reply.send(Err(error));
    }
}

/// A finished window, not yet delivered.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) profile: CpuProfile,
    pub(crate) requester: Option<SocketAddr>,
    reply: oneshot::Sender<Result<CpuProfile, Error>>,
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
        let w = Window::new(
            99,
            None,
            SystemTime::UNIX_EPOCH,
            start_ns,
            Duration::from_secs(secs),
            1_000,
            tx,
        );
        (w, rx)
    }

    #[test]
    fn interning_dedups_by_thread_and_frames() {
        let mut table = StackTable::default();
        let (a, new_a) = table.intern(b"worker", &[1, 2, 3]);
        let (b, new_b) = table.intern(b"worker", &[1, 2, 3]);
        let (c, _) = table.intern(b"main", &[1, 2, 3]);
        let (d, _) = table.intern(b"", &[9]);
        assert!(new_a && !new_b);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(&*table.get(d).unwrap().0, "[unnamed]");
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn a_window_counts_only_its_own_time_range() {
        let mut table = StackTable::default();
        let (id, _) = table.intern(b"t", &[1]);
        let (mut w, mut rx) = window(100, 1);
        assert!(!w.covers(99));
        assert!(w.covers(100));
        w.end = Some(WindowEnd {
            at_ns: 500,
            cpu_ns: 1_000 + 4_000_000,
            dropped_total: 3,
        });
        w.dropped_at_start = Some(1);
        assert!(w.covers(499) && !w.covers(500));
        for _ in 0..4 {
            w.count(id);
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
}
