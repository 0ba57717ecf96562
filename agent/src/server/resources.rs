//! `/debug/use`: the USE table as JSON (the shape of DESIGN §5.1, the
//! report type's own) or a text table.

use axum::extract::State;
use axum::response::Response;

use super::error::ApiError;
use super::query::Query;
use super::response::{json_response, text_response};
use super::{blocking, AppState};

/// `GET /debug/use?format=json|text`.
pub(crate) async fn use_table(
    State(state): State<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let text = query.choice(
        "format",
        false,
        &[("json", false), ("text", true), ("txt", true)],
    )?;
    // A few dozen small /proc and /sys reads: off the server thread.
    let resources = state.resources.clone();
    let report = blocking(move || resources.report()).await?;
    Ok(if text {
        text_response(report.to_string())
    } else {
        json_response(&report)
    })
}
