//! The JSON every endpoint answers keeps its shape: every key path the
//! demo's endpoints returned when this fixture was recorded is still there
//! (new keys are welcome). Scripts and dashboards depend on these shapes
//! (docs/endpoints.md).
//!
//! Re-record after an intended change with
//! `STETHOSCOPE_RECORD_SHAPES=1 cargo test -p stethoscope-tests --test e2e shapes`.

use std::collections::BTreeSet;

use crate::support::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/fixtures/json_keys.txt");

/// Every key path of `value`: `a.b` for objects, `a[]` for array items,
/// `*` for keys that are data rather than names (statuses, a span's
/// recorded fields).
fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let data = key.chars().all(|c| c.is_ascii_digit()) || prefix.ends_with("fields");
                let key = if data { "*" } else { key.as_str() };
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                key_paths(child, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_endpoint_keeps_its_json_keys() {
    let _quiet = profiler_lock();
    let demo = DemoProcess::start();
    let (service, agent) = (demo.service, demo.agent);
    for i in 0..20 {
        let _ = get(service, &format!("/items/{i}"), None);
        let _ = get(service, "/flaky", None);
    }
    // Every 5th payments call takes 80 ms: at least one span is over the
    // 50 ms slow-span threshold, whatever the machine's timing.
    for cart in 1..=5 {
        let _ = get(service, &format!("/checkout/{cart}"), None);
    }
    // 300 ms past the stall threshold: time for the capture on a busy machine.
    assert_eq!(get(service, "/block?ms=400", None).status, 200);
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        get(agent, "/debug/runtime", None).json()["stalls"]
            .as_array()
            .is_some_and(|s| {
                s.iter()
                    .any(|s| s["ongoing"] == false && s["thread"].is_object())
            })
    }));
    assert_eq!(
        send(agent, "POST", "/debug/heap/snapshots", None).status,
        201
    );
    let _ = get(service, "/leak?mb=4", None);
    assert_eq!(
        send(agent, "POST", "/debug/heap/snapshots", None).status,
        201
    );
    let endpoints = [
        ("GET", "/health"),
        ("GET", "/debug/lag"),
        ("GET", "/debug/runtime"),
        ("GET", "/debug/use"),
        ("GET", "/debug/red"),
        ("GET", "/debug/spans"),
        ("GET", "/debug/log-level"),
        ("GET", "/debug/heap/stats"),
        ("GET", "/debug/heap/profiling"),
        ("GET", "/debug/heap/snapshots"),
        ("GET", "/debug/heap/snapshots/1"),
        ("POST", "/debug/heap/snapshots"),
        ("GET", "/debug/heap/diff?base=1&target=2&format=json"),
        ("GET", "/debug/pprof/heap?format=json"),
        ("GET", "/debug/pprof/profile?seconds=1&format=json"),
        ("POST", "/debug/profiles?seconds=1"),
        ("GET", "/debug/profiles"),
        ("GET", "/debug/dashboard.json"),
        ("GET", "/debug/doctor"),
        ("GET", "/debug/nothing-here"),
    ];
    let mut found = BTreeSet::new();
    for (method, path) in endpoints {
        let reply = send(agent, method, path, None);
        let mut keys = BTreeSet::new();
        key_paths(&reply.json(), "", &mut keys);
        assert!(
            !keys.is_empty(),
            "{method} {path}: no keys in {}",
            reply.text()
        );
        found.extend(keys.into_iter().map(|k| format!("{method} {path} {k}")));
    }
    if std::env::var_os("STETHOSCOPE_RECORD_SHAPES").is_some() {
        let text: Vec<&str> = found.iter().map(String::as_str).collect();
        std::fs::write(FIXTURE, text.join("\n") + "\n").expect("write the fixture");
        return;
    }
    let recorded = std::fs::read_to_string(FIXTURE).expect("the recorded key fixture");
    let missing: Vec<&str> = recorded
        .lines()
        .filter(|line| !line.is_empty() && !found.contains(*line))
        .collect();
    assert!(missing.is_empty(), "keys gone from the JSON: {missing:#?}");
}
