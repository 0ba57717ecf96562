//! The ring's data: stacks shared between segments, the segments
//! themselves with their counts, and the pins that outlive the ring.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A stack the ring holds, shared by every segment that counted it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct RingStack {
    pub(super) thread: Arc<str>,
    pub(super) frames: Arc<[u64]>,
    /// Label-set id ([`crate::labels`]).
    pub(super) labels: u32,
}

impl RingStack {
    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + 16 + self.frames.len() * 8 + 16
    }
}

#[derive(Debug, Clone)]
pub(super) struct Count {
    pub(super) stack: Arc<RingStack>,
    pub(super) samples: u64,
    /// Sum of the periods (ns) of the samples: their weight.
    pub(super) weight: u64,
}

/// One segment of the ring.
#[derive(Debug)]
pub(super) struct Segment {
    /// Its number among the ring's closed segments (from 0; set at close).
    pub(super) seq: u64,
    pub(super) wall_start: SystemTime,
    pub(super) start_ns: u64,
    pub(super) end_ns: u64,
    pub(super) cpu_start_ns: u64,
    pub(super) cpu_end_ns: u64,
    /// Time and CPU time of the segment during which the ring was not fed.
    pub(super) uncovered_ns: u64,
    pub(super) uncovered_cpu_ns: u64,
    pub(super) counts: HashMap<usize, Count>,
    pub(super) samples: u64,
    pub(super) weight: u64,
    pub(super) truncated: Option<Count>,
    /// Lowest and highest rate the samples were taken at.
    pub(super) rates: (u32, u32),
    /// Closed segments: the counts as a list, heaviest first.
    pub(super) closed: Vec<Count>,
}

impl Segment {
    pub(super) fn open(wall: SystemTime, now_ns: u64, cpu_ns: u64) -> Self {
        Segment {
            seq: 0,
            wall_start: wall,
            start_ns: now_ns,
            end_ns: now_ns,
            cpu_start_ns: cpu_ns,
            cpu_end_ns: cpu_ns,
            uncovered_ns: 0,
            uncovered_cpu_ns: 0,
            counts: HashMap::new(),
            samples: 0,
            weight: 0,
            truncated: None,
            rates: (u32::MAX, 0),
            closed: Vec::new(),
        }
    }

    pub(super) fn wall_end(&self) -> SystemTime {
        self.wall_start + Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }

    pub(super) fn cpu_ns(&self) -> u64 {
        self.cpu_end_ns
            .saturating_sub(self.cpu_start_ns)
            .saturating_sub(self.uncovered_cpu_ns)
    }

    pub(super) fn covered_ns(&self) -> u64 {
        self.end_ns
            .saturating_sub(self.start_ns)
            .saturating_sub(self.uncovered_ns)
    }

    pub(super) fn close(&mut self, now_ns: u64, cpu_ns: u64) {
        self.end_ns = now_ns;
        self.cpu_end_ns = cpu_ns;
        // The map's table goes with it: closed segments keep a list.
        let mut closed: Vec<Count> = std::mem::take(&mut self.counts).into_values().collect();
        closed.extend(self.truncated.take());
        closed.sort_by_key(|c| std::cmp::Reverse(c.weight));
        closed.shrink_to_fit();
        self.closed = closed;
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = &Count> {
        self.closed
            .iter()
            .chain(self.counts.values())
            .chain(self.truncated.as_ref())
    }

    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.closed.capacity() * std::mem::size_of::<Count>()
            + self.counts.capacity() * (std::mem::size_of::<Count>() + 16)
    }
}

/// A pin: closed segments kept past the ring for a finding.
#[derive(Debug)]
pub(super) struct Pin {
    pub(super) id: u64,
    pub(super) reason: String,
    /// Wall-clock range the pin wants.
    pub(super) from: SystemTime,
    pub(super) to: SystemTime,
    pub(super) segments: Vec<Arc<Segment>>,
}

#[derive(Debug)]
pub(super) struct Ring {
    pub(super) open: Option<Segment>,
    pub(super) closed: VecDeque<Arc<Segment>>,
    pub(super) pins: VecDeque<Pin>,
    pub(super) next_pin: u64,
    /// Stack hash → stacks with that hash.
    pub(super) stacks: HashMap<u64, Vec<Arc<RingStack>>>,
    pub(super) stack_bytes: usize,
    pub(super) hasher: RandomState,
    /// Since when (monotonic ns, process CPU ns) the ring is not fed.
    pub(super) paused: Option<(u64, u64)>,
    /// Segments closed so far: the next closed segment's number.
    pub(super) closed_total: u64,
}
