//! USE resource metrics: utilization, saturation and errors per resource,
//! from inside the process and aware of the container it runs in.
//!
//! [`ResourceMonitor::report`] reads `/proc`, the process's cgroups (v1 or
//! v2, limits of every ancestor), PSI, the network namespace's counters,
//! block devices and the host's tokio runtime, and returns a
//! [`UseReport`]: one [`ResourceUsage`] row per resource. Anything that
//! cannot be read on this host is `None` with the reason in `source` — a
//! report never fails. Services add their own pools with the [`Resource`]
//! trait.
//!
//! ```
//! use stethoscope::resources::{Resource, ResourceMonitor, ResourceSample};
//!
//! #[derive(Debug)]
//! struct Pool;
//! impl Resource for Pool {
//!     fn name(&self) -> &str { "db_pool" }
//!     fn sample(&self) -> ResourceSample {
//!         ResourceSample::new(7.0, 10.0).unit("connections").saturation(2.0).errors(0)
//!     }
//! }
//!
//! let monitor = ResourceMonitor::new(None);
//! monitor.register(Pool)?;
//! let report = monitor.report();
//! let pool = report.resources.iter().find(|r| r.name == "db_pool").unwrap();
//! assert_eq!(pool.utilization, Some(0.7));
//! # Ok::<(), stethoscope::Error>(())
//! ```
//!
//! Reading takes well under a millisecond of blocking file reads; from
//! async code on a latency-sensitive runtime, call it in `spawn_blocking`.

mod cgroup;
mod files;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(target_os = "linux")]
mod linux;
mod readings;
mod runtime;
mod table;

use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::Error;
pub(crate) use readings::Readings;

#[cfg(target_os = "linux")]
use linux::LinuxReader as Reader;

/// Shortest window over which USE rates and utilizations (CPU, executor,
/// disk, throttling) are computed: two samples of a cumulative counter
/// closer than this give too coarse a rate (CPU time has 10 ms ticks).
pub const MIN_USE_WINDOW: Duration = Duration::from_millis(200);

/// How often the agent's own thread samples the cumulative counters behind
/// USE utilizations, so `/debug/use` and `/metrics` describe the last
/// second or so rather than the time since the previous request.
pub const DEFAULT_USE_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// How often the agent's sampling thread also reads the values whose rates
/// need no one-second resolution (network, disk and I/O counters, open
/// descriptors, run-queue delay, PSI — itself a ten-second average —, the
/// memory and pids cgroups, limits): every tenth sample. An on-demand
/// `/debug/use` reads everything.
pub const USE_SLOW_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Elsewhere nothing is read, so nothing is kept.
#[cfg(not(target_os = "linux"))]
#[derive(Debug, Default)]
struct Reader;

#[cfg(not(target_os = "linux"))]
impl Reader {
    fn new() -> Self {
        Reader
    }
}

/// How much of the sources a sample reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// The fast sources; the slow ones when their last read is
    /// [`USE_SLOW_SAMPLE_INTERVAL`] old (the once-a-second sampler).
    Periodic,
    /// Every source, slow files from their cache if read within
    /// [`USE_SLOW_SAMPLE_INTERVAL`] (scrapes, the dashboard).
    Full,
    /// Every source, read now (a person's request).
    Fresh,
}

/// Names of the built-in rows; user resources may not reuse them.
pub const BUILTIN_RESOURCES: [&str; 8] = [
    "cpu",
    "memory",
    "file_descriptors",
    "threads",
    "network",
    "disk",
    "executor",
    "heap",
];

/// A resource a service owns — a connection pool, a worker pool, a
/// semaphore — reported next to the built-in ones in `/debug/use` and
/// `/metrics`.
///
/// [`sample`](Resource::sample) runs on the agent's thread for every report
/// and scrape: it must be quick and must not block (read atomics, not a
/// lock the hot path holds). A panic inside it is caught and reported as
/// the row's `source`.
pub trait Resource: Send + Sync + fmt::Debug + 'static {
    /// Row name, e.g. `db_pool`: ASCII letters, digits and `_`, not one of
    /// [`BUILTIN_RESOURCES`].
    fn name(&self) -> &str;

    /// The resource's state now.
    fn sample(&self) -> ResourceSample;
}

/// What a [`Resource`] reports: how much is in use out of how much, how
/// many wait, and how many failed.
///
/// ```
/// use stethoscope::resources::ResourceSample;
/// let s = ResourceSample::new(8.0, 10.0).saturation(3.0).errors(1).unit("connections");
/// assert_eq!((s.used, s.limit, s.saturation, s.errors), (Some(8.0), Some(10.0), Some(3.0), Some(1)));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ResourceSample {
    /// Units in use (connections checked out).
    pub used: Option<f64>,
    /// Units available in total (pool size).
    pub limit: Option<f64>,
    /// Work waiting for the resource (callers queued for a connection).
    pub saturation: Option<f64>,
    /// Failures since start (acquire timeouts), a monotonic count.
    pub errors: Option<u64>,
    /// Unit of `used` and `limit`.
    pub unit: String,
}

impl ResourceSample {
    /// `used` out of `limit`.
    pub fn new(used: f64, limit: f64) -> Self {
        ResourceSample {
            used: Some(used),
            limit: Some(limit),
            ..Self::default()
        }
    }

    /// Sets the number of waiters.
    #[must_use]
    pub fn saturation(mut self, waiting: f64) -> Self {
        self.saturation = Some(waiting);
        self
    }

    /// Sets the error count.
    #[must_use]
    pub fn errors(mut self, errors: u64) -> Self {
        self.errors = Some(errors);
        self
    }

    /// Sets the unit of `used` and `limit`.
    #[must_use]
    pub fn unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = unit.into();
        self
    }
}

/// One row of the USE table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ResourceUsage {
    /// `cpu`, `memory`, `file_descriptors`, `threads`, `network`, `disk`,
    /// `executor`, `heap`, or a registered [`Resource`]'s name.
    pub name: String,
    /// `used / limit`, 0..1 (CPU may briefly exceed 1 around a quota period).
    pub utilization: Option<f64>,
    /// How much work waits: a 0..1 share of time for `cpu`, `memory`,
    /// `disk` (PSI, CFS throttling) and the TCP retransmit share for
    /// `network`; a queue length for `executor` and user resources.
    pub saturation: Option<f64>,
    /// Error events counted by the source (OOM kills, refused forks,
    /// interface errors, acquire timeouts).
    pub errors: Option<u64>,
    /// Capacity, in `unit`.
    pub limit: Option<f64>,
    /// Amount in use, in `unit`.
    pub used: Option<f64>,
    /// Unit of `used` and `limit`.
    pub unit: String,
    /// Where each value came from, and why a `None` value is missing.
    pub source: String,
    /// Raw readings behind the row (`cpu_seconds_total`,
    /// `throttled_periods_total`, `psi_some_avg10_ratio`, …).
    pub details: BTreeMap<String, f64>,
}

/// The USE table: one row per resource. Its JSON is `/debug/use`'s and
/// its `Display` the `format=text` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct UseReport {
    /// Built-in resources first, then registered ones.
    pub resources: Vec<ResourceUsage>,
}

impl ResourceUsage {
    /// Whether `saturation` is a share of time (PSI, throttling, the TCP
    /// retransmit share) rather than a queue length.
    fn saturation_is_share(&self) -> bool {
        matches!(self.name.as_str(), "cpu" | "memory" | "disk" | "network")
    }
}

/// `value` in `unit`, in the unit a person reads: MiB/GiB for bytes,
/// KiB/s or MiB/s for byte rates, whole numbers for counts.
fn human_amount(value: f64, unit: &str) -> String {
    const KIB: f64 = 1024.0;
    const MIB: f64 = KIB * 1024.0;
    const GIB: f64 = MIB * 1024.0;
    match unit {
        "bytes" if value >= GIB => format!("{:.1} GiB", value / GIB),
        "bytes" if value >= MIB => format!("{:.1} MiB", value / MIB),
        "bytes" => format!("{:.0} KiB", value / KIB),
        "bytes/s" if value >= MIB => format!("{:.1} MiB/s", value / MIB),
        "bytes/s" => format!("{:.1} KiB/s", value / KIB),
        "cores" => format!("{value:.2} cores"),
        _ if value.fract() == 0.0 && value.abs() < 1e15 => format!("{value:.0} {unit}"),
        _ => format!("{value:.2} {unit}"),
    }
}

impl fmt::Display for UseReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let percent = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0));
        let saturation = |r: &ResourceUsage| match r.saturation {
            None => "-".to_owned(),
            Some(v) if r.saturation_is_share() => format!("{:.1}%", v * 100.0),
            Some(v) => format!("{v:.0} queued"),
        };
        let used = |r: &ResourceUsage| {
            let amount = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |v| human_amount(v, &r.unit));
            match (r.used, r.limit) {
                (None, None) => "-".to_owned(),
                (used, None) => format!("{} (no limit visible)", amount(used)),
                (used, limit) => format!("{} of {}", amount(used), amount(limit)),
            }
        };
        writeln!(
            out,
            "{:<18} {:>11} {:>11} {:>7}  USED OF LIMIT",
            "RESOURCE", "UTILIZATION", "SATURATION", "ERRORS"
        )?;
        for r in &self.resources {
            writeln!(
                out,
                "{:<18} {:>11} {:>11} {:>7}  {}",
                r.name,
                percent(r.utilization),
                saturation(r),
                r.errors.map_or("-".to_owned(), |e| e.to_string()),
                used(r),
            )?;
        }
        writeln!(
            out,
            "\nSaturation: share of time stalled or throttled (PSI; TCP retransmits for network), \
             or work queued (executor, your resources)."
        )?;
        writeln!(out, "\nSOURCES")?;
        for r in &self.resources {
            writeln!(out, "{}: {}", r.name, r.source)?;
        }
        Ok(())
    }
}

/// Reads the resources of this process. Cheap to clone (one `Arc`).
///
/// Utilizations are rates (CPU seconds per second, busy time per second)
/// computed between two samples at least
/// [`MIN_USE_WINDOW`] apart. The agent
/// samples every
/// [`DEFAULT_USE_SAMPLE_INTERVAL`]
/// on its own thread, so its reports describe roughly the last second;
/// a monitor used on its own measures since its previous report.
#[derive(Debug, Clone)]
pub struct ResourceMonitor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runtime: Option<tokio::runtime::Handle>,
    cgroups: Result<cgroup::Cgroups, String>,
    window: Mutex<Window>,
    /// One reading at a time, with the files it keeps open: two would waste
    /// the work, and each would count the other's open /proc files among
    /// the process's fds.
    reading: Mutex<Reader>,
    user: RwLock<Vec<Arc<dyn Resource>>>,
}

/// The two most recent samples at least `MIN_USE_WINDOW` apart.
#[derive(Debug, Default)]
struct Window {
    latest: Option<Arc<Readings>>,
    previous: Option<Arc<Readings>>,
}

impl ResourceMonitor {
    /// A monitor of this process; `runtime` is the tokio runtime whose
    /// workers make up the `executor` row (`None`: reported unavailable).
    /// Takes the first sample.
    pub fn new(runtime: Option<tokio::runtime::Handle>) -> Self {
        #[cfg(target_os = "linux")]
        let cgroups = cgroup::discover_live();
        #[cfg(not(target_os = "linux"))]
        let cgroups = Err(UNSUPPORTED.to_owned());
        let monitor = ResourceMonitor {
            inner: Arc::new(Inner {
                runtime,
                cgroups,
                window: Mutex::new(Window::default()),
                reading: Mutex::new(Reader::new()),
                user: RwLock::new(Vec::new()),
            }),
        };
        monitor.tick();
        monitor
    }

    /// Adds a user resource to every later report.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] if the name is empty, has characters other
    /// than ASCII letters, digits and `_`, or is taken.
    pub fn register(&self, resource: impl Resource) -> Result<(), Error> {
        self.register_arc(Arc::new(resource))
    }

    pub(crate) fn register_arc(&self, resource: Arc<dyn Resource>) -> Result<(), Error> {
        let name = resource.name();
        let invalid = |reason| Error::InvalidSetting {
            setting: "resource",
            reason,
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(invalid(
                "a resource name must be non-empty ASCII letters, digits and _",
            ));
        }
        if BUILTIN_RESOURCES.contains(&name) {
            return Err(invalid("a resource name must not be a built-in row's name"));
        }
        let mut user = self
            .inner
            .user
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if user.iter().any(|r| r.name() == name) {
            return Err(invalid("a resource with this name is already registered"));
        }
        user.push(resource);
        Ok(())
    }

    /// Samples every `interval` on a thread of its own (`stethoscope-use`),
    /// so reports describe the last interval; stops when the guard drops.
    pub(crate) fn sample_every(
        &self,
        interval: std::time::Duration,
    ) -> Result<crate::periodic::StopOnDrop, Error> {
        let monitor = self.clone();
        crate::periodic::spawn_every("stethoscope-use", interval, move || monitor.tick()).map_err(
            |source| Error::Os {
                call: "spawning the USE sampling thread",
                source,
            },
        )
    }

    /// Takes a periodic sample (slow values only when due) so the next
    /// report has a recent baseline.
    pub(crate) fn tick(&self) {
        let _ = self.sample(Depth::Periodic);
    }

    /// Reads a sample as deep as `depth` asks; returns it with the newest
    /// earlier sample at least `MIN_USE_WINDOW` older, for rates.
    pub(crate) fn sample(&self, depth: Depth) -> (Option<Arc<Readings>>, Arc<Readings>) {
        let now = {
            let mut reader = self
                .inner
                .reading
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::new(self.read(&mut reader, depth))
        };
        let mut window = self
            .inner
            .window
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old_enough =
            |r: &&Arc<Readings>| now.at.saturating_duration_since(r.at) >= MIN_USE_WINDOW;
        let base = window
            .latest
            .as_ref()
            .filter(old_enough)
            .or(window.previous.as_ref().filter(old_enough))
            .cloned();
        match &window.latest {
            Some(latest) if !old_enough(&latest) => {}
            _ => {
                window.previous = window.latest.take();
                window.latest = Some(Arc::clone(&now));
            }
        }
        (base, now)
    }

    /// The latest sample if it is at most `max_age` old (the agent's
    /// sampler keeps one fresh), else a new one; with the newest earlier
    /// sample at least `MIN_USE_WINDOW` older. Scrapes use this so that
    /// they cost formatting only.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn recent(
        &self,
        max_age: std::time::Duration,
    ) -> (Option<Arc<Readings>>, Arc<Readings>) {
        {
            let window = self
                .inner
                .window
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(latest) = &window.latest {
                if latest.at.elapsed() <= max_age {
                    let base = window
                        .previous
                        .as_ref()
                        .filter(|p| latest.at.saturating_duration_since(p.at) >= MIN_USE_WINDOW)
                        .cloned();
                    return (base, Arc::clone(latest));
                }
            }
        }
        self.sample(Depth::Full)
    }

    fn read(&self, reader: &mut Reader, depth: Depth) -> Readings {
        #[cfg(target_os = "linux")]
        let mut readings = reader.read(
            &self.inner.cgroups,
            depth != Depth::Periodic,
            depth == Depth::Fresh,
        );
        #[cfg(not(target_os = "linux"))]
        let mut readings = {
            let _ = (reader, depth);
            Readings::unavailable(UNSUPPORTED)
        };
        readings.executor = runtime::read(self.inner.runtime.as_ref());
        readings
    }

    /// The USE table now: every source read at this call, limits and
    /// cgroup files included (the periodic sampler and scrapes reuse the
    /// slow sources for up to [`USE_SLOW_SAMPLE_INTERVAL`]).
    pub fn report(&self) -> UseReport {
        let (base, now) = self.sample(Depth::Fresh);
        self.table(base.as_deref(), &now)
    }

    pub(crate) fn table(&self, base: Option<&Readings>, now: &Readings) -> UseReport {
        let mut resources = vec![
            table::cpu(base, now),
            table::memory(now),
            table::file_descriptors(now),
            table::threads(now),
            table::network(now),
            table::disk(now),
            table::executor(base, now),
            table::heap(crate::heap::jemalloc_stats()),
        ];
        resources.extend(self.user_rows());
        UseReport { resources }
    }

    fn user_rows(&self) -> Vec<ResourceUsage> {
        let user = self
            .inner
            .user
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        user.iter()
            .map(|resource| {
                let name = resource.name().to_owned();
                match std::panic::catch_unwind(AssertUnwindSafe(|| resource.sample())) {
                    Ok(sample) => {
                        let utilization = match (sample.used, sample.limit) {
                            (Some(used), Some(limit)) if limit > 0.0 => Some(used / limit),
                            _ => None,
                        };
                        ResourceUsage {
                            name,
                            utilization,
                            saturation: sample.saturation,
                            errors: sample.errors,
                            limit: sample.limit,
                            used: sample.used,
                            unit: sample.unit,
                            source: "registered by the application (Resource::sample)".into(),
                            details: BTreeMap::new(),
                        }
                    }
                    Err(_) => {
                        tracing::warn!(resource = %name, "Resource::sample panicked");
                        table::unavailable(&name, "Resource::sample panicked")
                    }
                }
            })
            .collect()
    }
}

#[cfg(not(target_os = "linux"))]
const UNSUPPORTED: &str = "resource readings are implemented for Linux only";

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(&'static str);
    impl Resource for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn sample(&self) -> ResourceSample {
            ResourceSample::new(3.0, 4.0).saturation(1.0).errors(2)
        }
    }

    #[derive(Debug)]
    struct Panics;
    impl Resource for Panics {
        fn name(&self) -> &str {
            "bad_pool"
        }
        fn sample(&self) -> ResourceSample {
            panic!("bug in the host's resource")
        }
    }

    #[test]
    fn every_builtin_row_is_present_and_user_rows_follow() {
        let monitor = ResourceMonitor::new(None);
        monitor.register(Fixed("pool")).unwrap();
        monitor.register(Panics).unwrap();
        assert!(monitor.register(Fixed("pool")).is_err());
        assert!(monitor.register(Fixed("cpu")).is_err());
        assert!(monitor.register(Fixed("bad name")).is_err());
        let report = monitor.report();
        let names: Vec<&str> = report.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(&names[..8], &BUILTIN_RESOURCES);
        assert_eq!(&names[8..], &["pool", "bad_pool"]);
        let pool = &report.resources[8];
        assert_eq!(
            (pool.utilization, pool.saturation, pool.errors),
            (Some(0.75), Some(1.0), Some(2))
        );
        assert!(report.resources[9].source.contains("panicked"));
        let executor = &report.resources[6];
        assert!(executor.used.is_none() && executor.source.contains("runtime"));
        assert!(report.resources[7].source.contains("jemalloc"));
    }

    #[test]
    fn rates_need_a_window_of_at_least_200_ms() {
        let monitor = ResourceMonitor::new(None);
        let (base, _) = monitor.sample(Depth::Full);
        assert!(base.is_none(), "the first samples are too close together");
        std::thread::sleep(MIN_USE_WINDOW + std::time::Duration::from_millis(20));
        let report = monitor.report();
        let cpu = &report.resources[0];
        assert!(cpu.used.is_some(), "{cpu:?}");
        // A report right after still has a baseline: the previous sample.
        let again = monitor.report();
        assert!(again.resources[0].used.is_some());
    }

    /// A person's `/debug/use` reads the limits as they are now, even a
    /// second after the periodic sampler cached them (the service lowered
    /// its descriptor limit in between).
    #[cfg(target_os = "linux")]
    #[test]
    #[allow(unsafe_code)]
    fn a_report_reads_the_limits_of_now() {
        let monitor = ResourceMonitor::new(None);
        let fd_limit = |report: &UseReport| {
            report
                .resources
                .iter()
                .find(|r| r.name == "file_descriptors")
                .and_then(|r| r.limit)
        };
        let before = fd_limit(&monitor.report());
        monitor.tick();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        let lowered = libc::rlimit {
            rlim_cur: limit.rlim_cur - 7,
            ..limit
        };
        // SAFETY: setrlimit with a valid struct; lowering the soft limit by
        // seven descriptors is harmless to the other tests, and it is put
        // back below.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let after = fd_limit(&monitor.report());
        // SAFETY: as above, restoring what getrlimit returned.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
        assert_eq!(before, Some(limit.rlim_cur as f64));
        assert_eq!(after, Some(lowered.rlim_cur as f64), "the limit of now");
    }
}
