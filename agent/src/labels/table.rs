//! The process-wide table of interned label sets, and [`Labels`], the
//! cheap handle (a `u32` id) that per-thread slots and samples carry.
//!
//! Ids are never reused or freed, so a sample's id read in a signal handler
//! resolves to the same set whenever the sampler gets to it. The table is
//! bounded: past [`MAX_LABEL_SETS`] a new set is recorded with every value
//! replaced by [`OVERFLOW_VALUE`] (its keys kept), so the cardinality a
//! service can create — a label from a raw path or a user id — costs
//! bounded memory and shows up as `route=<overflow>` instead of vanishing.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{OnceLock, PoisonError, RwLock};

use super::set::{normalize, LabelSet, RESERVED_KEYS};
pub(crate) use super::slot::NO_LABELS;

/// Most distinct label sets interned; later new sets fold into their
/// overflow set.
pub const MAX_LABEL_SETS: usize = 4096;

/// The value every label of a set beyond [`MAX_LABEL_SETS`] gets.
pub const OVERFLOW_VALUE: &str = "<overflow>";

/// Extra room for the overflow sets themselves (one per distinct key
/// combination); beyond it everything folds into `labels=<overflow>`.
const OVERFLOW_RESERVE: usize = 64;

/// An interned label set: a `Copy` handle to apply to futures
/// ([`instrument`](Labels::instrument)) and code ([`enter`](Labels::enter)).
///
/// Creating one with [`Labels::new`] looks the set up in a process-wide
/// table (a shared lock, and a short exclusive one the first time a set is
/// seen); applying it costs two thread-local stores per poll. Intern once
/// and reuse the handle where futures are created at a high rate.
///
/// ```
/// use stethoscope::labels::Labels;
///
/// let tenant = Labels::new([("tenant", "acme")]);
/// assert_eq!(tenant, Labels::new([("tenant", "acme")]), "interned: same set, same handle");
/// assert_eq!(tenant.set().get("tenant"), Some("acme"));
/// assert!(Labels::current().set().is_empty(), "no labelled code runs here");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Labels {
    pub(crate) id: u32,
}

impl Labels {
    /// Interns `pairs` (sorted by key; a key given twice keeps its last
    /// value; empty keys and the [reserved keys](super::RESERVED_KEYS) are
    /// dropped; keys and values are cut to
    /// [`MAX_LABEL_BYTES`](super::MAX_LABEL_BYTES)).
    pub fn new<I, K, V>(pairs: I) -> Labels
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let owned: Vec<(K, V)> = pairs.into_iter().collect();
        let pairs = normalize(
            owned
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_ref()))
                .filter(|(k, _)| !RESERVED_KEYS.contains(k)),
        );
        Labels {
            id: intern_sorted(&pairs),
        }
    }

    /// No labels.
    pub fn none() -> Labels {
        Labels { id: NO_LABELS }
    }

    /// The labels of the code running on this thread now: those of the
    /// innermost labelled future being polled or [`LabelGuard`](super::LabelGuard)
    /// entered. Hand them to a task spawned from there so its samples
    /// carry them too: `tokio::spawn(Labels::current().instrument(work))`.
    pub fn current() -> Labels {
        Labels {
            id: super::slot::current(),
        }
    }

    /// These labels with `pairs` added (a key present in both takes the
    /// value from `pairs`).
    #[must_use]
    pub fn with<I, K, V>(self, pairs: I) -> Labels
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Labels {
            id: merge(self.id, Labels::new(pairs).id),
        }
    }

    /// The key/value pairs.
    pub fn set(self) -> LabelSet {
        resolve(self.id)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Labels({:?})", self.set())
    }
}

#[derive(Debug)]
struct Table {
    /// Index = id; `sets[0]` is the empty set.
    sets: Vec<LabelSet>,
    /// Hash of the sorted pairs → ids with that hash.
    index: HashMap<u64, Vec<u32>>,
    hasher: RandomState,
    /// Id of `labels=<overflow>`, interned when the table first fills.
    last_resort: Option<u32>,
}

impl Table {
    fn find(&self, hash: u64, pairs: &[(&str, &str)]) -> Option<u32> {
        self.index.get(&hash)?.iter().copied().find(|&id| {
            self.sets
                .get(id as usize)
                .is_some_and(|set| set.equals(pairs))
        })
    }

    fn insert(&mut self, hash: u64, pairs: &[(&str, &str)]) -> u32 {
        let id = u32::try_from(self.sets.len()).unwrap_or(u32::MAX);
        self.sets.push(LabelSet::from_sorted(pairs));
        self.index.entry(hash).or_default().push(id);
        id
    }

    /// Finds or adds `pairs` if there is room below `limit` sets.
    fn find_or_insert(&mut self, pairs: &[(&str, &str)], limit: usize) -> Option<u32> {
        let hash = self.hasher.hash_one(pairs);
        if let Some(id) = self.find(hash, pairs) {
            return Some(id);
        }
        (self.sets.len() < limit).then(|| self.insert(hash, pairs))
    }
}

impl Table {
    fn new() -> Self {
        Table {
            sets: vec![LabelSet::default()],
            index: HashMap::new(),
            hasher: RandomState::new(),
            last_resort: None,
        }
    }
}

fn table() -> &'static RwLock<Table> {
    static TABLE: OnceLock<RwLock<Table>> = OnceLock::new();
    TABLE.get_or_init(|| RwLock::new(Table::new()))
}

/// Sets this thread interned lately: most label sets a thread makes (a
/// route and method per request) repeat, and a hit needs neither the
/// table's lock nor its hasher.
const RECENT_SLOTS: usize = 16;

/// A thread's recently interned sets, replaced round-robin.
struct Recent {
    /// (hash, the pairs as asked for, their id).
    entries: [Option<(u64, LabelSet, u32)>; RECENT_SLOTS],
    next: usize,
}

thread_local! {
    static RECENT: RefCell<Recent> = const {
        RefCell::new(Recent {
            entries: [const { None }; RECENT_SLOTS],
            next: 0,
        })
    };
}

/// FNV-1a over the pairs: cheap, and only used to pick a cache slot (each
/// hit is compared in full).
fn quick_hash(pairs: &[(&str, &str)]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (key, value) in pairs {
        for byte in key.bytes().chain([0xff]).chain(value.bytes()).chain([0xfe]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The id of `pairs` (sorted by unique key), interning it if new. No lock
/// and no allocation when this thread asked for the set lately; a shared
/// lock and no allocation when the set is known.
pub(crate) fn intern_sorted(pairs: &[(&str, &str)]) -> u32 {
    if pairs.is_empty() {
        return NO_LABELS;
    }
    let hash = quick_hash(pairs);
    let cached = RECENT.with(|recent| {
        recent
            .borrow()
            .entries
            .iter()
            .flatten()
            .find(|(h, set, _)| *h == hash && set.equals(pairs))
            .map(|(_, _, id)| *id)
    });
    if let Some(id) = cached {
        return id;
    }
    let id = intern_in(table(), pairs, MAX_LABEL_SETS);
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        let slot = recent.next;
        recent.entries[slot] = Some((hash, LabelSet::from_sorted(pairs), id));
        recent.next = (slot + 1) % RECENT_SLOTS;
    });
    id
}

/// [`intern_sorted`] into `lock`, which keeps at most `cap` sets besides
/// the empty one and the overflow sets.
fn intern_in(lock: &RwLock<Table>, pairs: &[(&str, &str)], cap: usize) -> u32 {
    if pairs.is_empty() {
        return NO_LABELS;
    }
    {
        let table = lock.read().unwrap_or_else(PoisonError::into_inner);
        let hash = table.hasher.hash_one(pairs);
        if let Some(id) = table.find(hash, pairs) {
            return id;
        }
    }
    let mut table = lock.write().unwrap_or_else(PoisonError::into_inner);
    // One for the empty set.
    if let Some(id) = table.find_or_insert(pairs, cap + 1) {
        return id;
    }
    let overflow: Vec<(&str, &str)> = pairs.iter().map(|(k, _)| (*k, OVERFLOW_VALUE)).collect();
    let first_overflow = table.last_resort.is_none() && table.sets.len() == cap + 1;
    if first_overflow {
        tracing::warn!(
            max = cap,
            "too many distinct label sets; new ones are recorded with the value {OVERFLOW_VALUE}"
        );
    }
    if let Some(id) = table.find_or_insert(&overflow, cap + 1 + OVERFLOW_RESERVE) {
        return id;
    }
    match table.last_resort {
        Some(id) => id,
        None => {
            let pairs = [("labels", OVERFLOW_VALUE)];
            let hash = table.hasher.hash_one(&pairs[..]);
            let id = table.insert(hash, &pairs);
            table.last_resort = Some(id);
            id
        }
    }
}

/// The pairs of `id`; empty for an unknown id.
pub(crate) fn resolve(id: u32) -> LabelSet {
    if id == NO_LABELS {
        return LabelSet::default();
    }
    table()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .sets
        .get(id as usize)
        .cloned()
        .unwrap_or_default()
}

/// The id of `parent`'s pairs overridden and extended by `child`'s.
pub(crate) fn merge(parent: u32, child: u32) -> u32 {
    if parent == NO_LABELS || parent == child {
        return child;
    }
    if child == NO_LABELS {
        return parent;
    }
    let (parent, child) = (resolve(parent), resolve(child));
    let merged = LabelSet::from_pairs(parent.iter().chain(child.iter()));
    let pairs: Vec<(&str, &str)> = merged.iter().collect();
    intern_sorted(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_returns_one_id_per_set_and_resolves_it() {
        let a = Labels::new([("route", "/a"), ("method", "GET")]);
        let again = Labels::new(vec![
            ("method".to_owned(), "GET"),
            ("route".to_owned(), "/a"),
        ]);
        assert_eq!(a, again);
        assert_ne!(a, Labels::new([("route", "/b")]));
        assert_eq!(a.set().get("route"), Some("/a"));
        assert_eq!(Labels::new::<[(&str, &str); 0], _, _>([]), Labels::none());
        assert_eq!(
            Labels::new([("state", "x"), ("thread", "y")]),
            Labels::none(),
            "reserved keys are dropped"
        );
        assert!(format!("{a:?}").contains("/a"));
    }

    #[test]
    fn merging_lets_the_child_win_and_keeps_the_rest() {
        let parent = Labels::new([("route", "/a"), ("tenant", "x")]);
        let merged = parent.with([("tenant", "y"), ("job", "z")]);
        let set = merged.set();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [("job", "z"), ("route", "/a"), ("tenant", "y")]
        );
        assert_eq!(merge(NO_LABELS, parent.id), parent.id);
        assert_eq!(merge(parent.id, NO_LABELS), parent.id);
        assert_eq!(resolve(u32::MAX), LabelSet::default());
    }

    #[test]
    fn a_full_table_folds_new_sets_into_their_overflow_set() {
        let table = RwLock::new(Table::new());
        let values: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let ids: Vec<u32> = values
            .iter()
            .map(|v| intern_in(&table, &[("user", v)], 5))
            .collect();
        let resolve = |id: u32| table.read().unwrap().sets[id as usize].clone();
        assert_eq!(resolve(ids[4]).get("user"), Some("4"));
        for &late in &ids[5..] {
            assert_eq!(resolve(late).get("user"), Some(OVERFLOW_VALUE));
            assert_eq!(late, ids[5], "one overflow set per key combination");
        }
        assert_eq!(
            intern_in(&table, &[("user", "0")], 5),
            ids[0],
            "known sets still resolve"
        );
        // Past the overflow reserve, everything is `labels=<overflow>`.
        let keys: Vec<String> = (0..2 * OVERFLOW_RESERVE).map(|i| format!("k{i}")).collect();
        let last = keys
            .iter()
            .map(|k| intern_in(&table, &[(k, "v")], 5))
            .last()
            .unwrap();
        assert_eq!(resolve(last).get("labels"), Some(OVERFLOW_VALUE));
        assert!(table.read().unwrap().sets.len() <= 5 + 1 + OVERFLOW_RESERVE + 1);
    }
}
