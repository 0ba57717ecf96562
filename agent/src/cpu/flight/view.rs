//! What a look-back reports: its coverage, the pins and the ring's state,
//! and the merge of segments into one profile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::ring::*;
use super::*;
use crate::cpu::{CpuProfile, CpuStack, ProfileMode};

/// What a look-back covers, against what was asked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Coverage {
    /// Start asked for.
    #[serde(serialize_with = "crate::report::time")]
    pub requested_from: SystemTime,
    /// End asked for.
    #[serde(serialize_with = "crate::report::time")]
    pub requested_to: SystemTime,
    /// Start of the first segment answered (segments are whole).
    #[serde(serialize_with = "crate::report::optional_time")]
    pub from: Option<SystemTime>,
    /// End of the last segment answered.
    #[serde(serialize_with = "crate::report::optional_time")]
    pub to: Option<SystemTime>,
    /// Segments answered.
    pub segments: usize,
    /// The ring held less than was asked (the start is older than its
    /// oldest segment, or the ring was not fed for part of the window).
    pub partial: bool,
    /// Why it is partial, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A pinned incident, as the doctor lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PinInfo {
    /// Id for `GET /debug/pprof/profile?pin=ID`.
    pub id: u64,
    /// What it was pinned for.
    pub reason: String,
    /// Range it covers so far.
    #[serde(serialize_with = "crate::report::time")]
    pub from: SystemTime,
    /// End of the range.
    #[serde(serialize_with = "crate::report::time")]
    pub to: SystemTime,
    /// Segments held.
    pub segments: usize,
}

/// The flight recorder's state for `/metrics` and `/debug/pprof/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FlightStatus {
    /// The ring's own rate.
    pub hz: u32,
    /// Segments held (closed, plus the open one).
    pub segments: usize,
    /// Segments held by pins only.
    pub pinned_segments: usize,
    /// Distinct stacks held.
    pub stacks: usize,
    /// Memory held, estimated.
    pub memory_bytes: usize,
    /// Seconds of history held.
    pub history_ms: u64,
}

/// A segment as a look-back reads it.
pub(super) struct SegmentView<'a> {
    pub(super) wall_start: SystemTime,
    pub(super) wall_end: SystemTime,
    pub(super) cpu_ns: u64,
    pub(super) covered_ns: u64,
    pub(super) length_ns: u64,
    pub(super) samples: u64,
    pub(super) rates: (u32, u32),
    pub(super) entries: Box<dyn Iterator<Item = &'a Count> + 'a>,
}

impl<'a> SegmentView<'a> {
    /// A closed segment as it was sealed.
    pub(super) fn of(s: &'a Segment) -> Self {
        SegmentView {
            wall_start: s.wall_start,
            wall_end: s.wall_end(),
            cpu_ns: s.cpu_ns(),
            covered_ns: s.covered_ns(),
            length_ns: s.end_ns.saturating_sub(s.start_ns),
            samples: s.samples,
            rates: s.rates,
            entries: Box::new(s.entries()),
        }
    }
}

/// Merges segments into one profile: counts and weights per stack, CPU
/// time summed; says what is covered.
pub(super) fn build(
    hz: u32,
    from: SystemTime,
    to: SystemTime,
    oldest: Option<SystemTime>,
    segments: Vec<SegmentView<'_>>,
) -> (CpuProfile, Coverage) {
    let mut merged: HashMap<usize, (Arc<RingStack>, u64, u64)> = HashMap::new();
    let (mut cpu_ns, mut samples, mut covered_ns, mut length_ns) = (0u64, 0u64, 0u64, 0u64);
    let mut rates = (u32::MAX, 0u32);
    let first = segments.first().map(|s| s.wall_start);
    let last = segments.last().map(|s| s.wall_end);
    let count = segments.len();
    for segment in segments {
        cpu_ns += segment.cpu_ns;
        samples += segment.samples;
        covered_ns += segment.covered_ns;
        length_ns += segment.length_ns;
        if segment.samples > 0 {
            rates = (rates.0.min(segment.rates.0), rates.1.max(segment.rates.1));
        }
        for entry in segment.entries {
            let slot = merged
                .entry(Arc::as_ptr(&entry.stack) as usize)
                .or_insert_with(|| (Arc::clone(&entry.stack), 0, 0));
            slot.1 += entry.samples;
            slot.2 += entry.weight;
        }
    }
    let mut stacks: Vec<CpuStack> = merged
        .into_values()
        .map(|(stack, samples, weight)| CpuStack {
            thread: Arc::clone(&stack.thread),
            frames: Arc::clone(&stack.frames),
            labels: crate::labels::resolve(stack.labels),
            samples,
            weight,
        })
        .collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s.weight));
    let mut notes = Vec::new();
    let mut partial = false;
    if count == 0 {
        partial = true;
        notes.push("the ring holds nothing in this window".to_owned());
    } else if oldest
        .is_some_and(|oldest| oldest.duration_since(from).unwrap_or_default() > PARTIAL_TOLERANCE)
        && first == oldest
    {
        partial = true;
        notes.push(format!(
            "the ring starts at {}: the window's first {:.1} s are not covered",
            crate::units::rfc3339(first.unwrap_or(from)),
            first
                .and_then(|f| f.duration_since(from).ok())
                .map_or(0.0, |d| d.as_secs_f64())
        ));
    }
    let tolerance_ns = u64::try_from(PARTIAL_TOLERANCE.as_nanos()).unwrap_or(u64::MAX);
    if covered_ns.saturating_add(tolerance_ns) < length_ns {
        partial = true;
        notes.push(format!(
            "{:.1} s of the {:.1} s were not sampled (the sampler was stopped or took a wall-clock profile)",
            (length_ns - covered_ns) as f64 / 1e9,
            length_ns as f64 / 1e9
        ));
    }
    let rate_note = if rates.1 > rates.0 {
        format!(
            "continuous profile: {count} segments, sampled at {} Hz and at {} Hz during on-demand profiles (each sample weighted by its period)",
            rates.0, rates.1
        )
    } else {
        format!("continuous profile: {count} segments at {hz} Hz")
    };
    // The coverage leads: a flame graph's one-line subtitle keeps only the
    // first comments, and a partial look-back must say so there.
    let gaps = notes.join("; ");
    let headline = if partial {
        format!("look-back, PARTIAL: {gaps}")
    } else {
        format!("look-back, fully covered by {count} segments")
    };
    notes = vec![headline, rate_note];
    let started_at = first.unwrap_or(from);
    let duration = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let profile = CpuProfile {
        started_at,
        duration,
        hz,
        mode: ProfileMode::Cpu,
        cpu_time: Duration::from_nanos(cpu_ns),
        samples,
        dropped: 0,
        stacks,
        notes: notes.clone(),
    };
    let coverage = Coverage {
        requested_from: from,
        requested_to: to,
        from: first,
        to: last,
        segments: count,
        partial,
        note: partial.then_some(gaps),
    };
    (profile, coverage)
}
