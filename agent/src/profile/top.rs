//! The text view: first where the service's own code spends the profile's
//! default value (each stack charged to its innermost application
//! function, library calls included), then a `go tool pprof -top`-style
//! table of functions by flat and cumulative weight, each with the
//! application function it runs under.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use super::frames::{is_agent, is_library, is_plumbing};
use super::view::{Trim, View};
use super::Profile;

/// Rows of the function table unless the caller asks for another number.
pub(super) const DEFAULT_ROWS: usize = 40;

/// Rows of the "by your code" table.
const CODE_ROWS: usize = 15;

/// Stacks without a function the service wrote.
const NO_APPLICATION_FRAME: &str = "(no application frame: runtime, libraries, idle)";

/// Weight of one function, and of what it is split into.
#[derive(Default)]
struct Tally<'a> {
    total: i64,
    parts: HashMap<&'a str, i64>,
}

impl<'a> Tally<'a> {
    fn add(&mut self, part: &'a str, value: i64) {
        self.total += value;
        *self.parts.entry(part).or_insert(0) += value;
    }

    /// The heaviest part and its share of the total.
    fn main_part(&self) -> Option<(&'a str, f64)> {
        let (name, value) = self
            .parts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
        (self.total > 0).then(|| (*name, *value as f64 / self.total as f64))
    }
}

/// Renders the header (title, comments, what the view leaves out), the
/// table of application functions and the top `rows` functions.
pub(super) fn render(profile: &Profile, view: &View, rows: usize) -> String {
    let index = profile.default_value;
    let value_type = profile.sample_types.get(index);
    let unit = value_type.map_or("count", |vt| vt.unit.as_str());
    let kind = value_type.map_or("value", |vt| vt.kind.as_str());

    // Per function: flat (as the leaf), cumulative, and the application
    // function it runs under. Per application function: its weight and
    // the leaves it is spent in.
    let mut flat: HashMap<&str, i64> = HashMap::new();
    let mut cum: HashMap<&str, i64> = HashMap::new();
    let mut under: HashMap<&str, Tally<'_>> = HashMap::new();
    let mut code: HashMap<&str, Tally<'_>> = HashMap::new();
    let mut total = 0i64;
    let mut frames: Vec<&str> = Vec::new();
    for sample in &profile.samples {
        if !view.shows(profile, sample) {
            continue;
        }
        let value = sample.values.get(index).copied().unwrap_or(0);
        total += value;
        frames.clear();
        frames.extend(profile.frames_root_first(sample).map(|f| &*f.function));
        let Some(&leaf) = frames.last() else {
            continue;
        };
        *flat.entry(leaf).or_insert(0) += value;
        let mut seen = HashSet::new();
        for &frame in &frames {
            if seen.insert(frame) {
                *cum.entry(frame).or_insert(0) += value;
            }
        }
        // The innermost application frame, and for every frame below it
        // (inner), that frame is what it runs under.
        let innermost_app = frames.iter().rposition(|f| !is_library(f));
        match innermost_app {
            Some(position) => {
                let app = frames[position];
                code.entry(app).or_default().add(leaf, value);
                for &inner in &frames[position + 1..] {
                    under.entry(inner).or_default().add(app, value);
                }
                // An application function is under its nearest
                // application caller.
                if let Some(caller) = frames[..position].iter().rposition(|f| !is_library(f)) {
                    under.entry(app).or_default().add(frames[caller], value);
                }
            }
            None => code
                .entry(NO_APPLICATION_FRAME)
                .or_default()
                .add(leaf, value),
        }
    }

    let percent = |v: i64| {
        if total > 0 {
            100.0 * v as f64 / total as f64
        } else {
            0.0
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", profile.title);
    for comment in &profile.comments {
        let _ = writeln!(out, "{comment}");
    }
    if let Some(note) = view.note() {
        let _ = writeln!(out, "View: {note}");
    }
    let _ = writeln!(out, "Total {kind}: {}", format_value(total, unit));

    // The service's functions first, heaviest first; the agent's own (its
    // symbolizer, say) after them, marked as the agent's.
    let mut by_code: Vec<(&str, &Tally<'_>)> = code.iter().map(|(k, v)| (*k, v)).collect();
    by_code.sort_by(|a, b| {
        is_agent(a.0)
            .cmp(&is_agent(b.0))
            .then(b.1.total.cmp(&a.1.total))
            .then(a.0.cmp(b.0))
    });
    let _ = writeln!(
        out,
        "\nBy your code: each stack charged to the innermost function the service wrote \
         (library calls it makes included)"
    );
    let _ = writeln!(out, "{:>12} {:>6}  function  [spent mostly in]", kind, "%");
    for (name, tally) in by_code.iter().take(CODE_ROWS) {
        let spent_in = match tally.main_part() {
            Some((leaf, _)) if leaf == *name => String::new(),
            Some((leaf, share)) => format!("  [{:.0}% in {leaf}]", share * 100.0),
            None => String::new(),
        };
        let owner = if is_agent(name) {
            "  (stethoscope agent)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:>12} {:>5.1}%  {name}{spent_in}{owner}",
            format_value(tally.total, unit),
            percent(tally.total),
        );
    }
    if by_code.len() > CODE_ROWS {
        let _ = writeln!(out, "  … {} more", by_code.len() - CODE_ROWS);
    }

    // Plumbing functions are only listed when they are where the weight
    // is spent (a leaf), unless every frame was asked for.
    let mut functions: Vec<(&str, i64, i64)> = cum
        .iter()
        .map(|(name, &c)| (*name, flat.get(name).copied().unwrap_or(0), c))
        .filter(|(name, f, _)| view.trim_mode() == Trim::None || *f > 0 || !is_plumbing(name))
        .collect();
    functions.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
    let _ = writeln!(
        out,
        "\nTop {} of {} functions by flat {kind} (← the application function they run under)",
        rows.min(functions.len()),
        functions.len()
    );
    let _ = writeln!(
        out,
        "{:>12} {:>6} {:>6} {:>12} {:>6}  function",
        "flat", "flat%", "sum%", "cum", "cum%"
    );
    let mut running = 0i64;
    for (name, f, c) in functions.into_iter().take(rows) {
        running += f;
        let caller = under
            .get(name)
            .and_then(Tally::main_part)
            .map_or_else(String::new, |(app, _)| format!("  ← {app}"));
        let _ = writeln!(
            out,
            "{:>12} {:>5.1}% {:>5.1}% {:>12} {:>5.1}%  {name}{caller}",
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
    use crate::profile::build::tests::{named_profile, sample_profile};

    fn table<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
        text.lines()
            .skip_while(|l| !l.starts_with(header))
            .skip(2)
            .take_while(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn ranks_functions_by_flat_then_cumulative() {
        let text = render(&sample_profile(), &View::default(), 10);
        let rows = table(&text, "Top ");
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].contains("leaf_for_tests  ← "), "{text}");
        assert!(rows[0].ends_with("caller_for_tests"), "{text}");
        assert!(rows[0].contains("75.0%"), "{}", rows[0]);
        // The caller: 25% flat, 100% cumulative.
        assert!(rows[1].contains("caller_for_tests"));
        assert!(rows[1].contains("100.0%"), "{}", rows[1]);
        assert!(text.contains("Total cpu: 40.0ms"));
    }

    /// The README's memcpy step: the copy's cost is libc's `memcpy` under
    /// the service's `copy_buffers`, several library frames apart.
    #[test]
    fn library_time_is_charged_to_the_application_function_above_it() {
        let profile = named_profile(&[
            (
                &[
                    "memcpy",
                    "core::slice::<impl [T]>::copy_from_slice",
                    "my_service::copy_buffers",
                    "my_service::handler::{{closure}}",
                    "<core::pin::Pin<P> as core::future::future::Future>::poll",
                    "tokio::runtime::task::harness::poll_future",
                    "start_thread",
                ],
                90,
            ),
            (
                &[
                    "my_service::checksum",
                    "my_service::handler::{{closure}}",
                    "tokio::runtime::task::harness::poll_future",
                ],
                10,
            ),
            (
                &[
                    "epoll_wait",
                    "mio::poll::Poll::poll",
                    "tokio::runtime::park",
                ],
                5,
            ),
        ]);
        let text = render(&profile, &View::default(), 40);
        let code = table(&text, "By your code");
        assert!(
            code[0].contains("my_service::copy_buffers  [100% in memcpy]"),
            "{text}"
        );
        assert!(code[0].contains("85.7%"), "{text}");
        assert!(code[1].ends_with("my_service::checksum"), "{text}");
        assert!(code[2].contains(NO_APPLICATION_FRAME), "{text}");
        let top = table(&text, "Top ");
        assert!(
            top[0].ends_with("memcpy  ← my_service::copy_buffers"),
            "{text}"
        );
        assert!(
            top.iter()
                .any(|r| r.ends_with("my_service::checksum  ← my_service::handler::{{closure}}")),
            "{text}"
        );
        // Plumbing that is nobody's leaf is not a row; with trim=none it is.
        assert!(!text.contains("harness::poll_future"), "{text}");
        let all = render(&profile, &View::default().trim(Trim::None), 40);
        assert!(all.contains("harness::poll_future"), "{all}");
        // focus keeps the stacks through a function.
        let focused = render(&profile, &View::default().focus("checksum"), 40);
        assert!(focused.contains("Total cpu: 10.0ms"), "{focused}");
        assert!(!focused.contains("memcpy"), "{focused}");
    }

    #[test]
    fn formats_units() {
        assert_eq!(format_value(1_500_000_000, "nanoseconds"), "1.50s");
        assert_eq!(format_value(2_500_000, "nanoseconds"), "2.5ms");
        assert_eq!(format_value(3 * 1024 * 1024, "bytes"), "3.0MiB");
        assert_eq!(format_value(12, "count"), "12");
    }

    #[test]
    fn the_agents_own_functions_come_after_the_services_and_say_so() {
        let profile = named_profile(&[
            (&["demo::work", "demo::handler", "start_thread"], 30),
            (
                &[
                    "stethoscope::symbols::dwarf::UnitTables::build",
                    "start_thread",
                ],
                50,
            ),
        ]);
        let text = render(&profile, &View::default(), 10);
        let code = table(&text, "By your code");
        assert!(code[0].contains("demo::work"), "{text}");
        assert!(
            code[1].contains("UnitTables::build") && code[1].ends_with("(stethoscope agent)"),
            "{text}"
        );
    }
}
