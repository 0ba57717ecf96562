//! Push to the fleet: every segment the continuous profiler closes goes, as
//! gzip pprof with its labels, to a Grafana Pyroscope server (or a Grafana
//! Alloy `pyroscope.receive_http`), for services a scraper cannot reach.
//!
//! Profiles go through Pyroscope's Push API, `POST
//! /push.v1.PusherService/Push` (Connect, unary, binary protobuf): the API
//! its current servers document as the public one, and the one the
//! official Rust SDK (pyroscope-rs 2.x) and Alloy's `pyroscope.write` use.
//! Series labels are explicit name/value pairs (no `app{k=v}` string to
//! escape, as the legacy `/ingest?name=…` needs); each `RawSample` holds one
//! gzip pprof, which the server recognizes by its magic bytes. The pprof's
//! own sample labels (`route`, `task`, `span`, `thread`, yours) become
//! Pyroscope series labels, so keep them few-valued.
//!
//! With the `push-otlp` feature, [`PushProtocol::Otlp`] sends each segment
//! as OTLP profiles instead (`POST /v1development/profiles`, gzip
//! protobuf): to Pyroscope 2.x or an OpenTelemetry Collector, the labels as
//! resource attributes and the sample labels as sample attributes.
//!
//! Delivery runs on its own thread (`stethoscope-push`) with a small
//! current-thread runtime, never on the host's: a bounded queue that drops
//! the oldest profile when the server is slow or down, retries with capped
//! exponential backoff and jitter, timeouts on connecting and on each
//! request, one request at a time (a server back from an outage receives at
//! most the queue). Counters are in `/metrics` (`stethoscope_push_*`) and
//! `/health`. Credentials are [`Secret`]s: never logged, never shown.
//!
//! ```no_run
//! # fn run() -> Result<(), stethoscope::Error> {
//! use stethoscope::push::PushSettings;
//!
//! let agent = stethoscope::Agent::builder()
//!     .push(
//!         PushSettings::new("http://pyroscope.monitoring:4040")
//!             .service("checkout")
//!             .label("environment", "production"),
//!     )
//!     .start()?; // continuous profiling is on (19 Hz) because push needs it
//! # Ok(())
//! # }
//! ```

mod client;
mod endpoint;
mod metrics;
#[cfg(feature = "push-otlp")]
mod otlp;
mod proto;
mod queue;
mod settings;
#[cfg(feature = "push-tls")]
mod tls;
mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use crate::cpu::{ContinuousSettings, CpuProfiler};
use crate::heap::HeapProfiler;
use crate::Error;
use client::Reason;
pub(crate) use settings::apply_env;
pub use settings::{
    PushProtocol, PushSettings, Secret, DEFAULT_PUSH_BACKOFF_MAX, DEFAULT_PUSH_BACKOFF_MIN,
    DEFAULT_PUSH_CONNECT_TIMEOUT, DEFAULT_PUSH_FLUSH_TIMEOUT, DEFAULT_PUSH_QUEUE_BYTES,
    DEFAULT_PUSH_QUEUE_PROFILES, DEFAULT_PUSH_TIMEOUT, ENV_PUSH_CA_FILE, ENV_PUSH_HEAP_EVERY,
    ENV_PUSH_LABELS, ENV_PUSH_PASSWORD, ENV_PUSH_PROTOCOL, ENV_PUSH_QUEUE, ENV_PUSH_SERVICE, ENV_PUSH_SYMBOLIZE,
    ENV_PUSH_TENANT, ENV_PUSH_TIMEOUT, ENV_PUSH_TOKEN, ENV_PUSH_URL, ENV_PUSH_USER,
};

/// The continuous profiler's rate when pushing turns it on (it was not
/// configured): Pyroscope's and Parca's usual 19 Hz, about 0.07 % of one
/// core with two busy threads (docs/overhead.md).
pub const DEFAULT_PUSH_CONTINUOUS_HZ: u32 = 19;

/// Why queued profiles were dropped, as
/// `stethoscope_push_dropped_total{reason}` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The queue was full (the server slow or down): the oldest went.
    QueueFull,
    /// The server refused the profile, or it could not be encoded.
    Rejected,
    /// Still queued when the agent stopped (or its final push ran out of
    /// time).
    Shutdown,
}

impl DropReason {
    pub(crate) const ALL: [DropReason; 3] =
        [DropReason::QueueFull, DropReason::Rejected, DropReason::Shutdown];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// The last failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PushFailure {
    /// `connect`, `tls`, `timeout`, `io`, `server`, `throttled`,
    /// `unauthorized`, `rejected` or `encode`.
    pub reason: &'static str,
    /// When it happened.
    #[serde(serialize_with = "crate::report::time")]
    pub at: SystemTime,
    /// What went wrong, briefly (the server's own message for an error
    /// status), credentials removed.
    pub message: String,
}

/// What the pusher has done so far ([`Pusher::status`], `/health`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PushStatus {
    /// Where profiles go (without credentials).
    pub url: String,
    /// The API they go with: `pyroscope` or `otlp`.
    pub protocol: &'static str,
    /// The `service_name` they carry.
    pub service: String,
    /// Profiles taken for delivery: every segment closed since the pusher
    /// started (and each live heap). Each is, or will be, sent, dropped or
    /// still queued: `taken = sent + dropped + queued` whenever no push is
    /// under way.
    pub taken: u64,
    /// Profiles delivered.
    pub sent: u64,
    /// Bytes of the requests that delivered them.
    pub sent_bytes: u64,
    /// Profiles dropped, all reasons.
    pub dropped: u64,
    /// Profiles dropped, by reason (`queue_full`, `rejected`, `shutdown`).
    pub dropped_by_reason: BTreeMap<&'static str, u64>,
    /// Failed attempts, all reasons.
    pub errors: u64,
    /// Failed attempts, by reason.
    pub errors_by_reason: BTreeMap<&'static str, u64>,
    /// Profiles waiting for delivery.
    pub queued: u64,
    /// Their size, estimated, in bytes.
    pub queued_bytes: u64,
    /// When a profile was last delivered.
    #[serde(serialize_with = "crate::report::optional_time")]
    pub last_success: Option<SystemTime>,
    /// The last failed attempt, if any.
    pub last_error: Option<PushFailure>,
}

/// What the worker thread and the handles share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    taken: AtomicU64,
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    errors: [AtomicU64; Reason::ALL.len()],
    queued: AtomicU64,
    queued_bytes: AtomicU64,
    last_success: Mutex<Option<SystemTime>>,
    last_error: Mutex<Option<PushFailure>>,
}

impl Shared {
    fn taken(&self, count: u64) {
        self.taken.fetch_add(count, Ordering::Relaxed);
    }

    fn dropped(&self, reason: DropReason, count: u64) {
        if count > 0 {
            self.dropped[reason as usize].fetch_add(count, Ordering::Relaxed);
        }
    }

    fn failed(&self, reason: Reason, message: String) {
        self.errors[reason.index()].fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(PushFailure {
            reason: reason.as_str(),
            at: SystemTime::now(),
            message,
        });
    }

    fn delivered(&self, bytes: usize) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        *self.last_success.lock().unwrap_or_else(PoisonError::into_inner) = Some(SystemTime::now());
    }

    fn queue(&self, profiles: usize, bytes: usize) {
        self.queued.store(profiles as u64, Ordering::Relaxed);
        self.queued_bytes.store(bytes as u64, Ordering::Relaxed);
    }
}

/// What the agent tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    /// Stop now; what is queued is dropped.
    Stop,
    /// Close the open segment, push what is queued (within
    /// [`DEFAULT_PUSH_FLUSH_TIMEOUT`]), then stop.
    Flush,
}

/// Handle to the agent's pusher: its status, and the final push.
#[derive(Debug, Clone)]
pub struct Pusher {
    shared: Arc<Shared>,
    url: Arc<str>,
    protocol: PushProtocol,
    service: Arc<str>,
    control: Arc<watch::Sender<Control>>,
    finished: watch::Receiver<bool>,
}

impl Pusher {
    /// What has been pushed, dropped and retried so far.
    pub fn status(&self) -> PushStatus {
        let s = &self.shared;
        let dropped_by_reason: BTreeMap<&'static str, u64> = DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), s.dropped[*r as usize].load(Ordering::Relaxed)))
            .collect();
        let errors_by_reason: BTreeMap<&'static str, u64> = Reason::ALL
            .iter()
            .map(|r| (r.as_str(), s.errors[r.index()].load(Ordering::Relaxed)))
            .collect();
        PushStatus {
            url: self.url.to_string(),
            protocol: self.protocol.name(),
            service: self.service.to_string(),
            taken: s.taken.load(Ordering::Relaxed),
            sent: s.sent.load(Ordering::Relaxed),
            sent_bytes: s.sent_bytes.load(Ordering::Relaxed),
            dropped: dropped_by_reason.values().sum(),
            dropped_by_reason,
            errors: errors_by_reason.values().sum(),
            errors_by_reason,
            queued: s.queued.load(Ordering::Relaxed),
            queued_bytes: s.queued_bytes.load(Ordering::Relaxed),
            last_success: *s.last_success.lock().unwrap_or_else(PoisonError::into_inner),
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Closes the continuous profiler's open segment, pushes it and
    /// whatever is queued (within [`DEFAULT_PUSH_FLUSH_TIMEOUT`], no
    /// retries), and stops the pusher; [`Agent::shutdown`](crate::Agent::shutdown)
    /// calls it. Short-lived jobs lose at most what the server refuses.
    pub async fn finish(&self) {
        self.control.send_if_modified(|c| {
            let run = *c == Control::Run;
            if run {
                *c = Control::Flush;
            }
            run
        });
        let mut finished = self.finished.clone();
        let wait = DEFAULT_PUSH_FLUSH_TIMEOUT + Duration::from_secs(1);
        let _ = tokio::time::timeout(wait, finished.wait_for(|done| *done)).await;
    }
}

/// Stops the pusher (without a final push) when the agent goes.
#[derive(Debug)]
pub(crate) struct PushGuard(Arc<watch::Sender<Control>>);

impl Drop for PushGuard {
    fn drop(&mut self) {
        self.0.send_if_modified(|c| {
            let run = *c == Control::Run;
            if run {
                *c = Control::Stop;
            }
            run
        });
    }
}

/// Push needs the continuous profiler: turns it on at
/// [`DEFAULT_PUSH_CONTINUOUS_HZ`] when `push` is set and it is off, and
/// says so.
pub(crate) fn enable_ring(continuous: &mut Option<ContinuousSettings>, push: Option<&PushSettings>) {
    if push.is_some() && continuous.is_none() {
        let settings = ContinuousSettings::new(DEFAULT_PUSH_CONTINUOUS_HZ);
        tracing::info!(
            hz = settings.hz,
            segment_s = settings.segment.as_secs_f64(),
            "push turns continuous profiling on (STETHOSCOPE_CONTINUOUS_HZ or \
             AgentBuilder::continuous_profiling choose another rate)"
        );
        *continuous = Some(settings);
    }
}

/// Starts the pusher's thread for `settings`, reading `cpu`'s segments
/// (and `heap`'s live heap when asked).
///
/// # Errors
/// The first invalid setting, or [`Error::Os`] when the thread or its
/// runtime cannot start.
pub(crate) fn start(
    settings: &PushSettings,
    cpu: &CpuProfiler,
    heap: &HeapProfiler,
) -> Result<(Pusher, PushGuard), Error> {
    let endpoint = settings.validate()?;
    let url: Arc<str> = endpoint.shown().into();
    let labels = settings.series_labels(|name| std::env::var(name).ok());
    let service: Arc<str> = labels
        .iter()
        .find(|(n, _)| n == "service_name")
        .map_or_else(|| "".into(), |(_, v)| v.as_str().into());
    let client = client::Client::new(settings, endpoint)?;
    let shared = Arc::new(Shared::default());
    let (control, control_rx) = watch::channel(Control::Run);
    let control = Arc::new(control);
    let (finished_tx, finished) = watch::channel(false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .thread_name("stethoscope-push")
        // Name resolution is the only blocking work: one thread at most,
        // gone when idle.
        .max_blocking_threads(1)
        .thread_keep_alive(Duration::from_secs(10))
        .build()
        .map_err(|source| Error::Os {
            call: "building the push runtime",
            source,
        })?;
    let continuous = cpu.continuous_status();
    tracing::info!(
        url = %url,
        service = %service,
        labels = ?labels,
        api = match settings.protocol {
            PushProtocol::Pyroscope => "push.v1.PusherService/Push",
            PushProtocol::Otlp => "OTLP profiles (v1development)",
        },
        hz = continuous.map(|c| c.hz),
        symbolize = settings.symbolize,
        heap_every = settings.heap_every,
        "pushing continuous CPU profiles"
    );
    let worker = worker::Worker::new(
        settings,
        client,
        cpu.clone(),
        heap.clone(),
        labels,
        Arc::clone(&shared),
        control_rx,
    );
    std::thread::Builder::new()
        .name("stethoscope-push".into())
        .spawn(move || {
            runtime.block_on(worker.run());
            let _ = finished_tx.send(true);
        })
        .map_err(|source| Error::Os {
            call: "spawning the push thread",
            source,
        })?;
    Ok((
        Pusher {
            shared,
            url,
            protocol: settings.protocol,
            service,
            control: Arc::clone(&control),
            finished,
        },
        PushGuard(control),
    ))
}
