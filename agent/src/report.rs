//! How the agent's reports serialize, in one place: durations as float
//! milliseconds (the `_ms` fields of docs/endpoints.md), times as RFC 3339
//! UTC with milliseconds ([`crate::units::rfc3339`]). Every capability's report type derives `Serialize`
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

/// Serializes a `SystemTime` as RFC 3339.
pub(crate) fn time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::units::rfc3339(*t))
}

/// Serializes an optional `SystemTime` as RFC 3339 or `null`.
pub(crate) fn optional_time<S: Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::units::rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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
