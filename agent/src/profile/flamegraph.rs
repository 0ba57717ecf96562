//! Interactive SVG flame graphs, drawn by inferno from folded stacks.

use inferno::flamegraph::{self, Options};

use super::{folded, Profile};
use crate::Error;

/// Renders the profile's flame-graph value as an inferno SVG. Thread names
/// are the roots; the title and subtitle carry the profile's description.
pub(super) fn render(profile: &Profile) -> Result<Vec<u8>, Error> {
    let stacks = folded::lines(profile);
    let lines: Vec<String> = stacks
        .iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect();
    let mut options = Options::default();
    options.title = profile.title.clone();
    options.subtitle = Some(profile.comments.join(" · "));
    options.count_name = profile
        .sample_types
        .get(profile.flame_value)
        .map_or_else(|| "samples".to_owned(), |vt| vt.kind.clone());
    options.name_type = "Function:".to_owned();
    options.hash = true;
    let mut svg = Vec::with_capacity(lines.len() * 256 + 16 * 1024);
    let lines = if lines.is_empty() {
        // inferno refuses empty input; an idle process still deserves a
        // readable answer rather than an error.
        vec!["no samples in this window 0".to_owned()]
    } else {
        lines
    };
    let result = flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg);
    match result {
        Ok(()) => Ok(svg),
        Err(_) if stacks.is_empty() => Ok(empty_svg(&profile.title)),
        Err(source) => Err(Error::Encode {
            format: "svg",
            source,
        }),
    }
}

fn empty_svg(title: &str) -> Vec<u8> {
    let escaped = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
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
        let svg = String::from_utf8(render(&profile).unwrap()).unwrap();
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("CPU profile of tests"));
        assert!(svg.contains("leaf_for_tests"));
        assert!(svg.contains("worker"));
    }

    #[test]
    fn an_empty_profile_still_renders() {
        let mut profile = sample_profile();
        profile.samples.clear();
        let svg = String::from_utf8(render(&profile).unwrap()).unwrap();
        assert!(svg.contains("<svg"));
    }
}
