//! `/debug/profiles`: CPU, wall-clock or allocation profiles taken on
//! request and kept on the agent (a few, bounded in memory), so that one
//! window can be looked at as a flame graph and downloaded as pprof,
//! folded or text — what the dashboard's "CPU profile" and "allocations"
//! buttons do.

use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;

use super::access::Peer;
use super::error::{clip, ApiError};
use super::limits::is_head;
use super::pprof::{render_view, take_profile, Past, ProfileParams};
use super::query::Query;
use super::response::{file_response, json_response};
use super::{blocking, AppState};
use crate::cpu::ProfileMode;
use crate::cpu::DEFAULT_FLAMEGRAPH_SECONDS;
use crate::profile::shelf::KeptFacts;
use crate::profile::Format;

/// `POST /debug/profiles?seconds=10&hz=99&mode=cpu|wall`: takes a profile
/// (the one-sampler rule applies: 409 at another rate) and keeps it;
/// answers 201 with what was kept and its URL in `Location`. With `since`,
/// `start`/`end` or `pin`, keeps the continuous profiler's past instead, at
/// once. With `kind=allocs`, keeps the sampled allocations of the next
/// `seconds` instead (`alloc_objects`, `alloc_space`).
pub(crate) async fn take(
    State(state): State<AppState>,
    peer: Peer,
    query: Query,
) -> Result<Response, ApiError> {
    let allocs = query.choice("kind", false, &[("cpu", false), ("allocs", true)])?;
    if allocs {
        return take_allocations(&state, &query).await;
    }
    let params = ProfileParams::parse(
        &query,
        DEFAULT_FLAMEGRAPH_SECONDS,
        Format::Json,
        state.config.max_profile_seconds,
    )?;
    let raw = match Past::parse(&query, SystemTime::now())? {
        // The continuous profiler's past, kept like a fresh profile.
        Some(past) => past.read(&state)?.0,
        None => take_profile(&state, &params, peer).await?,
    };
    keep(&state, raw, params.symbolize).await
}

/// `POST /debug/profiles?kind=allocs&seconds=10`: counts the sampled
/// allocations of the next `seconds` and keeps their profile.
async fn take_allocations(state: &AppState, query: &Query) -> Result<Response, ApiError> {
    let seconds = super::heap::allocation_seconds(state, query, DEFAULT_FLAMEGRAPH_SECONDS)?;
    let symbolize = query.flag("symbolize", true)?;
    let (profile, samples) = super::heap::record_allocations(state, seconds, symbolize).await?;
    let facts = KeptFacts {
        mode: "allocs",
        hz: 0,
        samples,
    };
    Ok(kept_response(state.caps.kept.keep(profile, facts)))
}

fn kept_response(info: crate::profile::shelf::KeptInfo) -> Response {
    let mut response = json_response(&info);
    *response.status_mut() = StatusCode::CREATED;
    if let Ok(location) = HeaderValue::from_str(&info.url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Symbolizes `raw` off the server thread and keeps it: 201 with its URL.
async fn keep(
    state: &AppState,
    raw: crate::cpu::CpuProfile,
    symbolize: bool,
) -> Result<Response, ApiError> {
    let facts = KeptFacts {
        mode: match raw.mode() {
            ProfileMode::Wall(_) => "wall",
            _ => "cpu",
        },
        hz: raw.hz(),
        samples: raw.sample_count(),
    };
    let profile = blocking(move || raw.to_profile_symbolized(symbolize)).await?;
    Ok(kept_response(state.caps.kept.keep(profile, facts)))
}

/// `GET /debug/profiles`: the kept profiles, oldest first.
pub(crate) async fn list(State(state): State<AppState>) -> Response {
    json_response(&serde_json::json!({ "profiles": state.caps.kept.list() }))
}

/// `GET /debug/profiles/{id}?format=svg|pprof|folded|text|json` (and the
/// views of `/debug/pprof/profile`: `trim`, `focus`, `by`, `group`).
pub(crate) async fn get(
    State(state): State<AppState>,
    method: Method,
    Path(id): Path<String>,
    query: Query,
) -> Result<Response, ApiError> {
    let (info, profile) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| state.caps.kept.get(id))
        .ok_or_else(|| {
            let ids: Vec<String> = state
                .caps
                .kept
                .list()
                .iter()
                .map(|k| k.id.to_string())
                .collect();
            ApiError::Missing {
                message: format!("no kept profile {:?}", clip(&id)),
                hint: if ids.is_empty() {
                    "no profiles are kept; POST /debug/profiles?seconds=10 takes one".to_owned()
                } else {
                    format!(
                        "kept profiles: {} (the oldest go when more are taken)",
                        ids.join(", ")
                    )
                },
            }
        })?;
    let params = ProfileParams::parse(
        &query,
        DEFAULT_FLAMEGRAPH_SECONDS,
        Format::Svg,
        state.config.max_profile_seconds,
    )?;
    let name = format!("{}-{}", info.mode, info.id);
    let taken_at: SystemTime = info.started_at;
    if is_head(&method) {
        return Ok(file_response(Vec::new(), params.format, &name, taken_at));
    }
    let ProfileParams {
        format,
        view,
        labels,
        ..
    } = params;
    let bytes = blocking(move || render_view(&profile, format, &labels, &view)).await??;
    Ok(file_response(bytes, format, &name, taken_at))
}
