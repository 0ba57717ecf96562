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

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;
use std::ops::Range;

use super::frames::{is_plumbing, marker, MIN_FOLDED_RUN};
use super::view::{Trim, View};
use super::Profile;

/// Frames of a call tree with their summed values.
#[derive(Debug)]
pub(super) struct FlameTree<'a> {
    /// Every frame name the tree uses, by id.
    names: Vec<Cow<'a, str>>,
    /// Index 0 is the root (all stacks); it has no name.
    nodes: Vec<Node>,
    /// A node's child by name id.
    index: HashMap<(u32, u32), u32>,
}

#[derive(Debug)]
struct Node {
    name: u32,
    /// Value of every stack through this frame.
    total: i64,
    /// Value of the stacks that end at this frame.
    own: i64,
    children: Vec<u32>,
}

/// Names by id, each classified once: a profile has thousands of samples
/// but only hundreds of distinct functions.
struct Names<'a> {
    ids: HashMap<&'a str, u32>,
    /// Per id: whether it is plumbing (folded by `trim=plumbing`).
    plumbing: Vec<bool>,
    /// Per id: whether it contains the view's focus.
    focused: Vec<bool>,
    /// Markers by the ids of the run they fold.
    markers: HashMap<Vec<u32>, u32>,
}

impl<'a> Names<'a> {
    fn id(&mut self, tree: &mut FlameTree<'a>, name: &'a str, focus: Option<&str>) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = tree.name(Cow::Borrowed(name));
        self.ids.insert(name, id);
        self.plumbing.push(is_plumbing(name));
        self.focused.push(focus.is_some_and(|f| name.contains(f)));
        id
    }

    fn marker(&mut self, tree: &mut FlameTree<'a>, run: &[u32]) -> u32 {
        if let Some(&id) = self.markers.get(run) {
            return id;
        }
        let text: Vec<&str> = run.iter().map(|&id| &*tree.names[id as usize]).collect();
        let id = tree.name(Cow::Owned(marker(&text)));
        self.markers.insert(run.to_vec(), id);
        self.plumbing.push(false);
        self.focused.push(false);
        id
    }
}

impl<'a> FlameTree<'a> {
    fn empty() -> Self {
        FlameTree {
            names: Vec::new(),
            nodes: vec![Node {
                name: u32::MAX,
                total: 0,
                own: 0,
                children: Vec::new(),
            }],
            index: HashMap::new(),
        }
    }

    fn name(&mut self, name: Cow<'a, str>) -> u32 {
        self.names.push(name);
        (self.names.len() - 1) as u32
    }

    /// The tree of the profile's flame-graph value as `view` shows it:
    /// the thread as the root frame, plumbing folded as the view says,
    /// only the stacks through its focus — the stacks of the folded
    /// format, built without writing them out.
    pub(super) fn of_profile(profile: &'a Profile, view: &View) -> Self {
        let mut tree = FlameTree::empty();
        let focus = view.focus_text();
        let mut names = Names {
            ids: HashMap::new(),
            plumbing: Vec::new(),
            focused: Vec::new(),
            markers: HashMap::new(),
        };
        // Each location's frames as name ids, root first, resolved once.
        let mut location_ids: Vec<Option<Range<usize>>> = vec![None; profile.locations.len()];
        let mut flat: Vec<u32> = Vec::new();
        let (mut stack, mut shown) = (Vec::new(), Vec::new());
        for sample in &profile.samples {
            let value = sample.values.get(profile.flame_value).copied().unwrap_or(0);
            if value <= 0 {
                continue;
            }
            stack.clear();
            for &index in sample.locations.iter().rev() {
                let Some(location) = profile.locations.get(index) else {
                    continue;
                };
                let range = match &location_ids[index] {
                    Some(range) => range.clone(),
                    None => {
                        let start = flat.len();
                        for frame in location.frames.iter().rev() {
                            let id = names.id(&mut tree, &frame.function, focus);
                            flat.push(id);
                        }
                        location_ids[index] = Some(start..flat.len());
                        start..flat.len()
                    }
                };
                stack.extend_from_slice(&flat[range]);
            }
            if focus.is_some() && !stack.iter().any(|&id| names.focused[id as usize]) {
                continue;
            }
            shown.clear();
            if let Some(thread) = &sample.thread {
                shown.push(names.id(&mut tree, thread, focus));
            }
            match view.trim_mode() {
                Trim::None => shown.extend_from_slice(&stack),
                _ => fold(&mut tree, &mut names, &stack, &mut shown),
            }
            if shown.is_empty() {
                shown.push(names.id(&mut tree, "[unknown]", focus));
            }
            tree.add(&shown, value);
        }
        tree
    }

    /// Adds one stack (name ids, root first) with its value.
    fn add(&mut self, stack: &[u32], value: i64) {
        self.nodes[0].total += value;
        let mut parent = 0u32;
        for &name in stack {
            let nodes = &mut self.nodes;
            let node = *self.index.entry((parent, name)).or_insert_with(|| {
                let id = nodes.len() as u32;
                nodes.push(Node {
                    name,
                    total: 0,
                    own: 0,
                    children: Vec::new(),
                });
                nodes[parent as usize].children.push(id);
                id
            });
            self.nodes[node as usize].total += value;
            parent = node;
        }
        self.nodes[parent as usize].own += value;
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
        let name = |node: u32| &*self.names[self.nodes[node as usize].name as usize];
        let mut children = self.nodes[node as usize].children.clone();
        children.sort_unstable_by(|&a, &b| name(a).cmp(name(b)));
        let (mut narrow, mut narrow_value) = (0usize, 0i64);
        for child in children {
            let Node { total, own, .. } = self.nodes[child as usize];
            if total < min_value {
                narrow += 1;
                narrow_value += total;
                continue;
            }
            let length = prefix.len();
            if !prefix.is_empty() {
                prefix.push(';');
            }
            super::folded::push_frame(prefix, name(child));
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

/// `fold_plumbing` on name ids: each run of plumbing frames but the leaf,
/// two frames or more, becomes its marker.
fn fold<'a>(tree: &mut FlameTree<'a>, names: &mut Names<'a>, stack: &[u32], out: &mut Vec<u32>) {
    let leaf = stack.len().saturating_sub(1);
    let mut run_start = 0;
    let mut in_run = false;
    for (index, &id) in stack.iter().enumerate() {
        if index != leaf && names.plumbing[id as usize] {
            if !in_run {
                run_start = index;
                in_run = true;
            }
            continue;
        }
        if in_run {
            flush(tree, names, &stack[run_start..index], out);
            in_run = false;
        }
        out.push(id);
    }
}

fn flush<'a>(tree: &mut FlameTree<'a>, names: &mut Names<'a>, run: &[u32], out: &mut Vec<u32>) {
    if run.len() >= MIN_FOLDED_RUN {
        out.push(names.marker(tree, run));
    } else {
        out.extend_from_slice(run);
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
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::profile::build::tests::sample_profile;
    use crate::profile::{folded, Location, Sample};
    use crate::symbols::SymbolizedFrame;

    fn folded(lines: &[(&str, i64)]) -> BTreeMap<String, i64> {
        lines.iter().map(|&(s, v)| (s.to_owned(), v)).collect()
    }

    /// The tree of folded lines, each frame its name.
    fn tree_of(lines: &BTreeMap<String, i64>) -> FlameTree<'_> {
        let mut tree = FlameTree::empty();
        let mut ids: HashMap<&str, u32> = HashMap::new();
        for (line, &value) in lines {
            if value <= 0 {
                continue;
            }
            let stack: Vec<u32> = line
                .split(';')
                .map(|f| *ids.entry(f).or_insert_with(|| tree.name(Cow::Borrowed(f))))
                .collect();
            tree.add(&stack, value);
        }
        tree
    }

    fn lines_of(tree: &FlameTree<'_>, min_value: i64) -> Vec<String> {
        let mut text = String::new();
        let ranges = tree.drawable_lines(min_value, &mut text);
        ranges.into_iter().map(|r| text[r].to_owned()).collect()
    }

    fn drawable(lines: &BTreeMap<String, i64>, min_value: i64) -> Vec<String> {
        lines_of(&tree_of(lines), min_value)
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
        assert_eq!(tree_of(&lines).total(), 147);
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
        assert_eq!(tree_of(&empty).total(), 0);
    }

    /// A profile of made-up stacks: plumbing runs of every length, inline
    /// chains, a name with the folded format's separator, threads and none.
    fn plumbing_profile() -> Profile {
        let mut profile = sample_profile();
        let names: [&[&str]; 8] = [
            &["std::sys::pal::unix::thread::Thread::new::thread_start"],
            &["tokio::runtime::task::harness::Harness<T,S>::poll"],
            // Inlined: the callee first.
            &[
                "<core::pin::Pin<P> as core::future::future::Future>::poll",
                "tokio::runtime::task::core::Core<T,S>::poll",
            ],
            &["app::handler::checkout"],
            &["hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_loop"],
            &["app::render<[u8; 4]>"],
            &["core::ops::function::FnOnce::call_once"],
            &["memcpy"],
        ];
        profile.locations = names
            .iter()
            .enumerate()
            .map(|(i, frames)| Location {
                address: 0x1000 + i as u64,
                mapping: None,
                frames: frames
                    .iter()
                    .map(|&f| SymbolizedFrame {
                        function: Arc::from(f),
                        file: None,
                        line: None,
                    })
                    .collect(),
                symbolized: true,
            })
            .collect();
        let template = profile.samples[0].clone();
        // Leaf first, as samples are.
        let stacks: [(&[usize], Option<&str>, i64); 8] = [
            (&[3, 2, 1, 0], Some("worker"), 5),
            (&[7, 5, 3, 2, 1, 0], Some("worker"), 7),
            (&[6, 4, 2, 1, 0], Some("worker"), 2),
            (&[7, 6, 4, 2, 1, 0], Some("worker"), 1),
            (&[1, 0], Some("blocking"), 3),
            (&[0], None, 4),
            (&[5, 1], None, 1),
            (&[], None, 2),
        ];
        profile.samples = stacks
            .iter()
            .map(|&(locations, thread, value)| Sample {
                locations: locations.to_vec(),
                values: vec![value, value * 10],
                thread: thread.map(Arc::from),
                ..template.clone()
            })
            .collect();
        profile
    }

    #[test]
    fn the_tree_of_a_profile_is_the_tree_of_its_folded_stacks() {
        let profile = plumbing_profile();
        for view in [
            View::default(),
            View::default().trim(Trim::None),
            View::default().focus("checkout"),
            View::default().trim(Trim::None).focus("render"),
            View::default().focus("no such function"),
        ] {
            let lines = folded::lines(&profile, &view);
            let direct = FlameTree::of_profile(&profile, &view);
            let through_text = tree_of(&lines);
            assert_eq!(direct.total(), through_text.total(), "{view:?}");
            for min_value in [1, 3, 30] {
                assert_eq!(
                    lines_of(&direct, min_value),
                    lines_of(&through_text, min_value),
                    "{view:?}, min {min_value}"
                );
            }
        }
        let all = lines_of(&FlameTree::of_profile(&profile, &View::default()), 1);
        assert!(all.iter().any(|l| l.contains("[std → tokio: ")), "{all:#?}");
        assert!(
            all.iter()
                .any(|l| l.contains("app::render<[u8\u{ff1b} 4]>")),
            "{all:#?}"
        );
    }
}
