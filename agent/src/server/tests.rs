//! The router and the accept loop, driven without and with a socket.

use super::*;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::StatusCode;
use axum::http::{header, Request as HttpRequest};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use tower::ServiceExt;

fn state(config: Config) -> AppState {
    AppState {
        config: Arc::new(config),
        caps: Capabilities::for_tests(),
        started: Instant::now(),
        host_runtime: false,
        connections: Arc::new(ConnectionTable::new(64)),
        profiles: ProfileSlots::new(16),
    }
}

async fn call(app: Router, uri: &str, auth: Option<&str>, peer: &str) -> (StatusCode, Response) {
    let mut request = HttpRequest::get(uri);
    if let Some(value) = auth {
        request = request.header(header::AUTHORIZATION, value);
    }
    let peer: SocketAddr = peer.parse().unwrap();
    let response = app
        .layer(MockConnectInfo(peer))
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    (response.status(), response)
}

async fn json(response: Response) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn health_answers_json() {
    let (status, response) = call(
        router(state(Config::default())),
        "/health",
        None,
        "127.0.0.1:1",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body = json(response).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["host_runtime"], "unavailable");
}

#[tokio::test]
async fn unknown_paths_get_json_404_and_pprof_paths_get_text() {
    let app = router(state(Config::default()));
    let (status, response) = call(app.clone(), "/nope", None, "127.0.0.1:1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = json(response).await;
    assert!(body["error"].as_str().unwrap().contains("/nope"));
    assert!(body["hint"].is_string());
    let (status, response) = call(app, "/debug/pprof/nope", None, "127.0.0.1:1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["x-go-pprof"], "1");
    assert!(response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
}

#[tokio::test]
async fn token_is_required_except_for_health() {
    let config = Config {
        token: Some(crate::config::BearerToken::new("s3cret").unwrap()),
        ..Config::default()
    };
    let app = router(state(config));
    let peer = "127.0.0.1:1";
    let (status, response) = call(app.clone(), "/debug/pprof/", None, peer).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["x-go-pprof"], "1");
    assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    let (status, _) = call(app.clone(), "/debug/pprof/", Some("Bearer wrong"), peer).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(app.clone(), "/debug/pprof/", Some("Basic s3cret"), peer).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(app.clone(), "/debug/pprof/", Some("Bearer s3cret"), peer).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(app.clone(), "/debug/pprof/", Some("bearer s3cret"), peer).await;
    assert_eq!(status, StatusCode::OK);
    let (status, response) = call(app.clone(), "/health", None, peer).await;
    assert_eq!(status, StatusCode::OK);
    let anonymous = json(response).await;
    assert_eq!(
        anonymous,
        serde_json::json!({"status": "ok"}),
        "no details without the token"
    );
    let (_, response) = call(app, "/health", Some("Bearer s3cret"), peer).await;
    assert!(json(response).await["pid"].is_number());
}

#[tokio::test]
async fn allowlist_refuses_other_addresses_with_403() {
    let config = Config {
        allow: vec!["10.0.0.0/8".parse().unwrap()],
        ..Config::default()
    };
    let app = router(state(config));
    let (status, response) = call(app.clone(), "/health", None, "127.0.0.1:1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let body = json(response).await;
    assert_eq!(body["error"], "forbidden");
    let (status, _) = call(app, "/health", None, "10.2.3.4:1").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_profile_parameters_get_400_in_go_style() {
    let app = router(state(Config {
        max_profile_seconds: 60,
        ..Config::default()
    }));
    for uri in [
        "/debug/pprof/profile?seconds=0",
        "/debug/pprof/profile?seconds=61",
        "/debug/pprof/profile?hz=5000",
        "/debug/pprof/profile?format=bmp",
        "/debug/pprof/flamegraph?seconds=x",
    ] {
        let (status, response) = call(app.clone(), uri, None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(response.headers()["x-go-pprof"], "1");
        let text = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("hint:"), "{text}");
    }
}

#[tokio::test]
async fn index_lists_the_profiles() {
    let (status, response) = call(
        router(state(Config::default())),
        "/debug/pprof/",
        None,
        "127.0.0.1:1",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains("href=\"profile?seconds=30\""));
    assert!(html.contains("flamegraph"));
    for link in [
        "href=\"heap\"",
        "href=\"allocs?seconds=10\"",
        "../heap/snapshots",
        "../use",
        "../red",
    ] {
        assert!(html.contains(link), "{link} missing from the index");
    }
    // The unit-test binary does not allocate through jemalloc: the
    // heap row says why instead of a state.
    assert!(html.contains("global allocator"), "{html}");
}

#[tokio::test]
async fn symbol_endpoint_speaks_go_protocol() {
    let app = router(state(Config::default())).layer(MockConnectInfo(
        "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
    ));
    let probe = app
        .clone()
        .oneshot(
            HttpRequest::get("/debug/pprof/symbol")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = probe.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"num_symbols: 1\n");

    let here = symbol_endpoint_speaks_go_protocol as *const () as usize as u64;
    // `/symbolz`: where go tool pprof asks for profiles fetched from paths
    // outside /debug/pprof/.
    for path in ["/debug/pprof/symbol", "/symbolz"] {
        let body = format!("{here:#x}+0x10");
        let answer = app
            .clone()
            .oneshot(HttpRequest::post(path).body(Body::from(body)).unwrap())
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        let text = answer.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        let line = text.lines().next().unwrap_or_default();
        assert!(line.starts_with(&format!("{here:#x} ")), "{text}");
        assert!(
            line.contains("symbol_endpoint_speaks_go_protocol"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1, "unknown addresses are left out");
    }

    let bad = app
        .oneshot(
            HttpRequest::post("/debug/pprof/symbol")
                .body(Body::from("zzz"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn heap_endpoints_answer_501_with_the_fix_without_jemalloc() {
    // The unit-test binary does not use jemalloc as its allocator.
    let app = router(state(Config::default()));
    for uri in [
        "/debug/pprof/heap",
        "/debug/pprof/allocs",
        "/debug/pprof/allocs?seconds=1",
        "/debug/pprof/allocs?seconds=1&format=text&by=route",
        "/debug/heap/stats",
        "/debug/heap/profiling",
        "/debug/heap/snapshots",
        "/debug/heap/snapshots/9",
        "/debug/heap/diff?base=1",
    ] {
        let (status, response) = call(app.clone(), uri, None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{uri}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("heap_profiling!"), "{uri}: {text}");
    }
    for (method, uri, body) in [
        ("POST", "/debug/heap/snapshots", ""),
        ("POST", "/debug/profiles?kind=allocs&seconds=1", ""),
        ("DELETE", "/debug/heap/snapshots/1", ""),
        ("PUT", "/debug/heap/profiling", r#"{"active":false}"#),
    ] {
        let response = app
            .clone()
            .layer(MockConnectInfo(
                "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
            ))
            .oneshot(
                HttpRequest::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NOT_IMPLEMENTED,
            "{method} {uri}"
        );
    }
    let (status, _) = call(app.clone(), "/debug/heap/snapshots/x", None, "127.0.0.1:1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        app.clone(),
        "/debug/heap/diff?target=now",
        None,
        "127.0.0.1:1",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "base is required");
    for uri in [
        "/debug/pprof/allocs?seconds=0",
        "/debug/pprof/allocs?seconds=1&format=svg&by=route",
        "/debug/heap/diff?base=1&group=route&format=svg",
    ] {
        let (status, _) = call(app.clone(), uri, None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
    }
}

#[tokio::test]
async fn wrong_method_gets_405_json() {
    let app = router(state(Config::default())).layer(MockConnectInfo(
        "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
    ));
    let response = app
        .oneshot(HttpRequest::post("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

async fn send(app: Router, request: HttpRequest<Body>) -> Response {
    app.layer(MockConnectInfo(
        "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
    ))
    .oneshot(request)
    .await
    .unwrap()
}

async fn text(response: Response) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn head_answers_without_running_a_profile() {
    let app = router(state(Config::default()));
    for uri in [
        "/debug/pprof/profile?seconds=30",
        "/debug/pprof/flamegraph?seconds=30",
    ] {
        let started = Instant::now();
        let response = send(
            app.clone(),
            HttpRequest::head(uri).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{uri} ran a profile"
        );
        assert!(response.headers().contains_key(header::CONTENT_DISPOSITION));
    }
    let bad = send(
        app,
        HttpRequest::head("/debug/pprof/profile?seconds=0")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        bad.status(),
        StatusCode::BAD_REQUEST,
        "HEAD validates like GET"
    );
}

#[tokio::test]
async fn rejections_use_the_agents_error_shape() {
    let app = router(state(Config::default()));
    // A path segment that is not UTF-8.
    let response = send(
        app.clone(),
        HttpRequest::get("/debug/heap/snapshots/%FF")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = json(response).await;
    assert!(body["hint"].is_string(), "{body}");
    // A body over the limit, announced or not.
    for announced in [true, false] {
        let big = vec![b'0'; 10 << 20];
        let mut request = HttpRequest::put("/debug/heap/profiling");
        if !announced {
            request = request.header(header::TRANSFER_ENCODING, "chunked");
        }
        let response = send(app.clone(), request.body(Body::from(big)).unwrap()).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = json(response).await;
        assert!(body["hint"].as_str().unwrap().contains("65536"), "{body}");
    }
    // A symbol request body that is not UTF-8: Go-style text.
    let response = send(
        app.clone(),
        HttpRequest::post("/debug/pprof/symbol")
            .body(Body::from(vec![0xff, 0xfe, 0x30]))
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["x-go-pprof"], "1");
    assert!(text(response).await.contains("hint:"));
}

#[tokio::test]
async fn the_profiling_toggle_takes_exactly_one_object() {
    let app = router(state(Config::default()));
    for body in [
        "[true]",
        "null",
        "true",
        "\"active\"",
        r#"{"active":"yes"}"#,
        r#"{"active":true,"extra":1}"#,
        "{}",
        "{",
    ] {
        let response = send(
            app.clone(),
            HttpRequest::put("/debug/heap/profiling")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let text = text(response).await;
        assert!(
            !text.contains("ProfilingToggle") && !text.contains("struct"),
            "{text}"
        );
        assert!(text.contains("hint"), "{text}");
    }
}

#[tokio::test]
async fn profiles_beyond_the_cap_get_429_with_retry_after() {
    let state = state(Config::default());
    let held: Vec<_> = (0..16)
        .map(|_| state.profiles.acquire(Duration::from_secs(20)).unwrap())
        .collect();
    let response = send(
        router(state),
        HttpRequest::get("/debug/pprof/profile?seconds=1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((15..=20).contains(&retry), "{retry}");
    drop(held);
}

#[cfg(feature = "spans")]
async fn put(app: Router, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let response = app
        .layer(MockConnectInfo(
            "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
        ))
        .oneshot(
            HttpRequest::put(uri)
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
        .unwrap();
    (response.status(), json(response).await)
}

#[cfg(feature = "spans")]
#[tokio::test]
// The guard serializes whole tests, each on its own runtime and thread.
#[allow(clippy::await_holding_lock)]
async fn log_level_reads_changes_reverts_and_rejects_bad_directives() {
    use tracing_subscriber::layer::SubscriberExt;
    // Reloading rebuilds tracing's process-wide interest cache.
    let _serial = crate::spans::tracing_test_lock();

    let unwired = router(state(Config::default()));
    let (status, response) = call(unwired.clone(), "/debug/log-level", None, "127.0.0.1:1").await;
    assert_eq!(status, StatusCode::OK);
    let body = json(response).await;
    assert_eq!(body["installed"], false);
    assert!(body["hint"].as_str().unwrap().contains("log_filter"));
    let (status, _) = put(unwired, "/debug/log-level", "debug").await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);

    let (filter, level) = crate::spans::log_filter("info").unwrap();
    // Kept alive (not installed): the filter is part of a subscriber.
    let _subscriber = tracing_subscriber::registry().with(filter);
    let mut with_level = state(Config::default());
    with_level.caps.log_level = Some(level.clone());
    let app = router(with_level);
    let (_, response) = call(app.clone(), "/debug/log-level", None, "127.0.0.1:1").await;
    let body = json(response).await;
    assert_eq!(body["directive"], "info");
    assert_eq!(body["origin"], "startup");
    assert_eq!(body["active"], true);
    assert!(body["set_at"].as_str().unwrap().ends_with('Z'));
    assert!(body["revert_at"].is_null());

    let (status, body) = put(app.clone(), "/debug/log-level", "info,my_crate=lol").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("my_crate=lol"), "{body}");
    assert!(
        body["hint"].as_str().unwrap().contains("RUST_LOG"),
        "{body}"
    );
    assert_eq!(level.status().directive, "info", "unchanged");
    let (status, _) = put(app.clone(), "/debug/log-level?ttl=3d", "debug").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = put(
        app.clone(),
        "/debug/log-level?ttl=200ms",
        "info,my_crate=debug",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["directive"], "info,my_crate=debug");
    assert_eq!(body["origin"], "api");
    assert_eq!(body["previous"], "info");
    assert_eq!(body["revert_to"], "info");
    assert!(body["revert_in_s"].as_f64().unwrap() <= 0.2);
    let (status, body) = put(
        app.clone(),
        "/debug/log-level",
        r#"{"directive": "warn", "ttl": "1h"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["revert_to"], "info",
        "the first temporary change's base"
    );
    let (_, body) = put(app.clone(), "/debug/log-level?ttl=100ms", "debug").await;
    assert_eq!(body["revert_to"], "info");
    for _ in 0..200 {
        if level.status().directive == "info" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, response) = call(app, "/debug/log-level", None, "127.0.0.1:1").await;
    let body = json(response).await;
    assert_eq!(body["directive"], "info", "{body}");
    assert_eq!(body["origin"], "startup");
}

#[cfg(feature = "spans")]
#[tokio::test]
// The guard serializes whole tests, each on its own runtime and thread.
#[allow(clippy::await_holding_lock)]
async fn spans_report_json_and_an_aligned_text_table() {
    use tracing_subscriber::layer::SubscriberExt;
    let _serial = crate::spans::tracing_test_lock();

    let unwired = router(state(Config::default()));
    let (status, response) = call(unwired, "/debug/spans", None, "127.0.0.1:1").await;
    assert_eq!(status, StatusCode::OK);
    let body = json(response).await;
    assert_eq!(body["installed"], false);
    assert!(body["hint"]
        .as_str()
        .unwrap()
        .contains("AgentBuilder::spans"));

    let timings = crate::spans::SpanTimings::with_settings(
        crate::spans::SpanSettings::default().slow_threshold(Duration::from_millis(5)),
    );
    let mut wired = state(Config::default());
    wired.caps.spans = Some(timings.clone());
    let app = router(wired);
    let (_, response) = call(app.clone(), "/debug/spans", None, "127.0.0.1:1").await;
    assert_eq!(
        json(response).await["installed"],
        false,
        "layer not in a subscriber"
    );

    let subscriber = tracing_subscriber::registry().with(timings.layer());
    tracing::subscriber::with_default(subscriber, || {
        let _request = tracing::info_span!("request").entered();
        for i in 0..3u64 {
            let _q = tracing::info_span!("a_rather_long_span_name", i, table = "items").entered();
            std::thread::sleep(Duration::from_millis(6));
        }
        drop(tracing::info_span!("q", error = "boom").entered());
    });
    let (status, response) = call(app.clone(), "/debug/spans", None, "127.0.0.1:1").await;
    assert_eq!(status, StatusCode::OK);
    let body = json(response).await;
    assert_eq!(body["installed"], true);
    assert_eq!(body["slow_threshold_ms"], 5.0);
    let spans = body["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 3);
    assert_eq!(spans[0]["name"], "request", "most time first: {body}");
    let long = spans
        .iter()
        .find(|s| s["name"] == "a_rather_long_span_name")
        .unwrap();
    assert_eq!(long["count"], 3);
    assert!(long["total"]["p50_ms"].as_f64().unwrap() >= 6.0);
    assert!(long["busy"]["p99_ms"].is_number());
    let q = spans.iter().find(|s| s["name"] == "q").unwrap();
    assert_eq!(
        (q["errors"].as_u64(), q["error_ratio"].as_f64()),
        (Some(1), Some(1.0))
    );
    let slowest = body["slowest"].as_array().unwrap();
    let slow = slowest
        .iter()
        .find(|s| s["name"] == "a_rather_long_span_name")
        .unwrap();
    assert_eq!(slow["fields"]["table"], "items");
    assert_eq!(slow["parents"][0], "request");
    assert!(slow["started_at"].as_str().unwrap().ends_with('Z'));

    let (status, response) = call(
        app.clone(),
        "/debug/spans?format=text&sort=count",
        None,
        "127.0.0.1:1",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(text.to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("SPAN "), "{text}");
    assert!(
        lines[1].starts_with("a_rather_long_span_name "),
        "sorted by count: {text}"
    );
    // Every row of the table puts TARGET in the same column (in
    // characters: µs is two bytes).
    let column = |line: &str, what: &str| line[..line.find(what).unwrap()].chars().count();
    let target = column(lines[0], "TARGET");
    for row in &lines[1..4] {
        assert_eq!(column(row, module_path!()), target, "{text}");
    }
    assert!(text.contains("table=items"), "{text}");
    assert!(text.contains("(in request)"), "{text}");

    let (_, response) = call(app.clone(), "/debug/spans?name=q", None, "127.0.0.1:1").await;
    let only_q = json(response).await;
    assert_eq!(only_q["spans"].as_array().unwrap().len(), 1, "{only_q}");
    assert_eq!(only_q["spans"][0]["name"], "q");
    assert!(only_q["slowest"].as_array().unwrap().is_empty());

    for bad in [
        "/debug/spans?format=svg",
        "/debug/spans?sort=x",
        "/debug/spans?limit=0",
    ] {
        let (status, response) = call(app.clone(), bad, None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(json(response).await["hint"].is_string());
    }
}
