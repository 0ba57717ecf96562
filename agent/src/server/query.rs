//! One way to read a query string, for every endpoint.
//!
//! The rule, the same everywhere: pairs are percent-decoded; a key given
//! several times counts with its **first non-empty** value (as Go's
//! `Request.FormValue` takes the first), so a script that appends a
//! parameter cannot silently override one a person typed; an empty value
//! counts as absent; unknown keys are ignored, as Go's handlers do, so
//! scrapers that add their own keep working. Values are trimmed. A value
//! out of range or unknown is a 400 whose hint lists what is valid.

use std::convert::Infallible;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::{clip, ApiError};
use crate::profile::{Format, Trim, View};
use crate::Error;

/// Longest `focus=` accepted: longer than any function name worth typing.
const MAX_FOCUS_BYTES: usize = 512;

/// The decoded query of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Query::parse(parts.uri.query()))
    }
}

/// How a report endpoint answers: its JSON shape or its text rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportView {
    /// `application/json`, the report type's `Serialize`.
    Json,
    /// `text/plain`, the report type's `Display`.
    Text,
}

impl Query {
    /// Parses a raw query string (without the `?`).
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        Query {
            pairs: form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.trim().to_owned()))
                .collect(),
        }
    }

    /// The value of `key`: its first non-empty occurrence.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// `format=json|text` (`txt` too) of a report endpoint; JSON when
    /// absent.
    pub(crate) fn report_view(&self) -> Result<ReportView, ApiError> {
        self.choice(
            "format",
            ReportView::Json,
            &[
                ("json", ReportView::Json),
                ("text", ReportView::Text),
                ("txt", ReportView::Text),
            ],
        )
    }

    /// `trim=plumbing|none` and `focus=<text>` of a profile's human views.
    pub(crate) fn view(&self) -> Result<View, ApiError> {
        let trim = match self.get("trim") {
            None => Trim::default(),
            Some(value) => Trim::parse(value).ok_or_else(|| {
                ApiError::bad_request(
                    format!("unknown trim {:?}", clip(value)),
                    "trim is plumbing (the default: runtime and framework frames folded into \
                     markers) or none (every frame)",
                )
            })?,
        };
        let mut view = View::default().trim(trim);
        if let Some(focus) = self.get("focus") {
            if focus.len() > MAX_FOCUS_BYTES {
                return Err(ApiError::bad_request(
                    format!("focus is {} bytes long", focus.len()),
                    format!("focus is part of a function name, at most {MAX_FOCUS_BYTES} bytes"),
                ));
            }
            view = view.focus(focus);
        }
        Ok(view)
    }

    /// `key` looked up in `choices` (a name and its value); `default`
    /// when absent.
    pub(crate) fn choice<T: Copy>(
        &self,
        key: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ApiError> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, choice)| *choice)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
                ApiError::bad_request(
                    format!("unknown {key} {:?}", clip(value)),
                    format!("{key} is one of {}", names.join(", ")),
                )
            })
    }

    /// `key` as a whole number within `range`; `default` when absent.
    pub(crate) fn number<T>(
        &self,
        key: &str,
        default: T,
        range: RangeInclusive<T>,
    ) -> Result<T, ApiError>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        match value.parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                format!("{key}={} is out of range", clip(value)),
                format!(
                    "{key} is a whole number from {} to {} (default {default})",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    /// The report format (`format=pprof|svg|folded|text|json`).
    pub(crate) fn format(&self, default: Format) -> Result<Format, ApiError> {
        match self.get("format") {
            None => Ok(default),
            Some(value) => Format::parse(value).ok_or_else(|| {
                ApiError::bad_request(
                    format!("unknown format {:?}", clip(value)),
                    "format is one of pprof, svg, folded, text, json",
                )
            }),
        }
    }

    /// `key` as a name (a label key, for instance): at most `max_bytes`,
    /// no control characters; `None` when absent.
    pub(crate) fn name(&self, key: &str, max_bytes: usize) -> Result<Option<&str>, ApiError> {
        match self.get(key) {
            Some(value) if value.len() > max_bytes || value.chars().any(char::is_control) => {
                Err(ApiError::bad_request(
                    format!("{key}={} is not a usable name", clip(value)),
                    format!("{key} is a label key of at most {max_bytes} bytes, e.g. {key}=route"),
                ))
            }
            value => Ok(value),
        }
    }

    /// `key` as a boolean (`true`/`false`, `1`/`0`, `yes`/`no`).
    pub(crate) fn flag(&self, key: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some("1" | "true" | "yes") => Ok(true),
            Some("0" | "false" | "no") => Ok(false),
            Some(other) => Err(ApiError::bad_request(
                format!("{key}={} is not a boolean", clip(other)),
                format!("{key} is true or false (default {default})"),
            )),
        }
    }
}

// ---- Times: `since`, `start`, `end` of look-backs and the history ----

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
/// # Errors
///
/// [`Error::InvalidSince`] naming the problem and the accepted formats.
pub(crate) fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, Error> {
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
        let ago = crate::units::parse_duration(ago.trim())
            .ok_or_else(|| invalid("not a duration such as 90s, 5m or 1h30m after the minus"))?;
        return Ok(now.checked_sub(ago).unwrap_or(UNIX_EPOCH).max(UNIX_EPOCH));
    }
    if let Some(time) = crate::units::parse_rfc3339(value) {
        if now
            .checked_add(FUTURE_TOLERANCE)
            .is_some_and(|limit| time > limit)
        {
            return Err(invalid("it lies in the future"));
        }
        return Ok(time);
    }
    let bare = value.strip_prefix('+').unwrap_or(value);
    if crate::units::parse_duration(bare).is_some() {
        return Err(invalid(
            "a relative time needs a minus sign (-5m is the last five minutes)",
        ));
    }
    Err(invalid(
        "it is neither a relative time nor an RFC 3339 time",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bounded, input_of};
    use proptest::prelude::*;

    #[test]
    fn the_first_non_empty_value_counts() {
        let q = Query::parse(Some("a=&a=1&a=2&b=%20x%20&c"));
        assert_eq!(q.get("a"), Some("1"));
        assert_eq!(q.get("b"), Some("x"));
        assert_eq!(q.get("c"), None);
        assert_eq!(q.get("d"), None);
    }

    #[test]
    fn numbers_choices_and_flags_are_checked() {
        let q = Query::parse(Some("n=7&m=99&f=svg&g=gif&t=yes&u=maybe"));
        assert_eq!(q.number("n", 1u64, 1..=10).unwrap(), 7);
        assert!(q.number("m", 1u64, 1..=10).is_err());
        assert_eq!(q.number("absent", 3u64, 1..=10).unwrap(), 3);
        let choices = [("svg", 1), ("text", 2)];
        assert_eq!(q.choice("f", 0, &choices).unwrap(), 1);
        let Err(ApiError::BadRequest { hint, .. }) = q.choice("g", 0, &choices) else {
            panic!("an unknown choice is a 400");
        };
        assert!(hint.contains("svg, text"), "{hint}");
        assert!(q.flag("t", false).unwrap());
        assert!(q.flag("u", false).is_err());
        assert_eq!(q.name("f", 8).unwrap(), Some("svg"));
        assert_eq!(q.name("absent", 8).unwrap(), None);
        assert!(q.name("f", 2).is_err());
        assert!(Query::parse(Some("k=a%0Ab")).name("k", 8).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_queries_never_panic(query in input_of(&["n", "=", "&", "%", "%ff", "7", "-1", "svg", " ", "+"])) {
            bounded("query", &query, || {
                let q = Query::parse(Some(&query));
                let _ = q.number("n", 1u32, 1..=1000);
                let _ = q.choice("n", 0, &[("svg", 1)]);
                let _ = q.flag("n", true);
                let _ = q.name("n", 8);
            });
        }
    }

    mod since {
        use super::super::*;
        use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
            }
        }
    }
}
