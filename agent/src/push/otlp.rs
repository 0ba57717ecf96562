//! OTLP profiles: one segment as an `ExportProfilesServiceRequest`
//! (`opentelemetry.proto.collector.profiles.v1development`, OTLP proto
//! v1.10.0 as the `opentelemetry-proto` crate generates it), gzip
//! protobuf for `POST {url}/v1development/profiles`.
//!
//! The shape follows the profiles data model and what receivers read:
//! - one `ResourceProfiles` whose resource carries the push labels as
//!   semantic-convention attributes (`service.name`, `service.version`,
//!   `deployment.environment.name`, `service.instance.id`, the others by
//!   name) with `process.*` and `telemetry.sdk.*`; one `ScopeProfiles`
//!   (`stethoscope`), one `Profile` per segment;
//! - every table of the request's `ProfilesDictionary` starts with its
//!   zero value (index 0 means "none"), strings and attributes are
//!   deduplicated, and each sample points at a deduplicated `Stack` of
//!   location indices, leaf first;
//! - a location per address with its mapping (file name, GNU build ID as
//!   `process.executable.build_id.gnu`) and its inline chain as `lines`
//!   (innermost first); unsymbolized locations keep their address and
//!   mapping without lines, for server-side symbolization;
//! - the sample type is `samples`/`count` with period type
//!   `cpu`/`nanoseconds` and the measured period (CPU time ÷ samples):
//!   what the OpenTelemetry eBPF profiler sends and what Pyroscope turns
//!   into its `process_cpu` profile (counts × period);
//! - each sample's thread (`thread.name`) and labels (`route`, `task`,
//!   `span`, yours) are sample attributes.

use std::collections::HashMap;
use std::io::Write;
use std::time::UNIX_EPOCH;

use flate2::write::GzEncoder;
use flate2::Compression;
use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::profiles::v1development::{
    Function, KeyValueAndUnit, Line, Location, Mapping, Profile as OtlpProfile,
    ProfilesDictionary, ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::profile::{function_names, Profile};

/// The sample attribute naming the thread a stack was sampled on.
const THREAD_ATTRIBUTE: &str = "thread.name";
/// The mapping attribute holding a binary's GNU build ID (hex).
const BUILD_ID_ATTRIBUTE: &str = "process.executable.build_id.gnu";

/// The resource attribute a push label becomes.
fn attribute_name(label: &str) -> &str {
    match label {
        "service_name" => "service.name",
        "version" => "service.version",
        "environment" => "deployment.environment.name",
        "instance" => "service.instance.id",
        other => other,
    }
}

fn string_value(value: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

/// The resource every pushed profile describes: the push labels
/// (`series_labels`, without `__name__`) as attributes, then the process
/// and the SDK.
pub(crate) fn resource(labels: &[(String, String)]) -> Resource {
    let mut attributes: Vec<KeyValue> = labels
        .iter()
        .filter(|(name, _)| name != "__name__")
        .map(|(name, value)| KeyValue {
            key: attribute_name(name).to_owned(),
            value: string_value(value.as_str()),
            ..KeyValue::default()
        })
        .collect();
    let process = [
        ("process.executable.name", string_value(crate::profile::process_name())),
        (
            "process.pid",
            Some(AnyValue {
                value: Some(any_value::Value::IntValue(i64::from(std::process::id()))),
            }),
        ),
        ("telemetry.sdk.name", string_value("stethoscope")),
        ("telemetry.sdk.language", string_value("rust")),
        ("telemetry.sdk.version", string_value(env!("CARGO_PKG_VERSION"))),
    ];
    for (key, value) in process {
        if !attributes.iter().any(|a| a.key == key) {
            attributes.push(KeyValue {
                key: key.to_owned(),
                value,
                ..KeyValue::default()
            });
        }
    }
    Resource {
        attributes,
        ..Resource::default()
    }
}

/// The request's dictionary under construction: every table starts with
/// its zero value, and equal entries share an index.
struct Dictionary {
    tables: ProfilesDictionary,
    strings: HashMap<String, i32>,
    functions: HashMap<(i32, i32, i32), i32>,
    attributes: HashMap<(i32, String), i32>,
    stacks: HashMap<Vec<i32>, i32>,
}

/// A table index as the proto's `int32` (a profile of more than 2³¹
/// entries is not one the agent makes; saturate rather than wrap).
fn index(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

impl Dictionary {
    fn new() -> Self {
        let mut dictionary = Dictionary {
            tables: ProfilesDictionary {
                mapping_table: vec![Mapping::default()],
                location_table: vec![Location::default()],
                function_table: vec![Function::default()],
                link_table: vec![Default::default()],
                string_table: Vec::new(),
                attribute_table: vec![KeyValueAndUnit::default()],
                stack_table: vec![Stack::default()],
            },
            strings: HashMap::new(),
            functions: HashMap::new(),
            attributes: HashMap::new(),
            stacks: HashMap::new(),
        };
        dictionary.string("");
        dictionary
    }

    fn string(&mut self, text: &str) -> i32 {
        if let Some(&at) = self.strings.get(text) {
            return at;
        }
        let at = index(self.tables.string_table.len());
        self.tables.string_table.push(text.to_owned());
        self.strings.insert(text.to_owned(), at);
        at
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            type_strindex: self.string(kind),
            unit_strindex: self.string(unit),
        }
    }

    /// A string attribute `key=value`.
    fn attribute(&mut self, key: &str, value: &str) -> i32 {
        let key = self.string(key);
        if let Some(&at) = self.attributes.get(&(key, value.to_owned())) {
            return at;
        }
        let at = index(self.tables.attribute_table.len());
        self.tables.attribute_table.push(KeyValueAndUnit {
            key_strindex: key,
            value: string_value(value),
            unit_strindex: 0,
        });
        self.attributes.insert((key, value.to_owned()), at);
        at
    }

    fn function(&mut self, full_name: &str, file: Option<&str>) -> i32 {
        let (name, system_name) = function_names(full_name);
        let key = (
            self.string(&name),
            system_name.map_or(0, |s| self.string(s)),
            file.map_or(0, |f| self.string(f)),
        );
        if let Some(&at) = self.functions.get(&key) {
            return at;
        }
        let at = index(self.tables.function_table.len());
        self.tables.function_table.push(Function {
            name_strindex: key.0,
            system_name_strindex: key.1,
            filename_strindex: key.2,
            start_line: 0,
        });
        self.functions.insert(key, at);
        at
    }

    fn stack(&mut self, locations: Vec<i32>) -> i32 {
        if let Some(&at) = self.stacks.get(&locations) {
            return at;
        }
        let at = index(self.tables.stack_table.len());
        self.tables.stack_table.push(Stack {
            location_indices: locations.clone(),
        });
        self.stacks.insert(locations, at);
        at
    }
}

/// The value of `profile` an OTLP profile carries (it holds one sample
/// type): `samples`/`count` when the profile has it and a period (the
/// receiver multiplies counts by the period), else the default value.
fn carried_value(profile: &Profile) -> usize {
    profile
        .sample_types
        .iter()
        .position(|t| t.kind == "samples" && t.unit == "count")
        .filter(|_| profile.period > 0)
        .unwrap_or(profile.default_value)
}

/// `profile` as an OTLP export request describing `resource`, with the
/// 16-byte `profile_id`.
pub(crate) fn request(
    profile: &Profile,
    resource: &Resource,
    profile_id: [u8; 16],
) -> ExportProfilesServiceRequest {
    let mut dictionary = Dictionary::new();
    let value = carried_value(profile);
    let sample_type = profile
        .sample_types
        .get(value)
        .map(|t| dictionary.value_type(&t.kind, &t.unit));
    let period_type = Some(dictionary.value_type(&profile.period_type.kind, &profile.period_type.unit));

    for mapping in &profile.mappings {
        let filename_strindex = dictionary.string(&mapping.file);
        let attribute_indices = mapping
            .build_id
            .as_deref()
            .map(|id| dictionary.attribute(BUILD_ID_ATTRIBUTE, id))
            .into_iter()
            .collect();
        dictionary.tables.mapping_table.push(Mapping {
            memory_start: mapping.start,
            memory_limit: mapping.limit,
            file_offset: mapping.file_offset,
            filename_strindex,
            attribute_indices,
        });
    }
    // Location i of the profile is location_table[i + 1], mapping m is
    // mapping_table[m + 1].
    for location in &profile.locations {
        let lines = if location.symbolized {
            location
                .frames
                .iter()
                .map(|frame| Line {
                    function_index: dictionary.function(&frame.function, frame.file.as_deref()),
                    line: frame.line.map_or(0, i64::from),
                    column: 0,
                })
                .collect()
        } else {
            Vec::new()
        };
        dictionary.tables.location_table.push(Location {
            mapping_index: location.mapping.map_or(0, |m| index(m + 1)),
            address: location.address,
            lines,
            attribute_indices: Vec::new(),
        });
    }

    // A sample's identity is its stack and attribute set: samples of the
    // same identity are merged (their values added).
    let mut samples: Vec<Sample> = Vec::with_capacity(profile.samples.len());
    let mut identity: HashMap<(i32, Vec<i32>), usize> = HashMap::new();
    for sample in &profile.samples {
        let stack = dictionary.stack(sample.locations.iter().map(|&l| index(l + 1)).collect());
        let mut keys: Vec<&str> = Vec::new();
        let mut attributes: Vec<i32> = Vec::new();
        let thread = sample.thread.as_deref().map(|t| (THREAD_ATTRIBUTE, t));
        for (key, value) in thread.into_iter().chain(sample.labels.iter()) {
            // Keys are unique within a sample's attributes.
            if !keys.contains(&key) {
                keys.push(key);
                attributes.push(dictionary.attribute(key, value));
            }
        }
        attributes.sort_unstable();
        let weight = sample.values.get(value).copied().unwrap_or(0);
        match identity.get(&(stack, attributes.clone())) {
            Some(&at) => {
                if let Some(total) = samples.get_mut(at).and_then(|s| s.values.first_mut()) {
                    *total = total.saturating_add(weight);
                }
            }
            None => {
                identity.insert((stack, attributes.clone()), samples.len());
                samples.push(Sample {
                    stack_index: stack,
                    attribute_indices: attributes,
                    link_index: 0,
                    values: vec![weight],
                    timestamps_unix_nano: Vec::new(),
                });
            }
        }
    }

    let time_unix_nano = profile
        .started_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let otlp_profile = OtlpProfile {
        sample_type,
        samples,
        time_unix_nano,
        duration_nano: u64::try_from(profile.duration.as_nanos()).unwrap_or(u64::MAX),
        period_type,
        period: profile.period,
        profile_id: profile_id.to_vec(),
        ..OtlpProfile::default()
    };
    ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            resource: Some(resource.clone()),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "stethoscope".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                profiles: vec![otlp_profile],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
        dictionary: Some(dictionary.tables),
    }
}

/// The body of one push: [`request`] as gzip protobuf (sent with
/// `Content-Encoding: gzip`, which OTLP/HTTP servers accept).
pub(crate) fn encode(
    profile: &Profile,
    resource: &Resource,
    profile_id: [u8; 16],
) -> std::io::Result<Vec<u8>> {
    let raw = request(profile, resource, profile_id).encode_to_vec();
    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 4 + 64), Compression::default());
    gz.write_all(&raw)?;
    gz.finish()
}

/// What a successful answer says: `Err` with the server's message when it
/// rejected the profile (`partial_success.rejected_profiles` > 0). An
/// empty or unreadable answer is a success (a 2xx is what OTLP promises).
pub(crate) fn check_answer(body: &[u8]) -> Result<(), String> {
    let Ok(answer) = ExportProfilesServiceResponse::decode(body) else {
        return Ok(());
    };
    match answer.partial_success {
        Some(partial) if partial.rejected_profiles > 0 => Err(format!(
            "the server rejected {} profile(s): {}",
            partial.rejected_profiles, partial.error_message
        )),
        _ => Ok(()),
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error answered in
/// protobuf (its `details` are not read).
#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The message of an error answer in protobuf (`google.rpc.Status`), if
/// it is one.
pub(crate) fn status_message(body: &[u8]) -> Option<String> {
    Status::decode(body)
        .ok()
        .map(|status| status.message)
        .filter(|message| !message.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::build::tests::sample_profile;
    use crate::profile::Format;
    use opentelemetry_proto::tonic::profiles::v1development::ProfilesDictionary;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .expect("gzip");
        raw
    }

    fn labels() -> Vec<(String, String)> {
        [
            ("__name__", "process_cpu"),
            ("environment", "prod"),
            ("instance", "host-1"),
            ("region", "eu"),
            ("service_name", "checkout"),
            ("version", "1.2.3"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
    }

    fn string_of(attribute: &KeyValue) -> Option<&str> {
        match attribute.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// The frames (function names, innermost first) of a sample's stack.
    fn stack_names(d: &ProfilesDictionary, sample: &Sample) -> Vec<String> {
        let stack = &d.stack_table[sample.stack_index as usize];
        stack
            .location_indices
            .iter()
            .flat_map(|&l| d.location_table[l as usize].lines.iter())
            .map(|line| {
                let f = &d.function_table[line.function_index as usize];
                let system = &d.string_table[f.system_name_strindex as usize];
                if system.is_empty() {
                    d.string_table[f.name_strindex as usize].clone()
                } else {
                    system.clone()
                }
            })
            .collect()
    }

    fn sample_attributes(d: &ProfilesDictionary, sample: &Sample) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = sample
            .attribute_indices
            .iter()
            .map(|&a| {
                let kv = &d.attribute_table[a as usize];
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => panic!("not a string: {other:?}"),
                };
                (d.string_table[kv.key_strindex as usize].clone(), value)
            })
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn decodes_to_the_stacks_weights_and_labels_of_the_profile() {
        let profile = sample_profile();
        let body = encode(&profile, &resource(&labels()), [7; 16]).unwrap();
        assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip");
        let request = ExportProfilesServiceRequest::decode(gunzip(&body).as_slice()).unwrap();
        let d = request.dictionary.as_ref().unwrap();
        // Every table starts with its zero value.
        assert_eq!(d.string_table[0], "");
        assert_eq!(d.mapping_table[0], Mapping::default());
        assert_eq!(d.location_table[0], Location::default());
        assert_eq!(d.function_table[0], Function::default());
        assert_eq!(d.attribute_table[0], KeyValueAndUnit::default());
        assert_eq!(d.stack_table[0], Stack::default());
        assert_eq!(d.link_table.len(), 1);
        let mut unique = d.string_table.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), d.string_table.len(), "no duplicate strings");

        assert_eq!(request.resource_profiles.len(), 1);
        let scope = &request.resource_profiles[0].scope_profiles[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "stethoscope");
        let p = &scope.profiles[0];
        let s = |i: i32| d.string_table[i as usize].as_str();
        let st = p.sample_type.as_ref().unwrap();
        assert_eq!((s(st.type_strindex), s(st.unit_strindex)), ("samples", "count"));
        let pt = p.period_type.as_ref().unwrap();
        assert_eq!((s(pt.type_strindex), s(pt.unit_strindex)), ("cpu", "nanoseconds"));
        assert_eq!(p.period, profile.period);
        assert_eq!(p.time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(p.duration_nano, 2_000_000_000);
        assert_eq!(p.profile_id, [7; 16]);

        // The same stacks with the same counts and labels as the profile
        // (and its pprof), and counts × period give its CPU time.
        assert_eq!(p.samples.len(), profile.samples.len());
        for (ours, theirs) in p.samples.iter().zip(&profile.samples) {
            let names: Vec<String> = profile
                .frames_root_first(theirs)
                .map(|f| f.function.to_string())
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            assert_eq!(stack_names(d, ours), names);
            assert_eq!(ours.values, [theirs.values[0]]);
            let mut expected: Vec<(String, String)> = theirs
                .labels
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .chain(theirs.thread.iter().map(|t| ("thread.name".to_owned(), t.to_string())))
                .collect();
            expected.sort();
            assert_eq!(sample_attributes(d, ours), expected);
            assert_eq!(ours.values[0] * p.period, theirs.values[1], "count × period = CPU");
        }
        assert!(sample_attributes(d, &p.samples[0]).contains(&("route".into(), "/hot".into())));

        // Locations keep their address, their mapping and its build ID.
        for (i, location) in profile.locations.iter().enumerate() {
            let ours = &d.location_table[i + 1];
            assert_eq!(ours.address, location.address);
            let mapping = &d.mapping_table[ours.mapping_index as usize];
            assert!((mapping.memory_start..mapping.memory_limit).contains(&ours.address));
            assert!(ours.lines.iter().all(|l| l.line > 0));
        }
        let main = &d.mapping_table[1];
        let build_id = sample_attributes(
            d,
            &Sample {
                attribute_indices: main.attribute_indices.clone(),
                ..Sample::default()
            },
        );
        assert_eq!(
            build_id,
            [(
                BUILD_ID_ATTRIBUTE.to_owned(),
                profile.mappings[0].build_id.clone().unwrap()
            )]
        );
    }

    /// The parts of pprof's `profile.proto` the comparison reads.
    mod pprof {
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Profile {
            #[prost(message, repeated, tag = "1")]
            pub(super) sample_type: Vec<ValueType>,
            #[prost(message, repeated, tag = "2")]
            pub(super) sample: Vec<Sample>,
            #[prost(message, repeated, tag = "4")]
            pub(super) location: Vec<Location>,
            #[prost(message, repeated, tag = "5")]
            pub(super) function: Vec<Function>,
            #[prost(string, repeated, tag = "6")]
            pub(super) string_table: Vec<String>,
            #[prost(int64, tag = "12")]
            pub(super) period: i64,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct ValueType {
            #[prost(int64, tag = "1")]
            pub(super) r#type: i64,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Sample {
            #[prost(uint64, repeated, tag = "1")]
            pub(super) location_id: Vec<u64>,
            #[prost(int64, repeated, tag = "2")]
            pub(super) value: Vec<i64>,
            #[prost(message, repeated, tag = "3")]
            pub(super) label: Vec<Label>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Label {
            #[prost(int64, tag = "1")]
            pub(super) key: i64,
            #[prost(int64, tag = "2")]
            pub(super) str: i64,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Location {
            #[prost(uint64, tag = "1")]
            pub(super) id: u64,
            #[prost(uint64, tag = "3")]
            pub(super) address: u64,
            #[prost(message, repeated, tag = "4")]
            pub(super) line: Vec<Line>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Line {
            #[prost(uint64, tag = "1")]
            pub(super) function_id: u64,
            #[prost(int64, tag = "2")]
            pub(super) line: i64,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Function {
            #[prost(uint64, tag = "1")]
            pub(super) id: u64,
            #[prost(int64, tag = "2")]
            pub(super) name: i64,
        }
    }

    #[test]
    fn the_otlp_request_carries_the_stacks_weights_and_labels_of_the_pprof() {
        // The pprof the Pyroscope protocol pushes and the OTLP request,
        // from the same segment profile, decoded side by side.
        let profile = sample_profile();
        let pprof = pprof::Profile::decode(gunzip(&profile.render(Format::Pprof).unwrap()).as_slice())
            .unwrap();
        let ps = |i: i64| pprof.string_table[i as usize].as_str();
        let request = request(&profile, &resource(&labels()), [1; 16]);
        let d = request.dictionary.as_ref().unwrap();
        let p = &request.resource_profiles[0].scope_profiles[0].profiles[0];
        let os = |i: i32| d.string_table[i as usize].as_str();
        assert_eq!(p.period, pprof.period);
        assert_eq!(ps(pprof.sample_type[0].r#type), "samples");
        assert_eq!(pprof.sample.len(), p.samples.len());
        for (theirs, ours) in pprof.sample.iter().zip(&p.samples) {
            // The stack: (address, [(function, line)]) per location, leaf first.
            let pprof_stack: Vec<(u64, Vec<(String, i64)>)> = theirs
                .location_id
                .iter()
                .map(|&id| {
                    let location = pprof.location.iter().find(|l| l.id == id).unwrap();
                    let lines = location
                        .line
                        .iter()
                        .map(|line| {
                            let f = pprof.function.iter().find(|f| f.id == line.function_id).unwrap();
                            (ps(f.name).to_owned(), line.line)
                        })
                        .collect();
                    (location.address, lines)
                })
                .collect();
            let otlp_stack: Vec<(u64, Vec<(String, i64)>)> = d.stack_table
                [ours.stack_index as usize]
                .location_indices
                .iter()
                .map(|&l| {
                    let location = &d.location_table[l as usize];
                    let lines = location
                        .lines
                        .iter()
                        .map(|line| {
                            let f = &d.function_table[line.function_index as usize];
                            (os(f.name_strindex).to_owned(), line.line)
                        })
                        .collect();
                    (location.address, lines)
                })
                .collect();
            assert_eq!(otlp_stack, pprof_stack);
            // Weights: the count, and count × period is the pprof's CPU.
            assert_eq!(ours.values, [theirs.value[0]]);
            assert_eq!(ours.values[0] * p.period, theirs.value[1]);
            // Labels: pprof's `thread` is OTLP's `thread.name`.
            let mut pprof_labels: Vec<(String, String)> = theirs
                .label
                .iter()
                .map(|l| {
                    let key = match ps(l.key) {
                        "thread" => "thread.name",
                        other => other,
                    };
                    (key.to_owned(), ps(l.str).to_owned())
                })
                .collect();
            pprof_labels.sort();
            assert_eq!(sample_attributes(d, ours), pprof_labels);
        }
    }

    #[test]
    fn the_resource_carries_the_push_labels_as_semantic_conventions() {
        let resource = resource(&labels());
        let get = |key: &str| {
            resource
                .attributes
                .iter()
                .find(|a| a.key == key)
                .and_then(string_of)
                .map(str::to_owned)
        };
        assert_eq!(get("service.name").as_deref(), Some("checkout"));
        assert_eq!(get("service.version").as_deref(), Some("1.2.3"));
        assert_eq!(get("deployment.environment.name").as_deref(), Some("prod"));
        assert_eq!(get("service.instance.id").as_deref(), Some("host-1"));
        assert_eq!(get("region").as_deref(), Some("eu"));
        assert_eq!(get("telemetry.sdk.language").as_deref(), Some("rust"));
        assert!(get("__name__").is_none());
        assert!(resource.attributes.iter().any(|a| a.key == "process.pid"));
    }

    #[test]
    fn unsymbolized_locations_have_no_lines_and_equal_samples_merge() {
        let mut profile = sample_profile();
        profile.locations[0].symbolized = false;
        let twin = profile.samples[0].clone();
        profile.samples.push(twin);
        let request = request(&profile, &resource(&[]), [1; 16]);
        let d = request.dictionary.as_ref().unwrap();
        assert!(d.location_table[1].lines.is_empty());
        assert_ne!(d.location_table[1].address, 0);
        assert_ne!(d.location_table[1].mapping_index, 0);
        let p = &request.resource_profiles[0].scope_profiles[0].profiles[0];
        assert_eq!(p.samples.len(), 2, "the twin merged into the first sample");
        assert_eq!(p.samples[0].values, [2 * profile.samples[0].values[0]]);
        // Stacks are shared: two samples, two stacks (plus the zero stack).
        assert_eq!(d.stack_table.len(), 3);
    }

    #[test]
    fn an_empty_segment_is_a_profile_without_samples() {
        let mut profile = sample_profile();
        profile.samples.clear();
        let request = request(&profile, &resource(&labels()), [1; 16]);
        let p = &request.resource_profiles[0].scope_profiles[0].profiles[0];
        assert!(p.samples.is_empty());
        assert_eq!(p.duration_nano, 2_000_000_000);
    }

    #[test]
    fn answers_partial_success_and_errors_are_read() {
        use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesPartialSuccess;
        assert!(check_answer(b"").is_ok());
        assert!(check_answer(b"\xff\xff not protobuf").is_ok());
        let warning = ExportProfilesServiceResponse {
            partial_success: Some(ExportProfilesPartialSuccess {
                rejected_profiles: 0,
                error_message: "just a warning".into(),
            }),
        };
        assert!(check_answer(&warning.encode_to_vec()).is_ok());
        let rejected = ExportProfilesServiceResponse {
            partial_success: Some(ExportProfilesPartialSuccess {
                rejected_profiles: 1,
                error_message: "too old".into(),
            }),
        };
        let error = check_answer(&rejected.encode_to_vec()).unwrap_err();
        assert!(error.contains("too old"), "{error}");
        let status = Status {
            code: 3,
            message: "bad profile".into(),
        };
        assert_eq!(status_message(&status.encode_to_vec()).as_deref(), Some("bad profile"));
        assert_eq!(status_message(b""), None);
    }
}
