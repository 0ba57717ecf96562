//! The one-second history: a fixed ring of rows, one per second, holding
//! every signal the doctor's rules read and `/debug/history` serves.
//!
//! Storage is struct-of-arrays: one preallocated `f64` column per series
//! (NaN = unknown) and one column of timestamps, all allocated by
//! [`History::new`]. [`History::push`] writes in place and never allocates.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use super::defaults::{DEFAULT_HISTORY_ROWS, HISTORY_ROWS_RANGE, MAX_HISTORY_RESOURCES};

/// Milliseconds since the Unix epoch (0 for earlier times).
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// One of the user resources the history records, by registration order
/// (see [`History::resource_slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceSlot(u8);

impl ResourceSlot {
    /// Index from 0 to `MAX_HISTORY_RESOURCES` − 1.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

macro_rules! series {
    ($( $(#[doc = $doc:literal])* $variant:ident => $name:literal, $unit:literal; )*) => {
        /// A series of the history: one value a second.
        ///
        /// Built-in series have fixed, stable snake_case names (those of
        /// `GET /debug/history?series=`); the two series of a registered
        /// user resource are named `<resource>.utilization` and
        /// `<resource>.saturation`. Units follow docs/endpoints.md: `_bytes`
        /// integers, `_ms` float milliseconds, ratios 0..1.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Series {
            $( $(#[doc = $doc])* $variant, )*
            /// A user resource's utilization (`used / limit`), ratio.
            ResourceUtilization(ResourceSlot),
            /// A user resource's saturation (callers waiting), count.
            ResourceSaturation(ResourceSlot),
        }

        #[derive(Clone, Copy)]
        enum Builtin { $( $variant, )* }

        impl Series {
            /// Every built-in series, in column order.
            pub const BUILTIN: &'static [Series] = &[ $( Series::$variant, )* ];

            /// The stable name of a built-in series (`None` for a user
            /// resource's, whose name only the history knows).
            pub fn builtin_name(self) -> Option<&'static str> {
                match self {
                    $( Series::$variant => Some($name), )*
                    Series::ResourceUtilization(_) | Series::ResourceSaturation(_) => None,
                }
            }

            /// Unit of the values: `cores`, `ratio`, `bytes`, `ms` or `count`.
            pub fn unit(self) -> &'static str {
                match self {
                    $( Series::$variant => $unit, )*
                    Series::ResourceUtilization(_) => "ratio",
                    Series::ResourceSaturation(_) => "count",
                }
            }

            /// Column of the storage.
            fn column(self) -> usize {
                match self {
                    $( Series::$variant => Builtin::$variant as usize, )*
                    Series::ResourceUtilization(slot) => BUILTIN_COUNT + 2 * slot.index(),
                    Series::ResourceSaturation(slot) => BUILTIN_COUNT + 2 * slot.index() + 1,
                }
            }
        }
    };
}

series! {
    /// CPU time the process used per second, in cores (1.0 = one core busy).
    CpuCores => "cpu_cores", "cores";
    /// CPU the process may use: the cgroup quota, else the CPUs it may run
    /// on, in cores.
    CpuLimitCores => "cpu_limit_cores", "cores";
    /// Share of the second's CFS periods in which the cgroup was throttled.
    CpuThrottledRatio => "cpu_throttled_ratio", "ratio";
    /// Resident set size of the process.
    RssBytes => "rss_bytes", "bytes";
    /// Bytes in live jemalloc allocations.
    JemallocAllocatedBytes => "jemalloc_allocated_bytes", "bytes";
    /// Bytes in physically resident pages mapped by jemalloc.
    JemallocResidentBytes => "jemalloc_resident_bytes", "bytes";
    /// Memory charged against the limit: the cgroup's working set, else RSS.
    MemoryBytes => "memory_bytes", "bytes";
    /// The cgroup's memory limit, else the host's memory.
    MemoryLimitBytes => "memory_limit_bytes", "bytes";
    /// Processes the OOM killer killed in the cgroup, since it was created.
    OomKillsTotal => "oom_kills_total", "count";
    /// Open file descriptors.
    OpenFds => "open_fds", "count";
    /// Soft limit of open file descriptors.
    FdLimit => "fd_limit", "count";
    /// Threads of the process.
    Threads => "threads", "count";
    /// Most threads the process may have (pids cgroup, `threads-max`).
    ThreadLimit => "thread_limit", "count";
    /// Median executor lag of the second, milliseconds.
    LagP50Ms => "lag_p50_ms", "ms";
    /// 99th percentile of executor lag of the second, milliseconds.
    LagP99Ms => "lag_p99_ms", "ms";
    /// Longest executor lag of the second, milliseconds.
    LagMaxMs => "lag_max_ms", "ms";
    /// Worker threads of the runtime.
    Workers => "workers", "count";
    /// Mean over the workers of the share of the second each was busy.
    WorkerBusyMean => "worker_busy_mean", "ratio";
    /// Busy share of the least busy worker.
    WorkerBusyMin => "worker_busy_min", "ratio";
    /// Busy share of the busiest worker.
    WorkerBusyMax => "worker_busy_max", "ratio";
    /// Tasks in the runtime's global (injection) queue.
    GlobalQueueDepth => "global_queue_depth", "count";
    /// Tasks alive in the runtime.
    AliveTasks => "alive_tasks", "count";
    /// Stalls (a worker stuck in one poll) since the agent started.
    StallsTotal => "stalls_total", "count";
    /// Requests completed since start (RED, every route).
    RequestsTotal => "requests_total", "count";
    /// Of which errors (status ≥ 500 or no response).
    ErrorsTotal => "errors_total", "count";
    /// 99th percentile of the latency of the requests of the second, milliseconds.
    RequestP99Ms => "request_p99_ms", "ms";
    /// Requests in flight at the second (RED, every route).
    RequestsInFlight => "requests_in_flight", "count";
    /// Age of the oldest request in flight at the second, milliseconds.
    OldestInFlightMs => "oldest_in_flight_ms", "ms";
    /// CPU pressure: share of time some task waited for a CPU (PSI `some avg10`).
    PsiCpuSomeAvg10 => "psi_cpu_some_avg10", "ratio";
    /// Memory pressure: share of time some task waited for memory (PSI `some avg10`).
    PsiMemorySomeAvg10 => "psi_memory_some_avg10", "ratio";
    /// I/O pressure: share of time some task waited for I/O (PSI `some avg10`).
    PsiIoSomeAvg10 => "psi_io_some_avg10", "ratio";
    /// Memory the agent itself holds (its symbol cache and debug-info
    /// indexes, heap snapshots, captured profiles), estimated: the memory
    /// rules leave it out of the application's growth.
    AgentBytes => "agent_bytes", "bytes";
}

/// Built-in series.
const BUILTIN_COUNT: usize = Series::BUILTIN.len();

/// Columns of one row: built-in series, then two per user resource.
const COLUMNS: usize = BUILTIN_COUNT + 2 * MAX_HISTORY_RESOURCES;

/// Suffix of a user resource's utilization series.
const UTILIZATION_SUFFIX: &str = ".utilization";
/// Suffix of a user resource's saturation series.
const SATURATION_SUFFIX: &str = ".saturation";

/// One second of every signal, as the recorder gathers it. Every value
/// starts unknown; [`Row::set`] fills those that could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    timestamp_ms: u64,
    values: [f64; COLUMNS],
}

impl Row {
    /// A row for the second ending at `at`, every value unknown.
    pub fn new(at: SystemTime) -> Self {
        Row {
            timestamp_ms: unix_ms(at),
            values: [f64::NAN; COLUMNS],
        }
    }

    /// When the row was taken, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// Sets a value; a non-finite one means unknown.
    pub fn set(&mut self, series: Series, value: f64) {
        self.values[series.column()] = if value.is_finite() { value } else { f64::NAN };
    }

    /// Sets a value if there is one.
    pub fn set_opt(&mut self, series: Series, value: Option<f64>) {
        self.set(series, value.unwrap_or(f64::NAN));
    }

    /// [`set`](Row::set), by value: `Row::new(t).with(Series::CpuCores, 0.5)`.
    #[must_use]
    pub fn with(mut self, series: Series, value: f64) -> Self {
        self.set(series, value);
        self
    }

    /// A value, if known.
    pub fn get(&self, series: Series) -> Option<f64> {
        known(self.values[series.column()])
    }
}

fn known(value: f64) -> Option<f64> {
    (!value.is_nan()).then_some(value)
}

/// The last minutes of every signal, one row a second, in a ring of fixed
/// capacity (default `DEFAULT_HISTORY_ROWS`, 15 minutes).
///
/// Everything is allocated by [`new`](History::new): 8 bytes per series
/// per row, [`memory_bytes`](History::memory_bytes) in all — about 443 KiB
/// for 15 minutes. [`push`](History::push) overwrites the oldest row in
/// place.
pub struct History {
    capacity: usize,
    len: usize,
    /// Physical index the next row goes to.
    next: usize,
    timestamps_ms: Box<[u64]>,
    /// Column-major: series `c` is `values[c * capacity..(c + 1) * capacity]`.
    values: Box<[f64]>,
    /// Names of the registered user resources, by slot.
    resources: Vec<Box<str>>,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .field("oldest_ms", &self.oldest_ms())
            .field("newest_ms", &self.newest_ms())
            .field("resources", &self.resources)
            .finish()
    }
}

impl Default for History {
    fn default() -> Self {
        History::new(DEFAULT_HISTORY_ROWS)
    }
}

impl History {
    /// A history of `rows` seconds, clamped to 1 ..=
    /// [`HISTORY_ROWS_RANGE`]`.1`. (The agent's settings accept
    /// [`HISTORY_ROWS_RANGE`].)
    pub fn new(rows: usize) -> Self {
        let capacity = rows.clamp(1, HISTORY_ROWS_RANGE.1);
        History {
            capacity,
            len: 0,
            next: 0,
            timestamps_ms: vec![0; capacity].into_boxed_slice(),
            values: vec![f64::NAN; capacity * COLUMNS].into_boxed_slice(),
            resources: Vec::with_capacity(MAX_HISTORY_RESOURCES),
        }
    }

    /// Rows the ring holds when full.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows held now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the history occupies, its own struct included; constant after
    /// [`new`](History::new) but for the names of user resources.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + std::mem::size_of_val(&*self.timestamps_ms)
            + std::mem::size_of_val(&*self.values)
            + self.resources.capacity() * std::mem::size_of::<Box<str>>()
            + self.resources.iter().map(|name| name.len()).sum::<usize>()
    }

    /// Forgets every row (registered resources stay).
    pub fn clear(&mut self) {
        self.len = 0;
        self.next = 0;
    }

    /// Appends a row, overwriting the oldest when full. Never allocates.
    ///
    /// Rows must come in time order: a row with the newest row's timestamp
    /// replaces it, and an older one (the wall clock stepped back) clears
    /// the history first, since its time axis no longer holds.
    pub fn push(&mut self, row: &Row) {
        let slot = match self.newest_ms() {
            Some(newest) if row.timestamp_ms == newest => self.physical(self.len - 1),
            Some(newest) if row.timestamp_ms < newest => {
                self.clear();
                self.advance()
            }
            _ => self.advance(),
        };
        self.timestamps_ms[slot] = row.timestamp_ms;
        for (column, value) in row.values.iter().enumerate() {
            self.values[column * self.capacity + slot] = *value;
        }
    }

    /// Claims the physical slot of a new row.
    fn advance(&mut self) -> usize {
        let slot = self.next;
        self.next = (self.next + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
        slot
    }

    /// Physical index of the `logical`-th row, 0 being the oldest.
    fn physical(&self, logical: usize) -> usize {
        (self.next + self.capacity - self.len + logical) % self.capacity
    }

    fn timestamp(&self, logical: usize) -> u64 {
        self.timestamps_ms[self.physical(logical)]
    }

    fn value(&self, series: Series, logical: usize) -> f64 {
        self.values[series.column() * self.capacity + self.physical(logical)]
    }

    /// Timestamp of the oldest row, milliseconds since the Unix epoch.
    pub fn oldest_ms(&self) -> Option<u64> {
        (self.len > 0).then(|| self.timestamp(0))
    }

    /// Timestamp of the newest row, milliseconds since the Unix epoch.
    pub fn newest_ms(&self) -> Option<u64> {
        (self.len > 0).then(|| self.timestamp(self.len - 1))
    }

    /// Logical index of the first row with a timestamp above `ms`.
    fn first_after(&self, ms: u64) -> usize {
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let mid = low + (high - low) / 2;
            if self.timestamp(mid) <= ms {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    /// Logical index of the first row taken at or after `time`.
    fn first_at_or_after(&self, time: SystemTime) -> usize {
        self.first_after(unix_ms(time).saturating_sub(1))
    }

    /// The slot of the user resource `name`, registering it if there is
    /// room: `None` once `MAX_HISTORY_RESOURCES` names are taken.
    /// Registering allocates the name once; later calls do not allocate.
    pub fn resource_slot(&mut self, name: &str) -> Option<ResourceSlot> {
        if let Some(slot) = self.find_resource(name) {
            return Some(slot);
        }
        if self.resources.len() >= MAX_HISTORY_RESOURCES {
            return None;
        }
        self.resources.push(name.into());
        u8::try_from(self.resources.len() - 1)
            .ok()
            .map(ResourceSlot)
    }

    /// The slot of an already registered user resource.
    pub fn find_resource(&self, name: &str) -> Option<ResourceSlot> {
        self.resources
            .iter()
            .position(|n| &**n == name)
            .and_then(|i| u8::try_from(i).ok())
            .map(ResourceSlot)
    }

    /// Registered user resources, by slot.
    pub fn resources(&self) -> impl Iterator<Item = (ResourceSlot, &str)> + '_ {
        self.resources
            .iter()
            .enumerate()
            .filter_map(|(i, name)| Some((ResourceSlot(u8::try_from(i).ok()?), &**name)))
    }

    /// The name of a series (`GET /debug/history?series=`), or `None` for
    /// the slot of a resource that was never registered.
    pub fn series_name(&self, series: Series) -> Option<String> {
        if let Some(name) = series.builtin_name() {
            return Some(name.to_owned());
        }
        let (slot, suffix) = match series {
            Series::ResourceUtilization(slot) => (slot, UTILIZATION_SUFFIX),
            Series::ResourceSaturation(slot) => (slot, SATURATION_SUFFIX),
            _ => return None,
        };
        let name = self.resources.get(slot.index())?;
        Some(format!("{name}{suffix}"))
    }

    /// The series called `name`, if the history records it.
    pub fn series_named(&self, name: &str) -> Option<Series> {
        if let Some(series) = Series::BUILTIN
            .iter()
            .find(|s| s.builtin_name() == Some(name))
        {
            return Some(*series);
        }
        if let Some(resource) = name.strip_suffix(UTILIZATION_SUFFIX) {
            return self
                .find_resource(resource)
                .map(Series::ResourceUtilization);
        }
        if let Some(resource) = name.strip_suffix(SATURATION_SUFFIX) {
            return self.find_resource(resource).map(Series::ResourceSaturation);
        }
        None
    }

    /// Every series recorded: the built-in ones, then two per registered
    /// user resource.
    pub fn all_series(&self) -> Vec<Series> {
        let mut all = Series::BUILTIN.to_vec();
        for (slot, _) in self.resources() {
            all.push(Series::ResourceUtilization(slot));
            all.push(Series::ResourceSaturation(slot));
        }
        all
    }

    /// The rows taken after `from` and at or before `to`.
    pub fn window(&self, from: SystemTime, to: SystemTime) -> Window<'_> {
        let start = self.first_after(unix_ms(from));
        let end = self.first_after(unix_ms(to)).max(start);
        Window {
            history: self,
            start,
            end,
        }
    }

    /// The rows taken at or after `since`, oldest first.
    pub fn rows_since(&self, since: SystemTime) -> impl Iterator<Item = RowRef<'_>> + '_ {
        let start = self.first_at_or_after(since);
        (start..self.len).map(move |index| RowRef {
            history: self,
            index,
        })
    }

    /// The newest row.
    pub fn latest(&self) -> Option<RowRef<'_>> {
        self.len.checked_sub(1).map(|index| RowRef {
            history: self,
            index,
        })
    }

    /// The newest known value of `series` in a row taken at or before `at`.
    pub fn value_at(&self, series: Series, at: SystemTime) -> Option<f64> {
        let end = self.first_after(unix_ms(at));
        (0..end).rev().find_map(|i| known(self.value(series, i)))
    }

    /// The rows taken at or after `since` as columns: one array of
    /// timestamps and one per series asked for (unknown values are NaN,
    /// `null` in JSON). Slots of unregistered resources are left out.
    pub fn columns(&self, since: SystemTime, series: &[Series]) -> HistoryColumns {
        let start = self.first_at_or_after(since);
        let timestamps_ms = (start..self.len).map(|i| self.timestamp(i)).collect();
        let columns = series
            .iter()
            .filter_map(|&s| {
                Some(SeriesColumn {
                    name: self.series_name(s)?,
                    unit: s.unit(),
                    values: (start..self.len).map(|i| self.value(s, i)).collect(),
                })
            })
            .collect();
        HistoryColumns {
            timestamps_ms,
            columns,
        }
    }
}

/// One row of the [`History`], read in place.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    history: &'a History,
    index: usize,
}

impl RowRef<'_> {
    /// When the row was taken, milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.history.timestamp(self.index)
    }

    /// A value, if known.
    pub fn get(&self, series: Series) -> Option<f64> {
        known(self.history.value(series, self.index))
    }

    /// A copy of the row.
    pub fn to_row(self) -> Row {
        let mut row = Row::new(from_unix_ms(self.timestamp_ms()));
        let slot = self.history.physical(self.index);
        for (column, value) in row.values.iter_mut().enumerate() {
            *value = self.history.values[column * self.history.capacity + slot];
        }
        row
    }
}

/// Consecutive rows of the [`History`] (see [`History::window`]).
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    history: &'a History,
    start: usize,
    end: usize,
}

impl Window<'_> {
    /// Rows in the window.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the window holds no row.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The known values of `series`, oldest first.
    pub fn values(&self, series: Series) -> impl Iterator<Item = f64> + '_ {
        (self.start..self.end).filter_map(move |i| known(self.history.value(series, i)))
    }

    /// The known values of `series` with their timestamps (ms), oldest first.
    pub fn points(&self, series: Series) -> impl Iterator<Item = (u64, f64)> + '_ {
        (self.start..self.end).filter_map(move |i| {
            known(self.history.value(series, i)).map(|v| (self.history.timestamp(i), v))
        })
    }

    /// The known values of `series` minus those of `minus` where known
    /// (else unchanged), with their timestamps (ms), oldest first.
    pub fn points_minus(
        &self,
        series: Series,
        minus: Series,
    ) -> impl Iterator<Item = (u64, f64)> + '_ {
        (self.start..self.end).filter_map(move |i| {
            let value = known(self.history.value(series, i))?;
            let less = known(self.history.value(minus, i)).unwrap_or(0.0);
            Some((self.history.timestamp(i), (value - less).max(0.0)))
        })
    }

    /// `f(a, b)` of every row where both are known, oldest first.
    pub fn ratios(&self, part: Series, whole: Series) -> impl Iterator<Item = f64> + '_ {
        (self.start..self.end).filter_map(move |i| {
            let (a, b) = (
                known(self.history.value(part, i))?,
                known(self.history.value(whole, i))?,
            );
            (b > 0.0).then(|| a / b)
        })
    }

    /// The newest known value of `series`.
    pub fn last(&self, series: Series) -> Option<f64> {
        (self.start..self.end)
            .rev()
            .find_map(|i| known(self.history.value(series, i)))
    }

    /// Time from the first row to the last.
    pub fn span(&self) -> Duration {
        if self.is_empty() {
            return Duration::ZERO;
        }
        let first = self.history.timestamp(self.start);
        let last = self.history.timestamp(self.end - 1);
        Duration::from_millis(last.saturating_sub(first))
    }

    /// How much a counter grew in the window: its newest value minus the
    /// newest value before the window (or its first in the window).
    pub fn increase(&self, series: Series) -> Option<f64> {
        let last = self.last(series)?;
        let before = (0..self.start)
            .rev()
            .find_map(|i| known(self.history.value(series, i)))
            .or_else(|| self.values(series).next())?;
        Some((last - before).max(0.0))
    }
}

/// Columns of the history for `GET /debug/history`, serialized as
/// `{"timestamps_ms": [...], "series": {"cpu_cores": [...], ...}, "units": {...}}`
/// with `null` for unknown values.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HistoryColumns {
    /// When each row was taken, milliseconds since the Unix epoch.
    pub timestamps_ms: Vec<u64>,
    /// One column per series asked for, in the order asked.
    pub columns: Vec<SeriesColumn>,
}

/// One series of [`HistoryColumns`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SeriesColumn {
    /// The series' name.
    pub name: String,
    /// Its unit (see [`Series::unit`]).
    pub unit: &'static str,
    /// One value per timestamp; NaN where unknown.
    pub values: Vec<f64>,
}

/// Values with NaN written as `null`.
struct Nullable<'a>(&'a [f64]);

impl Serialize for Nullable<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|v| known(*v)))
    }
}

struct ByName<'a, T>(&'a [SeriesColumn], fn(&'a SeriesColumn) -> T);

impl<'a, T: Serialize> Serialize for ByName<'a, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for column in self.0 {
            map.serialize_entry(&column.name, &(self.1)(column))?;
        }
        map.end()
    }
}

impl Serialize for HistoryColumns {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("HistoryColumns", 3)?;
        s.serialize_field("timestamps_ms", &self.timestamps_ms)?;
        s.serialize_field(
            "series",
            &ByName(&self.columns, |c: &SeriesColumn| Nullable(&c.values)),
        )?;
        s.serialize_field("units", &ByName(&self.columns, |c: &SeriesColumn| c.unit))?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn series_names_are_unique_and_snake_case() {
        let mut names: Vec<&str> = Series::BUILTIN
            .iter()
            .map(|s| s.builtin_name().unwrap())
            .collect();
        assert!(names.iter().all(|n| n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        for (i, s) in Series::BUILTIN.iter().enumerate() {
            assert_eq!(s.column(), i);
        }
    }

    #[test]
    fn fifteen_minutes_fit_in_two_mebibytes() {
        let mut history = History::new(DEFAULT_HISTORY_ROWS);
        for i in 0..MAX_HISTORY_RESOURCES {
            history.resource_slot(&format!("resource_{i:02}")).unwrap();
        }
        let bytes = history.memory_bytes();
        assert!(bytes <= 2 << 20, "{bytes} bytes");
        // The figure docs/doctor.md quotes.
        assert!((455 << 10..460 << 10).contains(&bytes), "{bytes} bytes");
        assert_eq!(COLUMNS, 64);
    }

    #[test]
    fn push_never_reallocates() {
        let mut history = History::new(120);
        let slot = history.resource_slot("db_pool").unwrap();
        let (timestamps, values) = (history.timestamps_ms.as_ptr(), history.values.as_ptr());
        let bytes = history.memory_bytes();
        for s in 0..10_000 {
            let mut row = Row::new(t(s)).with(Series::CpuCores, s as f64);
            row.set(Series::ResourceUtilization(slot), 0.5);
            history.push(&row);
        }
        assert_eq!(history.len(), 120);
        assert_eq!(history.capacity(), 120);
        assert_eq!(history.memory_bytes(), bytes);
        assert_eq!(history.timestamps_ms.as_ptr(), timestamps);
        assert_eq!(history.values.as_ptr(), values);
        assert_eq!(history.oldest_ms(), Some(unix_ms(t(10_000 - 120))));
        assert_eq!(
            history.latest().unwrap().get(Series::CpuCores),
            Some(9999.0)
        );
    }

    #[test]
    fn windows_and_iteration_follow_time_across_the_wrap() {
        let mut history = History::new(60);
        for s in 0..150 {
            history.push(&Row::new(t(s)).with(Series::OpenFds, s as f64));
        }
        let since: Vec<f64> = history
            .rows_since(t(140))
            .map(|r| r.get(Series::OpenFds).unwrap())
            .collect();
        assert_eq!(since, (140..150).map(|v| v as f64).collect::<Vec<_>>());
        let window = history.window(t(100), t(110));
        assert_eq!(window.len(), 10);
        assert_eq!(window.values(Series::OpenFds).next(), Some(101.0));
        assert_eq!(window.last(Series::OpenFds), Some(110.0));
        assert_eq!(window.increase(Series::OpenFds), Some(10.0));
        assert_eq!(window.span(), Duration::from_secs(9));
        assert_eq!(history.window(t(0), t(10)).len(), 0, "evicted");
        assert_eq!(history.value_at(Series::OpenFds, t(120)), Some(120.0));
        assert_eq!(history.rows_since(t(0)).count(), 60);
        let copy = history.latest().unwrap().to_row();
        assert_eq!(copy.get(Series::OpenFds), Some(149.0));
        assert_eq!(copy.timestamp_ms(), unix_ms(t(149)));
    }

    #[test]
    fn clock_steps_back_restart_and_repeats_replace() {
        let mut history = History::new(60);
        for s in 0..10 {
            history.push(&Row::new(t(s)).with(Series::Threads, 1.0));
        }
        history.push(&Row::new(t(9)).with(Series::Threads, 2.0));
        assert_eq!(history.len(), 10);
        assert_eq!(history.latest().unwrap().get(Series::Threads), Some(2.0));
        history.push(&Row::new(t(3)).with(Series::Threads, 3.0));
        assert_eq!(history.len(), 1);
        assert_eq!(history.oldest_ms(), Some(unix_ms(t(3))));
    }

    #[test]
    fn columns_serialize_unknown_as_null() {
        let mut history = History::new(60);
        let pool = history.resource_slot("db_pool").unwrap();
        history.push(&Row::new(t(1)).with(Series::CpuCores, 0.25));
        history.push(
            &Row::new(t(2))
                .with(Series::LagP99Ms, 1.5)
                .with(Series::ResourceUtilization(pool), 0.7),
        );
        let columns = history.columns(
            t(0),
            &[
                Series::CpuCores,
                Series::LagP99Ms,
                Series::ResourceUtilization(pool),
            ],
        );
        let json = serde_json::to_value(&columns).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "timestamps_ms": [unix_ms(t(1)), unix_ms(t(2))],
                "series": {
                    "cpu_cores": [0.25, null],
                    "lag_p99_ms": [null, 1.5],
                    "db_pool.utilization": [null, 0.7],
                },
                "units": {"cpu_cores": "cores", "lag_p99_ms": "ms", "db_pool.utilization": "ratio"},
            })
        );
    }

    #[test]
    fn resource_slots_are_bounded_and_named() {
        let mut history = History::new(60);
        let first = history.resource_slot("db_pool").unwrap();
        assert_eq!(history.resource_slot("db_pool"), Some(first));
        for i in 1..MAX_HISTORY_RESOURCES {
            assert!(history.resource_slot(&format!("r{i}")).is_some());
        }
        assert_eq!(history.resource_slot("one_too_many"), None);
        assert_eq!(
            history.series_named("db_pool.saturation"),
            Some(Series::ResourceSaturation(first))
        );
        assert_eq!(history.series_named("rss_bytes"), Some(Series::RssBytes));
        assert_eq!(history.series_named("nope.saturation"), None);
        assert_eq!(
            history.all_series().len(),
            BUILTIN_COUNT + 2 * MAX_HISTORY_RESOURCES
        );
    }
}
