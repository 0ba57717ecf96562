//! One HTTP/1.1 POST at a time to the Push API (or OTLP's profiles path), with hyper's low-level
//! client connection (hyper is already in the tree for the debug server;
//! no pool, no second HTTP stack): a kept-alive connection is reused, a
//! connection that failed in any way is closed (its task aborted, so no
//! socket outlives it), connecting is bounded by the connect timeout and
//! the whole request by the request timeout, and at most
//! [`MAX_RESPONSE_BYTES`] of an answer are read.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::endpoint::Endpoint;
use super::settings::{PushProtocol, PushSettings, Secret};
use crate::Error;

/// Most bytes of an answer read (a Connect error is a short JSON object).
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why an attempt failed, as `stethoscope_push_errors_total{reason}` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The name did not resolve, or the connection was refused or timed out.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The request took longer than the timeout.
    Timeout,
    /// The connection broke while the request or answer was under way.
    Io,
    /// The server answered 5xx.
    Server,
    /// The server answered 429 (rate or ingestion limit).
    Throttled,
    /// The server answered 401 or 403.
    Unauthorized,
    /// The server refused the profile (another 4xx): it is not retried.
    Rejected,
    /// The profile could not be encoded: it is not sent.
    Encode,
}

impl Reason {
    /// Every reason, in the order of [`index`](Self::index).
    pub(crate) const ALL: [Reason; 9] = [
        Reason::Connect,
        Reason::Tls,
        Reason::Timeout,
        Reason::Io,
        Reason::Server,
        Reason::Throttled,
        Reason::Unauthorized,
        Reason::Rejected,
        Reason::Encode,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Tls => "tls",
            Reason::Timeout => "timeout",
            Reason::Io => "io",
            Reason::Server => "server",
            Reason::Throttled => "throttled",
            Reason::Unauthorized => "unauthorized",
            Reason::Rejected => "rejected",
            Reason::Encode => "encode",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether the same profile is worth sending again: everything but a
    /// refusal of the profile itself (a 4xx other than 401, 403, 408, 429).
    /// A credential problem is retried: it is fixed on the server's side
    /// without losing what is queued.
    pub(crate) fn retryable(self) -> bool {
        !matches!(self, Reason::Rejected | Reason::Encode)
    }
}

/// A failed attempt: the reason and a short message for the log (the
/// server's own, for an error status).
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) reason: Reason,
    pub(crate) message: String,
}

impl Failure {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
        }
    }

    fn status(status: StatusCode, body: &[u8]) -> Self {
        let reason = match status.as_u16() {
            401 | 403 => Reason::Unauthorized,
            408 => Reason::Timeout,
            429 => Reason::Throttled,
            400..=499 => Reason::Rejected,
            _ => Reason::Server,
        };
        // A Connect error is {"code": …, "message": …}; anything else is
        // shown as text, cut short.
        let text = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        let text: String = text
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        Failure::new(reason, format!("HTTP {}: {text}", status.as_u16()))
    }
}

/// What connections are made of: a TCP stream, or TLS over one.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A connection: its request half, and the task driving it (aborted on
/// drop, which closes the socket).
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.task.is_finished() && !self.sender.is_closed()
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pusher's HTTP client: one server, one connection at a time.
pub(crate) struct Client {
    endpoint: Endpoint,
    protocol: PushProtocol,
    headers: HeaderMap,
    connect_timeout: Duration,
    timeout: Duration,
    #[cfg(feature = "push-tls")]
    tls: Option<super::tls::Connector>,
    conn: Option<Conn>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint.shown())
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `settings` (already validated into `endpoint`).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] when a header cannot be built or the CA
    /// file cannot be read.
    pub(crate) fn new(settings: &PushSettings, endpoint: Endpoint) -> Result<Self, Error> {
        let invalid = |setting, reason| Error::InvalidSetting { setting, reason };
        let mut headers = HeaderMap::new();
        let secret_value = |text: &str| {
            HeaderValue::from_str(text).map(|mut value| {
                value.set_sensitive(true);
                value
            })
        };
        let basic = settings.basic.as_ref().or(endpoint.userinfo.as_ref());
        if let Some(token) = &settings.bearer {
            let value = secret_value(&format!("Bearer {}", token.expose()))
                .map_err(|_| invalid("push.bearer_token", "not a valid header value"))?;
            headers.insert(header::AUTHORIZATION, value);
        } else if let Some((user, password)) = basic {
            let value = secret_value(&basic_authorization(user, password))
                .map_err(|_| invalid("push.basic_auth", "not a valid header value"))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        if let Some(tenant) = &settings.tenant {
            let value = HeaderValue::from_str(tenant)
                .map_err(|_| invalid("push.tenant", "not a valid header value"))?;
            headers.insert(HeaderName::from_static("x-scope-orgid"), value);
        }
        for (name, value) in &settings.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid("push.header", "not a valid header name"))?;
            let value = secret_value(value.expose())
                .map_err(|_| invalid("push.header", "not a valid header value"))?;
            headers.insert(name, value);
        }
        match settings.protocol {
            PushProtocol::Pyroscope => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/proto"),
                );
                headers.insert(
                    HeaderName::from_static("connect-protocol-version"),
                    HeaderValue::from_static("1"),
                );
            }
            PushProtocol::Otlp => {
                // OTLP/HTTP binary protobuf, gzip as the specification allows.
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
        }
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("stethoscope/", env!("CARGO_PKG_VERSION"))),
        );
        let host = HeaderValue::from_str(&endpoint.authority)
            .map_err(|_| invalid("push.url", "the host is not a valid header value"))?;
        headers.insert(header::HOST, host);
        #[cfg(feature = "push-tls")]
        let tls = if endpoint.tls {
            Some(super::tls::Connector::new(settings.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Client {
            endpoint,
            protocol: settings.protocol,
            headers,
            connect_timeout: settings.connect_timeout,
            timeout: settings.timeout,
            #[cfg(feature = "push-tls")]
            tls,
            conn: None,
        })
    }

    /// POSTs `body` (a `PushRequest`, or an OTLP export request); `Ok` on
    /// a 2xx answer (for OTLP, one that rejects no profile).
    pub(crate) async fn push(&mut self, body: Bytes) -> Result<(), Failure> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        match tokio::time::timeout_at(deadline, self.attempt(body)).await {
            Ok(Ok(answer)) => self.check_answer(&answer),
            Ok(Err(failure)) => Err(failure),
            Err(_) => {
                self.conn = None;
                Err(Failure::new(
                    Reason::Timeout,
                    format!("no answer within {:?}", self.timeout),
                ))
            }
        }
    }

    /// What a 2xx answer's body says: OTLP's partial success may reject
    /// the profile.
    fn check_answer(&self, answer: &[u8]) -> Result<(), Failure> {
        match self.protocol {
            PushProtocol::Pyroscope => Ok(()),
            #[cfg(feature = "push-otlp")]
            PushProtocol::Otlp => super::otlp::check_answer(answer)
                .map_err(|message| Failure::new(Reason::Rejected, message)),
            #[cfg(not(feature = "push-otlp"))]
            PushProtocol::Otlp => {
                let _ = answer;
                Ok(())
            }
        }
    }

    /// Closes the kept-alive connection, if any.
    pub(crate) fn disconnect(&mut self) {
        self.conn = None;
    }

    /// One request; the answer's body on a 2xx.
    async fn attempt(&mut self, body: Bytes) -> Result<Bytes, Failure> {
        let kept = self.conn.take().filter(Conn::usable);
        let reused = kept.is_some();
        let mut conn = match kept {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let response = match conn.send(self.request(body.clone())).await {
            Ok(response) => response,
            Err(_) if reused => {
                // The server closed the idle connection meanwhile: once
                // more, on a new one.
                drop(conn);
                conn = self.connect().await?;
                conn.send(self.request(body))
                    .await
                    .map_err(|e| Failure::new(Reason::Io, e.to_string()))?
            }
            Err(error) => return Err(Failure::new(Reason::Io, error.to_string())),
        };
        let status = response.status();
        let close = response
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        #[cfg(feature = "push-otlp")]
        let protobuf = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("protobuf"));
        let answer = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .map_err(|e| Failure::new(Reason::Io, format!("reading the answer: {e}")))?;
        if !close {
            self.conn = Some(conn);
        }
        if status.is_success() {
            Ok(answer)
        } else {
            #[cfg(feature = "push-otlp")]
            if protobuf {
                // An OTLP error in protobuf: google.rpc.Status.
                if let Some(message) = super::otlp::status_message(&answer) {
                    return Err(Failure::status(status, message.as_bytes()));
                }
            }
            Err(Failure::status(status, &answer))
        }
    }

    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        if let Ok(uri) = self.endpoint.path.parse() {
            *request.uri_mut() = uri;
        }
        *request.headers_mut() = self.headers.clone();
        request
    }

    /// Resolves, connects (and shakes hands) within the connect timeout.
    async fn connect(&mut self) -> Result<Conn, Failure> {
        let timeout = self.connect_timeout;
        let stream = tokio::time::timeout(timeout, self.open())
            .await
            .map_err(|_| {
                Failure::new(
                    Reason::Connect,
                    format!("no connection within {timeout:?}"),
                )
            })??;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::new(Reason::Io, e.to_string()))?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender, task })
    }

    async fn open(&self) -> Result<Box<dyn Stream>, Failure> {
        let (host, port) = (self.endpoint.host.as_str(), self.endpoint.port);
        let addrs: Vec<std::net::SocketAddr> = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![(ip, port).into()],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| Failure::new(Reason::Connect, format!("resolving {host}: {e}")))?
                .collect(),
        };
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(error) => last = Some(error),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            Failure::new(
                Reason::Connect,
                last.map_or_else(|| format!("{host} has no address"), |e| e.to_string()),
            )
        })?;
        let _ = tcp.set_nodelay(true);
        if !self.endpoint.tls {
            return Ok(Box::new(tcp));
        }
        #[cfg(feature = "push-tls")]
        if let Some(tls) = &self.tls {
            let stream = tls
                .connect(host, tcp)
                .await
                .map_err(|e| Failure::new(Reason::Tls, e.to_string()))?;
            return Ok(Box::new(stream));
        }
        Err(Failure::new(
            Reason::Tls,
            "https needs the push-tls feature",
        ))
    }
}

/// `Basic base64(user:password)`.
fn basic_authorization(user: &str, password: &Secret) -> String {
    use base64::Engine as _;
    let credentials = format!("{user}:{}", password.expose());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::endpoint::PUSH_PATH as PUSH_PATH_FOR_TESTS;

    #[test]
    fn statuses_map_to_reasons_and_retries() {
        for (status, reason, retry) in [
            (500, Reason::Server, true),
            (503, Reason::Server, true),
            (429, Reason::Throttled, true),
            (408, Reason::Timeout, true),
            (401, Reason::Unauthorized, true),
            (403, Reason::Unauthorized, true),
            (400, Reason::Rejected, false),
            (413, Reason::Rejected, false),
            (422, Reason::Rejected, false),
        ] {
            let failure = Failure::status(StatusCode::from_u16(status).unwrap(), b"");
            assert_eq!(failure.reason, reason, "{status}");
            assert_eq!(failure.reason.retryable(), retry, "{status}");
        }
        let connect_error =
            br#"{"code":"invalid_argument","message":"profile is too old\u0007"}"#;
        let failure = Failure::status(StatusCode::BAD_REQUEST, connect_error);
        assert_eq!(failure.message, "HTTP 400: profile is too old");
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }

    #[test]
    fn basic_auth_is_rfc_7617() {
        assert_eq!(
            basic_authorization("Aladdin", &Secret::new("open sesame")),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A server on 127.0.0.1:0 answering every request with `status` and
    /// `body`; counts connections and requests, keeps what it received.
    struct TestServer {
        addr: std::net::SocketAddr,
        connections: Arc<AtomicUsize>,
        requests: Arc<std::sync::Mutex<Vec<(String, HeaderMap, Bytes)>>>,
    }

    async fn serve(status: u16, body: &'static [u8]) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let r = Arc::clone(&r);
                    async move {
                        let (parts, incoming) = request.into_parts();
                        let bytes = incoming.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        r.lock().unwrap().push((parts.uri.path().to_owned(), parts.headers, bytes));
                        let mut response = hyper::Response::new(Full::new(Bytes::from_static(body)));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        TestServer {
            addr,
            connections,
            requests,
        }
    }

    fn client_for(addr: std::net::SocketAddr, timeout: Duration) -> Client {
        client_with(addr, timeout, PushProtocol::Pyroscope)
    }

    fn client_with(addr: std::net::SocketAddr, timeout: Duration, protocol: PushProtocol) -> Client {
        let settings = PushSettings::new(format!("http://{addr}"))
            .protocol(protocol)
            .tenant("t1")
            .timeout(timeout)
            .connect_timeout(timeout);
        let endpoint = settings.validate().unwrap();
        Client::new(&settings, endpoint).unwrap()
    }

    #[tokio::test]
    async fn a_push_is_a_connect_post_and_the_connection_is_kept() {
        let server = serve(200, b"").await;
        let mut client = client_for(server.addr, Duration::from_secs(5));
        for i in 0..3u8 {
            client.push(Bytes::from(vec![i; 10])).await.unwrap();
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 1, "kept alive");
        let requests = server.requests.lock().unwrap();
        assert_eq!(requests.len(), 3);
        let (path, headers, body) = &requests[2];
        assert_eq!(path, PUSH_PATH_FOR_TESTS);
        assert_eq!(headers.get(header::CONTENT_TYPE).unwrap(), "application/proto");
        assert_eq!(headers.get("x-scope-orgid").unwrap(), "t1");
        assert_eq!(body.as_ref(), &[2u8; 10]);
    }

    #[tokio::test]
    async fn refused_and_error_statuses_are_failures_with_their_reason() {
        // A bound socket that does not listen: connections are refused.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut client = client_for(socket.local_addr().unwrap(), Duration::from_secs(5));
        let failure = client.push(Bytes::from_static(b"x")).await.unwrap_err();
        assert_eq!(failure.reason, Reason::Connect, "{failure:?}");

        let server = serve(500, br#"{"code":"internal","message":"boom"}"#).await;
        let mut client = client_for(server.addr, Duration::from_secs(5));
        let failure = client.push(Bytes::from_static(b"x")).await.unwrap_err();
        assert_eq!(failure.reason, Reason::Server);
        assert_eq!(failure.message, "HTTP 500: boom");

        static BIG: [u8; 200_000] = [b'a'; 200_000];
        let server = serve(200, &BIG).await;
        let mut client = client_for(server.addr, Duration::from_secs(5));
        let failure = client.push(Bytes::from_static(b"x")).await.unwrap_err();
        assert_eq!(failure.reason, Reason::Io, "an answer over the cap: {failure:?}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_and_its_socket_is_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = client_for(addr, Duration::from_millis(300));
        let push = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let failure = client.push(Bytes::from_static(b"x")).await.unwrap_err();
            (failure, started.elapsed(), client)
        });
        // Accept, read the request, never answer.
        let (mut stream, _) = listener.accept().await.unwrap();
        let (failure, took, client) = push.await.unwrap();
        assert_eq!(failure.reason, Reason::Timeout);
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(client.conn.is_none());
        // The client's side is closed: the server reads the request, then
        // the end of the stream.
        let mut buffer = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut buffer),
        )
        .await;
        assert!(matches!(read, Ok(Ok(_))), "the socket was closed: {read:?}");
        assert!(buffer.starts_with(b"POST /push.v1.PusherService/Push HTTP/1.1"));
    }

    #[cfg(feature = "push-otlp")]
    #[tokio::test]
    async fn an_otlp_push_is_gzip_protobuf_and_a_partial_rejection_is_a_refusal() {
        let server = serve(200, b"").await;
        let mut client = client_with(server.addr, Duration::from_secs(5), PushProtocol::Otlp);
        client.push(Bytes::from_static(b"x")).await.unwrap();
        {
            let requests = server.requests.lock().unwrap();
            let (path, headers, _) = &requests[0];
            assert_eq!(path, crate::push::endpoint::OTLP_PATH);
            assert_eq!(headers.get(header::CONTENT_TYPE).unwrap(), "application/x-protobuf");
            assert_eq!(headers.get(header::CONTENT_ENCODING).unwrap(), "gzip");
            assert!(headers.get("connect-protocol-version").is_none());
        }
        // ExportProfilesServiceResponse{partial_success{rejected_profiles: 1,
        // error_message: "old"}}, as protobuf.
        static REJECTED: [u8; 9] = [0x0a, 0x07, 0x08, 0x01, 0x12, 0x03, b'o', b'l', b'd'];
        let server = serve(200, &REJECTED).await;
        let mut client = client_with(server.addr, Duration::from_secs(5), PushProtocol::Otlp);
        let failure = client.push(Bytes::from_static(b"x")).await.unwrap_err();
        assert_eq!(failure.reason, Reason::Rejected);
        assert!(failure.message.contains("old"), "{failure:?}");
        // The same answer means nothing to the Pyroscope protocol.
        let mut client = client_for(server.addr, Duration::from_secs(5));
        assert!(client.push(Bytes::from_static(b"x")).await.is_ok());
    }

    #[test]
    fn credentials_go_in_sensitive_headers() {
        let settings = PushSettings::new("http://u:url-pw@127.0.0.1:1/p")
            .tenant("team-a")
            .header("X-Api-Key", "k");
        let endpoint = settings.validate().unwrap();
        let client = Client::new(&settings, endpoint).unwrap();
        let auth = client.headers.get(header::AUTHORIZATION).unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth, &basic_authorization("u", &Secret::new("url-pw")));
        assert!(client.headers.get("x-api-key").unwrap().is_sensitive());
        assert_eq!(client.headers.get("x-scope-orgid").unwrap(), "team-a");
        assert_eq!(client.headers.get(header::HOST).unwrap(), "127.0.0.1:1");
        assert!(!format!("{client:?}").contains("url-pw"));
        let request = client.request(Bytes::from_static(b"x"));
        assert_eq!(request.uri().path(), "/p/push.v1.PusherService/Push");
        // A bearer token takes the place of basic authentication.
        let settings = settings.bearer_token("tok");
        let client = Client::new(&settings, settings.validate().unwrap()).unwrap();
        assert_eq!(client.headers.get(header::AUTHORIZATION).unwrap(), "Bearer tok");
    }
}
