//! The runtime log level: a reloadable `EnvFilter` the host installs in its
//! subscriber, and the type-erased [`LogLevel`] control the agent keeps to
//! read and replace its directive, with an optional automatic revert.
//!
//! Reverts run on a small thread of the agent's (started on the first
//! change with a `ttl`, gone once nothing is pending), never on the host's
//! runtime.

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tracing::Subscriber;
use tracing_subscriber::{reload, EnvFilter};

use crate::spans::{MAX_LOG_DIRECTIVE_BYTES, MAX_LOG_LEVEL_TTL};
use crate::Error;

/// The reloadable filter layer [`log_filter`] returns, for the host's
/// subscriber. `S` is the subscriber below it and is inferred from
/// `.with(filter)`.
pub type LogFilter<S> = reload::Layer<EnvFilter, S>;

/// A reloadable [`EnvFilter`] starting at `directive` (the same syntax as
/// `RUST_LOG`, e.g. `info` or `info,my_service::db=debug`), and the
/// [`LogLevel`] control to hand to
/// [`AgentBuilder::log_level`](crate::AgentBuilder::log_level) so that
/// `GET/PUT /debug/log-level` can read and change it.
///
/// Install the filter in the service's own subscriber, as its global
/// filter, before starting the agent; the agent never installs a
/// subscriber itself:
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// # fn main() -> Result<(), stethoscope::Error> {
/// let (filter, log_level) = stethoscope::spans::log_filter("info")?;
/// let subscriber = tracing_subscriber::registry().with(filter);
/// # let _guard = tracing::subscriber::set_default(subscriber);
/// # /*
/// tracing::subscriber::set_global_default(subscriber)?; // or .init()
/// # */
/// assert!(!tracing::enabled!(tracing::Level::DEBUG));
/// log_level.set("debug", None)?;
/// assert!(tracing::enabled!(tracing::Level::DEBUG));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::InvalidLogDirective`] with the parser's message if `directive`
/// does not parse; [`Error::InvalidSetting`] if it is empty or longer than
/// [`MAX_LOG_DIRECTIVE_BYTES`].
pub fn log_filter<S>(directive: &str) -> Result<(LogFilter<S>, LogLevel), Error>
where
    S: Subscriber + 'static,
{
    let directive = normalize(directive)?;
    let filter = parse(&directive)?;
    let (layer, handle) = reload::Layer::new(filter);
    let level = LogLevel::new(directive, Box::new(handle));
    Ok((layer, level))
}

/// `directive` without surrounding whitespace or empty items.
fn normalize(directive: &str) -> Result<String, Error> {
    if directive.len() > MAX_LOG_DIRECTIVE_BYTES {
        return Err(Error::InvalidSetting {
            setting: "directive",
            reason: "longer than MAX_LOG_DIRECTIVE_BYTES",
        });
    }
    let items: Vec<&str> = directive
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    if items.is_empty() {
        return Err(Error::InvalidSetting {
            setting: "directive",
            reason: "empty; give at least a level such as `info`",
        });
    }
    Ok(items.join(","))
}

fn parse(directive: &str) -> Result<EnvFilter, Error> {
    EnvFilter::builder()
        .parse(directive)
        .map_err(|source| Error::InvalidLogDirective {
            directive: directive.to_owned(),
            source: Box::new(source),
        })
}

/// Parses a `ttl` such as `10m`, `30s` or `1h30m` (a bare number is
/// seconds): more than 0 and at most [`MAX_LOG_LEVEL_TTL`].
pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let ttl = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text).map_err(|e| format!("ttl={text:?}: {e}"))?,
    };
    check_ttl(ttl).map_err(|reason| format!("ttl={text:?} {reason}"))?;
    Ok(ttl)
}

fn check_ttl(ttl: Duration) -> Result<(), &'static str> {
    if ttl.is_zero() {
        Err("must be longer than 0")
    } else if ttl > MAX_LOG_LEVEL_TTL {
        Err("is longer than 24 hours (MAX_LOG_LEVEL_TTL)")
    } else {
        Ok(())
    }
}

/// Replaces the filter of the host's subscriber; erases its type.
trait Reload: Send + Sync + 'static {
    fn reload(&self, filter: EnvFilter) -> Result<(), reload::Error>;
    /// Whether the filter is still part of a subscriber.
    fn live(&self) -> bool;
}

impl<S: 'static> Reload for reload::Handle<EnvFilter, S> {
    fn reload(&self, filter: EnvFilter) -> Result<(), reload::Error> {
        reload::Handle::reload(self, filter)
    }

    fn live(&self) -> bool {
        self.with_current(|_| ()).is_ok()
    }
}

/// Who set the directive in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LogLevelOrigin {
    /// The directive given to [`log_filter`] at startup.
    Startup,
    /// [`LogLevel::set`], e.g. through `PUT /debug/log-level`.
    Api,
}

impl LogLevelOrigin {
    /// `startup` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevelOrigin::Startup => "startup",
            LogLevelOrigin::Api => "api",
        }
    }
}

/// The log filter's directive and what will happen to it; its JSON is
/// `GET /debug/log-level`'s.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LogLevelStatus {
    /// The directive in effect, e.g. `info,my_service::db=debug`.
    pub directive: String,
    /// Who set it.
    pub origin: LogLevelOrigin,
    /// When it was set.
    #[serde(serialize_with = "crate::report::time")]
    pub set_at: SystemTime,
    /// When it reverts, if it was set with a `ttl`.
    #[serde(serialize_with = "opt_time")]
    pub revert_at: Option<SystemTime>,
    /// Time left until it reverts.
    #[serde(rename = "revert_in_s", serialize_with = "opt_secs")]
    pub revert_in: Option<Duration>,
    /// The directive it reverts to.
    pub revert_to: Option<String>,
    /// Whether the filter is part of a live subscriber; `false` if the
    /// host dropped it (never installed it, or installing failed).
    pub active: bool,
}

fn opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => crate::report::time(t, s),
        None => s.serialize_none(),
    }
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => crate::report::secs(d, s),
        None => s.serialize_none(),
    }
}

/// What [`LogLevel::set`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogLevelChange {
    /// The directive before the change.
    pub previous: String,
    /// The state after it.
    pub status: LogLevelStatus,
}

/// Reads and replaces the directive of the filter [`log_filter`]
/// returned, for `GET/PUT /debug/log-level`. Cheap to clone.
///
/// A change with a `ttl` reverts by itself: to the directive that was in
/// effect before the first of a run of temporary changes, so "debug for 10
/// minutes" always ends where it started. A change without `ttl` is
/// permanent and cancels a pending revert.
#[derive(Clone)]
pub struct LogLevel {
    shared: Arc<Shared>,
}

struct Shared {
    filter: Box<dyn Reload>,
    state: Mutex<State>,
    /// Wakes the revert thread when a change moves or cancels its revert.
    changed: Condvar,
}

struct State {
    current: Setting,
    revert: Option<Revert>,
    /// Whether the revert thread runs.
    reverter: bool,
}

#[derive(Debug, Clone)]
struct Setting {
    directive: String,
    origin: LogLevelOrigin,
    set_at: SystemTime,
}

struct Revert {
    at: Instant,
    at_wall: SystemTime,
    to: Setting,
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevel")
            .field("status", &self.status())
            .finish()
    }
}

impl LogLevel {
    fn new(directive: String, filter: Box<dyn Reload>) -> Self {
        LogLevel {
            shared: Arc::new(Shared {
                filter,
                state: Mutex::new(State {
                    current: Setting {
                        directive,
                        origin: LogLevelOrigin::Startup,
                        set_at: SystemTime::now(),
                    },
                    revert: None,
                    reverter: false,
                }),
                changed: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// The directive in effect and any pending revert.
    pub fn status(&self) -> LogLevelStatus {
        let active = self.shared.filter.live();
        let state = self.lock();
        state.status(active)
    }

    /// Replaces the directive; with `ttl`, reverts after it (see the type's
    /// docs). The change is logged (target `stethoscope::spans::level`).
    ///
    /// # Errors
    /// [`Error::InvalidLogDirective`] with the parser's message, leaving
    /// the filter unchanged; [`Error::InvalidSetting`] for an empty or too
    /// long directive or a `ttl` of 0 or over [`MAX_LOG_LEVEL_TTL`];
    /// [`Error::LogFilter`] if the filter is not part of a live subscriber;
    /// [`Error::Os`] if the revert thread cannot start.
    pub fn set(&self, directive: &str, ttl: Option<Duration>) -> Result<LogLevelChange, Error> {
        self.set_by(directive, ttl, None)
    }

    /// [`set`](Self::set) on behalf of the HTTP client `peer`, for the log.
    pub(crate) fn set_by(
        &self,
        directive: &str,
        ttl: Option<Duration>,
        peer: Option<SocketAddr>,
    ) -> Result<LogLevelChange, Error> {
        let directive = normalize(directive)?;
        let filter = parse(&directive)?;
        if let Some(ttl) = ttl {
            check_ttl(ttl).map_err(|reason| Error::InvalidSetting {
                setting: "ttl",
                reason,
            })?;
        }
        let mut state = self.lock();
        if ttl.is_some() && !state.reverter {
            let shared = Arc::clone(&self.shared);
            std::thread::Builder::new()
                .name("stethoscope-log-revert".into())
                .spawn(move || shared.run_reverter())
                .map_err(|source| Error::Os {
                    call: "pthread_create",
                    source,
                })?;
            state.reverter = true;
        }
        self.shared
            .filter
            .reload(filter)
            .map_err(|e| Error::LogFilter(Box::new(e)))?;
        let now = SystemTime::now();
        let previous = std::mem::replace(
            &mut state.current,
            Setting {
                directive,
                origin: LogLevelOrigin::Api,
                set_at: now,
            },
        );
        let pending = state.revert.take();
        state.revert = ttl.map(|ttl| Revert {
            at: Instant::now() + ttl,
            at_wall: now + ttl,
            to: pending.map_or_else(|| previous.clone(), |pending| pending.to),
        });
        self.shared.changed.notify_all();
        let status = state.status(true);
        drop(state);
        let ttl = ttl.map(|ttl| humantime::format_duration(ttl).to_string());
        if tracing::enabled!(tracing::Level::INFO) {
            tracing::info!(from = %previous.directive, to = %status.directive, ttl = ttl.as_deref(), revert_to = status.revert_to.as_deref(), peer = peer.map(tracing::field::display), "log filter changed");
        } else {
            // The new filter hides INFO: the change must still leave a trace.
            tracing::warn!(from = %previous.directive, to = %status.directive, ttl = ttl.as_deref(), revert_to = status.revert_to.as_deref(), peer = peer.map(tracing::field::display), "log filter changed");
        }
        Ok(LogLevelChange {
            previous: previous.directive,
            status,
        })
    }
}

impl State {
    fn status(&self, active: bool) -> LogLevelStatus {
        LogLevelStatus {
            directive: self.current.directive.clone(),
            origin: self.current.origin,
            set_at: self.current.set_at,
            revert_at: self.revert.as_ref().map(|r| r.at_wall),
            revert_in: self.revert.as_ref().map(|r| {
                r.at_wall
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
            }),
            revert_to: self.revert.as_ref().map(|r| r.to.directive.clone()),
            active,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The revert thread: sleeps until the pending revert is due (woken
    /// early when a change moves or cancels it), applies it, and exits
    /// when nothing is pending.
    fn run_reverter(&self) {
        let mut state = self.lock();
        loop {
            let Some(due) = state.revert.as_ref().map(|r| r.at) else {
                state.reverter = false;
                return;
            };
            let now = Instant::now();
            if now < due {
                state = self
                    .changed
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            let Some(revert) = state.revert.take() else {
                continue;
            };
            let applied = parse(&revert.to.directive)
                .and_then(|filter| {
                    self.filter
                        .reload(filter)
                        .map_err(|e| Error::LogFilter(Box::new(e)))
                });
            let from = std::mem::replace(&mut state.current, revert.to);
            let to = state.current.directive.clone();
            drop(state);
            match applied {
                Ok(()) if tracing::enabled!(tracing::Level::INFO) => {
                    tracing::info!(from = %from.directive, %to, "log filter reverted after its ttl")
                }
                Ok(()) => {
                    tracing::warn!(from = %from.directive, %to, "log filter reverted after its ttl")
                }
                Err(error) => {
                    tracing::warn!(%error, from = %from.directive, %to, "cannot revert the log filter")
                }
            }
            state = self.lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Records the directives it is given.
    #[derive(Default)]
    struct Recording {
        applied: Mutex<Vec<String>>,
        gone: AtomicBool,
    }

    impl Reload for Arc<Recording> {
        fn reload(&self, filter: EnvFilter) -> Result<(), reload::Error> {
            if self.gone.load(Ordering::Relaxed) {
                // A real handle whose layer was dropped.
                let (layer, handle) = reload::Layer::<EnvFilter, tracing_subscriber::Registry>::new(
                    EnvFilter::new("info"),
                );
                drop(layer);
                return handle.reload(filter);
            }
            self.applied.lock().unwrap().push(filter.to_string());
            Ok(())
        }

        fn live(&self) -> bool {
            !self.gone.load(Ordering::Relaxed)
        }
    }

    fn level(directive: &str) -> (LogLevel, Arc<Recording>) {
        let recording = Arc::new(Recording::default());
        let level = LogLevel::new(directive.to_owned(), Box::new(Arc::clone(&recording)));
        (level, recording)
    }

    fn wait_for(level: &LogLevel, directive: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if level.status().directive == directive {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn directives_are_normalized_and_bad_ones_carry_the_parser_message() {
        assert_eq!(
            normalize(" info , my_crate=debug,, ").unwrap(),
            "info,my_crate=debug"
        );
        assert!(matches!(
            normalize(" , "),
            Err(Error::InvalidSetting { .. })
        ));
        assert!(normalize(&"a".repeat(MAX_LOG_DIRECTIVE_BYTES + 1)).is_err());
        assert!(parse("info,my_crate::db=debug,[request{id=7}]=trace").is_ok());
        for bad in ["my_crate=loud", "a=b=c", "x[{y=1]=info"] {
            match parse(bad) {
                Err(Error::InvalidLogDirective { directive, source }) => {
                    assert_eq!(directive, bad);
                    assert!(!source.to_string().is_empty());
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn ttl_accepts_humantime_and_bare_seconds_within_bounds() {
        assert_eq!(parse_ttl("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_ttl(" 1h30m ").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_ttl("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_ttl("24h").unwrap(), MAX_LOG_LEVEL_TTL);
        for bad in ["0", "0s", "25h", "soon", "-5m", ""] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
        assert!(parse_ttl("2d").unwrap_err().contains("24 hours"));
    }

    #[test]
    fn a_bad_directive_leaves_the_filter_unchanged() {
        let (level, recording) = level("info");
        assert!(matches!(
            level.set("my_crate=loud", None),
            Err(Error::InvalidLogDirective { .. })
        ));
        assert!(matches!(
            level.set("debug", Some(Duration::ZERO)),
            Err(Error::InvalidSetting { setting: "ttl", .. })
        ));
        assert!(recording.applied.lock().unwrap().is_empty());
        let status = level.status();
        assert_eq!(status.directive, "info");
        assert_eq!(status.origin, LogLevelOrigin::Startup);
        assert!(status.active);
    }

    #[test]
    fn a_change_with_ttl_reverts_by_itself() {
        let (level, recording) = level("info");
        let change = level
            .set("info,my_crate=debug", Some(Duration::from_millis(100)))
            .unwrap();
        assert_eq!(change.previous, "info");
        assert_eq!(change.status.directive, "info,my_crate=debug");
        assert_eq!(change.status.origin, LogLevelOrigin::Api);
        assert_eq!(change.status.revert_to.as_deref(), Some("info"));
        assert!(change.status.revert_at.unwrap() > change.status.set_at);
        assert!(wait_for(&level, "info"), "{:?}", level.status());
        let status = level.status();
        assert_eq!(status.origin, LogLevelOrigin::Startup, "restored as it was");
        assert_eq!(status.revert_at, None);
        let applied = recording.applied.lock().unwrap().clone();
        assert_eq!(applied.len(), 2, "{applied:?}");
        assert!(applied[0].contains("my_crate=debug"), "{applied:?}");
        assert_eq!(applied[1], "info");
        // The revert thread exits once nothing is pending.
        let deadline = Instant::now() + Duration::from_secs(5);
        while level.lock().reverter && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!level.lock().reverter);
    }

    #[test]
    fn a_new_change_moves_or_cancels_the_pending_revert() {
        let (level, recording) = level("warn");
        level.set("info", Some(Duration::from_secs(3600))).unwrap();
        // A second temporary change keeps the original revert target.
        let second = level.set("debug", Some(Duration::from_millis(50))).unwrap();
        assert_eq!(second.status.revert_to.as_deref(), Some("warn"));
        assert!(wait_for(&level, "warn"));

        level.set("info", Some(Duration::from_millis(50))).unwrap();
        // A permanent change cancels it.
        let permanent = level.set("error", None).unwrap();
        assert_eq!(permanent.status.revert_at, None);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(level.status().directive, "error");
        assert_eq!(
            recording.applied.lock().unwrap().last().map(String::as_str),
            Some("error")
        );
    }

    #[test]
    fn a_dropped_filter_is_reported() {
        let (level, recording) = level("info");
        recording.gone.store(true, Ordering::Relaxed);
        assert!(!level.status().active);
        assert!(matches!(level.set("debug", None), Err(Error::LogFilter(_))));
        assert_eq!(level.status().directive, "info");
    }

    #[test]
    fn the_real_filter_changes_what_is_enabled() {
        let _serial = crate::spans::tracing_test_lock();
        use tracing_subscriber::layer::SubscriberExt;
        let (filter, level) = log_filter("info").unwrap();
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(target: "my_crate::db", tracing::Level::DEBUG));
            level.set("info,my_crate=debug", None).unwrap();
            assert!(tracing::enabled!(target: "my_crate::db", tracing::Level::DEBUG));
            assert!(!tracing::enabled!(target: "other", tracing::Level::DEBUG));
            assert!(level.status().active);
        });
    }

    #[test]
    fn works_as_a_per_layer_filter() {
        use tracing_subscriber::layer::{Layer, SubscriberExt};
        let _serial = crate::spans::tracing_test_lock();
        let (filter, level) = log_filter("info").unwrap();
        let timings = crate::spans::SpanTimings::new();
        let subscriber = tracing_subscriber::registry().with(timings.layer().with_filter(filter));
        tracing::subscriber::with_default(subscriber, || {
            drop(tracing::debug_span!("hidden").entered());
            level.set("debug", None).unwrap();
            drop(tracing::debug_span!("shown").entered());
        });
        let names: Vec<_> = timings.report().spans.iter().map(|s| s.name).collect();
        assert_eq!(names, ["shown"]);
    }
}
