//! The shared profile model — weighted stacks with symbolized locations and
//! the binaries they belong to — and its encoders: pprof protobuf (gzip),
//! folded stacks, SVG flame graph, text top table and JSON.
//!
//! Capabilities produce raw stacks of addresses; [`Profile`] is what they
//! become after symbolization, and every output format is rendered from it.

pub(crate) mod build;
mod flame_tree;
mod flamegraph;
mod folded;
pub(crate) mod frames;
mod json;
mod labels;
pub(crate) mod output;
mod pprof;
pub(crate) mod scheduler;
pub(crate) mod shelf;
mod top;
mod view;

pub use labels::{LabelTotal, LabelTotals, UNLABELLED};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub(crate) use build::{ProfileMeta, RawStack};
#[cfg(feature = "push-otlp")]
pub(crate) use pprof::function_names;
pub use view::{Trim, View};

use crate::labels::LabelSet;
use crate::symbols::SymbolizedFrame;
use crate::Error;

/// What a sample value measures, e.g. `cpu` in `nanoseconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ValueType {
    /// What is measured (`samples`, `cpu`, `inuse_space`, …).
    pub kind: String,
    /// Its unit (`count`, `nanoseconds`, `bytes`, …).
    pub unit: String,
}

impl ValueType {
    /// A value type from its kind and unit.
    pub fn new(kind: impl Into<String>, unit: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            unit: unit.into(),
        }
    }
}

/// A binary image that locations point into.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mapping {
    /// First address of the executable segment.
    pub start: u64,
    /// One past its last address.
    pub limit: u64,
    /// File offset that `start` corresponds to.
    pub file_offset: u64,
    /// Path of the binary, or `[vdso]`.
    pub file: String,
    /// GNU build ID in hex, when the binary has one.
    pub build_id: Option<String>,
    /// Whether any location in it was resolved to a function name.
    pub has_functions: bool,
    /// Whether any location in it has a source file and line.
    pub has_lines: bool,
    /// Whether any location in it has inlined frames.
    pub has_inline_frames: bool,
}

/// A code address and what it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Location {
    /// The lookup address: an interrupted instruction, or a return address
    /// minus one.
    pub address: u64,
    /// Index into [`Profile::mappings`].
    pub mapping: Option<usize>,
    /// The inline chain at this address, innermost (the inlined callee)
    /// first. Unresolved addresses have one frame with a descriptive name
    /// (`libfoo.so+0x1234`).
    pub frames: Arc<[SymbolizedFrame]>,
    /// Whether `frames` names real functions. pprof output leaves the lines
    /// of unresolved locations empty so server-side symbolizers fill them in.
    pub symbolized: bool,
}

/// One stack and its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sample {
    /// Indices into [`Profile::locations`], leaf first.
    pub locations: Vec<usize>,
    /// One value per [`Profile::sample_types`] entry.
    pub values: Vec<i64>,
    /// Name of the thread the stack was sampled on.
    pub thread: Option<Arc<str>>,
    /// Labels of the code that was running (`route`, `method`, `task`,
    /// the user's own; `state` in wall-clock profiles).
    pub labels: LabelSet,
}

/// A symbolized profile: stacks with weights, ready to encode.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Profile {
    /// What each sample value measures.
    pub sample_types: Vec<ValueType>,
    /// Index of the value the text and pprof views show by default.
    pub default_value: usize,
    /// Index of the value flame graphs and folded stacks count.
    pub flame_value: usize,
    /// What the sampling period measures.
    pub period_type: ValueType,
    /// Sampling period in units of `period_type`.
    pub period: i64,
    /// Start of the profiled window.
    pub started_at: SystemTime,
    /// Length of the profiled window.
    pub duration: Duration,
    /// A one-line description, e.g. `CPU profile of orders (pid 7)`.
    pub title: String,
    /// Human-readable notes (window, rates, estimates), shown by every format.
    pub comments: Vec<String>,
    /// The stacks.
    pub samples: Vec<Sample>,
    /// Every distinct address of every stack.
    pub locations: Vec<Location>,
    /// Binaries the locations belong to; the main executable first.
    pub mappings: Vec<Mapping>,
    /// A regular expression (RE2, matching a whole function name) of
    /// frames that pprof tools drop from every stack together with
    /// everything they call: heap profiles name the allocator's functions,
    /// so `go tool pprof -top` ranks the code that allocated, not
    /// `alloc::raw_vec`. The frames stay in the profile.
    pub drop_frames: Option<&'static str>,
}

/// Output formats of profile endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// gzip-compressed pprof protobuf (`go tool pprof`, Pyroscope, Parca).
    Pprof,
    /// Interactive SVG flame graph (inferno).
    Svg,
    /// Folded stacks, one `thread;root;…;leaf count` line per stack.
    Folded,
    /// A top table of functions by flat and cumulative weight.
    Text,
    /// Stacks with their values as JSON.
    Json,
}

impl Format {
    /// Every format, in the order documentation lists them.
    pub const ALL: [Format; 5] = [
        Format::Pprof,
        Format::Svg,
        Format::Folded,
        Format::Text,
        Format::Json,
    ];

    /// Parses the `format` query parameter.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pprof" | "proto" | "pb" => Some(Format::Pprof),
            "svg" | "flamegraph" => Some(Format::Svg),
            "folded" | "collapsed" => Some(Format::Folded),
            "text" | "top" | "txt" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// The canonical name used in `format=`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Pprof => "pprof",
            Format::Svg => "svg",
            Format::Folded => "folded",
            Format::Text => "text",
            Format::Json => "json",
        }
    }

    /// The HTTP `Content-Type` of the rendered bytes.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Pprof => "application/octet-stream",
            Format::Svg => "image/svg+xml",
            Format::Folded | Format::Text => "text/plain; charset=utf-8",
            Format::Json => "application/json",
        }
    }

    /// File name extension for `Content-Disposition`.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Pprof => "pb.gz",
            Format::Svg => "svg",
            Format::Folded => "folded.txt",
            Format::Text => "txt",
            Format::Json => "json",
        }
    }
}

/// A differential flame graph of two profiles of the same kind (for
/// example two heap snapshots): widths are `after`'s values, red frames
/// grew, blue frames shrank.
pub fn differential_svg(
    before: &Profile,
    after: &Profile,
    view: &View,
    title: &str,
) -> Result<Vec<u8>, Error> {
    flamegraph::render_differential(before, after, view, title)
}

/// The folded `stack before after` lines of two profiles (inferno's and
/// FlameGraph's differential input).
pub fn differential_folded(before: &Profile, after: &Profile, view: &View) -> String {
    flamegraph::differential_folded(before, after, view)
}

/// The executable's file name, for report titles.
pub(crate) fn process_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "process".to_owned())
}

/// `text` safe inside XML/HTML text and attribute values.
pub(crate) fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Profile {
    /// Renders the profile in `format`, with the default [`View`] for the
    /// human formats (plumbing folded).
    pub fn render(&self, format: Format) -> Result<Vec<u8>, Error> {
        self.render_view(format, &View::default())
    }

    /// Renders the profile in `format`; SVG, folded, text and JSON show
    /// the stacks as `view` says, pprof keeps every frame of every stack.
    pub fn render_view(&self, format: Format, view: &View) -> Result<Vec<u8>, Error> {
        self.render_into(format, view)
            .map(output::ReportBuffer::into_vec)
    }

    /// Renders the profile as bytes whose pages go back to the OS when
    /// dropped (what the server sends).
    pub(crate) fn render_bytes(
        &self,
        format: Format,
        view: &View,
    ) -> Result<axum::body::Bytes, Error> {
        self.render_into(format, view)
            .map(output::ReportBuffer::into_bytes)
    }

    fn render_into(&self, format: Format, view: &View) -> Result<output::ReportBuffer, Error> {
        use std::io::Write;
        let mut out = output::ReportBuffer::default();
        let written = match format {
            Format::Pprof => out.write_all(&pprof::encode(self)?),
            Format::Svg => flamegraph::render(self, view, &mut out),
            Format::Folded => folded::write(self, view, &mut out),
            Format::Text => out.write_all(top::render(self, view, top::DEFAULT_ROWS).as_bytes()),
            Format::Json => json::render(self, view, &mut out),
        };
        written.map_err(|source| Error::Encode {
            format: format.name(),
            source,
        })?;
        Ok(out)
    }

    /// Memory this profile holds, estimated (frames shared with the symbol
    /// cache are not counted).
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let samples: usize = self
            .samples
            .iter()
            .map(|s| {
                size_of::<Sample>() + s.locations.len() * size_of::<usize>() + s.values.len() * 8
            })
            .sum();
        let mappings: usize = self
            .mappings
            .iter()
            .map(|m| {
                size_of::<Mapping>() + m.file.len() + m.build_id.as_ref().map_or(0, String::len)
            })
            .sum();
        samples + self.locations.len() * size_of::<Location>() + mappings
    }

    /// Sum of value `index` over all samples.
    pub fn total(&self, index: usize) -> i64 {
        self.samples
            .iter()
            .filter_map(|s| s.values.get(index))
            .sum()
    }

    /// The frames of one sample from root to leaf, expanding inline chains
    /// (callers before the functions inlined into them).
    pub fn frames_root_first<'a>(
        &'a self,
        sample: &'a Sample,
    ) -> impl Iterator<Item = &'a SymbolizedFrame> + 'a {
        sample
            .locations
            .iter()
            .rev()
            .filter_map(|&i| self.locations.get(i))
            .flat_map(|location| location.frames.iter().rev())
    }
}
