//! jemalloc's heap profile dump (`heap_v2`, the format jeprof reads) →
//! stacks with unsampled byte and object estimates.
//!
//! ```text
//! heap_v2/524288                    sampling interval: one sample per 2^19 bytes on average
//!   t*: 28: 9437184 [0: 0]          totals (sampled objects: bytes)
//!   t0: …                           per-thread lines (ignored)
//! @ 0x55…c4 0x55…1b 0x55…9d         a stack, innermost first (return addresses)
//!   t*: 14: 917504 [0: 0]           that stack's sampled objects and bytes
//! MAPPED_LIBRARIES:                 /proc/self/maps (ignored: we know our mappings)
//! ```

use crate::Error;

/// One stack of a dump with its estimated live objects and bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeapStack {
    /// Lookup addresses (return address − 1), innermost first.
    pub(crate) addresses: Vec<u64>,
    /// Estimated live objects allocated here.
    pub(crate) objects: f64,
    /// Estimated live bytes allocated here.
    pub(crate) bytes: f64,
}

/// A parsed dump.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeapDump {
    /// Average bytes between samples (2^`lg_prof_sample`).
    pub(crate) sample_interval: u64,
    pub(crate) stacks: Vec<HeapStack>,
}

/// jeprof's unsampling: a stack with `count` sampled objects totalling
/// `bytes` stands for `1 / (1 − e^(−avg/interval))` times as much, where
/// `avg` is the mean sampled object size. Small objects are sampled rarely,
/// so their raw counts would underestimate by up to orders of magnitude.
pub(crate) fn unsample(count: f64, bytes: f64, interval: f64) -> (f64, f64) {
    if count <= 0.0 || bytes <= 0.0 || interval <= 0.0 {
        return (count.max(0.0), bytes.max(0.0));
    }
    let ratio = (bytes / count) / interval;
    let scale = 1.0 / (1.0 - (-ratio).exp());
    (count * scale, bytes * scale)
}

/// Parses a `heap_v2` dump.
pub(crate) fn parse(text: &str) -> Result<HeapDump, Error> {
    let mut lines = text.lines().enumerate();
    let bad = |reason: &'static str, index: usize| Error::HeapDump {
        reason,
        line: index + 1,
    };
    let (index, header) = lines.next().ok_or(bad("the dump is empty", 0))?;
    let sample_interval = header
        .trim()
        .strip_prefix("heap_v2/")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or(bad("expected a heap_v2/<interval> header", index))?;
    let interval = sample_interval as f64;
    let mut stacks = Vec::new();
    let mut pending: Option<(Vec<u64>, usize)> = None;
    for (index, raw) in lines {
        let line = raw.trim();
        if line.starts_with("MAPPED_LIBRARIES") {
            break;
        }
        if let Some(rest) = line.strip_prefix('@') {
            if pending.is_some() {
                return Err(bad("a stack without its counts", index));
            }
            let addresses = rest
                .split_ascii_whitespace()
                .map(|word| {
                    let hex = word.trim_start_matches("0x");
                    u64::from_str_radix(hex, 16)
                        .ok()
                        // Return addresses point after the call; look up the
                        // call itself.
                        .map(|a| a.saturating_sub(1))
                })
                .collect::<Option<Vec<u64>>>()
                .ok_or(bad("a stack address is not hexadecimal", index))?;
            pending = Some((addresses, index));
        } else if let Some(rest) = line.strip_prefix("t*:") {
            // Totals line of the current stack; the one after the header,
            // before any stack, is the whole heap and is not needed.
            let Some((addresses, _)) = pending.take() else {
                continue;
            };
            let mut fields = rest.split([':', '[']).map(str::trim);
            let count = fields.next().and_then(|n| n.parse::<f64>().ok());
            let bytes = fields.next().and_then(|n| n.parse::<f64>().ok());
            let (Some(count), Some(bytes)) = (count, bytes) else {
                return Err(bad("expected t*: <objects>: <bytes>", index));
            };
            if count <= 0.0 {
                continue;
            }
            let (objects, bytes) = unsample(count, bytes, interval);
            stacks.push(HeapStack {
                addresses,
                objects,
                bytes,
            });
        }
    }
    if let Some((_, index)) = pending {
        return Err(bad("a stack without its counts", index));
    }
    Ok(HeapDump {
        sample_interval,
        stacks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "heap_v2/524288
  t*: 3: 1114112 [0: 0]
  t0: 3: 1114112 [0: 0]
@ 0x1001 0x2001 0x3001
  t*: 2: 1048576 [0: 0]
  t0: 2: 1048576 [0: 0]
@ 0x1001 0x4001
  t*: 1: 65536 [0: 0]
@ 0x5001
  t*: 0: 0 [0: 0]

MAPPED_LIBRARIES:
55d1c0000000-55d1c0001000 r--p 00000000 fe:00 123 /bin/service
";

    #[test]
    fn parses_stacks_as_lookup_addresses_with_unsampled_totals() {
        let dump = parse(DUMP).unwrap();
        assert_eq!(dump.sample_interval, 524_288);
        assert_eq!(dump.stacks.len(), 2, "stacks with zero objects are skipped");
        assert_eq!(dump.stacks[0].addresses, vec![0x1000, 0x2000, 0x3000]);
        // Two 512 KiB objects: each is sampled with p = 1 − e^−1.
        let scale = 1.0 / (1.0 - (-1.0f64).exp());
        assert!((dump.stacks[0].bytes - 1_048_576.0 * scale).abs() < 1.0);
        assert!((dump.stacks[0].objects - 2.0 * scale).abs() < 1e-9);
    }

    #[test]
    fn unsampling_matches_jeprof() {
        // Large objects are always sampled: no correction.
        let (objects, bytes) = unsample(1.0, 64.0 * 1048576.0, 524_288.0);
        assert!((bytes / (64.0 * 1048576.0) - 1.0).abs() < 1e-9);
        assert!((objects - 1.0).abs() < 1e-9);
        // 64-byte objects at a 512 KiB interval: one sample stands for ~8192.
        let (objects, _) = unsample(1.0, 64.0, 524_288.0);
        assert!((objects - 8192.5).abs() < 1.0, "{objects}");
        assert_eq!(unsample(0.0, 0.0, 524_288.0), (0.0, 0.0));
    }

    #[test]
    fn malformed_dumps_are_errors_not_panics() {
        for bad in [
            "",
            "heap_v1/1\n",
            "heap_v2/x\n",
            "heap_v2/512\n@ 0xzz\n  t*: 1: 2 [0: 0]\n",
            "heap_v2/512\n@ 0x10\n",
            "heap_v2/512\n@ 0x10\n@ 0x20\n",
            "heap_v2/512\n@ 0x10\n  t*: one: 2 [0: 0]\n",
        ] {
            assert!(matches!(parse(bad), Err(Error::HeapDump { .. })), "{bad:?}");
        }
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        const DUMP: &[&str] = &[
            "heap_v2/",
            "524288",
            "0",
            "\n",
            "@ ",
            "0x",
            "1f",
            " ",
            "  t*: ",
            ": ",
            "[0: 0]",
            "  t0: ",
            "MAPPED_LIBRARIES:",
            "NaN",
            "inf",
            "-",
            "e308",
            "ffffffffffffffffff",
        ];

        proptest! {
            #[test]
            fn dumps_never_panic(dump in input_of(DUMP)) {
                bounded("heap dump", &dump, || {
                    if let Ok(parsed) = parse(&dump) {
                        // Whatever the counts, the estimates are usable numbers.
                        for stack in &parsed.stacks {
                            assert!(!stack.bytes.is_sign_negative());
                        }
                    }
                });
            }

            #[test]
            fn a_valid_header_with_arbitrary_records_never_panics(body in input_of(DUMP)) {
                let dump = format!("heap_v2/524288\n  t*: 1: 1 [0: 0]\n{body}");
                bounded("heap dump", &dump, || { let _ = parse(&dump); });
            }
        }
    }
}
