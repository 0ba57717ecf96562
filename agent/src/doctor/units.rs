//! Numbers in words: milliseconds, bytes, percentages and durations as a
//! person reads them in the doctor's text.

use std::time::Duration;

/// `0.42 ms`, `14.2 ms`, `820 ms`, `1.20 s`.
pub(crate) fn ms(value: f64) -> String {
    match value {
        v if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        v if v >= 100.0 => format!("{v:.0} ms"),
        v if v >= 10.0 => format!("{v:.1} ms"),
        v => format!("{v:.2} ms"),
    }
}

/// [`ms`] of a duration.
pub(crate) fn duration_ms(d: Duration) -> String {
    ms(d.as_secs_f64() * 1e3)
}

/// `512 B`, `12.0 KiB`, `118 MiB`, `1.86 GiB`.
pub(crate) fn bytes(value: f64) -> String {
    const KIB: f64 = 1024.0;
    let (scaled, unit) = match value.abs() {
        v if v >= KIB * KIB * KIB => (value / (KIB * KIB * KIB), "GiB"),
        v if v >= KIB * KIB => (value / (KIB * KIB), "MiB"),
        v if v >= KIB => (value / KIB, "KiB"),
        _ => return format!("{value:.0} B"),
    };
    if scaled.abs() >= 100.0 {
        format!("{scaled:.0} {unit}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1} {unit}")
    } else {
        format!("{scaled:.2} {unit}")
    }
}

/// A ratio as a percentage: `93 %`, `3.2 %`, `0.40 %`.
pub(crate) fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if p.abs() >= 10.0 {
        format!("{p:.0} %")
    } else if p.abs() >= 1.0 {
        format!("{p:.1} %")
    } else {
        format!("{p:.2} %")
    }
}

/// A span of time in words: `45 s`, `12 min`, `2 h 10 min`, `3 d 4 h`.
pub(crate) fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=5999 => format!("{} min", (s + 30) / 60),
        6000..=172_799 => {
            let m = (s + 30) / 60;
            format!("{} h {} min", m / 60, m % 60)
        }
        _ => {
            let h = (s + 1800) / 3600;
            format!("{} d {} h", h / 24, h % 24)
        }
    }
}

/// Seconds (a float) as a [`span`].
pub(crate) fn span_s(seconds: f64) -> String {
    span(Duration::from_secs_f64(seconds.clamp(0.0, 1e12)))
}

/// A count: `1234`, `1.5`.
pub(crate) fn count(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Cores: `1.92`.
pub(crate) fn cores(value: f64) -> String {
    format!("{value:.2}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(ms(0.42), "0.42 ms");
        assert_eq!(ms(14.24), "14.2 ms");
        assert_eq!(ms(820.4), "820 ms");
        assert_eq!(ms(1200.0), "1.20 s");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(118.0 * 1024.0 * 1024.0), "118 MiB");
        assert_eq!(bytes(12.0 * 1024.0 * 1024.0), "12.0 MiB");
        assert_eq!(bytes(2.0 * 1024.0 * 1024.0 * 1024.0), "2.00 GiB");
        assert_eq!(percent(0.93), "93 %");
        assert_eq!(percent(0.032), "3.2 %");
        assert_eq!(percent(0.004), "0.40 %");
        assert_eq!(span(Duration::from_secs(45)), "45 s");
        assert_eq!(span(Duration::from_secs(600)), "10 min");
        assert_eq!(span(Duration::from_secs(7800)), "2 h 10 min");
        assert_eq!(span(Duration::from_secs(3 * 86400 + 4 * 3600)), "3 d 4 h");
        assert_eq!(span_s(f64::INFINITY), span(Duration::from_secs_f64(1e12)));
        assert_eq!(count(3.0), "3");
    }
}
