//! Heap endpoints: `/debug/pprof/heap`, `/debug/pprof/allocs`,
//! `/debug/heap/*`. Dumping and symbolizing run on the agent's blocking
//! pool.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{clip, ApiError, PprofError};
use super::limits::is_head;
use super::pprof::{render_totals, render_view, LabelView};
use super::query::Query;
use super::response::{file_response, json_response, report_response};
use super::{blocking, AppState};
use crate::config::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use crate::cpu::DEFAULT_PROFILE_SECONDS;
use crate::heap::DiffTarget;
use crate::profile::{Format, View};
use crate::Error;

/// Query parameters shared by the heap endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeapParams {
    pub(crate) format: Format,
    pub(crate) symbolize: bool,
    pub(crate) limit: usize,
    pub(crate) base: Option<u64>,
    pub(crate) target: Option<DiffTarget>,
    pub(crate) view: View,
    pub(crate) labels: LabelView,
}

impl HeapParams {
    /// Reads `format`, `symbolize`, `limit`, `base`, `target`, the views
    /// (`trim`, `focus`) and the label views (`by`, `group`) (the query
    /// rule of [`Query`]).
    pub(crate) fn parse(query: &Query, default_format: Format) -> Result<Self, ApiError> {
        let base = match query.get("base") {
            None => None,
            Some(value) => Some(value.parse().map_err(|_| {
                ApiError::bad_request(
                    format!("base={} is not a snapshot id", clip(value)),
                    "base is the id of a snapshot from GET /debug/heap/snapshots",
                )
            })?),
        };
        let target = match query.get("target") {
            None => None,
            Some(value) => Some(DiffTarget::parse(value).ok_or_else(|| {
                ApiError::bad_request(
                    format!("target={} is not a snapshot id", clip(value)),
                    "target is a snapshot id or `now`",
                )
            })?),
        };
        let format = query.format(default_format)?;
        Ok(HeapParams {
            labels: LabelView::parse(query, format)?,
            format,
            symbolize: query.flag("symbolize", true)?,
            limit: query.number("limit", DEFAULT_LIST_LIMIT, 1..=MAX_LIST_LIMIT)?,
            base,
            target,
            view: query.view()?,
        })
    }
}

/// `GET /debug/pprof/heap` (and `/debug/pprof/allocs` without `seconds`):
/// the live sampled heap, pprof by default.
pub(crate) async fn pprof_heap(
    State(state): State<AppState>,
    method: Method,
    query: Query,
) -> Result<Response, PprofError> {
    let params = HeapParams::parse(&query, Format::Pprof)?;
    state.caps.heap.check()?;
    if is_head(&method) {
        return Ok(file_response(
            Vec::new(),
            params.format,
            "heap",
            std::time::SystemTime::now(),
        ));
    }
    let heap = state.caps.heap.clone();
    let format = params.format;
    let (bytes, taken_at) = blocking(move || -> Result<_, Error> {
        let profile = heap.profile(params.symbolize)?;
        Ok((
            render_view(&profile, params.format, &params.labels, &params.view)?,
            profile.started_at,
        ))
    })
    .await??;
    Ok(file_response(bytes, format, "heap", taken_at))
}

/// `GET /debug/pprof/allocs?seconds=N`: the sampled allocations of the
/// next `N` seconds, freed or not (`alloc_objects`, `alloc_space`), pprof
/// by default. Without `seconds` it answers the live heap, as scrapers
/// (Grafana Alloy, Parca) that read `/debug/pprof/allocs` expect an
/// answer at once.
pub(crate) async fn pprof_allocs(
    state: State<AppState>,
    method: Method,
    query: Query,
) -> Result<Response, PprofError> {
    if query.get("seconds").is_none() {
        return pprof_heap(state, method, query).await;
    }
    let State(state) = state;
    let params = HeapParams::parse(&query, Format::Pprof)?;
    let seconds = allocation_seconds(&state, &query, DEFAULT_PROFILE_SECONDS)?;
    state.caps.heap.check()?;
    if is_head(&method) {
        return Ok(file_response(
            Vec::new(),
            params.format,
            "allocs",
            std::time::SystemTime::now(),
        ));
    }
    let (profile, _) = record_allocations(&state, seconds, params.symbolize).await?;
    let started_at = profile.started_at;
    let HeapParams {
        format,
        labels,
        view,
        ..
    } = params;
    let bytes = blocking(move || render_view(&profile, format, &labels, &view)).await??;
    Ok(file_response(bytes, format, "allocs", started_at))
}

/// `seconds=` of an allocation window: 1 to the server's maximum.
pub(crate) fn allocation_seconds(
    state: &AppState,
    query: &Query,
    default: u64,
) -> Result<u64, ApiError> {
    let max = state.config.max_profile_seconds;
    query.number("seconds", default.min(max), 1..=max)
}

/// Counts the sampled allocations of the next `seconds` (a profile slot
/// held meanwhile) and builds their profile on the blocking pool, with the
/// number of samples it holds. Windows asked for together share the
/// agent's one table; a client that goes away closes its window (the
/// future is dropped with it).
pub(crate) async fn record_allocations(
    state: &AppState,
    seconds: u64,
    symbolize: bool,
) -> Result<(crate::profile::Profile, u64), ApiError> {
    let window_length = std::time::Duration::from_secs(seconds);
    let _slot = state.profiles.acquire(window_length)?;
    let heap = state.caps.heap.clone();
    // Opening allocates the shared table (a few MiB): not on this thread.
    let window = blocking(move || heap.start_allocations()).await??;
    tokio::time::sleep(window_length).await;
    blocking(move || {
        let allocations = window.finish();
        (allocations.to_profile(symbolize), allocations.samples())
    })
    .await
}

/// `GET /debug/heap/stats?format=json|text`.
pub(crate) async fn stats(
    State(state): State<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let view = query.report_view()?;
    let heap = state.caps.heap.clone();
    let stats = blocking(move || heap.stats()).await??;
    Ok(report_response(&stats, view))
}

/// `GET /debug/heap/profiling`: whether allocations are being sampled.
pub(crate) async fn profiling_state(State(state): State<AppState>) -> Result<Response, ApiError> {
    let heap = state.caps.heap.clone();
    let current = blocking(move || heap.state()).await??;
    Ok(json_response(&current))
}

/// The body of `PUT /debug/heap/profiling`: exactly `{"active": bool}`.
fn parse_toggle(body: &[u8]) -> Result<bool, ApiError> {
    let invalid = |what: &str| {
        ApiError::bad_request(
            format!("the body {what}; expected {{\"active\": true}} or {{\"active\": false}}"),
            "send e.g. curl -X PUT -d '{\"active\":false}' …/debug/heap/profiling",
        )
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| invalid("is not JSON"))?;
    let serde_json::Value::Object(object) = value else {
        return Err(invalid("is not a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|k| *k != "active") {
        return Err(invalid(&format!(
            "has an unknown field {:?}",
            clip(unknown)
        )));
    }
    match object.get("active") {
        Some(serde_json::Value::Bool(active)) => Ok(*active),
        Some(_) => Err(invalid("has an `active` that is not true or false")),
        None => Err(invalid("has no `active` field")),
    }
}

/// `PUT /debug/heap/profiling` with `{"active": bool}`: starts or pauses
/// sampling without resetting what was sampled.
pub(crate) async fn set_profiling(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let active = parse_toggle(&body)?;
    let heap = state.caps.heap.clone();
    let current = blocking(move || heap.set_active(active)).await??;
    Ok(json_response(&current))
}

/// `POST /debug/heap/snapshots`: takes and keeps a snapshot.
pub(crate) async fn take_snapshot(State(state): State<AppState>) -> Result<Response, ApiError> {
    let heap = state.caps.heap.clone();
    let snapshot = blocking(move || heap.take_snapshot()).await??;
    let info = snapshot.info();
    let mut response = json_response(&info);
    *response.status_mut() = StatusCode::CREATED;
    if let Ok(location) = HeaderValue::from_str(&format!("/debug/heap/snapshots/{}", info.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /debug/heap/snapshots`: the snapshots kept, oldest first.
pub(crate) async fn list_snapshots(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(json_response(&state.caps.heap.snapshot_list()?))
}

fn snapshot_id(raw: Result<Path<String>, PathRejection>) -> Result<u64, ApiError> {
    let hint = "snapshot ids are whole numbers, see GET /debug/heap/snapshots";
    let Ok(Path(raw)) = raw else {
        return Err(ApiError::bad_request(
            "the snapshot id is not valid text",
            hint,
        ));
    };
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("{:?} is not a snapshot id", clip(&raw)), hint))
}

/// `GET /debug/heap/snapshots/{id}?format=`: one snapshot (JSON by default).
pub(crate) async fn get_snapshot(
    State(state): State<AppState>,
    method: Method,
    id: Result<Path<String>, PathRejection>,
    query: Query,
) -> Result<Response, ApiError> {
    let id = snapshot_id(id)?;
    let params = HeapParams::parse(&query, Format::Json)?;
    let snapshot = state.caps.heap.snapshot(id)?;
    let HeapParams {
        format,
        view,
        labels,
        ..
    } = params;
    if is_head(&method) {
        return Ok(file_response(
            Vec::new(),
            format,
            &format!("heap-snapshot-{id}"),
            std::time::SystemTime::now(),
        ));
    }
    let bytes = blocking(move || render_view(&snapshot.profile, format, &labels, &view)).await??;
    Ok(file_response(
        bytes,
        format,
        &format!("heap-snapshot-{id}"),
        std::time::SystemTime::now(),
    ))
}

/// `DELETE /debug/heap/snapshots/{id}`.
pub(crate) async fn delete_snapshot(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = snapshot_id(id)?;
    let heap = state.caps.heap.clone();
    // Freeing a snapshot of many stacks is work too: not on this thread.
    blocking(move || heap.delete_snapshot(id)).await??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /debug/heap/diff?base=ID&target=ID|now&format=text|json|svg|pprof|folded&limit=N`.
pub(crate) async fn diff(
    State(state): State<AppState>,
    method: Method,
    query: Query,
) -> Result<Response, ApiError> {
    let params = HeapParams::parse(&query, Format::Text)?;
    let base = params.base.ok_or_else(|| {
        ApiError::bad_request(
            "base is required",
            "GET /debug/heap/diff?base=<snapshot id>&target=<snapshot id or now>",
        )
    })?;
    let target = params.target.unwrap_or(DiffTarget::Now);
    let heap = state.caps.heap.clone();
    let HeapParams {
        format,
        limit,
        view,
        labels,
        ..
    } = params;
    if let LabelView::Group(_) = labels {
        return Err(ApiError::bad_request(
            "group= does not apply to heap diffs",
            "by=route ranks which routes' allocations hold the growth (format=text or json); format=pprof keeps every label",
        ));
    }
    if is_head(&method) {
        heap.snapshot(base)?;
        if let DiffTarget::Snapshot(id) = target {
            heap.snapshot(id)?;
        }
        return Ok(file_response(
            Vec::new(),
            format,
            &format!("heap-diff-{base}-{target}"),
            std::time::SystemTime::now(),
        ));
    }
    let bytes = blocking(move || -> Result<Bytes, Error> {
        let diff = heap.diff(base, target)?;
        Ok(match labels {
            LabelView::By(key) => render_totals(&diff.totals_by_label(&key), format)?,
            _ => Bytes::from(diff.render(format, limit, &view)?),
        })
    })
    .await??;
    Ok(file_response(
        bytes,
        format,
        &format!("heap-diff-{base}-{target}"),
        std::time::SystemTime::now(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_diff_parameters() {
        let p = HeapParams::parse(
            &Query::parse(Some("base=3&target=now&format=json&limit=5")),
            Format::Text,
        )
        .unwrap();
        assert_eq!(p.base, Some(3));
        assert_eq!(p.target, Some(DiffTarget::Now));
        assert_eq!((p.format, p.limit), (Format::Json, 5));
        let p = HeapParams::parse(&Query::parse(Some("target=7")), Format::Text).unwrap();
        assert_eq!(p.target, Some(DiffTarget::Snapshot(7)));
    }

    #[test]
    fn rejects_bad_parameters() {
        for bad in [
            "base=x",
            "target=later",
            "limit=0",
            "limit=10001",
            "limit=99999999999999999999999",
            "format=gif",
            "symbolize=perhaps",
        ] {
            assert!(
                matches!(
                    HeapParams::parse(&Query::parse(Some(bad)), Format::Text),
                    Err(ApiError::BadRequest { .. })
                ),
                "{bad}"
            );
        }
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn heap_queries_never_panic(query in input_of(&["format", "limit", "base", "target", "now", "symbolize", "=", "&", "%ff", "0", "10001"])) {
                bounded("heap query", &query, || {
                    if let Ok(p) = HeapParams::parse(&Query::parse(Some(&query)), Format::Text) {
                        assert!((1..=MAX_LIST_LIMIT).contains(&p.limit));
                    }
                });
            }

            #[test]
            fn toggle_bodies_never_panic(body in input_of(&["{", "}", "\"active\"", ":", "true", "false", "null", "[", "]", ",", "\"x\""])) {
                bounded("profiling toggle", &body, || {
                    if let Err(ApiError::BadRequest { message, .. }) = parse_toggle(body.as_bytes()) {
                        assert!(!message.contains("Toggle"), "{message}");
                    }
                });
            }
        }
    }
}
