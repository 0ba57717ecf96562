//! The pusher's families in `/metrics`.

#[cfg(feature = "metrics")]
impl crate::metrics::Collect for super::Pusher {
    fn collect(&self, out: &mut crate::metrics::MetricWriter) {
        use crate::metrics::Desc;
        let status = self.status();
        out.family(Desc::counter(
            "stethoscope_push_sent",
            None,
            "Profiles delivered to the push server.",
        ))
        .count(&[], status.sent);
        out.family(Desc::counter(
            "stethoscope_push_sent_bytes",
            Some("bytes"),
            "Bytes of the push requests that delivered them.",
        ))
        .count(&[], status.sent_bytes);
        let mut dropped = out.family(Desc::counter(
            "stethoscope_push_dropped",
            None,
            "Profiles dropped: queue_full (the server slow or down, the oldest went), rejected (refused by the server, or not encodable), shutdown.",
        ));
        for (reason, count) in &status.dropped_by_reason {
            dropped.count(&[("reason", reason)], *count);
        }
        let mut errors = out.family(Desc::counter(
            "stethoscope_push_errors",
            None,
            "Failed push attempts by reason: connect, tls, timeout, io, server (5xx), throttled (429), unauthorized (401/403), rejected (other 4xx), encode.",
        ));
        for (reason, count) in &status.errors_by_reason {
            errors.count(&[("reason", reason)], *count);
        }
        out.family(Desc::gauge(
            "stethoscope_push_queue_profiles",
            None,
            "Profiles waiting for delivery.",
        ))
        .count(&[], status.queued);
        out.family(Desc::gauge(
            "stethoscope_push_queue_bytes",
            Some("bytes"),
            "Memory the waiting profiles hold, estimated.",
        ))
        .count(&[], status.queued_bytes);
        if let Some(at) = status.last_success {
            let seconds = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            out.family(Desc::gauge(
                "stethoscope_push_last_success_timestamp_seconds",
                Some("seconds"),
                "When a profile was last delivered, in seconds since the Unix epoch.",
            ))
            .value(&[], seconds);
        }
    }
}
