//! The dashboard at `/debug` in a real headless Chromium against the demo:
//! it loads without console errors, shows the doctor's status and live
//! sparklines, renders a CPU flame graph naming the demo's hot function
//! and a heap diff naming its leak, works behind a token, and is pictured
//! at desktop and phone widths (the PNGs stay in the test's scratch
//! directory, named on stderr).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::browser::Browser;
use super::support::{get, profiler_lock, scratch_dir, send, wait_until, DemoProcess};

/// Requests to a few routes until `stop`, bounded in time.
fn traffic(service: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(180) {
            i += 1;
            let _ = get(service, &format!("/items/{}", i % 50), None);
            let _ = get(service, "/flaky", None);
            std::thread::sleep(Duration::from_millis(30));
        }
    })
}

fn page_url(agent: SocketAddr) -> String {
    format!("http://{agent}/debug")
}

#[test]
fn the_page_shows_the_live_service_and_profiles_it_in_a_real_browser() {
    let _quiet = profiler_lock();
    let demo = DemoProcess::start();
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(demo.service, Arc::clone(&stop));
    // A stall for the runtime section.
    assert_eq!(get(demo.service, "/block?ms=300", None).status, 200);

    // The page itself: one self-contained response.
    let page = get(demo.agent, "/debug", None);
    assert_eq!(page.status, 200);
    assert!(page.body.len() <= 200 * 1024, "{} bytes", page.body.len());
    assert!(page
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    // The pprof index leads to it.
    assert!(get(demo.agent, "/debug/pprof/", None)
        .text()
        .contains("href=\"../../debug\""));

    let browser = Browser::start(1280, 900);
    browser.goto(&page_url(demo.agent));

    // The doctor's verdict, as /debug/doctor has it.
    let word = browser.wait_for(
        "the doctor's status",
        Duration::from_secs(20),
        "const w = document.getElementById('verdict-word').textContent; return w === '…' ? '' : w",
    );
    let status = get(demo.agent, "/debug/doctor", None).json()["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        word.as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains(&status),
        "page says {word}, /debug/doctor says {status}"
    );

    // Sparklines with lines drawn (a few seconds of history).
    let drawn = browser.wait_for(
        "sparklines",
        Duration::from_secs(30),
        "const lines = [...document.querySelectorAll('figure.spark path.line')]
           .filter((p) => (p.getAttribute('d') || '').split('L').length >= 3);
         return lines.length >= 4 ? lines.length : 0",
    );
    assert!(drawn.as_u64().unwrap_or(0) >= 4, "{drawn}");
    let header = browser.execute("return document.getElementById('proc').textContent", vec![]);
    assert!(
        header.to_string().contains("recording CPU at 19 Hz"),
        "the demo's continuous profiling shows: {header}"
    );
    let cards = browser.execute(
        "return [...document.querySelectorAll('figure.spark')].map((f) => f.dataset.series)",
        vec![],
    );
    for series in [
        "cpu_cores",
        "rss_bytes",
        "lag_p99_ms",
        "rate",
        "errors",
        "request_p99_ms",
        "open_fds",
        "threads",
    ] {
        assert!(
            cards.to_string().contains(series),
            "no {series} card: {cards}"
        );
    }
    // The tables: USE rows, RED routes slowest first, the stall's culprit.
    browser.wait_for(
        "the RED table",
        Duration::from_secs(20),
        "return document.getElementById('red-table').innerText.includes('/items/{id}')",
    );
    let red_order = browser.execute(
        "return [...document.querySelectorAll('#red-table tbody th')].map((th) => th.textContent)",
        vec![],
    );
    assert_eq!(
        red_order[0], "GET /block",
        "the 300 ms route leads: {red_order}"
    );
    let use_text = browser.execute(
        "return document.getElementById('use-table').innerText",
        vec![],
    );
    for resource in ["cpu", "memory", "file_descriptors", "executor"] {
        assert!(use_text.to_string().contains(resource), "{use_text}");
    }
    browser.wait_for(
        "the stall's culprit",
        Duration::from_secs(10),
        "return document.getElementById('stalls').innerText.includes('blocking_handler')",
    );

    // "CPU profile" for 3 s while the demo burns CPU: the flame graph in
    // the page names the hot function.
    browser.execute("document.getElementById('cpu-seconds').value = '3'", vec![]);
    let burn = {
        let service = demo.service;
        std::thread::spawn(move || get(service, "/burn?ms=6000", None))
    };
    std::thread::sleep(Duration::from_millis(300));
    browser.click("#cpu-button");
    browser.wait_for(
        "progress while the profile runs",
        Duration::from_secs(5),
        "return document.querySelector('#action-status progress') !== null",
    );
    browser.wait_for(
        "the flame graph",
        Duration::from_secs(60),
        "return document.querySelector('#viewer-body iframe') !== null",
    );
    let svg = browser.frame_source("#viewer-body iframe");
    assert!(
        svg.contains("<svg") && svg.contains("burn_hot"),
        "the flame graph does not name burn_hot: {} bytes",
        svg.len()
    );
    let title = browser.execute(
        "return document.getElementById('viewer-title').textContent",
        vec![],
    );
    assert!(title.to_string().contains("CPU profile #"), "{title}");
    let downloads = browser.execute(
        "return document.getElementById('viewer-downloads').innerText",
        vec![],
    );
    for format in ["pprof", "folded", "text"] {
        assert!(downloads.to_string().contains(format), "{downloads}");
    }
    assert_eq!(burn.join().expect("burn").status, 200);
    // The demo records continuously: the last 5 minutes come at once and
    // hold the burn too.
    browser.wait_for(
        "the recorded option",
        Duration::from_secs(10),
        "return !document.querySelector('#cpu-mode option[value=past]').disabled",
    );
    browser.execute("document.getElementById('cpu-mode').value = 'past'", vec![]);
    browser.click("#cpu-button");
    browser.wait_for(
        "the last 5 minutes",
        Duration::from_secs(30),
        "return document.getElementById('viewer-title').textContent.includes('last 5 minutes')",
    );
    let past = browser.frame_source("#viewer-body iframe");
    assert!(
        past.contains("burn_hot"),
        "the recorded past names burn_hot"
    );
    browser.execute("document.getElementById('cpu-mode').value = 'cpu'", vec![]);
    // The same window renders in every format on the agent.
    let kept = get(demo.agent, "/debug/profiles", None).json();
    assert_eq!(kept["profiles"].as_array().map(Vec::len), Some(2), "{kept}");
    let url = kept["profiles"][0]["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(url.starts_with("/debug/profiles/"), "{kept}");
    let pprof = get(demo.agent, &format!("{url}?format=pprof"), None);
    assert!(pprof.body.starts_with(&[0x1f, 0x8b]), "gzip pprof");
    assert!(get(demo.agent, &format!("{url}?format=text"), None)
        .text()
        .contains("burn_hot"));
    let missing = get(demo.agent, "/debug/profiles/999", None);
    assert_eq!(missing.status, 404);
    assert!(missing.json()["hint"]
        .as_str()
        .unwrap_or_default()
        .contains("kept profiles"));

    // Heap: a snapshot, a leak, a diff that names it.
    browser.click("#heap-button");
    browser.wait_for(
        "the snapshot",
        Duration::from_secs(30),
        "return document.getElementById('action-status').textContent.includes('Snapshot #')",
    );
    assert_eq!(get(demo.service, "/leak?mb=24", None).status, 200);
    browser.wait_for(
        "the diff button",
        Duration::from_secs(5),
        "return !document.getElementById('diff-button').disabled",
    );
    browser.click("#diff-button");
    browser.wait_for(
        "the heap diff",
        Duration::from_secs(60),
        "return document.getElementById('viewer-title').textContent.includes('Heap growth')",
    );
    // The stacks, most growth first.
    let rows = browser.execute(
        "return [...document.querySelectorAll('#viewer-body table.diff tbody tr')].map((tr) => tr.textContent)",
        vec![],
    );
    let first_row = rows[0].as_str().unwrap_or_default();
    assert!(
        first_row.starts_with('+') && first_row.contains("leak_chunks"),
        "the leak leads the diff: {rows}"
    );
    let differential = browser.frame_source("#viewer-body iframe");
    assert!(
        differential.contains("leak_chunks"),
        "differential flame graph"
    );

    // Allocations: a 10 s window next to the snapshot, while /orders
    // churns memory (each request builds and frees ~190 KB).
    browser.click("#allocs-button");
    browser.wait_for(
        "the allocation window",
        Duration::from_secs(10),
        "return document.getElementById('action-status').textContent.includes('Counting allocations')",
    );
    for _ in 0..300 {
        assert_eq!(get(demo.service, "/orders?n=100", None).status, 200);
    }
    browser.wait_for(
        "the allocation profile",
        Duration::from_secs(60),
        "return document.getElementById('viewer-title').textContent.includes('Allocations #')",
    );
    let flame = browser.frame_source("#viewer-body iframe");
    assert!(
        flame.contains("render_orders"),
        "the allocation flame graph names the churning code"
    );

    // Pictures for a person to look at.
    let dir = scratch_dir("dashboard");
    let desktop = dir.join("dashboard-desktop.png");
    let phone = dir.join("dashboard-phone.png");
    browser.screenshot(&desktop, 1280);
    browser.screenshot(&phone, 390);
    eprintln!(
        "dashboard screenshots: {} {}",
        desktop.display(),
        phone.display()
    );
    // The phone layout does not scroll sideways.
    let overflow = browser.execute(
        "return document.documentElement.scrollWidth - window.innerWidth",
        vec![],
    );
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "horizontal overflow of {overflow} px at 390 px"
    );

    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    stop.store(true, Ordering::Relaxed);
    load.join().expect("traffic");
}

#[test]
fn behind_a_token_the_page_asks_for_it_and_never_puts_it_in_a_url() {
    let token = "s3cret-dashboard-token-7f1c";
    let demo = DemoProcess::start_with(&[("STETHOSCOPE_TOKEN", token)]);
    // The page needs no token; its data does.
    assert_eq!(get(demo.agent, "/debug", None).status, 200);
    assert_eq!(get(demo.agent, "/debug/dashboard.json", None).status, 401);
    assert_eq!(
        get(demo.agent, "/debug/dashboard.json", Some(token)).status,
        200
    );
    assert_eq!(
        send(demo.agent, "POST", "/debug/profiles", None).status,
        401
    );

    let browser = Browser::start(1024, 800);
    browser.goto(&page_url(demo.agent));
    let asked = browser.wait_for(
        "the token form",
        Duration::from_secs(20),
        "return !document.getElementById('auth').hidden && document.getElementById('auth-message').textContent",
    );
    assert!(asked.to_string().contains("token"), "{asked}");
    // A wrong token: refused, said so, asked again.
    browser.type_into("#token", "not-the-token");
    browser.click("#auth-form button");
    let refused = browser.wait_for(
        "the refusal",
        Duration::from_secs(20),
        "const m = document.getElementById('auth-message').textContent; return !document.getElementById('auth').hidden && m.includes('refused') ? m : ''",
    );
    assert!(refused.to_string().contains("401"), "{refused}");
    // The right one: the dashboard fills in.
    browser.type_into("#token", token);
    browser.click("#auth-form button");
    browser.wait_for(
        "the dashboard after the token",
        Duration::from_secs(20),
        "return document.getElementById('auth').hidden && document.getElementById('verdict-word').textContent !== '…'",
    );
    browser.wait_for(
        "the USE table",
        Duration::from_secs(10),
        "return document.getElementById('use-table').innerText.includes('file_descriptors')",
    );
    // Kept for the tab only, sent in a header only.
    let stored = browser.execute("return sessionStorage.getItem('stethoscope.token')", vec![]);
    assert_eq!(stored, token);
    assert!(!browser.url().contains(token));
    let local = browser.execute("return JSON.stringify(localStorage)", vec![]);
    assert!(!local.to_string().contains(token), "{local}");
    // The only console errors are the two refused requests' 401s.
    let errors = browser.console_errors();
    assert!(
        errors.iter().all(|e| e.contains("status of 401")),
        "console errors besides the 401s: {errors:#?}"
    );
    drop(browser);
    assert!(
        wait_until(Duration::from_secs(2), || !demo.lines().is_empty()),
        "the demo logs"
    );
    let leaked: Vec<String> = demo
        .lines()
        .into_iter()
        .filter(|l| l.contains(token))
        .collect();
    assert!(
        leaked.is_empty(),
        "the token is in the demo's log: {leaked:#?}"
    );
}
