//! The pusher's thread: reads each closed segment once from the continuous
//! profiler, queues it, and delivers the queue one request at a time,
//! backing off while the server fails.
//!
//! Segments wait in the queue as they came from the ring (their stacks
//! shared with it) and are symbolized and encoded only when their turn to
//! be sent comes, once: an outage costs no encoding of profiles that will
//! be dropped.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::watch;

use super::client::{Client, Failure, Reason};
use super::queue::{Backoff, Queue};
use super::settings::{PushProtocol, PushSettings};
use super::{proto, Control, DropReason, Shared, DEFAULT_PUSH_FLUSH_TIMEOUT};
use crate::cpu::{ClosedSegment, CpuProfiler, SegmentFeed};
use crate::heap::HeapProfiler;
use crate::profile::Format;

/// A profile waiting for delivery.
enum Pending {
    /// A segment as the ring closed it, not yet encoded.
    Segment(Box<ClosedSegment>),
    /// An encoded `PushRequest`.
    Ready(Bytes),
}

/// What the worker needs from the settings.
struct Limits {
    queue_profiles: usize,
    queue_bytes: usize,
    backoff: (Duration, Duration),
    symbolize: bool,
    heap_every: u32,
}

pub(crate) struct Worker {
    client: Client,
    cpu: CpuProfiler,
    feed: SegmentFeed,
    heap: HeapProfiler,
    protocol: PushProtocol,
    /// Series labels of CPU and of heap profiles (`__name__` included).
    cpu_labels: Vec<(String, String)>,
    heap_labels: Vec<(String, String)>,
    shared: std::sync::Arc<Shared>,
    control: watch::Receiver<Control>,
    limits: Limits,
    /// Credentials, to keep them out of messages a server echoes.
    secrets: Vec<String>,
    /// The push labels as an OTLP resource.
    #[cfg(feature = "push-otlp")]
    resource: opentelemetry_proto::tonic::resource::v1::Resource,
    /// Key of this process's profile ids.
    id_key: u64,
    ids: u64,
}

impl Worker {
    pub(crate) fn new(
        settings: &PushSettings,
        client: Client,
        cpu: CpuProfiler,
        heap: HeapProfiler,
        labels: Vec<(String, String)>,
        shared: std::sync::Arc<Shared>,
        control: watch::Receiver<Control>,
    ) -> Self {
        let with_name = |name: &str| {
            let mut labels = labels.clone();
            labels.push(("__name__".to_owned(), name.to_owned()));
            labels.sort();
            labels
        };
        let mut secrets: Vec<String> = settings
            .basic
            .iter()
            .map(|(_, p)| p.expose().to_owned())
            .chain(settings.bearer.iter().map(|t| t.expose().to_owned()))
            .chain(settings.headers.iter().map(|(_, v)| v.expose().to_owned()))
            .collect();
        if let Ok(endpoint) = settings.validate() {
            secrets.extend(endpoint.userinfo.map(|(_, p)| p.expose().to_owned()));
        }
        secrets.retain(|s| s.len() >= 4);
        let feed = cpu.segment_feed();
        Worker {
            #[cfg(feature = "push-otlp")]
            resource: super::otlp::resource(&labels),
            protocol: settings.protocol,
            client,
            cpu,
            feed,
            heap,
            cpu_labels: with_name("process_cpu"),
            heap_labels: with_name("memory"),
            shared,
            control,
            limits: Limits {
                queue_profiles: settings.queue_profiles,
                queue_bytes: settings.queue_bytes,
                backoff: (settings.backoff_min, settings.backoff_max),
                symbolize: settings.symbolize,
                heap_every: settings.heap_every,
            },
            secrets,
            id_key: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                std::process::id(),
            ),
            ids: 0,
        }
    }

    /// Delivers until told to stop; then, when told to flush, pushes the
    /// open segment and the queue once more.
    pub(crate) async fn run(mut self) {
        let mut queue: Queue<Pending> =
            Queue::new(self.limits.queue_profiles, self.limits.queue_bytes);
        let mut backoff = Backoff::new(self.limits.backoff.0, self.limits.backoff.1);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut segments = 0u64;
        let mut failing: Option<Reason> = None;
        let mut last_rejection_log: Option<Instant> = None;
        let mut control = self.control.clone();
        loop {
            if *control.borrow_and_update() != Control::Run {
                break;
            }
            self.collect(&mut queue, &mut segments, failing.is_some());
            let due = retry_at.is_none_or(|at| tokio::time::Instant::now() >= at);
            if due && !queue.is_empty() {
                let outcome = tokio::select! {
                    biased;
                    changed = control.changed() => {
                        // Told to stop (or every handle is gone): a push
                        // under way is abandoned, its connection closed.
                        if changed.is_err() {
                            break;
                        }
                        continue;
                    }
                    outcome = self.send_front(&mut queue) => outcome,
                };
                match outcome {
                    Ok(()) => {
                        retry_at = None;
                        backoff.reset();
                        if let Some(reason) = failing.take() {
                            tracing::info!(
                                after = reason.as_str(),
                                queued = queue.len(),
                                "push delivers again"
                            );
                        }
                    }
                    Err(failure) if failure.reason.retryable() => {
                        let wait = backoff.next();
                        retry_at = Some(tokio::time::Instant::now() + wait);
                        if failing.is_none() {
                            tracing::warn!(
                                reason = failure.reason.as_str(),
                                error = %failure.message,
                                retry_in_s = wait.as_secs_f64(),
                                "push failed; retrying with backoff (the queue keeps the newest profiles)"
                            );
                        } else {
                            tracing::debug!(
                                reason = failure.reason.as_str(),
                                error = %failure.message,
                                failures = backoff.failures(),
                                retry_in_s = wait.as_secs_f64(),
                                "push failed again"
                            );
                        }
                        failing = Some(failure.reason);
                    }
                    Err(failure) => {
                        let quiet = last_rejection_log
                            .is_some_and(|at| at.elapsed() < Duration::from_secs(60));
                        if !quiet {
                            last_rejection_log = Some(Instant::now());
                            tracing::warn!(
                                reason = failure.reason.as_str(),
                                error = %failure.message,
                                "the server refused a profile; it is dropped"
                            );
                        }
                    }
                }
                self.publish_queue(&queue);
                continue;
            }
            let wait = async {
                match retry_at.filter(|_| !queue.is_empty()) {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = control.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = self.feed.changed() => {}
                _ = wait => {}
            }
        }
        if *control.borrow() == Control::Flush {
            self.flush(&mut queue, &mut segments).await;
        }
        self.shared.dropped(DropReason::Shutdown, queue.len() as u64);
        self.publish_queue(&Queue::<Pending>::new(1, 1));
        self.client.disconnect();
    }

    /// Closes the open segment and pushes it with the queue, without
    /// retries, within [`DEFAULT_PUSH_FLUSH_TIMEOUT`].
    async fn flush(&mut self, queue: &mut Queue<Pending>, segments: &mut u64) {
        let deadline = tokio::time::Instant::now() + DEFAULT_PUSH_FLUSH_TIMEOUT;
        self.cpu.seal_segment();
        self.collect(queue, segments, false);
        while !queue.is_empty() {
            match tokio::time::timeout_at(deadline, self.send_front(queue)).await {
                Ok(Ok(())) => {}
                Ok(Err(failure)) if failure.reason.retryable() => break,
                Ok(Err(_)) => {}
                Err(_) => break,
            }
        }
    }

    /// Queues the segments closed since the last look (and a heap profile
    /// every `heap_every` segments, unless the server is failing).
    fn collect(&mut self, queue: &mut Queue<Pending>, segments: &mut u64, failing: bool) {
        let batch = self.feed.read(queue.capacity());
        self.shared
            .taken(batch.missed + batch.segments.len() as u64);
        self.shared.dropped(DropReason::QueueFull, batch.missed);
        for segment in batch.segments {
            let bytes = segment_bytes(&segment);
            let dropped = queue.push(Pending::Segment(Box::new(segment)), bytes);
            self.shared.dropped(DropReason::QueueFull, dropped);
            *segments += 1;
            let every = u64::from(self.limits.heap_every);
            if every > 0 && (*segments).is_multiple_of(every) && !failing {
                if let Some(body) = self.heap_request() {
                    self.shared.taken(1);
                    let len = body.len();
                    let dropped = queue.push(Pending::Ready(body), len);
                    self.shared.dropped(DropReason::QueueFull, dropped);
                }
            }
        }
        self.publish_queue(queue);
    }

    fn publish_queue(&self, queue: &Queue<Pending>) {
        self.shared.queue(queue.len(), queue.bytes());
    }

    /// The live heap as a push request, or `None` (logged) when heap
    /// profiling is unavailable.
    fn heap_request(&mut self) -> Option<Bytes> {
        let profile = match self.heap.profile(self.limits.symbolize) {
            Ok(profile) => profile,
            Err(error) => {
                tracing::debug!(%error, "no heap profile to push");
                return None;
            }
        };
        match profile.render(Format::Pprof) {
            Ok(pprof) => {
                let (high, low) = self.next_id();
                Some(Bytes::from(proto::encode(
                    &self.heap_labels,
                    pprof,
                    proto::uuid(high, low),
                )))
            }
            Err(error) => {
                tracing::warn!(%error, "the heap profile could not be encoded");
                None
            }
        }
    }

    /// 128 bits unique to this profile of this process.
    fn next_id(&mut self) -> (u64, u64) {
        self.ids += 1;
        let low = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            self.ids,
        );
        (self.id_key ^ self.ids.rotate_left(17), low)
    }

    /// Encodes the oldest profile if it is not yet, and sends it. On
    /// success or a refusal it leaves the queue; on a retryable failure it
    /// stays at the front.
    async fn send_front(&mut self, queue: &mut Queue<Pending>) -> Result<(), Failure> {
        let encoded = match queue.front_mut() {
            None => return Ok(()),
            Some(Pending::Ready(_)) => None,
            Some(Pending::Segment(segment)) => Some(self.encode(segment)),
        };
        match encoded {
            Some(Ok(body)) => {
                let len = body.len();
                if let Some(front) = queue.front_mut() {
                    *front = Pending::Ready(body);
                }
                let dropped = queue.resize_front(len);
                self.shared.dropped(DropReason::QueueFull, dropped);
            }
            Some(Err(message)) => {
                queue.pop();
                self.shared.dropped(DropReason::Rejected, 1);
                self.shared.failed(Reason::Encode, message.clone());
                return Err(Failure {
                    reason: Reason::Encode,
                    message,
                });
            }
            None => {}
        }
        let Some(Pending::Ready(body)) = queue.front_mut() else {
            return Ok(());
        };
        let body = body.clone();
        match self.client.push(body.clone()).await {
            Ok(()) => {
                queue.pop();
                self.shared.delivered(body.len());
                Ok(())
            }
            Err(mut failure) => {
                failure.message = self.scrub(failure.message);
                self.shared.failed(failure.reason, failure.message.clone());
                if !failure.reason.retryable() {
                    queue.pop();
                    self.shared.dropped(DropReason::Rejected, 1);
                }
                Err(failure)
            }
        }
    }

    /// A segment as a push request: symbolized (unless configured not to)
    /// gzip pprof under the CPU series labels, or an OTLP export request
    /// describing the push labels' resource.
    fn encode(&mut self, segment: &ClosedSegment) -> Result<Bytes, String> {
        let profile = segment.profile.to_profile_symbolized(self.limits.symbolize);
        let (high, low) = self.next_id();
        match self.protocol {
            PushProtocol::Pyroscope => {
                let pprof = profile.render(Format::Pprof).map_err(|e| e.to_string())?;
                Ok(Bytes::from(proto::encode(
                    &self.cpu_labels,
                    pprof,
                    proto::uuid(high, low),
                )))
            }
            #[cfg(feature = "push-otlp")]
            PushProtocol::Otlp => {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&high.to_be_bytes());
                id[8..].copy_from_slice(&low.to_be_bytes());
                super::otlp::encode(&profile, &self.resource, id)
                    .map(Bytes::from)
                    .map_err(|e| format!("encoding the OTLP request: {e}"))
            }
            #[cfg(not(feature = "push-otlp"))]
            PushProtocol::Otlp => Err("OTLP needs the push-otlp feature".to_owned()),
        }
    }

    /// `message` without any credential in it.
    fn scrub(&self, mut message: String) -> String {
        for secret in &self.secrets {
            if message.contains(secret.as_str()) {
                message = message.replace(secret.as_str(), "<redacted>");
            }
        }
        message
    }
}

/// Memory a queued segment holds, estimated: its stack list (the stacks
/// themselves are shared with the ring while it keeps them).
fn segment_bytes(segment: &ClosedSegment) -> usize {
    512 + segment
        .profile
        .stacks()
        .iter()
        .map(|s| 96 + s.frames.len() * 8)
        .sum::<usize>()
}
