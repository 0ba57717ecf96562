//! Prometheus / OpenMetrics exposition of everything the agent measures.
//!
//! Each capability contributes metric families through a small internal
//! collector trait; the [`MetricsRegistry`] of an agent holds the
//! collectors of the capabilities it runs and writes one exposition per
//! scrape. No global recorder is installed, so the host's own metrics
//! libraries are unaffected.
//!
//! The exposition is written by a small writer of our own rather than
//! `prometheus-client`, which writes OpenMetrics only: scrapers that do
//! not ask for OpenMetrics must get the text format 0.0.4, and one writer
//! for both keeps names, units and escaping in one place, without a second
//! registry model beside the agent's own state.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stethoscope::Error> {
//! use stethoscope::metrics::ExpositionFormat;
//!
//! let agent = stethoscope::Agent::builder().listen("127.0.0.1:0").start()?;
//! let text = agent.metrics().encode(ExpositionFormat::Prometheus);
//! assert!(text.contains("process_cpu_seconds_total"));
//! # agent.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod collectors;
mod encode;

use std::sync::Arc;

pub(crate) use collectors::{HeapCollector, SamplerCollector};
pub use encode::ExpositionFormat;
pub(crate) use encode::{Desc, MetricWriter};

/// Something that writes metric families at scrape time. Implemented by
/// each capability's handle; a new capability adds its collector in
/// [`MetricsRegistry::of`]. Collectors must be quick (they run on the
/// agent's thread for every scrape) and must not write a family another
/// collector writes.
pub(crate) trait Collect: Send + Sync + std::fmt::Debug {
    fn collect(&self, out: &mut MetricWriter);
}

/// The collectors of one agent; [`encode`](Self::encode) writes the
/// exposition `/metrics` serves. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct MetricsRegistry {
    collectors: Arc<Vec<Arc<dyn Collect>>>,
}

impl MetricsRegistry {
    /// The collectors of every capability of an agent.
    pub(crate) fn of(caps: &crate::agent::Capabilities) -> Self {
        #[allow(unused_mut)] // the capabilities pushed depend on features
        let mut collectors: Vec<Arc<dyn Collect>> = vec![
            Arc::new(SamplerCollector(caps.cpu.clone())),
            Arc::new(HeapCollector(caps.heap.clone())),
        ];
        #[cfg(feature = "resources")]
        collectors.push(Arc::new(caps.resources.clone()));
        #[cfg(feature = "red")]
        collectors.push(Arc::new(caps.red.clone()));
        #[cfg(feature = "runtime")]
        collectors.push(Arc::new(caps.runtime.clone()));
        #[cfg(feature = "spans")]
        if let Some(spans) = &caps.spans {
            collectors.push(Arc::new(spans.clone()));
        }
        #[cfg(feature = "doctor")]
        collectors.push(Arc::new(caps.doctor.clone()));
        #[cfg(feature = "push")]
        collectors.extend(caps.push.clone().map(|p| Arc::new(p) as Arc<dyn Collect>));
        MetricsRegistry {
            collectors: Arc::new(collectors),
        }
    }

    /// The exposition of every registered collector in `format`.
    pub fn encode(&self, format: ExpositionFormat) -> String {
        let mut writer = MetricWriter::new(format);
        for collector in self.collectors.iter() {
            collector.collect(&mut writer);
        }
        writer.finish()
    }
}
