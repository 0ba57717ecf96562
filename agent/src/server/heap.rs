//! Heap endpoints: `/debug/pprof/heap` (and `/allocs`), `/debug/heap/*`.
//! Dumping and symbolizing run on the agent's blocking pool.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{clip, ApiError, PprofError};
use super::limits::is_head;
use super::query::Query;
use super::response::{file_response, json_response, report_response};
use super::{blocking, AppState};
use crate::config::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
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
}

impl HeapParams {
    /// Reads `format`, `symbolize`, `limit`, `base` and `target` (the query
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
        Ok(HeapParams {
            format: query.format(default_format)?,
            symbolize: query.flag("symbolize", true)?,
            limit: query.number("limit", DEFAULT_LIST_LIMIT, 1..=MAX_LIST_LIMIT)?,
            base,
            target,
            view: query.view()?,
        })
    }
}

/// `GET /debug/pprof/heap` and `/debug/pprof/allocs`: the live sampled
/// heap, pprof by default.
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
    let (bytes, taken_at) = blocking(move || -> Result<_, Error> {
        let profile = heap.profile(params.symbolize)?;
        Ok((
            profile.render_bytes(params.format, &params.view)?,
            profile.started_at,
        ))
    })
    .await??;
    Ok(file_response(bytes, params.format, "heap", taken_at))
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
    let HeapParams { format, view, .. } = params;
    if is_head(&method) {
        return Ok(file_response(
            Vec::new(),
            format,
            &format!("heap-snapshot-{id}"),
            std::time::SystemTime::now(),
        ));
    }
    let bytes = blocking(move || snapshot.profile.render_bytes(format, &view)).await??;
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
        ..
    } = params;
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
    let bytes = blocking(move || heap.diff(base, target)?.render(format, limit, &view)).await??;
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
