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

/// Full name of the data-logged record.
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
/// specification (rules `PRIMITIVES`, `FULLNAMES`, `STRIP`, `ORDER`,
/// `STRINGS`, `INTEGERS`, `WHITESPACE`), as Java's `SchemaNormalization`
/// computes it: logical types reduce to their underlying type.
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
                                let symbol = symbol.as_str().ok_or_else(|| {
                                    format!("enum {full} has a non-string symbol")
                                })?;
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
    #[error(
        "{name}: writer schema 0x{fingerprint:016x} cannot be read with the newest schema: {detail}"
    )]
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
    #[error("undecodable Avro body ({schema}, writer 0x{fingerprint:016x}): {detail}")]
    UndecodableBody {
        schema: Arc<str>,
        fingerprint: u64,
        detail: String,
    },
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

/// At most 256 bytes of an error text (dead-letter headers are bounded).
fn bounded(mut text: String) -> String {
    const MAX: usize = 256;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
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
    /// The fingerprint this entry is registered under.
    fingerprint: u64,
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
/// each one resolves to. Built once at startup and shared (`Send + Sync`);
/// decoding never parses JSON.
#[derive(Debug)]
pub struct SchemaRegistry {
    schemas: Vec<Schema>,
    writers: foldhash::HashMap<u64, WriterEntry>,
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
        let mut writers: foldhash::HashMap<u64, WriterEntry> =
            foldhash::HashMapExt::with_capacity(parsed.len() * 2);
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
                    fingerprint: fp,
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
            [0xC3] | [0xC3, 0x01, ..] => {
                Err(DecodeError::NotSingleObject(FramingProblem::TooShort {
                    len: bytes.len(),
                }))
            }
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
                    fast::data_logged(body).map_err(|e| e.into_decode_error(entry))?
                } else {
                    generic::data_logged(self.resolve(entry, body)?)?
                };
                raw.validate().map(InputEvent::DataLogged)
            }
            RecordKind::BirthReported => {
                let raw = if entry.fast && self.fast_path {
                    fast::birth_reported(body).map_err(|e| e.into_decode_error(entry))?
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
            fast::award(body).map_err(|e| e.into_decode_error(entry))?
        } else {
            generic::award(self.resolve(entry, body)?)?
        };
        raw.validate()
    }

    /// Generic path: decode with the writer schema, resolve to the reader's.
    fn resolve(
        &self,
        entry: &WriterEntry,
        body: &[u8],
    ) -> Result<Vec<(String, Value)>, DecodeError> {
        let undecodable = |detail: String| DecodeError::UndecodableBody {
            schema: Arc::clone(&entry.name),
            fingerprint: entry.fingerprint,
            detail: bounded(detail),
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
        self.encode_data_logged_into(
            &mut out,
            &DataLoggedFields {
                event_id: &e.event_id,
                user_id: &e.user_id,
                employer_id: &e.employer_id,
                event_time_ms: e.event_time.timestamp_millis(),
                time_zone: e.time_zone,
                data_kinds: &e.data_kinds,
            },
        );
        out
    }

    /// [`SchemaRegistry::encode_data_logged`] from borrowed fields, appended
    /// to `out`: a sender that reuses its buffer allocates nothing (the
    /// bench's paced producer).
    pub fn encode_data_logged_into<K: AsRef<str>>(
        &self,
        out: &mut Vec<u8>,
        e: &DataLoggedFields<'_, K>,
    ) {
        out.extend_from_slice(&self.headers[0]);
        put_str(out, e.event_id);
        put_str(out, e.user_id);
        put_str(out, e.employer_id);
        put_long(out, e.event_time_ms);
        put_time_zone(out, e.time_zone);
        put_array(out, e.data_kinds, |out, kind| put_str(out, kind.as_ref()));
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

/// The fields of a `DataLogged`, borrowed
/// ([`SchemaRegistry::encode_data_logged_into`]).
#[derive(Debug, Clone, Copy)]
pub struct DataLoggedFields<'a, K> {
    pub event_id: &'a str,
    pub user_id: &'a str,
    pub employer_id: &'a str,
    /// Unix milliseconds.
    pub event_time_ms: i64,
    pub time_zone: Option<Tz>,
    pub data_kinds: &'a [K],
}

// ---------------------------------------------------------------------------
// Avro binary encoding (infallible: writes into a Vec)

pub(crate) fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
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
        pub(super) fn into_decode_error(self, entry: &WriterEntry) -> DecodeError {
            DecodeError::UndecodableBody {
                schema: Arc::clone(&entry.name),
                fingerprint: entry.fingerprint,
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
            let Some(bytes) = self
                .pos
                .checked_add(len)
                .and_then(|end| self.buf.get(self.pos..end))
            else {
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

        /// An array: blocks of items, ended by a zero count.
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

/// Builds a [`DataLogged`] from loose parts (JSON, the gateway) with exactly
/// the field checks the decoder applies to Avro records.
pub fn data_logged_from_parts(
    event_id: String,
    user_id: String,
    employer_id: String,
    event_time_millis: i64,
    time_zone: Option<&str>,
    data_kinds: Vec<String>,
) -> Result<DataLogged, DecodeError> {
    RawDataLogged {
        event_id,
        user_id,
        employer_id,
        event_time: event_time_millis,
        time_zone: time_zone.map(Cow::Borrowed),
        data_kinds,
    }
    .validate()
}

/// Builds a [`BirthReported`] from loose parts, checked like decoded records.
pub fn birth_reported_from_parts(
    event_id: String,
    user_id: String,
    employer_id: String,
    event_time_millis: i64,
    time_zone: Option<&str>,
    birth_date: NaiveDate,
) -> Result<BirthReported, DecodeError> {
    RawBirthReported {
        event_id,
        user_id,
        employer_id,
        event_time: event_time_millis,
        time_zone: time_zone.map(Cow::Borrowed),
        birth_date: days_since_epoch(birth_date),
    }
    .validate()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::headers::HeaderBuilder;
    use apache_avro::{GenericSingleObjectReader, GenericSingleObjectWriter};

    // ---- fixtures ------------------------------------------------------

    /// 2024-03-31T01:30:00.123Z
    const T_MS: i64 = 1_711_848_600_123;

    fn ts(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn registry() -> SchemaRegistry {
        SchemaRegistry::bundled().unwrap()
    }

    /// The same registry with the hand-written fast path switched off, so
    /// every record goes through apache_avro resolution.
    fn generic(registry: SchemaRegistry) -> SchemaRegistry {
        SchemaRegistry {
            fast_path: false,
            ..registry
        }
    }

    fn data_logged() -> DataLogged {
        DataLogged {
            event_id: "evt-1".into(),
            user_id: "user-42".into(),
            employer_id: "acme".into(),
            event_time: ts(T_MS),
            time_zone: Some(chrono_tz::Europe::Berlin),
            data_kinds: vec!["mood".into(), "symptom".into()],
        }
    }

    fn birth_reported() -> BirthReported {
        BirthReported {
            event_id: "evt-2".into(),
            user_id: "user-42".into(),
            employer_id: "acme".into(),
            event_time: ts(-1), // 1969-12-31T23:59:59.999Z
            time_zone: None,
            birth_date: day(2024, 2, 29),
        }
    }

    fn award() -> AwardGranted {
        AwardGranted {
            award_id: "aw-1".into(),
            user_id: "user-42".into(),
            employer_id: "acme".into(),
            program_id: "prog".into(),
            incentive_id: "inc".into(),
            rule_version: "3".into(),
            period: "2024-W13".into(),
            reward: Reward {
                kind: "gift_card".into(),
                code: "GC-25".into(),
                description: "A $25 gift card".into(),
            },
            achieved_at: ts(T_MS),
            achieved_local_date: day(2024, 3, 31),
            time_zone: "Europe/Berlin".into(),
            source: SourceEvent {
                topic: "data-logged".into(),
                partition: 7,
                offset: 123_456_789_012,
                event_id: "evt-1".into(),
            },
            evidence_days: vec![day(2024, 3, 29), day(2024, 3, 30), day(2024, 3, 31)],
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Decodes with the fast path and the generic path, checks they agree,
    /// and returns the (fast path) result.
    fn decode_both(bytes: &[u8]) -> Result<InputEvent, DecodeError> {
        let fast = registry().decode_event(bytes);
        let slow = generic(registry()).decode_event(bytes);
        assert_same_outcome(&fast, &slow);
        fast
    }

    fn decode_award_both(bytes: &[u8]) -> Result<AwardGranted, DecodeError> {
        let fast = registry().decode_award(bytes);
        let slow = generic(registry()).decode_award(bytes);
        assert_same_outcome(&fast, &slow);
        fast
    }

    fn assert_same_outcome<T: PartialEq + fmt::Debug>(
        fast: &Result<T, DecodeError>,
        slow: &Result<T, DecodeError>,
    ) {
        match (fast, slow) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => {
                assert_eq!(a.reason(), b.reason(), "fast: {a}\ngeneric: {b}");
                if let (
                    DecodeError::InvalidField { field: fa, .. },
                    DecodeError::InvalidField { field: fb, .. },
                ) = (a, b)
                {
                    assert_eq!(fa, fb);
                }
            }
            _ => panic!("paths disagree: fast {fast:?}, generic {slow:?}"),
        }
    }

    // ---- the Avro binary encoding, written out from the specification --

    /// zigzag, then base-128 varint, least significant group first.
    fn spec_long(n: i64) -> Vec<u8> {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let low = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(low);
                return out;
            }
            out.push(low | 0x80);
        }
    }

    fn spec_string(s: &str) -> Vec<u8> {
        let mut out = spec_long(s.len() as i64);
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// The Parsing Canonical Form of data_logged.v1, written out by hand.
    const DATA_LOGGED_PCF: &str = r#"{"name":"io.incentives.DataLogged","type":"record","fields":[{"name":"event_id","type":"string"},{"name":"user_id","type":"string"},{"name":"employer_id","type":"string"},{"name":"event_time","type":"long"},{"name":"time_zone","type":["null","string"]},{"name":"data_kinds","type":{"type":"array","items":"string"}}]}"#;

    fn spec_header(canonical_form: &str) -> Vec<u8> {
        let mut out = vec![0xC3, 0x01];
        out.extend_from_slice(&crc64_avro(canonical_form.as_bytes()).to_le_bytes());
        out
    }

    /// A DataLogged v1 record built byte by byte.
    fn hand_data_logged(
        ids: [&str; 3],
        event_time_ms: i64,
        time_zone: Option<&str>,
        kinds: &[&str],
    ) -> Vec<u8> {
        let mut out = spec_header(DATA_LOGGED_PCF);
        for id in ids {
            out.extend(spec_string(id));
        }
        out.extend(spec_long(event_time_ms));
        match time_zone {
            None => out.push(0x00), // union branch 0: null
            Some(tz) => {
                out.push(0x02); // union branch 1: string
                out.extend(spec_string(tz));
            }
        }
        if !kinds.is_empty() {
            out.extend(spec_long(kinds.len() as i64)); // one block
            for k in kinds {
                out.extend(spec_string(k));
            }
        }
        out.push(0x00); // end of array
        out
    }

    /// Emits the single-object header with the specification's fingerprint.
    struct SpecHeader(u64);

    impl HeaderBuilder for SpecHeader {
        fn build_header(&self) -> Vec<u8> {
            header(self.0).to_vec()
        }
    }

    fn parse(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    fn data_logged_value(e: &DataLogged) -> Value {
        Value::Record(vec![
            ("event_id".into(), Value::String(e.event_id.clone())),
            ("user_id".into(), Value::String(e.user_id.clone())),
            ("employer_id".into(), Value::String(e.employer_id.clone())),
            (
                "event_time".into(),
                Value::TimestampMillis(e.event_time.timestamp_millis()),
            ),
            (
                "time_zone".into(),
                match e.time_zone {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(tz) => Value::Union(1, Box::new(Value::String(tz.name().into()))),
                },
            ),
            (
                "data_kinds".into(),
                Value::Array(
                    e.data_kinds
                        .iter()
                        .map(|k| Value::String(k.clone()))
                        .collect(),
                ),
            ),
        ])
    }

    fn award_value(a: &AwardGranted) -> Value {
        let s = |v: &String| Value::String(v.clone());
        let d = |v: NaiveDate| Value::Date(days_since_epoch(v));
        Value::Record(vec![
            ("award_id".into(), s(&a.award_id)),
            ("user_id".into(), s(&a.user_id)),
            ("employer_id".into(), s(&a.employer_id)),
            ("program_id".into(), s(&a.program_id)),
            ("incentive_id".into(), s(&a.incentive_id)),
            ("rule_version".into(), s(&a.rule_version)),
            ("period".into(), s(&a.period)),
            (
                "reward".into(),
                Value::Record(vec![
                    ("kind".into(), s(&a.reward.kind)),
                    ("code".into(), s(&a.reward.code)),
                    ("description".into(), s(&a.reward.description)),
                ]),
            ),
            (
                "achieved_at".into(),
                Value::TimestampMillis(a.achieved_at.timestamp_millis()),
            ),
            ("achieved_local_date".into(), d(a.achieved_local_date)),
            ("time_zone".into(), s(&a.time_zone)),
            (
                "source".into(),
                Value::Record(vec![
                    ("topic".into(), s(&a.source.topic)),
                    ("partition".into(), Value::Int(a.source.partition)),
                    ("offset".into(), Value::Long(a.source.offset)),
                    ("event_id".into(), s(&a.source.event_id)),
                ]),
            ),
            (
                "evidence_days".into(),
                Value::Array(a.evidence_days.iter().map(|v| d(*v)).collect()),
            ),
        ])
    }

    // ---- CRC-64-AVRO and canonical forms -------------------------------

    #[test]
    fn crc64_of_empty_input_is_the_empty_constant() {
        assert_eq!(crc64_avro(b""), 0xc15d_213a_a4d7_a795);
        assert_eq!(crc64_avro(b""), CRC64_AVRO_EMPTY);
    }

    #[test]
    fn crc64_matches_published_fingerprints() {
        // Signed values from the Avro repository's share/test/data/schema-tests.txt
        // (the Java reference implementation's SchemaNormalization.parsingFingerprint64).
        let cases: &[(&str, i64)] = &[
            (r#""null""#, 7_195_948_357_588_979_594),
            (r#""boolean""#, -6_970_731_678_124_411_036),
            (
                r#"{"name":"foo","type":"fixed","size":15}"#,
                1_756_455_273_707_447_556,
            ),
            (
                r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
                -1_759_257_747_318_642_341,
            ),
        ];
        for (pcf, expected) in cases {
            assert_eq!(crc64_avro(pcf.as_bytes()) as i64, *expected, "{pcf}");
        }
        // fastavro 1.13.1: fingerprint(pcf, "CRC-64-AVRO") returns the hex of
        // the 8 header bytes, i.e. little-endian.
        assert_eq!(
            hex(&crc64_avro(br#""int""#).to_le_bytes()),
            "8f5c393f1ad57572"
        );
        assert_eq!(
            hex(&crc64_avro(br#""null""#).to_le_bytes()),
            "8a8f25cce724dd63"
        );
        assert_eq!(crc64_avro(br#""null""#), 0x63dd_24e7_cc25_8f8a);
    }

    #[test]
    fn crc64_agrees_with_apache_avro_rabin_without_logical_types() {
        for json in [
            r#""int""#,
            r#""null""#,
            r#"{"type":"array","items":"string"}"#,
            r#"{"type":"record","name":"R","namespace":"io.x","doc":"d","fields":[
                {"name":"a","type":"long","default":1},
                {"name":"b","type":["null","string"]},
                {"name":"c","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
                {"name":"d","type":{"type":"map","values":{"type":"fixed","name":"F","size":4}}}]}"#,
        ] {
            let schema = parse(json);
            let library = u64::from_le_bytes(fingerprint_bytes(&schema));
            assert_eq!(schema_fingerprint(json).unwrap(), library, "{json}");
            assert_eq!(
                crc64_avro(schema.canonical_form().as_bytes()),
                library,
                "{json}"
            );
        }
    }

    #[test]
    fn apache_avro_keeps_logical_types_in_canonical_form_and_both_fingerprints_decode() {
        let schema = parse(DATA_LOGGED_V1);
        // apache_avro 0.20 writes {"type":"long"} where the specification
        // (and Java, fastavro) write "long": the fingerprints differ.
        assert!(schema
            .canonical_form()
            .contains(r#""event_time","type":{"type":"long"}"#));
        let library = u64::from_le_bytes(fingerprint_bytes(&schema));
        let spec = schema_fingerprint(DATA_LOGGED_V1).unwrap();
        assert_ne!(library, spec);
        let reg = registry();
        let known: Vec<u64> = reg.known_fingerprints().map(|(fp, _)| fp).collect();
        assert!(known.contains(&spec) && known.contains(&library));
        // The encoder writes the specification's fingerprint.
        assert_eq!(
            reg.encode_data_logged(&data_logged())[..HEADER_LEN],
            header(spec)
        );
    }

    #[test]
    fn canonical_forms_of_bundled_schemas_match_fastavro() {
        // Expected values from fastavro 1.13.1 (to_parsing_canonical_form,
        // fingerprint(.., "CRC-64-AVRO"), which prints the header bytes).
        let cases = [
            (DATA_LOGGED_V1, DATA_LOGGED_PCF, "79b3d8f8214b64e7"),
            (
                BIRTH_REPORTED_V1,
                r#"{"name":"io.incentives.BirthReported","type":"record","fields":[{"name":"event_id","type":"string"},{"name":"user_id","type":"string"},{"name":"employer_id","type":"string"},{"name":"event_time","type":"long"},{"name":"time_zone","type":["null","string"]},{"name":"birth_date","type":"int"}]}"#,
                "a82e0d091580d726",
            ),
            (
                AWARD_GRANTED_V1,
                r#"{"name":"io.incentives.AwardGranted","type":"record","fields":[{"name":"award_id","type":"string"},{"name":"user_id","type":"string"},{"name":"employer_id","type":"string"},{"name":"program_id","type":"string"},{"name":"incentive_id","type":"string"},{"name":"rule_version","type":"string"},{"name":"period","type":"string"},{"name":"reward","type":{"name":"io.incentives.Reward","type":"record","fields":[{"name":"kind","type":"string"},{"name":"code","type":"string"},{"name":"description","type":"string"}]}},{"name":"achieved_at","type":"long"},{"name":"achieved_local_date","type":"int"},{"name":"time_zone","type":"string"},{"name":"source","type":{"name":"io.incentives.SourceEvent","type":"record","fields":[{"name":"topic","type":"string"},{"name":"partition","type":"int"},{"name":"offset","type":"long"},{"name":"event_id","type":"string"}]}},{"name":"evidence_days","type":{"type":"array","items":"int"}}]}"#,
                "b357a9523a0a67d8",
            ),
        ];
        for (json, pcf, fp_header_hex) in cases {
            assert_eq!(parsing_canonical_form(json).unwrap(), pcf);
            assert_eq!(
                hex(&schema_fingerprint(json).unwrap().to_le_bytes()),
                fp_header_hex
            );
        }
    }

    #[test]
    fn canonical_form_qualifies_names_strips_attributes_and_reuses_defined_names() {
        let json = r#"{"type":"record","name":"A","namespace":"x","doc":"d","aliases":["Z"],"fields":[
            {"name":"b","default":{},"type":{"type":"record","name":"B","fields":[]}},
            {"name":"c","type":"B"},
            {"name":"d","type":{"type":"fixed","name":"y.F","size":16}},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["P","Q"],"doc":"x"}},
            {"name":"m","type":{"type":"map","values":"y.F"}},
            {"name":"u","type":["null",{"type":"string","logicalType":"uuid"},{"type":"array","items":{"type":"int","logicalType":"date"}}]},
            {"name":"n","type":{"type":"record","name":"N","namespace":"","fields":[
                {"name":"k","type":"x.B"},
                {"name":"l","type":{"type":"enum","name":"L","symbols":["A"]}}]}}]}"#;
        // Expected output and fingerprint from fastavro 1.13.1.
        let expected = r#"{"name":"x.A","type":"record","fields":[{"name":"b","type":{"name":"x.B","type":"record","fields":[]}},{"name":"c","type":"x.B"},{"name":"d","type":{"name":"y.F","type":"fixed","size":16}},{"name":"e","type":{"name":"x.E","type":"enum","symbols":["P","Q"]}},{"name":"m","type":{"type":"map","values":"y.F"}},{"name":"u","type":["null","string",{"type":"array","items":"int"}]},{"name":"n","type":{"name":"N","type":"record","fields":[{"name":"k","type":"x.B"},{"name":"l","type":{"name":"L","type":"enum","symbols":["A"]}}]}}]}"#;
        assert_eq!(parsing_canonical_form(json).unwrap(), expected);
        assert_eq!(
            hex(&schema_fingerprint(json).unwrap().to_le_bytes()),
            "997c5eaf6fc7cf8b"
        );
        assert!(parsing_canonical_form("{").is_err());
        assert!(parsing_canonical_form(r#"{"name":"x"}"#).is_err());
    }

    // ---- the bundled contract ------------------------------------------

    #[test]
    fn every_schema_file_is_bundled() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if !name.ends_with(".avsc") {
                continue;
            }
            files += 1;
            let bundled = BUNDLED_SCHEMAS.iter().find(|(file, _)| *file == name);
            let Some((_, json)) = bundled else {
                panic!("schemas/{name} is not in BUNDLED_SCHEMAS");
            };
            assert_eq!(*json, std::fs::read_to_string(&path).unwrap(), "{name}");
        }
        assert_eq!(files, BUNDLED_SCHEMAS.len());
    }

    #[test]
    fn bundled_schemas_document_every_record_and_field() {
        fn check(json: &serde_json::Value, file: &str) {
            let Some(obj) = json.as_object() else { return };
            if obj.get("type").and_then(|t| t.as_str()) == Some("record") {
                let name = obj["name"].as_str().unwrap();
                assert!(obj.get("doc").is_some(), "{file}: record {name} has no doc");
                for field in obj["fields"].as_array().unwrap() {
                    let fname = field["name"].as_str().unwrap();
                    assert!(
                        field.get("doc").is_some(),
                        "{file}: {name}.{fname} has no doc"
                    );
                    assert!(
                        fname.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'),
                        "{file}: {fname} is not snake_case"
                    );
                    check(&field["type"], file);
                }
            }
        }
        for (file, json) in BUNDLED_SCHEMAS {
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(value["namespace"], "io.incentives", "{file}");
            check(&value, file);
            assert!(version_of(file).is_some(), "{file}");
        }
    }

    #[test]
    fn bundled_registry_knows_each_record_under_both_fingerprints() {
        let reg = registry();
        for json in [DATA_LOGGED_V1, BIRTH_REPORTED_V1, AWARD_GRANTED_V1] {
            let fp = schema_fingerprint(json).unwrap();
            assert!(reg.writers[&fp].fast);
            let library = u64::from_le_bytes(fingerprint_bytes(&parse(json)));
            assert_eq!(reg.writers[&library].writer, reg.writers[&fp].writer);
        }
        let names: std::collections::HashSet<&str> =
            reg.known_fingerprints().map(|(_, name)| name).collect();
        assert_eq!(
            names,
            [DATA_LOGGED_NAME, BIRTH_REPORTED_NAME, AWARD_GRANTED_NAME].into()
        );
    }

    #[test]
    fn bundled_file_names_carry_versions() {
        assert_eq!(version_of("data_logged.v1.avsc"), Some(1));
        assert_eq!(version_of("data_logged.v12.avsc"), Some(12));
        assert_eq!(version_of("data_logged.avsc"), None);
        assert_eq!(version_of("data_logged.vx.avsc"), None);
        assert_eq!(version_of("data_logged.v1.json"), None);
    }

    // ---- round trips ---------------------------------------------------

    #[test]
    fn data_logged_round_trips() {
        let reg = registry();
        let e = data_logged();
        let bytes = reg.encode_data_logged(&e);
        assert_eq!(bytes[..2], SINGLE_OBJECT_MARKER);
        assert_eq!(decode_both(&bytes), Ok(InputEvent::DataLogged(e.clone())));
        let no_zone = DataLogged {
            time_zone: None,
            ..e
        };
        let bytes = reg.encode_event(&InputEvent::DataLogged(no_zone.clone()));
        assert_eq!(decode_both(&bytes), Ok(InputEvent::DataLogged(no_zone)));
    }

    #[test]
    fn birth_reported_round_trips() {
        let reg = registry();
        let e = InputEvent::BirthReported(birth_reported());
        assert_eq!(
            reg.encode_event(&e),
            reg.encode_birth_reported(&birth_reported())
        );
        assert_eq!(decode_both(&reg.encode_event(&e)), Ok(e));
    }

    #[test]
    fn award_round_trips() {
        let reg = registry();
        let a = award();
        assert_eq!(decode_award_both(&reg.encode_award(&a)), Ok(a.clone()));
        let empty_evidence = AwardGranted {
            evidence_days: Vec::new(),
            ..a
        };
        assert_eq!(
            decode_award_both(&reg.encode_award(&empty_evidence)),
            Ok(empty_evidence)
        );
    }

    #[test]
    fn dates_and_timestamps_survive_at_millisecond_precision() {
        let reg = registry();
        for ms in [
            0,
            -1,
            T_MS,
            MIN_TIMESTAMP_MILLIS,
            MAX_TIMESTAMP_MILLIS,
            4_102_444_800_001, // 2100-01-01T00:00:00.001Z
        ] {
            let e = DataLogged {
                event_time: ts(ms),
                ..data_logged()
            };
            let Ok(InputEvent::DataLogged(back)) = decode_both(&reg.encode_data_logged(&e)) else {
                panic!("{ms} did not round trip");
            };
            assert_eq!(back.event_time.timestamp_millis(), ms);
            assert_eq!(back, e);
        }
        // Sub-millisecond digits are not part of the contract: floored.
        let precise = DataLogged {
            event_time: ts(T_MS) + chrono::Duration::microseconds(999),
            ..data_logged()
        };
        let Ok(InputEvent::DataLogged(back)) = decode_both(&reg.encode_data_logged(&precise))
        else {
            panic!("did not decode");
        };
        assert_eq!(back.event_time, ts(T_MS));

        for birth_date in [
            day(2024, 2, 29),
            day(1969, 12, 31),
            day(1, 1, 1),
            day(9999, 12, 31),
        ] {
            let e = BirthReported {
                birth_date,
                ..birth_reported()
            };
            let bytes = reg.encode_birth_reported(&e);
            assert_eq!(decode_both(&bytes), Ok(InputEvent::BirthReported(e)));
        }

        let a = AwardGranted {
            achieved_at: ts(T_MS),
            achieved_local_date: day(1970, 1, 1),
            evidence_days: vec![day(1969, 12, 30), day(1970, 1, 1), day(2038, 1, 20)],
            ..award()
        };
        let back = decode_award_both(&reg.encode_award(&a)).unwrap();
        assert_eq!(back.achieved_at.timestamp_millis(), T_MS);
        assert_eq!(back.achieved_local_date, day(1970, 1, 1));
        assert_eq!(back.evidence_days, a.evidence_days);
    }

    // ---- interoperability ----------------------------------------------

    #[test]
    fn hand_encoded_data_logged_decodes() {
        let bytes = hand_data_logged(
            ["evt-1", "user-42", "acme"],
            T_MS,
            Some("Europe/Berlin"),
            &["mood", "symptom"],
        );
        // Spot checks of the specification's encoding rules.
        assert_eq!(spec_long(0), [0x00]);
        assert_eq!(spec_long(-1), [0x01]);
        assert_eq!(spec_long(1), [0x02]);
        assert_eq!(spec_long(-64), [0x7f]);
        assert_eq!(spec_long(64), [0x80, 0x01]);
        assert_eq!(spec_string("evt-1"), b"\x0aevt-1");
        assert_eq!(
            decode_both(&bytes),
            Ok(InputEvent::DataLogged(data_logged()))
        );
        // ... and the codec writes exactly these bytes.
        assert_eq!(registry().encode_data_logged(&data_logged()), bytes);

        // Arrays may come in several blocks; a negative count is followed
        // by the block's size in bytes.
        let mut blocks = spec_header(DATA_LOGGED_PCF);
        for id in ["evt-1", "user-42", "acme"] {
            blocks.extend(spec_string(id));
        }
        blocks.extend(spec_long(T_MS));
        blocks.push(0x00); // time_zone: null
        blocks.extend(spec_long(-1));
        blocks.extend(spec_long(spec_string("mood").len() as i64));
        blocks.extend(spec_string("mood"));
        blocks.extend(spec_long(1));
        blocks.extend(spec_string("symptom"));
        blocks.push(0x00);
        let expected = DataLogged {
            time_zone: None,
            ..data_logged()
        };
        assert_eq!(decode_both(&blocks), Ok(InputEvent::DataLogged(expected)));
    }

    #[test]
    fn records_written_by_fastavro_decode_and_match_our_encoding() {
        // Produced by Python fastavro 1.13.1: header c3 01 + its CRC-64-AVRO
        // fingerprint, then schemaless_writer() of the same values as the
        // fixtures here.
        let dl = unhex("c30179b3d8f8214b64e70a6576742d310e757365722d34320861636d65f6c885a2d263021a4575726f70652f4265726c696e04086d6f6f640e73796d70746f6d00");
        let br = unhex("c301a82e0d091580d7260a6576742d320e757365722d34320861636d6501008cb502");
        let aw = unhex("c301b357a9523a0a67d80861772d310e757365722d34320861636d650870726f6706696e63023310323032342d57313312676966745f636172640a47432d32351e412024323520676966742063617264f6c885a2d263cab5021a4575726f70652f4265726c696e16646174612d6c6f676765640ea8e8c8e997070a6576742d3106c6b502c8b502cab50200");
        let reg = registry();
        assert_eq!(decode_both(&dl), Ok(InputEvent::DataLogged(data_logged())));
        assert_eq!(
            decode_both(&br),
            Ok(InputEvent::BirthReported(birth_reported()))
        );
        assert_eq!(decode_award_both(&aw), Ok(award()));
        assert_eq!(reg.encode_data_logged(&data_logged()), dl);
        assert_eq!(reg.encode_birth_reported(&birth_reported()), br);
        assert_eq!(reg.encode_award(&award()), aw);
    }

    #[test]
    fn apache_avro_single_object_writer_output_decodes() {
        let schema = parse(DATA_LOGGED_V1);
        let value = data_logged_value(&data_logged());
        // Default header: apache_avro's own (logical-type-keeping) fingerprint.
        let mut library = Vec::new();
        GenericSingleObjectWriter::new_with_capacity(&schema, 256)
            .unwrap()
            .write_value_ref(&value, &mut library)
            .unwrap();
        assert_eq!(library[2..HEADER_LEN], fingerprint_bytes(&schema));
        assert_eq!(
            decode_both(&library),
            Ok(InputEvent::DataLogged(data_logged()))
        );
        // The specification's fingerprint.
        let mut spec = Vec::new();
        GenericSingleObjectWriter::new_with_capacity_and_header_builder(
            &schema,
            256,
            SpecHeader(schema_fingerprint(DATA_LOGGED_V1).unwrap()),
        )
        .unwrap()
        .write_value(value, &mut spec)
        .unwrap();
        assert_eq!(
            decode_both(&spec),
            Ok(InputEvent::DataLogged(data_logged()))
        );
        assert_eq!(library[HEADER_LEN..], spec[HEADER_LEN..]);

        let award_schema = parse(AWARD_GRANTED_V1);
        let mut bytes = Vec::new();
        GenericSingleObjectWriter::new_with_capacity(&award_schema, 256)
            .unwrap()
            .write_value(award_value(&award()), &mut bytes)
            .unwrap();
        assert_eq!(decode_award_both(&bytes), Ok(award()));
    }

    #[test]
    fn encoded_records_are_read_by_apache_avro() {
        let reg = registry();
        let cases = [
            (
                DATA_LOGGED_V1,
                reg.encode_data_logged(&data_logged()),
                data_logged_value(&data_logged()),
            ),
            (
                AWARD_GRANTED_V1,
                reg.encode_award(&award()),
                award_value(&award()),
            ),
        ];
        for (json, bytes, expected) in cases {
            let schema = parse(json);
            let reader = GenericSingleObjectReader::new_with_header_builder(
                schema.clone(),
                SpecHeader(schema_fingerprint(json).unwrap()),
            )
            .unwrap();
            let mut rest = &bytes[..];
            assert_eq!(reader.read_value(&mut rest).unwrap(), expected);
            assert!(rest.is_empty());
            // Body bytes are identical to apache_avro's own encoder's.
            assert_eq!(
                bytes[HEADER_LEN..],
                apache_avro::to_avro_datum(&schema, expected).unwrap()[..]
            );
            // apache_avro's default reader expects its own fingerprint and so
            // rejects the specification's header: use the header builder.
            let default_reader = GenericSingleObjectReader::new(schema).unwrap();
            assert!(default_reader.read_value(&mut &bytes[..]).is_err());
        }
    }

    // ---- schema evolution ----------------------------------------------

    /// DataLogged as it was before `time_zone` existed.
    const DATA_LOGGED_V0: &str = r#"{"type":"record","name":"DataLogged","namespace":"io.incentives","doc":"old",
        "fields":[
            {"name":"event_id","type":"string","doc":"."},
            {"name":"user_id","type":"string","doc":"."},
            {"name":"employer_id","type":"string","doc":"."},
            {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"},"doc":"."},
            {"name":"data_kinds","type":{"type":"array","items":"string"},"doc":"."}]}"#;

    /// A later DataLogged with an extra field.
    const DATA_LOGGED_V2: &str = r#"{"type":"record","name":"DataLogged","namespace":"io.incentives","doc":"new",
        "fields":[
            {"name":"event_id","type":"string","doc":"."},
            {"name":"user_id","type":"string","doc":"."},
            {"name":"employer_id","type":"string","doc":"."},
            {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"},"doc":"."},
            {"name":"time_zone","type":["null","string"],"default":null,"doc":"."},
            {"name":"data_kinds","type":{"type":"array","items":"string"},"doc":"."},
            {"name":"app_version","type":"string","default":"unknown","doc":"."}]}"#;

    #[test]
    fn older_writer_version_is_still_decoded() {
        let reg = SchemaRegistry::from_sources(&[DATA_LOGGED_V0, DATA_LOGGED_V1]).unwrap();
        let old = schema_fingerprint(DATA_LOGGED_V0).unwrap();
        let entry = &reg.writers[&old];
        assert!(!entry.fast);
        assert_eq!(entry.reader, 1, "the last source given is the reader");

        let mut bytes = spec_header(&parsing_canonical_form(DATA_LOGGED_V0).unwrap());
        for id in ["evt-1", "user-42", "acme"] {
            bytes.extend(spec_string(id));
        }
        bytes.extend(spec_long(T_MS));
        bytes.extend([0x02]);
        bytes.extend(spec_string("mood"));
        bytes.push(0x00);
        let expected = DataLogged {
            time_zone: None, // the reader schema's default
            data_kinds: vec!["mood".into()],
            ..data_logged()
        };
        assert_eq!(
            reg.decode_event(&bytes),
            Ok(InputEvent::DataLogged(expected))
        );
        // The bundled registry does not know v0.
        assert_eq!(
            registry().decode_event(&bytes),
            Err(DecodeError::UnknownFingerprint { fingerprint: old })
        );
    }

    #[test]
    fn newer_writer_version_is_decoded_and_current_records_still_take_the_fast_path() {
        let reg = SchemaRegistry::from_sources(&[
            DATA_LOGGED_V1,
            BIRTH_REPORTED_V1,
            AWARD_GRANTED_V1,
            DATA_LOGGED_V2,
        ])
        .unwrap();
        let v1 = &reg.writers[&schema_fingerprint(DATA_LOGGED_V1).unwrap()];
        assert!(v1.fast);
        assert_eq!(v1.reader, 3);
        let v1_bytes = reg.encode_data_logged(&data_logged());
        assert_eq!(
            reg.decode_event(&v1_bytes),
            Ok(InputEvent::DataLogged(data_logged()))
        );
        let slow =
            generic(SchemaRegistry::from_sources(&[DATA_LOGGED_V1, DATA_LOGGED_V2]).unwrap());
        assert_eq!(
            slow.decode_event(&v1_bytes),
            Ok(InputEvent::DataLogged(data_logged()))
        );

        let Value::Record(mut fields) = data_logged_value(&data_logged()) else {
            unreachable!()
        };
        fields.push(("app_version".into(), Value::String("7.1".into())));
        let schema = parse(DATA_LOGGED_V2);
        let mut v2_bytes = Vec::new();
        GenericSingleObjectWriter::new_with_capacity_and_header_builder(
            &schema,
            256,
            SpecHeader(schema_fingerprint(DATA_LOGGED_V2).unwrap()),
        )
        .unwrap()
        .write_value(Value::Record(fields), &mut v2_bytes)
        .unwrap();
        assert_eq!(
            reg.decode_event(&v2_bytes),
            Ok(InputEvent::DataLogged(data_logged()))
        );
    }

    #[test]
    fn registry_rejects_bad_sources() {
        let incompatible = DATA_LOGGED_V1.replace(
            r#"{ "type": "long", "logicalType": "timestamp-millis" }"#,
            r#""string""#,
        );
        assert_ne!(incompatible, DATA_LOGGED_V1);
        assert!(matches!(
            SchemaRegistry::from_sources(&[&incompatible, DATA_LOGGED_V1]),
            Err(CodecError::Incompatible { .. })
        ));
        assert!(matches!(
            SchemaRegistry::from_sources(&[r#""int""#]),
            Err(CodecError::NotARecord { .. })
        ));
        assert!(matches!(
            SchemaRegistry::from_sources(&["{not json"]),
            Err(CodecError::InvalidSchema { .. })
        ));
    }

    // ---- errors --------------------------------------------------------

    #[test]
    fn framing_errors_are_not_single_object() {
        let cases: &[(&[u8], FramingProblem)] = &[
            (b"", FramingProblem::Empty),
            (
                b"{\"event_id\":1}",
                FramingProblem::BadMarker {
                    first: b'{',
                    second: Some(b'"'),
                },
            ),
            (
                &[0xC3, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                FramingProblem::BadMarker {
                    first: 0xC3,
                    second: Some(0x00),
                },
            ),
            (
                &[0x00],
                FramingProblem::BadMarker {
                    first: 0x00,
                    second: None,
                },
            ),
            (&[0xC3], FramingProblem::TooShort { len: 1 }),
            (&[0xC3, 0x01, 1, 2, 3], FramingProblem::TooShort { len: 5 }),
        ];
        for (bytes, problem) in cases {
            let err = registry().decode_event(bytes).unwrap_err();
            assert_eq!(err, DecodeError::NotSingleObject(*problem));
            assert_eq!(err.reason(), DeadLetterReason::NotSingleObject);
            assert_eq!(registry().decode_award(bytes).unwrap_err(), err);
        }
        assert_eq!(
            DecodeError::NotSingleObject(FramingProblem::BadMarker {
                first: 0x7b,
                second: Some(0x22)
            })
            .to_string(),
            "not an Avro single-object record: the value starts with 0x7b 0x22, not the marker 0xc3 0x01"
        );
        assert_eq!(
            DecodeError::NotSingleObject(FramingProblem::TooShort { len: 5 }).to_string(),
            "not an Avro single-object record: the value is 5 bytes, shorter than the 10-byte header"
        );
    }

    #[test]
    fn unknown_fingerprint_names_the_fingerprint_in_hex() {
        let mut bytes = registry().encode_data_logged(&data_logged());
        bytes[2..HEADER_LEN].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
        let err = decode_both(&bytes).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownFingerprint {
                fingerprint: 0x0123_4567_89ab_cdef
            }
        );
        assert_eq!(err.reason(), DeadLetterReason::UnknownFingerprint);
        assert_eq!(
            err.to_string(),
            "unknown writer schema fingerprint 0x0123456789abcdef (CRC-64-AVRO)"
        );
    }

    #[test]
    fn truncated_bodies_are_undecodable() {
        let reg = registry();
        let records = [
            reg.encode_data_logged(&data_logged()),
            reg.encode_birth_reported(&birth_reported()),
        ];
        for bytes in &records {
            for cut in HEADER_LEN..bytes.len() {
                let err = decode_both(&bytes[..cut]).unwrap_err();
                assert_eq!(
                    err.reason(),
                    DeadLetterReason::UndecodableBody,
                    "cut at {cut}: {err}"
                );
            }
        }
        let bytes = reg.encode_award(&award());
        for cut in HEADER_LEN..bytes.len() {
            let err = decode_award_both(&bytes[..cut]).unwrap_err();
            assert_eq!(
                err.reason(),
                DeadLetterReason::UndecodableBody,
                "cut at {cut}: {err}"
            );
        }
        let err = reg.decode_event(&records[0][..20]).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "undecodable Avro body (io.incentives.DataLogged, writer 0x{:016x}): \
                 string runs past the end of the body",
                schema_fingerprint(DATA_LOGGED_V1).unwrap()
            )),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes_are_undecodable() {
        let reg = registry();
        let mut bytes = reg.encode_data_logged(&data_logged());
        bytes.push(0x00);
        let err = decode_both(&bytes).unwrap_err();
        assert_eq!(err.reason(), DeadLetterReason::UndecodableBody);
        assert!(err.to_string().contains("trailing bytes"), "{err}");
        let err = generic(registry()).decode_event(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("1 trailing bytes after the datum"),
            "{err}"
        );

        let mut bytes = reg.encode_award(&award());
        bytes.extend_from_slice(b"xyz");
        let err = decode_award_both(&bytes).unwrap_err();
        assert_eq!(err.reason(), DeadLetterReason::UndecodableBody);
    }

    #[test]
    fn corrupt_bodies_are_undecodable() {
        let ids = ["evt-1", "user-42", "acme"];
        let valid = hand_data_logged(ids, T_MS, None, &["mood"]);
        let body_start = HEADER_LEN;
        // A union branch that does not exist.
        let mut bad_branch = valid.clone();
        let tz_at = body_start + 6 + 8 + 5 + spec_long(T_MS).len();
        assert_eq!(bad_branch[tz_at], 0x00);
        bad_branch[tz_at] = 0x04;
        // Invalid UTF-8 in a string.
        let mut bad_utf8 = valid.clone();
        bad_utf8[body_start + 1] = 0xff;
        // A negative string length.
        let mut negative = valid.clone();
        negative[body_start] = 0x01;
        // A varint that never ends.
        let mut endless = valid[..body_start].to_vec();
        endless.extend([0xff; 12]);
        for bytes in [bad_branch, bad_utf8, negative, endless] {
            let err = decode_both(&bytes).unwrap_err();
            assert_eq!(err.reason(), DeadLetterReason::UndecodableBody, "{err}");
        }
    }

    fn invalid_field(result: Result<InputEvent, DecodeError>) -> &'static str {
        match result {
            Err(e @ DecodeError::InvalidField { field, .. }) => {
                assert_eq!(e.reason(), DeadLetterReason::InvalidField);
                field
            }
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn invalid_time_zone_is_an_invalid_field() {
        let ids = ["evt-1", "user-42", "acme"];
        for zone in ["Mars/Olympus_Mons", "", "europe/berlin", "CEST"] {
            let bytes = hand_data_logged(ids, T_MS, Some(zone), &["mood"]);
            assert_eq!(invalid_field(decode_both(&bytes)), "time_zone", "{zone:?}");
        }
        let err = registry()
            .decode_event(&hand_data_logged(
                ids,
                T_MS,
                Some("Mars/Olympus_Mons"),
                &["mood"],
            ))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid field time_zone: "Mars/Olympus_Mons" is not an IANA time zone name"#
        );
        for zone in [
            "UTC",
            "Etc/UTC",
            "America/Argentina/Buenos_Aires",
            "Asia/Kolkata",
        ] {
            let bytes = hand_data_logged(ids, T_MS, Some(zone), &["mood"]);
            let Ok(InputEvent::DataLogged(e)) = decode_both(&bytes) else {
                panic!("{zone} rejected");
            };
            assert_eq!(e.time_zone.map(Tz::name), Some(zone));
        }
        let bad_award = AwardGranted {
            time_zone: "Nowhere/Land".into(),
            ..award()
        };
        let err = decode_award_both(&registry().encode_award(&bad_award)).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::InvalidField {
                field: "time_zone",
                ..
            }
        ));
    }

    #[test]
    fn empty_and_oversized_ids_are_invalid_fields() {
        let reg = registry();
        let e = DataLogged {
            user_id: String::new(),
            ..data_logged()
        };
        let err = decode_both(&reg.encode_data_logged(&e)).unwrap_err();
        assert_eq!(err.to_string(), "invalid field user_id: must not be empty");
        assert_eq!(err.reason(), DeadLetterReason::InvalidField);

        let cases = [
            (["", "u", "e"], "event_id"),
            (["x", "u", ""], "employer_id"),
        ];
        for (ids, field) in cases {
            let bytes = hand_data_logged(ids, T_MS, None, &["mood"]);
            assert_eq!(invalid_field(decode_both(&bytes)), field);
        }
        let longest = "x".repeat(MAX_ID_BYTES);
        let too_long = "x".repeat(MAX_ID_BYTES + 1);
        assert!(decode_both(&hand_data_logged(
            [&longest, "u", "e"],
            T_MS,
            None,
            &["mood"]
        ))
        .is_ok());
        let err = decode_both(&hand_data_logged(
            ["x", &too_long, "e"],
            T_MS,
            None,
            &["mood"],
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid field user_id: is 257 bytes, at most 256 allowed"
        );
        let birth = BirthReported {
            employer_id: String::new(),
            ..birth_reported()
        };
        assert_eq!(
            invalid_field(decode_both(&reg.encode_birth_reported(&birth))),
            "employer_id"
        );
        let empty_award = AwardGranted {
            award_id: String::new(),
            ..award()
        };
        let err = decode_award_both(&reg.encode_award(&empty_award)).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::InvalidField {
                field: "award_id",
                ..
            }
        ));
    }

    #[test]
    fn data_kinds_must_be_present_and_well_formed() {
        let ids = ["evt-1", "user-42", "acme"];
        let ok_64 = format!("a{}", "b".repeat(63));
        let too_long = format!("a{}", "b".repeat(64));
        for kinds in [vec!["a"], vec!["mood", "sleep_2"], vec![ok_64.as_str()]] {
            assert!(
                decode_both(&hand_data_logged(ids, T_MS, None, &kinds)).is_ok(),
                "{kinds:?}"
            );
        }
        for kinds in [
            vec![],
            vec!["Mood"],
            vec!["mood", "_x"],
            vec!["2x"],
            vec!["a-b"],
            vec![""],
            vec!["mood", too_long.as_str()],
            vec!["stimmung_ä"],
        ] {
            let bytes = hand_data_logged(ids, T_MS, None, &kinds);
            assert_eq!(
                invalid_field(decode_both(&bytes)),
                "data_kinds",
                "{kinds:?}"
            );
        }
        let err = decode_both(&hand_data_logged(ids, T_MS, None, &["mood", "Sleep"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid field data_kinds: item 1 "Sleep" does not match ^[a-z][a-z0-9_]{0,63}$"#
        );
        let err = decode_both(&hand_data_logged(ids, T_MS, None, &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid field data_kinds: must name at least one kind"
        );
    }

    #[test]
    fn out_of_range_timestamps_and_dates_are_invalid_fields() {
        let ids = ["evt-1", "user-42", "acme"];
        for ms in [
            MAX_TIMESTAMP_MILLIS + 1,
            MIN_TIMESTAMP_MILLIS - 1,
            i64::MAX,
            i64::MIN,
        ] {
            let bytes = hand_data_logged(ids, ms, None, &["mood"]);
            assert_eq!(invalid_field(decode_both(&bytes)), "event_time", "{ms}");
        }
        // BirthReported with birth_date far outside years 1..=9999.
        let reg = registry();
        let valid = reg.encode_birth_reported(&birth_reported());
        let date_len = spec_long(i64::from(days_since_epoch(day(2024, 2, 29)))).len();
        for days in [i32::MAX, i32::MIN, 2_932_897 /* 10000-01-01 */] {
            let mut bytes = valid[..valid.len() - date_len].to_vec();
            bytes.extend(spec_long(i64::from(days)));
            assert_eq!(invalid_field(decode_both(&bytes)), "birth_date", "{days}");
        }
        let mut bytes = valid[..valid.len() - date_len].to_vec();
        bytes.extend(spec_long(i64::from(i32::MAX) + 1)); // not an int at all
        assert_eq!(
            decode_both(&bytes).unwrap_err().reason(),
            DeadLetterReason::UndecodableBody
        );
    }

    #[test]
    fn records_of_the_wrong_type_are_invalid_fields() {
        let reg = registry();
        let err = decode_both(&reg.encode_award(&award())).unwrap_err();
        assert_eq!(
            err,
            DecodeError::InvalidField {
                field: "type",
                detail: "io.incentives.AwardGranted is not an input event".into()
            }
        );
        let err = decode_award_both(&reg.encode_data_logged(&data_logged())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid field type: io.incentives.DataLogged is not io.incentives.AwardGranted"
        );
        let other = SchemaRegistry::from_sources(&[
            r#"{"type":"record","name":"Other","namespace":"io.incentives","fields":[]}"#,
        ])
        .unwrap();
        let mut bytes = header(
            schema_fingerprint(r#"{"type":"record","name":"io.incentives.Other","fields":[]}"#)
                .unwrap(),
        )
        .to_vec();
        assert!(matches!(
            other.decode_event(&bytes),
            Err(DecodeError::InvalidField { field: "type", .. })
        ));
        bytes.push(0);
        assert!(other.decode_award(&bytes).is_err());
    }

    #[test]
    fn registry_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SchemaRegistry>();
        assert_send_sync::<DecodeError>();
    }

    #[test]
    fn error_details_are_bounded() {
        assert_eq!(bounded("short".into()), "short");
        let long = bounded("é".repeat(300));
        assert!(long.len() <= 259 && long.ends_with("..."), "{long}");
        assert_eq!(quoted(&"z".repeat(100)), format!("{:?}...", "z".repeat(64)));
    }

    #[test]
    fn every_error_maps_to_its_dead_letter_reason() {
        let cases = [
            (
                DecodeError::NotSingleObject(FramingProblem::Empty),
                DeadLetterReason::NotSingleObject,
            ),
            (
                DecodeError::UnknownFingerprint { fingerprint: 1 },
                DeadLetterReason::UnknownFingerprint,
            ),
            (
                DecodeError::UndecodableBody {
                    schema: Arc::from("x"),
                    fingerprint: 2,
                    detail: "y".into(),
                },
                DeadLetterReason::UndecodableBody,
            ),
            (invalid("user_id", "z"), DeadLetterReason::InvalidField),
        ];
        for (err, reason) in cases {
            assert_eq!(err.reason(), reason);
        }
    }
}
