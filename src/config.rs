//! Configuration: the service settings (`incentives.toml`), the incentive
//! catalog (`catalog.toml`) and the employer programs (`programs.toml`), all
//! read from one directory (`--config-dir`, default `config/`).
//!
//! Layering for `incentives.toml`, later wins:
//! 1. the defaults written on each field below (named `default_*` functions);
//! 2. the file itself;
//! 3. environment variables `INCENTIVES__<SECTION>__<KEY>`, for example
//!    `INCENTIVES__KAFKA__BROKERS=kafka:9092` or
//!    `INCENTIVES__PROCESSOR__LATENESS=2d`. Values are read as TOML scalars
//!    when they parse as one (numbers, booleans), else as strings.
//!
//! Everything is validated at load time; every error names the file and key.
//! This module does no I/O beyond reading the three files.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use crate::events::{EventKind, Reward};

/// Prefix of environment overrides; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "INCENTIVES__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source} (is --config-dir / INCENTIVES_CONFIG_DIR right?)")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

fn invalid(file: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.display().to_string(),
        key: key.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------- settings

/// `incentives.toml`: how the service connects and behaves.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub topics: TopicSettings,
    #[serde(default)]
    pub redis: RedisSettings,
    #[serde(default)]
    pub processor: ProcessorSettings,
    #[serde(default)]
    pub state: StateSettings,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub gateway: GatewaySettings,
    #[serde(default)]
    pub api: ApiSettings,
}

/// `[api]`: the read API (`incentives api`). Clients and keys are the
/// gateway's (`gateway.clients`): a client sees only users of its employers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Address of the read API and its `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
}
fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: default_api_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port]`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group of the processor. State in Redis belongs to a group:
    /// two groups over the same topics need two key prefixes.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// librdkafka `session.timeout.ms` (its default is 45s).
    #[serde(default = "default_session_timeout", deserialize_with = "duration")]
    pub session_timeout: Duration,
    /// Raw librdkafka options applied last (escape hatch: security, tuning).
    /// Numbers and booleans are taken as their text (`linger.ms = 20`, or
    /// `INCENTIVES__KAFKA__LIBRDKAFKA_OPTIONS__linger.ms=20`).
    #[serde(default, deserialize_with = "librdkafka_options")]
    pub librdkafka_options: BTreeMap<String, String>,
}

fn default_brokers() -> String {
    "127.0.0.1:19092".into()
}
fn default_group_id() -> String {
    "incentives-processor".into()
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(45)
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: default_brokers(),
            group_id: default_group_id(),
            session_timeout: default_session_timeout(),
            librdkafka_options: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    #[serde(default = "default_data_logged_topic")]
    pub data_logged: String,
    #[serde(default = "default_birth_reported_topic")]
    pub birth_reported: String,
    #[serde(default = "default_awards_topic")]
    pub awards: String,
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter: String,
}
fn default_data_logged_topic() -> String {
    "incentives.data-logged.v1".into()
}
fn default_birth_reported_topic() -> String {
    "incentives.birth-reported.v1".into()
}
fn default_awards_topic() -> String {
    "incentives.awards.v1".into()
}
fn default_dead_letter_topic() -> String {
    "incentives.dead-letter.v1".into()
}
impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            data_logged: default_data_logged_topic(),
            birth_reported: default_birth_reported_topic(),
            awards: default_awards_topic(),
            dead_letter: default_dead_letter_topic(),
        }
    }
}

impl TopicSettings {
    /// The input topics and the event kind each carries.
    pub fn inputs(&self) -> [(&str, EventKind); 2] {
        [
            (&self.data_logged, EventKind::DataLogged),
            (&self.birth_reported, EventKind::BirthReported),
        ]
    }

    /// The input topic of events of `kind`.
    pub fn input(&self, kind: EventKind) -> &str {
        match kind {
            EventKind::DataLogged => &self.data_logged,
            EventKind::BirthReported => &self.birth_reported,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    #[serde(default = "default_redis_url")]
    pub url: String,
    /// Prefix of every key this service writes; one prefix per consumer group.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Read/write timeout of one Redis call; a timeout is retried with backoff.
    #[serde(default = "default_redis_timeout", deserialize_with = "duration")]
    pub command_timeout: Duration,
}
fn default_redis_url() -> String {
    "redis://127.0.0.1:16379/".into()
}
fn default_key_prefix() -> String {
    "incentives".into()
}
fn default_redis_timeout() -> Duration {
    Duration::from_secs(5)
}
impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: default_redis_url(),
            key_prefix: default_key_prefix(),
            command_timeout: default_redis_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSettings {
    /// How late (in event time, behind the user's latest applied event) an
    /// event may arrive and still count. Whole days.
    #[serde(default = "default_lateness", deserialize_with = "duration")]
    pub lateness: Duration,
    /// How far ahead of this machine's clock an event time may be.
    #[serde(default = "default_max_clock_skew", deserialize_with = "duration")]
    pub max_clock_skew: Duration,
    /// Most records taken from one poll into one batch.
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    /// How long a poll waits to fill a batch once it has a first record
    /// (the previous batch's writes are completed and its awards produced
    /// before it waits).
    #[serde(default = "default_batch_linger", deserialize_with = "duration")]
    pub batch_linger: Duration,
    /// Threads that decode the records of a large batch and decide its
    /// partitions; 0 means one per core this process may use.
    #[serde(default)]
    pub threads: usize,
    /// How often stored offsets are committed to Kafka (they are also
    /// committed on revoke and on shutdown).
    #[serde(default = "default_commit_interval", deserialize_with = "duration")]
    pub commit_interval: Duration,
    /// Records larger than this are dead-lettered as `oversize`.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Longest wait for the broker to acknowledge awards and dead letters
    /// before the batch is retried.
    #[serde(default = "default_produce_timeout", deserialize_with = "duration")]
    pub produce_timeout: Duration,
    /// Longest backoff between retries of Redis or broker faults.
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// How often catalog.toml and programs.toml are checked for changes
    /// (they are also re-read on SIGHUP); "0s" turns the check off.
    #[serde(
        default = "default_config_poll_interval",
        deserialize_with = "duration"
    )]
    pub config_poll_interval: Duration,
}
fn default_config_poll_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_lateness() -> Duration {
    Duration::from_secs(3 * 86_400)
}
fn default_max_clock_skew() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_max_batch_records() -> usize {
    10000
}
fn default_batch_linger() -> Duration {
    Duration::from_millis(5)
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_max_record_bytes() -> usize {
    64 * 1024
}
fn default_produce_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}
impl Default for ProcessorSettings {
    fn default() -> Self {
        ProcessorSettings {
            lateness: default_lateness(),
            max_clock_skew: default_max_clock_skew(),
            max_batch_records: default_max_batch_records(),
            batch_linger: default_batch_linger(),
            threads: 0,
            commit_interval: default_commit_interval(),
            max_record_bytes: default_max_record_bytes(),
            produce_timeout: default_produce_timeout(),
            max_backoff: default_max_backoff(),
            config_poll_interval: default_config_poll_interval(),
        }
    }
}

impl ProcessorSettings {
    pub fn lateness_days(&self) -> i32 {
        (self.lateness.as_secs() / 86_400) as i32
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    /// A user state with no award expires this long after its last write, so
    /// idle users vanish. Must cover the longest streak plus the lateness.
    #[serde(default = "default_idle_ttl", deserialize_with = "duration")]
    pub idle_ttl: Duration,
    /// A user state holding an award marker lives this long after its last
    /// write: the marker is what stops a second award.
    #[serde(default = "default_award_ttl", deserialize_with = "duration")]
    pub award_ttl: Duration,
    /// How long after a program's end (in event time) a user's state for it
    /// is kept; then it is pruned on the user's next write.
    #[serde(
        default = "default_ended_program_retention",
        deserialize_with = "duration"
    )]
    pub ended_program_retention: Duration,
    /// How often the processor sweeps the state hashes of the partitions it
    /// owns, deleting expired states (an expired state is ignored by every
    /// reader at once; the sweep only frees its memory).
    #[serde(default = "default_sweep_interval", deserialize_with = "duration")]
    pub sweep_interval: Duration,
}
fn default_sweep_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_ended_program_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_idle_ttl() -> Duration {
    Duration::from_secs(14 * 86_400)
}
fn default_award_ttl() -> Duration {
    Duration::from_secs(400 * 86_400)
}
impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            idle_ttl: default_idle_ttl(),
            award_ttl: default_award_ttl(),
            ended_program_retention: default_ended_program_retention(),
            sweep_interval: default_sweep_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: default_http_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `incentives=debug,rdkafka=warn`); RUST_LOG wins.
    /// Each published award is a debug line of target `incentives::award`.
    #[serde(default = "default_log_filter")]
    pub filter: String,
}
fn default_log_filter() -> String {
    "info".into()
}
impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            filter: default_log_filter(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[gateway]`: the HTTP gateway for the app's backend (`incentives gateway`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Address of the API, `/metrics`, `/healthz`, `/readyz`, `/openapi.json`.
    #[serde(default = "default_gateway_listen")]
    pub listen: SocketAddr,
    /// Larger request bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events in one `POST /v1/events/batch`.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// Longest wait for the broker's acknowledgement before answering 503.
    #[serde(default = "default_publish_timeout", deserialize_with = "duration")]
    pub publish_timeout: Duration,
    /// The `Retry-After` of 503 answers.
    #[serde(default = "default_retry_after", deserialize_with = "duration")]
    pub retry_after: Duration,
    /// How long an event id / Idempotency-Key is remembered: a retry within
    /// it gets the original answer and publishes nothing.
    #[serde(default = "default_idempotency_window", deserialize_with = "duration")]
    pub idempotency_window: Duration,
    /// Clients and the employers each may publish for.
    #[serde(default)]
    pub clients: Vec<ClientSettings>,
}
fn default_gateway_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body_bytes() -> usize {
    256 * 1024
}
fn default_max_batch_events() -> usize {
    500
}
fn default_publish_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retry_after() -> Duration {
    Duration::from_secs(5)
}
fn default_idempotency_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            listen: default_gateway_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_batch_events: default_max_batch_events(),
            publish_timeout: default_publish_timeout(),
            retry_after: default_retry_after(),
            idempotency_window: default_idempotency_window(),
            clients: Vec::new(),
        }
    }
}

/// A client of the gateway (`[[gateway.clients]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// Names the client in logs and metrics.
    pub id: String,
    /// SHA-256 of the API key, 64 hex digits (`incentives config hash-key`);
    /// the key itself is never stored.
    pub api_key_sha256: String,
    /// Employers this client may publish events for.
    pub employers: Vec<String>,
}

impl ClientSettings {
    /// The key hash as bytes (validated at load time).
    pub fn key_hash(&self) -> Option<[u8; 32]> {
        let hex = self.api_key_sha256.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(out)
    }
}

/// The SHA-256 of an API key, as configured in `api_key_sha256`.
pub fn hash_api_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------- catalog

/// `catalog.toml`: the menu of incentives employers pick from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    incentives: BTreeMap<String, IncentiveDef>,
}

/// One catalog incentive.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IncentiveDef {
    /// Text a person can read.
    pub description: String,
    /// Which input event counts.
    pub event: EventKind,
    /// How qualifying events become an achievement.
    pub rule: RuleDef,
    /// Which events qualify (absent: all events of the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleDef {
    /// `days` consecutive local calendar days with at least one event.
    /// Activity before `rollover_hour` (local) counts for the previous day;
    /// up to `grace_days` missed days are forgiven within one streak (each
    /// covers one missed day and does not add to the count).
    Streak {
        days: u32,
        #[serde(default)]
        rollover_hour: u32,
        #[serde(default)]
        grace_days: u32,
    },
    /// At least `events` qualifying events on at least `distinct_days`
    /// different local days within `window_days` consecutive days.
    Count {
        events: u32,
        distinct_days: u32,
        window_days: u32,
        #[serde(default)]
        rollover_hour: u32,
    },
    /// One qualifying event. With `birth_date_within_program`, a birth
    /// report qualifies only when its birth date lies inside the program's dates.
    Once {
        #[serde(default)]
        birth_date_within_program: bool,
    },
}

impl RuleDef {
    pub fn kind(&self) -> &'static str {
        match self {
            RuleDef::Streak { .. } => "streak",
            RuleDef::Count { .. } => "count",
            RuleDef::Once { .. } => "once",
        }
    }

    pub fn rollover_hour(&self) -> u32 {
        match self {
            RuleDef::Streak { rollover_hour, .. } | RuleDef::Count { rollover_hour, .. } => {
                *rollover_hour
            }
            RuleDef::Once { .. } => 0,
        }
    }

    /// How many days of history the rule can use, lateness aside.
    pub fn window_days(&self) -> u32 {
        match self {
            RuleDef::Streak {
                days, grace_days, ..
            } => days + grace_days,
            RuleDef::Count { window_days, .. } => *window_days,
            RuleDef::Once { .. } => 1,
        }
    }
}

/// Which events qualify.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// A data-logged event qualifies when it logged at least one of these kinds.
    pub data_kinds: Vec<String>,
}

/// How often a program incentive can be earned; the period is part of the
/// award id, so each period is still decided exactly once.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Repeat {
    /// Once per program (period `program`).
    #[default]
    Once,
    /// At most once per ISO calendar week of the program's zone (`2026-W10`).
    Weekly,
    /// At most once per calendar month of the program's zone (`2026-03`).
    Monthly,
    /// Every completion (period: the first counted day, `from-2026-03-01`).
    EveryCompletion,
}

// ---------------------------------------------------------------- programs

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgramsFile {
    #[serde(default)]
    programs: Vec<ProgramDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgramDef {
    id: String,
    employer_id: String,
    /// The program's IANA zone: its dates, and users without a zone.
    time_zone: String,
    #[serde(deserialize_with = "date")]
    starts_on: NaiveDate,
    /// Inclusive; absent means open-ended.
    #[serde(default, deserialize_with = "opt_date")]
    ends_on: Option<NaiveDate>,
    #[serde(default)]
    incentives: Vec<ProgramIncentiveDef>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ProgramIncentiveDef {
    incentive: String,
    reward: Reward,
    #[serde(default)]
    repeat: Repeat,
    /// Overrides the catalog streak's grace days for this program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grace_days: Option<u32>,
    /// Overrides the catalog rule's rollover hour for this program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollover_hour: Option<u32>,
}

// ---------------------------------------------------------------- resolved

/// A catalog incentive attached to a program, ready for the hot path.
#[derive(Debug, Clone)]
pub struct ProgramIncentive {
    pub program_id: String,
    pub employer_id: String,
    pub incentive_id: String,
    /// `program/incentive`: names this rule's fields in a user's state.
    pub rule_key: String,
    pub event: EventKind,
    /// The catalog rule with this program's overrides applied.
    pub rule: RuleDef,
    pub filter: Option<Filter>,
    pub repeat: Repeat,
    pub reward: Reward,
    /// Derived from the definition; carried on awards, not part of their id.
    pub rule_version: String,
    pub program_zone: Tz,
    pub starts_on: NaiveDate,
    pub ends_on: Option<NaiveDate>,
}

impl ProgramIncentive {
    /// Whether the program runs on the program-local date of `at`.
    pub fn is_active_at(&self, at: DateTime<Utc>) -> bool {
        let day = crate::days::local_date(at, self.program_zone);
        day >= self.starts_on && self.ends_on.is_none_or(|end| day <= end)
    }
}

/// Programs indexed for lookup by employer and event kind.
#[derive(Debug, Clone, Default)]
pub struct Programs {
    by_employer: HashMap<(String, EventKind), Vec<ProgramIncentive>>,
    /// The short codes that name rules in stored user states.
    pub codes: crate::engine::RuleCodes,
    pub catalog: BTreeMap<String, IncentiveDef>,
    /// Longest rule window in days (for the idle TTL check).
    pub longest_window_days: u32,
}

impl Programs {
    /// The program incentives of `employer` that count events of `kind`
    /// (active or not: callers check the event's date).
    pub fn for_employer(&self, employer: &str, kind: EventKind) -> &[ProgramIncentive] {
        // Avoid allocating a key on the hot path for the common miss.
        self.by_employer
            .iter()
            .find(|((e, k), _)| *k == kind && e == employer)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    pub fn all(&self) -> impl Iterator<Item = &ProgramIncentive> {
        self.by_employer.values().flatten()
    }
}

/// Everything the service needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub settings: Settings,
    pub programs: Programs,
}

pub const SETTINGS_FILE: &str = "incentives.toml";
pub const CATALOG_FILE: &str = "catalog.toml";
pub const PROGRAMS_FILE: &str = "programs.toml";

impl Config {
    /// Reads and validates the three files of `dir`, applying environment
    /// overrides from the process environment.
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_with_env(dir, &env)
    }

    pub fn load_with_env(dir: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let settings_path = dir.join(SETTINGS_FILE);
        let settings_text = read(&settings_path)?;
        let settings = parse_settings(&settings_path, &settings_text, env)?;
        let catalog_path = dir.join(CATALOG_FILE);
        let catalog_text = read(&catalog_path)?;
        let programs_path = dir.join(PROGRAMS_FILE);
        let programs_text = read(&programs_path)?;
        let programs =
            parse_programs(&catalog_path, &catalog_text, &programs_path, &programs_text)?;
        validate_cross(&settings_path, &settings, &programs)?;
        Ok(Config {
            dir: dir.to_path_buf(),
            settings,
            programs,
        })
    }
}

impl Config {
    /// The files whose changes are applied without a restart.
    pub fn program_files(&self) -> [PathBuf; 2] {
        [self.dir.join(CATALOG_FILE), self.dir.join(PROGRAMS_FILE)]
    }

    /// Re-reads the catalog and the programs, validated against the current
    /// settings. Settings themselves need a restart.
    pub fn reload_programs(&self) -> Result<Programs, ConfigError> {
        let [catalog_path, programs_path] = self.program_files();
        let programs = parse_programs(
            &catalog_path,
            &read(&catalog_path)?,
            &programs_path,
            &read(&programs_path)?,
        )?;
        validate_cross(&self.dir.join(SETTINGS_FILE), &self.settings, &programs)?;
        Ok(programs)
    }

    /// The same configuration with other programs.
    pub fn with_programs(&self, programs: Programs) -> Config {
        Config {
            dir: self.dir.clone(),
            settings: self.settings.clone(),
            programs,
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    })
}

/// Parses `incentives.toml` text with the given `INCENTIVES__*` overrides.
pub fn parse_settings(
    path: &Path,
    text: &str,
    env: &[(String, String)],
) -> Result<Settings, ConfigError> {
    let mut value: toml::Table = toml::from_str(text).map_err(|e| toml_error(path, &e))?;
    let mut overridden = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(invalid(
                path,
                name.clone(),
                "malformed override: use INCENTIVES__<SECTION>__<KEY>",
            ));
        }
        set_path(&mut value, &segments, scalar(raw));
        overridden.push((segments.join("."), name.clone()));
    }
    let de = toml::Value::Table(value);
    serde_path_to_error::deserialize::<_, Settings>(de).map_err(|e| {
        let key = e.path().to_string();
        let source = overridden
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, env)| format!(" (set by environment variable {env})"))
            .unwrap_or_default();
        invalid(path, key, format!("{}{source}", e.inner()))
    })
}

fn scalar(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
            ) => v,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = match path.split_last() {
        Some(x) => x,
        None => return,
    };
    let mut current = table;
    for segment in parents {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = match entry.as_table_mut() {
            Some(t) => t,
            None => return,
        };
    }
    current.insert(last.clone(), value);
}

fn toml_error(path: &Path, e: &toml::de::Error) -> ConfigError {
    let location = e
        .span()
        .map(|span| format!("byte {}", span.start))
        .unwrap_or_else(|| "syntax".into());
    invalid(path, location, e.message().to_string())
}

fn deserialize_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let value: toml::Table = toml::from_str(text).map_err(|e| toml_error(path, &e))?;
    serde_path_to_error::deserialize::<_, T>(toml::Value::Table(value))
        .map_err(|e| invalid(path, e.path().to_string(), e.inner().to_string()))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
}

/// Parses and cross-checks the catalog and the programs.
pub fn parse_programs(
    catalog_path: &Path,
    catalog_text: &str,
    programs_path: &Path,
    programs_text: &str,
) -> Result<Programs, ConfigError> {
    let catalog: CatalogFile = deserialize_file(catalog_path, catalog_text)?;
    for (id, def) in &catalog.incentives {
        if !valid_id(id) {
            return Err(invalid(
                catalog_path,
                format!("incentives.{id}"),
                "ids use a-z, 0-9, '-', '_', '.' (at most 64)",
            ));
        }
        validate_rule(
            catalog_path,
            &format!("incentives.{id}.rule"),
            &def.rule,
            def.event,
        )?;
        if let Some(filter) = &def.filter {
            let at = format!("incentives.{id}.filter.data_kinds");
            if def.event != EventKind::DataLogged {
                return Err(invalid(
                    catalog_path,
                    at,
                    "filters on data kinds apply to data_logged incentives only",
                ));
            }
            if filter.data_kinds.is_empty() {
                return Err(invalid(catalog_path, at, "must name at least one kind"));
            }
        }
    }
    let file: ProgramsFile = deserialize_file(programs_path, programs_text)?;
    let mut programs = Programs {
        catalog: catalog.incentives.clone(),
        ..Default::default()
    };
    let mut seen = std::collections::HashSet::new();
    for (i, p) in file.programs.iter().enumerate() {
        let at = |key: &str| format!("programs[{i}].{key}");
        if !valid_id(&p.id) {
            return Err(invalid(
                programs_path,
                at("id"),
                format!("{:?}: ids use a-z, 0-9, '-', '_', '.' (at most 64)", p.id),
            ));
        }
        if !seen.insert(p.id.clone()) {
            return Err(invalid(
                programs_path,
                at("id"),
                format!("duplicate program id {:?}", p.id),
            ));
        }
        if p.employer_id.is_empty() {
            return Err(invalid(
                programs_path,
                at("employer_id"),
                "must not be empty",
            ));
        }
        let zone = Tz::from_str(&p.time_zone).map_err(|_| {
            invalid(
                programs_path,
                at("time_zone"),
                format!("{:?} is not an IANA time zone", p.time_zone),
            )
        })?;
        if let Some(end) = p.ends_on {
            if end < p.starts_on {
                return Err(invalid(
                    programs_path,
                    at("ends_on"),
                    format!("{end} is before starts_on {}", p.starts_on),
                ));
            }
        }
        let mut attached = std::collections::HashSet::new();
        for (j, pi) in p.incentives.iter().enumerate() {
            let key = format!("programs[{i}].incentives[{j}].incentive");
            let def = catalog.incentives.get(&pi.incentive).ok_or_else(|| {
                let known: Vec<&str> = catalog.incentives.keys().map(String::as_str).collect();
                invalid(
                    programs_path,
                    key.clone(),
                    format!(
                        "{:?} is not in the catalog (known: {})",
                        pi.incentive,
                        known.join(", ")
                    ),
                )
            })?;
            if !attached.insert(pi.incentive.clone()) {
                return Err(invalid(
                    programs_path,
                    key,
                    format!("{:?} is attached twice", pi.incentive),
                ));
            }
            if pi.reward.code.is_empty() || pi.reward.kind.is_empty() {
                return Err(invalid(
                    programs_path,
                    format!("programs[{i}].incentives[{j}].reward"),
                    "kind and code must not be empty",
                ));
            }
            let mut rule = def.rule.clone();
            match &mut rule {
                RuleDef::Streak {
                    grace_days,
                    rollover_hour,
                    ..
                } => {
                    *grace_days = pi.grace_days.unwrap_or(*grace_days);
                    *rollover_hour = pi.rollover_hour.unwrap_or(*rollover_hour);
                }
                RuleDef::Count { rollover_hour, .. } => {
                    *rollover_hour = pi.rollover_hour.unwrap_or(*rollover_hour)
                }
                RuleDef::Once { .. } if pi.grace_days.is_some() || pi.rollover_hour.is_some() => {
                    return Err(invalid(
                        programs_path,
                        format!("programs[{i}].incentives[{j}]"),
                        "grace_days and rollover_hour apply to streak and count rules only",
                    ));
                }
                RuleDef::Once { .. } => {}
            }
            if matches!(rule, RuleDef::Streak { .. }) || pi.rollover_hour.is_some() {
                validate_rule(
                    programs_path,
                    &format!("programs[{i}].incentives[{j}]"),
                    &rule,
                    def.event,
                )?;
            }
            programs.longest_window_days = programs.longest_window_days.max(rule.window_days());
            let resolved = ProgramIncentive {
                program_id: p.id.clone(),
                employer_id: p.employer_id.clone(),
                incentive_id: pi.incentive.clone(),
                rule_key: format!("{}/{}", p.id, pi.incentive),
                event: def.event,
                rule,
                filter: def.filter.clone(),
                repeat: pi.repeat,
                reward: pi.reward.clone(),
                rule_version: rule_version(def, pi, &p.time_zone, p.starts_on, p.ends_on),
                program_zone: zone,
                starts_on: p.starts_on,
                ends_on: p.ends_on,
            };
            programs
                .by_employer
                .entry((p.employer_id.clone(), def.event))
                .or_default()
                .push(resolved);
        }
    }
    let keys: Vec<String> = programs.all().map(|p| p.rule_key.clone()).collect();
    programs.codes = crate::engine::RuleCodes::new(keys.iter().map(String::as_str)).map_err(
        |(a, b, code)| {
            invalid(
                programs_path,
                "programs",
                format!(
                    "the rules {a:?} and {b:?} share the stored code {code:?} (a hash of the rule key); rename one program or incentive"
                ),
            )
        },
    )?;
    Ok(programs)
}

fn validate_rule(
    file: &Path,
    key: &str,
    rule: &RuleDef,
    event: EventKind,
) -> Result<(), ConfigError> {
    let check = |ok: bool, field: &str, message: &str| {
        if ok {
            Ok(())
        } else {
            Err(invalid(file, format!("{key}.{field}"), message))
        }
    };
    check(
        rule.rollover_hour() <= 12,
        "rollover_hour",
        "must be between 0 and 12 (local hour before which activity counts for the previous day)",
    )?;
    match *rule {
        RuleDef::Streak {
            days, grace_days, ..
        } => {
            check(
                (1..=366).contains(&days),
                "days",
                "must be between 1 and 366",
            )?;
            check(
                grace_days < days.max(1),
                "grace_days",
                "must be fewer than days",
            )
        }
        RuleDef::Count {
            events,
            distinct_days,
            window_days,
            ..
        } => {
            check(
                (1..=366).contains(&window_days),
                "window_days",
                "must be between 1 and 366",
            )?;
            check(events >= 1, "events", "must be at least 1")?;
            check(
                (1..=window_days).contains(&distinct_days),
                "distinct_days",
                "must be between 1 and window_days",
            )?;
            check(
                distinct_days <= events,
                "distinct_days",
                "must not exceed events",
            )
        }
        RuleDef::Once {
            birth_date_within_program,
        } => check(
            !birth_date_within_program || event == EventKind::BirthReported,
            "birth_date_within_program",
            "applies to birth_reported incentives only",
        ),
    }
}

/// A short hash of everything that decides or describes an award.
fn rule_version(
    def: &IncentiveDef,
    pi: &ProgramIncentiveDef,
    zone: &str,
    starts: NaiveDate,
    ends: Option<NaiveDate>,
) -> String {
    let canonical = serde_json::json!({
        "incentive": def, "program_incentive": pi, "zone": zone,
        "starts_on": starts.to_string(), "ends_on": ends.map(|d| d.to_string()),
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("r-{hex}")
}

fn validate_cross(path: &Path, s: &Settings, programs: &Programs) -> Result<(), ConfigError> {
    let day = 86_400;
    if s.processor.lateness.as_secs() % day != 0 {
        return Err(invalid(
            path,
            "processor.lateness",
            "must be whole days (e.g. \"3d\")",
        ));
    }
    let needed =
        u64::from(programs.longest_window_days) * day + s.processor.lateness.as_secs() + day;
    if s.state.idle_ttl.as_secs() < needed {
        return Err(invalid(
            path,
            "state.idle_ttl",
            format!(
                "must be at least the longest rule window plus lateness plus one day ({needed}s)"
            ),
        ));
    }
    if s.state.sweep_interval.is_zero() {
        return Err(invalid(
            path,
            "state.sweep_interval",
            "must be above zero (e.g. \"1h\")",
        ));
    }
    if s.state.award_ttl < s.state.idle_ttl {
        return Err(invalid(
            path,
            "state.award_ttl",
            "must not be shorter than state.idle_ttl",
        ));
    }
    if s.processor.max_batch_records == 0 {
        return Err(invalid(
            path,
            "processor.max_batch_records",
            "must be at least 1",
        ));
    }
    if s.redis.key_prefix.is_empty() || s.redis.key_prefix.contains(['{', '}']) {
        return Err(invalid(
            path,
            "redis.key_prefix",
            "must be non-empty and contain no braces",
        ));
    }
    let t = &s.topics;
    let names = [&t.data_logged, &t.birth_reported, &t.awards, &t.dead_letter];
    for (i, a) in names.iter().enumerate() {
        if a.is_empty() {
            return Err(invalid(path, "topics", "topic names must not be empty"));
        }
        if names[..i].contains(a) {
            return Err(invalid(
                path,
                "topics",
                format!("topic {a:?} is named twice"),
            ));
        }
    }
    let mut client_ids = std::collections::HashSet::new();
    for (i, c) in s.gateway.clients.iter().enumerate() {
        let at = |k: &str| format!("gateway.clients[{i}].{k}");
        if c.id.is_empty() || !client_ids.insert(c.id.as_str()) {
            return Err(invalid(
                path,
                at("id"),
                format!("{:?} is empty or used twice", c.id),
            ));
        }
        if c.key_hash().is_none() {
            return Err(invalid(
                path,
                at("api_key_sha256"),
                "must be 64 hex digits (incentives config hash-key KEY prints it)",
            ));
        }
        if c.employers.is_empty() || c.employers.iter().any(String::is_empty) {
            return Err(invalid(
                path,
                at("employers"),
                "must name at least one employer",
            ));
        }
    }
    if s.gateway.max_batch_events == 0 || s.gateway.max_body_bytes == 0 {
        return Err(invalid(
            path,
            "gateway",
            "max_batch_events and max_body_bytes must be at least 1",
        ));
    }
    if s.kafka.session_timeout < Duration::from_secs(6) {
        return Err(invalid(
            path,
            "kafka.session_timeout",
            "must be at least 6s (the broker's group.min.session.timeout.ms)",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- serde helpers

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like \"10s\" or \"3d\": {e}"
        ))
    })
}

/// librdkafka takes every value as text; TOML (and an environment override,
/// read as a TOML scalar) may give a number or a boolean.
fn librdkafka_options<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    BTreeMap::<String, toml::Value>::deserialize(d)?
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "librdkafka option {key:?}: expected a string, number or boolean, found {other}"
                    )))
                }
            };
            Ok((key, text))
        })
        .collect()
}

fn parse_date_value<E: serde::de::Error>(v: toml::Value) -> Result<NaiveDate, E> {
    let text = match v {
        toml::Value::String(s) => s,
        toml::Value::Datetime(d) => d.to_string(),
        other => {
            return Err(E::custom(format!(
                "expected a date like 2026-01-31, found {other}"
            )))
        }
    };
    NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .map_err(|_| E::custom(format!("{text:?} is not a date like 2026-01-31")))
}

fn date<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
    parse_date_value(toml::Value::deserialize(d)?)
}

fn opt_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    parse_date_value(toml::Value::deserialize(d)?).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"
[incentives.data-logged-5-consecutive-days]
description = "Logged data five days in a row"
event = "data_logged"
rule = { kind = "streak", days = 5 }

[incentives.birth-reported]
description = "Reported a birth"
event = "birth_reported"
rule = { kind = "once" }
"#;

    #[test]
    fn rule_kinds_and_overrides_are_validated() {
        let catalog = format!(
            "{CATALOG}\n[incentives.ten-in-14]\ndescription = \"x\"\nevent = \"data_logged\"\nrule = {{ kind = \"count\", events = 10, distinct_days = 5, window_days = 14 }}\nfilter = {{ data_kinds = [\"mood\"] }}\n"
        );
        let programs_text = PROGRAMS.replace(
            "reward = { kind = \"physical\", code = \"PILLOW\", description = \"A pillow\" } },",
            "reward = { kind = \"physical\", code = \"PILLOW\", description = \"A pillow\" }, repeat = \"weekly\", grace_days = 1, rollover_hour = 3 },\n  { incentive = \"ten-in-14\", reward = { kind = \"points\", code = \"10\", description = \"p\" }, repeat = \"every_completion\" },",
        );
        let p = programs(&catalog, &programs_text).unwrap();
        let rules = p.for_employer("acme", EventKind::DataLogged);
        assert_eq!(
            rules[0].rule,
            RuleDef::Streak {
                days: 5,
                rollover_hour: 3,
                grace_days: 1
            }
        );
        assert_eq!(rules[0].repeat, Repeat::Weekly);
        assert_eq!(
            rules[1].filter.as_ref().map(|f| f.data_kinds.clone()),
            Some(vec!["mood".to_string()])
        );
        assert_eq!(p.longest_window_days, 14);

        let bad = catalog.replace("distinct_days = 5", "distinct_days = 15");
        let e = programs(&bad, PROGRAMS).unwrap_err().to_string();
        assert!(e.contains("incentives.ten-in-14.rule.distinct_days"), "{e}");
        let bad = programs_text.replace("grace_days = 1", "grace_days = 5");
        let e = programs(&catalog, &bad).unwrap_err().to_string();
        assert!(e.contains("programs[0].incentives[0].grace_days"), "{e}");
        let bad = programs_text.replace("repeat = \"weekly\"", "repeat = \"daily\"");
        let e = programs(&catalog, &bad).unwrap_err().to_string();
        assert!(
            e.contains("programs[0].incentives[0].repeat") && e.contains("daily"),
            "{e}"
        );
        // A change of definition changes the version.
        let p2 = programs(
            &catalog,
            &programs_text.replace("grace_days = 1", "grace_days = 2"),
        )
        .unwrap();
        assert_ne!(
            p2.for_employer("acme", EventKind::DataLogged)[0].rule_version,
            rules[0].rule_version
        );
    }

    const PROGRAMS: &str = r#"
[[programs]]
id = "acme-2026"
employer_id = "acme"
time_zone = "America/New_York"
starts_on = 2026-01-01
ends_on = "2026-12-31"
incentives = [
  { incentive = "data-logged-5-consecutive-days", reward = { kind = "physical", code = "PILLOW", description = "A pillow" } },
]
"#;

    fn programs(catalog: &str, programs: &str) -> Result<Programs, ConfigError> {
        parse_programs(
            Path::new("config/catalog.toml"),
            catalog,
            Path::new("config/programs.toml"),
            programs,
        )
    }

    #[test]
    fn parses_catalog_and_programs() {
        let p = programs(CATALOG, PROGRAMS).unwrap();
        let found = p.for_employer("acme", EventKind::DataLogged);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].rule,
            RuleDef::Streak {
                days: 5,
                rollover_hour: 0,
                grace_days: 0
            }
        );
        assert_eq!(found[0].repeat, Repeat::Once);
        assert_eq!(
            found[0].rule_key,
            "acme-2026/data-logged-5-consecutive-days"
        );
        assert!(found[0].rule_version.starts_with("r-"));
        assert!(p.for_employer("acme", EventKind::BirthReported).is_empty());
        assert!(p.for_employer("other", EventKind::DataLogged).is_empty());
    }

    #[test]
    fn errors_name_file_and_key() {
        let bad = PROGRAMS.replace("America/New_York", "Mars/Olympus");
        let e = programs(CATALOG, &bad).unwrap_err().to_string();
        assert!(
            e.contains("config/programs.toml")
                && e.contains("programs[0].time_zone")
                && e.contains("Mars/Olympus"),
            "{e}"
        );

        let bad = PROGRAMS.replace(
            "incentive = \"data-logged",
            "incentive = \"nope-data-logged",
        );
        let e = programs(CATALOG, &bad).unwrap_err().to_string();
        assert!(
            e.contains("programs[0].incentives[0].incentive") && e.contains("not in the catalog"),
            "{e}"
        );

        let bad = CATALOG.replace("days = 5", "days = \"five\"");
        let e = programs(&bad, PROGRAMS).unwrap_err().to_string();
        assert!(
            e.contains("config/catalog.toml")
                && e.contains("incentives.data-logged-5-consecutive-days.rule"),
            "{e}"
        );

        let e = parse_settings(
            Path::new("x/incentives.toml"),
            "[kafka]\nbrokerz = \"a\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("x/incentives.toml") && e.contains("brokerz"),
            "{e}"
        );
    }

    #[test]
    fn librdkafka_options_take_numbers_and_booleans_as_text() {
        let env = vec![(
            "INCENTIVES__KAFKA__LIBRDKAFKA_OPTIONS__linger.ms".to_string(),
            "10".to_string(),
        )];
        let s = parse_settings(
            Path::new("incentives.toml"),
            "[kafka.librdkafka_options]\n\"enable.idempotence\" = true\n\"compression.type\" = \"zstd\"\n",
            &env,
        )
        .unwrap();
        let o = &s.kafka.librdkafka_options;
        assert_eq!(o["linger.ms"], "10");
        assert_eq!(o["enable.idempotence"], "true");
        assert_eq!(o["compression.type"], "zstd");
        let e = parse_settings(
            Path::new("incentives.toml"),
            "[kafka.librdkafka_options]\n\"linger.ms\" = [1]\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("linger.ms"), "{e}");
    }

    #[test]
    fn env_overrides_win_and_are_named_in_errors() {
        let env = vec![
            (
                "INCENTIVES__KAFKA__BROKERS".to_string(),
                "kafka:9092".to_string(),
            ),
            (
                "INCENTIVES__PROCESSOR__MAX_BATCH_RECORDS".to_string(),
                "77".to_string(),
            ),
        ];
        let s = parse_settings(
            Path::new("incentives.toml"),
            "[kafka]\nbrokers = \"file:1\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(s.kafka.brokers, "kafka:9092");
        assert_eq!(s.processor.max_batch_records, 77);
        let env = vec![(
            "INCENTIVES__PROCESSOR__LATENESS".to_string(),
            "soon".to_string(),
        )];
        let e = parse_settings(Path::new("incentives.toml"), "", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("processor.lateness") && e.contains("INCENTIVES__PROCESSOR__LATENESS"),
            "{e}"
        );
    }

    #[test]
    fn active_dates_are_in_the_program_zone() {
        let p = programs(CATALOG, PROGRAMS).unwrap();
        let pi = &p.for_employer("acme", EventKind::DataLogged)[0];
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // 2026-01-01T03:00Z is still Dec 31 in New York: not active yet.
        assert!(!pi.is_active_at(t("2026-01-01T03:00:00Z")));
        assert!(pi.is_active_at(t("2026-01-01T06:00:00Z")));
        assert!(pi.is_active_at(t("2027-01-01T04:00:00Z")));
        assert!(!pi.is_active_at(t("2027-01-01T06:00:00Z")));
    }

    #[test]
    fn gateway_clients_are_checked() {
        let ok = format!(
            "[[gateway.clients]]\nid = \"app\"\napi_key_sha256 = \"{}\"\nemployers = [\"acme\"]\n",
            hash_api_key("secret")
        );
        let s = parse_settings(Path::new("i.toml"), &ok, &[]).unwrap();
        assert_eq!(s.gateway.clients[0].key_hash().map(|h| h.len()), Some(32));
        let p = parse_programs(Path::new("c"), CATALOG, Path::new("p"), PROGRAMS).unwrap();
        assert!(validate_cross(Path::new("i.toml"), &s, &p).is_ok());
        let bad = ok.replace(&hash_api_key("secret"), "abc");
        let s = parse_settings(Path::new("i.toml"), &bad, &[]).unwrap();
        let e = validate_cross(Path::new("i.toml"), &s, &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway.clients[0].api_key_sha256"), "{e}");
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let c = Config::load_with_env(&dir, &[]).unwrap();
        assert!(c.programs.all().count() >= 2);
    }
}
