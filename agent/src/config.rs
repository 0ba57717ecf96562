//! The debug server's settings — address, access control, limits — with
//! their defaults, and the environment variables of every setting.
//!
//! Each capability keeps its own defaults next to it
//! ([`cpu::DEFAULT_PROFILE_HZ`](crate::cpu::DEFAULT_PROFILE_HZ),
//! [`heap::DEFAULT_HEAP_SNAPSHOTS`](crate::heap::DEFAULT_HEAP_SNAPSHOTS),
//! the doctor's in [`DoctorConfig::default`](crate::doctor::DoctorConfig), …);
//! every setter of [`AgentBuilder`](crate::AgentBuilder) quotes the one it
//! replaces.
//! [`AgentBuilder::with_default_env`](crate::AgentBuilder::with_default_env)
//! is the only place that reads environment variables: this module parses
//! the server's, and hands the capabilities' over as given.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::Error;

/// Address the debug server binds when none is given: loopback only.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:6060";

/// Longest CPU profile a request may ask for, in seconds. Longer requests get 400.
pub const DEFAULT_MAX_PROFILE_SECONDS: u64 = 300;

/// Highest value `max_profile_seconds` accepts: one hour.
pub const MAX_PROFILE_SECONDS_LIMIT: u64 = 3600;

/// Most connections the debug server keeps open. When all are taken, a new
/// connection replaces the oldest idle or slow one; only when every one is
/// serving a request does it get 503 (docs/security.md).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Range `max_connections` accepts.
pub const MAX_CONNECTIONS_RANGE: (usize, usize) = (2, 4096);

/// Most CPU profiles the debug server runs at once (each holds its
/// connection for the whole window); more get 429 with `Retry-After`. It
/// stays below `max_connections` so quick requests such as `/health`
/// always find a connection.
pub const DEFAULT_MAX_CONCURRENT_PROFILES: usize = 16;

/// Time a client has to send its request headers — on a new connection, and
/// between requests on a kept-alive one — before the connection is closed.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Time a request body may take to arrive after its headers; slower bodies
/// get 408.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Extra time beyond the requested profile window that a request may take
/// (symbolization and encoding) before it is cut off.
pub const DEFAULT_REQUEST_GRACE: Duration = Duration::from_secs(60);

/// Stacks a heap diff or snapshot lists in `text`/`json` unless `limit` says otherwise.
pub const DEFAULT_LIST_LIMIT: usize = 50;

/// Largest `limit` a request may ask for.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// Environment variable with the listen address (`host:port`).
pub const ENV_ADDR: &str = "STETHOSCOPE_ADDR";
/// Environment variable with the bearer token clients must send.
pub const ENV_TOKEN: &str = "STETHOSCOPE_TOKEN";
/// Environment variable with a comma-separated CIDR allowlist (`10.0.0.0/8,127.0.0.1/32`).
pub const ENV_ALLOW: &str = "STETHOSCOPE_ALLOW";
/// Environment variable with the longest allowed profile, in seconds.
pub const ENV_MAX_PROFILE_SECONDS: &str = "STETHOSCOPE_MAX_PROFILE_SECONDS";

/// Environment variable with the doctor's budgets, e.g.
/// `GET /items/{id}: p95<500ms, errors<1%; cpu<70%; memory<80%` (docs/doctor.md).
pub const ENV_BUDGETS: &str = "STETHOSCOPE_BUDGETS";

/// Environment variable with the history's length, e.g. `15m` (one row a second).
pub const ENV_HISTORY: &str = "STETHOSCOPE_HISTORY";

/// Environment variable turning the doctor's auto-capture `on` or `off`.
pub const ENV_AUTO_CAPTURE: &str = "STETHOSCOPE_AUTO_CAPTURE";

/// Environment variable letting the doctor take task dumps by itself
/// (`on`; default `off`): see `doctor::CapturePolicy::task_dumps`.
pub const ENV_AUTO_CAPTURE_TASK_DUMPS: &str = "STETHOSCOPE_AUTO_CAPTURE_TASK_DUMPS";

/// Environment variable turning continuous profiling on at a rate, e.g.
/// `19` (Hz); `0` or `off` turns it off.
pub const ENV_CONTINUOUS_HZ: &str = "STETHOSCOPE_CONTINUOUS_HZ";

/// Environment variable with the continuous profiler's segment length, e.g.
/// `10s` (1 s to 10 minutes): the time resolution of look-back, of
/// `segment=latest` and of pushes.
pub const ENV_CONTINUOUS_SEGMENT: &str = "STETHOSCOPE_CONTINUOUS_SEGMENT";

/// The bearer token clients must present, kept so that checking it reveals
/// neither its content nor its length through timing.
#[derive(Clone)]
pub(crate) struct BearerToken {
    secret: Box<str>,
    keys: std::collections::hash_map::RandomState,
    digest: u64,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Validates a token: surrounding whitespace (a trailing newline from a
    /// mounted secret) is dropped; what remains must be non-empty visible
    /// ASCII, as an `Authorization` header can carry it.
    pub(crate) fn new(raw: &str) -> Result<Self, &'static str> {
        let secret = raw.trim();
        if secret.is_empty() {
            return Err("the token must not be empty");
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII without spaces");
        }
        let keys = std::collections::hash_map::RandomState::new();
        let digest = std::hash::BuildHasher::hash_one(&keys, secret.as_bytes());
        Ok(Self {
            secret: secret.into(),
            keys,
            digest,
        })
    }

    /// Whether `presented` is the token. The first comparison is of keyed
    /// SipHash digests (fixed length, keys random per process), so its time
    /// depends only on the presented length; the exact comparison that
    /// follows runs only for a presented value whose digest matched.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        let digest = std::hash::BuildHasher::hash_one(&self.keys, presented);
        constant_time_eq::constant_time_eq(&digest.to_ne_bytes(), &self.digest.to_ne_bytes())
            && constant_time_eq::constant_time_eq(presented, self.secret.as_bytes())
    }
}

/// The debug server's resolved settings. Built by the builder, read by the
/// server.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) listen: SocketAddr,
    pub(crate) token: Option<BearerToken>,
    pub(crate) allow: Vec<IpNet>,
    pub(crate) allow_insecure_bind: bool,
    pub(crate) max_profile_seconds: u64,
    pub(crate) max_connections: usize,
    pub(crate) max_concurrent_profiles: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6060)),
            token: None,
            allow: Vec::new(),
            allow_insecure_bind: false,
            max_profile_seconds: DEFAULT_MAX_PROFILE_SECONDS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_profiles: DEFAULT_MAX_CONCURRENT_PROFILES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
        }
    }
}

impl Config {
    /// Applies the server's `STETHOSCOPE_*` variables `var` finds (it
    /// returns a variable's value, `None` when unset): every valid one is
    /// applied, and the first invalid one is returned, naming the variable.
    /// The capabilities parse their own
    /// ([`crate::capabilities::Settings::apply_env`]).
    pub(crate) fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Option<Error> {
        let mut first_error = None;
        let mut fail = |error: Error| {
            first_error.get_or_insert(error);
        };
        if let Some(addr) = var(ENV_ADDR) {
            match parse_listen(&addr) {
                Ok(addr) => self.listen = addr,
                Err(_) => fail(Error::InvalidEnv {
                    var: ENV_ADDR,
                    value: addr,
                    expected: "host:port, e.g. 127.0.0.1:6060",
                }),
            }
        }
        if let Some(token) = var(ENV_TOKEN) {
            match BearerToken::new(&token) {
                Ok(token) => self.token = Some(token),
                Err(_) => fail(Error::InvalidEnv {
                    var: ENV_TOKEN,
                    // Never echo a secret, even a malformed one.
                    value: "<redacted>".to_owned(),
                    expected: "a non-empty token of visible ASCII characters",
                }),
            }
        }
        if let Some(list) = var(ENV_ALLOW) {
            match parse_cidr_list(&list) {
                Ok(nets) => self.allow.extend(nets),
                Err(error @ Error::InvalidEnv { .. }) => fail(error),
                Err(_) => fail(Error::InvalidEnv {
                    var: ENV_ALLOW,
                    value: list,
                    expected: "comma-separated CIDR blocks, e.g. 10.0.0.0/8,192.168.1.7",
                }),
            }
        }
        if let Some(seconds) = var(ENV_MAX_PROFILE_SECONDS) {
            match parse_max_profile_seconds(&seconds) {
                Ok(seconds) => self.max_profile_seconds = seconds,
                Err(error) => fail(error),
            }
        }
        first_error
    }
}

/// Parses a listen address such as `127.0.0.1:6060` or `[::1]:0`.
pub(crate) fn parse_listen(addr: &str) -> Result<SocketAddr, Error> {
    addr.trim()
        .parse()
        .map_err(|source| Error::InvalidListenAddr {
            addr: addr.to_owned(),
            source,
        })
}

/// Parses one CIDR block; a bare IP address means that single host.
pub(crate) fn parse_cidr(cidr: &str) -> Result<IpNet, Error> {
    let text = cidr.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    match text.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => text.parse::<IpNet>().map_err(|source| Error::InvalidCidr {
            cidr: cidr.to_owned(),
            source,
        }),
    }
}

/// Parses a comma-separated CIDR list, ignoring empty items between
/// commas. A list without any block is an error, not "allow everyone": an
/// allowlist variable that is set but empty is a mistake (a template that
/// did not expand), and silently serving every client would hide it.
pub(crate) fn parse_cidr_list(list: &str) -> Result<Vec<IpNet>, Error> {
    let nets = list
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(parse_cidr)
        .collect::<Result<Vec<_>, _>>()?;
    if nets.is_empty() {
        return Err(Error::InvalidEnv {
            var: ENV_ALLOW,
            value: list.to_owned(),
            expected:
                "at least one CIDR block, e.g. 10.0.0.0/8; unset the variable to allow every client",
        });
    }
    Ok(nets)
}

/// Parses the maximum profile length: a whole number of seconds from 1 to
/// [`MAX_PROFILE_SECONDS_LIMIT`].
pub(crate) fn parse_max_profile_seconds(value: &str) -> Result<u64, Error> {
    match value.trim().parse::<u64>() {
        Ok(seconds) if (1..=MAX_PROFILE_SECONDS_LIMIT).contains(&seconds) => Ok(seconds),
        _ => Err(Error::InvalidEnv {
            var: ENV_MAX_PROFILE_SECONDS,
            value: value.to_owned(),
            expected: "a whole number of seconds from 1 to 3600",
        }),
    }
}

/// An on/off switch as an environment variable gives it.
#[cfg_attr(not(feature = "doctor"), allow(dead_code))]
pub(crate) fn parse_switch(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Some(true),
        "off" | "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::env;

    #[test]
    fn env_applies_valid_values_and_names_the_first_bad_variable() {
        let mut config = Config::default();
        let error = config.apply_env(env(&[
            ("STETHOSCOPE_ADDR", "127.0.0.1:7070"),
            ("STETHOSCOPE_TOKEN", "t\n"),
            ("STETHOSCOPE_ALLOW", "10.0.0.0/8, 192.168.1.7"),
            ("STETHOSCOPE_MAX_PROFILE_SECONDS", "60"),
        ]));
        assert!(error.is_none(), "{error:?}");
        assert_eq!(config.listen.port(), 7070);
        assert!(config.token.as_ref().is_some_and(|t| t.matches(b"t")));
        assert_eq!(config.allow.len(), 2);
        assert_eq!(config.max_profile_seconds, 60);

        let mut config = Config::default();
        let error = config.apply_env(env(&[
            ("STETHOSCOPE_TOKEN", "sec ret"),
            ("STETHOSCOPE_MAX_PROFILE_SECONDS", "0"),
            ("STETHOSCOPE_ADDR", "127.0.0.1:7071"),
        ]));
        let Some(Error::InvalidEnv { var, value, .. }) = error else {
            panic!("{error:?}");
        };
        assert_eq!(var, ENV_TOKEN, "the first bad variable in reading order");
        assert_eq!(value, "<redacted>", "a secret is never echoed");
        assert_eq!(config.listen.port(), 7071, "valid ones still apply");
    }

    #[test]
    fn an_empty_allowlist_variable_says_how_to_allow_everyone() {
        for list in ["", " , ", "10.0.0.0/99"] {
            let error = Config::default().apply_env(env(&[("STETHOSCOPE_ALLOW", list)]));
            let Some(Error::InvalidEnv { var, expected, .. }) = error else {
                panic!("{list:?}: {error:?}");
            };
            assert_eq!(var, ENV_ALLOW);
            assert_eq!(
                expected.contains("unset the variable"),
                list != "10.0.0.0/99",
                "{list:?}: {expected}"
            );
        }
    }

    #[test]
    fn cidr_accepts_blocks_and_bare_addresses() {
        let net = parse_cidr("10.0.0.0/8").unwrap();
        assert!(net.contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        let host = parse_cidr(" 127.0.0.1 ").unwrap();
        assert_eq!(host.prefix_len(), 32);
        let v6 = parse_cidr("::1").unwrap();
        assert_eq!(v6.prefix_len(), 128);
        assert!(matches!(
            parse_cidr("10.0.0.0/33"),
            Err(Error::InvalidCidr { .. })
        ));
        assert!(parse_cidr("nonsense").is_err());
    }

    #[test]
    fn cidr_list_skips_empty_items_but_not_an_empty_list() {
        let list = parse_cidr_list("10.0.0.0/8, ,192.168.0.0/16,").unwrap();
        assert_eq!(list.len(), 2);
        assert!(parse_cidr_list("10.0.0.0/8,bad").is_err());
        for empty in ["", ",", " , ,", "\t"] {
            assert!(
                matches!(parse_cidr_list(empty), Err(Error::InvalidEnv { .. })),
                "{empty:?} must not disable the allowlist"
            );
        }
    }

    #[test]
    fn max_profile_seconds_is_range_checked() {
        assert_eq!(parse_max_profile_seconds("60").unwrap(), 60);
        assert_eq!(parse_max_profile_seconds("3600").unwrap(), 3600);
        for bad in [
            "0",
            "-5",
            "1.5",
            "3601",
            "18446744073709551615",
            "99999999999999999999999",
            "",
        ] {
            assert!(parse_max_profile_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_trimmed_validated_and_compared_exactly() {
        let token = BearerToken::new("s3cret-token\n").unwrap();
        assert!(token.matches(b"s3cret-token"));
        assert!(!token.matches(b"s3cret-toke"));
        assert!(!token.matches(b"s3cret-token2"));
        assert!(!token.matches(b""));
        assert!(BearerToken::new("  ").is_err());
        assert!(BearerToken::new("two words").is_err());
        assert!(BearerToken::new("t\u{7}ab").is_err());
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn listen_addr_parses_v4_and_v6() {
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        assert!(parse_listen("[::1]:6060").unwrap().ip().is_loopback());
        assert!(matches!(
            parse_listen("localhost:6060"),
            Err(Error::InvalidListenAddr { .. })
        ));
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        const SETTINGS: &[&str] = &[
            "127.0.0.1",
            ":",
            "6060",
            "[::1]",
            "/",
            "32",
            "10.0.0.0",
            ",",
            " ",
            "0.0.0.0",
            "300",
            "18446744073709551615",
            "-",
            "\n",
            "::ffff:",
            "%eth0",
        ];

        proptest! {
            #[test]
            fn settings_never_panic(value in input_of(SETTINGS)) {
                bounded("listen", &value, || { let _ = parse_listen(&value); });
                bounded("allowlist", &value, || {
                    if let Ok(nets) = parse_cidr_list(&value) {
                        assert!(!nets.is_empty(), "an allowlist that allows everyone");
                    }
                });
                bounded("max profile seconds", &value, || {
                    if let Ok(seconds) = parse_max_profile_seconds(&value) {
                        assert!((1..=MAX_PROFILE_SECONDS_LIMIT).contains(&seconds));
                    }
                });
                bounded("token", &value, || { let _ = BearerToken::new(&value); });
            }
        }
    }
}
