//! The demo service with the stethoscope agent.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin demo
//! ```
//!
//! `DEMO_ADDR` (default `127.0.0.1:8080`) is the service, `STETHOSCOPE_ADDR`
//! (default `127.0.0.1:6060`) the agent; the other `STETHOSCOPE_*`
//! variables apply too. `RUST_LOG` (default `info`) is the log filter at
//! startup; `/debug/log-level` changes it at runtime.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

// jemalloc with heap profiling as the global allocator: one line.
stethoscope::heap_profiling!();

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The message first: it says what to change.
            eprintln!("demo: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // The subscriber first: a reloadable filter (for /debug/log-level), the
    // usual fmt output, and the agent's span timings (for /debug/spans).
    let directive = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let (log_filter, log_level) = stethoscope::spans::log_filter(&directive)?;
    // Spans time the demo's queries and upstream calls, and label the CPU
    // samples taken inside them (`by=span`).
    let span_timings = stethoscope::spans::SpanTimings::with_settings(
        stethoscope::spans::SpanSettings::default().label_samples(true),
    );
    tracing_subscriber::registry()
        .with(log_filter)
        .with(tracing_subscriber::fmt::layer())
        .with(span_timings.layer())
        .init();

    let pool = stethoscope_examples::demo::DemoPool::new(stethoscope_examples::demo::POOL_SIZE);
    let agent = stethoscope::Agent::builder()
        // The flight recorder: /debug/pprof/profile?since=-5m answers at
        // once (STETHOSCOPE_CONTINUOUS_HZ=0 turns it off).
        .continuous_profiling(19)
        .with_default_env()
        .resource(pool.clone()) // the `db_pool` row of /debug/use
        .log_level(log_level)
        .spans(span_timings)
        .start()?;
    let debug = agent.local_addr();

    let demo_addr = std::env::var("DEMO_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let listener = tokio::net::TcpListener::bind(&demo_addr)
        .await
        .map_err(|error| format!("cannot bind the demo service to {demo_addr} ({error}); set DEMO_ADDR to another address"))?;
    let service = listener.local_addr()?;

    println!("demo service:     http://{service}/");
    println!("stethoscope agent: http://{debug}/debug/pprof/");
    println!("dashboard:         http://{debug}/debug   <- open it in a browser");
    println!();
    println!("Try, in another terminal:");
    println!("  curl 'http://{debug}/debug/doctor?format=text'   # what is wrong, and what to do (see /trouble/* in http://{service}/)");
    println!("  curl -o past.svg 'http://{debug}/debug/pprof/profile?since=-5m&format=svg'   # what it did in the last 5 minutes (continuous profile)");
    println!("  curl 'http://{service}/burn?ms=5000' & curl -o cpu.svg 'http://{debug}/debug/pprof/profile?seconds=5&format=svg'");
    println!("  curl 'http://{service}/burn?ms=5000' & curl 'http://{debug}/debug/pprof/profile?seconds=5&format=text'");
    println!("  curl 'http://{service}/burn?ms=5000' & go tool pprof -top 'http://{debug}/debug/pprof/profile?seconds=5'");
    println!("  curl -X POST http://{debug}/debug/heap/snapshots; curl 'http://{service}/leak?mb=64'; curl 'http://{debug}/debug/heap/diff?base=1&target=now'");

    println!("  for i in $(seq 50); do curl -s -o /dev/null 'http://{service}/items/'$i & curl -s -o /dev/null 'http://{service}/flaky'; done; wait");
    println!("  curl 'http://{debug}/debug/red?format=text'; curl 'http://{debug}/debug/use?format=text'");
    println!(
        "  curl 'http://{service}/block?ms=300'; curl 'http://{debug}/debug/runtime?format=text'"
    );
    println!("  curl 'http://{service}/spawn?n=20000'; curl 'http://{debug}/debug/lag?format=text'; curl -o lag.svg 'http://{debug}/debug/lag?format=svg'");
    println!("  for i in $(seq 40); do curl -s -o /dev/null 'http://{service}/checkout/'$i; done; curl 'http://{debug}/debug/spans?format=text'");
    println!("  curl -X PUT -d 'info,stethoscope_examples::demo=debug' 'http://{debug}/debug/log-level?ttl=1m'; curl 'http://{service}/items/1'");
    println!("  curl 'http://{debug}/metrics'");

    // /spawn's tasks are instrumented: they show in /debug/runtime as `demo_spawned`.
    let spawned = agent.task_monitor("demo_spawned");
    let app =
        stethoscope_examples::demo::router_with_monitor(pool, spawned).layer(agent.red_layer());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    agent.shutdown().await;
    Ok(())
}
