//! The server's URL, taken apart: scheme, host, port, path of the API
//! (Pyroscope's Push API or OTLP's profiles path) under an optional prefix, and credentials given as `user:password@`
//! (kept as a secret, and never part of what is shown).

use super::settings::Secret;

/// The path of Pyroscope's Push API (Connect, unary): the service
/// `push.v1.PusherService`, method `Push`.
pub(crate) const PUSH_PATH: &str = "/push.v1.PusherService/Push";

/// The path of OTLP/HTTP profiles (`ProfilesService.Export`, development
/// signal).
pub(crate) const OTLP_PATH: &str = "/v1development/profiles";

/// Where pushes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `https`.
    pub(crate) tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The request path: prefix + the API's path.
    pub(crate) path: String,
    /// `Host` header value (`host` or `host:port`, IPv6 in brackets).
    pub(crate) authority: String,
    /// Basic-auth credentials given in the URL.
    pub(crate) userinfo: Option<(String, Secret)>,
}

impl Endpoint {
    /// Parses `http(s)://[user:password@]host[:port][/prefix]`, requests
    /// going to prefix + `api` (a prefix that already ends with `api`, as
    /// an `OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT`-style URL does, is not
    /// extended twice).
    pub(crate) fn parse(url: &str, api: &str) -> Result<Endpoint, &'static str> {
        const EXPECTED: &str =
            "expected http://host:port or https://host, optionally with user:password@ and a path prefix";
        let url = url.trim();
        let (tls, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "http://") {
            (false, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(url, "https://") {
            (true, rest)
        } else {
            return Err(EXPECTED);
        };
        if rest.contains(['?', '#']) {
            return Err("the URL must not have a query or fragment");
        }
        let (authority, prefix) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let userinfo = match userinfo {
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let user = percent_decode(user).ok_or(EXPECTED)?;
                let password = percent_decode(password).ok_or(EXPECTED)?;
                if user.is_empty() {
                    return Err("the URL's user is empty");
                }
                Some((user, Secret::new(password)))
            }
            None => None,
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(EXPECTED)?;
            let port = match after {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or(EXPECTED)?,
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(EXPECTED);
            }
            (host.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    port.parse::<u16>().map_err(|_| "the URL's port is not a number")?,
                ),
                None => (hostport.to_owned(), default_port),
            }
        };
        let host_ok = !host.is_empty()
            && (host.parse::<std::net::Ipv6Addr>().is_ok()
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
        if !host_ok || port == 0 {
            return Err("the URL's host or port is not valid");
        }
        if prefix.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err("the URL's path must not contain spaces or control characters");
        }
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let authority = if port == default_port {
            bracketed
        } else {
            format!("{bracketed}:{port}")
        };
        let prefix = prefix.trim_end_matches('/');
        let prefix = if api.is_empty() {
            prefix
        } else {
            prefix.strip_suffix(api).unwrap_or(prefix)
        };
        Ok(Endpoint {
            tls,
            path: format!("{prefix}{api}"),
            host,
            port,
            authority,
            userinfo,
        })
    }

    /// The URL to show in logs and `/health`: without credentials.
    pub(crate) fn shown(&self) -> String {
        format!(
            "{}://{}{}",
            if self.tls { "https" } else { "http" },
            self.authority,
            self.path
        )
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// `%XX` escapes of a URL's user information (a token may hold `/` or `@`).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_apart() {
        let e = Endpoint::parse("http://pyroscope:4040", PUSH_PATH).unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str(), e.authority.as_str()),
            (false, "pyroscope", 4040, PUSH_PATH, "pyroscope:4040")
        );
        let e = Endpoint::parse("HTTPS://123456:glc%2Fx%40y@profiles-prod-001.grafana.net/", PUSH_PATH).unwrap();
        assert!(e.tls);
        assert_eq!((e.port, e.authority.as_str()), (443, "profiles-prod-001.grafana.net"));
        let (user, password) = e.userinfo.clone().unwrap();
        assert_eq!((user.as_str(), password.expose()), ("123456", "glc/x@y"));
        assert_eq!(e.shown(), "https://profiles-prod-001.grafana.net/push.v1.PusherService/Push");
        let e = Endpoint::parse("http://[::1]:4040/pyroscope", PUSH_PATH).unwrap();
        assert_eq!((e.host.as_str(), e.authority.as_str()), ("::1", "[::1]:4040"));
        assert_eq!(e.path, "/pyroscope/push.v1.PusherService/Push");
        // OTLP: the profiles path under the prefix, once.
        for url in [
            "http://collector:4318",
            "http://collector:4318/",
            "http://collector:4318/v1development/profiles",
        ] {
            let e = Endpoint::parse(url, OTLP_PATH).unwrap();
            assert_eq!(e.path, "/v1development/profiles", "{url}");
        }
        let e = Endpoint::parse("http://gw/otlp", OTLP_PATH).unwrap();
        assert_eq!(e.shown(), "http://gw/otlp/v1development/profiles");
    }

    #[test]
    fn junk_is_refused() {
        for url in [
            "",
            "pyroscope:4040",
            "ftp://x",
            "http://",
            "http://host:port",
            "http://host:0",
            "http://ho st",
            "http://[::1",
            "http://h/?a=b",
            "http://:pw@h",
            "http://h/a b",
            "http://%zz@h",
        ] {
            assert!(Endpoint::parse(url, PUSH_PATH).is_err(), "{url}");
        }
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        const PARTS: &[&str] = &["http://", "https://", "[", "]", ":", "@", "%", "/", "4040", "h", "::1", "%4"];

        proptest! {
            #[test]
            fn parsing_never_panics(value in input_of(PARTS)) {
                bounded("push url", &value, || {
                    if let Ok(e) = Endpoint::parse(&value, PUSH_PATH) {
                        assert!(e.path.ends_with(PUSH_PATH));
                        assert!(e.port > 0);
                    }
                });
            }
        }
    }
}
