//! Helpers of the property tests that feed every parser the agent owns
//! arbitrary input — random bytes, and random mixes of the tokens its
//! format is made of — and require an answer (a value or an error) without
//! a panic, within a bounded time.

use std::time::{Duration, Instant};

use proptest::prelude::*;

/// Longest any one parse may take on inputs of a few KiB, even in a debug
/// build on a loaded machine.
const BOUND: Duration = Duration::from_millis(250);

/// Runs `parse`, asserting it took less than [`BOUND`].
pub(crate) fn bounded<T>(what: &str, input: &str, parse: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = parse();
    let took = started.elapsed();
    assert!(
        took < BOUND,
        "{what} took {took:?} on {:?}",
        input.get(..200).unwrap_or(input)
    );
    value
}

/// Text made of `tokens`, digits and random characters: close enough to
/// the format to reach deep into the parser.
pub(crate) fn text_of(tokens: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(tokens).prop_map(str::to_owned),
            1 => any::<char>().prop_map(|c| c.to_string()),
            1 => (0u64..u64::MAX).prop_map(|n| n.to_string()),
        ],
        0..64,
    )
    .prop_map(|pieces| pieces.concat())
}

/// Arbitrary bytes, as (lossy) text.
pub(crate) fn bytes_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..2048)
        .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Either of the two.
pub(crate) fn input_of(tokens: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![text_of(tokens), bytes_text()]
}

/// An environment of `pairs`, as `Config::apply_env` reads one.
pub(crate) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// A thread reading another thread's CPU clock (its scheduler accounting,
/// `/proc/self/task/<tid>/schedstat`) every 2 ms until dropped or
/// finished: what that thread really got between two instants, whatever
/// else the machine ran meanwhile.
#[cfg(target_os = "linux")]
pub(crate) struct ThreadCpuWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(std::time::SystemTime, Duration)>>>,
}

#[cfg(target_os = "linux")]
impl ThreadCpuWatch {
    /// Watches thread `tid` of this process.
    pub(crate) fn start(tid: u32) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let path = format!("/proc/self/task/{tid}/schedstat");
        let thread = std::thread::spawn(move || {
            let mut readings = Vec::new();
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                let Some(ns) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                else {
                    break;
                };
                readings.push((std::time::SystemTime::now(), Duration::from_nanos(ns)));
                std::thread::sleep(Duration::from_millis(2));
            }
            readings
        });
        ThreadCpuWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; the CPU the thread got from `from` for `length`
    /// (the readings nearest inside the interval).
    pub(crate) fn between(mut self, from: std::time::SystemTime, length: Duration) -> Duration {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let readings = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let to = from + length;
        let first = readings.iter().find(|(at, _)| *at >= from);
        let last = readings.iter().rev().find(|(at, _)| *at <= to);
        match (first, last) {
            (Some(first), Some(last)) => last.1.saturating_sub(first.1),
            _ => Duration::ZERO,
        }
    }
}

/// Code shaped like aarch64 system libraries built with
/// `-mbranch-protection=pac-ret+leaf` (Ubuntu, Fedora, Amazon Linux 2023),
/// written in assembly because Rust does not sign return addresses: a leaf
/// whose return address is only in `x30`, signed while it runs, and a frame
/// that saves a signed `x30` on the stack without a frame record, so its
/// caller is found only through its CFI (with `.cfi_negate_ra_state`) and
/// only once the authentication bits are stripped. `paciasp`/`autiasp` are
/// written as the hints they are, so the code also runs (unsigned) on CPUs
/// without pointer authentication.
#[cfg(target_arch = "aarch64")]
#[allow(unsafe_code)]
pub(crate) mod signed {
    /// Counts `iterations` down to zero without touching the stack.
    #[unsafe(naked)]
    pub(crate) unsafe extern "C" fn signed_leaf_spin(iterations: u64) {
        core::arch::naked_asm!(
            ".cfi_startproc",
            "hint #25", // paciasp: sign x30 with sp
            ".cfi_negate_ra_state",
            "1:",
            "subs x0, x0, #1",
            "b.hi 1b",
            "hint #29", // autiasp
            ".cfi_negate_ra_state",
            "ret",
            ".cfi_endproc",
        )
    }

    /// Calls `callee(arg)` with its own (signed) return address saved on
    /// the stack and `x29` left as it was.
    #[unsafe(naked)]
    pub(crate) unsafe extern "C" fn signed_frame_call(arg: u64, callee: extern "C" fn(u64)) {
        core::arch::naked_asm!(
            ".cfi_startproc",
            "hint #25", // paciasp
            ".cfi_negate_ra_state",
            "str x30, [sp, #-16]!",
            ".cfi_def_cfa_offset 16",
            ".cfi_offset x30, -16",
            "blr x1",
            "ldr x30, [sp], #16",
            ".cfi_restore x30",
            ".cfi_def_cfa_offset 0",
            "hint #29", // autiasp
            ".cfi_negate_ra_state",
            "ret",
            ".cfi_endproc",
        )
    }

    /// `x30` as `paciasp` leaves it in a function called from here: differs
    /// from the plain return address when the CPU signs pointers.
    #[unsafe(naked)]
    unsafe extern "C" fn signed_return_address() -> u64 {
        core::arch::naked_asm!(
            "hint #25", // paciasp
            "mov x0, x30",
            "hint #29", // autiasp
            "ret",
        )
    }

    /// Whether this CPU (or emulator) really signs return addresses.
    pub(crate) fn pointer_authentication_active() -> bool {
        // SAFETY: the function only reads and signs its own x30.
        let signed = unsafe { signed_return_address() };
        // A user-space code address has no bits at 48 and above; the
        // authentication code goes there.
        signed >> 48 != 0
    }
}
