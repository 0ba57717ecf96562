//! jemalloc's statistics and whether heap profiling samples, for
//! `/metrics`, when jemalloc is the global allocator (nothing otherwise).

use super::HeapProfiler;
use crate::metrics::{Collect, Desc, MetricWriter};

impl Collect for HeapProfiler {
    fn collect(&self, out: &mut MetricWriter) {
        let Ok(stats) = self.stats() else {
            return;
        };
        for (name, help, value) in [
            (
                "stethoscope_jemalloc_allocated_bytes",
                "Bytes in live allocations (jemalloc stats.allocated).",
                stats.allocated_bytes,
            ),
            (
                "stethoscope_jemalloc_active_bytes",
                "Bytes in active pages, allocations rounded to size classes (stats.active).",
                stats.active_bytes,
            ),
            (
                "stethoscope_jemalloc_resident_bytes",
                "Bytes in physically resident pages mapped by jemalloc (stats.resident).",
                stats.resident_bytes,
            ),
            (
                "stethoscope_jemalloc_mapped_bytes",
                "Bytes in extents mapped by jemalloc (stats.mapped).",
                stats.mapped_bytes,
            ),
            (
                "stethoscope_jemalloc_retained_bytes",
                "Bytes retained as virtual memory for reuse (stats.retained).",
                stats.retained_bytes,
            ),
            (
                "stethoscope_jemalloc_metadata_bytes",
                "Bytes of jemalloc's own metadata (stats.metadata).",
                stats.metadata_bytes,
            ),
        ] {
            out.family(Desc::gauge(name, Some("bytes"), help))
                .count(&[], value);
        }
        if let Ok(state) = self.state() {
            out.family(Desc::gauge(
                "stethoscope_heap_profiling_active",
                None,
                "1 while jemalloc samples allocations for heap profiles (prof.active), else 0.",
            ))
            .count(&[], u64::from(state.active));
            out.family(Desc::gauge(
                "stethoscope_heap_profiling_sample_interval_bytes",
                Some("bytes"),
                "Average bytes allocated between two heap-profile samples.",
            ))
            .count(&[], state.sample_interval_bytes);
        }
        out.family(Desc::gauge(
            "stethoscope_heap_snapshots",
            None,
            "Heap snapshots the agent keeps.",
        ))
        .count(&[], self.snapshots().len() as u64);
    }
}
