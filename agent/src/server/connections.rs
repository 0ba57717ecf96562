//! Who holds the debug server's connections, and who gives one up.
//!
//! The server keeps at most `max_connections` connections open. Each is in
//! one of four phases:
//!
//! - **idle**: connected, no request yet (or between keep-alive requests);
//! - **reading**: request headers arrived, the body is still arriving;
//! - **handling**: the handler runs (a CPU profile waits here for its window);
//! - **sending**: the response is being written.
//!
//! An idle or reading connection has not given the agent anything to work
//! on yet, so it can be closed to make room: when the table is full, a new
//! connection evicts one of them — the oldest of the peer address that holds
//! the most connections, so neither one noisy host nor a flood of sockets
//! from anywhere can keep an allowed client out. A connection that has been
//! sending for longer than [`SEND_GRACE`] (a client reading its response
//! very slowly) is evictable too. Handling connections are never evicted;
//! the server caps the ones that can last long (CPU profiles) below
//! `max_connections`, so some room always remains for `/health` and quick
//! requests. Only when every connection is handling does a new one get an
//! immediate 503.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A connection that has been sending its response for longer than this
/// may be evicted: the client reads too slowly to deserve its slot.
pub(crate) const SEND_GRACE: Duration = Duration::from_secs(10);

const IDLE: u8 = 0;
const READING: u8 = 1;
const HANDLING: u8 = 2;
const SENDING: u8 = 3;

/// One open connection, shared by its task, its requests and the table.
#[derive(Debug)]
pub(crate) struct Connection {
    id: u64,
    peer: IpAddr,
    epoch: Instant,
    phase: AtomicU8,
    /// When the current phase began, in µs since `epoch`.
    since_us: AtomicU64,
    evicted: Notify,
    /// A response of this connection was a large report.
    served_large: std::sync::atomic::AtomicBool,
}

impl Connection {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn enter(&self, phase: u8) {
        self.since_us.store(self.now_us(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
    }

    /// Request headers arrived; the body (if any) is still to be read.
    pub(crate) fn reading(&self) {
        self.enter(READING);
    }

    /// The request is complete and its handler runs.
    pub(crate) fn handling(&self) {
        self.enter(HANDLING);
    }

    /// The handler answered; the response is being written.
    pub(crate) fn sending(&self) {
        self.enter(SENDING);
    }

    /// The response is written; the connection waits for the next request.
    pub(crate) fn idle(&self) {
        self.enter(IDLE);
    }

    /// Notes that a large report went out on this connection.
    pub(crate) fn served_large(&self) {
        self.served_large.store(true, Ordering::Relaxed);
    }

    /// Whether a large report went out on this connection.
    pub(crate) fn has_served_large(&self) -> bool {
        self.served_large.load(Ordering::Relaxed)
    }

    /// Resolves once the table has evicted this connection.
    pub(crate) async fn evicted(&self) {
        self.evicted.notified().await;
    }

    /// Since when (µs since the epoch) this connection has been evictable,
    /// if it is.
    fn evictable_since(&self) -> Option<u64> {
        let since = self.since_us.load(Ordering::Relaxed);
        match self.phase.load(Ordering::Acquire) {
            IDLE | READING => Some(since),
            SENDING => {
                let grace = u64::try_from(SEND_GRACE.as_micros()).unwrap_or(u64::MAX);
                (self.now_us().saturating_sub(since) >= grace).then_some(since)
            }
            _ => None,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every connection is handling a request.
    Full,
}

/// Counters of the connection table, for `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ConnectionStats {
    /// Connections open now.
    pub(crate) open: usize,
    /// Most connections open at once (the setting).
    pub(crate) max: usize,
    /// Connections accepted since start.
    pub(crate) accepted_total: u64,
    /// Idle, slow or stalled connections closed to make room.
    pub(crate) evicted_total: u64,
    /// Connections answered 503 because every slot was handling a request.
    pub(crate) refused_busy_total: u64,
    /// Connections from outside the allowlist, refused at accept.
    pub(crate) refused_forbidden_total: u64,
}

/// The open connections of one debug server.
#[derive(Debug)]
pub(crate) struct ConnectionTable {
    max: usize,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<Vec<Arc<Connection>>>,
    accepted: AtomicU64,
    evicted: AtomicU64,
    refused_busy: AtomicU64,
    refused_forbidden: AtomicU64,
}

impl ConnectionTable {
    pub(crate) fn new(max: usize) -> Self {
        ConnectionTable {
            max: max.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            refused_forbidden: AtomicU64::new(0),
        }
    }

    /// Admits a connection from `peer`, evicting an idle or slow one if the
    /// table is full.
    pub(crate) fn admit(&self, peer: IpAddr) -> Result<Arc<Connection>, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= self.max {
            let Some(victim) = choose_victim(&open) else {
                self.refused_busy.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Full);
            };
            let evicted = open.swap_remove(victim);
            evicted.evicted.notify_one();
            self.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %evicted.peer, "debug server closed an idle connection to make room");
        }
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            epoch: self.epoch,
            phase: AtomicU8::new(IDLE),
            since_us: AtomicU64::new(0),
            evicted: Notify::new(),
            served_large: std::sync::atomic::AtomicBool::new(false),
        });
        connection.idle();
        open.push(Arc::clone(&connection));
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(connection)
    }

    /// Forgets a connection that has ended (a no-op if it was evicted).
    pub(crate) fn release(&self, connection: &Connection) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = open.iter().position(|c| c.id == connection.id) {
            open.swap_remove(index);
        }
    }

    /// Counts a connection refused at accept for its address.
    pub(crate) fn refused_forbidden(&self) {
        self.refused_forbidden.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            open: self
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            max: self.max,
            accepted_total: self.accepted.load(Ordering::Relaxed),
            evicted_total: self.evicted.load(Ordering::Relaxed),
            refused_busy_total: self.refused_busy.load(Ordering::Relaxed),
            refused_forbidden_total: self.refused_forbidden.load(Ordering::Relaxed),
        }
    }
}

/// The connection to close: among the evictable ones, the oldest of the
/// peer that holds the most connections.
fn choose_victim(open: &[Arc<Connection>]) -> Option<usize> {
    let mut per_peer: HashMap<IpAddr, usize> = HashMap::new();
    for connection in open {
        *per_peer.entry(connection.peer).or_default() += 1;
    }
    open.iter()
        .enumerate()
        .filter_map(|(index, c)| {
            let since = c.evictable_since()?;
            let held = per_peer.get(&c.peer).copied().unwrap_or(0);
            // Most connections first, then the oldest phase.
            Some((std::cmp::Reverse(held), since, index))
        })
        .min()
        .map(|(_, _, index)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_full_table_evicts_the_oldest_idle_connection() {
        let table = ConnectionTable::new(3);
        let first = table.admit(ip(1)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let second = table.admit(ip(1)).unwrap();
        second.handling();
        let third = table.admit(ip(1)).unwrap();
        let fourth = table.admit(ip(1)).unwrap();
        let stats = table.stats();
        assert_eq!((stats.open, stats.evicted_total), (3, 1));
        // The first (oldest idle) went; the handling one stays.
        let open = table.open.lock().unwrap();
        let ids: Vec<u64> = open.iter().map(|c| c.id).collect();
        assert!(!ids.contains(&first.id));
        assert!(ids.contains(&second.id) && ids.contains(&third.id) && ids.contains(&fourth.id));
    }

    #[test]
    fn the_peer_holding_most_connections_gives_one_up_first() {
        let table = ConnectionTable::new(4);
        let lone = table.admit(ip(9)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let noisy: Vec<_> = (0..3).map(|_| table.admit(ip(2)).unwrap()).collect();
        let _newcomer = table.admit(ip(9)).unwrap();
        let open = table.open.lock().unwrap();
        assert!(
            open.iter().any(|c| c.id == lone.id),
            "the oldest idle connection belongs to a quiet peer: it stays"
        );
        assert_eq!(open.iter().filter(|c| c.peer == ip(2)).count(), 2);
        drop(noisy);
    }

    #[test]
    fn handling_connections_are_never_evicted_and_a_full_table_refuses() {
        let table = ConnectionTable::new(2);
        let a = table.admit(ip(1)).unwrap();
        let b = table.admit(ip(1)).unwrap();
        a.handling();
        b.handling();
        assert_eq!(table.admit(ip(1)).unwrap_err(), Refusal::Full);
        assert_eq!(table.stats().refused_busy_total, 1);
        // Reading a body is evictable; a fresh send is not.
        b.reading();
        assert!(table.admit(ip(1)).is_ok());
        let c = table.open.lock().unwrap()[1].clone();
        c.sending();
        assert_eq!(table.admit(ip(1)).unwrap_err(), Refusal::Full);
    }

    #[test]
    fn released_and_evicted_connections_leave_the_table() {
        let table = ConnectionTable::new(1);
        let a = table.admit(ip(1)).unwrap();
        let b = table.admit(ip(1)).unwrap();
        // `a` was evicted: releasing it later changes nothing.
        table.release(&a);
        assert_eq!(table.stats().open, 1);
        table.release(&b);
        assert_eq!(table.stats().open, 0);
    }

    #[tokio::test]
    async fn eviction_wakes_the_connection_task() {
        let table = ConnectionTable::new(1);
        let a = table.admit(ip(1)).unwrap();
        let _b = table.admit(ip(1)).unwrap();
        tokio::time::timeout(Duration::from_secs(1), a.evicted())
            .await
            .expect("evicted connection is told");
    }
}
