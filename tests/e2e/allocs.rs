//! Allocation profiles (`/debug/pprof/allocs?seconds=N`) and labels on
//! heap samples, checked against allocations of known sizes.
//!
//! Each test runs in a child process of its own, so that the window counts
//! nothing but the workload (and the agent's own few allocations).

use std::hint::black_box;
use std::time::Duration;

use crate::support::*;

const MIB: f64 = 1024.0 * 1024.0;

/// Small objects: 4 KiB (about one in sixteen is sampled at the tests'
/// 64 KiB interval, each standing for ~16.5).
const SMALL: usize = 4 << 10;
/// Large objects: 256 KiB (almost always sampled).
const LARGE: usize = 256 << 10;
/// Rounds of the 2:1 workload: each allocates 2 MiB in small objects and
/// 1 MiB in large ones, freeing each at once.
const ROUNDS: usize = 128;

#[inline(never)]
fn churn_small_objects(bytes: usize) -> u64 {
    let mut sum = 0u64;
    for _ in 0..bytes / SMALL {
        let block = black_box(vec![1u8; SMALL]);
        sum += u64::from(block[SMALL - 1]);
    }
    sum
}

#[inline(never)]
fn churn_large_objects(bytes: usize) -> u64 {
    let mut sum = 0u64;
    for _ in 0..bytes / LARGE {
        let block = black_box(vec![1u8; LARGE]);
        sum += u64::from(block[LARGE - 1]);
    }
    sum
}

/// The allocation windows open on the agent now.
fn open_windows(addr: std::net::SocketAddr) -> u64 {
    get(addr, "/debug/heap/profiling", None).json()["allocation_windows"]
        .as_u64()
        .unwrap_or(0)
}

/// Estimated bytes of the stacks through `function` in a JSON profile.
fn space_through(doc: &serde_json::Value, function: &str, value: &str) -> f64 {
    doc["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .filter(|s| {
            s["frames"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|f| f.as_str().is_some_and(|f| f.contains(function)))
            })
        })
        .map(|s| s["values"][value].as_f64().unwrap_or(0.0))
        .sum()
}

/// One label value's `alloc_space` / `inuse_space` in a `by=` JSON table.
fn by_value(doc: &serde_json::Value, value: &str) -> f64 {
    let index = doc["default_value"].as_u64().unwrap_or(1) as usize;
    doc["values"]
        .as_array()
        .expect("values")
        .iter()
        .find(|v| v["value"] == value)
        .and_then(|v| v["values"][index].as_f64())
        .unwrap_or(0.0)
}

/// A 2:1 byte rate in 4 KiB and 256 KiB objects, all freed at once: the
/// window ranks them 67/33 ± 5 pp and its total is the bytes allocated
/// ± 20 %; `go tool pprof` (a second window, shared) names the heavier
/// first; the live heap shows neither.
///
/// Samples needed: 384 MiB at one sample per 64 KiB is ~4,100 samples of
/// small objects and ~510 of large ones; the small side's estimate then
/// has a relative error of about 1.6 % (1/√4100), its share of about
/// 0.6 pp — the 5 pp bound is 8σ away.
#[test]
fn a_known_two_to_one_churn_ranks_67_33_and_adds_up() {
    if !is_child() {
        let _quiet = profiler_lock();
        let _heap = heap_lock();
        in_child(
            "allocs::a_known_two_to_one_churn_ranks_67_33_and_adds_up",
            &[],
        );
        return;
    }
    let agent = start_agent();
    let addr = agent.local_addr();
    let pprof_url = format!("http://{addr}/debug/pprof/allocs?seconds=10");
    let go =
        std::thread::spawn(move || go_pprof(&["-top", "-sample_index=alloc_space", &pprof_url]));
    let json =
        std::thread::spawn(move || get(addr, "/debug/pprof/allocs?seconds=10&format=json", None));
    assert!(
        wait_until(Duration::from_secs(60), || open_windows(addr) == 2),
        "the two windows did not open"
    );
    let (small_bytes, large_bytes) = (ROUNDS * (2 << 20), ROUNDS * (1 << 20));
    let mut sum = 0;
    for _ in 0..ROUNDS {
        sum += churn_small_objects(2 << 20);
        sum += churn_large_objects(1 << 20);
    }
    black_box(sum);
    assert_eq!(
        open_windows(addr),
        2,
        "the workload outlasted the windows: this machine is too slow for a 10 s window"
    );
    let reply = json.join().expect("the JSON window");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let doc = reply.json();
    let kinds: Vec<&str> = doc["sample_types"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["alloc_objects", "alloc_space"],
        "{}",
        doc["sample_types"]
    );
    let small = space_through(&doc, "churn_small_objects", "alloc_space");
    let large = space_through(&doc, "churn_large_objects", "alloc_space");
    let total = doc["totals"]["alloc_space"].as_f64().unwrap_or(0.0);
    let allocated = (small_bytes + large_bytes) as f64;
    let share = small / (small + large);
    eprintln!(
        "allocated {:.0} MiB ({:.0} small, {:.0} large); window: small {:.1} MiB, large {:.1} MiB ({:.1} % small), total {:.1} MiB; {}",
        allocated / MIB,
        small_bytes as f64 / MIB,
        large_bytes as f64 / MIB,
        small / MIB,
        large / MIB,
        share * 100.0,
        total / MIB,
        doc["comments"][0]
    );
    assert!(
        (share - 2.0 / 3.0).abs() <= 0.05,
        "small objects' share {:.1} %, expected 66.7 ± 5",
        share * 100.0
    );
    assert!(
        (total / allocated - 1.0).abs() <= 0.20,
        "the window's total {:.1} MiB for {:.1} MiB allocated",
        total / MIB,
        allocated / MIB
    );
    // The allocator's own frames are gone: the workload is the leaf.
    let leaves: Vec<&str> = doc["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["frames"].to_string().contains("churn_"))
        .filter_map(|s| s["frames"][0].as_str())
        .collect();
    assert!(
        leaves
            .iter()
            .all(|leaf| !leaf.contains("_rjem_") && !leaf.contains("__rust_alloc")),
        "{leaves:?}"
    );
    // go tool pprof read the second window: the heavier function first.
    let (ok, top, stderr) = go.join().expect("go tool pprof");
    assert!(ok, "{stderr}");
    let position = |name: &str| top.lines().position(|line| line.contains(name));
    let (heavy, light) = (
        position("churn_small_objects"),
        position("churn_large_objects"),
    );
    assert!(
        heavy.is_some() && light.is_some() && heavy < light,
        "go tool pprof -top:\n{top}"
    );
    // Freed at once: the live heap holds neither.
    let live = get(addr, "/debug/pprof/heap?format=json", None).json();
    for function in ["churn_small_objects", "churn_large_objects"] {
        let held = space_through(&live, function, "inuse_space");
        assert!(held < 2.0 * MIB, "{function} holds {:.1} MiB", held / MIB);
    }
    // Both windows closed, and their table with them.
    assert_eq!(open_windows(addr), 0);
}

/// Route handlers under the RED layer allocate 2:1 per request (and one
/// pair also keeps 2:1): `by=route` ranks the routes 67/33 ± 5 pp in the
/// allocation window, and the heap diff says which route holds the growth.
///
/// Samples: 64 requests to each route allocate 192 MiB (~3,000 samples);
/// the kept memory, 96 MiB in 64 KiB chunks (~1,000 samples).
#[test]
fn routes_allocating_two_to_one_rank_67_33_by_route() {
    if !is_child() {
        let _quiet = profiler_lock();
        let _heap = heap_lock();
        in_child(
            "allocs::routes_allocating_two_to_one_rank_67_33_by_route",
            &[],
        );
        return;
    }
    use std::sync::Mutex;
    static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    const CHUNK: usize = 64 << 10;
    #[inline(never)]
    fn allocate_chunks(count: usize, keep: bool) -> String {
        let chunks: Vec<Vec<u8>> = (0..count).map(|_| black_box(vec![7u8; CHUNK])).collect();
        let len = chunks.len();
        if keep {
            KEPT.lock().unwrap().extend(chunks);
        }
        len.to_string()
    }
    let runtime = service_runtime();
    let agent = runtime.block_on(async { start_agent() });
    let addr = agent.local_addr();
    let app = axum::Router::new()
        .route(
            "/heavy",
            axum::routing::get(|| async { allocate_chunks(32, false) }),
        )
        .route(
            "/light",
            axum::routing::get(|| async { allocate_chunks(16, false) }),
        )
        .route(
            "/keep-more",
            axum::routing::get(|| async { allocate_chunks(32, true) }),
        )
        .route(
            "/keep-less",
            axum::routing::get(|| async { allocate_chunks(16, true) }),
        )
        .layer(agent.red_layer());
    let service = runtime.block_on(serve(app));

    let window = std::thread::spawn(move || {
        get(
            addr,
            "/debug/pprof/allocs?seconds=10&format=json&by=route",
            None,
        )
    });
    assert!(
        wait_until(Duration::from_secs(60), || open_windows(addr) == 1),
        "the window did not open"
    );
    let client = client();
    for _ in 0..64 {
        for route in ["/heavy", "/light"] {
            let reply = client.get(&format!("http://{service}{route}")).call();
            assert!(reply.is_ok(), "{route}: {reply:?}");
        }
    }
    assert_eq!(open_windows(addr), 1, "the requests outlasted the window");
    let reply = window.join().expect("the window");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let doc = reply.json();
    let (heavy, light) = (by_value(&doc, "/heavy"), by_value(&doc, "/light"));
    let share = heavy / (heavy + light);
    eprintln!(
        "by=route: /heavy {:.1} MiB, /light {:.1} MiB ({:.1} % heavy; 128 and 64 MiB allocated)",
        heavy / MIB,
        light / MIB,
        share * 100.0
    );
    assert!(
        (share - 2.0 / 3.0).abs() <= 0.05,
        "/heavy's share {:.1} %, expected 66.7 ± 5: {doc}",
        share * 100.0
    );

    // The live heap: which route's requests hold the growth.
    let base = send(addr, "POST", "/debug/heap/snapshots", None).json()["id"]
        .as_u64()
        .expect("snapshot id");
    for _ in 0..32 {
        for route in ["/keep-more", "/keep-less"] {
            let reply = client.get(&format!("http://{service}{route}")).call();
            assert!(reply.is_ok(), "{route}: {reply:?}");
        }
    }
    let diff = get(
        addr,
        &format!("/debug/heap/diff?base={base}&target=now&format=json&by=route"),
        None,
    );
    assert_eq!(diff.status, 200, "{}", diff.text());
    let diff = diff.json();
    let (more, less) = (by_value(&diff, "/keep-more"), by_value(&diff, "/keep-less"));
    let share = more / (more + less);
    eprintln!(
        "heap diff by=route: /keep-more {:.1} MiB, /keep-less {:.1} MiB ({:.1} %; 64 and 32 MiB kept)",
        more / MIB,
        less / MIB,
        share * 100.0
    );
    assert!(
        (share - 2.0 / 3.0).abs() <= 0.05,
        "/keep-more's share of the growth {:.1} %, expected 66.7 ± 5: {diff}",
        share * 100.0
    );
    assert!(
        ((more + less) / (96.0 * MIB) - 1.0).abs() <= 0.20,
        "labelled growth {:.1} MiB for 96 MiB kept",
        (more + less) / MIB
    );
    // The live heap itself, by route.
    let live = get(addr, "/debug/pprof/heap?format=json&by=route", None).json();
    assert!(
        by_value(&live, "/keep-more") > by_value(&live, "/keep-less"),
        "{live}"
    );
    drop(runtime);
}

/// `/debug/pprof/allocs` without `seconds` answers at once with the live
/// heap (what Grafana Alloy and Parca scrape); `POST /debug/profiles`
/// with `kind=allocs` keeps an allocation profile that renders in every
/// format; bad parameters are 400s.
#[test]
fn scrapes_kept_profiles_and_bad_parameters() {
    let _heap = heap_lock();
    let agent = start_agent();
    let addr = agent.local_addr();
    let url = format!("http://{addr}/debug/pprof/allocs");
    let (ok, raw, stderr) = go_pprof(&["-raw", &url]);
    assert!(ok, "{stderr}");
    assert!(raw.contains("inuse_space/bytes"), "{raw}");

    // Something to count: churn on another thread during the window.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churning = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(30)
            {
                black_box(churn_large_objects(8 << 20));
            }
        })
    };
    let kept = send(addr, "POST", "/debug/profiles?kind=allocs&seconds=1", None);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churning.join().expect("churn");
    assert_eq!(kept.status, 201, "{}", kept.text());
    assert!(kept.json()["samples"].as_u64() > Some(0), "{}", kept.text());
    let kept = kept.json();
    assert_eq!(kept["mode"], "allocs", "{kept}");
    let url = kept["url"].as_str().expect("url").to_owned();
    for (format, needle) in [
        ("svg", "churn_large_objects"),
        ("text", "By your code"),
        ("folded", "churn_large_objects"),
        ("json", "alloc_space"),
    ] {
        let reply = get(addr, &format!("{url}?format={format}"), None);
        assert_eq!(reply.status, 200, "{format}: {}", reply.text());
        let body = reply.text();
        assert!(body.contains(needle), "{format}: {body}");
    }
    let (ok, raw, stderr) = go_pprof(&["-raw", &format!("http://{addr}{url}?format=pprof")]);
    assert!(ok, "{stderr}");
    assert!(
        raw.contains("alloc_objects/count") && raw.contains("alloc_space/bytes"),
        "{raw}"
    );
    for bad in [
        "/debug/pprof/allocs?seconds=0",
        "/debug/pprof/allocs?seconds=100000",
        "/debug/pprof/allocs?seconds=1&format=gif",
        "/debug/pprof/allocs?seconds=1&format=svg&by=route",
    ] {
        let reply = get(addr, bad, None);
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
    }
    let reply = send(addr, "POST", "/debug/profiles?kind=heap", None);
    assert_eq!(reply.status, 400, "{}", reply.text());
}
