//! Folded (collapsed) stacks: `thread;root;…;leaf count` per line, the input
//! format of inferno and Brendan Gregg's FlameGraph.

use std::collections::BTreeMap;
use std::io::{self, Write};

use super::view::View;
use super::Profile;

/// Renders one line per distinct stack, sorted, with the flame-graph value.
pub(super) fn render(profile: &Profile, view: &View) -> String {
    let mut out = Vec::new();
    // Writing to memory cannot fail.
    let _ = write(profile, view, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes one line per distinct stack, sorted, with the flame-graph value.
pub(super) fn write(profile: &Profile, view: &View, out: &mut impl Write) -> io::Result<()> {
    for (stack, count) in lines(profile, view) {
        writeln!(out, "{stack} {count}")?;
    }
    Ok(())
}

/// Distinct stacks as the view shows them, with their summed flame-graph
/// values, sorted by stack.
pub(super) fn lines(profile: &Profile, view: &View) -> BTreeMap<String, i64> {
    let mut stacks: BTreeMap<String, i64> = BTreeMap::new();
    for sample in &profile.samples {
        let value = sample.values.get(profile.flame_value).copied().unwrap_or(0);
        if value <= 0 {
            continue;
        }
        let Some(frames) = view.stack(profile, sample) else {
            continue;
        };
        let mut line = String::new();
        if let Some(thread) = &sample.thread {
            push_frame(&mut line, thread);
        }
        for frame in &frames {
            if !line.is_empty() {
                line.push(';');
            }
            push_frame(&mut line, frame);
        }
        if line.is_empty() {
            line.push_str("[unknown]");
        }
        *stacks.entry(line).or_insert(0) += value;
    }
    stacks
}

/// Appends a frame name, replacing the characters the format reserves:
/// `;` separates frames (Rust names contain it, as in `[u8; 4]`) and a
/// newline ends the record.
pub(super) fn push_frame(line: &mut String, name: &str) {
    for c in name.chars() {
        match c {
            ';' => line.push('\u{ff1b}'),
            '\n' | '\r' => line.push(' '),
            other => line.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::build::tests::sample_profile;

    #[test]
    fn thread_is_the_root_and_leaf_comes_last() {
        let text = render(&sample_profile(), &View::default());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let worker = lines.iter().find(|l| l.starts_with("worker;")).unwrap();
        let (stack, count) = worker.rsplit_once(' ').unwrap();
        assert_eq!(count, "3");
        let frames: Vec<&str> = stack.split(';').collect();
        assert!(frames.last().unwrap().ends_with("leaf_for_tests"));
        assert!(frames[frames.len() - 2].ends_with("caller_for_tests"));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("main;") && l.ends_with(" 1")));
    }

    #[test]
    fn reserved_characters_are_replaced() {
        let mut line = String::new();
        push_frame(&mut line, "<[u8; 4] as Foo>::bar\n");
        assert!(!line.contains(';') && !line.contains('\n'));
    }
}
