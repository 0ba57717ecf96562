//! [`LabelSet`]: the key/value pairs a sample carries, sorted by key.

use std::fmt;
use std::sync::Arc;

/// Longest label key or value kept, in bytes; longer ones are cut at a
/// character boundary.
pub const MAX_LABEL_BYTES: usize = 256;

/// Label keys the agent sets itself: `thread` (every pprof sample's thread
/// name) and `state` (a wall-clock sample's `running`, `waiting` or
/// `parked`). Pairs with these keys given to [`Labels::new`](super::Labels::new)
/// are dropped.
pub const RESERVED_KEYS: [&str; 2] = ["thread", "state"];

/// Key/value labels, sorted by key, each key at most once. Cheap to clone.
///
/// ```
/// use stethoscope::labels::Labels;
///
/// let set = Labels::new([("tenant", "a"), ("route", "/items/{id}")]).set();
/// assert_eq!(set.get("tenant"), Some("a"));
/// let keys: Vec<&str> = set.iter().map(|(k, _)| k).collect();
/// assert_eq!(keys, ["route", "tenant"]);
/// assert_eq!(set.to_string(), "route=/items/{id},tenant=a");
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSet {
    /// `None` for the empty set, which then allocates nothing.
    pairs: Option<Arc<[Pair]>>,
}

/// One key and its value.
type Pair = (Arc<str>, Arc<str>);

impl LabelSet {
    /// A set from pairs: sorted by key; a key given twice keeps its last
    /// value; empty keys are dropped, long keys and values are cut to
    /// [`MAX_LABEL_BYTES`]. Reserved keys are kept: the agent builds its
    /// own sets with them.
    pub(crate) fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::from_sorted(&normalize(pairs))
    }

    /// A set from pairs already sorted by unique key.
    pub(crate) fn from_sorted(pairs: &[(&str, &str)]) -> Self {
        if pairs.is_empty() {
            return LabelSet::default();
        }
        LabelSet {
            pairs: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
                    .collect(),
            ),
        }
    }

    /// The value of `key`, if the set has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs
            .iter()
            .flat_map(|pairs| pairs.iter())
            .map(|(k, v)| (&**k, &**v))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.as_ref().map_or(0, |p| p.len())
    }

    /// Whether the set has no pairs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This set with `key` set to `value` (replacing an existing value).
    pub(crate) fn with(&self, key: &str, value: &str) -> LabelSet {
        LabelSet::from_pairs(self.iter().chain([(key, value)]))
    }

    /// Whether the pairs are exactly `pairs` (sorted by key).
    pub(crate) fn equals(&self, pairs: &[(&str, &str)]) -> bool {
        self.len() == pairs.len() && self.iter().zip(pairs).all(|(a, b)| a == *b)
    }
}

impl fmt::Debug for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// `key=value` pairs joined by commas, as `go tool pprof -tags` groups them.
impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// A JSON object of the pairs.
impl serde::Serialize for LabelSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// `pairs` as a set keeps them: sorted by key, a key given twice with its
/// last value, empty keys dropped, keys and values cut to
/// [`MAX_LABEL_BYTES`]. Borrows; allocates only the list.
pub(crate) fn normalize<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(&'a str, &'a str)> {
    let mut list: Vec<(&str, &str)> = Vec::new();
    for (key, value) in pairs {
        let (key, value) = (clip(key), clip(value));
        if key.is_empty() {
            continue;
        }
        match list.iter_mut().find(|(k, _)| *k == key) {
            Some(pair) => pair.1 = value,
            None => list.push((key, value)),
        }
    }
    list.sort_by(|a, b| a.0.cmp(b.0));
    list
}

/// `text` cut to [`MAX_LABEL_BYTES`] at a character boundary.
fn clip(text: &str) -> &str {
    if text.len() <= MAX_LABEL_BYTES {
        return text;
    }
    let mut end = MAX_LABEL_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_sorted_unique_and_clipped() {
        let long = "é".repeat(200);
        let set =
            LabelSet::from_pairs([("b", "1"), ("a", "2"), ("b", "3"), ("", "x"), ("c", &*long)]);
        let pairs: Vec<(&str, &str)> = set.iter().collect();
        assert_eq!(&pairs[..2], &[("a", "2"), ("b", "3")]);
        assert_eq!(pairs[2].1.len(), MAX_LABEL_BYTES);
        assert!(set.equals(&pairs));
        assert!(LabelSet::from_pairs([]).is_empty());
        assert_eq!(set.with("a", "9").get("a"), Some("9"));
        let json = serde_json::to_string(&LabelSet::from_pairs([("k", "v")])).unwrap();
        assert_eq!(json, r#"{"k":"v"}"#);
    }
}
