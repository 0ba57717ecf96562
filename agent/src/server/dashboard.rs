//! `GET /debug`: the dashboard, one self-contained HTML page (inline CSS
//! and JS, nothing fetched from elsewhere), and `GET /debug/dashboard.json`,
//! the one small request it makes per refresh tick.
//!
//! The page itself holds no data, so it is served without the bearer
//! token (the allowlist still applies): it asks for the token, keeps it in
//! the tab's `sessionStorage` and sends it on every data request.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde::Serialize;

use super::error::ApiError;
use super::query::Query;
use super::response::json_response;
use super::{blocking, AppState};

/// The page. ≤ 200 KB, checked by a test.
pub(crate) const PAGE: &str = include_str!("dashboard.html");

/// How much history the page shows, and sends on its first tick.
pub(crate) const DASHBOARD_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Stalls listed with their stacks.
#[cfg(feature = "runtime")]
const STALLS_SHOWN: usize = 3;

/// Frames of a stall's stack shown (after folding the plumbing).
#[cfg(feature = "runtime")]
const STALL_FRAMES: usize = 16;

/// What the page's Content-Security-Policy allows: its own inline code,
/// requests to this agent, flame graphs in sandboxed frames from `blob:`
/// URLs; nothing from elsewhere, and no framing by other pages.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src 'self' data: blob:; connect-src 'self'; frame-src blob:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /debug`: the dashboard page.
pub(crate) async fn page() -> Response {
    let mut response = Response::new(Body::from(PAGE));
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A part of the tick: the report, or why there is none (the capability is
/// compiled out or has nothing to watch).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Part<T> {
    Ready(T),
    Unavailable { available: bool, reason: String },
}

impl<T> Part<T> {
    #[allow(dead_code)] // Unused when every capability is built.
    fn unavailable(reason: impl Into<String>) -> Self {
        Part::Unavailable {
            available: false,
            reason: reason.into(),
        }
    }

    #[allow(dead_code)]
    fn not_built(feature: &str) -> Self {
        Part::unavailable(format!(
            "not part of this build (feature {feature:?} is off)"
        ))
    }
}

#[derive(Debug, Serialize)]
struct Process {
    name: String,
    pid: u32,
    version: &'static str,
    uptime_s: f64,
    host_runtime: bool,
}

#[derive(Debug, Serialize)]
struct Sampler {
    running_hz: Option<u32>,
    running_mode: Option<&'static str>,
    /// The continuous profiler's rate, when it records.
    continuous_hz: Option<u32>,
    profiles_running: usize,
}

#[derive(Debug, Serialize)]
struct Heap {
    snapshots: Vec<crate::heap::SnapshotInfo>,
}

/// A stall as the page shows it: who, how long, the application function
/// it was in, the stack with its plumbing folded.
#[cfg(feature = "runtime")]
#[derive(Debug, Serialize)]
struct StallView {
    id: u64,
    worker: usize,
    #[serde(serialize_with = "crate::report::time")]
    started_at: SystemTime,
    #[serde(rename = "duration_ms", serialize_with = "crate::report::ms")]
    duration: Duration,
    ongoing: bool,
    /// The innermost frame the service wrote.
    culprit: Option<String>,
    /// The innermost frame.
    leaf: Option<String>,
    /// Leaf first, plumbing folded, at most [`STALL_FRAMES`].
    frames: Vec<String>,
    note: Option<String>,
}

/// One refresh of the dashboard.
#[derive(Debug, Serialize)]
struct Tick {
    now_ms: u64,
    process: Process,
    sampler: Sampler,
    doctor: Part<serde_json::Value>,
    history: Part<serde_json::Value>,
    #[serde(rename = "use")]
    use_table: Part<serde_json::Value>,
    red: Part<serde_json::Value>,
    runtime: Part<serde_json::Value>,
    heap: Part<Heap>,
    profiles: Vec<crate::profile::shelf::KeptInfo>,
}

/// Serializes a report to a value once, so the tick's parts share one
/// shape whatever the features.
#[cfg(any(
    feature = "doctor",
    feature = "resources",
    feature = "red",
    feature = "runtime"
))]
fn value<T: Serialize>(report: &T) -> Part<serde_json::Value> {
    match serde_json::to_value(report) {
        Ok(value) => Part::Ready(value),
        Err(error) => Part::Unavailable {
            available: false,
            reason: format!("could not be serialized: {error}"),
        },
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where the history of this tick starts: just after `since` (the newest
/// row the page has), never before the dashboard's window.
fn history_start(since: Option<u64>, now: SystemTime) -> SystemTime {
    let window_start = now
        .checked_sub(DASHBOARD_WINDOW)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    match since {
        Some(ms) => {
            let after = SystemTime::UNIX_EPOCH + Duration::from_millis(ms.saturating_add(1));
            after.max(window_start)
        }
        None => window_start,
    }
}

/// `GET /debug/dashboard.json?since=<unix ms>`: the doctor's report, the
/// history rows newer than `since` (the last 15 minutes without it), the
/// USE and RED tables, the runtime's workers and newest stalls, the heap
/// snapshots and kept profiles — one request per refresh.
pub(crate) async fn tick(
    State(state): State<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let since = match query.get("since") {
        None | Some("") => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                format!("since={} is not a time", super::error::clip(text)),
                "since is the timestamp_ms of the newest history row the page has (Unix milliseconds)",
            )
        })?),
    };
    let now = SystemTime::now();
    // The USE readings may need a fresh /proc sample: off the server
    // thread, like every report that reads files.
    let task_state = state.clone();
    let use_table = blocking(move || use_part(&task_state)).await?;
    let status = state.caps.cpu.status();
    let tick = Tick {
        now_ms: unix_ms(now),
        process: Process {
            name: crate::profile::process_name(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: state.started.elapsed().as_secs_f64(),
            host_runtime: state.host_runtime,
        },
        sampler: Sampler {
            running_hz: status.running_hz,
            running_mode: status.running_mode.map(crate::cpu::ProfileMode::query),
            continuous_hz: status.continuous_hz,
            profiles_running: state.profiles.running(),
        },
        doctor: doctor_part(&state),
        history: history_part(&state, history_start(since, now)),
        use_table,
        red: red_part(&state),
        runtime: runtime_part(&state),
        heap: match state.caps.heap.snapshot_list() {
            Ok(list) => Part::Ready(Heap {
                snapshots: list.snapshots,
            }),
            Err(error) => Part::unavailable(crate::error::one_line(&error)),
        },
        profiles: state.caps.kept.list(),
    };
    Ok(json_response(&tick))
}

#[cfg(feature = "doctor")]
fn doctor_part(state: &AppState) -> Part<serde_json::Value> {
    value(&state.caps.doctor.diagnose())
}

#[cfg(not(feature = "doctor"))]
fn doctor_part(_state: &AppState) -> Part<serde_json::Value> {
    Part::not_built("doctor")
}

/// The series the page draws.
#[cfg(feature = "doctor")]
const DASHBOARD_SERIES: &[crate::doctor::Series] = {
    use crate::doctor::Series::*;
    &[
        CpuCores,
        CpuLimitCores,
        RssBytes,
        JemallocAllocatedBytes,
        LagP99Ms,
        RequestsTotal,
        ErrorsTotal,
        RequestP99Ms,
        OpenFds,
        FdLimit,
        Threads,
        ThreadLimit,
    ]
};

#[cfg(feature = "doctor")]
fn history_part(state: &AppState, from: SystemTime) -> Part<serde_json::Value> {
    value(&state.caps.doctor.history(Some(from), DASHBOARD_SERIES))
}

#[cfg(not(feature = "doctor"))]
fn history_part(_state: &AppState, _from: SystemTime) -> Part<serde_json::Value> {
    Part::not_built("doctor")
}

#[cfg(feature = "resources")]
fn use_part(state: &AppState) -> Part<serde_json::Value> {
    // The USE sampler's latest reading (once a second); a new one only if
    // it is late.
    let (base, now) = state.caps.resources.recent(Duration::from_millis(1500));
    value(&state.caps.resources.table(base.as_deref(), &now))
}

#[cfg(not(feature = "resources"))]
fn use_part(_state: &AppState) -> Part<serde_json::Value> {
    Part::not_built("resources")
}

#[cfg(feature = "red")]
fn red_part(state: &AppState) -> Part<serde_json::Value> {
    value(&state.caps.red.report())
}

#[cfg(not(feature = "red"))]
fn red_part(_state: &AppState) -> Part<serde_json::Value> {
    Part::not_built("red")
}

#[cfg(feature = "runtime")]
fn runtime_part(state: &AppState) -> Part<serde_json::Value> {
    use crate::profile::frames::{fold_plumbing, is_library};
    let executor = &state.caps.runtime;
    let Ok(mut report) = executor.report() else {
        return Part::unavailable(executor.unavailable_reason().unwrap_or("unavailable"));
    };
    let stalls: Vec<StallView> = std::mem::take(&mut report.stalls)
        .into_iter()
        .take(STALLS_SHOWN)
        .map(|stall| {
            let folded = fold_plumbing(stall.frames.iter().rev().map(String::as_str));
            StallView {
                id: stall.id,
                worker: stall.worker,
                started_at: stall.started_at,
                duration: stall.duration,
                ongoing: stall.ongoing,
                culprit: stall.frames.iter().find(|f| !is_library(f)).cloned(),
                leaf: stall.frames.first().cloned(),
                frames: folded
                    .iter()
                    .rev()
                    .take(STALL_FRAMES)
                    .map(|f| f.to_string())
                    .collect(),
                note: stall.note,
            }
        })
        .collect();
    // The report's shape, its stall list (every frame of every kept
    // stall) replaced by the summaries.
    match (value(&report), serde_json::to_value(stalls)) {
        (Part::Ready(mut json), Ok(stalls)) => {
            json["stalls"] = stalls;
            Part::Ready(json)
        }
        (part, _) => part,
    }
}

#[cfg(not(feature = "runtime"))]
fn runtime_part(_state: &AppState) -> Part<serde_json::Value> {
    Part::not_built("runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_small() {
        assert!(PAGE.len() <= 200 * 1024, "{} bytes", PAGE.len());
        // Nothing from elsewhere: no external scripts, styles, fonts or
        // images, and every request goes to this agent by a relative path.
        let namespace = PAGE.matches("http://www.w3.org/2000/svg").count();
        assert_eq!(
            PAGE.matches("http").count(),
            namespace,
            "only the SVG namespace"
        );
        for needle in ["//cdn", "@import", "url(", "@font-face"] {
            assert!(!PAGE.contains(needle), "the page refers to {needle}");
        }
        assert!(!PAGE.contains("<script src"), "no external script");
        assert_eq!(
            PAGE.matches("<link").count(),
            1,
            "no stylesheet or font link, only the empty icon"
        );
        assert!(PAGE.contains(r#"<link rel="icon" href="data:,">"#));
        // The token travels in a header only.
        assert!(PAGE.contains("Authorization: \"Bearer \""));
        assert!(PAGE.contains("sessionStorage"));
        assert!(!PAGE.contains("localStorage"));
    }

    #[test]
    fn history_starts_after_since_within_the_window() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let window_start = now - DASHBOARD_WINDOW;
        assert_eq!(history_start(None, now), window_start);
        let recent = unix_ms(now) - 5_000;
        assert_eq!(
            history_start(Some(recent), now),
            SystemTime::UNIX_EPOCH + Duration::from_millis(recent + 1)
        );
        // A page that slept for an hour gets the window, not the hour.
        assert_eq!(
            history_start(Some(unix_ms(now) - 3_600_000), now),
            window_start
        );
        assert_eq!(history_start(Some(0), now), window_start);
        assert_eq!(
            history_start(Some(u64::MAX), now),
            SystemTime::UNIX_EPOCH + Duration::from_millis(u64::MAX)
        );
    }
}
