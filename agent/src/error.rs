use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Whole seconds a client should wait: rounded up, never 0.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Everything that can go wrong in the agent.
///
/// Variants keep their underlying cause as a [`source`](std::error::Error::source).
/// The enum is `#[non_exhaustive]`: match with a wildcard arm.
///
/// `Debug` prints the same actionable message as `Display`, followed by its
/// causes, because that is what a `main` returning
/// `Result<(), Box<dyn std::error::Error>>` shows when `start()` fails:
///
/// ```
/// let error = stethoscope::Agent::builder().listen("0.0.0.0:0").start().unwrap_err();
/// let shown = format!("{:?}", Box::<dyn std::error::Error>::from(error));
/// assert!(shown.contains("allow_insecure_bind(true)"), "{shown}");
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listen address is not a `host:port` socket address.
    #[error("invalid listen address {addr:?}: expected host:port, e.g. 127.0.0.1:6060")]
    InvalidListenAddr {
        /// The address as given.
        addr: String,
        /// Why it did not parse.
        #[source]
        source: std::net::AddrParseError,
    },

    /// An allowlist entry is neither a CIDR block nor an IP address.
    #[error("invalid CIDR {cidr:?}: expected e.g. 10.0.0.0/8 or 192.168.1.7")]
    InvalidCidr {
        /// The entry as given.
        cidr: String,
        /// Why it did not parse.
        #[source]
        source: ipnet::AddrParseError,
    },

    /// An environment variable read by `with_default_env()` has an unusable value.
    #[error("environment variable {var}={value:?} is invalid: expected {expected}")]
    InvalidEnv {
        /// The variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },

    /// A setting is out of range.
    #[error("invalid setting {setting}: {reason}")]
    InvalidSetting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Refused to bind a non-loopback address without a token.
    #[error(
        "refusing to serve debug endpoints on non-loopback address {addr} without a token: \
         set a token (AgentBuilder::token or STETHOSCOPE_TOKEN) or, if the network is \
         trusted, call allow_insecure_bind(true)"
    )]
    InsecureBind {
        /// The address that was refused.
        addr: SocketAddr,
    },

    /// The debug server could not bind its address.
    #[error("cannot bind debug server to {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The debug server's thread or runtime could not be started.
    #[error("cannot start the debug server thread")]
    ServerStart(#[source] io::Error),

    /// A profile was requested while the sampler runs at another frequency
    /// or in another mode (CPU or wall-clock).
    #[error(
        "the sampler is already running a {running_mode} profile at {running_hz} Hz; \
         retry in {} s or ask for {}&hz={running_hz}",
        retry_after_secs(*retry_after),
        running_mode.query()
    )]
    ProfilerBusy {
        /// Frequency of the running sampler.
        running_hz: u32,
        /// Mode of the running sampler.
        running_mode: crate::mode::ProfileMode,
        /// Time until the running profiles end.
        retry_after: Duration,
    },

    /// Profiling is not available in this build or on this platform.
    #[error("{what} is not supported here: {reason}")]
    Unsupported {
        /// The capability, e.g. "CPU profiling".
        what: &'static str,
        /// Why, and what would make it available.
        reason: &'static str,
    },

    /// Another profiler owns SIGPROF or the profiling timer.
    #[error("another profiler is active in this process: {0}")]
    ForeignProfiler(&'static str),

    /// A system call the sampler needs failed.
    #[error("{call} failed")]
    Os {
        /// The call, e.g. "setitimer".
        call: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Heap profiling is not available in this process; the hint says what
    /// to change.
    #[error("heap profiling is unavailable: {reason}")]
    HeapUnavailable {
        /// What is missing.
        reason: &'static str,
        /// How to enable it.
        hint: &'static str,
    },

    /// A jemalloc control call (`mallctl`) failed.
    #[error("jemalloc {call} failed")]
    Jemalloc {
        /// The control name, e.g. "prof.dump".
        call: &'static str,
        /// What jemalloc reported.
        #[source]
        source: io::Error,
    },

    /// A jemalloc heap profile could not be read.
    #[error("cannot parse the jemalloc heap profile: {reason} (line {line})")]
    HeapDump {
        /// What was wrong.
        reason: &'static str,
        /// 1-based line of the dump.
        line: usize,
    },

    /// No heap snapshot has this id (it may have been evicted).
    #[error("no heap snapshot {id}")]
    SnapshotNotFound {
        /// The id asked for.
        id: u64,
        /// The ids currently kept.
        known: Vec<u64>,
    },

    /// A profile request has an unusable parameter.
    #[error("invalid profile request: {0}")]
    InvalidRequest(&'static str),

    /// The sampler stopped before the profile was complete (agent shutdown).
    #[error("the CPU sampler stopped before the profile was complete")]
    SamplerStopped,

    /// A look-back was asked for while continuous profiling is off.
    #[error("continuous profiling is off: there is no recorded past to look back at")]
    ContinuousProfilingOff,

    /// A log filter directive (`RUST_LOG` syntax) did not parse; the
    /// source is the parser's message.
    #[cfg(feature = "spans")]
    #[error("invalid log filter directive {directive:?}")]
    InvalidLogDirective {
        /// The directive as given (whitespace around items removed).
        directive: String,
        /// What the parser said (tracing-subscriber's `ParseError`, boxed
        /// so that this type does not tie stethoscope's version to theirs).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The log filter cannot be changed: the subscriber it was installed in
    /// is gone (or it never was installed).
    #[cfg(feature = "spans")]
    #[error("cannot change the log filter")]
    LogFilter(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// Encoding a report failed.
    #[error("cannot encode the {format} report")]
    Encode {
        /// The format being written.
        format: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A `since` time (of `/debug/history`) did not parse or lies in the
    /// future.
    #[error(
        "invalid since={value:?}: {reason}; expected a time relative to now such as \
         -90s, -5m or -1h, or an RFC 3339 time such as 2024-05-01T12:00:00Z"
    )]
    InvalidSince {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A history series name is not one the history records.
    #[error("unknown series {name:?}; the history records: {known}")]
    UnknownSeries {
        /// The name as given.
        name: String,
        /// Every valid name, comma-separated.
        known: String,
    },

    /// A task dump was refused where tokio's dump is known to hurt the
    /// host (a `current_thread` runtime, a stuck worker, an earlier dump
    /// that timed out) or while another runs.
    #[error("task dump refused: {reason}")]
    TaskDumpRefused {
        /// Why.
        reason: &'static str,
        /// What to use instead.
        hint: &'static str,
    },

    /// The runtime did not hand over its task dump in time; task dumps are
    /// off for the rest of the process.
    #[error("the runtime did not hand over its task dump within {0:?}")]
    TaskDumpTimedOut(std::time::Duration),

    /// The threads' stacks could not be captured (the capture signal has
    /// another handler, or the platform cannot interrupt a thread).
    #[error("cannot capture the threads' stacks")]
    StackCapture(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A budget (`STETHOSCOPE_BUDGETS` or a [`Budget`](crate::doctor::Budget))
    /// is malformed or out of range.
    #[error("invalid budget {part:?} in {item:?}: expected {expected}")]
    InvalidBudget {
        /// The budget item it is part of (between `;`).
        item: String,
        /// The part that is wrong.
        part: String,
        /// What would have been valid there.
        expected: &'static str,
    },
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            write!(f, "\n  caused by: {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// `error` and its causes on one line (`"outer: cause: root"`), for
/// reports that carry a failure as a string.
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
pub(crate) fn one_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

impl Error {
    /// An equivalent error for another requester waiting on the same
    /// failure; an OS error keeps its kind and message.
    pub(crate) fn for_another_waiter(&self) -> Error {
        match self {
            Error::Unsupported { what, reason } => Error::Unsupported { what, reason },
            Error::ForeignProfiler(reason) => Error::ForeignProfiler(reason),
            Error::Os { call, source } => Error::Os {
                call,
                source: io::Error::new(source.kind(), source.to_string()),
            },
            _ => Error::SamplerStopped,
        }
    }
}
