//! Push as OTLP profiles: a receiver implementing OTLP/HTTP's profiles
//! export as Pyroscope 2.x's and the OpenTelemetry Collector's receivers
//! read it (`POST /v1development/profiles`, `application/x-protobuf`,
//! `Content-Encoding: gzip`, an `ExportProfilesServiceRequest` decoded with
//! the `opentelemetry-proto` crate's types, the dictionary's indices
//! checked), and the demo pushing 2 s segments: each exactly once, tiling
//! time, with its resource, its sample attributes and the hot function.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use opentelemetry_proto::tonic::profiles::v1development::{Profile, ProfilesDictionary};
use prost::Message;

use super::{nanos, rfc3339_of_nanos, Load};
use crate::support::{get, profiler_lock, service_runtime, wait_until, DemoProcess};

/// One pushed OTLP profile as the receiver took it apart.
#[derive(Debug, Clone)]
struct Received {
    resource: BTreeMap<String, String>,
    profile: Profile,
    dictionary: ProfilesDictionary,
    /// Size of the request as it came (gzip).
    bytes: usize,
}

fn text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

impl Received {
    fn string(&self, i: i32) -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.dictionary.string_table.get(i))
            .map_or("", String::as_str)
    }

    fn from(&self) -> i64 {
        self.profile.time_unix_nano as i64
    }

    fn until(&self) -> i64 {
        (self.profile.time_unix_nano + self.profile.duration_nano) as i64
    }

    /// The values of sample attribute `key`.
    fn attribute(&self, key: &str) -> Vec<String> {
        self.profile
            .samples
            .iter()
            .flat_map(|s| s.attribute_indices.iter())
            .map(|&a| &self.dictionary.attribute_table[a as usize])
            .filter(|kv| self.string(kv.key_strindex) == key)
            .filter_map(|kv| text(kv.value.as_ref()))
            .collect()
    }

    /// Counts × period (CPU nanoseconds) of the samples through
    /// `function`, and of all.
    fn cpu_through(&self, function: &str) -> (f64, f64) {
        let d = &self.dictionary;
        let (mut part, mut total) = (0.0, 0.0);
        for sample in &self.profile.samples {
            let value = sample.values.iter().sum::<i64>() as f64 * self.profile.period as f64;
            total += value;
            let stack = &d.stack_table[sample.stack_index as usize];
            let through = stack.location_indices.iter().any(|&l| {
                d.location_table[l as usize].lines.iter().any(|line| {
                    let f = &d.function_table[line.function_index as usize];
                    self.string(f.name_strindex).ends_with(function)
                })
            });
            if through {
                part += value;
            }
        }
        (part, total)
    }
}

/// Every index of the request points into its table, and every table
/// starts with its zero value: what a receiver's conversion relies on.
fn check_dictionary(request: &ExportProfilesServiceRequest) -> Result<(), String> {
    let d = request.dictionary.as_ref().ok_or("missing dictionary")?;
    let fits = |i: i32, len: usize| usize::try_from(i).is_ok_and(|i| i < len);
    if d.string_table.first().map(String::as_str) != Some("")
        || d.mapping_table.first() != Some(&Default::default())
        || d.location_table.first() != Some(&Default::default())
        || d.function_table.first() != Some(&Default::default())
        || d.attribute_table.first() != Some(&Default::default())
        || d.stack_table.first() != Some(&Default::default())
        || d.link_table.first() != Some(&Default::default())
    {
        return Err("a table does not start with its zero value".into());
    }
    let strings = d.string_table.len();
    for f in &d.function_table {
        if ![f.name_strindex, f.system_name_strindex, f.filename_strindex]
            .iter()
            .all(|&i| fits(i, strings))
        {
            return Err("function string out of range".into());
        }
    }
    for m in &d.mapping_table {
        if !fits(m.filename_strindex, strings)
            || !m
                .attribute_indices
                .iter()
                .all(|&a| fits(a, d.attribute_table.len()))
        {
            return Err("mapping index out of range".into());
        }
    }
    for l in &d.location_table {
        if !fits(l.mapping_index, d.mapping_table.len())
            || !l
                .lines
                .iter()
                .all(|line| fits(line.function_index, d.function_table.len()))
        {
            return Err("location index out of range".into());
        }
    }
    for s in &d.stack_table {
        if !s
            .location_indices
            .iter()
            .all(|&l| fits(l, d.location_table.len()))
        {
            return Err("stack index out of range".into());
        }
    }
    for kv in &d.attribute_table {
        if !fits(kv.key_strindex, strings) {
            return Err("attribute key out of range".into());
        }
    }
    for rp in &request.resource_profiles {
        for sp in &rp.scope_profiles {
            for p in &sp.profiles {
                let st = p.sample_type.as_ref().ok_or("sample type is missing")?;
                if !fits(st.type_strindex, strings) || !fits(st.unit_strindex, strings) {
                    return Err("sample type out of range".into());
                }
                for s in &p.samples {
                    if !fits(s.stack_index, d.stack_table.len())
                        || !s
                            .attribute_indices
                            .iter()
                            .all(|&a| fits(a, d.attribute_table.len()))
                        || s.values.is_empty()
                    {
                        return Err("sample index out of range, or no value".into());
                    }
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    /// Profile ids seen, with how often.
    ids: Arc<Mutex<BTreeMap<Vec<u8>, usize>>>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, message.to_owned()).into_response()
}

async fn export(
    axum::extract::State(receiver): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let wire = body.len();
    if header("content-type") != Some("application/x-protobuf") {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content-type");
    }
    let body = match header("content-encoding") {
        None => body.to_vec(),
        Some(gzip) if gzip.eq_ignore_ascii_case("gzip") => {
            let mut out = Vec::new();
            if flate2::read::GzDecoder::new(body.as_ref())
                .read_to_end(&mut out)
                .is_err()
            {
                return error(StatusCode::BAD_REQUEST, "bad gzip");
            }
            out
        }
        Some(_) => return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "encoding"),
    };
    let request = match ExportProfilesServiceRequest::decode(body.as_slice()) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if let Err(e) = check_dictionary(&request) {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let dictionary = request.dictionary.clone().unwrap_or_default();
    for rp in &request.resource_profiles {
        let resource: BTreeMap<String, String> = rp
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref())?)))
            .collect();
        for sp in &rp.scope_profiles {
            for profile in &sp.profiles {
                *receiver
                    .ids
                    .lock()
                    .unwrap()
                    .entry(profile.profile_id.clone())
                    .or_default() += 1;
                receiver.received.lock().unwrap().push(Received {
                    resource: resource.clone(),
                    profile: profile.clone(),
                    dictionary: dictionary.clone(),
                    bytes: wire,
                });
            }
        }
    }
    (
        [("content-type", "application/x-protobuf")],
        ExportProfilesServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn start_receiver() -> (Receiver, SocketAddr, tokio::runtime::Runtime) {
    let runtime = service_runtime();
    let receiver = Receiver::default();
    let app = axum::Router::new()
        .route("/v1development/profiles", axum::routing::post(export))
        .with_state(receiver.clone());
    let addr = runtime.block_on(crate::support::serve(app));
    (receiver, addr, runtime)
}

#[test]
fn the_demo_pushes_otlp_profiles_once_tiled_with_resource_attributes_and_labels() {
    let _alone = profiler_lock();
    let (receiver, addr, _runtime) = start_receiver();
    let url = format!("http://{addr}");
    let demo = DemoProcess::start_with(&[
        ("STETHOSCOPE_PUSH_URL", url.as_str()),
        ("STETHOSCOPE_PUSH_PROTOCOL", "otlp"),
        ("STETHOSCOPE_CONTINUOUS_SEGMENT", "2s"),
        ("STETHOSCOPE_PUSH_SERVICE", "demo-otlp"),
        ("STETHOSCOPE_PUSH_LABELS", "environment=e2e,region=loopback"),
    ]);
    assert!(
        wait_until(Duration::from_secs(10), || demo.lines().iter().any(|l| l
            .contains("pushing continuous CPU profiles")
            && l.contains(&format!("http://{addr}/v1development/profiles")))),
        "{}",
        demo.lines().join("\n")
    );
    let load = Load::start(demo.service, 2);
    std::thread::sleep(Duration::from_millis(500));
    let loaded_from = nanos(SystemTime::now());
    let sorted = |receiver: &Receiver| -> Vec<Received> {
        let mut all = receiver.received.lock().unwrap().clone();
        all.sort_by_key(Received::from);
        all
    };
    let enough = wait_until(Duration::from_secs(60), || {
        sorted(&receiver)
            .iter()
            .filter(|r| r.from() >= loaded_from)
            .count()
            >= 6
    });
    drop(load);
    let all = sorted(&receiver);
    let loaded: Vec<&Received> = all.iter().filter(|r| r.from() >= loaded_from).collect();
    assert!(enough, "{} segments pushed under load", loaded.len());

    // Every segment once (one profile id each, none twice), tiling time.
    let ids = receiver.ids.lock().unwrap().clone();
    assert_eq!(ids.len(), all.len());
    assert!(ids.values().all(|&n| n == 1), "a profile arrived twice");
    assert!(ids
        .keys()
        .all(|id| id.len() == 16 && id.iter().any(|&b| b != 0)));
    for pair in all.windows(2) {
        assert_eq!(
            pair[0].until(),
            pair[1].from(),
            "segments {} → {} and {} → {} neither overlap nor leave a gap",
            rfc3339_of_nanos(pair[0].from()),
            rfc3339_of_nanos(pair[0].until()),
            rfc3339_of_nanos(pair[1].from()),
            rfc3339_of_nanos(pair[1].until()),
        );
    }
    for segment in &all {
        let length = segment.profile.duration_nano as f64 / 1e9;
        assert!(
            (1.9..=2.6).contains(&length),
            "a 2 s segment lasts {length:.3} s"
        );
        // The resource: the push labels as semantic conventions.
        let r = &segment.resource;
        assert_eq!(
            r.get("service.name").map(String::as_str),
            Some("demo-otlp"),
            "{r:?}"
        );
        assert_eq!(
            r.get("deployment.environment.name").map(String::as_str),
            Some("e2e")
        );
        assert_eq!(r.get("region").map(String::as_str), Some("loopback"));
        assert!(
            r.get("service.instance.id").is_some_and(|i| !i.is_empty()),
            "{r:?}"
        );
        assert!(
            r.get("process.pid")
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| p != std::process::id()),
            "the demo's pid: {r:?}"
        );
        // CPU as the eBPF profiler sends it: counts of a CPU period.
        let st = segment.profile.sample_type.as_ref().unwrap();
        assert_eq!(
            (
                segment.string(st.type_strindex),
                segment.string(st.unit_strindex)
            ),
            ("samples", "count")
        );
        let pt = segment.profile.period_type.as_ref().unwrap();
        assert_eq!(
            (
                segment.string(pt.type_strindex),
                segment.string(pt.unit_strindex)
            ),
            ("cpu", "nanoseconds")
        );
        assert!(segment.profile.period > 0);
    }
    // Under load: the route of the burning requests and the threads as
    // sample attributes, and the demo's hot function leading.
    let (mut hot, mut cold, mut total) = (0.0, 0.0, 0.0);
    for segment in &loaded {
        assert!(
            segment.attribute("route").iter().any(|r| r == "/burn"),
            "route=/burn in {:?}",
            segment.attribute("route")
        );
        assert!(!segment.attribute("thread.name").is_empty());
        let (h, t) = segment.cpu_through("burn_hot");
        let (c, _) = segment.cpu_through("burn_cold");
        assert!(h > 0.0, "burn_hot in a loaded segment");
        hot += h;
        cold += c;
        total += t;
    }
    assert!(
        hot > 2.0 * cold,
        "the demo burns 3:1: hot {hot} vs cold {cold}"
    );
    assert!(
        hot / total > 0.3,
        "burn_hot is {:.0} % of the CPU",
        100.0 * hot / total
    );

    let health = get(demo.agent, "/health", None).json();
    let push = &health["push"];
    assert_eq!(push["protocol"], "otlp", "{health}");
    assert_eq!(push["errors"], 0, "{health}");
    assert!(
        push["sent"].as_u64().unwrap_or(0) >= all.len() as u64,
        "{health}"
    );
    let mean = loaded.iter().map(|r| r.bytes).sum::<usize>() / loaded.len().max(1);
    eprintln!("OTLP request: {mean} bytes (gzip) a loaded 2 s segment");
}
