//! The domain records that cross Kafka: what upstream producers publish and
//! the awards this engine publishes. Plain values; encoding lives in `codec`.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

/// A user logged health data in the app (one logging action).
#[derive(Debug, Clone, PartialEq)]
pub struct DataLogged {
    /// Producer-assigned id, unique per logging action (UUID recommended).
    pub event_id: String,
    /// The app's user id; also the Kafka record key.
    pub user_id: String,
    /// The employer that sponsors the user's programs.
    pub employer_id: String,
    /// When the user logged, UTC, millisecond precision.
    pub event_time: DateTime<Utc>,
    /// The user's IANA time zone, when the app knows it.
    pub time_zone: Option<Tz>,
    /// Which kinds of data were logged (`mood`, `symptom`, ...); never values.
    pub data_kinds: Vec<String>,
}

/// A user reported a birth.
#[derive(Debug, Clone, PartialEq)]
pub struct BirthReported {
    pub event_id: String,
    pub user_id: String,
    pub employer_id: String,
    pub event_time: DateTime<Utc>,
    pub time_zone: Option<Tz>,
    /// The reported birth date (a calendar date, no zone).
    pub birth_date: NaiveDate,
}

/// Any input event the processor consumes.
#[derive(Debug, Clone, PartialEq)]
pub enum InputEvent {
    DataLogged(DataLogged),
    BirthReported(BirthReported),
}

impl InputEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            InputEvent::DataLogged(_) => EventKind::DataLogged,
            InputEvent::BirthReported(_) => EventKind::BirthReported,
        }
    }
    pub fn event_id(&self) -> &str {
        match self {
            InputEvent::DataLogged(e) => &e.event_id,
            InputEvent::BirthReported(e) => &e.event_id,
        }
    }
    pub fn user_id(&self) -> &str {
        match self {
            InputEvent::DataLogged(e) => &e.user_id,
            InputEvent::BirthReported(e) => &e.user_id,
        }
    }
    pub fn employer_id(&self) -> &str {
        match self {
            InputEvent::DataLogged(e) => &e.employer_id,
            InputEvent::BirthReported(e) => &e.employer_id,
        }
    }
    pub fn event_time(&self) -> DateTime<Utc> {
        match self {
            InputEvent::DataLogged(e) => e.event_time,
            InputEvent::BirthReported(e) => e.event_time,
        }
    }
    pub fn time_zone(&self) -> Option<Tz> {
        match self {
            InputEvent::DataLogged(e) => e.time_zone,
            InputEvent::BirthReported(e) => e.time_zone,
        }
    }
}

/// The kinds of input event; catalog incentives name the kind they count.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DataLogged,
    BirthReported,
}

impl EventKind {
    /// Short tag used in Redis field names (kept short: it is stored per user).
    pub fn tag(self) -> &'static str {
        match self {
            EventKind::DataLogged => "dl",
            EventKind::BirthReported => "br",
        }
    }
}

/// What the employer's program gives for an achieved incentive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reward {
    /// What kind of reward (`physical`, `gift_card`, `points`, ...).
    pub kind: String,
    /// The fulfilment code (SKU, points amount, ...).
    pub code: String,
    /// Text a person can read.
    pub description: String,
}

/// Where the event that completed an award came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceEvent {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: String,
}

/// Where an event being decided was read: a borrowed [`SourceEvent`]
/// without the event id (the event's own). Deciding an event copies
/// nothing from it; only an award takes its own [`SourceEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl Source<'_> {
    /// The award's copy, for the event `event_id`.
    pub fn to_event(self, event_id: &str) -> SourceEvent {
        SourceEvent {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.offset,
            event_id: event_id.to_string(),
        }
    }
}

/// An incentive achieved by a user, decided exactly once.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AwardGranted {
    /// Deterministic: `award_id_for(program, incentive, user, period)`.
    pub award_id: String,
    pub user_id: String,
    pub employer_id: String,
    pub program_id: String,
    pub incentive_id: String,
    /// Version of the program incentive's definition that decided it.
    pub rule_version: String,
    /// The period the award is for (`program` for once-per-program awards).
    pub period: String,
    pub reward: Reward,
    /// Event time of the event that completed the incentive.
    pub achieved_at: DateTime<Utc>,
    /// The user's local calendar day of `achieved_at`.
    pub achieved_local_date: NaiveDate,
    /// The zone used to compute local days.
    pub time_zone: String,
    pub source: SourceEvent,
    /// The local days that counted (sorted, ascending).
    pub evidence_days: Vec<NaiveDate>,
}
