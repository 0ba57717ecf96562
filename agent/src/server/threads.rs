//! `/debug/threads`: every thread's stack now, grouped by identical stack
//! (`debug=1`, the default) or one by one (`debug=2`), as text, JSON or a
//! pprof count profile (`go tool pprof -traces`).

use axum::extract::State;
use axum::http::Method;
use axum::response::Response;

use super::error::ApiError;
use super::limits::is_head;
use super::query::Query;
use super::response::{file_response, json_response, text_response};
use super::{blocking, AppState};
use crate::profile::Format;

/// `GET /debug/threads?format=text|json|pprof&debug=1|2&trim=&focus=`.
pub(crate) async fn threads(
    State(state): State<AppState>,
    method: Method,
    query: Query,
) -> Result<Response, ApiError> {
    let format = thread_format(&query)?;
    let grouped = query.choice("debug", true, &[("1", true), ("2", false)])?;
    let view = query.view()?;
    if is_head(&method) {
        return Ok(file_response(
            Vec::new(),
            format,
            "threads",
            std::time::SystemTime::now(),
        ));
    }
    let runtime = state.caps.runtime.clone();
    let dump = blocking(move || runtime.thread_dump()).await??;
    render_threads(std::sync::Arc::new(dump), format, grouped, view).await
}

fn thread_format(query: &Query) -> Result<Format, ApiError> {
    let format = query.format(Format::Text)?;
    if !matches!(format, Format::Text | Format::Json | Format::Pprof) {
        return Err(ApiError::bad_request(
            format!("format={} is not offered for threads", format.name()),
            "format is text (default), json, or pprof (a count profile for go tool pprof -traces)",
        ));
    }
    Ok(format)
}

fn task_format(query: &Query) -> Result<Format, ApiError> {
    let format = query.format(Format::Text)?;
    if !matches!(format, Format::Text | Format::Json) {
        return Err(ApiError::bad_request(
            format!("format={} is not offered for tasks", format.name()),
            "format is text (default) or json",
        ));
    }
    Ok(format)
}

/// Renders a thread dump off the async threads (symbolizing is blocking).
async fn render_threads(
    dump: std::sync::Arc<crate::runtime::ThreadDump>,
    format: Format,
    grouped: bool,
    view: crate::profile::View,
) -> Result<Response, ApiError> {
    let answer = blocking(move || -> Result<_, crate::Error> {
        Ok(match format {
            Format::Pprof => {
                let profile = dump.to_profile();
                Answer::File(
                    profile.render_bytes(Format::Pprof, &view)?.to_vec(),
                    dump.captured_at,
                )
            }
            Format::Json => Answer::Json(dump.groups(&view, grouped)),
            _ => Answer::Text(dump.groups(&view, grouped).to_string()),
        })
    })
    .await??;
    Ok(match answer {
        Answer::File(bytes, at) => file_response(bytes, Format::Pprof, "threads", at),
        Answer::Json(groups) => json_response(&groups),
        Answer::Text(text) => text_response(text),
    })
}

enum Answer {
    File(Vec<u8>, std::time::SystemTime),
    Json(crate::runtime::ThreadGroups),
    Text(String),
}

/// `GET /debug/tasks?format=text|json`: the host runtime's idle tasks
/// grouped by await trace (tokio's task dump), where the build has it and
/// it is safe (see `runtime::task_dump`).
pub(crate) async fn tasks(
    State(state): State<AppState>,
    method: Method,
    query: Query,
) -> Result<Response, ApiError> {
    let format = task_format(&query)?;
    if is_head(&method) {
        return Ok(text_response(String::new()));
    }
    let dump = state.caps.runtime.task_dump().await?;
    Ok(match format {
        Format::Json => json_response(&dump),
        _ => text_response(dump.to_string()),
    })
}

/// A dump the doctor kept for a finding, rendered as its endpoint renders
/// a fresh one.
#[cfg(feature = "doctor")]
pub(crate) async fn dump_artifact(
    dump: crate::doctor::DumpArtifact,
    method: &Method,
    query: &Query,
) -> Result<Response, ApiError> {
    use crate::doctor::DumpArtifact;
    match dump {
        DumpArtifact::Threads(dump) => {
            let format = thread_format(query)?;
            let grouped = query.choice("debug", true, &[("1", true), ("2", false)])?;
            let view = query.view()?;
            if is_head(method) {
                return Ok(file_response(
                    Vec::new(),
                    format,
                    "threads",
                    dump.captured_at,
                ));
            }
            render_threads(dump, format, grouped, view).await
        }
        DumpArtifact::Tasks(dump) => {
            let format = task_format(query)?;
            if is_head(method) {
                return Ok(text_response(String::new()));
            }
            Ok(match format {
                Format::Json => json_response(&*dump),
                _ => text_response(dump.to_string()),
            })
        }
    }
}
