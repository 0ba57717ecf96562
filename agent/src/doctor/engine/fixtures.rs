//! Synthetic histories for the rules' tests: a healthy service under
//! steady mixed load, which each test bends into its ground-truth pattern.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::history::{History, ResourceSlot, Row, Series};
use super::report::{diagnose, DoctorReport};
use super::rules::RuleInput;
use super::state::{RuleStates, Transition};
use super::{Current, DoctorConfig, MemoryLimitSource, ResourceReading, RouteReading};

pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// 2024-05-01T12:00:00Z.
pub(crate) fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_714_564_800)
}

/// Deterministic noise in -1..1 (xorshift).
#[derive(Debug)]
pub(crate) struct Noise(u64);

impl Noise {
    pub(crate) fn new(seed: u64) -> Self {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// One second of a healthy service: 30 % of a 2-core quota, responsive
/// executor, flat memory with noise, 100 requests a second.
pub(crate) fn healthy_row(at: SystemTime, second: u64, noise: &mut Noise) -> Row {
    let s = second as f64;
    let mut row = Row::new(at);
    let mut set = |series, value| row.set(series, value);
    set(Series::CpuCores, 0.6 + 0.1 * noise.next());
    set(Series::CpuLimitCores, 2.0);
    set(Series::CpuThrottledRatio, 0.0);
    set(Series::RssBytes, 200.0 * MIB + 3.0 * MIB * noise.next());
    set(
        Series::JemallocAllocatedBytes,
        120.0 * MIB + 2.0 * MIB * noise.next(),
    );
    set(
        Series::JemallocResidentBytes,
        150.0 * MIB + 2.0 * MIB * noise.next(),
    );
    set(Series::MemoryBytes, 220.0 * MIB + 3.0 * MIB * noise.next());
    set(Series::MemoryLimitBytes, 1024.0 * MIB);
    set(Series::OomKillsTotal, 0.0);
    set(Series::OpenFds, (120.0 + 4.0 * noise.next()).round());
    set(Series::FdLimit, 65536.0);
    set(Series::Threads, 24.0);
    set(Series::ThreadLimit, 4096.0);
    set(Series::LagP50Ms, 0.2 + 0.1 * noise.next());
    set(Series::LagP99Ms, 2.0 + noise.next());
    set(Series::LagMaxMs, 6.0 + 3.0 * noise.next());
    set(Series::Workers, 2.0);
    set(Series::WorkerBusyMean, 0.3 + 0.1 * noise.next());
    set(Series::WorkerBusyMin, 0.25 + 0.05 * noise.next());
    set(Series::WorkerBusyMax, 0.35 + 0.05 * noise.next());
    set(Series::GlobalQueueDepth, 0.0);
    set(Series::AliveTasks, (40.0 + 5.0 * noise.next()).round());
    set(Series::StallsTotal, 0.0);
    set(Series::RequestsTotal, 100.0 * s);
    set(Series::ErrorsTotal, 0.0);
    set(Series::RequestP99Ms, 40.0 + 10.0 * noise.next());
    set(Series::PsiCpuSomeAvg10, 0.02);
    set(Series::PsiMemorySomeAvg10, 0.0);
    set(Series::PsiIoSomeAvg10, 0.01);
    row
}

/// Readings of now that go with [`healthy_row`].
pub(crate) fn healthy_current() -> Current {
    Current {
        routes: vec![
            RouteReading::new("GET", "/items/{id}", 5400, 2)
                .latency(Duration::from_millis(25), Duration::from_millis(45)),
            RouteReading::new("POST", "/orders", 600, 0)
                .latency(Duration::from_millis(80), Duration::from_millis(120)),
        ],
        routes_window: Duration::from_secs(60),
        fd_limit: Some(65536),
        thread_limit: Some(4096),
        memory_limit_bytes: Some(1 << 30),
        memory_limit_source: MemoryLimitSource::Cgroup,
        resources: vec![ResourceReading::new("db_pool", 4.0, 10.0, "connections")],
        heap_profiling: true,
        cpu_profiling: true,
        ..Current::default()
    }
}

/// The slot of the `db_pool` resource every [`Scenario`] registers first.
pub(crate) fn pool_slot() -> ResourceSlot {
    History::new(1).resource_slot("db_pool").unwrap()
}

/// A history, its readings of now and the default thresholds.
#[derive(Debug)]
pub(crate) struct Scenario {
    pub(crate) history: History,
    pub(crate) current: Current,
    pub(crate) config: DoctorConfig,
    /// Time of the first row.
    pub(crate) start: SystemTime,
    /// Time of the last row.
    pub(crate) end: SystemTime,
}

impl Scenario {
    /// `seconds` rows of [`healthy_row`], each changed by `bend(second, row)`;
    /// a `db_pool` resource at 40 % with no waiters.
    pub(crate) fn new(seconds: u64, mut bend: impl FnMut(u64, &mut Row)) -> Self {
        let mut history = History::new(seconds.try_into().unwrap());
        let pool = history.resource_slot("db_pool").unwrap();
        let mut noise = Noise::new(seconds);
        let start = epoch();
        for s in 0..seconds {
            let at = start + Duration::from_secs(s);
            let mut row = healthy_row(at, s, &mut noise);
            row.set(Series::ResourceUtilization(pool), 0.4 + 0.2 * noise.next());
            row.set(Series::ResourceSaturation(pool), 0.0);
            bend(s, &mut row);
            history.push(&row);
        }
        Scenario {
            history,
            current: healthy_current(),
            config: DoctorConfig::default(),
            start,
            end: start + Duration::from_secs(seconds.saturating_sub(1)),
        }
    }

    /// The rules' input at the last row.
    pub(crate) fn input(&self) -> RuleInput<'_> {
        self.input_at(self.end)
    }

    /// The rules' input at `now`.
    pub(crate) fn input_at(&self, now: SystemTime) -> RuleInput<'_> {
        RuleInput::new(&self.history, &self.current, &self.config, now)
    }

    /// Runs the doctor once a second from `from` seconds after the start to
    /// the last row, as the recorder would; returns every transition and
    /// the last report.
    pub(crate) fn replay(&self, from: u64) -> (Vec<Transition>, DoctorReport) {
        let mut states = RuleStates::new();
        let mut transitions = Vec::new();
        let mut at = self.start + Duration::from_secs(from);
        loop {
            let (report, mut changes) =
                diagnose(&self.history, &self.current, &self.config, &mut states, at);
            transitions.append(&mut changes);
            if at >= self.end {
                return (transitions, report);
            }
            at += Duration::from_secs(1);
        }
    }
}
