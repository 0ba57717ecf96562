//! `/debug/red`: rate, errors and duration per route, as JSON (the report
//! type's own shape) or a text table.

use axum::extract::State;
use axum::response::Response;

use super::error::ApiError;
use super::query::Query;
use super::response::report_response;
use super::AppState;

/// `GET /debug/red?format=json|text`.
pub(crate) async fn red(State(state): State<AppState>, query: Query) -> Result<Response, ApiError> {
    let view = query.report_view()?;
    let report = state.caps.red.report();
    Ok(report_response(&report, view))
}
