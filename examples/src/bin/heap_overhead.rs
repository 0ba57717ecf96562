//! Heap-profiling overhead benchmark.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin heap_overhead -- [--rounds 7] [--secs 4] [--clients 3]
//! ```
//!
//! `HEAP_OVERHEAD_EXTRA_CONF=prof_accum:true` (any jemalloc options) is
//! appended to every `prof:true` variant's options: a tuning tried
//! against the same load.
//!
//! Every measurement runs in a child process of this binary, with jemalloc's
//! options set through `_RJEM_MALLOC_CONF` (which overrides the options
//! `heap_profiling!()` compiles in):
//!
//! 1. **HTTP**: the demo service with the agent, under a bounded loopback
//!    load of keep-alive clients on `GET /orders?n=10` (a typical JSON
//!    response) and `GET /orders?n=100` (allocation-heavy: formatting and
//!    `realloc`), in four configurations:
//!    `prof:false`; `prof:true` inactive; active, sampling every 512 KiB,
//!    with jemalloc's libgcc unwinder; and the same with the agent's
//!    framehop unwinder (the default). Interleaved rounds; requests/s and
//!    the service's CPU time per request, medians and per-round ratios.
//! 2. **First heap profile**: time and RSS of the service's first and later
//!    `GET /debug/pprof/heap` (symbolization included).
//! 3. **Where the CPU goes**: the share of the service's CPU samples in
//!    the unwinder and in jemalloc's `prof_*` code, from the agent's own
//!    CPU profile at 499 Hz under the same load, libgcc vs framehop.
//! 4. **Allocation-only microbenchmark**: a loop of 64-byte allocations and
//!    frees — the worst case for the per-allocation checks — in the same
//!    four configurations.
//! 5. **Cost of one sample**: 64-byte allocations 40 frames deep, sampled
//!    every 16 KiB so that unwinding dominates: time per sampled allocation
//!    beyond the inactive cost, libgcc vs framehop.
//!
//! With `--hooks`, only the cost of the agent's jemalloc sample hooks
//! (labels on heap samples, allocation windows): sections 1 and 5 with
//! sampling active and the framehop unwinder, without the hooks, with them
//! (the default) and with them while an allocation window stays open:
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin heap_overhead -- --hooks [--rounds 7] [--secs 4] [--clients 3]
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stethoscope_examples::bench::median;

stethoscope::heap_profiling!();

/// `sysconf(_SC_CLK_TCK)`, 100 on every Linux this runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

const PROF_OFF: &str = "prof:false";
const PROF_ON: &str = "prof:true,prof_active:true,lg_prof_sample:19";
const PROF_INACTIVE: &str = "prof:true,prof_active:false,lg_prof_sample:19";
/// jemalloc's own cumulative counts, the other possible source of
/// allocation profiles.
const PROF_ACCUM: &str = "prof:true,prof_active:true,lg_prof_sample:19,prof_accum:true";

/// One configuration of the service or microbenchmark child.
#[derive(Clone, Copy)]
struct Variant {
    label: &'static str,
    conf: &'static str,
    /// Start the agent with its framehop unwinder for sampled allocations.
    fast: bool,
    /// Start the agent with its sample hooks (the default).
    hooks: bool,
    /// Keep an allocation window open while measuring.
    window: bool,
}

impl Variant {
    /// The child's flags for this variant.
    fn flags(self) -> impl Iterator<Item = &'static str> {
        [
            self.fast.then_some("--fast"),
            (!self.hooks).then_some("--no-hooks"),
            self.window.then_some("--window"),
        ]
        .into_iter()
        .flatten()
    }
}

const VARIANTS: [Variant; 4] = [
    Variant {
        label: "prof:false",
        conf: PROF_OFF,
        fast: false,
        hooks: true,
        window: false,
    },
    Variant {
        label: "prof:true, inactive",
        conf: PROF_INACTIVE,
        fast: false,
        hooks: true,
        window: false,
    },
    Variant {
        label: "active lg19, libgcc unwinder",
        conf: PROF_ON,
        fast: false,
        hooks: true,
        window: false,
    },
    Variant {
        label: "active lg19, framehop unwinder",
        conf: PROF_ON,
        fast: true,
        hooks: true,
        window: false,
    },
];

/// The sample hooks' cost: sampling active, framehop, hooks off / on / on
/// with a window open; and jemalloc's `prof_accum` without the hooks.
const HOOK_VARIANTS: [Variant; 4] = [
    Variant {
        label: "framehop, no sample hooks",
        conf: PROF_ON,
        fast: true,
        hooks: false,
        window: false,
    },
    Variant {
        label: "framehop, sample hooks",
        conf: PROF_ON,
        fast: true,
        hooks: true,
        window: false,
    },
    Variant {
        label: "framehop, hooks, window open",
        conf: PROF_ON,
        fast: true,
        hooks: true,
        window: true,
    },
    Variant {
        label: "framehop, prof_accum, no hooks",
        conf: PROF_ACCUM,
        fast: true,
        hooks: false,
        window: false,
    },
];

/// Sampling for the one-sample cost: every 16 KiB, 256 allocations of 64 B.
const SAMPLED_ON: &str = "prof:true,prof_active:true,lg_prof_sample:14";
const SAMPLED_INACTIVE: &str = "prof:true,prof_active:false,lg_prof_sample:14";
const SAMPLED_ACCUM: &str = "prof:true,prof_active:true,lg_prof_sample:14,prof_accum:true";
const SAMPLED_EVERY: f64 = 16384.0 / 64.0;
const SAMPLED_DEPTH: u32 = 40;

/// Requests loaded: a typical JSON API response and an allocation-heavy one.
const PATHS: [(&str, &str); 2] = [
    ("/orders?n=10", "typical: a 2 KB JSON list"),
    (
        "/orders?n=100",
        "allocation-heavy: a 20 KB JSON list built by formatting and realloc",
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let child = Child {
        fast: flag("--fast"),
        hooks: !flag("--no-hooks"),
        window: flag("--window"),
    };
    match args.get(1).map(String::as_str) {
        Some("--serve") => serve(child),
        Some("--micro") => micro(
            args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3),
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0),
            child,
        ),
        _ if flag("--hooks") => hooks(&args[1..]),
        _ => parent(&args[1..]),
    }
}

/// What a child process runs with.
#[derive(Clone, Copy)]
struct Child {
    fast: bool,
    hooks: bool,
    window: bool,
}

impl Child {
    fn agent(self) -> stethoscope::Agent {
        stethoscope::Agent::builder()
            .listen("127.0.0.1:0")
            .fast_heap_backtraces(self.fast)
            .heap_sample_hooks(self.hooks)
            .start()
            .unwrap_or_else(|e| fail(&format!("agent: {e}")))
    }

    /// An allocation window kept open until dropped, if asked for.
    fn window(self, agent: &stethoscope::Agent) -> Option<stethoscope::heap::AllocationWindow> {
        self.window.then(|| {
            agent
                .heap()
                .start_allocations()
                .unwrap_or_else(|e| fail(&format!("allocation window: {e}")))
        })
    }
}

/// Child: the demo service with the agent, until stdin closes.
fn serve(child: Child) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    runtime.block_on(async {
        let agent = child.agent();
        let window = child.window(&agent);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| fail(&format!("bind: {e}")));
        let service = listener
            .local_addr()
            .unwrap_or_else(|e| fail(&format!("addr: {e}")));
        println!("SERVICE {service} AGENT {}", agent.local_addr());
        tokio::spawn(async move {
            let pool =
                stethoscope_examples::demo::DemoPool::new(stethoscope_examples::demo::POOL_SIZE);
            let _ = axum::serve(listener, stethoscope_examples::demo::router(pool)).await;
        });
        // Exit when the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
        })
        .await;
        drop(window);
        drop(agent);
    });
}

/// Child: allocate and free 64-byte blocks for `secs`, `depth` frames
/// deep, print the rate. An agent runs in every variant (its threads
/// change how the process allocates); `fast` picks its unwinder.
fn micro(secs: u64, depth: u32, child: Child) {
    let agent = child.agent();
    let window = child.window(&agent);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut count = 0u64;
    let started = Instant::now();
    nested(depth, &mut || {
        while Instant::now() < deadline {
            for _ in 0..10_000 {
                let block = std::hint::black_box(Box::new([0u8; 64]));
                drop(block);
            }
            count += 10_000;
        }
    });
    println!(
        "ALLOCS {:.0}",
        count as f64 / started.elapsed().as_secs_f64()
    );
    drop(window);
    drop(agent);
}

/// Calls `inner` `depth` frames below this one.
#[inline(never)]
fn nested(depth: u32, inner: &mut dyn FnMut()) {
    if depth == 0 {
        inner();
    } else {
        nested(depth - 1, inner);
    }
    std::hint::black_box(depth);
}

fn fail(message: &str) -> ! {
    eprintln!("heap_overhead: {message}");
    std::process::exit(1)
}

struct Service {
    child: std::process::Child,
    service: SocketAddr,
    agent: SocketAddr,
}

impl Service {
    fn start(variant: Variant) -> Service {
        let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("exe: {e}")));
        let mut child = Command::new(exe)
            .arg("--serve")
            .args(variant.flags())
            .env("_RJEM_MALLOC_CONF", with_extra(variant.conf))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("spawn: {e}")));
        let stdout = child.stdout.take().unwrap_or_else(|| fail("no stdout"));
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let words: Vec<&str> = line.split_whitespace().collect();
        let parse = |i: usize| -> SocketAddr {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| fail(&format!("child said {line:?}")))
        };
        Service {
            service: parse(1),
            agent: parse(3),
            child,
        }
    }

    /// User + system CPU time the service has used so far, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let ticks = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|stat| {
                // Fields after the parenthesised command name; utime and
                // stime are fields 14 and 15 of the whole line.
                let rest = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: u64 = fields.get(11)?.parse().ok()?;
                let stime: u64 = fields.get(12)?.parse().ok()?;
                Some(utime + stime)
            })
            .unwrap_or(0);
        ticks as f64 / CLOCK_TICKS_PER_SECOND
    }

    fn rss_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive GET; returns the body length.
fn get(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    path: &str,
) -> std::io::Result<usize> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line
            .split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim())
        {
            length = value.parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(length)
}

/// Requests per second from `clients` keep-alive connections for `secs`
/// on `path`, and the service's CPU time per request in microseconds.
fn load(service: &Service, path: &'static str, clients: usize, secs: u64) -> (f64, f64) {
    let cpu_before = service.cpu_seconds();
    let address = service.service;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let Ok(mut stream) = TcpStream::connect(address) else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let Ok(clone) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(clone);
                while !stop.load(Ordering::Relaxed) {
                    if get(&mut stream, &mut reader, path).is_err() {
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let requests = done.load(Ordering::Relaxed) as f64;
    let cpu = service.cpu_seconds() - cpu_before;
    (
        requests / started.elapsed().as_secs_f64(),
        cpu * 1e6 / requests.max(1.0),
    )
}

/// `conf`, and for the `prof:true` variants the options in
/// `HEAP_OVERHEAD_EXTRA_CONF` (e.g. `prof_accum:true`) after it: jemalloc
/// options tried against the same load.
fn with_extra(conf: &str) -> String {
    match std::env::var("HEAP_OVERHEAD_EXTRA_CONF") {
        Ok(extra) if conf.starts_with("prof:true") && !extra.is_empty() => {
            format!("{conf},{extra}")
        }
        _ => conf.to_owned(),
    }
}

fn micro_rate(variant: Variant, secs: u64, depth: u32) -> f64 {
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("exe: {e}")));
    let output = Command::new(exe)
        .args(["--micro", &secs.to_string(), &depth.to_string()])
        .args(variant.flags())
        .env("_RJEM_MALLOC_CONF", with_extra(variant.conf))
        .output()
        .unwrap_or_else(|e| fail(&format!("micro: {e}")));
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

fn option(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

/// Where a loaded service's CPU samples are: the shares in a stack
/// unwinder (libgcc's `_Unwind_Backtrace` or the agent's heap hook) and in
/// jemalloc's `prof_*` functions, and which functions the latter are.
struct ProfShares {
    unwinding: f64,
    profiling: f64,
    /// Shares of all samples by the outermost `prof_*` frame of a stack in
    /// jemalloc's profiling code (its entry point), largest first.
    by_entry: Vec<(String, f64)>,
    /// The same by the innermost frame (where the time is spent).
    by_leaf: Vec<(String, f64)>,
}

fn is_prof_frame(frame: &str) -> bool {
    frame.starts_with("prof_") || frame.contains("je_prof_")
}

/// Loads `service` on `path` while its agent takes a CPU profile; where
/// the samples are.
fn unwinding_share(service: &Service, path: &'static str, clients: usize, secs: u64) -> ProfShares {
    let loaded = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(service, path, clients, secs + 1));
        std::thread::sleep(Duration::from_millis(300));
        let folded = get_body(
            service.agent,
            &format!("/debug/pprof/profile?seconds={secs}&hz=499&format=folded"),
        );
        let _ = load.join();
        folded
    });
    let (mut total, mut unwinding, mut profiling) = (0.0, 0.0, 0.0);
    let mut by_entry: std::collections::HashMap<String, f64> = Default::default();
    let mut by_leaf: std::collections::HashMap<String, f64> = Default::default();
    for line in loaded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let count: f64 = count.parse().unwrap_or(0.0);
        total += count;
        if stack.contains("_Unwind_Backtrace") || stack.contains("backtrace_hook") {
            unwinding += count;
        }
        if let Some(entry) = stack.split(';').find(|f| is_prof_frame(f)) {
            profiling += count;
            *by_entry.entry(entry.to_owned()).or_default() += count;
            let leaf = stack.rsplit(';').next().unwrap_or(stack);
            *by_leaf.entry(leaf.to_owned()).or_default() += count;
        }
    }
    let ranked = |map: std::collections::HashMap<String, f64>| {
        let mut ranked: Vec<(String, f64)> = map
            .into_iter()
            .map(|(name, count)| (name, count / total.max(1.0)))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked
    };
    ProfShares {
        unwinding: unwinding / total.max(1.0),
        profiling: profiling / total.max(1.0),
        by_entry: ranked(by_entry),
        by_leaf: ranked(by_leaf),
    }
}

/// One GET on a fresh connection; its body.
fn get_body(addr: SocketAddr, path: &str) -> String {
    TcpStream::connect(addr)
        .and_then(|mut stream| {
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
                .unwrap_or_default())
        })
        .unwrap_or_default()
}

fn timed_get(addr: SocketAddr, path: &str) -> (Duration, usize) {
    let started = Instant::now();
    let length = TcpStream::connect(addr)
        .and_then(|mut stream| {
            let mut reader = BufReader::new(stream.try_clone()?);
            get(&mut stream, &mut reader, path)
        })
        .unwrap_or(0);
    (started.elapsed(), length)
}

/// Section 1: HTTP load on every variant's service, interleaved (each
/// round rotates the order), on a typical and an allocation-heavy request;
/// prints the table and returns the services.
fn http_rounds(variants: &[Variant], rounds: usize, secs: u64, clients: usize) -> Vec<Service> {
    let services: Vec<Service> = variants.iter().map(|v| Service::start(*v)).collect();
    let n = variants.len();
    for (path, what) in PATHS {
        for service in &services {
            load(service, path, clients, 1); // warm up
        }
        let mut rates = vec![Vec::new(); n];
        let mut rate_ratios = vec![Vec::new(); n];
        let mut cpus = vec![Vec::new(); n];
        let mut cpu_ratios = vec![Vec::new(); n];
        for round in 0..rounds {
            let mut rate = vec![0.0; n];
            let mut cpu = vec![0.0; n];
            for k in 0..n {
                let index = (k + round) % n;
                (rate[index], cpu[index]) = load(&services[index], path, clients, secs);
                rates[index].push(rate[index]);
                cpus[index].push(cpu[index]);
            }
            let mut line = format!("{path} round {}:", round + 1);
            for index in 0..n {
                rate_ratios[index].push(rate[index] / rate[0].max(1.0));
                cpu_ratios[index].push(cpu[index] / cpu[0].max(1e-9));
                line.push_str(&format!(
                    " {:.0} req/s {:.1} µs/req;",
                    rate[index], cpu[index]
                ));
            }
            println!("{line}");
        }
        println!(
            "\n## HTTP: GET {path} ({what}), {clients} keep-alive clients on loopback\n\
             req/s: median of rounds; ×ratio to the first variant per round, median (min..max)\n\
             µs/req: the service's CPU time per request, median; ×ratio likewise"
        );
        for (index, variant) in variants.iter().enumerate() {
            let rate_ratio = median(&mut rate_ratios[index]);
            let cpu_ratio = median(&mut cpu_ratios[index]);
            println!(
                "{:<32} {:>7.0} req/s ×{rate_ratio:.3} ({:.3}..{:.3})  \
                 {:>6.1} µs/req ×{cpu_ratio:.3} ({:.3}..{:.3})",
                variant.label,
                median(&mut rates[index]),
                rate_ratios[index].first().copied().unwrap_or(0.0),
                rate_ratios[index].last().copied().unwrap_or(0.0),
                median(&mut cpus[index]),
                cpu_ratios[index].first().copied().unwrap_or(0.0),
                cpu_ratios[index].last().copied().unwrap_or(0.0),
            );
        }
        println!();
    }
    services
}

/// `--hooks`: the sample hooks' cost, sections 1 and 5 only.
fn hooks(args: &[String]) {
    let rounds = option(args, "--rounds", 7).max(1) as usize;
    let secs = option(args, "--secs", 4).max(1);
    let clients = option(args, "--clients", 3).max(1) as usize;
    println!("# sample hooks' overhead: {rounds} rounds × {secs} s");
    let services = http_rounds(&HOOK_VARIANTS, rounds, secs, clients);
    for (service, variant) in services.iter().zip(HOOK_VARIANTS) {
        println!(
            "{}: RSS {:.1} MiB; {}; {}",
            variant.label,
            service.rss_bytes() as f64 / 1048576.0,
            get_body(service.agent, "/debug/heap/stats").replace(char::is_whitespace, ""),
            get_body(service.agent, "/debug/heap/profiling").replace(char::is_whitespace, "")
        );
    }
    drop(services);
    let sampled: Vec<Variant> = HOOK_VARIANTS
        .iter()
        .map(|v| Variant {
            conf: if v.conf == PROF_ACCUM {
                SAMPLED_ACCUM
            } else {
                SAMPLED_ON
            },
            ..*v
        })
        .collect();
    one_sample_cost(&sampled, rounds, secs);
}

/// Section 5: nanoseconds per 64-byte allocation `SAMPLED_DEPTH` frames
/// deep with one in `SAMPLED_EVERY` sampled, per variant, interleaved;
/// printed as microseconds per sample beyond the first variant.
fn one_sample_cost(variants: &[Variant], rounds: usize, secs: u64) {
    let mut ns = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let index = (k + round) % variants.len();
            let rate = micro_rate(variants[index], secs.min(3), SAMPLED_DEPTH);
            ns[index].push(1e9 / rate.max(1.0));
        }
    }
    let ns: Vec<f64> = ns.iter_mut().map(|v| median(v)).collect();
    println!(
        "\n## One sampled allocation {SAMPLED_DEPTH} frames deep \
         (64-byte allocations, on average one in {SAMPLED_EVERY} sampled)"
    );
    for (index, variant) in variants.iter().enumerate().skip(1) {
        println!(
            "{:<32} {:.2} ns per allocation → {:.2} µs per sample beyond {} ({:.2} ns)",
            variant.label,
            ns[index],
            (ns[index] - ns[0]) * SAMPLED_EVERY / 1e3,
            variants[0].label,
            ns[0]
        );
    }
}

fn parent(args: &[String]) {
    let rounds = option(args, "--rounds", 7).max(1) as usize;
    let secs = option(args, "--secs", 4).max(1);
    let clients = option(args, "--clients", 3).max(1) as usize;
    println!("# heap profiling overhead: {rounds} rounds × {secs} s");

    // 1. HTTP load in every variant, interleaved (each round rotates the
    //    order), on a typical and on an allocation-heavy request.
    let services = http_rounds(&VARIANTS, rounds, secs, clients);
    let n = VARIANTS.len();
    let on = &services[n - 1];

    // 2. First and later heap profiles of the loaded service.
    println!("\n## Heap profile of the service (after its load above)");
    let before = on.rss_bytes();
    let (first, bytes) = timed_get(on.agent, "/debug/pprof/heap");
    let after = on.rss_bytes();
    let mut later = Vec::new();
    for _ in 0..5 {
        later.push(timed_get(on.agent, "/debug/pprof/heap").0.as_secs_f64() * 1e3);
    }
    println!(
        "first /debug/pprof/heap: {:.0} ms, {bytes} bytes; service RSS {:.1} → {:.1} MiB ({:+.1} MiB)\n\
         later ones: median {:.1} ms",
        first.as_secs_f64() * 1e3,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after as f64 - before as f64) / 1048576.0,
        median(&mut later)
    );
    println!(
        "state: {}",
        get_body(on.agent, "/debug/heap/profiling").trim()
    );

    // 3. Where the active variants' CPU goes: the share of the service's
    //    CPU samples inside the unwinders and inside jemalloc's profiling
    //    code, from the agent's own CPU profile at 499 Hz under the same
    //    load (a ratio within one process, immune to the host's noise).
    //    After the heap profile above: a CPU profile loads debug info.
    println!("\n## Share of the service's CPU samples (CPU profile at 499 Hz under the same load)");
    for (path, _) in PATHS {
        for index in [n - 2, n - 1] {
            let shares = unwinding_share(&services[index], path, clients, secs);
            println!(
                "{path:<14} {:<32} {:.2} % unwinding, {:.2} % in jemalloc's prof_* code (incl. unwinding)",
                VARIANTS[index].label,
                shares.unwinding * 100.0,
                shares.profiling * 100.0
            );
            if index == n - 1 {
                let top = |ranked: &[(String, f64)]| {
                    ranked
                        .iter()
                        .take(8)
                        .map(|(name, share)| format!("{name} {:.2} %", share * 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("    by entry point: {}", top(&shares.by_entry));
                println!("    by innermost frame: {}", top(&shares.by_leaf));
            }
        }
    }
    drop(services);

    // 4. Allocation-only microbenchmark, interleaved.
    let mut micro = vec![Vec::new(); n];
    for round in 0..rounds {
        for k in 0..n {
            let index = (k + round) % n;
            micro[index].push(micro_rate(VARIANTS[index], secs.min(3), 0));
        }
    }
    let base = median(&mut micro[0].clone());
    println!("\n## Allocation-only microbenchmark: 64-byte Box alloc + free, one thread");
    for (index, variant) in VARIANTS.iter().enumerate() {
        let rate = median(&mut micro[index]);
        println!(
            "{:<32} {:>12.0} allocs/s  {:.2} ns each  slowdown ×{:.2}",
            variant.label,
            rate,
            1e9 / rate.max(1.0),
            base / rate.max(1.0)
        );
    }

    // 5. Cost of one sample, SAMPLED_DEPTH frames deep.
    let sampled = [
        Variant {
            label: "inactive",
            conf: SAMPLED_INACTIVE,
            ..VARIANTS[1]
        },
        Variant {
            label: "libgcc",
            conf: SAMPLED_ON,
            ..VARIANTS[2]
        },
        Variant {
            label: "framehop",
            conf: SAMPLED_ON,
            ..VARIANTS[3]
        },
    ];
    one_sample_cost(&sampled, rounds, secs);
}
