//! `/debug/doctor` (the latest diagnosis, JSON or a Clinic-style text),
//! `/debug/history` (the one-second history as columns) and
//! `/debug/doctor/artifacts/{id}` (CPU profiles captured for findings).

use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::Response;

use super::error::{clip, ApiError};
use super::limits::is_head;
use super::query::Query;
use super::response::{file_response, json_response, report_response};
use super::{blocking, AppState};
use crate::doctor::{parse_series, parse_since};
use crate::profile::Format;

/// `GET /debug/doctor?format=json|text`.
pub(crate) async fn doctor(
    State(state): State<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let view = query.report_view()?;
    Ok(report_response(&state.doctor.diagnose(), view))
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
        .doctor
        .with_history(|history| parse_series(query.get("series").unwrap_or(""), history))?;
    let columns = state.doctor.history(since, &series);
    Ok(json_response(&columns))
}

/// `GET /debug/doctor/artifacts/{id}?format=svg|pprof|folded|text|json`: a
/// CPU profile the doctor captured when a finding opened.
pub(crate) async fn artifact(
    State(state): State<AppState>,
    method: Method,
    Path(id): Path<String>,
    query: Query,
) -> Result<Response, ApiError> {
    let known = || {
        let ids: Vec<String> = state
            .doctor
            .cpu_artifact_ids()
            .iter()
            .map(u64::to_string)
            .collect();
        if ids.is_empty() {
            "no CPU profiles are kept; findings list theirs under artifacts in /debug/doctor"
                .to_owned()
        } else {
            format!("kept CPU profiles: {}", ids.join(", "))
        }
    };
    let profile = id
        .parse::<u64>()
        .ok()
        .and_then(|id| state.doctor.cpu_artifact(id))
        .ok_or_else(|| ApiError::Missing {
            message: format!("no doctor artifact {:?}", clip(&id)),
            hint: known(),
        })?;
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
