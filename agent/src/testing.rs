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
