//! Push to Pyroscope: a receiver implementing the Push API as Pyroscope's
//! server parses it (`POST /push.v1.PusherService/Push`, Connect unary,
//! `application/proto`, optional `Content-Encoding: gzip`, a `PushRequest`
//! whose `raw_profile`s are pprof, gzipped or not), then the demo pushing
//! 2 s segments (every one exactly once, tiling time, labelled, naming the
//! hot function, CPU shares as a look-back of the same span has them), an
//! agent through a server that refuses, fails, hangs and comes back
//! (bounded queue, counted drops, no thread or socket left behind, no
//! retry storm), and credentials that appear nowhere. OTLP profiles are
//! in `otlp`.

mod otlp;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use stethoscope::cpu::ContinuousSettings;
use stethoscope::push::PushSettings;
use stethoscope::Agent;

use super::support::{
    get, go_pprof, in_child, is_child, profiler_lock, scratch_dir, service_runtime, stacks_through,
    wait_until, DemoProcess,
};

/// The Push API's messages (grafana/pyroscope `api/push/v1/push.proto`,
/// `api/types/v1/types.proto`) and the parts of pprof's `profile.proto`
/// the checks read, decoded independently of the agent's encoder.
mod wire {
    #![allow(unreachable_pub)]

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub series: Vec<RawProfileSeries>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawProfileSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<LabelPair>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<RawSample>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawSample {
        #[prost(bytes = "vec", tag = "1")]
        pub raw_profile: Vec<u8>,
        #[prost(string, tag = "2")]
        pub id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
    }
}

/// One pushed profile as the receiver took it apart.
#[derive(Debug, Clone)]
struct Pushed {
    labels: BTreeMap<String, String>,
    id: String,
    /// The `raw_profile` as it came (gzip pprof).
    raw: Vec<u8>,
    profile: wire::Profile,
    authorization: Option<String>,
    tenant: Option<String>,
}

impl Pushed {
    fn string(&self, i: i64) -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.profile.string_table.get(i))
            .map_or("", String::as_str)
    }

    fn from(&self) -> i64 {
        self.profile.time_nanos
    }

    fn until(&self) -> i64 {
        self.profile.time_nanos + self.profile.duration_nanos
    }

    /// CPU nanoseconds of the samples through `function`, and of all.
    fn cpu_through(&self, function: &str) -> (f64, f64) {
        let cpu = self
            .profile
            .sample_type
            .iter()
            .position(|t| self.string(t.r#type) == "cpu")
            .expect("a cpu sample type");
        let functions: BTreeMap<u64, &str> = self
            .profile
            .function
            .iter()
            .map(|f| (f.id, self.string(f.name)))
            .collect();
        let locations: BTreeMap<u64, &wire::Location> =
            self.profile.location.iter().map(|l| (l.id, l)).collect();
        let (mut part, mut total) = (0.0, 0.0);
        for sample in &self.profile.sample {
            let value = sample.value[cpu] as f64;
            total += value;
            let through = sample.location_id.iter().any(|id| {
                locations[id].line.iter().any(|line| {
                    functions
                        .get(&line.function_id)
                        .is_some_and(|name| name.ends_with(function))
                })
            });
            if through {
                part += value;
            }
        }
        (part, total)
    }

    /// The values of sample label `key`.
    fn sample_label(&self, key: &str) -> Vec<&str> {
        self.profile
            .sample
            .iter()
            .flat_map(|s| s.label.iter())
            .filter(|l| self.string(l.key) == key)
            .map(|l| self.string(l.str))
            .collect()
    }
}

/// What the receiver does with a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Takes it: 200 with an empty `PushResponse`.
    Accept = 0,
    /// 500 with a Connect error.
    Fail = 1,
    /// Reads it and answers nothing until the mode changes.
    Hang = 2,
    /// 401, echoing the `Authorization` it got (a careless proxy).
    Unauthorized = 3,
}

/// The receiver's state, shared with the test.
#[derive(Clone, Default)]
struct Receiver {
    mode: Arc<AtomicU8>,
    pushed: Arc<Mutex<Vec<Pushed>>>,
    /// When each request arrived.
    requests: Arc<Mutex<Vec<Instant>>>,
}

impl Receiver {
    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::Fail,
            2 => Mode::Hang,
            3 => Mode::Unauthorized,
            _ => Mode::Accept,
        }
    }

    fn pushed(&self) -> Vec<Pushed> {
        self.pushed.lock().unwrap().clone()
    }

    fn requests_since(&self, at: Instant) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t >= at)
            .count()
    }

    fn router(&self) -> axum::Router {
        axum::Router::new()
            .route(
                "/push.v1.PusherService/Push",
                axum::routing::post(push_handler),
            )
            .with_state(self.clone())
    }
}

fn connect_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        serde_json::json!({ "code": code, "message": message }).to_string(),
    )
        .into_response()
}

/// gzip or plain, told apart by the magic bytes, as Pyroscope's
/// `RawFromBytesWithLimit` does.
fn maybe_gunzip(bytes: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

async fn push_handler(
    axum::extract::State(receiver): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    receiver.requests.lock().unwrap().push(Instant::now());
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match receiver.mode() {
        Mode::Accept => {}
        Mode::Fail => {
            return connect_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "ingester down",
            )
        }
        Mode::Unauthorized => {
            let echoed = header("authorization").unwrap_or_default();
            return connect_error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                &format!("bad credentials: {echoed}"),
            );
        }
        Mode::Hang => {
            let started = Instant::now();
            while receiver.mode() == Mode::Hang && started.elapsed() < Duration::from_secs(120) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return connect_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "late");
        }
    }
    // Connect's unary protocol: the codec from Content-Type, compression
    // from Content-Encoding.
    if header("content-type").as_deref() != Some("application/proto") {
        return connect_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unknown",
            "content-type must be application/proto",
        );
    }
    let body = match header("content-encoding").as_deref() {
        None | Some("identity") => body.to_vec(),
        Some("gzip") => match maybe_gunzip(&body) {
            Ok(body) => body,
            Err(e) => {
                return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", &e.to_string())
            }
        },
        Some(other) => {
            return connect_error(
                StatusCode::NOT_IMPLEMENTED,
                "unimplemented",
                &format!("unknown compression {other}"),
            )
        }
    };
    let request = match wire::PushRequest::decode(body.as_slice()) {
        Ok(request) => request,
        Err(e) => {
            return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", &e.to_string())
        }
    };
    if request.series.iter().all(|s| s.samples.is_empty()) {
        return connect_error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "no profiles received",
        );
    }
    let mut taken = Vec::new();
    for series in request.series {
        let labels: BTreeMap<String, String> = series
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect();
        if labels.len() != series.labels.len() {
            return connect_error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "duplicate label",
            );
        }
        if labels.get("service_name").is_none_or(String::is_empty) {
            return connect_error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "service name is not provided",
            );
        }
        for sample in series.samples {
            let profile = match maybe_gunzip(&sample.raw_profile)
                .ok()
                .and_then(|raw| wire::Profile::decode(raw.as_slice()).ok())
            {
                Some(profile) => profile,
                None => {
                    return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", "bad pprof")
                }
            };
            taken.push(Pushed {
                labels: labels.clone(),
                id: sample.id,
                raw: sample.raw_profile,
                profile,
                authorization: header("authorization"),
                tenant: header("x-scope-orgid"),
            });
        }
    }
    receiver.pushed.lock().unwrap().extend(taken);
    // An empty PushResponse.
    ([("content-type", "application/proto")], Vec::<u8>::new()).into_response()
}

/// A receiver listening on 127.0.0.1:0, on its own runtime.
fn start_receiver() -> (Receiver, SocketAddr, tokio::runtime::Runtime) {
    let runtime = service_runtime();
    let receiver = Receiver::default();
    let app = receiver.router();
    let addr = runtime.block_on(super::support::serve(app));
    (receiver, addr, runtime)
}

/// Requests `/burn` on the demo from `threads` threads until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(service: SocketAddr, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(120)
                    {
                        let _ = get(service, "/burn?ms=200", None);
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn rfc3339_of_nanos(ns: i64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns as u64)).to_string()
}

#[test]
fn the_demo_pushes_every_segment_once_tiled_labelled_and_true() {
    let _alone = profiler_lock();
    let (receiver, addr, _runtime) = start_receiver();
    let token = "e2e-bearer-5f2a91";
    let url = format!("http://{addr}");
    let demo = DemoProcess::start_with(&[
        ("STETHOSCOPE_PUSH_URL", url.as_str()),
        ("STETHOSCOPE_CONTINUOUS_SEGMENT", "2s"),
        ("STETHOSCOPE_PUSH_SERVICE", "demo-e2e"),
        ("STETHOSCOPE_PUSH_LABELS", "environment=e2e"),
        ("STETHOSCOPE_PUSH_TENANT", "team-e2e"),
        ("STETHOSCOPE_PUSH_TOKEN", token),
    ]);
    // The start-up log says where profiles go and how.
    assert!(
        wait_until(Duration::from_secs(10), || demo.lines().iter().any(|l| l
            .contains("pushing continuous CPU profiles")
            && l.contains(&format!(
                "http://{addr}/push.v1.PusherService/Push"
            )))),
        "{}",
        demo.lines().join("\n")
    );
    let load = Load::start(demo.service, 2);
    std::thread::sleep(Duration::from_millis(500));
    let loaded_from = nanos(SystemTime::now());
    // 20 s of segments that start under load.
    let loaded = |receiver: &Receiver| -> Vec<Pushed> {
        let mut cpu: Vec<Pushed> = receiver
            .pushed()
            .into_iter()
            .filter(|p| p.labels.get("__name__").map(String::as_str) == Some("process_cpu"))
            .collect();
        cpu.sort_by_key(Pushed::from);
        cpu.into_iter()
            .filter(|p| p.from() >= loaded_from)
            .collect()
    };
    let enough = wait_until(Duration::from_secs(60), || {
        let got = loaded(&receiver);
        got.len() >= 10
    });
    drop(load);
    let segments = loaded(&receiver);
    assert!(enough, "{} segments pushed under load", segments.len());

    // Every segment once, tiling time: each starts where the one before
    // ended, to the nanosecond, over the whole run.
    let read_at = nanos(SystemTime::now());
    let mut all: Vec<Pushed> = receiver
        .pushed()
        .into_iter()
        .filter(|p| p.labels.get("__name__").map(String::as_str) == Some("process_cpu"))
        .collect();
    all.sort_by_key(Pushed::from);
    let mut ids: Vec<&str> = all.iter().map(|p| p.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "a profile arrived twice");
    for pair in all.windows(2) {
        assert_eq!(
            pair[0].until(),
            pair[1].from(),
            "segments {} → {} and {} → {} neither overlap nor leave a gap",
            rfc3339_of_nanos(pair[0].from()),
            rfc3339_of_nanos(pair[0].until()),
            rfc3339_of_nanos(pair[1].from()),
            rfc3339_of_nanos(pair[1].until()),
        );
    }
    for segment in &all {
        let length = segment.profile.duration_nanos as f64 / 1e9;
        assert!(
            (1.9..=2.6).contains(&length),
            "a 2 s segment lasts {length:.3} s"
        );
    }
    let behind = (read_at - all.last().unwrap().until()) as f64 / 1e9;
    assert!(
        behind <= 6.0,
        "the newest pushed segment ended {behind:.1} s before the receiver was read"
    );

    // Series labels, tenant and credentials as configured.
    for segment in &all {
        let labels = &segment.labels;
        assert_eq!(labels["service_name"], "demo-e2e", "{labels:?}");
        assert_eq!(labels["environment"], "e2e");
        assert!(
            labels.get("instance").is_some_and(|i| !i.is_empty()),
            "{labels:?}"
        );
        assert_eq!(segment.tenant.as_deref(), Some("team-e2e"));
        assert_eq!(
            segment.authorization.as_deref(),
            Some(format!("Bearer {token}").as_str())
        );
        assert!(segment.raw.starts_with(&[0x1f, 0x8b]), "gzip pprof");
    }
    // Sample labels survive: the route of the burning requests.
    for segment in &segments {
        assert!(
            segment.sample_label("route").contains(&"/burn"),
            "route=/burn in {:?}",
            segment.sample_label("route")
        );
        assert!(!segment.sample_label("thread").is_empty());
    }

    // `go tool pprof -top` reads each pushed body and names the hot
    // function.
    let dir = scratch_dir("push");
    for (i, segment) in segments.iter().enumerate() {
        let file = dir.join(format!("segment-{i}.pb.gz"));
        std::fs::write(&file, &segment.raw).unwrap();
        let (ok, out, err) = go_pprof(&["-top", "-nodecount=500", file.to_str().unwrap()]);
        assert!(ok, "go tool pprof failed on segment {i}: {err}");
        assert!(out.contains("burn_hot"), "segment {i}:\n{out}");
    }

    // CPU shares over the pushes match a look-back of the same span.
    let (first, last) = (segments[0].from(), segments[segments.len() - 1].until());
    let (mut hot, mut cold, mut total) = (0.0, 0.0, 0.0);
    for segment in &segments {
        let (h, t) = segment.cpu_through("burn_hot");
        let (c, _) = segment.cpu_through("burn_cold");
        hot += h;
        cold += c;
        total += t;
    }
    let reply = get(
        demo.agent,
        &format!(
            "/debug/pprof/profile?start={}&end={}&format=json",
            rfc3339_of_nanos(first + 100_000_000),
            rfc3339_of_nanos(last - 100_000_000)
        ),
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let doc = reply.json();
    let sum = |function: &str| -> f64 {
        stacks_through(&doc, function)
            .filter_map(|s| s["values"]["cpu"].as_f64())
            .sum()
    };
    let back_total = doc["totals"]["cpu"].as_f64().unwrap_or(0.0);
    assert!(back_total > 0.0 && total > 0.0);
    for (name, pushed, back) in [
        ("burn_hot", hot / total, sum("burn_hot") / back_total),
        ("burn_cold", cold / total, sum("burn_cold") / back_total),
    ] {
        assert!(
            (pushed - back).abs() <= 0.05,
            "{name}: {:.1} % of the pushed CPU, {:.1} % of the look-back's",
            pushed * 100.0,
            back * 100.0
        );
    }
    // The demo burns 3:1 (burn_hot : burn_cold).
    assert!(hot > 2.0 * cold, "hot {hot} vs cold {cold}");

    // /health and /metrics count the deliveries.
    let health = get(demo.agent, "/health", None).json();
    let push = &health["push"];
    assert!(
        push["sent"].as_u64().unwrap_or(0) >= all.len() as u64,
        "{health}"
    );
    assert_eq!(push["errors"], 0, "{health}");
    assert!(push["last_success"].is_string(), "{health}");
    let metrics = get(demo.agent, "/metrics", None).text();
    assert!(
        metrics.contains("stethoscope_push_sent_total "),
        "{metrics}"
    );
    assert!(metrics.contains("stethoscope_push_last_success_timestamp_seconds "));
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Open descriptors of this process, and how many of them are sockets.
fn descriptors() -> (usize, usize) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return (0, 0);
    };
    let targets: Vec<String> = dir
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .collect();
    let sockets = targets.iter().filter(|t| t.starts_with("socket:")).count();
    (targets.len(), sockets)
}

#[test]
fn an_outage_is_bounded_counted_leaves_nothing_behind_and_ends() {
    if !is_child() {
        let _alone = profiler_lock();
        return in_child(
            "push::an_outage_is_bounded_counted_leaves_nothing_behind_and_ends",
            &[],
        );
    }
    let runtime = service_runtime();
    let receiver = Receiver::default();
    // Bound but not listening: connections are refused until it listens.
    let socket = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket
    });
    let addr = socket.local_addr().unwrap();
    const QUEUE: usize = 4;
    const QUEUE_BYTES: usize = 2 << 20;
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .continuous(
            ContinuousSettings::new(19)
                .segment(Duration::from_secs(1))
                .keep(Duration::from_secs(60)),
        )
        .push(
            PushSettings::new(format!("http://{addr}"))
                .service("outage")
                .timeout(Duration::from_millis(800))
                .connect_timeout(Duration::from_millis(400))
                .queue(QUEUE, QUEUE_BYTES)
                .backoff(Duration::from_millis(100), Duration::from_millis(800)),
        )
        .start()
        .expect("agent with push");
    let pusher = agent.push().expect("push is on").clone();
    // The queue's size, watched every 50 ms all along.
    let watching = Arc::new(AtomicBool::new(true));
    let largest = Arc::new(Mutex::new((0u64, 0u64)));
    let watcher = {
        let (watching, largest, pusher) =
            (Arc::clone(&watching), Arc::clone(&largest), pusher.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            while watching.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                let status = pusher.status();
                let mut largest = largest.lock().unwrap();
                largest.0 = largest.0.max(status.queued);
                largest.1 = largest.1.max(status.queued_bytes);
                drop(largest);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let (threads_before, (fds_before, sockets_before)) = (threads(), descriptors());

    // Refused: 6 segments against a queue of 4.
    std::thread::sleep(Duration::from_secs(6));
    let refused = pusher.status();
    assert_eq!(refused.sent, 0, "{refused:?}");
    assert!(refused.errors_by_reason["connect"] >= 3, "{refused:?}");
    assert!(refused.dropped_by_reason["queue_full"] >= 1, "{refused:?}");
    let error = refused.last_error.as_ref().expect("the last error is kept");
    assert_eq!(error.reason, "connect");

    // The server listens, and answers 500.
    receiver.set(Mode::Fail);
    let listener = runtime.block_on(async { socket.listen(128) }).unwrap();
    let app = receiver.router();
    runtime.spawn(async move { axum::serve(listener, app).await });
    std::thread::sleep(Duration::from_secs(4));
    let failing = pusher.status();
    assert_eq!(failing.sent, 0, "{failing:?}");
    assert!(failing.errors_by_reason["server"] >= 2, "{failing:?}");
    assert!(receiver.pushed().is_empty());

    // It hangs: takes requests and never answers.
    receiver.set(Mode::Hang);
    std::thread::sleep(Duration::from_secs(5));
    let hanging = pusher.status();
    assert_eq!(hanging.sent, 0, "{hanging:?}");
    assert!(hanging.errors_by_reason["timeout"] >= 2, "{hanging:?}");
    let threads_during = threads();

    // It comes back.
    let back = Instant::now();
    receiver.set(Mode::Accept);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = pusher.status();
            s.sent >= QUEUE as u64 && s.queued <= 1
        }),
        "delivery resumes: {:?}",
        pusher.status()
    );
    // No retry storm: what the queue held, then one segment a second.
    let burst = receiver.requests_since(back);
    let since = back.elapsed().as_secs_f64();
    assert!(
        burst as f64 <= QUEUE as f64 + since + 2.0,
        "{burst} requests in the {since:.1} s after the server came back"
    );
    std::thread::sleep(Duration::from_secs(2));
    watching.store(false, Ordering::Relaxed);
    let _ = watcher.join();

    let end = pusher.status();
    let (largest_queue, largest_bytes) = *largest.lock().unwrap();
    eprintln!(
        "outage: {end:?}; largest queue {largest_queue} profiles, {largest_bytes} bytes; \
         {burst} requests in the {since:.1} s after the server came back; \
         threads {threads_before} → {threads_during}; descriptors {fds_before} → {:?}",
        descriptors()
    );
    assert!(
        largest_queue <= QUEUE as u64,
        "the queue held {largest_queue} profiles"
    );
    assert!(
        largest_bytes <= QUEUE_BYTES as u64,
        "the queue held {largest_bytes} bytes"
    );
    assert_eq!(
        end.taken,
        end.sent + end.dropped + end.queued,
        "every segment is sent, dropped or queued: {end:?}"
    );
    assert!(end.dropped_by_reason["queue_full"] >= 10, "{end:?}");
    assert!(end.last_success.is_some());
    // Segments since it came back are each delivered once, in order.
    let pushed = receiver.pushed();
    for pair in pushed.windows(2) {
        assert!(pair[0].from() < pair[1].from(), "in order, none twice");
    }
    // Nothing left behind: no thread, no socket more than before the
    // outage (the kept-alive connection and its server side at most).
    let (fds_after, sockets_after) = descriptors();
    assert!(
        threads_during <= threads_before + 1,
        "{threads_before} → {threads_during} threads"
    );
    assert!(
        threads() <= threads_before + 1,
        "{threads_before} → {} threads",
        threads()
    );
    assert!(
        sockets_after <= sockets_before + 3,
        "{sockets_before} → {sockets_after} sockets"
    );
    assert!(
        fds_after <= fds_before + 4,
        "{fds_before} → {fds_after} descriptors"
    );
    runtime.block_on(agent.shutdown());
}

#[test]
fn credentials_appear_in_no_log_line_health_debug_page_or_metric() {
    let _alone = profiler_lock();
    let (receiver, addr, _runtime) = start_receiver();
    receiver.set(Mode::Unauthorized);
    let token = "tok-e2e-9c41d7b2";
    let password = "pw-e2e-77a0f3";
    let url = format!("http://12345:{password}@{addr}");
    let demo = DemoProcess::start_with(&[
        ("STETHOSCOPE_PUSH_URL", url.as_str()),
        ("STETHOSCOPE_CONTINUOUS_SEGMENT", "1s"),
        ("STETHOSCOPE_PUSH_TOKEN", token),
        ("RUST_LOG", "debug"),
    ]);
    // Refused for a while (the receiver echoes the credentials in its
    // error message, as a careless proxy might), then taken.
    assert!(wait_until(Duration::from_secs(15), || receiver
        .requests_since(Instant::now() - Duration::from_secs(60))
        >= 2));
    receiver.set(Mode::Accept);
    assert!(wait_until(Duration::from_secs(15), || !receiver
        .pushed()
        .is_empty()));
    let pushed = receiver.pushed();
    assert_eq!(
        pushed[0].authorization.as_deref(),
        Some(format!("Bearer {token}").as_str()),
        "the token is what authenticates"
    );
    let mut outputs: Vec<(String, String)> = Vec::new();
    for path in [
        "/health",
        "/metrics",
        "/debug",
        "/debug/dashboard.json",
        "/debug/pprof/",
        "/debug/pprof/profile?since=-1m&format=text",
        "/debug/pprof/heap?format=text",
        "/debug/heap/stats",
        "/debug/heap/profiling",
        "/debug/heap/snapshots",
        "/debug/profiles",
        "/debug/use?format=json",
        "/debug/red",
        "/debug/lag",
        "/debug/runtime",
        "/debug/spans",
        "/debug/log-level",
        "/debug/doctor",
        "/debug/history?since=-1m",
        "/debug/pprof/symbol",
        "/debug/no-such-page",
    ] {
        let reply = get(demo.agent, path, None);
        outputs.push((path.to_owned(), reply.text()));
    }
    let health = get(demo.agent, "/health", None).json();
    assert!(
        health["push"]["errors_by_reason"]["unauthorized"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{health}"
    );
    assert!(
        health["push"]["url"]
            .as_str()
            .is_some_and(|u| !u.contains("12345")),
        "{health}"
    );
    outputs.push(("the demo's log".to_owned(), demo.lines().join("\n")));
    assert!(
        outputs[outputs.len() - 1].1.contains("push failed"),
        "the refusal was logged"
    );
    for (what, text) in &outputs {
        for secret in [token, password] {
            assert!(!text.contains(secret), "{what} shows a credential:\n{text}");
        }
    }
}

#[test]
fn the_live_heap_and_the_last_short_segment_are_pushed() {
    if !is_child() {
        let _alone = profiler_lock();
        return in_child(
            "push::the_live_heap_and_the_last_short_segment_are_pushed",
            &[],
        );
    }
    let (receiver, addr, runtime) = start_receiver();
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .continuous(
            ContinuousSettings::new(19)
                .segment(Duration::from_secs(1))
                .keep(Duration::from_secs(60)),
        )
        .push(
            PushSettings::new(format!("http://{addr}"))
                .service("heap-and-flush")
                .heap_every(2),
        )
        .start()
        .expect("agent with push");
    let memory = |receiver: &Receiver| -> Vec<Pushed> {
        receiver
            .pushed()
            .into_iter()
            .filter(|p| p.labels.get("__name__").map(String::as_str) == Some("memory"))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(15), || !memory(&receiver).is_empty()),
        "a heap profile every 2 segments: {:?}",
        agent.push().map(|p| p.status())
    );
    let heap = &memory(&receiver)[0];
    let types: Vec<&str> = heap
        .profile
        .sample_type
        .iter()
        .map(|t| heap.string(t.r#type))
        .collect();
    assert_eq!(types, ["inuse_objects", "inuse_space"]);
    assert_eq!(heap.labels["service_name"], "heap-and-flush");
    assert!(
        !heap.profile.sample.is_empty(),
        "the test binary's heap is sampled"
    );

    // Shut down half-way through a segment: its first half is pushed.
    std::thread::sleep(Duration::from_millis(1500));
    let before = receiver.pushed().len();
    let stopping = nanos(SystemTime::now());
    runtime.block_on(agent.shutdown());
    let mut cpu: Vec<Pushed> = receiver
        .pushed()
        .into_iter()
        .filter(|p| p.labels.get("__name__").map(String::as_str) == Some("process_cpu"))
        .collect();
    assert!(
        receiver.pushed().len() > before,
        "the final push arrived before shutdown returned"
    );
    cpu.sort_by_key(Pushed::from);
    let last = &cpu[cpu.len() - 1];
    let previous = &cpu[cpu.len() - 2];
    assert_eq!(previous.until(), last.from(), "the short segment tiles too");
    assert!(
        last.profile.duration_nanos < 1_000_000_000 && last.until() >= stopping - 50_000_000,
        "the last segment ran until shutdown: {} ms, ending {} ms after it began",
        last.profile.duration_nanos / 1_000_000,
        (last.until() - stopping) / 1_000_000
    );
}
