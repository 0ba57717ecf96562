//! What a pusher is configured with: the server, the labels, the
//! credentials (kept as [`Secret`]s that never print), and the delivery's
//! bounds; the `STETHOSCOPE_PUSH_*` variables that set them.

use std::time::Duration;

use super::endpoint::Endpoint;
use crate::Error;

/// Longest a TCP connection (and TLS handshake) to the server may take.
pub const DEFAULT_PUSH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest one push request may take, connection included, until the
/// server's answer is read.
pub const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Profiles waiting for delivery, at most: 30 segments of 10 s are the
/// last 5 minutes. When the server is slow or down, the oldest go first.
pub const DEFAULT_PUSH_QUEUE_PROFILES: usize = 30;

/// Memory the waiting profiles may hold, at most (estimated; the oldest go
/// first).
pub const DEFAULT_PUSH_QUEUE_BYTES: usize = 16 << 20;

/// First wait before a failed push is retried; it doubles with every
/// failure in a row, up to [`DEFAULT_PUSH_BACKOFF_MAX`], with jitter.
pub const DEFAULT_PUSH_BACKOFF_MIN: Duration = Duration::from_millis(500);

/// Longest wait between two attempts while the server fails.
pub const DEFAULT_PUSH_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Longest the final push at [`Agent::shutdown`](crate::Agent::shutdown)
/// may take.
pub const DEFAULT_PUSH_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variable that turns pushing on: the server's URL, e.g.
/// `http://pyroscope:4040` or `https://user:token@profiles-prod-001.grafana.net`
/// (an empty value or `off` leaves pushing off).
pub const ENV_PUSH_URL: &str = "STETHOSCOPE_PUSH_URL";
/// The `service_name` label ([`PushSettings::service`]).
pub const ENV_PUSH_SERVICE: &str = "STETHOSCOPE_PUSH_SERVICE";
/// Static labels, `name=value` pairs separated by commas
/// ([`PushSettings::label`]).
pub const ENV_PUSH_LABELS: &str = "STETHOSCOPE_PUSH_LABELS";
/// The HTTP basic-auth user (Grafana Cloud: the numeric instance id).
pub const ENV_PUSH_USER: &str = "STETHOSCOPE_PUSH_USER";
/// The HTTP basic-auth password (Grafana Cloud: an access-policy token).
pub const ENV_PUSH_PASSWORD: &str = "STETHOSCOPE_PUSH_PASSWORD";
/// A bearer token, sent as `Authorization: Bearer …` (for an
/// authenticating proxy in front of the server).
pub const ENV_PUSH_TOKEN: &str = "STETHOSCOPE_PUSH_TOKEN";
/// The tenant, sent as `X-Scope-OrgID` (multi-tenant servers).
pub const ENV_PUSH_TENANT: &str = "STETHOSCOPE_PUSH_TENANT";
/// The request timeout, e.g. `10s` ([`DEFAULT_PUSH_TIMEOUT`]).
pub const ENV_PUSH_TIMEOUT: &str = "STETHOSCOPE_PUSH_TIMEOUT";
/// Profiles the queue holds ([`DEFAULT_PUSH_QUEUE_PROFILES`]).
pub const ENV_PUSH_QUEUE: &str = "STETHOSCOPE_PUSH_QUEUE";
/// Push the live heap every N segments (`0`, the default, is never).
pub const ENV_PUSH_HEAP_EVERY: &str = "STETHOSCOPE_PUSH_HEAP_EVERY";
/// `on` (default) or `off`: whether profiles are symbolized before they
/// are pushed.
pub const ENV_PUSH_SYMBOLIZE: &str = "STETHOSCOPE_PUSH_SYMBOLIZE";
/// A PEM file of CA certificates to trust besides the built-in roots
/// (feature `push-tls`).
pub const ENV_PUSH_CA_FILE: &str = "STETHOSCOPE_PUSH_CA_FILE";
/// `pyroscope` (default) or `otlp`: the API profiles are pushed with
/// ([`PushProtocol`]).
pub const ENV_PUSH_PROTOCOL: &str = "STETHOSCOPE_PUSH_PROTOCOL";

/// The API profiles are pushed with ([`PushSettings::protocol`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PushProtocol {
    /// Grafana Pyroscope's Push API (`POST /push.v1.PusherService/Push`,
    /// Connect): gzip pprof under series labels. Pyroscope, Grafana Cloud
    /// Profiles, Alloy's `pyroscope.receive_http`.
    #[default]
    Pyroscope,
    /// OTLP profiles over HTTP (`POST /v1development/profiles`, gzip
    /// protobuf of OTLP proto v1.10.0): Pyroscope 2.x, an OpenTelemetry
    /// Collector's `otlp` receiver. The signal is alpha: server and agent
    /// must speak the same proto version. Needs the `push-otlp` feature.
    Otlp,
}

impl PushProtocol {
    /// Its name in [`ENV_PUSH_PROTOCOL`]: `pyroscope` or `otlp`.
    pub fn name(self) -> &'static str {
        match self {
            PushProtocol::Pyroscope => "pyroscope",
            PushProtocol::Otlp => "otlp",
        }
    }

    /// The request path under the server URL (and its prefix).
    pub(crate) fn path(self) -> &'static str {
        match self {
            PushProtocol::Pyroscope => super::endpoint::PUSH_PATH,
            PushProtocol::Otlp => super::endpoint::OTLP_PATH,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "pyroscope" | "connect" => Some(PushProtocol::Pyroscope),
            "otlp" | "otlp-http" | "http/protobuf" => Some(PushProtocol::Otlp),
            _ => None,
        }
    }
}

/// A credential: compared and sent, never shown. `Debug` prints
/// `<redacted>`; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into().into_boxed_str())
    }

    /// The credential itself, for the request that carries it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

/// Where and how to push the continuous profiler's segments
/// ([`AgentBuilder::push`](crate::AgentBuilder::push)).
///
/// Setters never fail; an invalid value (a URL that is not `http(s)://`,
/// a label name Pyroscope would refuse, a header value a request cannot
/// carry) makes [`AgentBuilder::start`](crate::AgentBuilder::start) fail
/// naming it. `Debug` shows no credential.
///
/// ```
/// use stethoscope::push::PushSettings;
///
/// let settings = PushSettings::new("https://profiles-prod-001.grafana.net")
///     .service("checkout")
///     .label("environment", "production")
///     .basic_auth("123456", "glc_…");
/// assert!(!format!("{settings:?}").contains("glc_"));
/// ```
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub(crate) url: String,
    pub(crate) protocol: PushProtocol,
    pub(crate) service: Option<String>,
    /// Static labels, applied over the defaults; an empty value removes a
    /// default label.
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) basic: Option<(String, Secret)>,
    pub(crate) bearer: Option<Secret>,
    pub(crate) tenant: Option<String>,
    pub(crate) headers: Vec<(String, Secret)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) queue_profiles: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) symbolize: bool,
    pub(crate) heap_every: u32,
    pub(crate) ca_file: Option<std::path::PathBuf>,
}

impl PushSettings {
    /// Pushing to the Pyroscope server at `url` (`http://host:port` or
    /// `https://host`, optionally with a path prefix and `user:password@`
    /// for basic auth), with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        PushSettings {
            url: url.into(),
            protocol: PushProtocol::Pyroscope,
            service: None,
            labels: Vec::new(),
            basic: None,
            bearer: None,
            tenant: None,
            headers: Vec::new(),
            connect_timeout: DEFAULT_PUSH_CONNECT_TIMEOUT,
            timeout: DEFAULT_PUSH_TIMEOUT,
            queue_profiles: DEFAULT_PUSH_QUEUE_PROFILES,
            queue_bytes: DEFAULT_PUSH_QUEUE_BYTES,
            backoff_min: DEFAULT_PUSH_BACKOFF_MIN,
            backoff_max: DEFAULT_PUSH_BACKOFF_MAX,
            symbolize: true,
            heap_every: 0,
            ca_file: None,
        }
    }

    /// The API to push with: Pyroscope's Push API (the default) or OTLP
    /// profiles ([`PushProtocol::Otlp`], feature `push-otlp`), sent to
    /// `url` + `/v1development/profiles`. With OTLP the labels become
    /// resource attributes (`service_name` → `service.name`, `version` →
    /// `service.version`, `environment` → `deployment.environment.name`,
    /// `instance` → `service.instance.id`, the others by their name).
    #[must_use]
    pub fn protocol(mut self, protocol: PushProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The `service_name` label: the application's name in Pyroscope.
    /// Default: `OTEL_SERVICE_NAME` when set, else the executable's name.
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// A static label on every pushed profile, e.g. `environment=production`.
    /// Defaults (each replaced by a label of the same name, removed by an
    /// empty value): `instance` (the host name), and `version` and
    /// `environment` from `OTEL_RESOURCE_ATTRIBUTES` (`service.version`,
    /// `deployment.environment.name`) when set. Names are
    /// `[a-zA-Z_][a-zA-Z0-9_]*` and must not start with `__`.
    #[must_use]
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.labels.retain(|(n, _)| *n != name);
        self.labels.push((name, value.into()));
        self
    }

    /// HTTP basic authentication (Grafana Cloud: the numeric user of the
    /// stack's Pyroscope and an access-policy token).
    ///
    /// # Security considerations
    /// Over `http://` the credentials cross the network in clear text: use
    /// `https://` (feature `push-tls`) beyond a trusted segment.
    #[must_use]
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.basic = Some((user.into(), password.into()));
        self
    }

    /// `Authorization: Bearer <token>` on every push (Pyroscope itself has
    /// no bearer authentication; an authenticating proxy in front of it
    /// may). Replaces basic authentication if both are set.
    #[must_use]
    pub fn bearer_token(mut self, token: impl Into<Secret>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// The tenant of a multi-tenant server, sent as `X-Scope-OrgID`.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Another header on every push (for a proxy); its value is treated as
    /// a secret.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Secret>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Longest a connection may take to open. Default
    /// [`DEFAULT_PUSH_CONNECT_TIMEOUT`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Longest one push may take, connecting included. Default
    /// [`DEFAULT_PUSH_TIMEOUT`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bounds of the queue of profiles waiting for delivery: how many, and
    /// how many bytes. Defaults [`DEFAULT_PUSH_QUEUE_PROFILES`] and
    /// [`DEFAULT_PUSH_QUEUE_BYTES`].
    #[must_use]
    pub fn queue(mut self, profiles: usize, bytes: usize) -> Self {
        self.queue_profiles = profiles;
        self.queue_bytes = bytes;
        self
    }

    /// The first and the longest wait between attempts while the server
    /// fails. Defaults [`DEFAULT_PUSH_BACKOFF_MIN`] and
    /// [`DEFAULT_PUSH_BACKOFF_MAX`].
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Whether profiles are symbolized before they are pushed (default
    /// `true`: Pyroscope shows function names only if the profile carries
    /// them). `false` pushes addresses, mappings and build IDs, for a
    /// server that symbolizes from uploaded debug files.
    #[must_use]
    pub fn symbolize(mut self, symbolize: bool) -> Self {
        self.symbolize = symbolize;
        self
    }

    /// Pushes the live heap (jemalloc's sampled heap, `memory` in
    /// Pyroscope) every `segments` segments; 0 (the default) never. Needs
    /// heap profiling ([`heap_profiling!`](crate::heap_profiling)).
    #[must_use]
    pub fn heap_every(mut self, segments: u32) -> Self {
        self.heap_every = segments;
        self
    }

    /// A PEM file of CA certificates to trust besides the built-in web
    /// roots, for a server with a private CA (feature `push-tls`).
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Checks every setting; the first problem, naming it.
    pub(crate) fn validate(&self) -> Result<Endpoint, Error> {
        let endpoint = Endpoint::parse(&self.url, self.protocol.path()).map_err(|reason| Error::InvalidSetting {
            setting: "push.url",
            reason,
        })?;
        if let Some(service) = &self.service {
            check_value(service).map_err(|reason| Error::InvalidSetting {
                setting: "push.service",
                reason,
            })?;
        }
        for (name, value) in &self.labels {
            check_label_name(name).map_err(|reason| Error::InvalidSetting {
                setting: "push.label",
                reason,
            })?;
            check_value(value).map_err(|reason| Error::InvalidSetting {
                setting: "push.label",
                reason,
            })?;
        }
        let invalid = |setting, reason| Error::InvalidSetting { setting, reason };
        if let Some((user, password)) = &self.basic {
            if user.contains(':') || !printable(user) || !printable(password.expose()) {
                return Err(invalid(
                    "push.basic_auth",
                    "user and password must be printable, and the user without ':'",
                ));
            }
        }
        if let Some(token) = &self.bearer {
            if token.expose().is_empty() || !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "push.bearer_token",
                    "the token must be non-empty visible ASCII",
                ));
            }
        }
        if let Some(tenant) = &self.tenant {
            if tenant.is_empty()
                || tenant.len() > 150
                || !tenant
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!-_.*'()".contains(&b))
            {
                return Err(invalid(
                    "push.tenant",
                    "a tenant is 1-150 characters of letters, digits and !-_.*'()",
                ));
            }
        }
        for (name, value) in &self.headers {
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || axum::http::HeaderValue::from_str(value.expose()).is_err()
            {
                return Err(invalid(
                    "push.header",
                    "a header needs a valid name and a visible-ASCII value",
                ));
            }
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(invalid("push.timeout", "timeouts must be longer than zero"));
        }
        if self.queue_profiles == 0 || self.queue_bytes == 0 {
            return Err(invalid(
                "push.queue",
                "the queue must hold at least one profile and one byte",
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return Err(invalid(
                "push.backoff",
                "the first wait must be longer than zero and not longer than the longest",
            ));
        }
        if self.protocol == PushProtocol::Otlp {
            if !cfg!(feature = "push-otlp") {
                return Err(invalid(
                    "push.protocol",
                    "OTLP needs stethoscope's `push-otlp` feature (or push with the pyroscope protocol)",
                ));
            }
            if self.heap_every > 0 {
                return Err(invalid(
                    "push.heap_every",
                    "the live heap is pushed with the pyroscope protocol only (OTLP carries the CPU segments)",
                ));
            }
        }
        if endpoint.tls && !cfg!(feature = "push-tls") {
            return Err(invalid(
                "push.url",
                "https:// needs stethoscope's `push-tls` feature (or push over http:// to a local Alloy)",
            ));
        }
        Ok(endpoint)
    }

    /// The series labels every pushed profile carries besides `__name__`:
    /// `service_name`, then the defaults and static labels, sorted by
    /// name. `env` reads an environment variable.
    pub(crate) fn series_labels(&self, env: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let service = self
            .service
            .clone()
            .or_else(|| env("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(crate::profile::process_name);
        let mut labels: Vec<(String, String)> = Vec::new();
        if let Some(host) = host_name(&env) {
            labels.push(("instance".to_owned(), host));
        }
        if let Some(attributes) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for (key, label) in [
                ("service.version", "version"),
                ("deployment.environment.name", "environment"),
                ("deployment.environment", "environment"),
            ] {
                let value = attributes.split(',').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k.trim() == key).then(|| v.trim().to_owned())
                });
                if let Some(value) = value.filter(|v| check_value(v).is_ok()) {
                    if !labels.iter().any(|(n, _)| n == label) {
                        labels.push((label.to_owned(), value));
                    }
                }
            }
        }
        for (name, value) in &self.labels {
            labels.retain(|(n, _)| n != name);
            if !value.is_empty() {
                labels.push((name.clone(), value.clone()));
            }
        }
        labels.retain(|(n, _)| n != "service_name");
        labels.push(("service_name".to_owned(), service));
        labels.sort();
        labels
    }
}

/// The host's name: `/proc/sys/kernel/hostname`, else `HOSTNAME`.
fn host_name(env: &impl Fn(&str) -> Option<String>) -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && check_value(h).is_ok())
        .or_else(|| env("HOSTNAME").map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty() && check_value(h).is_ok())
}

fn printable(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(char::is_control)
}

/// A label name Pyroscope keeps as it is: `[a-zA-Z_][a-zA-Z0-9_]*`, not
/// one of the reserved `__…` names.
fn check_label_name(name: &str) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') || name.len() > 1024 {
        return Err("label names are [a-zA-Z_][a-zA-Z0-9_]* (at most 1024 bytes)");
    }
    if name.starts_with("__") {
        return Err("label names starting with __ are reserved by Pyroscope");
    }
    if name == "service_name" {
        return Err("service_name is set with PushSettings::service");
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), &'static str> {
    if value.len() > 2048 || value.chars().any(char::is_control) {
        return Err("label values are at most 2048 bytes, without control characters");
    }
    Ok(())
}

/// `on`/`off` and their synonyms.
fn switch(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Some(true),
        "off" | "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Applies the `STETHOSCOPE_PUSH_*` variables to `push` (the builder's
/// settings, if any). `STETHOSCOPE_PUSH_URL` turns pushing on (or, empty
/// or `off`, off); the others apply to whatever push settings there are,
/// and are ignored without any. The first invalid value is returned,
/// naming the variable and never echoing a secret.
pub(crate) fn apply_env(
    push: &mut Option<PushSettings>,
    var: impl Fn(&str) -> Option<String>,
) -> Option<Error> {
    if let Some(url) = var(ENV_PUSH_URL) {
        let url = url.trim();
        if url.is_empty() || url.eq_ignore_ascii_case("off") {
            *push = None;
        } else {
            *push = Some(match push.take() {
                Some(settings) => PushSettings {
                    url: url.to_owned(),
                    ..settings
                },
                None => PushSettings::new(url),
            });
        }
    }
    let settings = push.as_mut()?;
    let mut first_error = None;
    let mut fail = |error: Error| {
        first_error.get_or_insert(error);
    };
    let invalid = |var: &'static str, value: String, expected: &'static str| Error::InvalidEnv {
        var,
        value,
        expected,
    };
    if let Some(url) = var(ENV_PUSH_URL) {
        if Endpoint::parse(url.trim(), "").is_err() {
            // The URL may carry a password: never echo it.
            fail(invalid(
                ENV_PUSH_URL,
                "<redacted>".to_owned(),
                "http://host:port or https://host (optionally user:password@ and a path prefix)",
            ));
        }
    }
    if let Some(service) = var(ENV_PUSH_SERVICE) {
        if check_value(service.trim()).is_ok() && !service.trim().is_empty() {
            settings.service = Some(service.trim().to_owned());
        } else {
            fail(invalid(
                ENV_PUSH_SERVICE,
                service,
                "a service name without control characters",
            ));
        }
    }
    if let Some(list) = var(ENV_PUSH_LABELS) {
        let mut parsed = Vec::new();
        let mut ok = true;
        for item in list.split(',').filter(|i| !i.trim().is_empty()) {
            match item.split_once('=') {
                Some((name, value))
                    if check_label_name(name.trim()).is_ok()
                        && check_value(value.trim()).is_ok() =>
                {
                    parsed.push((name.trim().to_owned(), value.trim().to_owned()));
                }
                _ => ok = false,
            }
        }
        if ok {
            for (name, value) in parsed {
                *settings = std::mem::replace(settings, PushSettings::new("")).label(name, value);
            }
        } else {
            fail(invalid(
                ENV_PUSH_LABELS,
                list,
                "name=value pairs separated by commas, names [a-zA-Z_][a-zA-Z0-9_]*, e.g. environment=prod,region=eu",
            ));
        }
    }
    let user = var(ENV_PUSH_USER);
    let password = var(ENV_PUSH_PASSWORD);
    match (user, password) {
        (Some(user), Some(password)) => {
            settings.basic = Some((user.trim().to_owned(), Secret::new(password.trim())));
        }
        (Some(_), None) => fail(invalid(
            ENV_PUSH_USER,
            "<set>".to_owned(),
            "STETHOSCOPE_PUSH_PASSWORD with it (basic authentication needs both)",
        )),
        (None, Some(_)) => fail(invalid(
            ENV_PUSH_PASSWORD,
            "<redacted>".to_owned(),
            "STETHOSCOPE_PUSH_USER with it (basic authentication needs both)",
        )),
        (None, None) => {}
    }
    if let Some(token) = var(ENV_PUSH_TOKEN) {
        let token = token.trim();
        if !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()) {
            settings.bearer = Some(Secret::new(token));
        } else {
            fail(invalid(
                ENV_PUSH_TOKEN,
                "<redacted>".to_owned(),
                "a non-empty token of visible ASCII characters",
            ));
        }
    }
    if let Some(tenant) = var(ENV_PUSH_TENANT) {
        settings.tenant = Some(tenant.trim().to_owned());
    }
    if let Some(timeout) = var(ENV_PUSH_TIMEOUT) {
        match humantime::parse_duration(timeout.trim()) {
            Ok(t) if !t.is_zero() && t <= Duration::from_secs(600) => settings.timeout = t,
            _ => fail(invalid(
                ENV_PUSH_TIMEOUT,
                timeout,
                "a duration up to 10m, e.g. 10s",
            )),
        }
    }
    if let Some(queue) = var(ENV_PUSH_QUEUE) {
        match queue.trim().parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => settings.queue_profiles = n,
            _ => fail(invalid(
                ENV_PUSH_QUEUE,
                queue,
                "a number of profiles from 1 to 10000, e.g. 30",
            )),
        }
    }
    if let Some(every) = var(ENV_PUSH_HEAP_EVERY) {
        match every.trim().parse::<u32>() {
            Ok(n) => settings.heap_every = n,
            _ => fail(invalid(
                ENV_PUSH_HEAP_EVERY,
                every,
                "a number of segments, e.g. 6 (0: never)",
            )),
        }
    }
    if let Some(value) = var(ENV_PUSH_SYMBOLIZE) {
        match switch(&value) {
            Some(on) => settings.symbolize = on,
            None => fail(invalid(ENV_PUSH_SYMBOLIZE, value, "on or off")),
        }
    }
    if let Some(path) = var(ENV_PUSH_CA_FILE) {
        settings.ca_file = Some(path.trim().into());
    }
    if let Some(value) = var(ENV_PUSH_PROTOCOL) {
        match PushProtocol::parse(&value) {
            Some(protocol) => settings.protocol = protocol,
            None => fail(invalid(ENV_PUSH_PROTOCOL, value, "pyroscope or otlp")),
        }
    }
    first_error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::env;

    #[test]
    fn debug_shows_no_credential() {
        let settings = PushSettings::new("https://u:url-secret@example.com")
            .basic_auth("123", "basic-secret")
            .bearer_token("bearer-secret")
            .header("X-Key", "header-secret")
            .tenant("team-a");
        let shown = format!("{settings:?}");
        for secret in ["basic-secret", "bearer-secret", "header-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("<redacted>") && shown.contains("team-a"));
        // The URL's password never leaves the settings either: the parsed
        // endpoint holds it as a secret and shows the URL without it.
        let endpoint = match settings.validate() {
            Ok(endpoint) => endpoint,
            // Without push-tls an https URL is refused: read the same URL
            // over http.
            Err(_) if cfg!(not(feature = "push-tls")) => {
                Endpoint::parse("http://u:url-secret@example.com", "").unwrap()
            }
            Err(error) => panic!("{error}"),
        };
        assert!(!format!("{endpoint:?}").contains("url-secret"));
        assert!(!endpoint.shown().contains("url-secret"));
    }

    #[test]
    fn env_turns_push_on_and_sets_everything() {
        let mut push = None;
        let error = apply_env(
            &mut push,
            env(&[
                ("STETHOSCOPE_PUSH_URL", "http://pyroscope:4040"),
                ("STETHOSCOPE_PUSH_SERVICE", "checkout"),
                ("STETHOSCOPE_PUSH_LABELS", "environment=prod, region=eu"),
                ("STETHOSCOPE_PUSH_USER", "123"),
                ("STETHOSCOPE_PUSH_PASSWORD", "pw\n"),
                ("STETHOSCOPE_PUSH_TENANT", "team-a"),
                ("STETHOSCOPE_PUSH_TIMEOUT", "3s"),
                ("STETHOSCOPE_PUSH_QUEUE", "12"),
                ("STETHOSCOPE_PUSH_HEAP_EVERY", "6"),
                ("STETHOSCOPE_PUSH_SYMBOLIZE", "off"),
            ]),
        );
        assert!(error.is_none(), "{error:?}");
        let push = push.unwrap();
        assert!(push.validate().is_ok());
        assert_eq!(push.service.as_deref(), Some("checkout"));
        assert_eq!(push.basic.as_ref().unwrap().1.expose(), "pw");
        assert_eq!(push.timeout, Duration::from_secs(3));
        assert_eq!((push.queue_profiles, push.heap_every, push.symbolize), (12, 6, false));
        let labels = push.series_labels(env(&[]));
        assert!(labels.contains(&("environment".into(), "prod".into())));
        assert!(labels.contains(&("region".into(), "eu".into())));
        assert!(labels.contains(&("service_name".into(), "checkout".into())));
    }

    #[test]
    fn env_without_a_url_changes_nothing_and_off_turns_push_off() {
        let mut push = None;
        assert!(apply_env(&mut push, env(&[("STETHOSCOPE_PUSH_TOKEN", "t")])).is_none());
        assert!(push.is_none());
        let mut push = Some(PushSettings::new("http://a:1"));
        assert!(apply_env(&mut push, env(&[("STETHOSCOPE_PUSH_URL", "off")])).is_none());
        assert!(push.is_none());
        // Without a URL variable, the builder's settings take the others.
        let mut push = Some(PushSettings::new("http://a:1"));
        assert!(apply_env(&mut push, env(&[("STETHOSCOPE_PUSH_TOKEN", "t")])).is_none());
        assert_eq!(push.unwrap().bearer.unwrap().expose(), "t");
    }

    #[test]
    fn bad_env_values_are_named_and_secrets_never_echoed() {
        for (var, value) in [
            ("STETHOSCOPE_PUSH_URL", "ftp://user:hunter2@x"),
            ("STETHOSCOPE_PUSH_TOKEN", "has space hunter2"),
            ("STETHOSCOPE_PUSH_PASSWORD", "hunter2"),
        ] {
            let mut push = Some(PushSettings::new("http://a:1"));
            let error = apply_env(&mut push, env(&[(var, value)])).expect("an error");
            let shown = format!("{error} {error:?}");
            assert!(shown.contains(var), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let mut push = Some(PushSettings::new("http://a:1"));
        let error = apply_env(&mut push, env(&[("STETHOSCOPE_PUSH_LABELS", "a=b,9x=c")])).unwrap();
        assert!(error.to_string().contains("STETHOSCOPE_PUSH_LABELS"));
    }

    #[test]
    fn the_protocol_comes_from_the_environment_and_otlp_is_checked() {
        let mut push = Some(PushSettings::new("http://collector:4318"));
        assert!(apply_env(&mut push, env(&[("STETHOSCOPE_PUSH_PROTOCOL", " OTLP ")])).is_none());
        let push = push.unwrap();
        assert_eq!(push.protocol, PushProtocol::Otlp);
        match push.validate() {
            Ok(endpoint) if cfg!(feature = "push-otlp") => {
                assert_eq!(endpoint.path, "/v1development/profiles");
            }
            Err(Error::InvalidSetting { setting, .. }) if cfg!(not(feature = "push-otlp")) => {
                assert_eq!(setting, "push.protocol");
            }
            other => panic!("{other:?}"),
        }
        if cfg!(feature = "push-otlp") {
            match push.clone().heap_every(2).validate() {
                Err(Error::InvalidSetting { setting, .. }) => assert_eq!(setting, "push.heap_every"),
                other => panic!("the heap goes with the pyroscope protocol only: {other:?}"),
            }
        }
        assert_eq!(PushSettings::new("http://p:1").protocol, PushProtocol::Pyroscope);
        let mut push = Some(PushSettings::new("http://p:1"));
        let error = apply_env(&mut push, env(&[("STETHOSCOPE_PUSH_PROTOCOL", "grpc")])).unwrap();
        assert!(error.to_string().contains("STETHOSCOPE_PUSH_PROTOCOL"), "{error}");
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        for (settings, setting) in [
            (PushSettings::new("pyroscope:4040"), "push.url"),
            (PushSettings::new("http://p:1").label("__name__", "x"), "push.label"),
            (PushSettings::new("http://p:1").label("a-b", "x"), "push.label"),
            (PushSettings::new("http://p:1").tenant("a b"), "push.tenant"),
            (PushSettings::new("http://p:1").bearer_token(""), "push.bearer_token"),
            (PushSettings::new("http://p:1").queue(0, 1), "push.queue"),
            (
                PushSettings::new("http://p:1").header("X-A", "line\nbreak"),
                "push.header",
            ),
            (
                PushSettings::new("http://p:1").backoff(Duration::from_secs(2), Duration::from_secs(1)),
                "push.backoff",
            ),
        ] {
            match settings.validate() {
                Err(Error::InvalidSetting { setting: s, .. }) => assert_eq!(s, setting),
                other => panic!("{setting}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_segment_length_from_the_environment_goes_with_continuous_profiling_or_push() {
        use crate::capabilities::Settings;
        let mut on = Settings {
            continuous: Some(crate::cpu::ContinuousSettings::new(99)),
            ..Settings::default()
        };
        assert!(on
            .apply_env(&env(&[("STETHOSCOPE_CONTINUOUS_SEGMENT", "2s")]))
            .is_none());
        let settings = on.continuous.unwrap();
        assert_eq!((settings.hz, settings.segment), (99, Duration::from_secs(2)));
        // Push turns the ring on at 19 Hz: with this segment length.
        let mut push = Settings::default();
        assert!(push
            .apply_env(&env(&[
                ("STETHOSCOPE_PUSH_URL", "http://p:4040"),
                ("STETHOSCOPE_CONTINUOUS_SEGMENT", "5s"),
            ]))
            .is_none());
        let settings = push.continuous.unwrap();
        assert_eq!((settings.hz, settings.segment), (19, Duration::from_secs(5)));
        // Neither: a segment length means nothing, and says so.
        let error = Settings::default()
            .apply_env(&env(&[("STETHOSCOPE_CONTINUOUS_SEGMENT", "5s")]))
            .unwrap();
        assert!(error.to_string().contains("STETHOSCOPE_CONTINUOUS_SEGMENT"));
        for bad in ["0s", "11m", "soon"] {
            let mut settings = Settings {
                continuous: Some(crate::cpu::ContinuousSettings::new(19)),
                ..Settings::default()
            };
            assert!(settings
                .apply_env(&env(&[("STETHOSCOPE_CONTINUOUS_SEGMENT", bad)]))
                .is_some());
        }
        // The builder turns the ring on for push, and says so at start.
        let mut continuous = None;
        crate::push::enable_ring(&mut continuous, Some(&PushSettings::new("http://p:1")));
        assert_eq!(continuous.map(|c| c.hz), Some(19));
    }

    #[test]
    fn default_labels_come_from_the_host_and_otel_and_yield_to_static_ones() {
        let otel = env(&[
            ("OTEL_SERVICE_NAME", "from-otel"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.version=1.2.3,deployment.environment.name=staging,other=x",
            ),
        ]);
        let labels = PushSettings::new("http://p:1").series_labels(&otel);
        let get = |labels: &[(String, String)], name: &str| {
            labels.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&labels, "service_name").as_deref(), Some("from-otel"));
        assert_eq!(get(&labels, "version").as_deref(), Some("1.2.3"));
        assert_eq!(get(&labels, "environment").as_deref(), Some("staging"));
        assert!(get(&labels, "instance").is_some_and(|h| !h.is_empty()));
        let labels = PushSettings::new("http://p:1")
            .service("mine")
            .label("environment", "prod")
            .label("instance", "")
            .series_labels(&otel);
        assert_eq!(get(&labels, "service_name").as_deref(), Some("mine"));
        assert_eq!(get(&labels, "environment").as_deref(), Some("prod"));
        assert_eq!(get(&labels, "instance"), None, "an empty value removes a default");
        let names: Vec<&str> = labels.iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }
}
