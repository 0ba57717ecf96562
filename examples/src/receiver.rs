//! A stand-in for a Pyroscope server's Push endpoint (and an OTLP
//! profiles endpoint), for the push benchmarks: it takes `POST
//! /push.v1.PusherService/Push` and `POST /v1development/profiles` and
//! counts requests and bytes, or (as told) answers 500, or never answers.
//! The end-to-end tests have the receivers that decode what they get.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200, empty `PushResponse`.
    Accept = 0,
    /// 500 with a Connect error.
    Fail = 1,
    /// Reads the request, answers nothing until the mode changes.
    Hang = 2,
}

/// Counts of what arrived.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests received (any mode).
    pub requests: AtomicU64,
    /// Requests accepted.
    pub accepted: AtomicU64,
    /// Bytes of the accepted requests.
    pub bytes: AtomicU64,
}

/// A running receiver: its mode and counts.
#[derive(Debug, Clone)]
pub struct Receiver {
    mode: Arc<AtomicU8>,
    /// What arrived so far.
    pub counts: Arc<Counts>,
}

impl Receiver {
    /// Serves on `listener` from the current tokio runtime.
    pub fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let receiver = Receiver {
            mode: Arc::new(AtomicU8::new(Mode::Accept as u8)),
            counts: Arc::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new()
            .route("/push.v1.PusherService/Push", axum::routing::post(take))
            .route("/v1development/profiles", axum::routing::post(take))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    /// Changes how it answers.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::Fail,
            2 => Mode::Hang,
            _ => Mode::Accept,
        }
    }
}

/// One push: counted, then answered as the mode says (an empty body is
/// an empty `PushResponse` and an empty `ExportProfilesServiceResponse`).
async fn take(
    axum::extract::State(r): axum::extract::State<Receiver>,
    body: Bytes,
) -> (StatusCode, &'static str) {
    r.counts.requests.fetch_add(1, Ordering::Relaxed);
    match r.mode() {
        Mode::Accept => {
            r.counts.accepted.fetch_add(1, Ordering::Relaxed);
            r.counts
                .bytes
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            (StatusCode::OK, "")
        }
        Mode::Fail => (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"code":"internal","message":"ingester down"}"#,
        ),
        Mode::Hang => {
            while r.mode() == Mode::Hang {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (StatusCode::SERVICE_UNAVAILABLE, "")
        }
    }
}

/// A receiver on its own thread and runtime, listening on `addr`
/// (`127.0.0.1:0` for any port); returns it and the address it got.
pub fn spawn(addr: &str) -> std::io::Result<(Receiver, SocketAddr)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("receiver".into())
        .spawn(move || {
            runtime.block_on(async move {
                let _ = tx.send(Receiver::serve(listener));
                std::future::pending::<()>().await;
            })
        })?;
    let receiver = rx
        .recv()
        .map_err(|_| std::io::Error::other("the receiver did not start"))?;
    Ok((receiver, local))
}

/// Resident memory of this process, in bytes (`VmRSS`).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Threads of this process, and its open descriptors, of which sockets.
pub fn threads_and_descriptors() -> (usize, usize, usize) {
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    let targets: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let sockets = targets.iter().filter(|t| t.starts_with("socket:")).count();
    (threads, targets.len(), sockets)
}
