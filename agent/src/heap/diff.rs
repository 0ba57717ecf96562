//! Comparing two heap snapshots: which stacks grew, by how much.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::HeapSnapshot;
use crate::labels::LabelSet;
use crate::profile::{Format, Profile, RawStack, View};
use crate::Error;

/// What a diff compares the base snapshot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffTarget {
    /// A kept snapshot.
    Snapshot(u64),
    /// The heap now (a fresh, unkept snapshot).
    Now,
}

impl std::fmt::Display for DiffTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiffTarget::Snapshot(id) => write!(f, "{id}"),
            DiffTarget::Now => f.write_str("now"),
        }
    }
}

/// A kept snapshot's id as a number, the heap now as `"now"`.
impl Serialize for DiffTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            DiffTarget::Snapshot(id) => serializer.serialize_u64(*id),
            DiffTarget::Now => serializer.serialize_str("now"),
        }
    }
}

impl DiffTarget {
    /// Parses `target=`: a snapshot id or `now`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "now" => Some(DiffTarget::Now),
            id => id.parse().ok().map(DiffTarget::Snapshot),
        }
    }
}

/// One stack's change between the snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiffEntry {
    /// Function names, leaf (the allocating code) first.
    pub frames: Vec<Arc<str>>,
    /// Change in estimated live bytes (negative: shrank).
    pub delta_bytes: i64,
    /// Change in estimated live objects.
    pub delta_objects: i64,
    /// Estimated live bytes in the base snapshot.
    pub base_bytes: i64,
    /// Estimated live bytes in the target.
    pub target_bytes: i64,
    /// The labels of the code that allocated (a route, a task), when the
    /// agent's sample hook saw it; a stack held by several label sets
    /// appears once per set.
    pub labels: LabelSet,
    addresses: Vec<u64>,
}

/// The difference between two heap snapshots, stacks ranked by growth.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SnapshotDiff {
    /// Base snapshot id.
    pub base: u64,
    /// What the base was compared with.
    pub target: DiffTarget,
    /// Sum of all stacks' byte changes.
    pub growth_bytes: i64,
    /// Sum of all stacks' object changes.
    pub growth_objects: i64,
    /// Every stack that changed: the application's by `delta_bytes`
    /// descending, then the agent's own (marked `agent` in JSON) the same
    /// way.
    pub entries: Vec<DiffEntry>,
    base_snapshot: Arc<HeapSnapshot>,
    target_snapshot: Arc<HeapSnapshot>,
}

#[derive(Default, Clone, Copy)]
struct Side {
    objects: i64,
    bytes: i64,
}

/// A stack and the labels that allocated on it.
type StackKey = (Vec<u64>, LabelSet);

fn by_stack(profile: &Profile) -> HashMap<StackKey, (Side, usize)> {
    let mut stacks: HashMap<StackKey, (Side, usize)> = HashMap::new();
    for (index, sample) in profile.samples.iter().enumerate() {
        let addresses: Vec<u64> = sample
            .locations
            .iter()
            .filter_map(|&l| profile.locations.get(l).map(|l| l.address))
            .collect();
        let key = (addresses, sample.labels.clone());
        let entry = stacks.entry(key).or_insert((Side::default(), index));
        entry.0.objects += sample.values.first().copied().unwrap_or(0);
        entry.0.bytes += sample.values.get(1).copied().unwrap_or(0);
    }
    stacks
}

use crate::profile::frames::{is_agent_stack, is_library as is_library_frame};

/// One line for a stack: its first three application functions (library
/// frames between them skipped), with the library function that allocated
/// in brackets.
fn describe_stack(frames: &[Arc<str>]) -> String {
    let Some(leaf) = frames.first() else {
        return "[unknown]".to_owned();
    };
    let application: Vec<&str> = frames
        .iter()
        .filter(|f| !is_library_frame(f))
        .take(3)
        .map(|f| &**f)
        .collect();
    if application.is_empty() {
        let shown: Vec<&str> = frames.iter().take(3).map(|f| &**f).collect();
        return shown.join(" ← ");
    }
    let mut line = application.join(" ← ");
    if is_library_frame(leaf) {
        line.push_str(&format!("  [in {leaf}]"));
    }
    if is_agent_stack(frames) {
        line.push_str("  (stethoscope agent)");
    }
    line
}

fn frames_of(profile: &Profile, sample_index: usize) -> Vec<Arc<str>> {
    let Some(sample) = profile.samples.get(sample_index) else {
        return Vec::new();
    };
    let mut frames: Vec<Arc<str>> = profile
        .frames_root_first(sample)
        .map(|f| Arc::clone(&f.function))
        .collect();
    frames.reverse();
    frames
}

impl SnapshotDiff {
    /// Compares kept snapshot `base` with kept snapshot `target` stack by
    /// stack (stacks are identified by their addresses, which do not move
    /// within a process).
    pub fn between(base: &Arc<HeapSnapshot>, target: &Arc<HeapSnapshot>) -> Self {
        Self::compare(base, target, DiffTarget::Snapshot(target.id))
    }

    /// Compares kept snapshot `base` with `now`, a snapshot just taken and
    /// not kept.
    pub(crate) fn until_now(base: &Arc<HeapSnapshot>, now: &Arc<HeapSnapshot>) -> Self {
        Self::compare(base, now, DiffTarget::Now)
    }

    fn compare(
        base: &Arc<HeapSnapshot>,
        target_snapshot: &Arc<HeapSnapshot>,
        target: DiffTarget,
    ) -> Self {
        let (base_snapshot, target_snapshot) = (base, target_snapshot);
        let before = by_stack(&base_snapshot.profile);
        let after = by_stack(&target_snapshot.profile);
        let mut entries = Vec::new();
        for (key, (now, index)) in &after {
            let (was, _) = before.get(key).copied().unwrap_or_default();
            entries.push(DiffEntry {
                frames: frames_of(&target_snapshot.profile, *index),
                delta_bytes: now.bytes - was.bytes,
                delta_objects: now.objects - was.objects,
                base_bytes: was.bytes,
                target_bytes: now.bytes,
                labels: key.1.clone(),
                addresses: key.0.clone(),
            });
        }
        for (key, (was, index)) in &before {
            if !after.contains_key(key) {
                entries.push(DiffEntry {
                    frames: frames_of(&base_snapshot.profile, *index),
                    delta_bytes: -was.bytes,
                    delta_objects: -was.objects,
                    base_bytes: was.bytes,
                    target_bytes: 0,
                    labels: key.1.clone(),
                    addresses: key.0.clone(),
                });
            }
        }
        entries.retain(|e| e.delta_bytes != 0 || e.delta_objects != 0);
        // The application's stacks lead; the agent's own (its symbol
        // cache, grown by symbolizing the very snapshots compared) follow.
        entries.sort_by(|a, b| {
            is_agent_stack(&a.frames)
                .cmp(&is_agent_stack(&b.frames))
                .then(b.delta_bytes.cmp(&a.delta_bytes))
                .then(b.delta_objects.cmp(&a.delta_objects))
        });
        SnapshotDiff {
            base: base_snapshot.id,
            target,
            growth_bytes: entries.iter().map(|e| e.delta_bytes).sum(),
            growth_objects: entries.iter().map(|e| e.delta_objects).sum(),
            entries,
            base_snapshot: Arc::clone(base_snapshot),
            target_snapshot: Arc::clone(target_snapshot),
        }
    }

    fn title(&self) -> String {
        format!(
            "Heap growth from snapshot {} ({}) to {} ({}): {:+.1} MiB",
            self.base,
            crate::units::rfc3339(self.base_snapshot.taken_at),
            self.target,
            crate::units::rfc3339(self.target_snapshot.taken_at),
            self.growth_bytes as f64 / (1024.0 * 1024.0)
        )
    }

    /// Renders the diff: `text` (top `limit` stacks), `json` (the first
    /// `limit` stacks), `svg` (a differential flame graph: widths are the
    /// target's bytes, red grew, blue shrank) or `pprof` (a delta profile;
    /// values may be negative). Folded is the differential folded input.
    ///
    /// `view`'s focus keeps the stacks through a matching function in every
    /// format but pprof; its trim folds plumbing in the flame graph and the
    /// folded lines (text and JSON already lead with the application's
    /// frames and keep every frame in JSON).
    pub fn render(&self, format: Format, limit: usize, view: &View) -> Result<Vec<u8>, Error> {
        match format {
            Format::Json => self.json(limit, view),
            Format::Text => Ok(self.text(limit, view).into_bytes()),
            Format::Svg => crate::profile::differential_svg(
                &self.base_snapshot.profile,
                &self.target_snapshot.profile,
                view,
                &self.title(),
            ),
            Format::Folded => Ok(crate::profile::differential_folded(
                &self.base_snapshot.profile,
                &self.target_snapshot.profile,
                view,
            )
            .into_bytes()),
            Format::Pprof => self.delta_profile().render(Format::Pprof),
        }
    }

    /// The entries `view`'s focus keeps.
    fn shown<'a>(&'a self, view: &'a View) -> impl Iterator<Item = &'a DiffEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| match view.focus_text() {
                None => true,
                Some(focus) => e.frames.iter().any(|f| f.contains(focus)),
            })
    }

    fn json(&self, limit: usize, view: &View) -> Result<Vec<u8>, Error> {
        #[derive(Serialize)]
        struct Stack<'a> {
            delta_bytes: i64,
            delta_objects: i64,
            base_bytes: i64,
            target_bytes: i64,
            /// Allocated by the agent itself (symbolizer, snapshots).
            agent: bool,
            /// The innermost function the service wrote (the leaf when
            /// every frame is a library's).
            site: &'a str,
            /// The stack in one line: its first three application
            /// functions, innermost first, with the library function that
            /// allocated in brackets (as the text view shows it).
            summary: String,
            /// The labels of the code that allocated (empty: unknown).
            labels: &'a LabelSet,
            frames: Vec<&'a str>,
        }
        #[derive(Serialize)]
        struct Document<'a> {
            base: u64,
            target: DiffTarget,
            base_taken_at: String,
            target_taken_at: String,
            growth_bytes: i64,
            growth_objects: i64,
            stacks_changed: usize,
            stacks: Vec<Stack<'a>>,
        }
        let document = Document {
            base: self.base,
            target: self.target,
            base_taken_at: crate::units::rfc3339(self.base_snapshot.taken_at),
            target_taken_at: crate::units::rfc3339(self.target_snapshot.taken_at),
            growth_bytes: self.growth_bytes,
            growth_objects: self.growth_objects,
            stacks_changed: self.entries.len(),
            stacks: self
                .shown(view)
                .take(limit)
                .map(|e| Stack {
                    delta_bytes: e.delta_bytes,
                    delta_objects: e.delta_objects,
                    base_bytes: e.base_bytes,
                    target_bytes: e.target_bytes,
                    agent: is_agent_stack(&e.frames),
                    site: e
                        .frames
                        .iter()
                        .find(|f| !is_library_frame(f))
                        .or_else(|| e.frames.first())
                        .map_or("[unknown]", |f| &**f),
                    summary: describe_stack(&e.frames),
                    labels: &e.labels,
                    frames: e.frames.iter().map(|f| &**f).collect(),
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&document).map_err(|e| Error::Encode {
            format: "json",
            source: e.into(),
        })
    }

    fn text(&self, limit: usize, view: &View) -> String {
        let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title());
        let _ = writeln!(
            out,
            "{} stacks changed, {:+} objects; estimates from jemalloc's samples",
            self.entries.len(),
            self.growth_objects
        );
        let _ = writeln!(
            out,
            "{:>12} {:>12} {:>11} {:>11}  stack (allocating function ← callers)",
            "Δ MiB", "Δ objects", "base MiB", "now MiB"
        );
        for entry in self.shown(view).take(limit) {
            let _ = writeln!(
                out,
                "{:>+12.2} {:>+12} {:>11.2} {:>11.2}  {}",
                mib(entry.delta_bytes),
                entry.delta_objects,
                mib(entry.base_bytes),
                mib(entry.target_bytes),
                describe_stack(&entry.frames),
            );
            if !entry.labels.is_empty() {
                let _ = writeln!(out, "{:>51}  [{}]", "", entry.labels);
            }
        }
        out
    }

    /// A pprof profile of the changes: `inuse_objects` and `inuse_space`
    /// deltas per stack (negative where the heap shrank).
    fn delta_profile(&self) -> Profile {
        let meta = super::heap_meta(
            self.target_snapshot.profile.period,
            self.base_snapshot.taken_at,
            self.target_snapshot
                .taken_at
                .duration_since(self.base_snapshot.taken_at)
                .unwrap_or(Duration::ZERO),
            self.title(),
            vec![format!(
                "delta profile: snapshot {} subtracted from {}; negative values shrank",
                self.base, self.target
            )],
            true,
        );
        super::build_profile(
            meta,
            self.entries.iter().map(|e| RawStack {
                thread: None,
                addresses: &e.addresses,
                values: vec![e.delta_objects, e.delta_bytes],
                labels: e.labels.clone(),
            }),
        )
    }

    /// The growth per value of a label key (`by=route`): which routes' (or
    /// tasks') allocations hold it; stacks without the key count as
    /// `(unlabelled)`.
    pub fn totals_by_label(&self, key: &str) -> crate::profile::LabelTotals {
        self.delta_profile().totals_by_label(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: u64, dump: &str) -> Arc<HeapSnapshot> {
        let dump = super::super::dump::parse(dump).unwrap();
        let profile = super::super::heap_profile(&dump, std::time::SystemTime::now(), false);
        Arc::new(super::super::snapshot_of(id, profile))
    }

    #[test]
    fn growth_ranks_first_and_shrinkage_is_negative_in_every_format() {
        // 64 KiB objects at a 64 KiB interval; 0x1001 grows 1 → 9 objects,
        // 0x2001 shrinks 4 → 1, 0x3001 is freed entirely, 0x4001 is new.
        let base = snapshot(
            1,
            "heap_v2/65536\n  t*: 9: 589824 [0: 0]\n\
             @ 0x1001\n  t*: 1: 65536 [0: 0]\n\
             @ 0x2001\n  t*: 4: 262144 [0: 0]\n\
             @ 0x3001\n  t*: 4: 262144 [0: 0]\n",
        );
        let target = snapshot(
            2,
            "heap_v2/65536\n  t*: 12: 786432 [0: 0]\n\
             @ 0x1001\n  t*: 9: 589824 [0: 0]\n\
             @ 0x2001\n  t*: 1: 65536 [0: 0]\n\
             @ 0x4001\n  t*: 2: 131072 [0: 0]\n",
        );
        let diff = SnapshotDiff::between(&base, &target);
        let deltas: Vec<(u64, i64)> = diff
            .entries
            .iter()
            .map(|e| (e.addresses[0], e.delta_objects))
            .collect();
        // Growth first, by bytes; what shrank or was freed last, negative.
        assert_eq!(deltas.len(), 4, "{deltas:?}");
        assert_eq!(deltas[0].0, 0x1000, "{deltas:?}");
        assert!(deltas[0].1 > 0 && deltas[1].1 > 0, "{deltas:?}");
        assert!(deltas[2].1 < 0 && deltas[3].1 < 0, "{deltas:?}");
        assert!(diff.entries[3].delta_bytes < 0 && diff.entries[3].target_bytes == 0);

        let delta = diff.delta_profile();
        assert_eq!(delta.samples.len(), 4);
        let negative = delta.samples.iter().filter(|s| s.values[1] < 0).count();
        assert_eq!(
            negative, 2,
            "negative values survive into the delta profile"
        );
        let total: i64 = delta.samples.iter().map(|s| s.values[1]).sum();
        assert_eq!(total, diff.growth_bytes);
        let pprof = diff.render(Format::Pprof, 10, &View::default()).unwrap();
        assert_eq!(&pprof[..2], &[0x1f, 0x8b], "gzip");
        let json: serde_json::Value =
            serde_json::from_slice(&diff.render(Format::Json, 10, &View::default()).unwrap())
                .unwrap();
        let json_deltas: Vec<i64> = json["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["delta_bytes"].as_i64().unwrap())
            .collect();
        assert_eq!(json_deltas.len(), 4, "{json}");
        assert!(json_deltas[0] > 0 && json_deltas[3] < 0, "{json}");
    }

    #[test]
    fn stacks_are_described_by_their_first_application_frame() {
        let frames: Vec<Arc<str>> = [
            "alloc::raw_vec::RawVecInner<A>::try_allocate_in",
            "<alloc::vec::Vec<T> as core::iter::traits::collect::FromIterator<T>>::from_iter",
            "my_service::cache::fill",
            "core::iter::adapters::map::map_fold",
            "my_service::cache::load",
            "my_service::main",
            "my_service::start",
        ]
        .into_iter()
        .map(Arc::from)
        .collect();
        let line = describe_stack(&frames);
        assert!(
            line.starts_with(
                "my_service::cache::fill ← my_service::cache::load ← my_service::main  "
            ),
            "{line}"
        );
        assert!(
            line.ends_with("[in alloc::raw_vec::RawVecInner<A>::try_allocate_in]"),
            "{line}"
        );
        let own: Vec<Arc<str>> = ["my::leaf", "my::caller"]
            .into_iter()
            .map(Arc::from)
            .collect();
        assert_eq!(describe_stack(&own), "my::leaf ← my::caller");
        let agent: Vec<Arc<str>> = ["gimli::parse", "stethoscope::profile::symbolize::resolve"]
            .into_iter()
            .map(Arc::from)
            .collect();
        assert!(describe_stack(&agent).ends_with("(stethoscope agent)"));
        assert_eq!(describe_stack(&[]), "[unknown]");
    }

    #[test]
    fn library_frames_include_qualified_impls_of_library_traits() {
        assert!(is_library_frame(
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem"
        ));
        assert!(is_library_frame(
            "<alloc::raw_vec::RawVecInner>::finish_grow"
        ));
        assert!(is_library_frame("core::iter::adapters::map::map_fold"));
        assert!(!is_library_frame(
            "<my::Cache as core::clone::Clone>::clone"
        ));
        assert!(!is_library_frame("<u8 as my::Encode>::encode"));
        assert!(!is_library_frame("my::fill"));
    }

    #[test]
    fn targets_parse() {
        assert_eq!(DiffTarget::parse("now"), Some(DiffTarget::Now));
        assert_eq!(DiffTarget::parse("12"), Some(DiffTarget::Snapshot(12)));
        assert_eq!(DiffTarget::parse("-1"), None);
    }
}
