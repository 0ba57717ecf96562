//! Heap-profiling overhead benchmark.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin heap_overhead -- [--rounds 7] [--secs 4] [--clients 3]
//! ```
//!
//! Every measurement runs in a child process of this binary, with jemalloc's
//! options set through `_RJEM_MALLOC_CONF` (which overrides the options
//! `heap_profiling!()` compiles in):
//!
//! 1. **HTTP**: the demo service with the agent, under a bounded loopback
//!    load of keep-alive clients on `GET /orders?n=100` (allocation-heavy
//!    request work), `prof:false` vs `prof:true` sampling every 512 KiB,
//!    interleaved rounds, requests/s medians and ratio.
//! 2. **Allocation-only microbenchmark**: a loop of 64-byte allocations and
//!    frees — the worst case — with `prof:false`, `prof:true` but inactive,
//!    and `prof:true` active.
//! 3. **First heap profile**: time and RSS of the service's first and later
//!    `GET /debug/pprof/heap` (symbolization included).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

stethoscope::heap_profiling!();

const PROF_OFF: &str = "prof:false";
const PROF_ON: &str = "prof:true,prof_active:true,lg_prof_sample:19";
const PROF_INACTIVE: &str = "prof:true,prof_active:false,lg_prof_sample:19";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => serve(),
        Some("--micro") => micro(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3)),
        _ => parent(&args[1..]),
    }
}

/// Child: the demo service with the agent, until stdin closes.
fn serve() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    runtime.block_on(async {
        let agent = stethoscope::Agent::builder()
            .listen("127.0.0.1:0")
            .start()
            .unwrap_or_else(|e| fail(&format!("agent: {e}")));
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
        drop(agent);
    });
}

/// Child: allocate and free 64-byte blocks for `secs`, print the rate.
fn micro(secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut count = 0u64;
    let started = Instant::now();
    while Instant::now() < deadline {
        for _ in 0..10_000 {
            let block = std::hint::black_box(Box::new([0u8; 64]));
            drop(block);
        }
        count += 10_000;
    }
    println!(
        "ALLOCS {:.0}",
        count as f64 / started.elapsed().as_secs_f64()
    );
}

fn fail(message: &str) -> ! {
    eprintln!("heap_overhead: {message}");
    std::process::exit(1)
}

struct Service {
    child: Child,
    service: SocketAddr,
    agent: SocketAddr,
}

impl Service {
    fn start(conf: &str) -> Service {
        let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("exe: {e}")));
        let mut child = Command::new(exe)
            .arg("--serve")
            .env("_RJEM_MALLOC_CONF", conf)
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

/// Requests per second from `clients` keep-alive connections for `secs`.
fn load(service: SocketAddr, clients: usize, secs: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let Ok(mut stream) = TcpStream::connect(service) else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let Ok(clone) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(clone);
                while !stop.load(Ordering::Relaxed) {
                    if get(&mut stream, &mut reader, "/orders?n=100").is_err() {
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
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn micro_rate(conf: &str, secs: u64) -> f64 {
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("exe: {e}")));
    let output = Command::new(exe)
        .args(["--micro", &secs.to_string()])
        .env("_RJEM_MALLOC_CONF", conf)
        .output()
        .unwrap_or_else(|e| fail(&format!("micro: {e}")));
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn option(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
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

fn parent(args: &[String]) {
    let rounds = option(args, "--rounds", 7).max(1) as usize;
    let secs = option(args, "--secs", 4).max(1);
    let clients = option(args, "--clients", 3).max(1) as usize;
    println!("# heap profiling overhead: {rounds} rounds × {secs} s");

    // 1. HTTP load, prof:false vs prof:true, interleaved.
    let off = Service::start(PROF_OFF);
    let on = Service::start(PROF_ON);
    for service in [&off, &on] {
        load(service.service, clients, 1); // warm up
    }
    let mut rates = [Vec::new(), Vec::new()];
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut this_round = [0.0; 2];
        for index in order {
            let service = if index == 0 { &off } else { &on };
            this_round[index] = load(service.service, clients, secs);
            rates[index].push(this_round[index]);
        }
        ratios.push(this_round[1] / this_round[0]);
        println!(
            "round {}: prof:false {:.0} req/s, prof:true {:.0} req/s",
            round + 1,
            this_round[0],
            this_round[1]
        );
    }
    let ratio = median(&mut ratios);
    println!(
        "\n## HTTP: GET /orders?n=100, {clients} keep-alive clients on loopback\n\
         prof:false                      {:>10.0} req/s (median)\n\
         prof:true, lg_prof_sample:19    {:>10.0} req/s (median)\n\
         ratio {ratio:.4} (rounds {:.4}..{:.4}) → overhead {:+.2}%",
        median(&mut rates[0]),
        median(&mut rates[1]),
        ratios.first().copied().unwrap_or(0.0),
        ratios.last().copied().unwrap_or(0.0),
        (1.0 - ratio) * 100.0
    );

    // 3. First and later heap profiles of the loaded service.
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
    drop((off, on));

    // 2. Allocation-only microbenchmark, interleaved.
    let confs = [PROF_OFF, PROF_INACTIVE, PROF_ON];
    let mut micro: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in 0..confs.len() {
            let index = (k + round) % confs.len();
            micro[index].push(micro_rate(confs[index], secs.min(3)));
        }
    }
    let base = median(&mut micro[0].clone());
    println!("\n## Allocation-only microbenchmark: 64-byte Box alloc + free, one thread");
    for (index, conf) in confs.iter().enumerate() {
        let rate = median(&mut micro[index]);
        println!(
            "{conf:<44} {:>12.0} allocs/s  {:.2} ns each  slowdown ×{:.2}",
            rate,
            1e9 / rate.max(1.0),
            base / rate.max(1.0)
        );
    }
}
