//! `/debug/doctor` (the latest diagnosis, JSON or a Clinic-style text),
//! `/debug/history` (the one-second history as columns) and
//! `/debug/doctor/artifacts/{id}` (CPU profiles captured for findings).

use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::Response;

use super::error::{clip, ApiError};
use super::limits::is_head;
use super::query::parse_since;
use super::query::Query;
use super::response::{file_response, json_response, report_response};
use super::{blocking, AppState};
use crate::profile::Format;
use crate::Error;

/// `GET /debug/doctor?format=json|text`.
pub(crate) async fn doctor(
    State(state): State<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let view = query.report_view()?;
    Ok(report_response(&state.caps.doctor.diagnose(), view))
}

/// `GET /debug/history?since=-5m&series=cpu_cores,lag_p99_ms&format=json`.
pub(crate) async fn history(
    State(state): State<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    query.choice("format", (), &[("json", ())])?;
    let since = query
        .get("since")
        .map(|text| parse_since(text, SystemTime::now()))
        .transpose()?;
    let series = state
        .caps
        .doctor
        .with_history(|history| parse_series(query.get("series").unwrap_or(""), history))?;
    let columns = state.caps.doctor.history(since, &series);
    Ok(json_response(&columns))
}

/// `GET /debug/doctor/artifacts/{id}?format=…`: what the doctor captured
/// when a finding opened — a CPU profile (`svg`, the default, `pprof`,
/// `folded`, `text`, `json`), a thread dump (`text`, the default, `json`,
/// `pprof`, as `/debug/threads`) or a task dump (`text`, `json`).
pub(crate) async fn artifact(
    State(state): State<AppState>,
    method: Method,
    Path(id): Path<String>,
    query: Query,
) -> Result<Response, ApiError> {
    let known = || {
        let ids: Vec<String> = state
            .caps
            .doctor
            .artifact_ids()
            .iter()
            .map(u64::to_string)
            .collect();
        if ids.is_empty() {
            "no artifacts are kept; findings list theirs under artifacts in /debug/doctor"
                .to_owned()
        } else {
            format!("kept artifacts: {}", ids.join(", "))
        }
    };
    let missing = || ApiError::Missing {
        message: format!("no doctor artifact {:?}", clip(&id)),
        hint: known(),
    };
    let number = id.parse::<u64>().map_err(|_| missing())?;
    let Some(profile) = state.caps.doctor.cpu_artifact(number) else {
        #[cfg(feature = "runtime")]
        if let Some(dump) = state.caps.doctor.dump_artifact(number) {
            return super::threads::dump_artifact(dump, &method, &query).await;
        }
        return Err(missing());
    };
    let format = query.format(Format::Svg)?;
    let view = query.view()?;
    let name = format!("doctor-cpu-{id}");
    if is_head(&method) {
        return Ok(file_response(Vec::new(), format, &name, profile.started_at));
    }
    let taken_at = profile.started_at;
    let bytes = blocking(move || profile.render_bytes(format, &view)).await??;
    Ok(file_response(bytes, format, &name, taken_at))
}

/// Parses `series`: a comma-separated list of series names; empty means
/// every series the history records.
///
/// # Errors
///
/// [`Error::UnknownSeries`] for the first unknown name, listing the valid ones.
pub(crate) fn parse_series(
    text: &str,
    history: &crate::doctor::History,
) -> Result<Vec<crate::doctor::Series>, Error> {
    let mut series = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(s) = history.series_named(name) else {
            let known: Vec<String> = history
                .all_series()
                .into_iter()
                .filter_map(|s| history.series_name(s))
                .collect();
            return Err(Error::UnknownSeries {
                name: name.chars().take(100).collect(),
                known: known.join(", "),
            });
        };
        if !series.contains(&s) {
            series.push(s);
        }
    }
    if series.is_empty() {
        return Ok(history.all_series());
    }
    Ok(series)
}

#[cfg(test)]
mod tests {
    use super::parse_series;
    use crate::doctor::History;

    #[test]
    fn series_lists_resolve_dedupe_and_default_to_everything() {
        let mut history = History::new(60);
        history.resource_slot("db_pool").unwrap();
        let series = parse_series(
            "rss_bytes,lag_p99_ms, rss_bytes,db_pool.saturation",
            &history,
        )
        .unwrap();
        assert_eq!(series.len(), 3);
        assert_eq!(parse_series("", &history).unwrap(), history.all_series());
        assert_eq!(parse_series(" , ", &history).unwrap(), history.all_series());
        let error = parse_series("rss_bytes,rss", &history)
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"rss\""), "{error}");
        assert!(
            error.contains("rss_bytes") && error.contains("db_pool.utilization"),
            "{error}"
        );
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        const SERIES: &[&str] = &[
            "cpu_cores",
            "rss_bytes",
            ",",
            " ",
            "db_pool",
            ".utilization",
            ".saturation",
            "lag_p99_ms",
            "%",
            "_",
        ];

        proptest! {
            #[test]
            fn series_never_panic(value in input_of(SERIES)) {
                let mut history = History::new(60);
                history.resource_slot("db_pool");
                bounded("series", &value, || {
                    if let Ok(series) = parse_series(&value, &history) {
                        assert!(!series.is_empty());
                    }
                });
            }
        }
    }
}
