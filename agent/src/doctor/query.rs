//! Parsers of the history's query parameters (`since`, `series`) and of
//! its length setting.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::history::{History, Series};
use crate::config::{ENV_HISTORY, HISTORY_ROWS_RANGE};
use crate::Error;

/// How far in the future an absolute `since` may lie (clock skew between
/// the client and the service) before it is refused.
const FUTURE_TOLERANCE: Duration = Duration::from_secs(1);

/// Longest input the parsers look at; longer is refused unread.
const MAX_INPUT: usize = 4096;

/// Parses `since`: a time relative to `now` (`-90s`, `-5m`, `-1h`,
/// `-1h30m`) or an RFC 3339 time (`2024-05-01T12:00:00Z`,
/// `2024-05-01T14:00:00.250+02:00`). Times before the history's oldest row
/// are fine (everything is returned); times in the future are not.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// let now = SystemTime::now();
/// let since = stethoscope::doctor::parse_since("-5m", now)?;
/// assert_eq!(now.duration_since(since).unwrap(), Duration::from_secs(300));
/// assert!(stethoscope::doctor::parse_since("5m", now).is_err());
/// # Ok::<(), stethoscope::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidSince`] naming the problem and the accepted formats.
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, Error> {
    let invalid = |reason: &'static str| Error::InvalidSince {
        value: text.chars().take(100).collect(),
        reason,
    };
    let value = text.trim();
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if value.len() > MAX_INPUT {
        return Err(invalid("it is too long"));
    }
    if let Some(ago) = value.strip_prefix('-') {
        let ago = parse_duration(ago.trim())
            .ok_or_else(|| invalid("not a duration such as 90s, 5m or 1h30m after the minus"))?;
        return Ok(now.checked_sub(ago).unwrap_or(UNIX_EPOCH).max(UNIX_EPOCH));
    }
    if let Some(time) = parse_rfc3339(value) {
        if now
            .checked_add(FUTURE_TOLERANCE)
            .is_some_and(|limit| time > limit)
        {
            return Err(invalid("it lies in the future"));
        }
        return Ok(time);
    }
    let bare = value.strip_prefix('+').unwrap_or(value);
    if parse_duration(bare).is_some() {
        return Err(invalid(
            "a relative time needs a minus sign (-5m is the last five minutes)",
        ));
    }
    Err(invalid(
        "it is neither a relative time nor an RFC 3339 time",
    ))
}

/// A duration such as `90s`, `5m`, `1h30m` or `1h 30m`.
fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    humantime::parse_duration(text).ok()
}

/// Parses `series`: a comma-separated list of series names; empty means
/// every series the history records.
///
/// ```
/// use stethoscope::doctor::{parse_series, History, Series};
/// let history = History::new(60);
/// assert_eq!(parse_series("cpu_cores, lag_p99_ms", &history)?, [Series::CpuCores, Series::LagP99Ms]);
/// assert!(parse_series("cpu", &history).is_err());
/// # Ok::<(), stethoscope::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::UnknownSeries`] for the first unknown name, listing the valid ones.
pub fn parse_series(text: &str, history: &History) -> Result<Vec<Series>, Error> {
    let mut series = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(s) = history.series_named(name) else {
            let known: Vec<String> = history
                .all_series()
                .into_iter()
                .filter_map(|s| history.series_name(s))
                .collect();
            return Err(Error::UnknownSeries {
                name: name.chars().take(100).collect(),
                known: known.join(", "),
            });
        };
        if !series.contains(&s) {
            series.push(s);
        }
    }
    if series.is_empty() {
        return Ok(history.all_series());
    }
    Ok(series)
}

/// Parses the history length of [`ENV_HISTORY`] (`15m`, `900s`, `1h`) into
/// rows, one a second.
///
/// # Errors
///
/// [`Error::InvalidEnv`] unless it is a duration of whole seconds within
/// [`HISTORY_ROWS_RANGE`].
pub fn parse_history_length(text: &str) -> Result<usize, Error> {
    let invalid = || Error::InvalidEnv {
        var: ENV_HISTORY,
        value: text.chars().take(100).collect(),
        expected: "a duration from 1m to 1h, e.g. 15m",
    };
    let length = parse_duration(text.trim()).ok_or_else(invalid)?;
    let rows = usize::try_from(length.as_secs()).map_err(|_| invalid())?;
    if length.subsec_nanos() != 0 || !(HISTORY_ROWS_RANGE.0..=HISTORY_ROWS_RANGE.1).contains(&rows)
    {
        return Err(invalid());
    }
    Ok(rows)
}

/// Parses `YYYY-MM-DD(T| )HH:MM:SS[.fraction](Z|±HH:MM)`; times before 1970
/// become the epoch.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
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

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_714_564_800) // 2024-05-01T12:00:00Z
    }

    #[test]
    fn relative_times_count_back_from_now() {
        for (text, secs) in [
            ("-5m", 300),
            ("-90s", 90),
            ("-1h", 3600),
            (" -1h30m ", 5400),
            ("-1h 30m", 5400),
            ("-0s", 0),
        ] {
            let since = parse_since(text, now()).unwrap();
            assert_eq!(
                now().duration_since(since).unwrap().as_secs(),
                secs,
                "{text}"
            );
        }
        assert_eq!(parse_since("-100000000h", now()).unwrap(), UNIX_EPOCH);
    }

    #[test]
    fn rfc3339_times_with_offsets_and_fractions() {
        let cases = [
            ("2024-05-01T12:00:00Z", 1_714_564_800, 0),
            ("2024-05-01t11:59:59.250z", 1_714_564_799, 250_000_000),
            ("2024-05-01T14:00:00+02:00", 1_714_564_800, 0),
            ("2024-05-01T07:30:00-04:30", 1_714_564_800, 0),
            (
                "2024-05-01 12:00:00.123456789123Z",
                1_714_564_800,
                123_456_789,
            ),
            ("2024-02-29T00:00:00Z", 1_709_164_800, 0),
            ("1969-12-31T23:59:59Z", 0, 0),
        ];
        for (text, secs, nanos) in cases {
            assert_eq!(
                parse_since(text, now()).unwrap(),
                UNIX_EPOCH + Duration::new(secs, nanos),
                "{text}"
            );
        }
    }

    #[test]
    fn junk_and_future_times_are_refused_with_the_formats() {
        for (text, reason) in [
            ("", "empty"),
            ("5m", "minus sign"),
            ("+5m", "minus sign"),
            ("-5", "not a duration"),
            ("-", "not a duration"),
            ("--5m", "not a duration"),
            ("-5 parsecs", "not a duration"),
            ("2024-05-01T12:00:02Z", "future"),
            ("2999-01-01T00:00:00Z", "future"),
            ("2024-02-30T00:00:00Z", "neither"),
            ("2023-02-29T00:00:00Z", "neither"),
            ("2024-05-01T24:00:00Z", "neither"),
            ("2024-05-01T12:00:00", "neither"),
            ("2024-05-01T12:00:00+2:00", "neither"),
            ("2024-05-01T12:00:00.Z", "neither"),
            ("2024-05-01T12:00:00+02:00junk", "neither"),
            ("yesterday", "neither"),
            ("1714564800", "neither"),
        ] {
            let error = parse_since(text, now()).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(reason), "{text}: {message}");
            assert!(
                message.contains("-5m") && message.contains("RFC 3339"),
                "{message}"
            );
        }
    }

    #[test]
    fn series_lists_resolve_dedupe_and_default_to_everything() {
        let mut history = History::new(60);
        history.resource_slot("db_pool").unwrap();
        let series = parse_series(
            "rss_bytes,lag_p99_ms, rss_bytes,db_pool.saturation",
            &history,
        )
        .unwrap();
        assert_eq!(series.len(), 3);
        assert_eq!(parse_series("", &history).unwrap(), history.all_series());
        assert_eq!(parse_series(" , ", &history).unwrap(), history.all_series());
        let error = parse_series("rss_bytes,rss", &history)
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"rss\""), "{error}");
        assert!(
            error.contains("rss_bytes") && error.contains("db_pool.utilization"),
            "{error}"
        );
    }

    #[test]
    fn history_length_is_a_duration_in_range() {
        assert_eq!(parse_history_length("15m").unwrap(), 900);
        assert_eq!(parse_history_length(" 1h ").unwrap(), 3600);
        assert_eq!(parse_history_length("60s").unwrap(), 60);
        for bad in ["", "59s", "2h", "15", "1.5s", "-15m", "lots"] {
            assert!(parse_history_length(bad).is_err(), "{bad}");
        }
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        const SINCE: &[&str] = &[
            "-",
            "+",
            "m",
            "s",
            "h",
            "ms",
            "min",
            "d",
            "T",
            "Z",
            "z",
            ":",
            ".",
            "2024-",
            "05-",
            "01T",
            "12:00:00",
            "+02:00",
            " ",
            "99999999999999999999",
            "0",
        ];
        const SERIES: &[&str] = &[
            "cpu_cores",
            "rss_bytes",
            ",",
            " ",
            "db_pool",
            ".utilization",
            ".saturation",
            "lag_p99_ms",
            "%",
            "_",
        ];

        proptest! {
            #[test]
            fn since_never_panics_nor_points_to_the_future(value in input_of(SINCE)) {
                bounded("since", &value, || {
                    if let Ok(since) = parse_since(&value, now()) {
                        assert!(since <= now() + FUTURE_TOLERANCE, "{value:?}");
                        assert!(since >= UNIX_EPOCH, "{value:?}");
                    }
                });
            }

            #[test]
            fn series_never_panic(value in input_of(SERIES)) {
                let mut history = History::new(60);
                history.resource_slot("db_pool");
                bounded("series", &value, || {
                    if let Ok(series) = parse_series(&value, &history) {
                        assert!(!series.is_empty());
                    }
                });
                bounded("history length", &value, || {
                    if let Ok(rows) = parse_history_length(&value) {
                        assert!((HISTORY_ROWS_RANGE.0..=HISTORY_ROWS_RANGE.1).contains(&rows));
                    }
                });
            }
        }
    }
}
