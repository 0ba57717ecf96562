//! `/debug/use` and `/debug/red`: JSON (the shapes of DESIGN §5.1) or a
//! text table, rendered from the capability modules' plain types.
// With a capability compiled out, some shared helpers go unused.
#![cfg_attr(
    not(all(feature = "system", feature = "red")),
    allow(dead_code, unused_imports)
)]

use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
pub(crate) use super::text_response;
use super::{blocking, AppState};

/// `json` (default) or `text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableFormat {
    Json,
    Text,
}

pub(crate) fn table_format(query: Option<&str>) -> Result<TableFormat, ApiError> {
    let mut format = TableFormat::Json;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key == "format" {
            format = match value.trim() {
                "" | "json" => TableFormat::Json,
                "text" => TableFormat::Text,
                other => {
                    return Err(ApiError::bad_request(
                        format!("unknown format {other:?}"),
                        "format is json (default) or text",
                    ))
                }
            };
        }
    }
    Ok(format)
}

pub(crate) fn json_response(value: serde_json::Value) -> Response {
    let mut response = Json(value).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `GET /debug/use?format=json|text`.
#[cfg(feature = "system")]
pub(crate) async fn use_table(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let format = table_format(query.as_deref())?;
    // A few dozen small /proc and /sys reads: off the server thread.
    let resources = state.resources.clone();
    let report = blocking(move || resources.report()).await?;
    Ok(match format {
        TableFormat::Json => json_response(serde_json::json!({
            "resources": report.resources.iter().map(|r| serde_json::json!({
                "name": r.name,
                "utilization": r.utilization,
                "saturation": r.saturation,
                "errors": r.errors,
                "limit": r.limit,
                "used": r.used,
                "unit": r.unit,
                "source": r.source,
                "details": r.details,
            })).collect::<Vec<_>>(),
        })),
        TableFormat::Text => text_response(use_text(&report)),
    })
}

#[cfg(feature = "system")]
fn use_text(report: &crate::resources::UseReport) -> String {
    let opt = |v: Option<f64>, percent: bool| match v {
        Some(v) if percent => format!("{:.1}%", v * 100.0),
        Some(v) => format!("{v:.3}"),
        None => "-".to_owned(),
    };
    let amount = |v: Option<f64>| match v {
        Some(v) if v.abs() >= 1e6 => format!("{v:.3e}"),
        Some(v) => format!("{v:.2}"),
        None => "?".to_owned(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>11} {:>10} {:>8}  used / limit",
        "RESOURCE", "UTILIZATION", "SATURATION", "ERRORS"
    );
    for r in &report.resources {
        let _ = writeln!(
            out,
            "{:<18} {:>11} {:>10} {:>8}  {} / {} {}",
            r.name,
            opt(r.utilization, true),
            opt(r.saturation, false),
            r.errors.map_or("-".to_owned(), |e| e.to_string()),
            amount(r.used),
            amount(r.limit),
            r.unit
        );
    }
    out.push_str("\nSOURCES\n");
    for r in &report.resources {
        let _ = writeln!(out, "{}: {}", r.name, r.source);
    }
    out
}

/// `GET /debug/red?format=json|text`.
#[cfg(feature = "red")]
pub(crate) async fn red(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let format = table_format(query.as_deref())?;
    let report = state.red.report();
    let installed = state.red.layer_installed();
    Ok(match format {
        TableFormat::Json => {
            let mut body = serde_json::json!({
                "window_s": report.window.as_secs_f64(),
                "layer_installed": installed,
                "routes": report.routes.iter().map(|r| serde_json::json!({
                    "method": r.method,
                    "route": r.route,
                    "requests": r.requests,
                    "errors": r.errors,
                    "error_ratio": r.error_ratio,
                    "rate_per_s": r.rate_per_s,
                    "error_rate_per_s": r.error_rate_per_s,
                    "statuses": r.statuses,
                    "latency": r.latency.to_json(),
                })).collect::<Vec<_>>(),
            });
            if !installed {
                body["hint"] = "add agent.red_layer() to the service's router".into();
            }
            json_response(body)
        }
        TableFormat::Text => text_response(red_text(&report, installed)),
    })
}

#[cfg(feature = "red")]
fn red_text(report: &crate::red::RedReport, installed: bool) -> String {
    let mut out = String::new();
    if !installed {
        out.push_str("no RED layer installed: add agent.red_layer() to the service's router\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<7} {:<32} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "METHOD", "ROUTE", "REQUESTS", "ERRORS", "ERR%", "RATE/S", "P50 ms", "P99 ms", "MAX ms"
    );
    for r in &report.routes {
        let _ = writeln!(
            out,
            "{:<7} {:<32} {:>9} {:>8} {:>6.2}% {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            r.method,
            r.route,
            r.requests,
            r.errors,
            r.error_ratio * 100.0,
            r.rate_per_s,
            ms(r.latency.p50),
            ms(r.latency.p99),
            ms(r.latency.max),
        );
    }
    let _ = writeln!(
        out,
        "\nrates over the last {:.0} s; totals and latency since start",
        report.window.as_secs_f64()
    );
    out
}

/// Answer of an endpoint whose capability was compiled out.
#[cfg(not(all(
    feature = "system",
    feature = "red",
    feature = "metrics",
    feature = "runtime",
    feature = "spans"
)))]
pub(crate) async fn not_built(feature: &'static str) -> ApiError {
    ApiError::NotImplemented {
        message: format!("this endpoint is not part of this build (feature {feature:?} is off)"),
        hint: format!("build stethoscope with the {feature:?} feature (on by default)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bounded, input_of};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn table_formats_never_panic(query in input_of(&["format", "=", "&", "json", "text", "%ff", "%", " "])) {
            bounded("table format", &query, || { let _ = table_format(Some(&query)); });
        }
    }
}
