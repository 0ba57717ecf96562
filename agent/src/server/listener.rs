//! The server's thread: binding, its single-threaded runtime, and the
//! accept loop that admits, refuses or evicts connections
//! ([`ConnectionTable`](super::ConnectionTable)) before hyper reads a byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, watch, Semaphore};
use tower::ServiceExt;

use super::error::ApiError;
use super::limits::{ConnectionPhase, PhaseBody};
use super::{access, connections, router, AppState};
use crate::Error;

/// The running server thread.
#[derive(Debug)]
pub(crate) struct ServerHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl ServerHandle {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Asks the server to stop; returns at once.
    pub(crate) fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Asks the server to stop and waits until its thread has finished.
    pub(crate) async fn stop(mut self) {
        self.signal_stop();
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// Binds (so bind errors surface from `start()`) and starts the server thread.
pub(crate) fn spawn(state: AppState) -> Result<ServerHandle, Error> {
    let config = Arc::clone(&state.config);
    let listener = std::net::TcpListener::bind(config.listen).map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    listener.set_nonblocking(true).map_err(Error::ServerStart)?;
    let local_addr = listener.local_addr().map_err(Error::ServerStart)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("stethoscope-http")
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .map_err(Error::ServerStart)?;
    let (stop, stop_rx) = watch::channel(false);
    let (stopped_tx, stopped) = oneshot::channel();
    let serving = state.clone();
    let app = router(state);
    std::thread::Builder::new()
        .name("stethoscope-http".into())
        .spawn(move || {
            runtime.block_on(serve(listener, app, serving, stop_rx));
            // Dropping the runtime cancels in-flight requests; their profile
            // windows are withdrawn and the sampler stops if idle.
            drop(runtime);
            tracing::info!(%local_addr, "stethoscope debug server stopped");
            let _ = stopped_tx.send(());
        })
        .map_err(Error::ServerStart)?;
    tracing::info!(%local_addr, "stethoscope debug server listening");
    Ok(ServerHandle {
        local_addr,
        stop,
        stopped: Some(stopped),
    })
}

/// Threads of the agent's blocking pool (symbolization, encoding, /proc
/// reads): a flood of expensive requests queues instead of growing the
/// host's thread count.
const MAX_BLOCKING_THREADS: usize = 8;

/// Refusals written at accept time that may be in flight at once; past
/// this, a refused connection is closed without an answer.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Time a refused client gets to read its answer before the socket closes.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    state: AppState,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "debug server cannot register its listener");
            return;
        }
    };
    let config = Arc::clone(&state.config);
    let table = Arc::clone(&state.connections);
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    loop {
        // Accepting never waits for a free slot: every connection is looked
        // at as it arrives, so idle sockets and refused peers cannot queue
        // up in front of a client the agent should serve.
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "debug server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if !access::allowed(&config.allow, Some(peer)) {
            table.refused_forbidden();
            tracing::debug!(%peer, "refused at accept: client address not in the allowlist");
            refuse(stream, ApiError::Forbidden, &refusals);
            continue;
        }
        let connection = match table.admit(peer.ip()) {
            Ok(connection) => connection,
            Err(connections::Refusal::Full) => {
                tracing::warn!(%peer, "debug server refused a connection: every slot is serving a request");
                let max = config.max_connections;
                refuse(stream, ApiError::ConnectionsFull { max }, &refusals);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let phase = Arc::clone(&connection);
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                phase.reading();
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
                    .extensions_mut()
                    .insert(ConnectionPhase(Arc::clone(&phase)));
                let phase = Arc::clone(&phase);
                let response = app.clone().oneshot(request);
                async move {
                    let response = response.await?;
                    Ok::<_, std::convert::Infallible>(PhaseBody::wrap(response, phase))
                }
            },
        );
        let http = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let table = Arc::clone(&table);
        tokio::spawn(async move {
            tokio::select! {
                result = http => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "debug connection ended with an error");
                    }
                }
                _ = connection.evicted() => {}
            }
            table.release(&connection);
            if connection.has_served_large() {
                // Its buffers are all freed now.
                crate::memory::give_back_freed_later();
            }
        });
        // Let the connection just admitted read its request before the next
        // accept: under a flood, a client that has sent its request leaves
        // the idle (evictable) state before later arrivals could evict it.
        tokio::task::yield_now().await;
    }
}

/// Answers a connection the server will not serve with `error` and closes
/// it, without reading a request and without taking a connection slot.
fn refuse(stream: tokio::net::TcpStream, error: ApiError, in_flight: &Arc<Semaphore>) {
    let Ok(permit) = Arc::clone(in_flight).try_acquire_owned() else {
        return;
    };
    let answer = error.raw_response();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            // Read what the client sent until it closes, so the kernel ends
            // the connection with FIN rather than a reset that could discard
            // the answer before the client reads it.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
        drop(permit);
    });
}
