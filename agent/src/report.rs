//! How the agent's reports serialize, in one place: durations as float
//! milliseconds (the `_ms` fields of DESIGN §5.1), times as RFC 3339 UTC
//! with milliseconds. Every capability's report type derives `Serialize`
//! with these, so its JSON shape is its type.

use std::time::{Duration, SystemTime};

use serde::Serializer;

/// Milliseconds of a duration, as a float.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Serializes a `Duration` as float milliseconds.
pub(crate) fn ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(millis(*d))
}

/// Serializes an `Option<Duration>` as float milliseconds or `null`.
pub(crate) fn opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(millis(*d)),
        None => s.serialize_none(),
    }
}

/// Serializes a `Duration` as float seconds.
pub(crate) fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A duration in the unit that keeps three significant digits: `850µs`,
/// `4.20ms`, `37.5ms`, `1.25s`, `3.5m`, `2.0h`.
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

/// A time as RFC 3339 UTC with millisecond precision.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Serializes a `SystemTime` as RFC 3339.
pub(crate) fn time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// Serializes an optional `SystemTime` as RFC 3339 or `null`.
pub(crate) fn optional_time<S: Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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
    fn durations_and_times_have_their_units() {
        #[derive(serde::Serialize)]
        struct Sample {
            #[serde(serialize_with = "ms")]
            took_ms: Duration,
            #[serde(serialize_with = "opt_ms")]
            waited_ms: Option<Duration>,
            #[serde(serialize_with = "time")]
            at: SystemTime,
        }
        let json = serde_json::to_value(Sample {
            took_ms: Duration::from_micros(1500),
            waited_ms: None,
            at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        })
        .unwrap();
        assert_eq!(json["took_ms"], 1.5);
        assert!(json["waited_ms"].is_null());
        assert_eq!(json["at"], "2023-11-14T22:13:20.000Z");
    }
}
