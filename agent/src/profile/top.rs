//! A `go tool pprof -top`-style table: functions by flat and cumulative
//! weight of the profile's default value.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use super::Profile;

/// Rows shown unless the caller asks for another number.
pub(super) const DEFAULT_ROWS: usize = 40;

/// Renders the header (title and comments) and the top `rows` functions.
pub(super) fn render(profile: &Profile, rows: usize) -> String {
    let index = profile.default_value;
    let unit = profile
        .sample_types
        .get(index)
        .map_or("count", |vt| vt.unit.as_str());
    let kind = profile
        .sample_types
        .get(index)
        .map_or("value", |vt| vt.kind.as_str());
    let mut flat: HashMap<&str, i64> = HashMap::new();
    let mut cum: HashMap<&str, i64> = HashMap::new();
    let mut total = 0i64;
    for sample in &profile.samples {
        let value = sample.values.get(index).copied().unwrap_or(0);
        total += value;
        let leaf = sample
            .locations
            .first()
            .and_then(|&l| profile.locations.get(l))
            .and_then(|l| l.frames.first());
        if let Some(leaf) = leaf {
            *flat.entry(&leaf.function).or_insert(0) += value;
        }
        let mut seen = HashSet::new();
        for frame in profile.frames_root_first(sample) {
            if seen.insert(&*frame.function) {
                *cum.entry(&frame.function).or_insert(0) += value;
            }
        }
    }
    let mut functions: Vec<(&str, i64, i64)> = cum
        .iter()
        .map(|(name, &c)| (*name, flat.get(name).copied().unwrap_or(0), c))
        .collect();
    functions.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));

    let mut out = String::new();
    let _ = writeln!(out, "{}", profile.title);
    for comment in &profile.comments {
        let _ = writeln!(out, "{comment}");
    }
    let _ = writeln!(
        out,
        "Total {kind}: {}; showing top {} of {} functions by flat {kind}",
        format_value(total, unit),
        rows.min(functions.len()),
        functions.len()
    );
    let _ = writeln!(
        out,
        "{:>12} {:>6} {:>6} {:>12} {:>6}  function",
        "flat", "flat%", "sum%", "cum", "cum%"
    );
    let percent = |v: i64| {
        if total > 0 {
            100.0 * v as f64 / total as f64
        } else {
            0.0
        }
    };
    let mut running = 0i64;
    for (name, f, c) in functions.into_iter().take(rows) {
        running += f;
        let _ = writeln!(
            out,
            "{:>12} {:>5.1}% {:>5.1}% {:>12} {:>5.1}%  {name}",
            format_value(f, unit),
            percent(f),
            percent(running),
            format_value(c, unit),
            percent(c),
        );
    }
    out
}

/// Formats a value in a readable unit: seconds/milliseconds for
/// nanoseconds, KiB/MiB for bytes, plain numbers otherwise.
pub(super) fn format_value(value: i64, unit: &str) -> String {
    let v = value as f64;
    match unit {
        "nanoseconds" if v.abs() >= 1e9 => format!("{:.2}s", v / 1e9),
        "nanoseconds" => format!("{:.1}ms", v / 1e6),
        "bytes" if v.abs() >= 1024.0 * 1024.0 => format!("{:.1}MiB", v / (1024.0 * 1024.0)),
        "bytes" if v.abs() >= 1024.0 => format!("{:.1}KiB", v / 1024.0),
        "bytes" => format!("{value}B"),
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::build::tests::sample_profile;

    #[test]
    fn ranks_functions_by_flat_then_cumulative() {
        let text = render(&sample_profile(), 10);
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("flat%"))
            .skip(1)
            .collect();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].ends_with("leaf_for_tests"));
        assert!(rows[0].contains("75.0%"), "{}", rows[0]);
        // The caller: 25% flat, 100% cumulative.
        assert!(rows[1].ends_with("caller_for_tests"));
        assert!(rows[1].contains("100.0%"), "{}", rows[1]);
        assert!(text.contains("Total cpu: 40.0ms"));
    }

    #[test]
    fn formats_units() {
        assert_eq!(format_value(1_500_000_000, "nanoseconds"), "1.50s");
        assert_eq!(format_value(2_500_000, "nanoseconds"), "2.5ms");
        assert_eq!(format_value(3 * 1024 * 1024, "bytes"), "3.0MiB");
        assert_eq!(format_value(12, "count"), "12");
    }
}
