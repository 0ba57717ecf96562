//! Interactive SVG flame graphs, drawn by inferno from folded stacks.

use std::io::{self, Write};

use inferno::flamegraph::{self, Options};

use super::view::View;
use super::{folded, Profile};
use crate::Error;

/// Writes the profile's flame-graph value as an inferno SVG. Thread names
/// are the roots; the title and subtitle carry the profile's description.
pub(super) fn render(profile: &Profile, view: &View, out: &mut impl Write) -> io::Result<()> {
    // Each stack's text becomes its line in place: the folded text of a
    // long profile is several MB, and it is held once, not twice.
    let lines: Vec<String> = folded::lines(profile, view)
        .into_iter()
        .map(|(mut stack, count)| {
            stack.push(' ');
            stack.push_str(&count.to_string());
            stack
        })
        .collect();
    let mut options = Options::default();
    options.title = profile.title.clone();
    options.subtitle = Some(subtitle(&profile.comments, SUBTITLE_CHARS));
    options.count_name = profile
        .sample_types
        .get(profile.flame_value)
        .map_or_else(|| "samples".to_owned(), |vt| vt.kind.clone());
    options.name_type = "Function:".to_owned();
    options.hash = true;
    if lines.is_empty() {
        // inferno refuses empty input; an idle process still deserves a
        // readable answer rather than an error.
        return out.write_all(&empty_svg(&profile.title));
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
}

/// Characters of subtitle that fit the default 1200 px canvas at inferno's
/// 12 px font (about 7 px per character) with a margin on both sides.
const SUBTITLE_CHARS: usize = 150;

/// The profile's comments that fit on one subtitle line, in order (the
/// first ones carry the window and the totals); the text and JSON views
/// carry every comment.
fn subtitle(comments: &[String], max_chars: usize) -> String {
    let mut line = String::new();
    for comment in comments {
        let extra = if line.is_empty() { 0 } else { 3 };
        if line.chars().count() + extra + comment.chars().count() > max_chars {
            if line.is_empty() {
                // One comment longer than the line: cut it at a character.
                line = comment.chars().take(max_chars.saturating_sub(1)).collect();
                line.push('…');
            }
            break;
        }
        if extra > 0 {
            line.push_str(" · ");
        }
        line.push_str(comment);
    }
    line
}

/// Folded lines `stack before after` for two profiles of the same kind
/// (inferno's differential format), from their flame-graph values.
pub(super) fn differential_folded(before: &Profile, after: &Profile, view: &View) -> String {
    let (before, after) = (folded::render(before, view), folded::render(after, view));
    let mut out = Vec::new();
    let options = inferno::differential::Options::default();
    // Reading from memory cannot fail; a failure leaves the output empty.
    let _ =
        inferno::differential::from_readers(options, before.as_bytes(), after.as_bytes(), &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A differential flame graph: frame widths are `after`'s values; red
/// frames grew since `before`, blue ones shrank.
pub(super) fn render_differential(
    before: &Profile,
    after: &Profile,
    view: &View,
    title: &str,
) -> Result<Vec<u8>, Error> {
    let lines = differential_folded(before, after, view);
    let mut options = Options::default();
    options.title = title.to_owned();
    options.subtitle = Some("width: now · red: grew · blue: shrank".to_owned());
    options.count_name = after
        .sample_types
        .get(after.flame_value)
        .map_or_else(|| "samples".to_owned(), |vt| vt.unit.clone());
    options.name_type = "Function:".to_owned();
    let mut svg = Vec::new();
    match flamegraph::from_lines(&mut options, lines.lines(), &mut svg) {
        Ok(()) => Ok(svg),
        Err(_) if lines.trim().is_empty() => Ok(empty_svg(title)),
        Err(source) => Err(Error::Encode {
            format: "svg",
            source,
        }),
    }
}

fn empty_svg(title: &str) -> Vec<u8> {
    let escaped = super::xml_escape(title);
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"600\" y=\"24\" text-anchor=\"middle\">{escaped}</text>\
         <text x=\"600\" y=\"48\" text-anchor=\"middle\">no samples in this window</text></svg>\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::build::tests::sample_profile;

    #[test]
    fn svg_names_functions_and_carries_the_title() {
        let profile = sample_profile();
        let mut svg = Vec::new();
        render(&profile, &View::default(), &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("CPU profile of tests"));
        assert!(svg.contains("leaf_for_tests"));
        assert!(svg.contains("worker"));
    }

    #[test]
    fn differential_graph_colors_growth() {
        let before = sample_profile();
        let mut after = sample_profile();
        after.samples[0].values[0] *= 10;
        let folded = differential_folded(&before, &after, &View::default());
        let worker = folded.lines().find(|l| l.starts_with("worker;")).unwrap();
        assert!(worker.ends_with(" 3 30"), "{worker}");
        let svg = String::from_utf8(
            render_differential(&before, &after, &View::default(), "growth").unwrap(),
        )
        .unwrap();
        assert!(svg.contains("growth") && svg.contains("leaf_for_tests"));
        // inferno colors grown frames red: rgb(255,…).
        assert!(
            svg.contains("rgb(255,"),
            "a red frame for the stack that grew"
        );
    }

    #[test]
    fn the_subtitle_fits_the_canvas() {
        let comments: Vec<String> = [
            "window 5.00 s from 2026-11-30T08:23:49.295Z, 99 Hz requested",
            "478 samples (99/s of CPU), 0 dropped; process CPU 4.843 s (97% of one core)",
            "cpu values are samples scaled to the process CPU time measured over the window",
        ]
        .map(String::from)
        .to_vec();
        let line = subtitle(&comments, SUBTITLE_CHARS);
        assert!(line.chars().count() <= SUBTITLE_CHARS, "{line}");
        assert!(
            line.starts_with("window 5.00 s") && line.contains("4.843 s"),
            "{line}"
        );
        let long = vec!["x".repeat(400)];
        assert_eq!(subtitle(&long, 20).chars().count(), 20);
        assert_eq!(subtitle(&[], 20), "");
    }

    #[test]
    fn an_empty_profile_still_renders() {
        let mut profile = sample_profile();
        profile.samples.clear();
        let mut svg = Vec::new();
        render(&profile, &View::default(), &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<svg"));
    }
}
