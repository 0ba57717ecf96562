//! CPU workloads with known ground truth, measured in thread CPU time so the
//! split between functions holds whatever else the machine is doing.

use std::hint::black_box;
use std::time::Duration;

/// CPU time consumed by the calling thread.
pub fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
    }
    #[cfg(not(unix))]
    {
        since_first_call()
    }
}

/// CPU time consumed by all threads of this process, exited ones included.
pub fn process_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
    }
    #[cfg(not(unix))]
    {
        since_first_call()
    }
}

#[cfg(unix)]
fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(clock, &mut ts)
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall time as a stand-in where CPU clocks are unavailable.
#[cfg(not(unix))]
fn since_first_call() -> Duration {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// The spin loop, expanded in place so the time is flat in the function
/// that uses it (an inlined helper would show up as its own inline frame).
macro_rules! spin_for {
    ($cpu:expr, $seed:expr) => {{
        let budget: Duration = $cpu;
        let start = thread_cpu_time();
        let mut x: u64 = $seed;
        loop {
            for _ in 0..2_000 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                x ^= x >> 29;
            }
            x = black_box(x);
            if thread_cpu_time().saturating_sub(start) >= budget {
                break x;
            }
        }
    }};
}

/// Spins for `cpu` of thread CPU time. Three quarters of [`burn`].
#[inline(never)]
pub fn burn_hot(cpu: Duration) -> u64 {
    spin_for!(cpu, 0x9e37_79b9_7f4a_7c15)
}

/// Spins for `cpu` of thread CPU time. One quarter of [`burn`].
#[inline(never)]
pub fn burn_cold(cpu: Duration) -> u64 {
    spin_for!(cpu, 0xbf58_476d_1ce4_e5b9)
}

/// Burns `total` of thread CPU time, 3/4 in [`burn_hot`] and 1/4 in
/// [`burn_cold`]. Slices vary pseudo-randomly between 0.5 and 1.5 ms (×3 for
/// the hot part) so the pattern cannot alias with a sampler's period.
pub fn burn(total: Duration) -> u64 {
    let start = thread_cpu_time();
    let mut acc = 0u64;
    let mut seed = 0x853c_49e6_748f_ea9bu64 ^ start.as_nanos() as u64;
    while thread_cpu_time().saturating_sub(start) < total {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let slice = Duration::from_micros(500 + seed % 1000);
        acc ^= burn_hot(3 * slice);
        acc ^= burn_cold(slice);
    }
    acc
}

/// Copies a 4 MiB buffer over and over for `cpu` of thread CPU time: the
/// time is spent inside libc's `memcpy`, called from this function.
#[inline(never)]
pub fn copy_buffers(cpu: Duration) -> u64 {
    let source = vec![0x5au8; 4 << 20];
    let mut target = vec![0u8; 4 << 20];
    let start = thread_cpu_time();
    let mut rounds = 0u64;
    while thread_cpu_time().saturating_sub(start) < cpu {
        target.copy_from_slice(black_box(&source));
        black_box(&mut target);
        rounds += 1;
    }
    rounds
}

/// Size of the chunks [`leak_chunks`] and [`retain_chunks`] allocate.
pub const CHUNK_BYTES: usize = 64 << 10;

fn filled_chunk(seed: usize) -> Vec<u8> {
    // Written, so the pages are resident like real data.
    vec![(seed % 251) as u8; CHUNK_BYTES]
}

/// Allocates `bytes` in 64 KiB chunks and returns them: the caller decides
/// how long they live. Heap profiles attribute them to this function.
#[inline(never)]
pub fn retain_chunks(bytes: usize) -> Vec<Vec<u8>> {
    (0..bytes.div_ceil(CHUNK_BYTES)).map(filled_chunk).collect()
}

/// Leaks `bytes` in 64 KiB chunks into a process-wide list that is never
/// freed. Returns the total leaked so far, in bytes.
#[inline(never)]
pub fn leak_chunks(bytes: usize) -> usize {
    use std::sync::Mutex;
    static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let fresh: Vec<Vec<u8>> = (0..bytes.div_ceil(CHUNK_BYTES)).map(filled_chunk).collect();
    let mut leaked = LEAKED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    leaked.extend(fresh);
    leaked.len() * CHUNK_BYTES
}

/// Allocates and frees `bytes` in chunks of varying sizes: heavy allocator
/// traffic that leaves nothing behind.
#[inline(never)]
pub fn churn(bytes: usize) -> u64 {
    let mut done = 0usize;
    let mut checksum = 0u64;
    let mut size = 64usize;
    while done < bytes {
        let block = vec![1u8; size];
        checksum = checksum.wrapping_add(black_box(&block).len() as u64);
        done += size;
        size = if size >= 256 << 10 { 64 } else { size * 2 };
    }
    checksum
}

/// Builds a JSON document of `count` orders the way request handlers do:
/// many small strings and vectors, all freed when the response is sent.
#[inline(never)]
pub fn render_orders(count: usize) -> String {
    struct Line {
        sku: String,
        quantity: u32,
        price_cents: u64,
    }
    struct Order {
        id: u64,
        customer: String,
        lines: Vec<Line>,
    }
    let orders: Vec<Order> = (0..count as u64)
        .map(|id| Order {
            id,
            customer: format!("customer-{}", id * 7919 % 10_007),
            lines: (0..(id % 5 + 1))
                .map(|n| Line {
                    sku: format!("SKU-{:06}", (id * 31 + n) % 1_000_000),
                    quantity: (n as u32 % 3) + 1,
                    price_cents: 199 + (id * 13 + n * 7) % 10_000,
                })
                .collect(),
        })
        .collect();
    let mut json = String::from("[");
    for (i, order) in orders.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let lines: Vec<String> = order
            .lines
            .iter()
            .map(|l| {
                format!(
                    r#"{{"sku":"{}","quantity":{},"price_cents":{}}}"#,
                    l.sku, l.quantity, l.price_cents
                )
            })
            .collect();
        json.push_str(&format!(
            r#"{{"id":{},"customer":"{}","lines":[{}]}}"#,
            order.id,
            order.customer,
            lines.join(",")
        ));
    }
    json.push_str("]\n");
    json
}

/// Depth of the call tree walked by [`walk_call_tree`]: 2^12 = 4,096
/// distinct root-to-leaf paths.
pub const TREE_DEPTH: u32 = 12;

#[inline(never)]
fn branch_left(depth: u32, path: u64, work: u32) -> u64 {
    descend(depth, path, work).wrapping_add(1)
}

#[inline(never)]
fn branch_right(depth: u32, path: u64, work: u32) -> u64 {
    descend(depth, path, work).wrapping_add(2)
}

#[inline(always)]
fn descend(depth: u32, path: u64, work: u32) -> u64 {
    if depth == 0 {
        leaf_work(work, path)
    } else if path & 1 == 0 {
        branch_left(depth - 1, path >> 1, work)
    } else {
        branch_right(depth - 1, path >> 1, work)
    }
}

#[inline(never)]
fn leaf_work(work: u32, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..work {
        x = x.wrapping_mul(0x2545_f491_4f6c_dd1d).rotate_left(17);
    }
    black_box(x)
}

/// One unit of work with a realistic spread of stacks: walks a binary call
/// tree along a pseudo-random path, so a profile of many calls holds
/// thousands of distinct stacks. Returns a value to keep the work alive.
pub fn walk_call_tree(seed: u64, work: u32) -> u64 {
    let path = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
    descend(TREE_DEPTH, path, work)
}

/// Spins on the CPU for `wall` of wall-clock time (short bursts of task
/// work: `/spawn`, the mixed-load tests).
#[inline(never)]
pub fn spin(wall: Duration) -> u64 {
    let started = std::time::Instant::now();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while started.elapsed() < wall {
        for _ in 0..64 {
            x = black_box(x.rotate_left(7).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
    }
    x
}

/// Leaks `bytes_per_step` every `step` for `steps` steps, in 64 KiB chunks
/// (a slow, steady leak, as a cache that is never evicted grows). Blocks
/// the calling thread for `steps × step`.
#[inline(never)]
pub fn leak_steadily(bytes_per_step: usize, step: Duration, steps: u32) -> usize {
    let mut total = 0;
    for _ in 0..steps {
        total = leak_chunks(bytes_per_step);
        std::thread::sleep(step);
    }
    total
}

/// Opens `count` more handles to `/dev/null` and keeps them open forever
/// (a descriptor leak). Returns the number kept in total.
pub fn leak_files(count: usize) -> std::io::Result<usize> {
    use std::sync::Mutex;
    static OPEN: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let mut open = OPEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..count {
        open.push(std::fs::File::open(null_device())?);
    }
    Ok(open.len())
}

fn null_device() -> &'static str {
    if cfg!(windows) {
        "NUL"
    } else {
        "/dev/null"
    }
}

/// Starts `count` more threads that sleep forever (a thread leak: a pool
/// that spawns instead of reusing). Returns the number started in total.
pub fn leak_threads(count: usize) -> std::io::Result<usize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    for _ in 0..count {
        std::thread::Builder::new()
            .name("leaked".into())
            // Small, as a leaking pool's threads often are, yet room for a
            // debug build's allocator: jemalloc at -O0 uses ~55 KiB of stack
            // for a new thread's first allocation (tcache set-up).
            .stack_size(256 * 1024)
            .spawn(|| loop {
                std::thread::park();
            })?;
        STARTED.fetch_add(1, Ordering::Relaxed);
    }
    Ok(STARTED.load(Ordering::Relaxed))
}

/// Burns CPU on `threads` threads for `wall` of wall-clock time each: more
/// work than the CPUs can take when `threads` reaches their number.
pub fn saturate_cpu(threads: usize, wall: Duration) -> u64 {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| scope.spawn(move || spin(wall)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .fold(0, u64::wrapping_add)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_spends_about_the_requested_cpu() {
        let before = thread_cpu_time();
        burn(Duration::from_millis(40));
        let spent = thread_cpu_time() - before;
        assert!(spent >= Duration::from_millis(40), "{spent:?}");
        assert!(spent < Duration::from_millis(200), "{spent:?}");
    }

    #[test]
    fn orders_render_as_a_json_list() {
        let json = render_orders(3);
        assert!(json.starts_with("[{\"id\":0,"), "{json}");
        assert_eq!(json.matches("\"customer\"").count(), 3);
    }

    #[test]
    fn call_tree_paths_differ_by_seed() {
        assert_ne!(walk_call_tree(1, 10), walk_call_tree(2, 10));
    }
}
