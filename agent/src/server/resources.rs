//! `/debug/use`: the USE table as JSON (the shape docs/endpoints.md gives, the
//! report type's own) or a text table.

use axum::extract::State;
use axum::response::Response;

use super::error::ApiError;
use super::query::Query;
use super::response::report_response;
use super::{blocking, AppState};

/// `GET /debug/use?format=json|text`.
pub(crate) async fn use_table(
    State(state): State<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let view = query.report_view()?;
    // A few dozen small /proc and /sys reads: off the server thread.
    let resources = state.caps.resources.clone();
    let report = blocking(move || resources.report()).await?;
    Ok(report_response(&report, view))
}
