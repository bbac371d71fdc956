//! The JSON form of input events: the Avro contract with RFC 3339 times and
//! ISO dates. Shared by `incentives produce --file` and the HTTP gateway, and
//! validated exactly like decoded Avro records (see `codec`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::{birth_reported_from_parts, data_logged_from_parts, DecodeError};
use crate::events::InputEvent;

/// Body of `POST /v1/events/data-logged` (and a batch item of that type).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataLoggedJson {
    /// Generated (UUIDv7) when absent.
    #[serde(default)]
    pub event_id: Option<String>,
    pub user_id: String,
    pub employer_id: String,
    pub event_time: DateTime<Utc>,
    #[serde(default)]
    pub time_zone: Option<String>,
    pub data_kinds: Vec<String>,
}

/// Body of `POST /v1/events/birth-reported` (and a batch item of that type).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BirthReportedJson {
    #[serde(default)]
    pub event_id: Option<String>,
    pub user_id: String,
    pub employer_id: String,
    pub event_time: DateTime<Utc>,
    #[serde(default)]
    pub time_zone: Option<String>,
    pub birth_date: NaiveDate,
}

/// A JSON-lines record or batch item: the event with its `type`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventJson {
    DataLogged(DataLoggedJson),
    BirthReported(BirthReportedJson),
}

/// A field that failed validation, named as in the JSON body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct FieldError {
    pub field: String,
    pub detail: String,
}

impl FieldError {
    fn from_decode(e: DecodeError) -> FieldError {
        match e {
            DecodeError::InvalidField { field, detail } => FieldError {
                field: field.to_string(),
                detail,
            },
            other => FieldError {
                field: "body".into(),
                detail: other.to_string(),
            },
        }
    }
}

/// Parses JSON into `T`, naming the path of the first bad field.
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de)
        .map_err(|e| field_error(e.path().to_string(), e.into_inner().to_string()))
}

/// Names the field of a serde error: a missing field is reported at its
/// parent's path, so the field's own name is appended.
fn field_error(path: String, message: String) -> FieldError {
    let at_root = path == "." || path == "?";
    let field = match missing_field(&message) {
        Some(f) if at_root => f.to_string(),
        Some(f) => format!("{path}.{f}"),
        None if at_root => "body".to_string(),
        None => path,
    };
    FieldError {
        field,
        detail: strip_position(&message),
    }
}

fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

impl DataLoggedJson {
    pub fn into_event(self, new_id: impl FnOnce() -> String) -> Result<InputEvent, FieldError> {
        data_logged_from_parts(
            self.event_id.unwrap_or_else(new_id),
            self.user_id,
            self.employer_id,
            self.event_time.timestamp_millis(),
            self.time_zone.as_deref(),
            self.data_kinds,
        )
        .map(InputEvent::DataLogged)
        .map_err(FieldError::from_decode)
    }
}

impl BirthReportedJson {
    pub fn into_event(self, new_id: impl FnOnce() -> String) -> Result<InputEvent, FieldError> {
        birth_reported_from_parts(
            self.event_id.unwrap_or_else(new_id),
            self.user_id,
            self.employer_id,
            self.event_time.timestamp_millis(),
            self.time_zone.as_deref(),
            self.birth_date,
        )
        .map(InputEvent::BirthReported)
        .map_err(FieldError::from_decode)
    }
}

impl EventJson {
    pub fn event_id(&self) -> Option<&str> {
        match self {
            EventJson::DataLogged(e) => e.event_id.as_deref(),
            EventJson::BirthReported(e) => e.event_id.as_deref(),
        }
    }
    pub fn into_event(self, new_id: impl FnOnce() -> String) -> Result<InputEvent, FieldError> {
        match self {
            EventJson::DataLogged(e) => e.into_event(new_id),
            EventJson::BirthReported(e) => e.into_event(new_id),
        }
    }
}

/// A new event id: UUIDv7 (time-ordered).
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Parses JSON lines (blank lines and `#` comments skipped) into events.
pub fn parse_json_lines(text: &str) -> Result<Vec<InputEvent>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let event = parse::<EventJson>(line.as_bytes())
            .and_then(|e| e.into_event(new_event_id))
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(event);
    }
    Ok(out)
}

/// Like [`parse`], for an already parsed JSON value (batch items).
pub fn parse_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| field_error(e.path().to_string(), e.into_inner().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let e = parse::<DataLoggedJson>(
            br#"{"employer_id":"a","event_time":"2026-03-01T00:00:00Z","data_kinds":["mood"]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "user_id");
        let e = parse::<DataLoggedJson>(br#"{"user_id":5,"employer_id":"a","event_time":"2026-03-01T00:00:00Z","data_kinds":["mood"]}"#).unwrap_err();
        assert_eq!(e.field, "user_id");
        assert!(e.detail.contains("invalid type"), "{e}");
        let e = parse::<DataLoggedJson>(
            br#"{"user_id":"u","employer_id":"a","event_time":"yesterday","data_kinds":["mood"]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "event_time");
        let e = parse::<EventJson>(br#"{"type":"data_logged","user_id":"u","employer_id":"a","event_time":"2026-03-01T00:00:00Z","time_zone":"Mars/Base","data_kinds":["mood"]}"#)
            .unwrap()
            .into_event(new_event_id)
            .unwrap_err();
        assert_eq!(e.field, "time_zone");
        let e = parse::<DataLoggedJson>(br#"{"user_id":"","employer_id":"a","event_time":"2026-03-01T00:00:00Z","data_kinds":["mood"]}"#)
            .unwrap()
            .into_event(new_event_id)
            .unwrap_err();
        assert_eq!(e.field, "user_id");
        let e = parse::<DataLoggedJson>(b"{not json").unwrap_err();
        assert_eq!(e.field, "body");
    }

    #[test]
    fn json_lines_parse_and_name_the_bad_line() {
        let text = r#"
# a comment
{"type":"data_logged","user_id":"u1","employer_id":"acme","event_time":"2026-03-01T12:00:00Z","time_zone":"Europe/Berlin","data_kinds":["mood"]}
{"type":"birth_reported","event_id":"b1","user_id":"u1","employer_id":"acme","event_time":"2026-03-01T12:00:00Z","birth_date":"2026-02-28"}
"#;
        let events = parse_json_lines(text).unwrap();
        assert_eq!(events.len(), 2);
        assert!(!events[0].event_id().is_empty());
        assert_eq!(events[1].event_id(), "b1");
        let bad = r#"{"type":"data_logged","user_id":"u1","employer_id":"acme","event_time":"2026-03-01T12:00:00Z","time_zone":"Nowhere/City","data_kinds":["mood"]}"#;
        let e = parse_json_lines(bad).unwrap_err();
        assert!(
            e.contains("line 1") && e.contains("time_zone") && e.contains("Nowhere/City"),
            "{e}"
        );
    }
}
