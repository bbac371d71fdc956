//! The Avro wire contract: owns the bundled schemas (`schemas/*.avsc`), the
//! CRC-64-AVRO fingerprints that name them, and the single-object codec that
//! turns Kafka record values into domain events (`events`) and back.
//!
//! Wire format (Avro single-object encoding): `0xC3 0x01`, the 8-byte
//! little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
//! Canonical Form, then the Avro binary datum.
//!
//! Decoding looks the writer schema up by fingerprint and resolves it to the
//! newest schema of the same record (the reader schema), so records written
//! with older (or newer, compatible) versions stay readable. Records written
//! with exactly the schema version this code encodes take a hand-written fast
//! path; every other version goes through `apache_avro` schema resolution.
//! Both paths share one validation step that enforces what the schema cannot
//! say (non-empty ids, IANA time zones, timestamp ranges, data kind syntax).
//!
//! Fingerprints follow the specification (and the Java reference
//! implementation): logical types are stripped from the canonical form, so
//! `{"type":"long","logicalType":"timestamp-millis"}` is `"long"`.
//! `apache_avro` 0.20 keeps such a schema as `{"type":"long"}` and so
//! fingerprints it differently; the registry accepts that fingerprint too (as
//! an alias of the same schema) so records from `apache_avro` writers decode,
//! but always writes the specification's fingerprint.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use apache_avro::rabin::Rabin;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::dead_letter::DeadLetterReason;
use crate::events::{AwardGranted, BirthReported, DataLogged, InputEvent, Reward, SourceEvent};

/// The two bytes that start every single-object encoded record.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
/// Marker plus fingerprint: the bytes before the Avro body.
pub const HEADER_LEN: usize = 10;
/// The longest id (`event_id`, `user_id`, `employer_id`, `award_id`) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Earliest accepted timestamp: 0001-01-01T00:00:00.000Z, in ms since the epoch.
pub const MIN_TIMESTAMP_MILLIS: i64 = -62_135_596_800_000;
/// Latest accepted timestamp: 9999-12-31T23:59:59.999Z, in ms since the epoch.
pub const MAX_TIMESTAMP_MILLIS: i64 = 253_402_300_799_999;
/// The CRC-64-AVRO of the empty input (the polynomial's "EMPTY" constant).
pub const CRC64_AVRO_EMPTY: u64 = 0xc15d_213a_a4d7_a795;

/// Full names of the records this crate knows.
pub const DATA_LOGGED_NAME: &str = "io.incentives.DataLogged";
/// Full name of the birth report record.
pub const BIRTH_REPORTED_NAME: &str = "io.incentives.BirthReported";
/// Full name of the award record.
pub const AWARD_GRANTED_NAME: &str = "io.incentives.AwardGranted";

// The schema versions the encoders below write, and the fast-path decoders
// read. Changing a layout means adding a new `.vN.avsc` file and updating the
// matching encoder, decoder and these constants together.
const DATA_LOGGED_V1: &str = include_str!("../schemas/data_logged.v1.avsc");
const BIRTH_REPORTED_V1: &str = include_str!("../schemas/birth_reported.v1.avsc");
const AWARD_GRANTED_V1: &str = include_str!("../schemas/award_granted.v1.avsc");

/// Every schema in `schemas/`, as (file name, JSON). File names are
/// `<record>.v<N>.avsc`; the highest `N` of a record is its reader schema.
pub const BUNDLED_SCHEMAS: &[(&str, &str)] = &[
    ("data_logged.v1.avsc", DATA_LOGGED_V1),
    ("birth_reported.v1.avsc", BIRTH_REPORTED_V1),
    ("award_granted.v1.avsc", AWARD_GRANTED_V1),
];

// ---------------------------------------------------------------------------
// CRC-64-AVRO and the Parsing Canonical Form

const CRC64_TABLE: [u64; 256] = crc64_table();

const fn crc64_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (CRC64_AVRO_EMPTY & 0u64.wrapping_sub(fp & 1));
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
}

/// The CRC-64-AVRO (Rabin) fingerprint of `data`, as the Avro specification
/// defines it. On the wire it is written as 8 bytes, little-endian.
pub fn crc64_avro(data: &[u8]) -> u64 {
    let mut fp = CRC64_AVRO_EMPTY;
    for &b in data {
        fp = (fp >> 8) ^ CRC64_TABLE[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

/// The Parsing Canonical Form of a schema given as JSON, per the Avro
/// specification ([PRIMITIVES], [FULLNAMES], [STRIP], [ORDER], [STRINGS],
/// [INTEGERS], [WHITESPACE]); logical types reduce to their underlying type.
pub fn parsing_canonical_form(schema_json: &str) -> Result<String, CodecError> {
    let json: serde_json::Value =
        serde_json::from_str(schema_json).map_err(|e| CodecError::InvalidSchema {
            source_name: "schema".into(),
            detail: e.to_string(),
        })?;
    let mut out = String::with_capacity(schema_json.len());
    let mut defined = Vec::new();
    pcf(&json, "", &mut defined, &mut out).map_err(|detail| CodecError::InvalidSchema {
        source_name: "schema".into(),
        detail,
    })?;
    Ok(out)
}

/// The CRC-64-AVRO fingerprint of a schema given as JSON: the value that
/// single-object headers carry for it.
pub fn schema_fingerprint(schema_json: &str) -> Result<u64, CodecError> {
    parsing_canonical_form(schema_json).map(|pcf| crc64_avro(pcf.as_bytes()))
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

fn pcf(
    json: &serde_json::Value,
    namespace: &str,
    defined: &mut Vec<String>,
    out: &mut String,
) -> Result<(), String> {
    use serde_json::Value as J;
    match json {
        J::String(name) => {
            out.push('"');
            if PRIMITIVES.contains(&name.as_str()) {
                out.push_str(name);
            } else {
                out.push_str(&full_name(name, namespace));
            }
            out.push('"');
            Ok(())
        }
        J::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pcf(branch, namespace, defined, out)?;
            }
            out.push(']');
            Ok(())
        }
        J::Object(map) => {
            let ty = match map.get("type") {
                Some(J::String(ty)) => ty.as_str(),
                Some(nested) => return pcf(nested, namespace, defined, out),
                None => return Err("a schema object has no \"type\"".into()),
            };
            match ty {
                "record" | "error" | "enum" | "fixed" => {
                    let name = map
                        .get("name")
                        .and_then(J::as_str)
                        .ok_or_else(|| format!("a {ty} has no \"name\""))?;
                    let own_ns = match map.get("namespace").and_then(J::as_str) {
                        _ if name.contains('.') => "",
                        Some(ns) => ns,
                        None => namespace,
                    };
                    let full = full_name(name, own_ns);
                    if defined.contains(&full) {
                        out.push('"');
                        out.push_str(&full);
                        out.push('"');
                        return Ok(());
                    }
                    defined.push(full.clone());
                    let inner_ns = full.rsplit_once('.').map_or("", |(ns, _)| ns);
                    out.push_str("{\"name\":\"");
                    out.push_str(&full);
                    out.push_str("\",\"type\":\"");
                    match ty {
                        "record" | "error" => {
                            out.push_str("record\",\"fields\":[");
                            let fields = map
                                .get("fields")
                                .and_then(J::as_array)
                                .ok_or_else(|| format!("record {full} has no \"fields\" array"))?;
                            for (i, field) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let fname = field
                                    .get("name")
                                    .and_then(J::as_str)
                                    .ok_or_else(|| format!("a field of {full} has no name"))?;
                                let ftype = field
                                    .get("type")
                                    .ok_or_else(|| format!("field {full}.{fname} has no type"))?;
                                out.push_str("{\"name\":\"");
                                out.push_str(fname);
                                out.push_str("\",\"type\":");
                                pcf(ftype, inner_ns, defined, out)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                        "enum" => {
                            out.push_str("enum\",\"symbols\":[");
                            let symbols = map
                                .get("symbols")
                                .and_then(J::as_array)
                                .ok_or_else(|| format!("enum {full} has no \"symbols\""))?;
                            for (i, symbol) in symbols.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let symbol = symbol
                                    .as_str()
                                    .ok_or_else(|| format!("enum {full} has a non-string symbol"))?;
                                out.push('"');
                                out.push_str(symbol);
                                out.push('"');
                            }
                            out.push(']');
                        }
                        _ => {
                            let size = match map.get("size") {
                                Some(J::Number(n)) => n.as_u64(),
                                Some(J::String(s)) => s.trim().parse::<u64>().ok(),
                                _ => None,
                            }
                            .ok_or_else(|| format!("fixed {full} has no valid \"size\""))?;
                            out.push_str("fixed\",\"size\":");
                            out.push_str(&size.to_string());
                        }
                    }
                    out.push('}');
                    Ok(())
                }
                "array" => {
                    let items = map.get("items").ok_or("an array has no \"items\"")?;
                    out.push_str("{\"type\":\"array\",\"items\":");
                    pcf(items, namespace, defined, out)?;
                    out.push('}');
                    Ok(())
                }
                "map" => {
                    let values = map.get("values").ok_or("a map has no \"values\"")?;
                    out.push_str("{\"type\":\"map\",\"values\":");
                    pcf(values, namespace, defined, out)?;
                    out.push('}');
                    Ok(())
                }
                // A primitive (possibly with a logical type or other
                // attributes, all stripped) or a reference to a named type.
                other => pcf(&J::String(other.to_owned()), namespace, defined, out),
            }
        }
        other => Err(format!("{other} is not a schema")),
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Why a schema set could not be loaded (a startup error, never per record).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The source is not a valid Avro schema.
    #[error("{source_name}: not a valid Avro schema: {detail}")]
    InvalidSchema { source_name: String, detail: String },
    /// The schema is valid Avro but not a record.
    #[error("{source_name}: the top-level schema must be a record")]
    NotARecord { source_name: String },
    /// A bundled file name lacks the `.vN.avsc` version.
    #[error("{file}: bundled schema file names must look like <record>.v<N>.avsc")]
    BadFileName { file: String },
    /// Two bundled files give the same version of one record.
    #[error("{name} version {version} is bundled twice")]
    DuplicateVersion { name: String, version: u32 },
    /// A writer schema cannot be resolved to the reader schema of its record.
    #[error("{name}: writer schema {fingerprint:016x} cannot be read with the newest schema: {detail}")]
    Incompatible {
        name: String,
        fingerprint: u64,
        detail: String,
    },
    /// A record the crate needs is missing from the bundled schemas.
    #[error("no bundled schema for {name}")]
    MissingRecord { name: &'static str },
}

/// What is wrong with the single-object framing of a record value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingProblem {
    /// No bytes at all (an empty value or a tombstone).
    Empty,
    /// The first bytes are not the marker `0xC3 0x01`.
    BadMarker { first: u8, second: Option<u8> },
    /// The marker is there but the 8-byte fingerprint is cut off.
    TooShort { len: usize },
}

impl fmt::Display for FramingProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FramingProblem::Empty => f.write_str("the value is empty"),
            FramingProblem::BadMarker { first, second } => {
                write!(f, "the value starts with 0x{first:02x}")?;
                if let Some(second) = second {
                    write!(f, " 0x{second:02x}")?;
                }
                f.write_str(", not the marker 0xc3 0x01")
            }
            FramingProblem::TooShort { len } => write!(
                f,
                "the value is {len} bytes, shorter than the {HEADER_LEN}-byte header"
            ),
        }
    }
}

/// Why a record value could not be decoded; maps onto a dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not framed as an Avro single-object record.
    #[error("not an Avro single-object record: {0}")]
    NotSingleObject(FramingProblem),
    /// The header names a schema this registry does not hold.
    #[error("unknown writer schema fingerprint 0x{fingerprint:016x} (CRC-64-AVRO)")]
    UnknownFingerprint { fingerprint: u64 },
    /// The body is not a valid datum of its writer schema (or has trailing bytes).
    #[error("undecodable Avro body ({schema}): {detail}")]
    UndecodableBody { schema: Arc<str>, detail: String },
    /// The datum decoded but a field's value is not acceptable.
    #[error("invalid field {field}: {detail}")]
    InvalidField { field: &'static str, detail: String },
}

impl DecodeError {
    /// The dead-letter reason code for this error.
    pub fn reason(&self) -> DeadLetterReason {
        match self {
            DecodeError::NotSingleObject(_) => DeadLetterReason::NotSingleObject,
            DecodeError::UnknownFingerprint { .. } => DeadLetterReason::UnknownFingerprint,
            DecodeError::UndecodableBody { .. } => DeadLetterReason::UndecodableBody,
            DecodeError::InvalidField { .. } => DeadLetterReason::InvalidField,
        }
    }
}

fn invalid(field: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError::InvalidField {
        field,
        detail: detail.into(),
    }
}

/// Quotes at most 64 chars of untrusted text for an error detail.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

// ---------------------------------------------------------------------------
// Registry

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordKind {
    DataLogged,
    BirthReported,
    AwardGranted,
    Other,
}

impl RecordKind {
    fn of(full_name: &str) -> Self {
        match full_name {
            DATA_LOGGED_NAME => RecordKind::DataLogged,
            BIRTH_REPORTED_NAME => RecordKind::BirthReported,
            AWARD_GRANTED_NAME => RecordKind::AwardGranted,
            _ => RecordKind::Other,
        }
    }
}

#[derive(Debug)]
struct WriterEntry {
    /// Index of the writer schema in `SchemaRegistry::schemas`.
    writer: usize,
    /// Index of the reader schema (newest of the same record).
    reader: usize,
    kind: RecordKind,
    name: Arc<str>,
    /// The writer is exactly the layout the hand-written decoder reads.
    fast: bool,
}

/// Every known writer schema, keyed by fingerprint, with the reader schema
/// each one resolves to. Built once at startup; decoding never parses JSON.
#[derive(Debug)]
pub struct SchemaRegistry {
    schemas: Vec<Schema>,
    writers: HashMap<u64, WriterEntry>,
    /// Single-object headers the encoders write: DataLogged, BirthReported, AwardGranted.
    headers: [[u8; HEADER_LEN]; 3],
    fast_path: bool,
}

struct Parsed {
    schema: Schema,
    name: String,
    fingerprint: u64,
    /// apache_avro's own fingerprint, when it differs from the specification's.
    library_fingerprint: Option<u64>,
    version: u32,
}

fn parse_source(source_name: &str, json: &str, version: u32) -> Result<Parsed, CodecError> {
    let schema = Schema::parse_str(json).map_err(|e| CodecError::InvalidSchema {
        source_name: source_name.to_owned(),
        detail: e.to_string(),
    })?;
    let name = match &schema {
        Schema::Record(record) => record.name.fullname(None),
        _ => {
            return Err(CodecError::NotARecord {
                source_name: source_name.to_owned(),
            })
        }
    };
    let fingerprint = schema_fingerprint(json).map_err(|e| match e {
        CodecError::InvalidSchema { detail, .. } => CodecError::InvalidSchema {
            source_name: source_name.to_owned(),
            detail,
        },
        other => other,
    })?;
    let library = u64::from_le_bytes(fingerprint_bytes(&schema));
    Ok(Parsed {
        schema,
        name,
        fingerprint,
        library_fingerprint: (library != fingerprint).then_some(library),
        version,
    })
}

/// apache_avro's Rabin fingerprint of `schema`, as the 8 header bytes.
fn fingerprint_bytes(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    let mut bytes = [0u8; 8];
    for (dst, src) in bytes.iter_mut().zip(fp.bytes.iter()) {
        *dst = *src;
    }
    bytes
}

fn header(fingerprint: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..2].copy_from_slice(&SINGLE_OBJECT_MARKER);
    h[2..].copy_from_slice(&fingerprint.to_le_bytes());
    h
}

/// The version in a bundled file name `<record>.v<N>.avsc`.
fn version_of(file: &str) -> Option<u32> {
    let stem = file.strip_suffix(".avsc")?;
    let (_, version) = stem.rsplit_once(".v")?;
    version.parse().ok()
}

impl SchemaRegistry {
    /// The registry of every bundled schema (`BUNDLED_SCHEMAS`).
    pub fn bundled() -> Result<Self, CodecError> {
        let mut parsed = Vec::with_capacity(BUNDLED_SCHEMAS.len());
        for &(file, json) in BUNDLED_SCHEMAS {
            let version = version_of(file).ok_or_else(|| CodecError::BadFileName {
                file: file.to_owned(),
            })?;
            let p = parse_source(file, json, version)?;
            if parsed
                .iter()
                .any(|q: &Parsed| q.name == p.name && q.version == version)
            {
                return Err(CodecError::DuplicateVersion {
                    name: p.name,
                    version,
                });
            }
            parsed.push(p);
        }
        for name in [DATA_LOGGED_NAME, BIRTH_REPORTED_NAME, AWARD_GRANTED_NAME] {
            if !parsed.iter().any(|p| p.name == name) {
                return Err(CodecError::MissingRecord { name });
            }
        }
        Self::build(parsed)
    }

    /// A registry of exactly the given schemas (JSON). For each record name
    /// the last one given is the reader schema. Encoders still write the
    /// bundled version this code was built for.
    pub fn from_sources(sources: &[&str]) -> Result<Self, CodecError> {
        let mut parsed = Vec::with_capacity(sources.len());
        for (i, json) in sources.iter().enumerate() {
            // Position as version: the last one given for a name is newest.
            let version = u32::try_from(i).unwrap_or(u32::MAX);
            parsed.push(parse_source(&format!("source #{i}"), json, version)?);
        }
        Self::build(parsed)
    }

    fn build(parsed: Vec<Parsed>) -> Result<Self, CodecError> {
        let pinned = [
            schema_fingerprint(DATA_LOGGED_V1)?,
            schema_fingerprint(BIRTH_REPORTED_V1)?,
            schema_fingerprint(AWARD_GRANTED_V1)?,
        ];
        // Reader = highest version per name.
        let mut readers: HashMap<&str, (u32, usize)> = HashMap::new();
        for (i, p) in parsed.iter().enumerate() {
            let slot = readers.entry(p.name.as_str()).or_insert((p.version, i));
            if p.version >= slot.0 {
                *slot = (p.version, i);
            }
        }
        let mut writers = HashMap::with_capacity(parsed.len() * 2);
        let mut names: HashMap<&str, Arc<str>> = HashMap::new();
        for (i, p) in parsed.iter().enumerate() {
            let reader = readers.get(p.name.as_str()).map_or(i, |&(_, r)| r);
            if reader != i {
                SchemaCompatibility::can_read(&p.schema, &parsed[reader].schema).map_err(|e| {
                    CodecError::Incompatible {
                        name: p.name.clone(),
                        fingerprint: p.fingerprint,
                        detail: e.to_string(),
                    }
                })?;
            }
            let kind = RecordKind::of(&p.name);
            let fast = match kind {
                RecordKind::DataLogged => p.fingerprint == pinned[0],
                RecordKind::BirthReported => p.fingerprint == pinned[1],
                RecordKind::AwardGranted => p.fingerprint == pinned[2],
                RecordKind::Other => false,
            };
            let name = names
                .entry(p.name.as_str())
                .or_insert_with(|| Arc::from(p.name.as_str()))
                .clone();
            for fp in std::iter::once(p.fingerprint).chain(p.library_fingerprint) {
                // Identical canonical forms are one schema: keep the first.
                writers.entry(fp).or_insert_with(|| WriterEntry {
                    writer: i,
                    reader,
                    kind,
                    name: Arc::clone(&name),
                    fast,
                });
            }
        }
        Ok(SchemaRegistry {
            schemas: parsed.into_iter().map(|p| p.schema).collect(),
            writers,
            headers: pinned.map(header),
            fast_path: true,
        })
    }

    /// The fingerprints this registry decodes, each with its record's full name.
    pub fn known_fingerprints(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.writers.iter().map(|(fp, w)| (*fp, &*w.name))
    }

    /// The writer schema entry and the Avro body of a single-object record.
    fn split<'a>(&self, bytes: &'a [u8]) -> Result<(&WriterEntry, &'a [u8]), DecodeError> {
        match bytes {
            [0xC3, 0x01, f0, f1, f2, f3, f4, f5, f6, f7, body @ ..] => {
                let fp = u64::from_le_bytes([*f0, *f1, *f2, *f3, *f4, *f5, *f6, *f7]);
                match self.writers.get(&fp) {
                    Some(entry) => Ok((entry, body)),
                    None => Err(DecodeError::UnknownFingerprint { fingerprint: fp }),
                }
            }
            [] => Err(DecodeError::NotSingleObject(FramingProblem::Empty)),
            [0xC3] | [0xC3, 0x01, ..] => Err(DecodeError::NotSingleObject(
                FramingProblem::TooShort { len: bytes.len() },
            )),
            [first, rest @ ..] => Err(DecodeError::NotSingleObject(FramingProblem::BadMarker {
                first: *first,
                second: rest.first().copied(),
            })),
        }
    }

    /// Decodes a single-object record into an input event, validating it.
    pub fn decode_event(&self, bytes: &[u8]) -> Result<InputEvent, DecodeError> {
        let (entry, body) = self.split(bytes)?;
        match entry.kind {
            RecordKind::DataLogged => {
                let raw = if entry.fast && self.fast_path {
                    fast::data_logged(body).map_err(|e| e.into_decode_error(&entry.name))?
                } else {
                    generic::data_logged(self.resolve(entry, body)?)?
                };
                raw.validate().map(InputEvent::DataLogged)
            }
            RecordKind::BirthReported => {
                let raw = if entry.fast && self.fast_path {
                    fast::birth_reported(body).map_err(|e| e.into_decode_error(&entry.name))?
                } else {
                    generic::birth_reported(self.resolve(entry, body)?)?
                };
                raw.validate().map(InputEvent::BirthReported)
            }
            RecordKind::AwardGranted | RecordKind::Other => Err(invalid(
                "type",
                format!("{} is not an input event", entry.name),
            )),
        }
    }

    /// Decodes a single-object `AwardGranted` record, validating it.
    pub fn decode_award(&self, bytes: &[u8]) -> Result<AwardGranted, DecodeError> {
        let (entry, body) = self.split(bytes)?;
        if entry.kind != RecordKind::AwardGranted {
            return Err(invalid(
                "type",
                format!("{} is not {AWARD_GRANTED_NAME}", entry.name),
            ));
        }
        let raw = if entry.fast && self.fast_path {
            fast::award(body).map_err(|e| e.into_decode_error(&entry.name))?
        } else {
            generic::award(self.resolve(entry, body)?)?
        };
        raw.validate()
    }

    /// Generic path: decode with the writer schema, resolve to the reader's.
    fn resolve(&self, entry: &WriterEntry, body: &[u8]) -> Result<Vec<(String, Value)>, DecodeError> {
        let undecodable = |detail: String| DecodeError::UndecodableBody {
            schema: Arc::clone(&entry.name),
            detail,
        };
        let mut rest = body;
        let value = apache_avro::from_avro_datum(
            &self.schemas[entry.writer],
            &mut rest,
            Some(&self.schemas[entry.reader]),
        )
        .map_err(|e| undecodable(e.to_string()))?;
        if !rest.is_empty() {
            return Err(undecodable(format!(
                "{} trailing bytes after the datum",
                rest.len()
            )));
        }
        match value {
            Value::Record(fields) => Ok(fields),
            other => Err(undecodable(format!(
                "expected a record, decoded {:?}",
                apache_avro::schema::SchemaKind::from(&other)
            ))),
        }
    }

    /// Encodes a `DataLogged` as a single-object record.
    pub fn encode_data_logged(&self, e: &DataLogged) -> Vec<u8> {
        let strings = e.event_id.len()
            + e.user_id.len()
            + e.employer_id.len()
            + e.data_kinds.iter().map(|k| k.len() + 2).sum::<usize>();
        let mut out = Vec::with_capacity(HEADER_LEN + 64 + strings);
        out.extend_from_slice(&self.headers[0]);
        put_str(&mut out, &e.event_id);
        put_str(&mut out, &e.user_id);
        put_str(&mut out, &e.employer_id);
        put_long(&mut out, e.event_time.timestamp_millis());
        put_time_zone(&mut out, e.time_zone);
        put_array(&mut out, &e.data_kinds, |out, kind| put_str(out, kind));
        out
    }

    /// Encodes a `BirthReported` as a single-object record.
    pub fn encode_birth_reported(&self, e: &BirthReported) -> Vec<u8> {
        let strings = e.event_id.len() + e.user_id.len() + e.employer_id.len();
        let mut out = Vec::with_capacity(HEADER_LEN + 64 + strings);
        out.extend_from_slice(&self.headers[1]);
        put_str(&mut out, &e.event_id);
        put_str(&mut out, &e.user_id);
        put_str(&mut out, &e.employer_id);
        put_long(&mut out, e.event_time.timestamp_millis());
        put_time_zone(&mut out, e.time_zone);
        put_date(&mut out, e.birth_date);
        out
    }

    /// Encodes any input event as a single-object record.
    pub fn encode_event(&self, e: &InputEvent) -> Vec<u8> {
        match e {
            InputEvent::DataLogged(e) => self.encode_data_logged(e),
            InputEvent::BirthReported(e) => self.encode_birth_reported(e),
        }
    }

    /// Encodes an `AwardGranted` as a single-object record.
    pub fn encode_award(&self, a: &AwardGranted) -> Vec<u8> {
        let strings = [
            &a.award_id,
            &a.user_id,
            &a.employer_id,
            &a.program_id,
            &a.incentive_id,
            &a.rule_version,
            &a.period,
            &a.reward.kind,
            &a.reward.code,
            &a.reward.description,
            &a.time_zone,
            &a.source.topic,
            &a.source.event_id,
        ]
        .iter()
        .map(|s| s.len() + 2)
        .sum::<usize>();
        let mut out = Vec::with_capacity(HEADER_LEN + 32 + strings + 5 * a.evidence_days.len());
        out.extend_from_slice(&self.headers[2]);
        put_str(&mut out, &a.award_id);
        put_str(&mut out, &a.user_id);
        put_str(&mut out, &a.employer_id);
        put_str(&mut out, &a.program_id);
        put_str(&mut out, &a.incentive_id);
        put_str(&mut out, &a.rule_version);
        put_str(&mut out, &a.period);
        put_str(&mut out, &a.reward.kind);
        put_str(&mut out, &a.reward.code);
        put_str(&mut out, &a.reward.description);
        put_long(&mut out, a.achieved_at.timestamp_millis());
        put_date(&mut out, a.achieved_local_date);
        put_str(&mut out, &a.time_zone);
        put_str(&mut out, &a.source.topic);
        put_long(&mut out, i64::from(a.source.partition));
        put_long(&mut out, a.source.offset);
        put_str(&mut out, &a.source.event_id);
        put_array(&mut out, &a.evidence_days, |out, day| put_date(out, *day));
        out
    }
}

// ---------------------------------------------------------------------------
// Avro binary encoding (infallible: writes into a Vec)

fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // A Rust string is at most isize::MAX bytes, so its length fits an i64.
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

fn put_time_zone(out: &mut Vec<u8>, tz: Option<Tz>) {
    match tz {
        None => put_long(out, 0),
        Some(tz) => {
            put_long(out, 1);
            put_str(out, tz.name());
        }
    }
}

/// Days since 1970-01-01 (the `date` logical type).
fn put_date(out: &mut Vec<u8>, date: NaiveDate) {
    put_long(out, i64::from(days_since_epoch(date)));
}

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

fn days_since_epoch(date: NaiveDate) -> i32 {
    // NaiveDate spans about ±262,000 years (±96M days): no overflow.
    date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

fn put_array<T>(out: &mut Vec<u8>, items: &[T], mut put: impl FnMut(&mut Vec<u8>, &T)) {
    if !items.is_empty() {
        // A slice has at most isize::MAX elements, so the count fits an i64.
        put_long(out, items.len() as i64);
        for item in items {
            put(out, item);
        }
    }
    put_long(out, 0);
}

// ---------------------------------------------------------------------------
// Decoded-but-unvalidated records, shared by both decode paths

struct RawDataLogged<'a> {
    event_id: String,
    user_id: String,
    employer_id: String,
    event_time: i64,
    time_zone: Option<Cow<'a, str>>,
    data_kinds: Vec<String>,
}

struct RawBirthReported<'a> {
    event_id: String,
    user_id: String,
    employer_id: String,
    event_time: i64,
    time_zone: Option<Cow<'a, str>>,
    birth_date: i32,
}

struct RawAward {
    award_id: String,
    user_id: String,
    employer_id: String,
    program_id: String,
    incentive_id: String,
    rule_version: String,
    period: String,
    reward: Reward,
    achieved_at: i64,
    achieved_local_date: i32,
    time_zone: String,
    source: SourceEvent,
    evidence_days: Vec<i32>,
}

fn check_id(field: &'static str, id: &str) -> Result<(), DecodeError> {
    if id.is_empty() {
        Err(invalid(field, "must not be empty"))
    } else if id.len() > MAX_ID_BYTES {
        Err(invalid(
            field,
            format!("is {} bytes, at most {MAX_ID_BYTES} allowed", id.len()),
        ))
    } else {
        Ok(())
    }
}

fn timestamp(field: &'static str, millis: i64) -> Result<DateTime<Utc>, DecodeError> {
    let out_of_range = || {
        invalid(
            field,
            format!("{millis} ms since the epoch is outside years 0001..=9999"),
        )
    };
    if !(MIN_TIMESTAMP_MILLIS..=MAX_TIMESTAMP_MILLIS).contains(&millis) {
        return Err(out_of_range());
    }
    DateTime::from_timestamp_millis(millis).ok_or_else(out_of_range)
}

fn date(field: &'static str, days: i32) -> Result<NaiveDate, DecodeError> {
    days.checked_add(UNIX_EPOCH_DAYS_FROM_CE)
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .filter(|d| (1..=9999).contains(&d.year()))
        .ok_or_else(|| {
            invalid(
                field,
                format!("{days} days since 1970-01-01 is outside years 0001..=9999"),
            )
        })
}

fn time_zone(name: &str) -> Result<Tz, DecodeError> {
    Tz::from_str(name).map_err(|_| {
        invalid(
            "time_zone",
            format!("{} is not an IANA time zone name", quoted(name)),
        )
    })
}

/// `^[a-z][a-z0-9_]{0,63}$`
fn is_data_kind(kind: &str) -> bool {
    let b = kind.as_bytes();
    matches!(b.first(), Some(b'a'..=b'z'))
        && b.len() <= 64
        && b[1..]
            .iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

impl RawDataLogged<'_> {
    fn validate(self) -> Result<DataLogged, DecodeError> {
        check_id("event_id", &self.event_id)?;
        check_id("user_id", &self.user_id)?;
        check_id("employer_id", &self.employer_id)?;
        let event_time = timestamp("event_time", self.event_time)?;
        let time_zone = self.time_zone.as_deref().map(time_zone).transpose()?;
        if self.data_kinds.is_empty() {
            return Err(invalid("data_kinds", "must name at least one kind"));
        }
        if let Some((i, kind)) = self
            .data_kinds
            .iter()
            .enumerate()
            .find(|(_, k)| !is_data_kind(k))
        {
            return Err(invalid(
                "data_kinds",
                format!(
                    "item {i} {} does not match ^[a-z][a-z0-9_]{{0,63}}$",
                    quoted(kind)
                ),
            ));
        }
        Ok(DataLogged {
            event_id: self.event_id,
            user_id: self.user_id,
            employer_id: self.employer_id,
            event_time,
            time_zone,
            data_kinds: self.data_kinds,
        })
    }
}

impl RawBirthReported<'_> {
    fn validate(self) -> Result<BirthReported, DecodeError> {
        check_id("event_id", &self.event_id)?;
        check_id("user_id", &self.user_id)?;
        check_id("employer_id", &self.employer_id)?;
        let event_time = timestamp("event_time", self.event_time)?;
        let time_zone = self.time_zone.as_deref().map(time_zone).transpose()?;
        let birth_date = date("birth_date", self.birth_date)?;
        Ok(BirthReported {
            event_id: self.event_id,
            user_id: self.user_id,
            employer_id: self.employer_id,
            event_time,
            time_zone,
            birth_date,
        })
    }
}

impl RawAward {
    fn validate(self) -> Result<AwardGranted, DecodeError> {
        check_id("award_id", &self.award_id)?;
        check_id("user_id", &self.user_id)?;
        check_id("employer_id", &self.employer_id)?;
        let achieved_at = timestamp("achieved_at", self.achieved_at)?;
        let achieved_local_date = date("achieved_local_date", self.achieved_local_date)?;
        time_zone(&self.time_zone)?;
        let evidence_days = self
            .evidence_days
            .into_iter()
            .map(|d| date("evidence_days", d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AwardGranted {
            award_id: self.award_id,
            user_id: self.user_id,
            employer_id: self.employer_id,
            program_id: self.program_id,
            incentive_id: self.incentive_id,
            rule_version: self.rule_version,
            period: self.period,
            reward: self.reward,
            achieved_at,
            achieved_local_date,
            time_zone: self.time_zone,
            source: self.source,
            evidence_days,
        })
    }
}

// ---------------------------------------------------------------------------
// Fast path: hand-written decoders for exactly the pinned (v1) layouts

mod fast {
    use super::*;

    /// A malformed body: what was being read, and where.
    pub(super) struct BodyError {
        what: &'static str,
        at: usize,
    }

    impl BodyError {
        pub(super) fn into_decode_error(self, schema: &Arc<str>) -> DecodeError {
            DecodeError::UndecodableBody {
                schema: Arc::clone(schema),
                detail: format!("{} at byte {} of the body", self.what, self.at),
            }
        }
    }

    struct Body<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    impl<'a> Body<'a> {
        fn fail<T>(&self, what: &'static str) -> Result<T, BodyError> {
            Err(BodyError { what, at: self.pos })
        }

        fn long(&mut self) -> Result<i64, BodyError> {
            let mut z: u64 = 0;
            for i in 0..10 {
                let Some(&b) = self.buf.get(self.pos) else {
                    return self.fail("truncated varint");
                };
                self.pos += 1;
                if i == 9 && b > 1 {
                    return self.fail("varint overflows 64 bits");
                }
                z |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
                }
            }
            self.fail("varint longer than 10 bytes")
        }

        fn int(&mut self) -> Result<i32, BodyError> {
            let start = self.pos;
            let n = self.long()?;
            i32::try_from(n).map_err(|_| BodyError {
                what: "int out of 32-bit range",
                at: start,
            })
        }

        fn str(&mut self) -> Result<&'a str, BodyError> {
            let start = self.pos;
            let len = self.long()?;
            let Ok(len) = usize::try_from(len) else {
                return Err(BodyError {
                    what: "negative string length",
                    at: start,
                });
            };
            let Some(bytes) = self.pos.checked_add(len).and_then(|end| self.buf.get(self.pos..end)) else {
                return self.fail("string runs past the end of the body");
            };
            let Ok(s) = std::str::from_utf8(bytes) else {
                return self.fail("string is not valid UTF-8");
            };
            self.pos += len;
            Ok(s)
        }

        fn string(&mut self) -> Result<String, BodyError> {
            self.str().map(str::to_owned)
        }

        fn optional_str(&mut self) -> Result<Option<&'a str>, BodyError> {
            match self.long()? {
                0 => Ok(None),
                1 => self.str().map(Some),
                _ => self.fail("union branch index out of range"),
            }
        }

        /// An array, item by item; `min_item_bytes` bounds the preallocation.
        fn array<T>(
            &mut self,
            mut item: impl FnMut(&mut Self) -> Result<T, BodyError>,
        ) -> Result<Vec<T>, BodyError> {
            let mut items = Vec::new();
            loop {
                let count = self.long()?;
                if count == 0 {
                    return Ok(items);
                }
                if count < 0 {
                    // A negative count is followed by the block's byte size.
                    self.long()?;
                }
                let count = count.unsigned_abs();
                // Every item takes at least one byte: bound the allocation.
                if count > (self.buf.len() - self.pos) as u64 {
                    return self.fail("array block count exceeds the remaining bytes");
                }
                items.reserve(count as usize);
                for _ in 0..count {
                    items.push(item(self)?);
                }
            }
        }

        fn finish(&self) -> Result<(), BodyError> {
            if self.pos == self.buf.len() {
                Ok(())
            } else {
                Err(BodyError {
                    what: "trailing bytes after the datum",
                    at: self.pos,
                })
            }
        }
    }

    pub(super) fn data_logged(buf: &[u8]) -> Result<RawDataLogged<'_>, BodyError> {
        let mut b = Body { buf, pos: 0 };
        let raw = RawDataLogged {
            event_id: b.string()?,
            user_id: b.string()?,
            employer_id: b.string()?,
            event_time: b.long()?,
            time_zone: b.optional_str()?.map(Cow::Borrowed),
            data_kinds: b.array(Body::string)?,
        };
        b.finish()?;
        Ok(raw)
    }

    pub(super) fn birth_reported(buf: &[u8]) -> Result<RawBirthReported<'_>, BodyError> {
        let mut b = Body { buf, pos: 0 };
        let raw = RawBirthReported {
            event_id: b.string()?,
            user_id: b.string()?,
            employer_id: b.string()?,
            event_time: b.long()?,
            time_zone: b.optional_str()?.map(Cow::Borrowed),
            birth_date: b.int()?,
        };
        b.finish()?;
        Ok(raw)
    }

    pub(super) fn award(buf: &[u8]) -> Result<RawAward, BodyError> {
        let mut b = Body { buf, pos: 0 };
        let raw = RawAward {
            award_id: b.string()?,
            user_id: b.string()?,
            employer_id: b.string()?,
            program_id: b.string()?,
            incentive_id: b.string()?,
            rule_version: b.string()?,
            period: b.string()?,
            reward: Reward {
                kind: b.string()?,
                code: b.string()?,
                description: b.string()?,
            },
            achieved_at: b.long()?,
            achieved_local_date: b.int()?,
            time_zone: b.string()?,
            source: SourceEvent {
                topic: b.string()?,
                partition: b.int()?,
                offset: b.long()?,
                event_id: b.string()?,
            },
            evidence_days: b.array(Body::int)?,
        };
        b.finish()?;
        Ok(raw)
    }
}

// ---------------------------------------------------------------------------
// Generic path: apache_avro values (already resolved to the reader schema)

mod generic {
    use super::*;

    /// The fields of a resolved record, taken out by name without cloning.
    struct Fields {
        fields: Vec<(String, Value)>,
    }

    fn wrong_type(field: &'static str, expected: &str, found: &Value) -> DecodeError {
        invalid(
            field,
            format!(
                "expected {expected}, found {:?}",
                apache_avro::schema::SchemaKind::from(found)
            ),
        )
    }

    impl Fields {
        fn take(&mut self, field: &'static str) -> Result<Value, DecodeError> {
            self.fields
                .iter_mut()
                .find(|(name, _)| name == field)
                .map(|(_, v)| std::mem::replace(v, Value::Null))
                .ok_or_else(|| invalid(field, "missing from the reader schema"))
        }

        fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
            match self.take(field)? {
                Value::String(s) => Ok(s),
                other => Err(wrong_type(field, "a string", &other)),
            }
        }

        fn long(&mut self, field: &'static str) -> Result<i64, DecodeError> {
            match self.take(field)? {
                Value::Long(n) | Value::TimestampMillis(n) => Ok(n),
                other => Err(wrong_type(field, "a long", &other)),
            }
        }

        fn int(&mut self, field: &'static str) -> Result<i32, DecodeError> {
            int(field, self.take(field)?)
        }

        fn optional_string(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
            match self.take(field)? {
                Value::Union(_, inner) => match *inner {
                    Value::Null => Ok(None),
                    Value::String(s) => Ok(Some(s)),
                    other => Err(wrong_type(field, "null or a string", &other)),
                },
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s)),
                other => Err(wrong_type(field, "null or a string", &other)),
            }
        }

        fn array(&mut self, field: &'static str) -> Result<Vec<Value>, DecodeError> {
            match self.take(field)? {
                Value::Array(items) => Ok(items),
                other => Err(wrong_type(field, "an array", &other)),
            }
        }

        fn record(&mut self, field: &'static str) -> Result<Fields, DecodeError> {
            match self.take(field)? {
                Value::Record(fields) => Ok(Fields { fields }),
                other => Err(wrong_type(field, "a record", &other)),
            }
        }
    }

    fn int(field: &'static str, value: Value) -> Result<i32, DecodeError> {
        match value {
            Value::Int(n) | Value::Date(n) => Ok(n),
            other => Err(wrong_type(field, "an int", &other)),
        }
    }

    pub(super) fn data_logged(
        fields: Vec<(String, Value)>,
    ) -> Result<RawDataLogged<'static>, DecodeError> {
        let mut f = Fields { fields };
        Ok(RawDataLogged {
            event_id: f.string("event_id")?,
            user_id: f.string("user_id")?,
            employer_id: f.string("employer_id")?,
            event_time: f.long("event_time")?,
            time_zone: f.optional_string("time_zone")?.map(Cow::Owned),
            data_kinds: f
                .array("data_kinds")?
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(wrong_type("data_kinds", "strings", &other)),
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub(super) fn birth_reported(
        fields: Vec<(String, Value)>,
    ) -> Result<RawBirthReported<'static>, DecodeError> {
        let mut f = Fields { fields };
        Ok(RawBirthReported {
            event_id: f.string("event_id")?,
            user_id: f.string("user_id")?,
            employer_id: f.string("employer_id")?,
            event_time: f.long("event_time")?,
            time_zone: f.optional_string("time_zone")?.map(Cow::Owned),
            birth_date: f.int("birth_date")?,
        })
    }

    pub(super) fn award(fields: Vec<(String, Value)>) -> Result<RawAward, DecodeError> {
        let mut f = Fields { fields };
        let award_id = f.string("award_id")?;
        let user_id = f.string("user_id")?;
        let employer_id = f.string("employer_id")?;
        let program_id = f.string("program_id")?;
        let incentive_id = f.string("incentive_id")?;
        let rule_version = f.string("rule_version")?;
        let period = f.string("period")?;
        let mut r = f.record("reward")?;
        let reward = Reward {
            kind: r.string("kind")?,
            code: r.string("code")?,
            description: r.string("description")?,
        };
        let achieved_at = f.long("achieved_at")?;
        let achieved_local_date = f.int("achieved_local_date")?;
        let time_zone = f.string("time_zone")?;
        let mut s = f.record("source")?;
        let source = SourceEvent {
            topic: s.string("topic")?,
            partition: s.int("partition")?,
            offset: s.long("offset")?,
            event_id: s.string("event_id")?,
        };
        let evidence_days = f
            .array("evidence_days")?
            .into_iter()
            .map(|v| int("evidence_days", v))
            .collect::<Result<_, _>>()?;
        Ok(RawAward {
            award_id,
            user_id,
            employer_id,
            program_id,
            incentive_id,
            rule_version,
            period,
            reward,
            achieved_at,
            achieved_local_date,
            time_zone,
            source,
            evidence_days,
        })
    }
}

#[cfg(test)]
mod tests {
    // TESTS
}
