//! Go-compatible `/debug/pprof/*` endpoints.

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Method;
use axum::response::{Html, Response};

use super::access::Peer;
use super::error::{clip, ApiError, PprofError};
use super::limits::is_head;
use super::query::Query;
use super::response::{file_response, text_response};
use super::AppState;
use crate::cpu::{ProfileMode, ProfileRequest, WallThreads};
use crate::cpu::{
    DEFAULT_FLAMEGRAPH_SECONDS, DEFAULT_PROFILE_HZ, DEFAULT_PROFILE_SECONDS, MAX_PROFILE_HZ,
};
use crate::labels::MAX_LABEL_BYTES;
use crate::profile::{Format, Profile, View};

/// Parsed parameters of a CPU profile request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProfileParams {
    pub(crate) seconds: u64,
    pub(crate) hz: u32,
    pub(crate) format: Format,
    pub(crate) symbolize: bool,
    pub(crate) view: View,
    pub(crate) labels: LabelView,
    pub(crate) mode: ProfileMode,
}

/// What of a profile's labels the response shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LabelView {
    /// Every stack (with its labels).
    Stacks,
    /// Totals per value of a label key (`by=`): text or JSON.
    By(String),
    /// Stacks under a root frame per value of a label key (`group=`):
    /// SVG, folded or JSON.
    Group(String),
}

impl LabelView {
    /// Reads `by` and `group` for a response in `format` (the query rule
    /// of [`Query`]).
    pub(crate) fn parse(query: &Query, format: Format) -> Result<Self, ApiError> {
        let by = query.name("by", MAX_LABEL_BYTES)?;
        let group = query.name("group", MAX_LABEL_BYTES)?;
        Ok(match (by, group) {
            (None, None) => LabelView::Stacks,
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "by= and group= do not go together",
                    "by=route ranks route values (format=text or json); group=route roots the stacks at them (svg, folded, json)",
                ))
            }
            (Some(key), None) if matches!(format, Format::Text | Format::Json) => {
                LabelView::By(key.to_owned())
            }
            (Some(_), None) => {
                return Err(ApiError::bad_request(
                    format!("by= needs format=text or format=json, not {}", format.name()),
                    "for a flame graph or folded stacks rooted at each label value, use group= instead",
                ))
            }
            (None, Some(key)) if matches!(format, Format::Svg | Format::Folded | Format::Json) => {
                LabelView::Group(key.to_owned())
            }
            (None, Some(_)) if format == Format::Pprof => {
                return Err(ApiError::bad_request(
                    "group= does not apply to format=pprof",
                    "pprof keeps every label: go tool pprof -tags lists them, -tagfocus route=/items/{id} filters by one",
                ))
            }
            (None, Some(_)) => {
                return Err(ApiError::bad_request(
                    format!("group= needs format=svg, folded or json, not {}", format.name()),
                    "for a table of label values, use by= instead",
                ))
            }
        })
    }
}

impl ProfileParams {
    /// Reads `seconds`, `hz`, `format`, `symbolize`, `trim`, `focus`, `by`,
    /// `group`, `mode` and `threads` (the query rule of [`Query`]); unknown
    /// parameters are ignored, as Go's handler does, so scrapers that add
    /// their own keep working.
    pub(crate) fn parse(
        query: &Query,
        default_seconds: u64,
        default_format: Format,
        max_seconds: u64,
    ) -> Result<Self, ApiError> {
        let format = query.format(default_format)?;
        let labels = LabelView::parse(query, format)?;
        let wall = query.choice("mode", false, &[("cpu", false), ("wall", true)])?;
        let threads = query.choice(
            "threads",
            WallThreads::All,
            &[("all", WallThreads::All), ("workers", WallThreads::Workers)],
        )?;
        if !wall && query.get("threads").is_some() {
            return Err(ApiError::bad_request(
                "threads= applies to mode=wall",
                "CPU profiles sample whichever thread uses CPU; ask for mode=wall&threads=workers",
            ));
        }
        Ok(ProfileParams {
            seconds: query.number("seconds", default_seconds.min(max_seconds), 1..=max_seconds)?,
            hz: query.number("hz", DEFAULT_PROFILE_HZ, 1..=MAX_PROFILE_HZ)?,
            format,
            symbolize: query.flag("symbolize", true)?,
            view: query.view()?,
            labels,
            mode: if wall {
                ProfileMode::Wall(threads)
            } else {
                ProfileMode::Cpu
            },
        })
    }
}

/// Renders `profile` as `params` ask: every stack, totals by a label, or
/// stacks grouped under a label, each trimmed and focused by `view`.
pub(crate) fn render_view(
    profile: &Profile,
    format: Format,
    labels: &LabelView,
    view: &View,
) -> Result<Bytes, crate::Error> {
    match labels {
        LabelView::Stacks => profile.render_bytes(format, view),
        LabelView::Group(key) => profile.grouped_by_label(key).render_bytes(format, view),
        LabelView::By(key) => render_totals(&profile.totals_by_label(key), format),
    }
}

/// Totals by label value (`by=`) as JSON or as a text table.
pub(crate) fn render_totals(
    totals: &crate::profile::LabelTotals,
    format: Format,
) -> Result<Bytes, crate::Error> {
    if format == Format::Json {
        serde_json::to_vec_pretty(totals)
            .map(Bytes::from)
            .map_err(|source| crate::Error::Encode {
                format: "json",
                source: source.into(),
            })
    } else {
        Ok(Bytes::from(totals.to_string()))
    }
}

/// `GET /debug/pprof/profile`: CPU profile, pprof by default.
pub(crate) async fn profile(
    state: State<AppState>,
    method: Method,
    peer: Peer,
    query: Query,
) -> Result<Response, PprofError> {
    cpu(
        state,
        method,
        peer,
        query,
        DEFAULT_PROFILE_SECONDS,
        Format::Pprof,
    )
    .await
}

/// `GET /debug/pprof/flamegraph`: CPU profile, SVG by default.
pub(crate) async fn flamegraph(
    state: State<AppState>,
    method: Method,
    peer: Peer,
    query: Query,
) -> Result<Response, PprofError> {
    cpu(
        state,
        method,
        peer,
        query,
        DEFAULT_FLAMEGRAPH_SECONDS,
        Format::Svg,
    )
    .await
}

async fn cpu(
    State(state): State<AppState>,
    method: Method,
    peer: Peer,
    query: Query,
    default_seconds: u64,
    default_format: Format,
) -> Result<Response, PprofError> {
    let params = ProfileParams::parse(
        &query,
        default_seconds,
        default_format,
        state.config.max_profile_seconds,
    )?;
    let kind = match params.mode {
        ProfileMode::Wall(_) => "wall",
        _ => "cpu",
    };
    if let Some(past) = Past::parse(&query, SystemTime::now())? {
        if params.mode != ProfileMode::Cpu {
            return Err(ApiError::bad_request(
                "look-back (since, start, end, pin) reads the continuous CPU profile; mode=wall cannot look back",
                "drop mode=wall, or profile the next seconds with mode=wall&seconds=10",
            )
            .into());
        }
        return look_back(&state, &method, past, params).await;
    }
    if is_head(&method) {
        // The headers a GET would send, without running a profile.
        return Ok(file_response(
            Vec::new(),
            params.format,
            kind,
            SystemTime::now(),
        ));
    }
    let raw = take_profile(&state, &params, peer).await?;
    let started_at = raw.started_at();
    let format = params.format;
    let bytes = render_raw(raw, params).await?;
    Ok(file_response(bytes, format, kind, started_at))
}

/// Profiles the next `params.seconds` (a profile slot held meanwhile, the
/// one-sampler rule applied).
pub(crate) async fn take_profile(
    state: &AppState,
    params: &ProfileParams,
    peer: Peer,
) -> Result<crate::cpu::CpuProfile, ApiError> {
    let _slot = state
        .profiles
        .acquire(Duration::from_secs(params.seconds))?;
    let mut request = ProfileRequest::new(Duration::from_secs(params.seconds))
        .hz(params.hz)
        .mode(params.mode)
        .symbolize(params.symbolize);
    if let Peer(Some(addr)) = peer {
        request = request.requester(addr);
    }
    Ok(state.caps.cpu.profile(request).await?)
}

/// Symbolizes (or not) and renders `raw` as `params` ask, on the agent's
/// blocking pool, never on the host's runtime.
async fn render_raw(raw: crate::cpu::CpuProfile, params: ProfileParams) -> Result<Bytes, ApiError> {
    let ProfileParams {
        format,
        symbolize,
        view,
        labels,
        ..
    } = params;
    Ok(super::blocking(move || {
        render_view(
            &raw.to_profile_symbolized(symbolize),
            format,
            &labels,
            &view,
        )
    })
    .await??)
}

/// A profile of the past, from the continuous profiler's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Past {
    /// The segments overlapping `from..to`.
    Range { from: SystemTime, to: SystemTime },
    /// A pinned incident's segments.
    Pin(u64),
    /// The newest closed segment (`segment=latest`, for scrapers).
    Latest,
}

impl Past {
    /// The profile of this past from the continuous profiler, with what it
    /// covers.
    pub(crate) fn read(
        self,
        state: &AppState,
    ) -> Result<(crate::cpu::CpuProfile, crate::cpu::Coverage), ApiError> {
        Ok(match self {
            Past::Range { from, to } => state.caps.cpu.look_back(from, to)?,
            Past::Latest => state.caps.cpu.latest_segment()?,
            Past::Pin(id) => state.caps.cpu.pinned(id).ok_or_else(|| {
                let ids: Vec<String> = state.caps.cpu.pins().iter().map(|p| p.id.to_string()).collect();
                ApiError::Missing {
                    message: format!("no pinned profile {id}"),
                    hint: if ids.is_empty() {
                        "nothing is pinned: the doctor pins the continuous profile when a finding opens".to_owned()
                    } else {
                        format!("pinned: {} (the oldest go when more are pinned)", ids.join(", "))
                    },
                }
            })?,
        })
    }

    /// Reads `since` (relative such as `-5m`, or RFC 3339), `start` and
    /// `end` (either form), or `pin`; `None` when none is given (a profile
    /// of the next `seconds`).
    pub(crate) fn parse(query: &Query, now: SystemTime) -> Result<Option<Past>, ApiError> {
        let time = |name: &str| -> Result<Option<SystemTime>, ApiError> {
            query
                .get(name)
                .map(|text| {
                    super::query::parse_since(text, now).map_err(|error| {
                        let reason = match &error {
                            crate::Error::InvalidSince { reason, .. } => *reason,
                            _ => "it is not a time",
                        };
                        ApiError::bad_request(
                            format!("{name}={}: {reason}", clip(text)),
                            "times are relative to now (-90s, -5m, -1h30m) or RFC 3339 \
                             (2024-05-01T12:00:00Z); e.g. ?since=-5m, or ?start=-10m&end=-5m",
                        )
                    })
                })
                .transpose()
        };
        if let Some(segment) = query.get("segment") {
            if segment != "latest" {
                return Err(ApiError::bad_request(
                    format!("segment={} is not known", clip(segment)),
                    "segment=latest is the newest closed segment of the continuous profile",
                ));
            }
            if ["since", "start", "end", "pin"]
                .iter()
                .any(|k| query.get(k).is_some())
            {
                return Err(ApiError::bad_request(
                    "segment=latest does not go with since, start, end or pin",
                    "scrapers read ?segment=latest once a segment; people ask ?since=-5m",
                ));
            }
            return Ok(Some(Past::Latest));
        }
        if let Some(pin) = query.get("pin") {
            if ["since", "start", "end"]
                .iter()
                .any(|k| query.get(k).is_some())
            {
                return Err(ApiError::bad_request(
                    "pin= does not go with since, start or end",
                    "a pin is a whole incident: ?pin=ID (ids are in the doctor's findings)",
                ));
            }
            let id = pin.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    format!("pin={} is not a pin id", clip(pin)),
                    "pin ids are whole numbers, listed under a finding's artifacts in /debug/doctor",
                )
            })?;
            return Ok(Some(Past::Pin(id)));
        }
        let (since, start, end) = (time("since")?, time("start")?, time("end")?);
        let from =
            match (since, start) {
                (None, None) if end.is_none() => return Ok(None),
                (None, None) => {
                    return Err(ApiError::bad_request(
                        "end= needs start= (or since=)",
                        "e.g. ?start=-10m&end=-5m",
                    ))
                }
                (Some(_), Some(_)) => return Err(ApiError::bad_request(
                    "since= and start= do not go together",
                    "since=-5m is the last five minutes; start=-10m&end=-5m a window in the past",
                )),
                (Some(from), None) | (None, Some(from)) => from,
            };
        let to = end.unwrap_or(now);
        if from >= to {
            return Err(ApiError::bad_request(
                "the window is empty or reversed: its start is not before its end",
                "start must come before end, e.g. ?start=-10m&end=-5m",
            ));
        }
        Ok(Some(Past::Range { from, to }))
    }
}

/// Answers a look-back at once from the continuous profiler's ring, in
/// any format, saying in a header and the profile's comments what it
/// covers.
async fn look_back(
    state: &AppState,
    method: &Method,
    past: Past,
    params: ProfileParams,
) -> Result<Response, PprofError> {
    let (raw, coverage) = past.read(state)?;
    let header = coverage_header(&coverage);
    let started_at = raw.started_at();
    let format = params.format;
    let mut response = if is_head(method) {
        file_response(Vec::new(), format, "cpu", started_at)
    } else {
        file_response(render_raw(raw, params).await?, format, "cpu", started_at)
    };
    if let Ok(value) = axum::http::HeaderValue::from_str(&header) {
        response.headers_mut().insert(COVERAGE_HEADER, value);
    }
    Ok(response)
}

/// The header that says what a look-back covers.
pub(crate) const COVERAGE_HEADER: &str = "x-stethoscope-coverage";

/// `full; from=…; to=…; segments=N` or `partial; …; note="…"`.
fn coverage_header(coverage: &crate::cpu::Coverage) -> String {
    let time = |t: Option<SystemTime>| t.map_or("none".to_owned(), crate::units::rfc3339);
    let mut header = format!(
        "{}; from={}; to={}; segments={}",
        if coverage.partial { "partial" } else { "full" },
        time(coverage.from),
        time(coverage.to),
        coverage.segments
    );
    if let Some(note) = &coverage.note {
        let ascii: String = note
            .chars()
            .map(|c| if c.is_ascii() && c != '"' { c } else { '\'' })
            .collect();
        header.push_str(&format!("; note=\"{ascii}\""));
    }
    header
}

/// `GET /debug/pprof/symbol`: tells pprof clients that symbol lookup is
/// available, or (Go's legacy form) resolves the `+`-separated addresses in
/// the query string.
pub(crate) async fn symbol_get(
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, PprofError> {
    match query.filter(|q| !q.is_empty()) {
        None => Ok(text_response("num_symbols: 1\n".to_owned())),
        Some(addresses) => symbolize_addresses(addresses).await,
    }
}

/// `POST /debug/pprof/symbol`: Go's symbol protocol. The body lists
/// addresses as `0x…+0x…`; the answer has one `0x… function` line per
/// address that resolves (the function containing it, as Go's handler
/// does). `go tool pprof` calls it for profiles taken with
/// `symbolize=false`.
pub(crate) async fn symbol_post(body: Bytes) -> Result<Response, PprofError> {
    let list = String::from_utf8(body.to_vec()).map_err(|_| {
        ApiError::bad_request(
            "the body is not UTF-8 text",
            "send addresses as 0x1234+0x5678",
        )
    })?;
    symbolize_addresses(list).await
}

/// The addresses of a symbol request: `0x…` separated by `+`, spaces or
/// newlines.
fn parse_addresses(list: &str) -> Result<Vec<u64>, ApiError> {
    list.split(['+', '\n', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|word| {
            let digits = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X"));
            digits
                .and_then(|d| u64::from_str_radix(d, 16).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        format!("{:?} is not a hexadecimal address", clip(word)),
                        "send addresses as 0x1234+0x5678",
                    )
                })
        })
        .collect()
}

async fn symbolize_addresses(list: String) -> Result<Response, PprofError> {
    let addresses = parse_addresses(&list)?;
    let lines = super::blocking(move || crate::symbols::function_names(&addresses)).await?;
    let mut body = String::with_capacity(lines.len() * 48);
    for (address, name) in lines {
        body.push_str(&format!("{address:#x} {name}\n"));
    }
    Ok(text_response(body))
}

/// `GET /debug/pprof/`: an index in the spirit of Go's, listing what this
/// agent serves.
pub(crate) async fn index(State(state): State<AppState>) -> Html<String> {
    let status = state.caps.cpu.status();
    let sampler = match (status.running_hz, status.running_mode) {
        (Some(hz), Some(mode)) => format!(
            "running a {mode} profile at {hz} Hz for {} request(s)",
            status.subscribers
        ),
        _ => "idle".to_owned(),
    };
    let max = state.config.max_profile_seconds;
    let continuous = match state.caps.cpu.continuous_status() {
        Some(ring) => format!(
            r#"on at {} Hz: {} segments, {:.0} s of history, {} stacks, {:.1} MiB; <a href="profile?since=-5m&amp;format=svg">the last 5 minutes</a> (<code>since</code>, <code>start</code>, <code>end</code>, or <code>pin</code> for a doctor finding's incident)"#,
            ring.hz,
            ring.segments,
            ring.history_ms as f64 / 1000.0,
            ring.stacks,
            ring.memory_bytes as f64 / 1048576.0
        ),
        None => "off (AgentBuilder::continuous_profiling(19) or STETHOSCOPE_CONTINUOUS_HZ=19 turns it on)".to_owned(),
    };
    let heap = match state.caps.heap.state() {
        Ok(heap) => format!(
            "{}, one sample per {} KiB on average, stacks by {}",
            if heap.active { "sampling" } else { "paused" },
            heap.sample_interval_bytes / 1024,
            heap.backtraces.unwinder
        ),
        Err(error) => crate::profile::xml_escape(&error.to_string()),
    };
    Html(format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>/debug/pprof/</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}}td,th{{padding:.2em .8em;text-align:left}}code{{background:#eee;padding:0 .2em}}</style>
</head><body>
<h1>/debug/pprof/</h1>
<p>stethoscope {version} in pid {pid}. Sampler: {sampler}. Continuous profiling: {continuous}.</p>
<p><strong><a href="../../debug">The dashboard</a></strong>: the doctor's verdict, the last 15 minutes, the USE and RED tables, the runtime's workers, and CPU profiles and heap diffs in one page.</p>
<p>Types of profiles available:</p>
<table>
<tr><th>Profile</th><th>Formats</th><th>Description</th></tr>
<tr><td><a href="profile?seconds=30">profile</a></td>
<td><a href="profile?seconds=30&amp;format=svg">svg</a> ·
<a href="profile?seconds=30&amp;format=text">text</a> ·
<a href="profile?seconds=30&amp;format=folded">folded</a> ·
<a href="profile?seconds=30&amp;format=json">json</a></td>
<td>CPU profile. <code>seconds</code> (1–{max}, default {DEFAULT_PROFILE_SECONDS}),
<code>hz</code> (1–{MAX_PROFILE_HZ}, default {DEFAULT_PROFILE_HZ}), <code>format</code> (pprof, svg, folded, text, json; default pprof),
<code>symbolize</code> (default true; false leaves addresses and build IDs for server-side symbolization),
<code>by</code> (a label key: CPU per <a href="profile?seconds=30&amp;format=text&amp;by=route">route</a>, method, task… with text or json),
<code>group</code> (a label key: one flame-graph root per value, with svg, folded or json),
<code>mode</code> (cpu, or <a href="profile?seconds=10&amp;mode=wall&amp;format=svg">wall</a>: every thread sampled at hz whether running or waiting, labelled state=running|waiting|parked),
<code>threads</code> (with mode=wall: all, or workers — tokio worker threads only).
Requests at the same hz and mode share one sampler; another hz or mode gets 409 while it runs.</td></tr>
<tr><td><a href="flamegraph?seconds=10">flamegraph</a></td><td>svg</td>
<td>The same CPU profile as an interactive flame graph (default {DEFAULT_FLAMEGRAPH_SECONDS} s).</td></tr>
<tr><td><a href="heap">heap</a></td>
<td><a href="heap?format=svg">svg</a> ·
<a href="heap?format=text">text</a> ·
<a href="heap?format=folded">folded</a> ·
<a href="heap?format=json">json</a></td>
<td>Live heap sampled by jemalloc (<code>inuse_space</code>, <code>inuse_objects</code>), estimated from samples.
Heap profiling: {heap}.</td></tr>
<tr><td><a href="allocs?seconds=10">allocs?seconds=10</a></td>
<td><a href="allocs?seconds=10&amp;format=svg">svg</a> ·
<a href="allocs?seconds=10&amp;format=text">text</a> ·
<a href="allocs?seconds=10&amp;format=text&amp;by=route">by route</a></td>
<td>Sampled allocations of the next 10 s, freed or not (<code>alloc_space</code>, <code>alloc_objects</code>): who churns memory. Without <code>seconds</code>, the live heap (for scrapers).</td></tr>
<tr><td><a href="symbol">symbol</a></td><td>text</td>
<td>Go's symbol lookup: <code>POST</code> addresses as <code>0x…+0x…</code>, get <code>0x… function</code> lines.</td></tr>
</table>
<p>From a shell: <code>go tool pprof http://HOST:PORT/debug/pprof/profile?seconds=30</code></p>
<h2>Leaks and memory</h2>
<ul>
<li><a href="../doctor?format=text">/debug/doctor</a>: what is wrong, with evidence and the next step (<a href="../doctor">json</a>); <a href="../history?since=-5m">/debug/history</a>: the one-second history of every signal.</li>
<li><a href="../heap/stats">/debug/heap/stats</a>: jemalloc's allocated, active, resident, mapped, retained and metadata bytes, and fragmentation.</li>
<li><a href="../heap/profiling">/debug/heap/profiling</a>: whether allocations are sampled; <code>PUT {{"active": false}}</code> pauses.</li>
<li><a href="../heap/snapshots">/debug/heap/snapshots</a>: <code>POST</code> takes a snapshot; list, <code>GET</code>/<code>DELETE</code> one by id.</li>
<li><code>/debug/heap/diff?base=ID&amp;target=ID|now&amp;format=text|json|svg|pprof</code>: which stacks grew between two snapshots.</li>
</ul>
<h2>Service health</h2>
<ul>
<li><a href="../lag">/debug/lag</a> (<a href="../lag?format=svg">svg</a>): executor lag — how late the async runtime runs ready tasks — and stalls, with the stuck worker's stack.</li>
<li><a href="../runtime">/debug/runtime</a>: tokio workers, queues, busy ratios and task monitors.</li>
<li><a href="../use">/debug/use</a>: utilization, saturation and errors of CPU, memory, executor, network, disks and the service's own resources.</li>
<li><a href="../red">/debug/red</a>: rate, errors and duration of requests per route.</li>
<li><a href="../spans?format=text">/debug/spans</a>: how long each kind of traced operation (a span: a query, an upstream call) takes, and the slowest recent ones with their fields.</li>
<li><a href="../log-level">/debug/log-level</a>: the tracing filter's directive; <code>PUT</code> a new one, with <code>?ttl=10m</code> to revert by itself.</li>
<li><a href="../profiles">/debug/profiles</a>: CPU or wall-clock profiles kept on the agent (<code>POST ?seconds=10</code> takes one; <code>GET /debug/profiles/ID?format=svg|pprof|folded|text|json</code> renders it).</li>
<li><a href="../../metrics">/metrics</a>: all of it for Prometheus.</li>
</ul>
</body></html>
"#,
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
    ))
}

/// Escapes text for HTML element content.
#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<ProfileParams, ApiError> {
        ProfileParams::parse(&Query::parse(Some(query)), 30, Format::Pprof, 300)
    }

    #[test]
    fn defaults_apply_when_parameters_are_absent() {
        let p = ProfileParams::parse(&Query::default(), 10, Format::Svg, 300).unwrap();
        assert_eq!(
            (p.seconds, p.hz, p.format),
            (10, DEFAULT_PROFILE_HZ, Format::Svg)
        );
        let clamped = ProfileParams::parse(&Query::default(), 30, Format::Pprof, 5).unwrap();
        assert_eq!(clamped.seconds, 5, "default never exceeds the maximum");
    }

    #[test]
    fn parses_valid_values_and_ignores_unknown_keys() {
        let p = parse("seconds=5&hz=999&format=text&debug=1&gc=1").unwrap();
        assert_eq!((p.seconds, p.hz, p.format), (5, 999, Format::Text));
        assert!(p.symbolize);
        assert!(!parse("symbolize=false").unwrap().symbolize);
        assert!(!parse("symbolize=0").unwrap().symbolize);
        assert_eq!(parse("seconds=").unwrap().seconds, 30);
        assert_eq!(
            parse("by=route&format=text").unwrap().labels,
            LabelView::By("route".into())
        );
        assert_eq!(
            parse("group=tenant&format=svg").unwrap().labels,
            LabelView::Group("tenant".into())
        );
        assert_eq!(parse("format=json").unwrap().labels, LabelView::Stacks);
        assert_eq!(parse("").unwrap().mode, ProfileMode::Cpu);
        assert_eq!(
            parse("mode=wall").unwrap().mode,
            ProfileMode::Wall(WallThreads::All)
        );
        assert_eq!(
            parse("mode=wall&threads=workers&by=state&format=text")
                .unwrap()
                .mode,
            ProfileMode::Wall(WallThreads::Workers)
        );
    }

    #[test]
    fn rejects_out_of_range_and_malformed_values() {
        for bad in [
            "seconds=0",
            "seconds=301",
            "seconds=-1",
            "seconds=1.5",
            "seconds=abc",
            "seconds=99999999999999999999999",
            "hz=0",
            "hz=1001",
            "hz=ten",
            "format=pdf",
            "symbolize=maybe",
            "by=route",
            "by=route&format=svg",
            "group=route",
            "group=route&format=text",
            "by=route&group=route&format=json",
            "by=a%01b&format=text",
            "mode=walls",
            "threads=workers",
            "mode=cpu&threads=all",
            "mode=wall&threads=some",
        ] {
            assert!(
                matches!(parse(bad), Err(ApiError::BadRequest { .. })),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn arbitrary_query_strings_never_panic() {
        // A cheap deterministic fuzz over hostile bytes and encodings.
        let pieces = [
            "seconds", "hz", "format", "=", "&", "%", "%zz", "%00", "\u{0}", "é", "+", ";", "9",
            "svg", "-", "..", "=&=", "%ff%fe",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut query = String::new();
            for _ in 0..(seed % 9) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                query.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let _ = parse(&query);
        }
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        const QUERY: &[&str] = &[
            "seconds",
            "by",
            "group",
            "route",
            "mode",
            "wall",
            "threads",
            "workers",
            "hz",
            "format",
            "symbolize",
            "=",
            "&",
            "%",
            "%zz",
            "%ff",
            "%00",
            "+",
            "svg",
            "pprof",
            "json",
            "text",
            "true",
            "-1",
            "99999999999999999999",
            " ",
        ];

        proptest! {
            #[test]
            fn profile_queries_never_panic(query in input_of(QUERY)) {
                bounded("profile query", &query, || {
                    if let Ok(p) = parse(&query) {
                        assert!((1..=300).contains(&p.seconds));
                        assert!((1..=MAX_PROFILE_HZ).contains(&p.hz));
                    }
                });
            }

            #[test]
            fn symbol_bodies_never_panic(body in input_of(&["0x", "0X", "+", "\n", " ", "f", "ffffffffffffffffff", "g"])) {
                bounded("symbol body", &body, || { let _ = parse_addresses(&body); });
            }
        }
    }
}
