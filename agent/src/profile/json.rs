//! Stacks with their values as JSON, for scripts and dashboards.

use serde::Serialize;

use super::view::View;
use super::Profile;

#[derive(Serialize)]
struct JsonProfile<'a> {
    title: &'a str,
    started_at: String,
    duration_ms: f64,
    comments: &'a [String],
    /// What the view left out (folded plumbing, a focus), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    view: Option<String>,
    sample_types: Vec<JsonValueType<'a>>,
    period: i64,
    period_type: JsonValueType<'a>,
    totals: serde_json::Map<String, serde_json::Value>,
    stacks: Vec<JsonStack<'a>>,
}

#[derive(Serialize)]
struct JsonValueType<'a> {
    r#type: &'a str,
    unit: &'a str,
}

#[derive(Serialize)]
struct JsonStack<'a> {
    thread: Option<&'a str>,
    labels: &'a crate::labels::LabelSet,
    /// Leaf first, as in every stack of the agent's JSON.
    frames: Vec<std::borrow::Cow<'a, str>>,
    values: serde_json::Map<String, serde_json::Value>,
}

/// Writes the profile as JSON with stacks sorted by the default value,
/// heaviest first.
pub(super) fn render(
    profile: &Profile,
    view: &View,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let values_of = |values: &[i64]| {
        profile
            .sample_types
            .iter()
            .zip(values)
            .map(|(vt, v)| (vt.kind.clone(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
    };
    let totals: Vec<i64> = (0..profile.sample_types.len())
        .map(|i| profile.total(i))
        .collect();
    let mut order: Vec<usize> = (0..profile.samples.len()).collect();
    let key = |i: &usize| {
        profile.samples[*i]
            .values
            .get(profile.default_value)
            .copied()
            .unwrap_or(0)
    };
    order.sort_by_key(|i| std::cmp::Reverse(key(i)));
    let stacks = order
        .into_iter()
        .filter_map(|i| {
            let sample = &profile.samples[i];
            let mut frames = view.stack(profile, sample)?;
            frames.reverse();
            Some(JsonStack {
                thread: sample.thread.as_deref(),
                labels: &sample.labels,
                frames,
                values: values_of(&sample.values),
            })
        })
        .collect();
    let document = JsonProfile {
        title: &profile.title,
        started_at: rfc3339(profile.started_at),
        duration_ms: profile.duration.as_secs_f64() * 1e3,
        comments: &profile.comments,
        view: view.note(),
        sample_types: profile
            .sample_types
            .iter()
            .map(|vt| JsonValueType {
                r#type: &vt.kind,
                unit: &vt.unit,
            })
            .collect(),
        period: profile.period,
        period_type: JsonValueType {
            r#type: &profile.period_type.kind,
            unit: &profile.period_type.unit,
        },
        totals: values_of(&totals),
        stacks,
    };
    serde_json::to_writer_pretty(out, &document).map_err(std::io::Error::from)
}

use crate::units::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::build::tests::sample_profile;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stacks_are_leaf_first_with_named_values() {
        let mut bytes = Vec::new();
        render(&sample_profile(), &View::default(), &mut bytes).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["totals"]["samples"], 4);
        assert_eq!(doc["totals"]["cpu"], 40_000_000);
        assert_eq!(doc["started_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(doc["duration_ms"], 2000.0);
        let first = &doc["stacks"][0];
        assert_eq!(first["thread"], "worker");
        assert_eq!(first["values"]["samples"], 3);
        let frames = first["frames"].as_array().unwrap();
        assert!(frames[0].as_str().unwrap().ends_with("leaf_for_tests"));
        assert!(frames[1].as_str().unwrap().ends_with("caller_for_tests"));
    }

    #[test]
    fn rfc3339_handles_leap_years() {
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
