//! `/debug/lag` (JSON, text table or SVG plot) and `/debug/runtime` (JSON
//! or text), in the shapes of DESIGN §5.1. Without a watched runtime both
//! answer 200 with `"available": false` and the reason, so dashboards keep
//! parsing them.

use std::fmt::Write as _;
use std::time::SystemTime;

use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::error::ApiError;
use super::pprof::file_response;
use super::usage::{json_response, ms, text_response};
use super::AppState;
use crate::histogram::HistogramSummary;
use crate::lag::{LagReport, RuntimeReport, Stall};
use crate::profile::{rfc3339, Format};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LagFormat {
    Json,
    Text,
    Svg,
}

fn lag_format(query: Option<&str>) -> Result<LagFormat, ApiError> {
    let mut format = LagFormat::Json;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key == "format" {
            format = match value.trim() {
                "" | "json" => LagFormat::Json,
                "text" | "txt" => LagFormat::Text,
                "svg" => LagFormat::Svg,
                other => {
                    return Err(ApiError::bad_request(
                        format!("unknown format {other:?}"),
                        "format is json (default), text or svg",
                    ))
                }
            };
        }
    }
    Ok(format)
}

fn unavailable(reason: &str) -> ApiError {
    ApiError::Unavailable {
        message: format!("executor lag is unavailable: {reason}"),
        hint: "start the agent inside the service's tokio runtime or pass AgentBuilder::runtime"
            .into(),
    }
}

fn lag_json(lag: &LagReport) -> serde_json::Value {
    serde_json::json!({
        "available": true,
        "resolution_ms": ms(lag.resolution),
        "windows": {
            "all": lag.all.to_json(),
            "10s": lag.ten_seconds.to_json(),
            "1m": lag.one_minute.to_json(),
            "5m": lag.five_minutes.to_json(),
        },
        "probe_waiting_ms": lag.probe_waiting.map(ms),
    })
}

/// `GET /debug/lag?format=json|text|svg`.
pub(crate) async fn lag(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let format = lag_format(query.as_deref())?;
    let executor = &state.executor;
    if let Some(reason) = executor.unavailable_reason() {
        return match format {
            LagFormat::Json => {
                let empty = HistogramSummary::default().to_json();
                Ok(json_response(serde_json::json!({
                    "available": false,
                    "reason": reason,
                    "resolution_ms": ms(state.config.lag_resolution),
                    "windows": {"all": empty, "10s": empty, "1m": empty, "5m": empty},
                })))
            }
            _ => Err(unavailable(reason)),
        };
    }
    let result = match format {
        LagFormat::Json => executor.lag().map(|lag| json_response(lag_json(&lag))),
        LagFormat::Text => executor.render_text().map(text_response),
        LagFormat::Svg => {
            let title = format!(
                "Executor lag of {} (pid {})",
                crate::profile::process_name(),
                std::process::id()
            );
            executor
                .render_svg(&title)
                .map(|svg| file_response(svg.into_bytes(), Format::Svg, "lag", SystemTime::now()))
        }
    };
    result.map_err(|error| unavailable(&error.to_string()))
}

fn stall_json(stall: &Stall) -> serde_json::Value {
    serde_json::json!({
        "id": stall.id,
        "worker": stall.worker,
        "started_at": rfc3339(stall.started_at),
        "duration_ms": ms(stall.duration),
        "ongoing": stall.ongoing,
        "frames": stall.frames,
        "thread": stall.thread.as_ref().map(|(tid, name)| serde_json::json!({"tid": tid, "name": name})),
        "attribution": stall.attribution.as_str(),
        "other_candidates": stall.other_candidates.iter().map(|t| serde_json::json!({
            "tid": t.tid, "name": t.name, "frames": t.frames,
        })).collect::<Vec<_>>(),
        "note": stall.note,
    })
}

fn runtime_json(report: &RuntimeReport) -> serde_json::Value {
    let mut body = serde_json::json!({
        "available": true,
        "flavor": report.flavor,
        "workers": report.workers,
        "alive_tasks": report.alive_tasks,
        "global_queue_depth": report.global_queue_depth,
        "per_worker": report.per_worker.iter().map(|w| {
            let mut row = serde_json::json!({
                "worker": w.worker,
                "busy_ratio": w.busy_ratio,
                "parks": w.parks,
                "busy_ms_total": ms(w.busy_total),
                "parked": w.parked,
                "away_ms": w.away_for.map(ms),
                "thread_id": w.thread_id,
            });
            if let Some(u) = &w.unstable {
                row["unstable"] = serde_json::json!({
                    "polls": u.polls,
                    "steals": u.steals,
                    "steal_operations": u.steal_operations,
                    "local_schedules": u.local_schedules,
                    "overflows": u.overflows,
                    "mean_poll_ms": ms(u.mean_poll),
                    "local_queue_depth": u.local_queue_depth,
                });
            }
            row
        }).collect::<Vec<_>>(),
        "stall_threshold_ms": ms(report.stall_threshold),
        "stalls_total": report.stalls_total,
        "stalled_ms_total": ms(report.stalled_total),
        "stalls": report.stalls.iter().rev().map(stall_json).collect::<Vec<_>>(),
        "task_monitors": report.task_monitors.iter().map(|t| serde_json::json!({
            "name": t.name,
            "instrumented": t.instrumented,
            "dropped": t.dropped,
            "first_polls": t.first_polls,
            "mean_first_poll_delay_ms": ms(t.mean_first_poll_delay),
            "polls": t.polls,
            "mean_poll_ms": ms(t.mean_poll),
            "slow_poll_ratio": t.slow_poll_ratio,
            "slow_poll_threshold_ms": ms(t.slow_poll_threshold),
            "scheduled": t.scheduled,
            "mean_scheduled_ms": ms(t.mean_scheduled),
            "idled": t.idled,
            "mean_idle_ms": ms(t.mean_idle),
        })).collect::<Vec<_>>(),
    });
    if let Some(u) = &report.unstable {
        body["unstable"] = serde_json::json!({
            "blocking_threads": u.blocking_threads,
            "idle_blocking_threads": u.idle_blocking_threads,
            "blocking_queue_depth": u.blocking_queue_depth,
            "spawned_tasks": u.spawned_tasks,
            "remote_schedules": u.remote_schedules,
            "budget_forced_yields": u.budget_forced_yields,
        });
    }
    body
}

fn runtime_text(report: &RuntimeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tokio runtime ({}): {} workers, {} alive tasks, {} in the global queue\n",
        report.flavor, report.workers, report.alive_tasks, report.global_queue_depth
    );
    let _ = writeln!(
        out,
        "{:<7} {:>6} {:>10} {:>8} {:>10} {:>9}",
        "WORKER", "BUSY", "PARKS", "PARKED", "AWAY ms", "TID"
    );
    for w in &report.per_worker {
        let _ = writeln!(
            out,
            "{:<7} {:>6} {:>10} {:>8} {:>10} {:>9}",
            w.worker,
            w.busy_ratio
                .map_or("-".to_owned(), |r| format!("{:.0}%", r * 100.0)),
            w.parks,
            if w.parked { "yes" } else { "no" },
            w.away_for
                .map_or("-".to_owned(), |d| format!("{:.1}", ms(d))),
            w.thread_id.map_or("?".to_owned(), |t| t.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "\nstalls (a poll longer than {:.0} ms): {} since start, {:.1} ms lost",
        ms(report.stall_threshold),
        report.stalls_total,
        ms(report.stalled_total)
    );
    for stall in report.stalls.iter().rev() {
        let _ = writeln!(
            out,
            "\n{} worker {} {} {:.1} ms{} ({}, thread {})",
            rfc3339(stall.started_at),
            stall.worker,
            if stall.ongoing { "stuck for" } else { "stuck" },
            ms(stall.duration),
            if stall.ongoing { " so far" } else { "" },
            stall.attribution.as_str(),
            stall
                .thread
                .as_ref()
                .map_or("?".to_owned(), |(tid, name)| format!("{tid} {name}")),
        );
        if let Some(note) = &stall.note {
            let _ = writeln!(out, "  note: {note}");
        }
        for frame in stall.frames.iter().take(40) {
            let _ = writeln!(out, "  {frame}");
        }
    }
    if !report.task_monitors.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<24} {:>10} {:>10} {:>12} {:>10} {:>14}",
            "TASK MONITOR", "TASKS", "POLLS", "MEAN POLL ms", "SLOW %", "MEAN SCHED ms"
        );
        for t in &report.task_monitors {
            let _ = writeln!(
                out,
                "{:<24} {:>10} {:>10} {:>12.3} {:>9.1}% {:>14.3}",
                t.name,
                t.instrumented,
                t.polls,
                ms(t.mean_poll),
                t.slow_poll_ratio * 100.0,
                ms(t.mean_scheduled)
            );
        }
    }
    out
}

/// `GET /debug/runtime?format=json|text`.
pub(crate) async fn runtime(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let format = super::usage::table_format(query.as_deref())?;
    let executor = &state.executor;
    let report = match executor.report() {
        Ok(report) => report,
        Err(_) => {
            let reason = executor.unavailable_reason().unwrap_or("unavailable");
            return match format {
                super::usage::TableFormat::Json => Ok(json_response(serde_json::json!({
                    "available": false,
                    "reason": reason,
                    "workers": 0,
                    "alive_tasks": 0,
                    "global_queue_depth": 0,
                    "per_worker": [],
                    "stalls": [],
                    "task_monitors": executor.task_monitors().iter().map(|t| serde_json::json!({
                        "name": t.name, "instrumented": t.instrumented, "polls": t.polls,
                    })).collect::<Vec<_>>(),
                }))),
                super::usage::TableFormat::Text => Err(unavailable(reason)),
            };
        }
    };
    Ok(match format {
        super::usage::TableFormat::Json => json_response(runtime_json(&report)),
        super::usage::TableFormat::Text => text_response(runtime_text(&report)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bounded, input_of};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn lag_formats_never_panic(query in input_of(&["format", "=", "&", "json", "text", "svg", "txt", "%ff", "%", " "])) {
            bounded("lag format", &query, || { let _ = lag_format(Some(&query)); });
        }
    }
}
