//! Numbers and times as text, in one place: durations, bytes, percentages
//! and counts as a person reads them in the text reports, and RFC 3339
//! times written (UTC, milliseconds) and read (any offset). A leaf: every
//! report uses it, it uses nothing of the crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// A duration in the unit that keeps three significant digits: `850µs`,
/// `4.20ms`, `37.5ms`, `1.25s`, `3.5m`, `2.0h` (tables and subtitles).
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1e-3 {
        format!("{:.0}µs", secs * 1e6)
    } else if secs < 1e-2 {
        format!("{:.2}ms", secs * 1e3)
    } else if secs < 1.0 {
        format!("{:.1}ms", secs * 1e3)
    } else if secs < 60.0 {
        format!("{secs:.2}s")
    } else if secs < 3600.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}

/// The latest time RFC 3339 with a four-digit year can write.
const LATEST_FORMATTABLE: Duration = Duration::from_secs(253_402_300_799);

/// `time` in RFC 3339 with milliseconds, UTC; clamped to 1970 ..= 9999
/// (outside of which the formatter would panic).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let time = time.clamp(UNIX_EPOCH, UNIX_EPOCH + LATEST_FORMATTABLE);
    humantime::format_rfc3339_millis(time).to_string()
}

/// A duration such as `90s`, `5m`, `1h30m` or `1h 30m`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    humantime::parse_duration(text).ok()
}

/// Parses `YYYY-MM-DD(T| )HH:MM:SS[.fraction](Z|±HH:MM)`; times before 1970
/// become the epoch.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !bytes.is_ascii() {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| bytes[i] != c) || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos: u32 = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, b) in fraction.bytes().take(digits.min(9)).enumerate() {
            nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let offset = rest.get(1..)?;
            if offset.len() != 5 || offset.as_bytes()[2] != b':' {
                return None;
            }
            let hours = offset.get(0..2)?;
            let minutes = offset.get(3..5)?;
            if !hours
                .bytes()
                .chain(minutes.bytes())
                .all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let (hours, minutes): (i64, i64) = (hours.parse().ok()?, minutes.parse().ok()?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset_seconds;
    let Ok(seconds) = u64::try_from(seconds) else {
        return Some(UNIX_EPOCH);
    };
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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
    #[test]
    fn human_units_keep_three_digits() {
        assert_eq!(human(Duration::from_nanos(850_400)), "850µs");
        assert_eq!(human(Duration::from_micros(2_346)), "2.35ms");
        assert_eq!(human(Duration::from_micros(81_240)), "81.2ms");
        assert_eq!(human(Duration::from_millis(1_500)), "1.50s");
        assert_eq!(human(Duration::from_secs(900)), "15.0m");
        assert_eq!(human(Duration::from_secs(7200)), "2.0h");
    }

    #[test]
    fn times_are_rfc3339_even_out_of_range() {
        use std::time::UNIX_EPOCH;
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }
}
