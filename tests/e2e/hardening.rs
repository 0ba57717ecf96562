//! The agent stays reachable for the clients it should serve, whatever the
//! clients it should not serve do: idle sockets, slow bodies, refused peers,
//! the maximum number of running profiles. Every flood is bounded in
//! sockets and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use stethoscope::Agent;

use crate::support::*;

/// Time an allowed client may wait for an answer during a flood.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// GET `path` on a fresh connection, bounded by [`ANSWER_WITHIN`] beyond
/// `work` (the time the request itself takes, e.g. a profile window).
fn timed_get(addr: SocketAddr, path: &str, token: Option<&str>, work: Duration) -> (u16, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(work + ANSWER_WITHIN * 2))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    let status = match stream.read_exact(&mut head) {
        Ok(()) => std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    };
    (status, started.elapsed())
}

/// Opens up to `count` connections to `addr` that send nothing, within
/// `limit`; keeps the ones still open.
fn idle_sockets(addr: SocketAddr, count: usize, limit: Duration) -> Vec<TcpStream> {
    let deadline = Instant::now() + limit;
    (0..count)
        .map_while(|_| (Instant::now() < deadline).then(|| TcpStream::connect(addr).ok()))
        .flatten()
        .collect()
}

#[test]
fn idle_sockets_cannot_lock_out_health_or_a_profile() {
    let _cpu = profiler_lock();
    let agent = start_agent();
    let addr = agent.local_addr();
    // More idle sockets than the agent keeps connections, opened as fast as
    // the loopback allows, and held.
    let flood = idle_sockets(addr, 400, Duration::from_secs(20));
    assert!(flood.len() >= 200, "only {} sockets opened", flood.len());
    for _ in 0..5 {
        let (status, took) = timed_get(addr, "/health", None, Duration::ZERO);
        assert_eq!(status, 200, "/health during the flood");
        assert!(took < ANSWER_WITHIN, "/health took {took:?}");
    }
    // A second wave, from another host, while a profile is asked for.
    let waves = std::thread::spawn(move || {
        sockets_from([127, 0, 0, 2], addr, 300, Duration::from_secs(20))
    });
    let (status, took) = timed_get(
        addr,
        "/debug/pprof/profile?seconds=1&format=text",
        None,
        Duration::from_secs(1),
    );
    assert_eq!(status, 200, "profile during the flood");
    assert!(
        took < Duration::from_secs(1) + ANSWER_WITHIN,
        "profile took {took:?}"
    );
    let second = waves.join().expect("second wave");
    let health = get(addr, "/health", None).json();
    let connections = &health["connections"];
    eprintln!(
        "after {} + {} idle sockets: {connections}",
        flood.len(),
        second.len()
    );
    assert!(
        connections["open"].as_u64().unwrap() <= connections["max"].as_u64().unwrap(),
        "{connections}"
    );
    assert!(
        connections["evicted_total"].as_u64().unwrap() > 0,
        "{connections}"
    );
}

#[test]
fn slow_bodies_get_408_and_cannot_lock_out_health() {
    let agent = start_agent();
    let addr = agent.local_addr();
    let started = Instant::now();
    // Each announces 100 bytes and sends 3.
    let mut slow: Vec<TcpStream> = (0..40)
        .filter_map(|_| {
            let mut stream = TcpStream::connect(addr).ok()?;
            stream
                .write_all(
                    b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0x1",
                )
                .ok()?;
            Some(stream)
        })
        .collect();
    assert_eq!(slow.len(), 40);
    for _ in 0..5 {
        let (status, took) = timed_get(addr, "/health", None, Duration::ZERO);
        assert_eq!(status, 200);
        assert!(
            took < ANSWER_WITHIN,
            "/health took {took:?} behind slow bodies"
        );
    }
    // The first slow client is told 408 once the body timeout has passed.
    let first = &mut slow[0];
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    let _ = first.read_to_string(&mut answer);
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("hint:"),
        "Go-style error on a pprof path: {answer}"
    );
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "408 after {waited:?}"
    );
}

#[test]
fn refused_peers_cannot_starve_an_allowed_client() {
    let _quiet = profiler_lock();
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .allow("127.0.0.1/32")
        .token("s3cret")
        .start()
        .unwrap();
    let addr = agent.local_addr();
    // 400 connections from 127.0.0.2, outside the allowlist, held open.
    let refused = sockets_from([127, 0, 0, 2], addr, 400, Duration::from_secs(20));
    assert!(refused.len() >= 200, "{}", refused.len());
    for path in ["/health", "/debug/pprof/"] {
        let (status, took) = timed_get(addr, path, Some("s3cret"), Duration::ZERO);
        assert_eq!(status, 200, "{path}");
        assert!(took < ANSWER_WITHIN, "{path} took {took:?}");
    }
    // The refused clients were told, and hold no connection of the agent's.
    // The first ones were answered; past the bound on refusals in flight,
    // later ones are closed without one.
    let mut first = refused.into_iter().next().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = first.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let health = get_with(addr, "/health", &[("Authorization", "Bearer s3cret")]).json();
    assert!(
        health["connections"]["refused_forbidden_total"]
            .as_u64()
            .unwrap()
            >= 200,
        "{health}"
    );
    assert!(
        health["connections"]["open"].as_u64().unwrap() <= 2,
        "{health}"
    );
}

#[test]
fn health_answers_while_the_most_profiles_run() {
    let _cpu = profiler_lock();
    let agent = start_agent();
    let addr = agent.local_addr();
    let max = stethoscope::config::DEFAULT_MAX_CONCURRENT_PROFILES;
    // Twice as many profile requests as the agent runs at once.
    let requests: Vec<_> = (0..2 * max)
        .map(|_| {
            std::thread::spawn(move || {
                let reply = get(addr, "/debug/pprof/profile?seconds=4&format=text", None);
                (reply.status, reply.header("retry-after").map(str::to_owned))
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || {
        get(addr, "/health", None).json()["profiles_running"].as_u64() == Some(max as u64)
    }));
    for _ in 0..3 {
        let (status, took) = timed_get(addr, "/health", None, Duration::ZERO);
        assert_eq!(status, 200);
        assert!(
            took < ANSWER_WITHIN,
            "/health took {took:?} with {max} profiles running"
        );
    }
    let answers: Vec<_> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == 429)
        .collect();
    assert_eq!(served, max, "{answers:?}");
    assert_eq!(refused.len(), max, "{answers:?}");
    assert!(refused.iter().all(|(_, retry)| retry
        .as_deref()
        .and_then(|r| r.parse::<u64>().ok())
        .is_some_and(|r| (1..=4).contains(&r))));
}

#[test]
fn head_on_profile_endpoints_answers_without_profiling() {
    let agent = start_agent();
    let addr = agent.local_addr();
    for path in [
        "/debug/pprof/profile?seconds=30",
        "/debug/pprof/flamegraph?seconds=30",
        "/debug/pprof/heap",
    ] {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(answer.contains("content-disposition"), "{path}: {answer}");
        assert!(
            started.elapsed() < ANSWER_WITHIN,
            "HEAD {path} ran the profile"
        );
    }
}

#[test]
fn large_reports_are_gzipped_for_clients_that_accept_it() {
    let _quiet = profiler_lock();
    let agent = start_agent();
    let addr = agent.local_addr();
    for path in [
        "/debug/pprof/heap?format=json",
        "/metrics",
        "/debug/use?format=json",
    ] {
        let plain = get(addr, path, None);
        let zipped = get_with(addr, path, &[("Accept-Encoding", "gzip")]);
        assert_eq!(zipped.status, 200, "{path}");
        assert_eq!(zipped.header("content-encoding"), Some("gzip"), "{path}");
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(zipped.body.as_slice())
            .read_to_end(&mut inflated)
            .expect("valid gzip");
        assert!(
            zipped.body.len() * 2 < inflated.len(),
            "{path}: {} → {}",
            inflated.len(),
            zipped.body.len()
        );
        assert!(plain.header("content-encoding").is_none(), "{path}");
        assert_eq!(
            inflated[..16],
            plain.body[..16],
            "{path}: the same document either way"
        );
    }
    // pprof is a gzip file itself: never encoded twice.
    let pprof = get_with(addr, "/debug/pprof/heap", &[("Accept-Encoding", "gzip")]);
    assert!(pprof.header("content-encoding").is_none());
    assert_eq!(&pprof.body[..2], &[0x1f, 0x8b]);
}
