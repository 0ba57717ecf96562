//! Views of a profile by label: totals per value of one label key
//! (`format=text&by=route`), and the profile regrouped under one root
//! frame per value (`group=route` for flame graphs, folded stacks, JSON).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::top::format_value;
use super::{Location, Profile};
use crate::symbols::SymbolizedFrame;

/// The value shown for samples without the label asked for.
pub const UNLABELLED: &str = "<none>";

/// A profile's totals per value of one label key, heaviest first (by the
/// profile's default value). Its JSON is `format=json&by=<key>`'s, its
/// `Display` the `format=text&by=<key>` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct LabelTotals {
    /// The profile's title.
    pub title: String,
    /// The profile's comments (window, rates).
    pub comments: Vec<String>,
    /// Length of the profile's window, in milliseconds.
    pub duration_ms: f64,
    /// The label key.
    pub key: String,
    /// What each value measures, in the order of every `values` list.
    pub sample_types: Vec<String>,
    /// Units of the sample types.
    pub units: Vec<String>,
    /// Index of the value rows are ranked and shared by.
    pub default_value: usize,
    /// Totals over the whole profile.
    pub totals: Vec<i64>,
    /// One row per label value; [`UNLABELLED`] for samples without the key.
    pub values: Vec<LabelTotal>,
}

/// One label value's totals.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct LabelTotal {
    /// The label value.
    pub value: String,
    /// Share of the default value's total, 0..1.
    pub share: f64,
    /// Summed values, one per sample type.
    pub values: Vec<i64>,
}

impl Profile {
    /// Totals per value of label `key`, heaviest first.
    ///
    /// ```
    /// # fn show(profile: &stethoscope::profile::Profile) {
    /// for row in &profile.totals_by_label("route").values {
    ///     println!("{:5.1}% {}", 100.0 * row.share, row.value);
    /// }
    /// # }
    /// ```
    pub fn totals_by_label(&self, key: &str) -> LabelTotals {
        let width = self.sample_types.len();
        let mut rows: HashMap<&str, Vec<i64>> = HashMap::new();
        let mut totals = vec![0i64; width];
        for sample in &self.samples {
            let value = sample.labels.get(key).unwrap_or(UNLABELLED);
            let row = rows.entry(value).or_insert_with(|| vec![0; width]);
            for (i, v) in sample.values.iter().enumerate().take(width) {
                row[i] = row[i].saturating_add(*v);
                totals[i] = totals[i].saturating_add(*v);
            }
        }
        let index = self.default_value.min(width.saturating_sub(1));
        let total = totals.get(index).copied().unwrap_or(0);
        let mut values: Vec<LabelTotal> = rows
            .into_iter()
            .map(|(value, values)| LabelTotal {
                value: value.to_owned(),
                share: if total > 0 {
                    values.get(index).copied().unwrap_or(0) as f64 / total as f64
                } else {
                    0.0
                },
                values,
            })
            .collect();
        values.sort_by(|a, b| {
            b.values
                .get(index)
                .cmp(&a.values.get(index))
                .then_with(|| a.value.cmp(&b.value))
        });
        LabelTotals {
            title: self.title.clone(),
            duration_ms: self.duration.as_secs_f64() * 1e3,
            comments: self.comments.clone(),
            key: key.to_owned(),
            sample_types: self.sample_types.iter().map(|t| t.kind.clone()).collect(),
            units: self.sample_types.iter().map(|t| t.unit.clone()).collect(),
            default_value: index,
            totals,
            values,
        }
    }

    /// The profile with every stack under a root frame naming its value of
    /// label `key` (`route=/items/{id}`, `route=<none>`), above the thread
    /// name, which becomes a frame too: flame graphs, folded stacks and JSON
    /// of the result are rooted at the label.
    pub fn grouped_by_label(&self, key: &str) -> Profile {
        let mut grouped = self.clone();
        let mut synthetic: HashMap<String, usize> = HashMap::new();
        let mut location_of = |name: String, locations: &mut Vec<Location>| -> usize {
            *synthetic.entry(name).or_insert_with_key(|name| {
                locations.push(Location {
                    address: 0,
                    mapping: None,
                    frames: Arc::from([SymbolizedFrame {
                        function: Arc::from(name.as_str()),
                        file: None,
                        line: None,
                    }]),
                    symbolized: true,
                });
                locations.len() - 1
            })
        };
        for sample in &mut grouped.samples {
            // Leaf first: the thread, then the label, go at the end.
            if let Some(thread) = sample.thread.take() {
                let thread = location_of(thread.to_string(), &mut grouped.locations);
                sample.locations.push(thread);
            }
            let value = sample.labels.get(key).unwrap_or(UNLABELLED);
            let root = location_of(format!("{key}={value}"), &mut grouped.locations);
            sample.locations.push(root);
        }
        grouped
    }
}

impl fmt::Display for LabelTotals {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(out, "{}", self.title)?;
        for comment in &self.comments {
            writeln!(out, "{comment}")?;
        }
        let index = self.default_value;
        let kind = self.sample_types.get(index).map_or("value", String::as_str);
        let unit = self.units.get(index).map_or("count", String::as_str);
        let total = self.totals.get(index).copied().unwrap_or(0);
        writeln!(
            out,
            "Total {kind}: {}; {} values of label {:?}",
            format_value(total, unit),
            self.values.len(),
            self.key
        )?;
        write!(out, "{:>12} {:>6}", kind, "share")?;
        for (i, name) in self.sample_types.iter().enumerate() {
            if i != index {
                write!(out, " {name:>12}")?;
            }
        }
        writeln!(out, "  {}", self.key)?;
        for row in &self.values {
            let value = row.values.get(index).copied().unwrap_or(0);
            write!(
                out,
                "{:>12} {:>5.1}%",
                format_value(value, unit),
                100.0 * row.share
            )?;
            for (i, other) in row.values.iter().enumerate() {
                if i != index {
                    let unit = self.units.get(i).map_or("count", String::as_str);
                    write!(out, " {:>12}", format_value(*other, unit))?;
                }
            }
            writeln!(out, "  {}", row.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::build::tests::sample_profile;
    use crate::profile::Format;

    #[test]
    fn totals_rank_label_values_and_count_unlabelled_samples_apart() {
        let totals = sample_profile().totals_by_label("route");
        assert_eq!(totals.values.len(), 2);
        assert_eq!(totals.values[0].value, "/hot");
        assert_eq!(totals.values[0].values, [3, 30_000_000]);
        assert!((totals.values[0].share - 0.75).abs() < 1e-9);
        assert_eq!(totals.values[1].value, UNLABELLED);
        let text = totals.to_string();
        assert!(text.contains("Total cpu: 40.0ms"), "{text}");
        let hot = text.lines().find(|l| l.ends_with("  /hot")).unwrap();
        assert!(hot.contains("30.0ms") && hot.contains("75.0%"), "{hot}");
        let json = serde_json::to_value(&totals).unwrap();
        assert_eq!(json["values"][0]["value"], "/hot");
        assert_eq!(json["key"], "route");
    }

    #[test]
    fn grouping_puts_the_label_value_at_the_root_above_the_thread() {
        let grouped = sample_profile().grouped_by_label("route");
        let folded = String::from_utf8(grouped.render(Format::Folded).unwrap()).unwrap();
        let lines: Vec<&str> = folded.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("route=/hot;worker;") && l.ends_with(" 3")),
            "{folded}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("route=<none>;main;")),
            "{folded}"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&grouped.render(Format::Json).unwrap()).unwrap();
        let frames = json["stacks"][0]["frames"].as_array().unwrap();
        assert_eq!(
            frames.last().unwrap(),
            "route=/hot",
            "JSON frames end at the root"
        );
        assert_eq!(json["stacks"][0]["labels"]["route"], "/hot");
    }
}
