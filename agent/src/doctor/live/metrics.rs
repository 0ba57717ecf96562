//! The doctor's status, open findings and transitions for `/metrics`.

use super::Doctor;
use crate::metrics::{Collect, Desc, MetricWriter};

impl Collect for Doctor {
    fn collect(&self, out: &mut MetricWriter) {
        let report = self.diagnose();
        let mut family = out.family(Desc::gauge(
            "stethoscope_doctor_status",
            None,
            "The doctor's verdict: 0 healthy, 1 warning, 2 critical (/debug/doctor).",
        ));
        family.value(&[], f64::from(self.status_level()));
        let mut family = out.family(Desc::gauge(
            "stethoscope_doctor_finding",
            None,
            "1 for each open finding of the doctor, by rule, severity and resource.",
        ));
        for finding in &report.findings {
            family.value(
                &[
                    ("rule", finding.rule.id()),
                    ("severity", finding.severity.as_str()),
                    ("resource", finding.resource.as_str()),
                ],
                1.0,
            );
        }
        let mut family = out.family(Desc::counter(
            "stethoscope_doctor_transitions",
            None,
            "Findings the doctor opened and closed since start, by rule.",
        ));
        for (rule, opened, closed) in self.transitions() {
            family.count(&[("rule", rule.id()), ("change", "opened")], opened);
            family.count(&[("rule", rule.id()), ("change", "closed")], closed);
        }
    }
}
