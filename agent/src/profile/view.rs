//! How the human views (SVG, folded, text, JSON) show a profile's stacks:
//! plumbing folded or every frame, and optionally only the stacks through
//! one function. pprof output always keeps every frame; its tools filter
//! for themselves.

use std::borrow::Cow;

use super::frames::fold_plumbing;
use super::{Profile, Sample};

/// Which frames a human view shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trim {
    /// Each run of runtime and framework plumbing (tokio, hyper, axum,
    /// tower, future combinators, thread starts, panic catchers, closure
    /// shims) becomes one marker frame that says what it hides, e.g.
    /// `[std → tokio → hyper → axum: 43 frames]`. The default.
    #[default]
    Plumbing,
    /// Every frame, as sampled.
    None,
}

impl Trim {
    /// Parses `trim=`: `plumbing` (also `default`) or `none` (also `all`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "plumbing" | "default" => Some(Trim::Plumbing),
            "none" | "all" => Some(Trim::None),
            _ => None,
        }
    }
}

/// How a human view shows stacks: [`Trim`] and an optional focus.
///
/// ```
/// use stethoscope::profile::{Trim, View};
///
/// let view = View::default().trim(Trim::None).focus("checkout");
/// assert_eq!(view.trim_mode(), Trim::None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct View {
    trim: Trim,
    focus: Option<String>,
}

impl View {
    /// Folds plumbing (the default) or shows every frame.
    pub fn trim(mut self, trim: Trim) -> Self {
        self.trim = trim;
        self
    }

    /// Keeps only the stacks with a frame whose function name contains
    /// `text` (case-sensitive), like `go tool pprof -focus`.
    pub fn focus(mut self, text: impl Into<String>) -> Self {
        let text = text.into();
        self.focus = (!text.is_empty()).then_some(text);
        self
    }

    /// The trim mode.
    pub fn trim_mode(&self) -> Trim {
        self.trim
    }

    /// The focus, if any.
    pub fn focus_text(&self) -> Option<&str> {
        self.focus.as_deref()
    }

    /// Whether `sample` is shown at all.
    pub(crate) fn shows(&self, profile: &Profile, sample: &Sample) -> bool {
        match &self.focus {
            None => true,
            Some(focus) => profile
                .frames_root_first(sample)
                .any(|f| f.function.contains(focus.as_str())),
        }
    }

    /// The frames of `sample` this view shows, root first, or `None` when
    /// the focus excludes it.
    pub(crate) fn stack<'a>(
        &self,
        profile: &'a Profile,
        sample: &'a Sample,
    ) -> Option<Vec<Cow<'a, str>>> {
        if !self.shows(profile, sample) {
            return None;
        }
        let names = profile.frames_root_first(sample).map(|f| &*f.function);
        Some(match self.trim {
            Trim::Plumbing => fold_plumbing(names),
            Trim::None => names.map(Cow::Borrowed).collect(),
        })
    }

    /// A line for report headers saying what the view left out, if
    /// anything worth saying.
    pub(crate) fn note(&self) -> Option<String> {
        let trim = match self.trim {
            Trim::Plumbing => Some("runtime/framework plumbing folded into [… frames] markers (trim=none shows every frame)"),
            Trim::None => None,
        };
        let focus = self
            .focus
            .as_deref()
            .map(|f| format!("only stacks through a function matching {f:?} (focus)"));
        match (trim, focus) {
            (None, None) => None,
            (Some(t), None) => Some(t.to_owned()),
            (None, Some(f)) => Some(f),
            (Some(t), Some(f)) => Some(format!("{f}; {t}")),
        }
    }
}
