//! Access control, limits and error shapes over a real socket.

use stethoscope::{Agent, Error};

use crate::support::*;

#[test]
fn token_is_enforced_on_the_wire() {
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .token("hunter2")
        .start()
        .unwrap();
    let addr = agent.local_addr();
    let refused = get(addr, "/debug/pprof/", None);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("x-go-pprof"), Some("1"));
    assert_eq!(get(addr, "/debug/pprof/", Some("wrong")).status, 401);
    assert_eq!(get(addr, "/debug/pprof/", Some("hunter2")).status, 200);
    let health = get(addr, "/health", None);
    assert_eq!(health.status, 200, "liveness needs no token");
    assert_eq!(health.json()["status"], "ok");
}

#[test]
fn a_client_outside_the_allowlist_gets_403_without_details() {
    let agent = Agent::builder()
        .listen("127.0.0.1:0")
        .allow("10.0.0.0/8")
        .start()
        .unwrap();
    let reply = get(agent.local_addr(), "/health", None);
    assert_eq!(reply.status, 403);
    let body = reply.json();
    assert_eq!(body["error"], "forbidden");
    assert!(
        !reply.text().contains("10.0.0.0"),
        "the allowlist is not disclosed"
    );
}

#[test]
fn non_loopback_bind_is_refused_without_a_token() {
    let refused = Agent::builder().listen("0.0.0.0:0").start();
    assert!(matches!(refused, Err(Error::InsecureBind { .. })));
    let with_token = Agent::builder().listen("0.0.0.0:0").token("t").start();
    assert!(with_token.is_ok(), "a token makes a wide bind acceptable");
    let explicit = Agent::builder()
        .listen("0.0.0.0:0")
        .allow_insecure_bind(true)
        .start();
    assert!(explicit.is_ok());
}

#[test]
fn bad_parameters_get_400_that_go_tool_pprof_prints() {
    let agent = start_agent();
    let addr = agent.local_addr();
    for path in [
        "/debug/pprof/profile?seconds=0",
        "/debug/pprof/profile?seconds=301",
        "/debug/pprof/profile?seconds=ten",
        "/debug/pprof/profile?hz=0",
        "/debug/pprof/profile?hz=100000",
        "/debug/pprof/profile?format=png",
    ] {
        let reply = get(addr, path, None);
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
        assert_eq!(reply.header("x-go-pprof"), Some("1"), "{path}");
        assert!(reply.text().contains("hint:"), "{path}: {}", reply.text());
    }
    let url = format!("http://{addr}/debug/pprof/profile?seconds=301");
    let (ok, _, stderr) = go_pprof(&["-top", &url]);
    assert!(!ok);
    assert!(
        stderr.contains("seconds=301 is out of range"),
        "go tool pprof shows the agent's message: {stderr}"
    );
}

#[test]
fn unknown_paths_and_index_over_the_wire() {
    let agent = start_agent();
    let addr = agent.local_addr();
    let missing = get(addr, "/debug/nothing-here", None);
    assert_eq!(missing.status, 404);
    let body = missing.json();
    assert!(body["error"].is_string() && body["hint"].is_string());
    let index = get(addr, "/debug/pprof/", None);
    assert_eq!(index.status, 200);
    assert!(index
        .text()
        .contains("<a href=\"profile?seconds=30\">profile</a>"));
}

/// Each configuration trap makes `start()` fail with a message that names
/// the setting and what is expected — never a panic, never a silently open
/// agent — and the documented `main` (returning `Box<dyn Error>`) shows that
/// message. Runs in child processes: the traps are environment variables.
#[test]
fn configuration_traps_fail_start_with_a_message() {
    const TRAP: &str = "STETHOSCOPE_E2E_TRAP";
    if !is_child() {
        for (var, value) in [
            ("STETHOSCOPE_MAX_PROFILE_SECONDS", "18446744073709551615"),
            ("STETHOSCOPE_MAX_PROFILE_SECONDS", "0"),
            ("STETHOSCOPE_ALLOW", ""),
            ("STETHOSCOPE_ALLOW", ","),
            ("STETHOSCOPE_ALLOW", "10.0.0.0/33"),
            ("STETHOSCOPE_ADDR", "0.0.0.0:0"),
            ("STETHOSCOPE_TOKEN", " "),
        ] {
            in_child(
                "access::configuration_traps_fail_start_with_a_message",
                &[(var, value.as_ref()), (TRAP, var.as_ref())],
            );
        }
        return;
    }
    let var = std::env::var(TRAP).unwrap();
    let started = Agent::builder()
        .listen("127.0.0.1:0")
        .with_default_env()
        .start();
    let error = started.expect_err("the trap must fail start()");
    // What `main() -> Result<(), Box<dyn Error>>` prints after `Error: `.
    let shown = format!("{:?}", Box::<dyn std::error::Error>::from(error));
    eprintln!("{var}: {shown}");
    let named = shown.contains(&var) || (var == "STETHOSCOPE_ADDR" && shown.contains("token"));
    assert!(named, "the message names the setting: {shown}");
    assert!(
        !shown.contains("InvalidEnv") && !shown.contains("InsecureBind {"),
        "a message, not a type dump: {shown}"
    );
}
