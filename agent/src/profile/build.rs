//! Raw stacks of addresses → a symbolized [`Profile`] with mappings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Location, Mapping, Profile, Sample, ValueType};
use crate::labels::LabelSet;
use crate::symbols::modules::{loaded_modules, vdso_symbols, LoadedModule};
use crate::symbols::symbolize::Symbolizer;
use crate::symbols::SymbolizedFrame;

/// Everything about a profile except its stacks.
#[derive(Debug, Clone)]
pub(crate) struct ProfileMeta {
    pub(crate) sample_types: Vec<ValueType>,
    pub(crate) default_value: usize,
    pub(crate) flame_value: usize,
    pub(crate) period_type: ValueType,
    pub(crate) period: i64,
    pub(crate) started_at: SystemTime,
    pub(crate) duration: Duration,
    pub(crate) title: String,
    pub(crate) comments: Vec<String>,
    /// Resolve function names, files and lines (else addresses only).
    pub(crate) symbolize: bool,
    /// See [`Profile::drop_frames`].
    pub(crate) drop_frames: Option<&'static str>,
}

/// One stack of lookup addresses (leaf first) with its values.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawStack<'a> {
    pub(crate) thread: Option<Arc<str>>,
    pub(crate) addresses: &'a [u64],
    pub(crate) values: Vec<i64>,
    pub(crate) labels: LabelSet,
}

impl Profile {
    /// Symbolizes `stacks` (through the process-wide cache) and attaches the
    /// mappings of the binaries their addresses belong to.
    pub(crate) fn build<'a>(
        meta: ProfileMeta,
        stacks: impl IntoIterator<Item = RawStack<'a>>,
    ) -> Profile {
        let stacks: Vec<RawStack<'a>> = stacks.into_iter().collect();
        let mut location_of: HashMap<u64, usize> = HashMap::new();
        let mut addresses: Vec<u64> = Vec::new();
        for stack in &stacks {
            for &address in stack.addresses {
                location_of.entry(address).or_insert_with(|| {
                    addresses.push(address);
                    addresses.len() - 1
                });
            }
        }
        let symbols = if meta.symbolize {
            Symbolizer::global().resolve(&addresses)
        } else {
            HashMap::new()
        };
        let modules = loaded_modules(false);
        let mut mappings = mappings_of(&modules);
        let locations: Vec<Location> = addresses
            .iter()
            .map(|&address| {
                let mapping = mappings
                    .iter()
                    .position(|m| (m.start..m.limit).contains(&address));
                let (frames, named) = match symbols.get(&address) {
                    Some(frames) if !frames.is_empty() => (Arc::clone(frames), true),
                    _ => fallback_frame(address, &modules),
                };
                if let Some(m) = mapping.and_then(|i| mappings.get_mut(i)) {
                    m.has_functions |= named;
                    if frames.iter().any(|f| f.line.is_some()) {
                        m.has_lines = true;
                    }
                    if frames.len() > 1 {
                        m.has_inline_frames = true;
                    }
                }
                Location {
                    address,
                    mapping,
                    frames,
                    symbolized: named,
                }
            })
            .collect();
        let samples = stacks
            .into_iter()
            .map(|stack| Sample {
                locations: stack
                    .addresses
                    .iter()
                    .filter_map(|a| location_of.get(a).copied())
                    .collect(),
                values: stack.values,
                thread: stack.thread,
                labels: stack.labels,
            })
            .collect();
        Profile {
            sample_types: meta.sample_types,
            default_value: meta.default_value,
            flame_value: meta.flame_value,
            period_type: meta.period_type,
            period: meta.period,
            started_at: meta.started_at,
            duration: meta.duration,
            title: meta.title,
            comments: meta.comments,
            drop_frames: meta.drop_frames,
            samples,
            locations,
            mappings,
        }
    }
}

/// One mapping per executable segment; the main executable comes first, as
/// pprof tools expect.
///
/// The bounds are the segment's exact loaded range and its file offset, not
/// the page-aligned `/proc/self/maps` view: Go's `cmd/pprof` relocates a
/// binary by `start − (virtual address of its executable segment)`, which is
/// only right for the exact start (linkers such as lld place the segment at
/// an offset within its first page), and tools that normalize with
/// `address − start + file_offset` get the same file offset either way.
fn mappings_of(modules: &[LoadedModule]) -> Vec<Mapping> {
    let mut mappings = Vec::new();
    for module in modules {
        for segment in module.segments.iter().filter(|s| s.executable) {
            mappings.push(Mapping {
                start: segment.svma.start.wrapping_add(module.base),
                limit: segment.svma.end.wrapping_add(module.base),
                file_offset: segment.file_offset,
                file: module.path.clone(),
                build_id: module.build_id_hex(),
                has_functions: false,
                has_lines: false,
                has_inline_frames: false,
            });
        }
    }
    mappings
}

/// A name for an address the symbolizer could not resolve: a vDSO function
/// (there is no file to read its symbols from), `libfoo.so+0x1234`, or the
/// raw address outside any binary (JIT code, corrupt frames). The flag says
/// whether it is a real function name.
fn fallback_frame(address: u64, modules: &[LoadedModule]) -> (Arc<[SymbolizedFrame]>, bool) {
    let (name, named) = match vdso_symbols().iter().find(|s| s.range.contains(&address)) {
        Some(symbol) => (symbol.name.clone(), true),
        None => (
            modules
                .iter()
                .find(|m| m.code_range().is_some_and(|r| r.contains(&address)))
                .map(|m| format!("{}+{:#x}", m.file_name(), address.wrapping_sub(m.base)))
                .unwrap_or_else(|| format!("{address:#x}")),
            false,
        ),
    };
    let frames = Arc::from([SymbolizedFrame {
        function: Arc::from(name),
        file: None,
        line: None,
    }]);
    (frames, named)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[inline(never)]
    pub(crate) fn leaf_for_tests() -> u64 {
        std::hint::black_box(7)
    }

    #[inline(never)]
    pub(crate) fn caller_for_tests() -> u64 {
        std::hint::black_box(leaf_for_tests()) + 1
    }

    fn sample_profile_meta() -> ProfileMeta {
        ProfileMeta {
            sample_types: vec![
                ValueType::new("samples", "count"),
                ValueType::new("cpu", "nanoseconds"),
            ],
            default_value: 1,
            flame_value: 0,
            period_type: ValueType::new("cpu", "nanoseconds"),
            period: 10_000_000,
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_secs(2),
            title: "CPU profile of tests".into(),
            comments: vec!["2 s window".into()],
            symbolize: true,
            drop_frames: None,
        }
    }

    /// A CPU profile of named stacks (leaf first) weighing `ms`
    /// milliseconds each, on thread `worker`, without addresses.
    pub(crate) fn named_profile(stacks: &[(&[&str], i64)]) -> Profile {
        let meta = sample_profile_meta();
        let mut locations = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let samples = stacks
            .iter()
            .map(|(frames, ms)| Sample {
                locations: frames
                    .iter()
                    .map(|&name| {
                        *index.entry(name).or_insert_with(|| {
                            locations.push(Location {
                                address: 0x1000 + locations.len() as u64,
                                mapping: None,
                                frames: Arc::from(vec![SymbolizedFrame {
                                    function: Arc::from(name),
                                    file: None,
                                    line: None,
                                }]),
                                symbolized: true,
                            });
                            locations.len() - 1
                        })
                    })
                    .collect(),
                values: vec![1, ms * 1_000_000],
                thread: Some(Arc::from("worker")),
                labels: LabelSet::default(),
            })
            .collect();
        Profile {
            sample_types: meta.sample_types,
            default_value: meta.default_value,
            flame_value: meta.flame_value,
            period_type: meta.period_type,
            period: meta.period,
            started_at: meta.started_at,
            duration: meta.duration,
            title: meta.title,
            comments: meta.comments,
            drop_frames: meta.drop_frames,
            samples,
            locations,
            mappings: Vec::new(),
        }
    }

    /// A small CPU-like profile over real addresses of this test binary.
    pub(crate) fn sample_profile() -> Profile {
        let leaf = leaf_for_tests as *const () as usize as u64;
        let caller = caller_for_tests as *const () as usize as u64;
        let hot = [leaf, caller];
        let cold = [caller];
        let meta = sample_profile_meta();
        Profile::build(
            meta,
            [
                RawStack {
                    thread: Some(Arc::from("worker")),
                    addresses: &hot,
                    values: vec![3, 30_000_000],
                    labels: crate::labels::Labels::new([("route", "/hot")]).set(),
                },
                RawStack {
                    thread: Some(Arc::from("main")),
                    addresses: &cold,
                    values: vec![1, 10_000_000],
                    labels: LabelSet::default(),
                },
            ],
        )
    }

    #[test]
    fn build_symbolizes_and_maps_to_the_executable() {
        let profile = sample_profile();
        assert_eq!(profile.locations.len(), 2);
        assert_eq!(profile.total(1), 40_000_000);
        let leaf = &profile.locations[profile.samples[0].locations[0]];
        assert!(leaf.frames[0].function.ends_with("leaf_for_tests"));
        let mapping = &profile.mappings[leaf.mapping.expect("in the executable")];
        let exe = std::env::current_exe().unwrap();
        assert_eq!(mapping.file, exe.to_string_lossy());
        assert!(mapping.has_functions && mapping.has_lines);
        assert!(mapping.build_id.is_some());
        assert_eq!(profile.mappings[0].file, mapping.file, "main binary first");
        // The exact executable segment: start ↔ its file offset.
        let modules = loaded_modules(false);
        let exe_module = modules.iter().find(|m| m.path == mapping.file).unwrap();
        let segment = exe_module.segments.iter().find(|s| s.executable).unwrap();
        assert_eq!(mapping.start, segment.svma.start + exe_module.base);
        assert_eq!(mapping.file_offset, segment.file_offset);
    }

    #[test]
    fn without_symbolization_locations_keep_addresses_and_mappings_only() {
        let mut meta = sample_profile_meta();
        meta.symbolize = false;
        let leaf = leaf_for_tests as *const () as usize as u64;
        let profile = Profile::build(
            meta,
            [RawStack {
                thread: None,
                addresses: &[leaf],
                values: vec![1, 1],
                labels: LabelSet::default(),
            }],
        );
        let location = &profile.locations[0];
        assert!(!location.symbolized);
        assert!(location.mapping.is_some());
        assert!(
            location.frames[0].function.contains("+0x"),
            "{}",
            location.frames[0].function
        );
        assert!(!profile.mappings[location.mapping.unwrap()].has_functions);
    }

    #[test]
    fn unknown_addresses_get_a_readable_fallback_name() {
        let (frames, named) = fallback_frame(0x10, &[]);
        assert_eq!(&*frames[0].function, "0x10");
        assert!(!named);
    }
}
