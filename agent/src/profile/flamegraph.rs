//! Interactive SVG flame graphs, drawn by inferno from folded stacks.

use std::io::{self, Write};

use inferno::flamegraph::{self, Options};

use super::flame_tree::FlameTree;
use super::view::View;
use super::{folded, Profile};
use crate::Error;

/// Narrowest frame drawn, in percent of the frame area: inferno's own
/// default minimum width (1.18 px of its 1,200 px canvas). Narrower frames
/// are merged, per parent, into one `[n narrower frames]` frame (drawn when
/// it reaches this width itself), so every sample still counts in the
/// widths and totals above them.
pub(super) const MIN_FRAME_PERCENT: f64 = 0.1;

/// Writes the profile's flame-graph value as an inferno SVG. Thread names
/// are the roots; the title and subtitle carry the profile's description.
/// Frames narrower than [`MIN_FRAME_PERCENT`] are merged (see
/// [`super::flame_tree`]).
pub(super) fn render(profile: &Profile, view: &View, out: &mut impl Write) -> io::Result<()> {
    let tree = FlameTree::of_profile(profile, view);
    let mut options = Options::default();
    options.title = profile.title.clone();
    options.subtitle = Some(subtitle(&profile.comments, SUBTITLE_CHARS));
    options.count_name = profile
        .sample_types
        .get(profile.flame_value)
        .map_or_else(|| "samples".to_owned(), |vt| vt.kind.clone());
    options.name_type = "Function:".to_owned();
    options.hash = true;
    if tree.total() <= 0 {
        // inferno refuses empty input; an idle process still deserves a
        // readable answer rather than an error.
        return out.write_all(&empty_svg(&profile.title));
    }
    let min_value = (tree.total() as f64 * MIN_FRAME_PERCENT / 100.0).ceil() as i64;
    let mut text = String::new();
    let lines = tree.drawable_lines(min_value.max(1), &mut text);
    drop(tree);
    // The lines come in tree order, a frame's lines together. inferno
    // sorts whole lines (or, with `no_sort`, refuses lines that are not
    // sorted so), which splits a frame whose name is a prefix of a
    // sibling's (`f;…` sorts after `f::{{closure}};…`). Its flame-chart
    // mode takes lines in the order given, reversed, and merges adjacent
    // stacks the same way: hence the reversed tree order.
    options.flame_chart = true;
    // The remainders narrower than that go too (their value stays
    // counted in their parent's width).
    options.min_width = MIN_FRAME_PERCENT;
    flamegraph::from_lines(
        &mut options,
        lines.iter().rev().map(|r| &text[r.clone()]),
        out,
    )
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
    use crate::profile::build::tests::{named_profile, sample_profile};

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

    /// A window of a busy service: three hot stacks of 3 s each and 6,000
    /// rare stacks of 1 ms, 24 frames deep, in 40 groups of 150 ms.
    fn many_stacks_profile() -> Profile {
        let groups: Vec<String> = (0..40).map(|i| format!("group_{i}")).collect();
        let rare: Vec<String> = (0..6_000).map(|i| format!("rare_{i}")).collect();
        let mut stacks: Vec<(Vec<&str>, i64)> = Vec::new();
        for (i, name) in rare.iter().enumerate() {
            let mut frames: Vec<&str> = vec![name.as_str(); 19];
            frames.extend([groups[i % 40].as_str(), "dispatch", "serve", "run", "main"]);
            stacks.push((frames, 1));
        }
        for hot in ["hot_a", "hot_b", "hot_c"] {
            stacks.push((vec![hot, "dispatch", "serve", "run", "main"], 3_000));
        }
        let stacks: Vec<(&[&str], i64)> = stacks
            .iter()
            .map(|(frames, ms)| (frames.as_slice(), *ms))
            .collect();
        let mut profile = named_profile(&stacks);
        profile.flame_value = 1;
        profile
    }

    #[test]
    fn frames_narrower_than_the_minimum_width_are_merged_and_still_count() {
        let profile = many_stacks_profile();
        let mut svg = Vec::new();
        render(&profile, &View::default(), &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        // Unmerged, this profile is ~6,000 × 20 rectangles (tens of MB);
        // merged, the hot stacks and one remainder per parent.
        assert!(svg.len() < 200_000, "{} bytes", svg.len());
        for hot in ["hot_a", "hot_b", "hot_c"] {
            assert!(svg.contains(hot), "{hot} is drawn");
        }
        assert!(
            !svg.contains("rare_17"),
            "a frame narrower than the minimum"
        );
        assert!(svg.contains("group_17"), "a frame wider than the minimum");
        // Each group of 150 rare stacks (1 ms each; the minimum, 0.1 %, is 15 ms) is
        // drawn as one remainder frame that keeps its 150 ms.
        assert_eq!(svg.matches("[150 narrower frames] (").count(), 40);
        assert!(
            svg.contains("[150 narrower frames] (150,000,000 "),
            "weight kept"
        );
        assert!(
            svg.contains("all (15,000,000,000 "),
            "the total is every sample's"
        );
    }

    #[test]
    fn a_frame_named_like_the_start_of_a_sibling_is_one_rectangle() {
        let mut profile = named_profile(&[
            (&["y", "f", "main"], 30),
            (&["x", "f::{{closure}}", "main"], 20),
            (&["f", "main"], 10),
        ]);
        let mut svg = Vec::new();
        profile.flame_value = 1;
        render(&profile, &View::default(), &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert_eq!(svg.matches("<title>f (").count(), 1, "{svg}");
        assert!(svg.contains("<title>f (40,000,000 "), "{svg}");
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
