//! A corpus of malformed input records, for checking that bad input never
//! stops a partition (`tests/bad_input.rs`). Pure: no I/O, deterministic for
//! a seed.
//!
//! Each [`BadRecord`] carries its payload, the dead-letter reason the
//! processor must give it and a class name. The classes, and the reason each
//! produces through the real decoder ([`SchemaRegistry::decode_event`]) or the
//! processor's checks around it:
//!
//! | class | payload | reason |
//! |---|---|---|
//! | `wrong_marker` | JSON text, Confluent framing (`0x00` + schema id), a flipped or swapped marker, an Avro container file | `not_single_object` |
//! | `unknown_fingerprint` | marker `C3 01`, 8 fingerprint bytes no bundled schema has (random, or a real one with one bit flipped), a real body | `unknown_fingerprint` |
//! | `truncated_header` | a real event's encoding cut inside the 10-byte header (also empty) | `not_single_object` |
//! | `truncated_body` | a real event's encoding cut inside the Avro body | `undecodable_body` |
//! | `random_bytes` | 1..=512 random bytes not starting with the marker | `not_single_object` |
//! | `random_body` | a known input fingerprint (the specification's or apache-avro's) and 0..=256 random body bytes | `undecodable_body` |
//! | `invalid_field` | valid Avro with an invalid field: empty or over-long id, event time outside years 1..=9999, unknown IANA zone, no or malformed data kind, birth date outside years 1..=9999, an award on an input topic | `invalid_field` (the detail names [`BadRecord::field`]) |
//! | `wrong_topic` | a valid event of the other kind for the same user | `invalid_field` |
//! | `oversize` | a valid `DataLogged` over `processor.max_record_bytes` | `oversize` |
//! | `misrouted` | a valid event of the user, to be produced to a partition other than murmur2(user id) | `misrouted` |
//!
//! [`Corpus::interleave`] mixes bad records into a valid stream at a ratio.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::codec::{
    SchemaRegistry, BIRTH_REPORTED_NAME, DATA_LOGGED_NAME, HEADER_LEN, MAX_ID_BYTES,
    MAX_TIMESTAMP_MILLIS, MIN_TIMESTAMP_MILLIS, SINGLE_OBJECT_MARKER,
};
use crate::dead_letter::DeadLetterReason;
use crate::events::{
    AwardGranted, BirthReported, DataLogged, EventKind, InputEvent, Reward, SourceEvent,
};

/// A kind of malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadClass {
    WrongMarker,
    UnknownFingerprint,
    TruncatedHeader,
    TruncatedBody,
    RandomBytes,
    RandomBody,
    InvalidField,
    WrongTopic,
    Oversize,
    Misrouted,
}

impl BadClass {
    pub const ALL: [BadClass; 10] = [
        BadClass::WrongMarker,
        BadClass::UnknownFingerprint,
        BadClass::TruncatedHeader,
        BadClass::TruncatedBody,
        BadClass::RandomBytes,
        BadClass::RandomBody,
        BadClass::InvalidField,
        BadClass::WrongTopic,
        BadClass::Oversize,
        BadClass::Misrouted,
    ];

    /// A short name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            BadClass::WrongMarker => "wrong_marker",
            BadClass::UnknownFingerprint => "unknown_fingerprint",
            BadClass::TruncatedHeader => "truncated_header",
            BadClass::TruncatedBody => "truncated_body",
            BadClass::RandomBytes => "random_bytes",
            BadClass::RandomBody => "random_body",
            BadClass::InvalidField => "invalid_field",
            BadClass::WrongTopic => "wrong_topic",
            BadClass::Oversize => "oversize",
            BadClass::Misrouted => "misrouted",
        }
    }

    /// The dead-letter reason the processor gives every record of the class.
    pub fn reason(self) -> DeadLetterReason {
        match self {
            BadClass::WrongMarker | BadClass::TruncatedHeader | BadClass::RandomBytes => {
                DeadLetterReason::NotSingleObject
            }
            BadClass::UnknownFingerprint => DeadLetterReason::UnknownFingerprint,
            BadClass::TruncatedBody | BadClass::RandomBody => DeadLetterReason::UndecodableBody,
            BadClass::InvalidField | BadClass::WrongTopic => DeadLetterReason::InvalidField,
            BadClass::Oversize => DeadLetterReason::Oversize,
            BadClass::Misrouted => DeadLetterReason::Misrouted,
        }
    }

    /// Whether `decode_event` alone rejects the payload with [`Self::reason`].
    /// The others decode: the processor's size, topic or partition check
    /// rejects them.
    pub fn rejected_by_decoder(self) -> bool {
        !matches!(
            self,
            BadClass::WrongTopic | BadClass::Oversize | BadClass::Misrouted
        )
    }
}

/// One malformed record and what the processor must do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    pub class: BadClass,
    /// Which variant of the class (`"json"`, `"empty user_id"`, ...), for reports.
    pub variant: &'static str,
    /// The record value, byte for byte.
    pub payload: Vec<u8>,
    /// The expected `incentives.error.code` (always `class.reason()`).
    pub reason: DeadLetterReason,
    /// For decoder-detected invalid fields: the field the error detail names.
    pub field: Option<&'static str>,
    /// The input topic it belongs on (its neighbour's).
    pub topic: EventKind,
    /// The record key: its neighbour's user id.
    pub key: String,
    /// Produce it to a partition other than murmur2(key) (class `misrouted`).
    pub misrouted: bool,
}

/// One position of a mixed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// The good record at this index of the valid stream.
    Good(usize),
    Bad(BadRecord),
}

/// The generator. Borrows the registry for real encodings (truncations,
/// bodies, headers) and for the fingerprints to avoid.
pub struct Corpus<'r> {
    registry: &'r SchemaRegistry,
    rng: StdRng,
    seed: u64,
    serial: u64,
    max_record_bytes: usize,
    data_logged_header: [u8; HEADER_LEN],
    birth_reported_header: [u8; HEADER_LEN],
    /// Fingerprints `decode_event` reads as input events, sorted.
    input_fingerprints: Vec<u64>,
    /// Every fingerprint the registry knows (awards too).
    known_fingerprints: BTreeSet<u64>,
}

/// An input event's fields before validation, so that invalid values can be
/// written (the domain types only hold valid ones).
#[derive(Debug, Clone)]
struct RawEvent {
    kind: EventKind,
    event_id: String,
    user_id: String,
    employer_id: String,
    event_time_ms: i64,
    time_zone: Option<String>,
    data_kinds: Vec<String>,
    birth_date_days: i64,
}

fn epoch_day() -> NaiveDate {
    DateTime::<Utc>::UNIX_EPOCH.date_naive()
}

impl RawEvent {
    fn of(e: &InputEvent) -> RawEvent {
        let (data_kinds, birth_date_days) = match e {
            InputEvent::DataLogged(d) => (d.data_kinds.clone(), 0),
            InputEvent::BirthReported(b) => (
                Vec::new(),
                b.birth_date.signed_duration_since(epoch_day()).num_days(),
            ),
        };
        RawEvent {
            kind: e.kind(),
            event_id: e.event_id().to_string(),
            user_id: e.user_id().to_string(),
            employer_id: e.employer_id().to_string(),
            event_time_ms: e.event_time().timestamp_millis(),
            time_zone: e.time_zone().map(|tz| tz.name().to_string()),
            data_kinds,
            birth_date_days,
        }
    }
}

// Avro binary encoding of the v1 layouts (checked against the codec's own
// encoder in the tests below).

use crate::codec::{put_long, put_str};

fn body_of(raw: &RawEvent) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(64 + raw.data_kinds.iter().map(|k| k.len() + 2).sum::<usize>());
    put_str(&mut out, &raw.event_id);
    put_str(&mut out, &raw.user_id);
    put_str(&mut out, &raw.employer_id);
    put_long(&mut out, raw.event_time_ms);
    match &raw.time_zone {
        None => put_long(&mut out, 0),
        Some(tz) => {
            put_long(&mut out, 1);
            put_str(&mut out, tz);
        }
    }
    match raw.kind {
        EventKind::DataLogged => {
            if !raw.data_kinds.is_empty() {
                put_long(&mut out, raw.data_kinds.len() as i64);
                for k in &raw.data_kinds {
                    put_str(&mut out, k);
                }
            }
            put_long(&mut out, 0);
        }
        EventKind::BirthReported => put_long(&mut out, raw.birth_date_days),
    }
    out
}

const ZONE_TYPOS: [&str; 6] = [
    "Mars/Olympus_Mons",
    "America/New_Yrok",
    "Europe/Berlin ",
    "GMT+25",
    "",
    "europe/berlin/extra",
];
const BAD_DATA_KINDS: [&str; 5] = ["Mood", "9lives", "has space", "", "sleep-hours"];

impl<'r> Corpus<'r> {
    /// A generator of malformed records for a processor configured with
    /// `max_record_bytes` (records at or below it are never `oversize`).
    pub fn new(registry: &'r SchemaRegistry, seed: u64, max_record_bytes: usize) -> Corpus<'r> {
        let template = DataLogged {
            event_id: "e".into(),
            user_id: "u".into(),
            employer_id: "x".into(),
            event_time: DateTime::<Utc>::UNIX_EPOCH,
            time_zone: None,
            data_kinds: vec!["mood".into()],
        };
        let birth = BirthReported {
            event_id: "e".into(),
            user_id: "u".into(),
            employer_id: "x".into(),
            event_time: DateTime::<Utc>::UNIX_EPOCH,
            time_zone: None,
            birth_date: epoch_day(),
        };
        let header = |bytes: Vec<u8>| {
            let mut h = [0u8; HEADER_LEN];
            for (dst, src) in h.iter_mut().zip(bytes) {
                *dst = src;
            }
            h
        };
        let mut input_fingerprints: Vec<u64> = registry
            .known_fingerprints()
            .filter(|(_, name)| *name == DATA_LOGGED_NAME || *name == BIRTH_REPORTED_NAME)
            .map(|(fp, _)| fp)
            .collect();
        input_fingerprints.sort_unstable();
        Corpus {
            registry,
            rng: StdRng::seed_from_u64(seed),
            seed,
            serial: 0,
            max_record_bytes,
            data_logged_header: header(registry.encode_data_logged(&template)),
            birth_reported_header: header(registry.encode_birth_reported(&birth)),
            input_fingerprints,
            known_fingerprints: registry.known_fingerprints().map(|(fp, _)| fp).collect(),
        }
    }

    fn header(&self, kind: EventKind) -> &[u8; HEADER_LEN] {
        match kind {
            EventKind::DataLogged => &self.data_logged_header,
            EventKind::BirthReported => &self.birth_reported_header,
        }
    }

    /// A single-object record of `raw` with the header our encoder writes.
    fn encode_raw(&self, raw: &RawEvent) -> Vec<u8> {
        let mut out = self.header(raw.kind).to_vec();
        out.extend_from_slice(&body_of(raw));
        out
    }

    /// A fresh copy of `neighbour` (same user, time and fields, new event id).
    fn sibling(&mut self, neighbour: &InputEvent) -> RawEvent {
        self.serial += 1;
        let mut raw = RawEvent::of(neighbour);
        raw.event_id = format!("corpus-{}-{}", self.seed, self.serial);
        raw
    }

    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.rng.fill_bytes(&mut bytes);
        bytes
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }

    /// A fingerprint no bundled schema has.
    fn unknown_fingerprint(&mut self) -> (&'static str, u64) {
        loop {
            let (variant, fp) = if self.rng.random_bool(0.5) && !self.input_fingerprints.is_empty()
            {
                let real = self.pick(&self.input_fingerprints.clone());
                ("one bit off", real ^ (1u64 << self.rng.random_range(0..64)))
            } else {
                ("random", self.rng.next_u64())
            };
            if !self.known_fingerprints.contains(&fp) {
                return (variant, fp);
            }
        }
    }

    /// A malformed record of `class`, placed next to the good record
    /// `neighbour`: same topic, same key.
    pub fn record(&mut self, class: BadClass, neighbour: &InputEvent) -> BadRecord {
        let mut field = None;
        let (variant, payload) = match class {
            BadClass::WrongMarker => self.wrong_marker(neighbour),
            BadClass::UnknownFingerprint => {
                let raw = self.sibling(neighbour);
                let (variant, fp) = self.unknown_fingerprint();
                let mut out = SINGLE_OBJECT_MARKER.to_vec();
                out.extend_from_slice(&fp.to_le_bytes());
                out.extend_from_slice(&body_of(&raw));
                (variant, out)
            }
            BadClass::TruncatedHeader => {
                let raw = self.sibling(neighbour);
                let full = self.encode_raw(&raw);
                let cut = self.rng.random_range(0..HEADER_LEN);
                ("cut in header", full[..cut].to_vec())
            }
            BadClass::TruncatedBody => {
                let raw = self.sibling(neighbour);
                let full = self.encode_raw(&raw);
                let cut = self.rng.random_range(HEADER_LEN..full.len());
                ("cut in body", full[..cut].to_vec())
            }
            BadClass::RandomBytes => {
                let len = self.rng.random_range(1..=512);
                let mut bytes = self.random_bytes(len);
                if bytes.starts_with(&SINGLE_OBJECT_MARKER) {
                    bytes[1] ^= 0xFF;
                }
                ("random", bytes)
            }
            BadClass::RandomBody => self.random_body(),
            BadClass::InvalidField => {
                let (variant, f, payload) = self.invalid_field(neighbour);
                field = Some(f);
                (variant, payload)
            }
            BadClass::WrongTopic => {
                let mut raw = self.sibling(neighbour);
                match raw.kind {
                    EventKind::DataLogged => {
                        raw.kind = EventKind::BirthReported;
                        raw.birth_date_days = raw.event_time_ms.div_euclid(86_400_000) - 1;
                        ("birth on data-logged topic", self.encode_raw(&raw))
                    }
                    EventKind::BirthReported => {
                        raw.kind = EventKind::DataLogged;
                        raw.data_kinds = vec!["mood".into()];
                        ("data-logged on birth topic", self.encode_raw(&raw))
                    }
                }
            }
            BadClass::Oversize => ("valid but oversize", self.oversize(neighbour)),
            BadClass::Misrouted => {
                let raw = self.sibling(neighbour);
                ("valid, other partition", self.encode_raw(&raw))
            }
        };
        BadRecord {
            class,
            variant,
            payload,
            reason: class.reason(),
            field,
            topic: neighbour.kind(),
            key: neighbour.user_id().to_string(),
            misrouted: class == BadClass::Misrouted,
        }
    }

    fn wrong_marker(&mut self, neighbour: &InputEvent) -> (&'static str, Vec<u8>) {
        let raw = self.sibling(neighbour);
        match self.rng.random_range(0..5) {
            0 => (
                "json",
                serde_json::json!({
                    "type": match raw.kind {
                        EventKind::DataLogged => "data_logged",
                        EventKind::BirthReported => "birth_reported",
                    },
                    "event_id": raw.event_id,
                    "user_id": raw.user_id,
                    "employer_id": raw.employer_id,
                    "event_time": raw.event_time_ms,
                })
                .to_string()
                .into_bytes(),
            ),
            1 => {
                // Confluent Schema Registry framing: magic 0, 4-byte schema id.
                let mut out = vec![0u8];
                out.extend_from_slice(&self.rng.random::<u32>().to_be_bytes());
                out.extend_from_slice(&body_of(&raw));
                ("confluent framing", out)
            }
            2 => {
                let mut out = self.encode_raw(&raw);
                let at = self.rng.random_range(0..2);
                out[at] ^= self.rng.random_range(1..=255u8);
                ("flipped marker", out)
            }
            3 => {
                let mut out = self.encode_raw(&raw);
                out.swap(0, 1);
                ("swapped marker", out)
            }
            _ => {
                let mut out = b"Obj\x01".to_vec();
                let len = self.rng.random_range(0..128);
                out.extend(self.random_bytes(len));
                ("avro container file", out)
            }
        }
    }

    /// A known input header and random body bytes. Random bytes can, very
    /// rarely, form a datum; such draws are replaced (the class is about
    /// bodies that do not decode).
    fn random_body(&mut self) -> (&'static str, Vec<u8>) {
        let fps = self.input_fingerprints.clone();
        for _ in 0..64 {
            let fp = self.pick(&fps);
            let mut out = SINGLE_OBJECT_MARKER.to_vec();
            out.extend_from_slice(&fp.to_le_bytes());
            let len = self.rng.random_range(0..=256);
            out.extend(self.random_bytes(len));
            if matches!(
                self.registry.decode_event(&out),
                Err(e) if e.reason() == DeadLetterReason::UndecodableBody
            ) {
                return ("known header, random body", out);
            }
        }
        // A string length of -1: never a datum.
        let mut out = self.data_logged_header.to_vec();
        out.push(0x01);
        ("known header, negative length", out)
    }

    fn invalid_field(&mut self, neighbour: &InputEvent) -> (&'static str, &'static str, Vec<u8>) {
        let mut raw = self.sibling(neighbour);
        let choices = match raw.kind {
            EventKind::DataLogged => 10,
            EventKind::BirthReported => 8,
        };
        let (variant, field) = match self.rng.random_range(0..choices) {
            0 => {
                raw.event_id.clear();
                ("empty event_id", "event_id")
            }
            1 => {
                raw.user_id.clear();
                ("empty user_id", "user_id")
            }
            2 => {
                raw.employer_id.clear();
                ("empty employer_id", "employer_id")
            }
            3 => {
                raw.user_id = "u".repeat(MAX_ID_BYTES + 1 + self.rng.random_range(0..64));
                ("user_id over 256 bytes", "user_id")
            }
            4 => {
                raw.event_time_ms = if self.rng.random_bool(0.5) {
                    MAX_TIMESTAMP_MILLIS + 1 + self.rng.random_range(0..1_000_000_000)
                } else {
                    MIN_TIMESTAMP_MILLIS - 1 - self.rng.random_range(0..1_000_000_000)
                };
                ("event_time outside years 1..=9999", "event_time")
            }
            5 => {
                raw.time_zone = Some(self.pick(&ZONE_TYPOS).to_string());
                ("unknown time zone", "time_zone")
            }
            6 => {
                let award = self.award_for(neighbour);
                return (
                    "award on an input topic",
                    "type",
                    self.registry.encode_award(&award),
                );
            }
            7 => match raw.kind {
                EventKind::BirthReported => {
                    // Inside the 32-bit range of the Avro int, after year 9999.
                    raw.birth_date_days = 2_932_897 + self.rng.random_range(0..1_000_000);
                    ("birth_date after year 9999", "birth_date")
                }
                EventKind::DataLogged => {
                    raw.data_kinds.clear();
                    ("no data kind", "data_kinds")
                }
            },
            8 => {
                raw.data_kinds.push(self.pick(&BAD_DATA_KINDS).to_string());
                ("malformed data kind", "data_kinds")
            }
            _ => {
                raw.data_kinds = vec!["k".repeat(65)];
                ("data kind over 64 chars", "data_kinds")
            }
        };
        (variant, field, self.encode_raw(&raw))
    }

    fn award_for(&mut self, neighbour: &InputEvent) -> AwardGranted {
        self.serial += 1;
        let day = neighbour.event_time().date_naive();
        AwardGranted {
            award_id: format!("corpus-award-{}-{}", self.seed, self.serial),
            user_id: neighbour.user_id().to_string(),
            employer_id: neighbour.employer_id().to_string(),
            program_id: "corpus".into(),
            incentive_id: "corpus".into(),
            rule_version: "v".into(),
            period: "program".into(),
            reward: Reward {
                kind: "points".into(),
                code: "1".into(),
                description: "a record from the corpus".into(),
            },
            achieved_at: neighbour.event_time(),
            achieved_local_date: day,
            time_zone: "UTC".into(),
            source: SourceEvent {
                topic: "corpus".into(),
                partition: 0,
                offset: 0,
                event_id: neighbour.event_id().to_string(),
            },
            evidence_days: vec![day],
        }
    }

    /// A valid `DataLogged` of the neighbour's user, over the size limit by
    /// 1..=1024 bytes or more.
    fn oversize(&mut self, neighbour: &InputEvent) -> Vec<u8> {
        let mut raw = self.sibling(neighbour);
        raw.kind = EventKind::DataLogged;
        raw.data_kinds.clear();
        let target = self
            .max_record_bytes
            .saturating_add(self.rng.random_range(1..=1024));
        // Each 63-char kind takes 64 bytes (one length byte).
        let count = target / 64 + 1;
        raw.data_kinds = (0..count).map(|i| format!("k{i:062}")).collect();
        self.encode_raw(&raw)
    }

    /// Mixes bad records into `good` so that they make up `ratio` of the
    /// result (clamped to 0..=0.5), at seeded random positions. Classes take
    /// turns (`BadClass::ALL` in order), so every class appears once there
    /// are ten bad records. A bad record takes the topic and key of the good
    /// record before it (the first good one when it comes first).
    pub fn interleave(&mut self, good: &[InputEvent], ratio: f64) -> Vec<Slot> {
        if good.is_empty() {
            return Vec::new();
        }
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 0.5)
        } else {
            0.0
        };
        let bad = ((good.len() as f64) * ratio / (1.0 - ratio)).round() as usize;
        let total = good.len() + bad;
        let positions: BTreeSet<usize> = rand::seq::index::sample(&mut self.rng, total, bad)
            .into_iter()
            .collect();
        let mut slots = Vec::with_capacity(total);
        let mut next_good = 0usize;
        let mut made = 0usize;
        for pos in 0..total {
            if positions.contains(&pos) {
                let neighbour = &good[next_good.saturating_sub(1)];
                let class = BadClass::ALL[made % BadClass::ALL.len()];
                made += 1;
                slots.push(Slot::Bad(self.record(class, neighbour)));
            } else {
                slots.push(Slot::Good(next_good));
                next_good += 1;
            }
        }
        slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DecodeError;
    use std::collections::BTreeMap;

    const MAX: usize = 65_536;

    fn registry() -> SchemaRegistry {
        SchemaRegistry::bundled().unwrap()
    }

    fn logged(user: &str, zone: Option<chrono_tz::Tz>) -> InputEvent {
        InputEvent::DataLogged(DataLogged {
            event_id: format!("{user}-1"),
            user_id: user.into(),
            employer_id: "acme".into(),
            event_time: DateTime::from_timestamp_millis(1_772_380_800_123).unwrap(),
            time_zone: zone,
            data_kinds: vec!["mood".into(), "sleep".into()],
        })
    }

    fn birth(user: &str, zone: Option<chrono_tz::Tz>) -> InputEvent {
        InputEvent::BirthReported(BirthReported {
            event_id: format!("{user}-b"),
            user_id: user.into(),
            employer_id: "acme".into(),
            event_time: DateTime::from_timestamp_millis(1_772_380_800_123).unwrap(),
            time_zone: zone,
            birth_date: NaiveDate::from_ymd_opt(2026, 2, 28).unwrap(),
        })
    }

    fn neighbours() -> Vec<InputEvent> {
        vec![
            logged("user-a", Some(chrono_tz::Europe::Berlin)),
            logged("user-b", None),
            birth("user-c", Some(chrono_tz::America::New_York)),
            birth("user-d", None),
        ]
    }

    #[test]
    fn the_raw_encoder_writes_exactly_what_the_codec_writes() {
        let r = registry();
        let c = Corpus::new(&r, 1, MAX);
        for e in neighbours() {
            assert_eq!(c.encode_raw(&RawEvent::of(&e)), r.encode_event(&e), "{e:?}");
        }
    }

    /// What the processor does first with a record on the topic of `kind`:
    /// the size check, then the decoder, then the topic's kind.
    fn check(r: &SchemaRegistry, rec: &BadRecord) {
        let what = format!(
            "{} ({}), {} bytes: {:02x?}",
            rec.class.name(),
            rec.variant,
            rec.payload.len(),
            &rec.payload[..rec.payload.len().min(48)]
        );
        assert_eq!(rec.reason, rec.class.reason(), "{what}");
        let decoded = r.decode_event(&rec.payload);
        if rec.class == BadClass::Oversize {
            assert!(rec.payload.len() > MAX, "{what}");
            assert!(rec.payload.len() <= MAX + 1024 + 64, "{what}");
            let e = decoded.unwrap_or_else(|e| panic!("{what}: valid-looking, but {e}"));
            assert_eq!(e.user_id(), rec.key, "{what}");
            return;
        }
        assert!(rec.payload.len() <= MAX, "{what}: would be oversize first");
        match rec.class {
            BadClass::WrongTopic => {
                let e = decoded.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_ne!(e.kind(), rec.topic, "{what}");
                assert_eq!(e.user_id(), rec.key, "{what}");
            }
            BadClass::Misrouted => {
                let e = decoded.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(e.kind(), rec.topic, "{what}");
                assert_eq!(e.user_id(), rec.key, "{what}");
                assert!(rec.misrouted, "{what}");
            }
            _ => {
                assert!(rec.class.rejected_by_decoder());
                let err = decoded.expect_err(&what);
                assert_eq!(err.reason(), rec.reason, "{what}: {err}");
                match (&err, rec.field) {
                    (DecodeError::InvalidField { field, .. }, Some(expected)) => {
                        assert_eq!(*field, expected, "{what}: {err}");
                        assert!(err.to_string().contains(expected), "{what}: {err}");
                    }
                    (_, None) => {}
                    (other, Some(f)) => panic!("{what}: expected field {f}, got {other}"),
                }
            }
        }
        assert!(!rec.misrouted || rec.class == BadClass::Misrouted);
    }

    #[test]
    fn every_class_gets_its_reason_from_the_real_decoder() {
        let r = registry();
        let mut variants: BTreeMap<(BadClass, &str), usize> = BTreeMap::new();
        for seed in 0..4 {
            let mut c = Corpus::new(&r, seed, MAX);
            for n in neighbours() {
                for class in BadClass::ALL {
                    for _ in 0..60 {
                        let rec = c.record(class, &n);
                        assert_eq!(rec.class, class);
                        assert_eq!(rec.topic, n.kind());
                        assert_eq!(rec.key, n.user_id());
                        check(&r, &rec);
                        *variants.entry((class, rec.variant)).or_default() += 1;
                    }
                }
            }
        }
        // Every variant of every class was drawn.
        let drawn: BTreeSet<&str> = variants.keys().map(|(_, v)| *v).collect();
        for v in [
            "json",
            "confluent framing",
            "flipped marker",
            "swapped marker",
            "avro container file",
            "random",
            "one bit off",
            "cut in header",
            "cut in body",
            "known header, random body",
            "empty event_id",
            "empty user_id",
            "empty employer_id",
            "user_id over 256 bytes",
            "event_time outside years 1..=9999",
            "unknown time zone",
            "award on an input topic",
            "birth_date after year 9999",
            "no data kind",
            "malformed data kind",
            "data kind over 64 chars",
            "birth on data-logged topic",
            "data-logged on birth topic",
        ] {
            assert!(drawn.contains(v), "variant {v} never drawn: {variants:?}");
        }
    }

    #[test]
    fn truncations_cover_the_header_and_the_body() {
        let r = registry();
        let mut c = Corpus::new(&r, 9, MAX);
        let n = logged("user-a", Some(chrono_tz::Europe::Berlin));
        let full = r.encode_event(&n).len();
        let header: BTreeSet<usize> = (0..400)
            .map(|_| c.record(BadClass::TruncatedHeader, &n).payload.len())
            .collect();
        assert_eq!(
            header,
            (0..HEADER_LEN).collect(),
            "every cut inside the header"
        );
        // Each cut copy has its own, longer event id ("corpus-9-<n>"): a
        // proper prefix of that copy's encoding.
        let mut body = BTreeSet::new();
        for _ in 0..2000 {
            let rec = c.record(BadClass::TruncatedBody, &n);
            let copy = c.encode_raw(&RawEvent {
                event_id: format!("corpus-9-{}", c.serial),
                ..RawEvent::of(&n)
            });
            assert!(rec.payload.len() >= HEADER_LEN && rec.payload.len() < copy.len());
            assert!(
                copy.starts_with(&rec.payload),
                "a prefix of a real encoding"
            );
            body.insert(rec.payload.len());
        }
        assert!(
            (HEADER_LEN..full).all(|cut| body.contains(&cut)),
            "every cut inside the body: {body:?}"
        );
    }

    #[test]
    fn random_bodies_use_every_input_fingerprint() {
        let r = registry();
        let mut c = Corpus::new(&r, 3, MAX);
        let n = logged("user-a", None);
        let used: BTreeSet<u64> = (0..400)
            .map(|_| {
                let p = c.record(BadClass::RandomBody, &n).payload;
                u64::from_le_bytes(p[2..HEADER_LEN].try_into().unwrap())
            })
            .collect();
        assert_eq!(used, c.input_fingerprints.iter().copied().collect());
        assert!(used.len() >= 2, "both input records: {used:x?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_corpus() {
        let r = registry();
        let good: Vec<InputEvent> = (0..500)
            .map(|i| logged(&format!("user-{i}"), None))
            .collect();
        let a = Corpus::new(&r, 42, MAX).interleave(&good, 0.05);
        let b = Corpus::new(&r, 42, MAX).interleave(&good, 0.05);
        let c = Corpus::new(&r, 43, MAX).interleave(&good, 0.05);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn interleaving_keeps_the_good_stream_and_mixes_in_the_ratio() {
        let r = registry();
        let good: Vec<InputEvent> = (0..2000)
            .map(|i| {
                if i % 10 == 0 {
                    birth(&format!("user-{i}"), None)
                } else {
                    logged(&format!("user-{i}"), None)
                }
            })
            .collect();
        let slots = Corpus::new(&r, 7, MAX).interleave(&good, 0.01);
        let good_order: Vec<usize> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Good(i) => Some(*i),
                Slot::Bad(_) => None,
            })
            .collect();
        assert_eq!(good_order, (0..good.len()).collect::<Vec<_>>());
        let bad: Vec<(usize, &BadRecord)> = slots
            .iter()
            .enumerate()
            .filter_map(|(pos, s)| match s {
                Slot::Bad(b) => Some((pos, b)),
                Slot::Good(_) => None,
            })
            .collect();
        // 1% of 2,020 records.
        assert_eq!(bad.len(), 20);
        let classes: BTreeSet<BadClass> = bad.iter().map(|(_, b)| b.class).collect();
        assert_eq!(classes, BadClass::ALL.into_iter().collect());
        for (pos, b) in &bad {
            check(&r, b);
            // The neighbour is the good record before it.
            let before = slots[..*pos].iter().rev().find_map(|s| match s {
                Slot::Good(i) => Some(*i),
                Slot::Bad(_) => None,
            });
            let neighbour = &good[before.unwrap_or(0)];
            assert_eq!(b.key, neighbour.user_id());
            assert_eq!(b.topic, neighbour.kind());
        }
        assert!(Corpus::new(&r, 7, MAX).interleave(&[], 0.01).is_empty());
        let none = Corpus::new(&r, 7, MAX).interleave(&good, 0.0);
        assert_eq!(none.len(), good.len());
    }
}
