//! `/debug/lag` (JSON, text table or SVG plot) and `/debug/runtime` (JSON
//! or text), rendered from the runtime capability's report types. Without
//! a watched runtime both answer 200 with `"available": false` and the
//! reason in JSON, so dashboards keep parsing them; text and SVG answer 503.

use std::time::SystemTime;

use axum::extract::State;
use axum::response::Response;

use super::error::ApiError;
use super::query::{Query, ReportView};
use super::response::{file_response, json_response, report_response, text_response};
use super::AppState;
use crate::profile::Format;
use crate::runtime::{LagReport, RuntimeReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Json,
    Text,
    Svg,
}

fn unavailable(reason: &str) -> ApiError {
    ApiError::Unavailable {
        message: format!("executor lag is unavailable: {reason}"),
        hint:
            "start the agent inside the service's tokio runtime or pass AgentBuilder::watch_runtime"
                .into(),
    }
}

/// `GET /debug/lag?format=json|text|svg`.
pub(crate) async fn lag(State(state): State<AppState>, query: Query) -> Result<Response, ApiError> {
    let view = query.choice(
        "format",
        View::Json,
        &[
            ("json", View::Json),
            ("text", View::Text),
            ("txt", View::Text),
            ("svg", View::Svg),
        ],
    )?;
    let executor = &state.caps.runtime;
    let report = match executor.lag() {
        Ok(report) => report,
        Err(_) => {
            let reason = executor.unavailable_reason().unwrap_or("unavailable");
            return match view {
                View::Json => Ok(json_response(&LagReport::unavailable(
                    reason,
                    state.caps.runtime.resolution(),
                ))),
                _ => Err(unavailable(reason)),
            };
        }
    };
    Ok(match view {
        View::Json => json_response(&report),
        View::Text => text_response(report.to_string()),
        View::Svg => {
            let title = format!(
                "Executor lag of {} (pid {})",
                crate::profile::process_name(),
                std::process::id()
            );
            let svg = executor
                .render_svg(&title)
                .map_err(|error| unavailable(&error.to_string()))?;
            file_response(svg, Format::Svg, "lag", SystemTime::now())
        }
    })
}

/// `GET /debug/runtime?format=json|text`.
pub(crate) async fn runtime(
    State(state): State<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let view = query.report_view()?;
    let executor = &state.caps.runtime;
    let report = match executor.report() {
        Ok(report) => report,
        Err(_) => {
            let reason = executor.unavailable_reason().unwrap_or("unavailable");
            if view == ReportView::Text {
                return Err(unavailable(reason));
            }
            RuntimeReport::unavailable(
                reason,
                state.caps.runtime.stall_threshold(),
                executor.task_monitors(),
            )
        }
    };
    Ok(report_response(&report, view))
}
