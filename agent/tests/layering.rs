//! The direction of imports between the crate's top-level modules, checked
//! so that it stays as ARCHITECTURE.md draws it: no cycle, the leaves
//! import no capability, and ARCHITECTURE.md names every module there is.
//!
//! An import is a `crate::<module>` path in code — comments, string
//! literals and test modules (`#[cfg(test)] mod tests` and test-only
//! files) do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that must import no capability: the shared vocabulary below
/// every capability.
const LEAVES: &[&str] = &[
    "config",
    "error",
    "histogram",
    "labels",
    "memory",
    "mode",
    "periodic",
    "report",
    "threads",
    "units",
];

/// The capabilities and what composes them.
const CAPABILITIES: &[&str] = &[
    "agent",
    "capabilities",
    "cpu",
    "doctor",
    "heap",
    "metrics",
    "push",
    "red",
    "resources",
    "runtime",
    "server",
    "spans",
];

/// Files compiled only into tests.
const TEST_ONLY: &[&str] = &["testing.rs", "fixtures.rs"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level modules: `src/<name>.rs` and `src/<name>/`, but `lib.rs`.
fn modules() -> BTreeSet<String> {
    std::fs::read_dir(src())
        .expect("agent/src")
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                Some(name)
            } else {
                name.strip_suffix(".rs")
                    .filter(|stem| *stem != "lib")
                    .map(str::to_owned)
            }
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments, string and char literals, and
/// with its `#[cfg(test)] mod tests` (last in every file) cut off.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 3,
            b'\'' if bytes.get(i + 1) == Some(&b'\\') => {
                let mut j = i + 3;
                while j < bytes.len() && bytes[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
            }
            b => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    out
}

/// The modules `code` names as `crate::<module>`, also inside
/// `crate::{a, b}` groups.
fn imports(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for name in group[..end].split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if modules.contains(name) {
                    found.insert(name.to_owned());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) {
                found.insert(name);
            }
        }
    }
    found
}

/// Who imports whom, between top-level modules.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src()).expect("under src");
        let name = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if TEST_ONLY.contains(&name.as_str()) {
            continue;
        }
        let first = relative
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let from = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
        if from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let targets = edges.entry(from.clone()).or_default();
        for to in imports(&code_of(&text), &modules) {
            if to != from {
                targets.insert(to);
            }
        }
    }
    edges
}

/// A cycle through `start`, if there is one.
fn cycle_from(
    node: &str,
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_owned());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(cycle) = cycle_from(next, graph, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let graph = graph();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = cycle_from(node, &graph, &mut Vec::new(), &mut done) {
            panic!(
                "import cycle: {} (ARCHITECTURE.md, \"Code map\")",
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_leaves_import_no_capability() {
    let graph = graph();
    for leaf in LEAVES {
        let wrong: Vec<&String> = graph
            .get(*leaf)
            .into_iter()
            .flatten()
            .filter(|to| CAPABILITIES.contains(&to.as_str()))
            .collect();
        assert!(
            wrong.is_empty(),
            "{leaf} imports {wrong:?}; it sits below every capability (ARCHITECTURE.md)"
        );
    }
}

#[test]
fn architecture_md_names_every_module_and_only_those() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md"))
            .expect("ARCHITECTURE.md at the repository root");
    let modules = modules();
    // The code map names each module as `src/<name>.rs` or `src/<name>/`.
    let mut named = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("`src/") {
        rest = &rest[at + "`src/".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        named.insert(name);
    }
    named.remove("lib");
    let missing: Vec<&String> = modules.difference(&named).collect();
    let stale: Vec<&String> = named.difference(&modules).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "ARCHITECTURE.md names modules that do not exist: {stale:?}"
    );
}

#[test]
fn no_code_comment_cites_a_document_outside_the_repository() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for (number, line) in text.lines().enumerate() {
            assert!(
                !line.contains("DESIGN §") && !line.contains("DESIGN.md"),
                "{}:{}: cite ARCHITECTURE.md or docs/ instead: {line}",
                file.display(),
                number + 1
            );
        }
    }
}
