//! The messages of Pyroscope's Push API (`api/push/v1/push.proto` and
//! `LabelPair` of `api/types/v1/types.proto` in grafana/pyroscope),
//! written by hand: four small messages need no code generator.

use prost::Message;

/// `push.v1.PushRequest`: profiles with their series labels.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub(crate) series: Vec<RawProfileSeries>,
}

/// `push.v1.RawProfileSeries`: one series' labels and its profiles.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RawProfileSeries {
    #[prost(message, repeated, tag = "1")]
    pub(crate) labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) samples: Vec<RawSample>,
}

/// `push.v1.RawSample`: one pprof profile (plain or gzipped: the server
/// tells them apart by the gzip magic) and an id.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RawSample {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) raw_profile: Vec<u8>,
    #[prost(string, tag = "2")]
    pub(crate) id: String,
}

/// `types.v1.LabelPair`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LabelPair {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, tag = "2")]
    pub(crate) value: String,
}

/// The body of one push: `profile` (gzip pprof) under `labels` (sorted,
/// `__name__` among them), with `id`.
pub(crate) fn encode(labels: &[(String, String)], profile: Vec<u8>, id: String) -> Vec<u8> {
    PushRequest {
        series: vec![RawProfileSeries {
            labels: labels
                .iter()
                .map(|(name, value)| LabelPair {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            samples: vec![RawSample {
                raw_profile: profile,
                id,
            }],
        }],
    }
    .encode_to_vec()
}

/// A UUID-shaped id (version 4 layout) from 128 bits.
pub(crate) fn uuid(high: u64, low: u64) -> String {
    let high = (high & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let low = (low & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_request_round_trips_with_the_field_numbers_of_push_proto() {
        let labels = vec![
            ("__name__".to_owned(), "process_cpu".to_owned()),
            ("service_name".to_owned(), "demo".to_owned()),
        ];
        let body = encode(&labels, vec![0x1f, 0x8b, 1, 2], uuid(1, 2));
        let decoded = PushRequest::decode(body.as_slice()).unwrap();
        assert_eq!(decoded.series.len(), 1);
        let series = &decoded.series[0];
        assert_eq!(series.labels[0].name, "__name__");
        assert_eq!(series.labels[1].value, "demo");
        assert_eq!(series.samples[0].raw_profile, [0x1f, 0x8b, 1, 2]);
        // Field 1 of PushRequest (series, length-delimited): tag byte 0x0a;
        // inside it field 1 (labels) 0x0a and field 2 (samples) 0x12.
        assert_eq!(body[0], 0x0a);
        assert_eq!(body[2], 0x0a);
        assert!(body.windows(2).any(|w| w == [0x12, series.samples[0].encoded_len() as u8]));
    }

    #[test]
    fn ids_look_like_version_4_uuids() {
        let id = uuid(u64::MAX, u64::MAX);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(uuid(1, 2), uuid(1, 3));
    }
}
