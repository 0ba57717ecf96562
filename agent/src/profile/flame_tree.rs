//! What a flame graph can draw: folded stacks as a tree of frames, with
//! every frame narrower than the minimum width merged with its narrow
//! siblings into one `[n narrower frames]` frame.
//!
//! A 30 s profile of a busy service has thousands of distinct stacks; most
//! of their frames are a fraction of a pixel wide, invisible and
//! unclickable, yet each costs the SVG a rectangle, a tooltip and a label
//! (megabytes a browser must parse before it shows anything). Merging them
//! keeps every sample: a frame's width is still the sum of everything below
//! it, the remainder says how many frames it holds and what they weigh, and
//! the folded, JSON and pprof formats keep every frame.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::ops::Range;

/// Frames of a call tree with their summed values.
#[derive(Debug)]
pub(super) struct FlameTree<'a> {
    /// Index 0 is the root (all stacks); it has no name.
    nodes: Vec<Node<'a>>,
}

#[derive(Debug)]
struct Node<'a> {
    name: &'a str,
    /// Value of every stack through this frame.
    total: i64,
    /// Value of the stacks that end at this frame.
    own: i64,
    children: Vec<u32>,
}

impl<'a> FlameTree<'a> {
    /// The tree of `lines` (`frame;frame;…` → value, as folded lines).
    pub(super) fn new(lines: &'a BTreeMap<String, i64>) -> Self {
        let mut nodes = vec![Node {
            name: "",
            total: 0,
            own: 0,
            children: Vec::new(),
        }];
        let mut index: HashMap<(u32, &'a str), u32> = HashMap::new();
        // The previous line's frames and their nodes: sorted lines share
        // long prefixes, which are then found without hashing.
        let mut path: Vec<(&'a str, u32)> = Vec::new();
        for (line, &value) in lines {
            if value <= 0 {
                continue;
            }
            nodes[0].total += value;
            let mut parent = 0u32;
            let mut same = true;
            let mut frames = 0;
            for (depth, frame) in line.split(';').enumerate() {
                frames = depth + 1;
                let node = match path.get(depth) {
                    Some(&(name, node)) if same && name == frame => node,
                    _ => {
                        same = false;
                        path.truncate(depth);
                        let node = *index.entry((parent, frame)).or_insert_with(|| {
                            let id = nodes.len() as u32;
                            nodes.push(Node {
                                name: frame,
                                total: 0,
                                own: 0,
                                children: Vec::new(),
                            });
                            nodes[parent as usize].children.push(id);
                            id
                        });
                        path.push((frame, node));
                        node
                    }
                };
                nodes[node as usize].total += value;
                parent = node;
            }
            if same {
                // A line that is a prefix of the previous one.
                path.truncate(frames);
            }
            nodes[parent as usize].own += value;
        }
        FlameTree { nodes }
    }

    /// The sum of every stack's value.
    pub(super) fn total(&self) -> i64 {
        self.nodes[0].total
    }

    /// Writes folded lines into `out` (returning each line's range) for
    /// the frames at least `min_value` wide, children in name order and
    /// the stacks through narrower ones merged, per parent, into one
    /// `[n narrower frames]` line after their siblings. The lines are in
    /// tree order (a parent's lines together), and their values add up to
    /// [`total`](Self::total).
    pub(super) fn drawable_lines(&self, min_value: i64, out: &mut String) -> Vec<Range<usize>> {
        let mut lines = Vec::new();
        let mut prefix = String::new();
        self.write_children(0, min_value, &mut prefix, out, &mut lines);
        lines
    }

    fn write_children(
        &self,
        node: u32,
        min_value: i64,
        prefix: &mut String,
        out: &mut String,
        lines: &mut Vec<Range<usize>>,
    ) {
        let mut children = self.nodes[node as usize].children.clone();
        children.sort_unstable_by(|&a, &b| {
            self.nodes[a as usize].name.cmp(self.nodes[b as usize].name)
        });
        let (mut narrow, mut narrow_value) = (0usize, 0i64);
        for child in children {
            let Node {
                name, total, own, ..
            } = self.nodes[child as usize];
            if total < min_value {
                narrow += 1;
                narrow_value += total;
                continue;
            }
            let length = prefix.len();
            if !prefix.is_empty() {
                prefix.push(';');
            }
            prefix.push_str(name);
            if own > 0 {
                push_line(out, lines, prefix, own);
            }
            self.write_children(child, min_value, prefix, out, lines);
            prefix.truncate(length);
        }
        if narrow > 0 {
            let length = prefix.len();
            if !prefix.is_empty() {
                prefix.push(';');
            }
            let noun = if narrow == 1 { "frame" } else { "frames" };
            let _ = write!(prefix, "[{narrow} narrower {noun}]");
            push_line(out, lines, prefix, narrow_value);
            prefix.truncate(length);
        }
    }
}

fn push_line(out: &mut String, lines: &mut Vec<Range<usize>>, stack: &str, value: i64) {
    let start = out.len();
    out.push_str(stack);
    let _ = write!(out, " {value}");
    lines.push(start..out.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(lines: &[(&str, i64)]) -> BTreeMap<String, i64> {
        lines.iter().map(|&(s, v)| (s.to_owned(), v)).collect()
    }

    fn drawable(lines: &BTreeMap<String, i64>, min_value: i64) -> Vec<String> {
        let tree = FlameTree::new(lines);
        let mut text = String::new();
        let ranges = tree.drawable_lines(min_value, &mut text);
        ranges.into_iter().map(|r| text[r].to_owned()).collect()
    }

    fn sum(lines: &[String]) -> i64 {
        lines
            .iter()
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
            .sum()
    }

    #[test]
    fn narrow_siblings_merge_into_one_frame_that_says_so() {
        let lines = folded(&[
            ("t;a", 3),
            ("t;a;x", 100),
            ("t;a;y", 1),
            ("t;a;z;deep", 2),
            ("t;b", 1),
            ("u;c", 40),
        ]);
        let tree = FlameTree::new(&lines);
        assert_eq!(tree.total(), 147);
        let out = drawable(&lines, 5);
        assert_eq!(
            out,
            [
                "t;a 3",
                "t;a;x 100",
                "t;a;[2 narrower frames] 3",
                "t;[1 narrower frame] 1",
                "u;c 40",
            ]
        );
        assert_eq!(sum(&out), 147, "every sample still counts");
        assert_eq!(drawable(&lines, 1).len(), lines.len(), "nothing to merge");
    }

    #[test]
    fn a_frame_keeps_its_lines_together_whatever_its_siblings_are_named() {
        // Sorted as whole lines, `f::{{closure}}` comes between `f` and
        // `f;y` (':' sorts before ';'); in the tree, f's lines stay together.
        let lines = folded(&[("t;f", 1), ("t;f::{{closure}};x", 2), ("t;f;y", 3)]);
        assert_eq!(
            drawable(&lines, 1),
            ["t;f 1", "t;f;y 3", "t;f::{{closure}};x 2"]
        );
    }

    #[test]
    fn everything_narrow_is_one_remainder() {
        let lines: BTreeMap<String, i64> = (0..1000).map(|i| (format!("t{i};f"), 1)).collect();
        let out = drawable(&lines, 10);
        assert_eq!(out, ["[1000 narrower frames] 1000"]);
        let empty = BTreeMap::new();
        assert!(drawable(&empty, 1).is_empty());
        assert_eq!(FlameTree::new(&empty).total(), 0);
    }
}
