//! A span's fields as compact text for the slow-span log: name and value
//! pairs in one string (one allocation per span), capped at
//! [`MAX_SPAN_FIELDS_BYTES`], written when the span is created or records.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};

use crate::spans::MAX_SPAN_FIELDS_BYTES;

/// Ends a field name; never part of a name or value (replaced by a space).
const NAME_END: char = '\u{1f}';
/// Ends a value.
const PAIR_END: char = '\u{1e}';
/// Marks a cut value.
const ELLIPSIS: char = '…';

/// The recorded fields of one span, in recording order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FieldText {
    text: String,
    truncated: bool,
}

impl FieldText {
    /// `(name, value)` pairs, in recording order.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.text
            .split(PAIR_END)
            .filter_map(|pair| pair.split_once(NAME_END))
    }

    /// Whether fields or a value were cut to stay within the cap.
    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }

    fn push(&mut self, name: &str, value: impl FnOnce(&mut Capped<'_>) -> fmt::Result) {
        if self.truncated {
            return;
        }
        let start = self.text.len();
        // Room for the name, its end marker, one character of value, the
        // ellipsis and the pair's end marker.
        let needed = name.len() + NAME_END.len_utf8() + 1 + ELLIPSIS.len_utf8() + 1;
        if start + needed > MAX_SPAN_FIELDS_BYTES {
            self.truncated = true;
            return;
        }
        if self.text.capacity() == 0 {
            self.text.reserve(64);
        }
        self.text.push_str(name);
        self.text.push(NAME_END);
        let limit = MAX_SPAN_FIELDS_BYTES - ELLIPSIS.len_utf8() - PAIR_END.len_utf8();
        let mut capped = Capped {
            out: &mut self.text,
            limit,
            cut: false,
        };
        // An error only means the value was cut.
        let _ = value(&mut capped);
        if capped.cut {
            self.text.push(ELLIPSIS);
            self.truncated = true;
        }
        self.text.push(PAIR_END);
    }
}

/// A writer that stops at `limit` bytes (at a character boundary) and
/// replaces the separators.
struct Capped<'a> {
    out: &'a mut String,
    limit: usize,
    cut: bool,
}

impl fmt::Write for Capped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.out.len() + s.len() <= self.limit && !s.contains([NAME_END, PAIR_END]) {
            self.out.push_str(s);
            return Ok(());
        }
        for c in s.chars() {
            if self.out.len() + c.len_utf8() > self.limit {
                self.cut = true;
                return Err(fmt::Error);
            }
            self.out.push(if c == NAME_END || c == PAIR_END {
                ' '
            } else {
                c
            });
        }
        Ok(())
    }
}

/// Records a span's field values into its [`FieldText`] and notices an
/// `error` field.
pub(crate) struct FieldRecorder<'a> {
    pub(crate) text: &'a mut FieldText,
    pub(crate) error: &'a mut bool,
}

impl Visit for FieldRecorder<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        // `error = false` says the operation did not fail.
        if field.name() == "error" && !value {
            self.text.push(field.name(), |w| w.write_str("false"));
            return;
        }
        self.record_debug(field, &value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        *self.error |= field.name() == "error";
        self.text.push(field.name(), |w| w.write_str(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        *self.error |= field.name() == "error";
        self.text.push(field.name(), |w| write!(w, "{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(text: &mut FieldText, name: &str, value: &str) {
        text.push(name, |w| w.write_str(value));
    }

    #[test]
    fn pairs_come_back_in_order() {
        let mut text = FieldText::default();
        push(&mut text, "table", "items");
        push(&mut text, "id", "42");
        push(&mut text, "odd", "a\u{1f}b\u{1e}c");
        let pairs: Vec<_> = text.pairs().collect();
        assert_eq!(pairs, [("table", "items"), ("id", "42"), ("odd", "a b c")]);
        assert!(!text.truncated());
        assert_eq!(FieldText::default().pairs().count(), 0);
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let mut text = FieldText::default();
        push(&mut text, "sql", &"é".repeat(400));
        push(&mut text, "later", "dropped");
        assert!(text.truncated());
        assert!(text.text.len() <= MAX_SPAN_FIELDS_BYTES);
        let pairs: Vec<_> = text.pairs().collect();
        assert_eq!(pairs.len(), 1);
        assert!(pairs[0].1.ends_with('…'));
        assert!(pairs[0].1.len() > 200);
    }

    #[test]
    fn many_fields_stop_at_the_cap() {
        let mut text = FieldText::default();
        for i in 0..100 {
            push(&mut text, "field", &i.to_string());
        }
        assert!(text.truncated());
        assert!(text.text.len() <= MAX_SPAN_FIELDS_BYTES);
        assert!(text.pairs().count() > 10);
        assert!(text.pairs().all(|(name, _)| name == "field"));
    }
}
