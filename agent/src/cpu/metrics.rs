//! The CPU sampler's own counters and the continuous profiler's ring, for
//! `/metrics`.

use super::CpuProfiler;
use crate::metrics::{Collect, Desc, MetricWriter};

impl Collect for CpuProfiler {
    fn collect(&self, out: &mut MetricWriter) {
        let status = self.status();
        out.family(Desc::counter(
            "stethoscope_cpu_profiler_sessions",
            None,
            "CPU sampler sessions started (a session spans overlapping profile requests).",
        ))
        .count(&[], status.sessions_started);
        out.family(Desc::counter(
            "stethoscope_cpu_profiler_samples",
            None,
            "Stack samples the CPU sampler recorded.",
        ))
        .count(&[], status.samples_recorded);
        out.family(Desc::counter(
            "stethoscope_cpu_profiler_dropped_samples",
            None,
            "Stack samples lost because the ring was full or every unwinder was busy.",
        ))
        .count(&[], status.samples_dropped);
        out.family(Desc::counter(
            "stethoscope_cpu_profiler_handler_seconds",
            Some("seconds"),
            "Time spent inside the SIGPROF handler: the sampler's direct cost to the threads it interrupts.",
        ))
        .value(&[], status.handler_time.as_secs_f64());
        out.family(Desc::gauge(
            "stethoscope_cpu_profiler_active_requests",
            None,
            "Profile requests waiting for the sampler now.",
        ))
        .count(&[], status.subscribers as u64);
        out.family(Desc::gauge(
            "stethoscope_cpu_profiler_memory_bytes",
            Some("bytes"),
            "Memory held by the running sampler session (0 when idle).",
        ))
        .count(&[], status.footprint_bytes as u64);
        if let Some(ring) = self.continuous_status() {
            out.family(Desc::gauge(
                "stethoscope_continuous_profile_memory_bytes",
                Some("bytes"),
                "Memory held by the continuous profiler's ring of segments (and its pins), estimated.",
            ))
            .count(&[], ring.memory_bytes as u64);
            out.family(Desc::gauge(
                "stethoscope_continuous_profile_history_seconds",
                Some("seconds"),
                "History the continuous profiler's ring holds.",
            ))
            .value(&[], ring.history_ms as f64 / 1000.0);
            out.family(Desc::gauge(
                "stethoscope_continuous_profile_hz",
                None,
                "The continuous profiler's sampling rate.",
            ))
            .count(&[], u64::from(ring.hz));
        }
    }
}
