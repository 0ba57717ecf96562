//! The pprof protobuf (`profile.proto` of google/pprof), gzip-compressed.
//!
//! Unlike pprof-rs's encoder this keeps what server-side tools need: real
//! addresses, one mapping per binary with file name and GNU build ID, one
//! location per address with its inline chain as the `line` list, file and
//! line per frame, and a `thread` label per sample besides its own labels.

use std::collections::HashMap;
use std::io::Write;
use std::time::UNIX_EPOCH;

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use super::Profile;
use crate::Error;

mod proto {
    //! Message definitions mirroring google/pprof's `profile.proto`.
    #![allow(missing_docs, unreachable_pub)]

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut strings = Self::default();
        strings.id("");
        strings
    }

    fn id(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.index.get(text) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(text.to_owned());
        self.index.insert(text.to_owned(), id);
        id
    }
}

/// Encodes `profile` as gzip-compressed pprof protobuf.
pub(super) fn encode(profile: &Profile) -> Result<Vec<u8>, Error> {
    let message = to_proto(profile);
    let raw = message.encode_to_vec();
    let mut gz = GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        Compression::default(),
    );
    gz.write_all(&raw)
        .and_then(|()| gz.finish())
        .map_err(|source| Error::Encode {
            format: "pprof",
            source,
        })
}

fn to_proto(profile: &Profile) -> proto::Profile {
    let mut strings = Strings::new();
    let value_type = |strings: &mut Strings, vt: &super::ValueType| proto::ValueType {
        r#type: strings.id(&vt.kind),
        unit: strings.id(&vt.unit),
    };
    let sample_type = profile
        .sample_types
        .iter()
        .map(|vt| value_type(&mut strings, vt))
        .collect();
    let period_type = Some(value_type(&mut strings, &profile.period_type));

    let mapping = profile
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| proto::Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.file_offset,
            filename: strings.id(&m.file),
            build_id: m.build_id.as_deref().map_or(0, |id| strings.id(id)),
            has_functions: m.has_functions,
            has_filenames: m.has_lines,
            has_line_numbers: m.has_lines,
            has_inline_frames: m.has_inline_frames,
        })
        .collect();

    let mut function_ids: HashMap<(&str, Option<&str>), u64> = HashMap::new();
    let mut function = Vec::new();
    let location = profile
        .locations
        .iter()
        .enumerate()
        .map(|(i, loc)| proto::Location {
            id: i as u64 + 1,
            mapping_id: loc.mapping.map_or(0, |m| m as u64 + 1),
            address: loc.address,
            line: loc
                .frames
                .iter()
                .filter(|_| loc.symbolized)
                .map(|frame| {
                    let key = (&*frame.function, frame.file.as_deref());
                    let function_id = *function_ids.entry(key).or_insert_with(|| {
                        let id = function.len() as u64 + 1;
                        let (name, system_name) = function_names(&frame.function);
                        let system_name = system_name.map_or(0, |full| strings.id(full));
                        let name = strings.id(&name);
                        function.push(proto::Function {
                            id,
                            name,
                            system_name,
                            filename: frame.file.as_deref().map_or(0, |f| strings.id(f)),
                            start_line: 0,
                        });
                        id
                    });
                    proto::Line {
                        function_id,
                        line: frame.line.map_or(0, i64::from),
                    }
                })
                .collect(),
            is_folded: false,
        })
        .collect();

    let thread_key = strings.id("thread");
    let sample = profile
        .samples
        .iter()
        .map(|s| {
            let thread = s
                .thread
                .as_deref()
                .map(|name| (thread_key, strings.id(name)));
            let own = s.labels.iter().map(|(k, v)| (strings.id(k), strings.id(v)));
            let pairs: Vec<(i64, i64)> = thread.into_iter().chain(own).collect();
            proto::Sample {
                location_id: s.locations.iter().map(|&l| l as u64 + 1).collect(),
                value: s.values.clone(),
                label: pairs
                    .into_iter()
                    .map(|(key, str)| proto::Label {
                        key,
                        str,
                        num: 0,
                        num_unit: 0,
                    })
                    .collect(),
            }
        })
        .collect();

    let comment = profile.comments.iter().map(|c| strings.id(c)).collect();
    let drop_frames = profile.drop_frames.map_or(0, |rx| strings.id(rx));
    let default_sample_type = profile
        .sample_types
        .get(profile.default_value)
        .map_or(0, |vt| strings.id(&vt.kind));
    let time_nanos = profile
        .started_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));

    proto::Profile {
        sample_type,
        sample,
        mapping,
        location,
        function,
        string_table: strings.table,
        time_nanos,
        duration_nanos: i64::try_from(profile.duration.as_nanos()).unwrap_or(i64::MAX),
        period_type,
        period: profile.period,
        comment,
        drop_frames,
        default_sample_type,
    }
}

/// The `name` and `system_name` of a function in pprof output.
///
/// `name` is the demangled path without generic arguments
/// (`tokio::runtime::task::harness::Harness::poll`,
/// `<core::pin::Pin as core::future::future::Future>::poll`,
/// `core::num::<impl u64>::wrapping_add`); `system_name` is the full path
/// with them, or empty when there were none. They must differ: when they
/// are equal, `go tool pprof` takes the name for an undemangled C++ symbol
/// and strips every `<…>` and `(…)` from it, which turns Rust's qualified
/// paths into `::poll` and `::wrapping_add`.
pub(crate) fn function_names(full: &str) -> (std::borrow::Cow<'_, str>, Option<&str>) {
    let name = without_generic_arguments(full);
    let system_name = (name != full).then_some(full);
    (name, system_name)
}

/// `full` without generic argument lists: a `<…>` that directly follows a
/// name (`Vec<T>`, `Handler<(M,T1),S>`) is dropped, while one that opens
/// a path segment (`<T as Trait>::f`, `<impl Trait for T>`) is kept with
/// the generic arguments inside it dropped.
pub(crate) fn without_generic_arguments(full: &str) -> std::borrow::Cow<'_, str> {
    if !full.contains('<') {
        return std::borrow::Cow::Borrowed(full);
    }
    let mut out = String::with_capacity(full.len());
    let mut skipping = 0usize;
    let mut previous = '\0';
    for (at, c) in full.char_indices() {
        if skipping > 0 {
            match c {
                '<' => skipping += 1,
                // `->` in `Fn() -> T` is not a closing bracket.
                '>' if previous != '-' => skipping -= 1,
                _ => {}
            }
        } else if c == '<' && (previous.is_alphanumeric() || previous == '_') {
            skipping = 1;
        } else if c == '<' && out.ends_with("::") && !full[at..].starts_with("<impl ") {
            // A turbofish, `catch_unwind::<i32, F>`: drop it with its `::`.
            out.truncate(out.len() - 2);
            skipping = 1;
        } else {
            out.push(c);
        }
        previous = c;
    }
    if skipping > 0 {
        // Unbalanced: not a Rust path we understand; keep it whole.
        return std::borrow::Cow::Borrowed(full);
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_pprof_names_keep_rust_paths_readable() {
        for (full, name) in [
            (
                "tokio::runtime::task::harness::Harness<T,S>::poll",
                "tokio::runtime::task::harness::Harness::poll",
            ),
            (
                "<core::pin::Pin<P> as core::future::future::Future>::poll",
                "<core::pin::Pin as core::future::future::Future>::poll",
            ),
            (
                "<F as axum::handler::Handler<(M,T1),S>>::call::{{closure}}",
                "<F as axum::handler::Handler>::call::{{closure}}",
            ),
            (
                "<alloc::boxed::Box<dyn core::ops::function::FnOnce<(), Output = ()> + core::marker::Send> as core::ops::function::FnOnce<()>>::call_once",
                "<alloc::boxed::Box as core::ops::function::FnOnce>::call_once",
            ),
            (
                "core::iter::range::<impl core::iter::traits::iterator::Iterator for core::ops::range::Range<A>>::next",
                "core::iter::range::<impl core::iter::traits::iterator::Iterator for core::ops::range::Range>::next",
            ),
            (
                "<Box<dyn Fn(u32) -> Vec<u8>> as Trait>::f",
                "<Box as Trait>::f",
            ),
            (
                "std::panicking::catch_unwind::<i32, &dyn core::ops::function::Fn + core::marker::Sync>",
                "std::panicking::catch_unwind",
            ),
            (
                "std::panicking::catch_unwind::do_call::<std::rt::lang_start_internal::{closure#0}, isize>",
                "std::panicking::catch_unwind::do_call",
            ),
        ] {
            let (shown, system) = function_names(full);
            assert_eq!(shown, name);
            assert_eq!(system, Some(full), "the full name is kept");
        }
        // Without generic arguments the name is kept and system_name is
        // empty, so the two still differ.
        for plain in [
            "core::num::<impl u64>::wrapping_add",
            "memcpy",
            "my::f::{{closure}}",
        ] {
            assert_eq!(
                function_names(plain),
                (std::borrow::Cow::Borrowed(plain), None)
            );
        }
        assert_eq!(without_generic_arguments("broken<a"), "broken<a");
    }
    use crate::profile::build::tests::sample_profile;
    use std::io::Read;

    fn decode(bytes: &[u8]) -> proto::Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .expect("gzip");
        proto::Profile::decode(raw.as_slice()).expect("protobuf")
    }

    #[test]
    fn encodes_gzip_protobuf_with_addresses_mappings_and_labels() {
        let profile = sample_profile();
        let bytes = encode(&profile).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        let decoded = decode(&bytes);
        let s = |i: i64| decoded.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        let types: Vec<_> = decoded
            .sample_type
            .iter()
            .map(|vt| (s(vt.r#type), s(vt.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!(s(decoded.default_sample_type), "cpu");
        assert_eq!(decoded.period, 10_000_000);
        assert_eq!(decoded.duration_nanos, 2_000_000_000);
        assert_eq!(decoded.time_nanos, 1_700_000_000_000_000_000);
        assert_eq!(decoded.sample.len(), 2);
        assert_eq!(s(decoded.sample[0].label[0].key), "thread");
        assert_eq!(s(decoded.sample[0].label[0].str), "worker");
        assert_eq!(s(decoded.sample[0].label[1].key), "route");
        assert_eq!(s(decoded.sample[0].label[1].str), "/hot");
        assert_eq!(
            decoded.sample[1].label.len(),
            1,
            "no labels: the thread only"
        );
        // Real addresses, each location in the executable's mapping.
        for location in &decoded.location {
            assert_ne!(location.address, 0);
            assert_ne!(location.mapping_id, 0);
            let mapping = &decoded.mapping[location.mapping_id as usize - 1];
            assert!((mapping.memory_start..mapping.memory_limit).contains(&location.address));
            assert!(!location.line.is_empty());
            assert!(location.line.iter().all(|l| l.line > 0));
        }
        let main = &decoded.mapping[0];
        assert_ne!(main.build_id, 0);
        assert!(main.has_functions && main.has_line_numbers);
        let leaf = &decoded.location[decoded.sample[0].location_id[0] as usize - 1];
        let function = &decoded.function[leaf.line[0].function_id as usize - 1];
        assert!(s(function.name).ends_with("leaf_for_tests"));
        assert!(s(function.filename).ends_with("build.rs"));
        assert!(decoded.comment.iter().any(|&c| s(c) == "2 s window"));
    }

    #[test]
    fn unresolved_locations_have_no_lines_for_server_side_symbolization() {
        let mut profile = sample_profile();
        profile.locations[0].symbolized = false;
        let decoded = decode(&encode(&profile).unwrap());
        assert!(decoded.location[0].line.is_empty());
        assert_ne!(decoded.location[0].address, 0);
        assert_ne!(decoded.location[0].mapping_id, 0);
        assert!(!decoded.location[1].line.is_empty());
    }

    #[test]
    fn an_inline_chain_is_one_location_with_several_lines() {
        let mut profile = sample_profile();
        let inner = crate::symbols::SymbolizedFrame {
            function: "inlined_callee".into(),
            file: Some("lib.rs".into()),
            line: Some(3),
        };
        let mut frames: Vec<_> = profile.locations[0].frames.to_vec();
        frames.insert(0, inner);
        profile.locations[0].frames = frames.into();
        let decoded = decode(&encode(&profile).unwrap());
        assert_eq!(decoded.location.len(), 2);
        let lines = &decoded.location[0].line;
        assert_eq!(lines.len(), 2);
        let name = |l: &proto::Line| {
            let f = &decoded.function[l.function_id as usize - 1];
            decoded.string_table[f.name as usize].clone()
        };
        assert_eq!(name(&lines[0]), "inlined_callee", "innermost first");
        assert!(name(&lines[1]).ends_with("leaf_for_tests"));
    }
}
