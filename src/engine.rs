//! The decision logic, pure: given a user's state and an event, which
//! program incentives count it, what progress it adds, and which awards it
//! completes; and, for the read API, how far a user is. No I/O here: `state`
//! loads and stores [`UserState`], `processor` drives it.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use crate::config::{ProgramIncentive, Programs, Repeat, RuleDef};
use crate::days::{date_from_day_number, day_number, local_date};
use crate::dead_letter::DeadLetterReason;
use crate::events::{AwardGranted, EventKind, InputEvent, Source};

/// The period of an award that can be earned once per program.
pub const PERIOD_PROGRAM: &str = "program";

/// The deterministic id of the award for `user` achieving `incentive` in
/// `program` for `period`. The rule version is deliberately not part of it:
/// changing a rule must never award again.
pub fn award_id_for(program_id: &str, incentive_id: &str, user_id: &str, period: &str) -> String {
    let namespace = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:incentives:award");
    let name = [program_id, incentive_id, user_id, period].join("\u{1f}");
    Uuid::new_v5(&namespace, name.as_bytes()).to_string()
}

/// Short stable codes for rule keys (`program/incentive`), so that stored
/// states do not repeat long configuration names: 7 base-36 characters of
/// the rule key's FNV-1a hash. Codes never contain `/` and rule keys always
/// do, so a stored name is read unambiguously: a name with `/` is a rule key
/// (kept as is), a known code maps back to its rule key, and an unknown code
/// (a rule since removed from the programs) is kept as the code.
#[derive(Debug, Clone, Default)]
pub struct RuleCodes {
    to_code: foldhash::HashMap<String, String>,
    to_key: foldhash::HashMap<String, String>,
}

impl RuleCodes {
    /// Codes for `rule_keys`; two keys with one code are an error
    /// `(key, other key, code)`.
    pub fn new<'a>(
        rule_keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<RuleCodes, (String, String, String)> {
        let mut codes = RuleCodes::default();
        for key in rule_keys {
            let code = rule_code(key);
            if let Some(other) = codes.to_key.get(&code) {
                if other != key {
                    return Err((other.clone(), key.to_string(), code));
                }
                continue;
            }
            codes.to_key.insert(code.clone(), key.to_string());
            codes.to_code.insert(key.to_string(), code);
        }
        Ok(codes)
    }

    /// The stored name of a rule key (itself when it has no code).
    pub fn stored<'a>(&'a self, rule_key: &'a str) -> &'a str {
        self.to_code.get(rule_key).map_or(rule_key, String::as_str)
    }

    /// The rule key of a stored name.
    pub fn rule_key<'a>(&'a self, stored: &'a str) -> &'a str {
        if has_byte(stored, b'/') {
            return stored;
        }
        self.to_key.get(stored).map_or(stored, String::as_str)
    }
}

/// The stored code of a rule key (see [`RuleCodes`]).
pub fn rule_code(rule_key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule_key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut code = String::with_capacity(7);
    for _ in 0..7 {
        let d = (h % 36) as u32;
        h /= 36;
        code.push(char::from_digit(d, 36).unwrap_or('0'));
    }
    code
}

/// The limits that decide whether an event may count at all.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Lateness window, behind the user's watermark, in milliseconds.
    pub lateness_ms: i64,
    /// The same window in whole days (for pruning day lists).
    pub lateness_days: i32,
    /// How far ahead of the wall clock an event may be, in milliseconds.
    pub max_clock_skew_ms: i64,
    /// Days after a program's end (in event time) its state is kept.
    pub ended_program_retention_days: i32,
}

impl Limits {
    pub fn from_settings(
        processor: &crate::config::ProcessorSettings,
        state: &crate::config::StateSettings,
    ) -> Limits {
        Limits {
            lateness_ms: processor.lateness.as_millis() as i64,
            lateness_days: processor.lateness_days(),
            max_clock_skew_ms: processor.max_clock_skew.as_millis() as i64,
            ended_program_retention_days: (state.ended_program_retention.as_secs() / 86_400) as i32,
        }
    }
}

/// Why an event was not applied (it is dead-lettered with this reason).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: DeadLetterReason,
    pub detail: String,
}

/// What is kept of an award decided for a user (the read API lists these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwardMarker {
    pub award_id: String,
    pub achieved_local_date: Option<NaiveDate>,
    pub rule_version: String,
}

/// A user's derived state for one event kind, stored as one Redis string
/// ([`UserState::encode`]).
///
/// Fields: `wm:<kind>` watermark (event time ms of the latest applied event),
/// `emp` the employer, `tz` the user's last known zone, `s:<rule_key>`
/// progress (`day` or `day:count` items, comma-separated, ascending day
/// numbers), `x:<rule_key>` the last day spent by a decided completion,
/// `a:<rule_key>@<period>` award marker (`award id|local date|rule
/// version`). Never raw health data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserState {
    pub watermarks: BTreeMap<EventKind, i64>,
    pub employer: Option<String>,
    pub zone: Option<String>,
    /// Per rule: day number -> qualifying events that day.
    pub progress: BTreeMap<String, BTreeMap<i32, u32>>,
    /// `rule_key@period` -> the award decided.
    pub awards: BTreeMap<String, AwardMarker>,
    /// Per rule: the last day spent by a decided completion; days up to it
    /// never count again (a re-sent or second event of a spent day).
    pub spent_through: BTreeMap<String, i32>,
}

impl UserState {
    /// Rebuilds the state from its fields. Unknown or malformed fields are
    /// dropped (and counted by the caller through the returned number).
    pub fn from_fields<F: AsRef<str>, V: AsRef<str>>(
        fields: impl IntoIterator<Item = (F, V)>,
    ) -> (UserState, usize) {
        let mut state = UserState::default();
        let mut malformed = 0;
        for (field, value) in fields {
            if !state.set_field(field.as_ref(), value.as_ref(), None) {
                malformed += 1;
            }
        }
        (state, malformed)
    }

    /// Rebuilds the state from its stored form ([`UserState::encode`]).
    /// Unknown or malformed fields are dropped and counted.
    pub fn decode(stored: &str, codes: &RuleCodes) -> (UserState, usize) {
        let mut state = UserState::default();
        let mut malformed = 0;
        for record in split_byte(stored, b';').filter(|r| !r.is_empty()) {
            let ok = match split_once_byte(record, b'=') {
                Some((field, value)) => {
                    if has_byte(value, b'%') {
                        state.set_field(field, &unescape(value), Some(codes))
                    } else {
                        state.set_field(field, value, Some(codes))
                    }
                }
                None => false,
            };
            if !ok {
                malformed += 1;
            }
        }
        (state, malformed)
    }

    /// Sets one field; false when the field is unknown or its value malformed
    /// (a malformed day list keeps its well-formed items). With `codes`, the
    /// rule in an `s:`, `x:` or `a:` field name is a stored name (a code, or
    /// a rule key) and is expanded to its rule key.
    fn set_field(&mut self, field: &str, value: &str, codes: Option<&RuleCodes>) -> bool {
        let rule_key = |stored: &'_ str| -> String {
            codes.map_or(stored, |c| c.rule_key(stored)).to_string()
        };
        if let Some(tag) = field.strip_prefix("wm:") {
            let kind = match tag {
                "dl" => EventKind::DataLogged,
                "br" => EventKind::BirthReported,
                _ => return false,
            };
            match value.parse() {
                Ok(ms) => {
                    self.watermarks.insert(kind, ms);
                    true
                }
                Err(_) => false,
            }
        } else if field == "emp" {
            self.employer = Some(value.to_string());
            true
        } else if field == "tz" {
            self.zone = Some(value.to_string());
            true
        } else if let Some(stored) = field.strip_prefix("s:") {
            let mut days = BTreeMap::new();
            let mut ok = true;
            for item in split_byte(value, b',').filter(|p| !p.is_empty()) {
                let (day, count) = split_once_byte(item, b':').unwrap_or((item, "1"));
                match (day.parse::<i32>(), count.parse::<u32>()) {
                    (Ok(d), Ok(c)) if c > 0 => {
                        days.insert(d, c);
                    }
                    _ => ok = false,
                }
            }
            self.progress.insert(rule_key(stored), days);
            ok
        } else if let Some(stored) = field.strip_prefix("x:") {
            match value.parse() {
                Ok(day) => {
                    self.spent_through.insert(rule_key(stored), day);
                    true
                }
                Err(_) => false,
            }
        } else if let Some(stored) = field.strip_prefix("a:") {
            // `<rule>@<period>`: only the rule is a stored name.
            let marker = match (codes, rsplit_once_byte(stored, b'@')) {
                (Some(codes), Some((rule, period))) => marker(codes.rule_key(rule), period),
                _ => rule_key(stored),
            };
            let mut parts = value.splitn(3, '|');
            let award_id = parts.next().unwrap_or_default().to_string();
            let achieved_local_date = parts.next().and_then(parse_date);
            let rule_version = parts.next().unwrap_or_default().to_string();
            self.awards.insert(
                marker,
                AwardMarker {
                    award_id,
                    achieved_local_date,
                    rule_version,
                },
            );
            true
        } else {
            false
        }
    }

    /// The stored form: `field=value` records joined by `;`, the fields of
    /// [`UserState::to_fields`] in the same order, rule keys replaced by their
    /// codes ([`RuleCodes`]), with `%`, `;` and `=` in values percent-escaped.
    /// One compact string per user and kind (a Redis string is smaller and
    /// cheaper to write than a hash of the same fields).
    pub fn encode(&self, codes: &RuleCodes) -> String {
        let mut out = String::with_capacity(96);
        self.encode_into(&mut out, codes);
        out
    }

    /// [`UserState::encode`], appended to `out` (after whatever it holds).
    pub fn encode_into(&self, out: &mut String, codes: &RuleCodes) {
        // Numbers and dates are written with `itoa` and by hand, not through
        // `fmt`: this runs once per user per batch on the hot path.
        let mut num = itoa::Buffer::new();
        let start = out.len();
        let sep = |out: &mut String| {
            if out.len() > start {
                out.push(';');
            }
        };
        for (kind, ms) in &self.watermarks {
            sep(out);
            out.push_str("wm:");
            out.push_str(kind.tag());
            out.push('=');
            out.push_str(num.format(*ms));
        }
        if let Some(e) = &self.employer {
            sep(out);
            out.push_str("emp=");
            escape_into(out, e);
        }
        if let Some(z) = &self.zone {
            sep(out);
            out.push_str("tz=");
            escape_into(out, z);
        }
        for (rule_key, days) in &self.progress {
            if days.is_empty() {
                continue;
            }
            sep(out);
            out.push_str("s:");
            out.push_str(codes.stored(rule_key));
            out.push('=');
            for (i, (d, c)) in days.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(num.format(*d));
                if *c != 1 {
                    out.push(':');
                    out.push_str(num.format(*c));
                }
            }
        }
        for (rule_key, day) in &self.spent_through {
            sep(out);
            out.push_str("x:");
            out.push_str(codes.stored(rule_key));
            out.push('=');
            out.push_str(num.format(*day));
        }
        for (marker, a) in &self.awards {
            sep(out);
            out.push_str("a:");
            match rsplit_once_byte(marker, b'@') {
                Some((rule_key, period)) => {
                    out.push_str(codes.stored(rule_key));
                    out.push('@');
                    out.push_str(period);
                }
                None => out.push_str(marker),
            }
            out.push('=');
            escape_into(out, &a.award_id);
            out.push('|');
            if let Some(d) = a.achieved_local_date {
                push_date(out, d);
            }
            out.push('|');
            escape_into(out, &a.rule_version);
        }
    }

    /// The Redis hash of this state (the whole hash: the writer replaces it).
    pub fn to_fields(&self) -> Vec<(String, String)> {
        let mut fields =
            Vec::with_capacity(3 + self.watermarks.len() + self.progress.len() + self.awards.len());
        for (kind, ms) in &self.watermarks {
            fields.push((format!("wm:{}", kind.tag()), ms.to_string()));
        }
        if let Some(e) = &self.employer {
            fields.push(("emp".into(), e.clone()));
        }
        if let Some(z) = &self.zone {
            fields.push(("tz".into(), z.clone()));
        }
        for (rule_key, days) in &self.progress {
            if days.is_empty() {
                continue;
            }
            let items: Vec<String> = days
                .iter()
                .map(|(d, c)| {
                    if *c == 1 {
                        d.to_string()
                    } else {
                        format!("{d}:{c}")
                    }
                })
                .collect();
            fields.push((format!("s:{rule_key}"), items.join(",")));
        }
        for (rule_key, day) in &self.spent_through {
            fields.push((format!("x:{rule_key}"), day.to_string()));
        }
        for (marker, a) in &self.awards {
            let date = a
                .achieved_local_date
                .map(|d| d.to_string())
                .unwrap_or_default();
            fields.push((
                format!("a:{marker}"),
                format!("{}|{date}|{}", a.award_id, a.rule_version),
            ));
        }
        fields
    }

    pub fn has_awards(&self) -> bool {
        !self.awards.is_empty()
    }

    pub fn is_awarded(&self, rule_key: &str, period: &str) -> bool {
        // On the hot path for every event and rule: the marker is put
        // together on the stack, not allocated.
        let mut buf = [0u8; 256];
        let len = rule_key.len() + 1 + period.len();
        if len > buf.len() {
            return self.awards.contains_key(&marker(rule_key, period));
        }
        buf[..rule_key.len()].copy_from_slice(rule_key.as_bytes());
        buf[rule_key.len()] = b'@';
        buf[rule_key.len() + 1..len].copy_from_slice(period.as_bytes());
        match std::str::from_utf8(&buf[..len]) {
            Ok(m) => self.awards.contains_key(m),
            Err(_) => self.awards.contains_key(&marker(rule_key, period)),
        }
    }

    /// The awards of one rule: (period, marker).
    pub fn awards_of<'a>(
        &'a self,
        rule_key: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a AwardMarker)> + 'a {
        self.awards.iter().filter_map(move |(k, a)| {
            let (key, period) = k.rsplit_once('@')?;
            (key == rule_key).then_some((period, a))
        })
    }
}

// Byte-level splitting for the stored state's ASCII separators: `str`'s char
// patterns go through a UTF-8 searcher (a `memchr` call and then a `memcmp`
// call per match), which costs more than the short fields it splits, and a
// byte-by-byte `position` was a quarter of a state's parse; the `memchr`
// crate's searches are vectorised. Slicing at an ASCII byte always lands on a
// char boundary.

/// Whether `s` holds the ASCII byte `b`.
fn has_byte(s: &str, b: u8) -> bool {
    memchr::memchr(b, s.as_bytes()).is_some()
}

/// `s.split(b as char)` for an ASCII `b`.
fn split_byte(s: &str, b: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b, r.as_bytes()) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// `s.split_once(b as char)` for an ASCII `b`.
pub(crate) fn split_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    let i = memchr::memchr(b, s.as_bytes())?;
    Some((&s[..i], &s[i + 1..]))
}

/// `s.rsplit_once(b as char)` for an ASCII `b`.
fn rsplit_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    let i = memchr::memrchr(b, s.as_bytes())?;
    Some((&s[..i], &s[i + 1..]))
}

/// An award marker's key, `<rule key>@<period>`, built at its exact size.
fn marker(rule_key: &str, period: &str) -> String {
    let mut m = String::with_capacity(rule_key.len() + 1 + period.len());
    m.push_str(rule_key);
    m.push('@');
    m.push_str(period);
    m
}

/// Appends `d` as `YYYY-MM-DD` (chrono's `Display` of a `NaiveDate`, which
/// is the fallback outside years 0-9999).
fn push_date(out: &mut String, d: NaiveDate) {
    let (y, m, day) = (d.year(), d.month(), d.day());
    if !(0..=9999).contains(&y) {
        use std::fmt::Write;
        let _ = write!(out, "{d}");
        return;
    }
    let digits = [
        y / 1000,
        y / 100 % 10,
        y / 10 % 10,
        y % 10,
        -1,
        (m / 10) as i32,
        (m % 10) as i32,
        -1,
        (day / 10) as i32,
        (day % 10) as i32,
    ];
    for v in digits {
        out.push(if v < 0 {
            '-'
        } else {
            char::from(b'0' + v as u8)
        });
    }
}

/// Parses `YYYY-MM-DD` (what [`push_date`] writes); anything else goes
/// through chrono's `%Y-%m-%d`.
fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let digit = |i: usize| b[i].wrapping_sub(b'0');
    let fixed = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && [0, 1, 2, 3, 5, 6, 8, 9].iter().all(|&i| digit(i) < 10);
    if !fixed {
        return NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    }
    let n = |from: usize, to: usize| (from..to).fold(0u32, |acc, i| acc * 10 + u32::from(digit(i)));
    NaiveDate::from_ymd_opt(n(0, 4) as i32, n(5, 7), n(8, 10))
}

/// Appends `value` with the separators of [`UserState::encode`] escaped.
fn escape_into(out: &mut String, value: &str) {
    if memchr::memchr3(b'%', b';', b'=', value.as_bytes()).is_none() {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '%' => out.push_str("%25"),
            ';' => out.push_str("%3B"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
}

fn unescape(value: &str) -> String {
    value
        .replace("%3B", ";")
        .replace("%3D", "=")
        .replace("%25", "%")
}

/// Rejects an event whose time is too far ahead of the wall clock. This is
/// the only decision that looks at the clock.
pub fn check_not_in_future(
    event: &InputEvent,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<(), Rejection> {
    let ahead = event.event_time().timestamp_millis() - now.timestamp_millis();
    if ahead > limits.max_clock_skew_ms {
        return Err(Rejection {
            reason: DeadLetterReason::TooFarInFuture,
            detail: format!(
                "event_time is {}s ahead of the processor's clock (max_clock_skew {}s)",
                ahead / 1000,
                limits.max_clock_skew_ms / 1000
            ),
        });
    }
    Ok(())
}

/// The program incentives that count `event`: the employer's, for this kind
/// of event, whose program runs on the event's program-local date.
pub fn matching_rules<'a>(programs: &'a Programs, event: &InputEvent) -> Vec<&'a ProgramIncentive> {
    programs
        .for_employer(event.employer_id(), event.kind())
        .iter()
        .filter(|pi| pi.is_active_at(event.event_time()))
        .collect()
}

/// Whether `event` qualifies for `rule` (its filter and conditions).
pub fn qualifies(rule: &ProgramIncentive, event: &InputEvent) -> bool {
    match event {
        InputEvent::DataLogged(e) => rule
            .filter
            .as_ref()
            .is_none_or(|f| e.data_kinds.iter().any(|k| f.data_kinds.contains(k))),
        InputEvent::BirthReported(e) => match rule.rule {
            RuleDef::Once {
                birth_date_within_program: true,
            } => {
                e.birth_date >= rule.starts_on && rule.ends_on.is_none_or(|end| e.birth_date <= end)
            }
            _ => true,
        },
    }
}

/// The day an instant counts for: its local date in `zone`, or the day
/// before when the local time is before `rollover_hour`.
pub fn counted_day(at: DateTime<Utc>, zone: Tz, rollover_hour: u32) -> NaiveDate {
    let local = at.with_timezone(&zone);
    let date = local.date_naive();
    if local.hour() < rollover_hour {
        date.pred_opt().unwrap_or(date)
    } else {
        date
    }
}

/// The award period of a completion: by the repeat policy, from the
/// program-local date of the completing event or the first counted day.
pub fn period_for(repeat: Repeat, program_date: NaiveDate, first_counted_day: NaiveDate) -> String {
    match repeat {
        Repeat::Once => PERIOD_PROGRAM.to_string(),
        Repeat::Weekly => {
            let w = program_date.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }
        Repeat::Monthly => format!("{}-{:02}", program_date.year(), program_date.month()),
        Repeat::EveryCompletion => format!("from-{first_counted_day}"),
    }
}

/// The period known before evaluating (all but every-completion), used to
/// skip rules already awarded for it.
fn known_period(repeat: Repeat, program_date: NaiveDate) -> Option<std::borrow::Cow<'static, str>> {
    match repeat {
        Repeat::EveryCompletion => None,
        Repeat::Once => Some(std::borrow::Cow::Borrowed(PERIOD_PROGRAM)),
        other => Some(std::borrow::Cow::Owned(period_for(
            other,
            program_date,
            program_date,
        ))),
    }
}

/// Applies `event` to `state` for the given rules; returns the awards it
/// completes. A rejected event leaves the state untouched.
pub fn apply_event(
    state: &mut UserState,
    event: &InputEvent,
    rules: &[&ProgramIncentive],
    source: Source<'_>,
    limits: &Limits,
) -> Result<Vec<AwardGranted>, Rejection> {
    let kind = event.kind();
    let at = event.event_time();
    let at_ms = at.timestamp_millis();
    if let Some(&watermark) = state.watermarks.get(&kind) {
        if at_ms < watermark - limits.lateness_ms {
            return Err(Rejection {
                reason: DeadLetterReason::TooLate,
                detail: format!(
                    "event_time is {}s behind the user's latest applied event (lateness window {}s)",
                    (watermark - at_ms) / 1000,
                    limits.lateness_ms / 1000
                ),
            });
        }
    }
    let watermark = state.watermarks.entry(kind).or_insert(at_ms);
    *watermark = (*watermark).max(at_ms);
    if state.employer.as_deref() != Some(event.employer_id()) {
        state.employer = Some(event.employer_id().to_string());
    }
    if let Some(zone) = event.time_zone() {
        if state.zone.as_deref() != Some(zone.name()) {
            state.zone = Some(zone.name().to_string());
        }
    }

    let mut awards = Vec::new();
    for rule in rules {
        if !qualifies(rule, event) {
            continue;
        }
        let program_date = local_date(at, rule.program_zone);
        if let Some(period) = known_period(rule.repeat, program_date) {
            if state.is_awarded(&rule.rule_key, &period) {
                continue;
            }
        }
        let zone = event.time_zone().unwrap_or(rule.program_zone);
        let date = counted_day(at, zone, rule.rule.rollover_hour());
        let day = day_number(date);
        if state
            .spent_through
            .get(&rule.rule_key)
            .is_some_and(|&spent| day <= spent)
        {
            continue; // that day already served a decided completion
        }
        let evidence = match rule.rule {
            RuleDef::Once { .. } => Some(vec![day]),
            RuleDef::Streak {
                days: needed,
                grace_days,
                ..
            } => {
                ensure_progress(&mut state.progress, &rule.rule_key);
                let Some(days) = state.progress.get_mut(&rule.rule_key) else {
                    continue; // just made sure it exists
                };
                days.insert(day, 1);
                prune_before(
                    days,
                    (needed + grace_days) as i32 + limits.lateness_days + 1,
                );
                completed_streak(days, day, needed, grace_days)
            }
            RuleDef::Count {
                events,
                distinct_days,
                window_days,
                ..
            } => {
                ensure_progress(&mut state.progress, &rule.rule_key);
                let Some(days) = state.progress.get_mut(&rule.rule_key) else {
                    continue; // just made sure it exists
                };
                *days.entry(day).or_insert(0) += 1;
                prune_before(days, window_days as i32 + limits.lateness_days + 1);
                completed_count(days, day, events, distinct_days, window_days)
            }
        };
        let Some(evidence) = evidence else { continue };
        let first = evidence
            .first()
            .copied()
            .map(date_from_day_number)
            .unwrap_or(date);
        let last = evidence.last().copied().unwrap_or(day);
        let period = period_for(rule.repeat, program_date, first);
        // The days of a completion are spent, whether it is awarded now or
        // was decided before (the same completion seen again).
        state.progress.remove(&rule.rule_key);
        let spent = state
            .spent_through
            .entry(rule.rule_key.clone())
            .or_insert(last);
        *spent = (*spent).max(last);
        if state.is_awarded(&rule.rule_key, &period) {
            continue;
        }
        let award = AwardGranted {
            award_id: award_id_for(
                &rule.program_id,
                &rule.incentive_id,
                event.user_id(),
                &period,
            ),
            user_id: event.user_id().to_string(),
            employer_id: event.employer_id().to_string(),
            program_id: rule.program_id.clone(),
            incentive_id: rule.incentive_id.clone(),
            rule_version: rule.rule_version.clone(),
            period: period.clone(),
            reward: rule.reward.clone(),
            achieved_at: at,
            achieved_local_date: date,
            time_zone: zone.name().to_string(),
            source: source.to_event(event.event_id()),
            evidence_days: evidence.into_iter().map(date_from_day_number).collect(),
        };
        state.awards.insert(
            marker(&rule.rule_key, &period),
            AwardMarker {
                award_id: award.award_id.clone(),
                achieved_local_date: Some(date),
                rule_version: rule.rule_version.clone(),
            },
        );
        awards.push(award);
    }
    Ok(awards)
}

/// Drops the state of programs that ended more than the retention ago, in
/// event time (the user's watermark), so a replay prunes as the live run did.
/// `employer_rules` are all the employer's program incentives of this kind.
pub fn prune_ended_programs(
    state: &mut UserState,
    kind: EventKind,
    employer_rules: &[ProgramIncentive],
    limits: &Limits,
) -> bool {
    let Some(&watermark) = state.watermarks.get(&kind) else {
        return false;
    };
    let Some(now) = DateTime::from_timestamp_millis(watermark) else {
        return false;
    };
    let mut changed = false;
    for rule in employer_rules {
        let Some(end) = rule.ends_on else { continue };
        let today = local_date(now, rule.program_zone);
        if (today - end).num_days() <= i64::from(limits.ended_program_retention_days) {
            continue;
        }
        changed |= state.progress.remove(&rule.rule_key).is_some();
        changed |= state.spent_through.remove(&rule.rule_key).is_some();
        let prefix = format!("{}@", rule.rule_key);
        let before = state.awards.len();
        state.awards.retain(|k, _| !k.starts_with(&prefix));
        changed |= state.awards.len() != before;
    }
    changed
}

/// Makes sure a rule has a progress entry, cloning its key only when the
/// entry is new (not for every event that finds it).
fn ensure_progress(progress: &mut BTreeMap<String, BTreeMap<i32, u32>>, rule_key: &str) {
    if !progress.contains_key(rule_key) {
        progress.insert(rule_key.to_string(), BTreeMap::new());
    }
}

/// Drops days `keep_days` or more before the newest day.
fn prune_before(days: &mut BTreeMap<i32, u32>, keep_days: i32) {
    if let Some((&newest, _)) = days.last_key_value() {
        let oldest_kept = newest - keep_days;
        days.retain(|&d, _| d >= oldest_kept);
    }
}

/// The present days of a streak through `day`: a window of present days
/// containing `day` in which at most `grace` days are missing (each grace
/// day covers exactly one missed day) and at least `needed` days are
/// present. The earliest such window is chosen, so the answer is the same
/// whatever order the days arrived in.
pub fn completed_streak(
    days: &BTreeMap<i32, u32>,
    day: i32,
    needed: u32,
    grace: u32,
) -> Option<Vec<i32>> {
    // The days, in order, on the stack when there are at most 64 of them
    // (a streak's days plus the lateness window are far fewer); this runs
    // for every streak rule an event matches.
    let mut stack = [0i32; 64];
    let heap: Vec<i32>;
    let present: &[i32] = if days.len() <= stack.len() {
        for (slot, d) in stack.iter_mut().zip(days.keys()) {
            *slot = *d;
        }
        &stack[..days.len()]
    } else {
        heap = days.keys().copied().collect();
        &heap
    };
    let i = present.binary_search(&day).ok()?;
    for l in 0..=i {
        // The farthest r >= i with at most `grace` missing days in [l, r].
        let mut r = i;
        let missing = |l: usize, r: usize| (present[r] - present[l] + 1) as usize - (r - l + 1);
        if missing(l, i) > grace as usize {
            continue;
        }
        while r + 1 < present.len() && missing(l, r + 1) <= grace as usize {
            r += 1;
        }
        if r - l + 1 >= needed as usize {
            return Some(present[l..=r].to_vec());
        }
    }
    None
}

/// The days of the earliest `window`-day window containing `day` with at
/// least `events` events on at least `distinct` days.
pub fn completed_count(
    days: &BTreeMap<i32, u32>,
    day: i32,
    events: u32,
    distinct: u32,
    window: u32,
) -> Option<Vec<i32>> {
    let window = window as i32;
    for start in (day - window + 1)..=day {
        let in_window: Vec<(i32, u32)> = days
            .range(start..start + window)
            .map(|(d, c)| (*d, *c))
            .collect();
        let total: u32 = in_window.iter().map(|(_, c)| c).sum();
        if total >= events && in_window.len() as u32 >= distinct {
            return Some(in_window.into_iter().map(|(d, _)| d).collect());
        }
    }
    None
}

/// Where a user stands on one program incentive (the read API).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Progress {
    /// `achieved` (awarded for the current period), `in_progress` or `not_started`.
    pub status: &'static str,
    /// Streak: present days of the live streak; count: events in the window;
    /// once: 0 or 1.
    pub current: u32,
    pub needed: u32,
    pub remaining: u32,
    /// Count rules: distinct days in the window, and how many are needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_days: Option<(u32, u32)>,
    /// The days that count now (local dates).
    pub counted_days: Vec<NaiveDate>,
    /// Missed days inside the live streak covered by grace days.
    pub grace_covered_days: Vec<NaiveDate>,
    /// Missed days that broke the last streak (between it and today), if any.
    pub missed_days: Vec<NaiveDate>,
    /// When the next qualifying event must happen, in the user's local time.
    pub next_deadline: Option<String>,
    /// The zone local days and the deadline are in.
    pub time_zone: String,
}

/// The end of local day `day` for a rule with `rollover_hour`: the next day
/// at that hour, in `zone` (DST-aware; a skipped hour moves later).
fn end_of_day(day: NaiveDate, zone: Tz, rollover_hour: u32) -> Option<String> {
    let next = day.succ_opt()?.and_hms_opt(rollover_hour, 0, 0)?;
    let at = zone.from_local_datetime(&next).earliest().or_else(|| {
        zone.from_local_datetime(&(next + chrono::Duration::hours(1)))
            .earliest()
    })?;
    Some(at.to_rfc3339())
}

/// How far the user is on `rule` at `now` (wall clock: the read API only).
pub fn progress(rule: &ProgramIncentive, state: &UserState, now: DateTime<Utc>) -> Progress {
    let zone: Tz = state
        .zone
        .as_deref()
        .and_then(|z| z.parse().ok())
        .unwrap_or(rule.program_zone);
    let rollover = rule.rule.rollover_hour();
    let today = day_number(counted_day(now, zone, rollover));
    let program_date = local_date(now, rule.program_zone);
    let achieved = known_period(rule.repeat, program_date)
        .is_some_and(|p| state.is_awarded(&rule.rule_key, &p));
    let days = state
        .progress
        .get(&rule.rule_key)
        .cloned()
        .unwrap_or_default();
    let dates = |v: &[i32]| {
        v.iter()
            .copied()
            .map(date_from_day_number)
            .collect::<Vec<_>>()
    };
    let mut p = Progress {
        status: "not_started",
        current: 0,
        needed: 1,
        remaining: 1,
        distinct_days: None,
        counted_days: Vec::new(),
        grace_covered_days: Vec::new(),
        missed_days: Vec::new(),
        next_deadline: None,
        time_zone: zone.name().to_string(),
    };
    match rule.rule {
        RuleDef::Once { .. } => {
            p.current = u32::from(achieved);
        }
        RuleDef::Streak {
            days: needed,
            grace_days,
            ..
        } => {
            p.needed = needed;
            let present: Vec<i32> = days.keys().copied().filter(|&d| d <= today).collect();
            if let Some(&last) = present.last() {
                // The live run: back from the last present day while the
                // missed days fit in the grace days.
                let mut l = present.len() - 1;
                while l > 0
                    && (present[present.len() - 1] - present[l - 1] + 1) as usize
                        - (present.len() - l + 1)
                        <= grace_days as usize
                {
                    l -= 1;
                }
                let run = &present[l..];
                let used = (last - run[0] + 1) as usize - run.len();
                let since = (today - last - 1).max(0) as usize; // whole days missed since
                if used + since <= grace_days as usize {
                    p.current = run.len() as u32;
                    p.counted_days = dates(run);
                    p.grace_covered_days = dates(
                        &(run[0]..=last)
                            .filter(|d| !run.contains(d))
                            .collect::<Vec<_>>(),
                    );
                    let left = grace_days as usize - used - since;
                    p.next_deadline = end_of_day(
                        date_from_day_number(last.max(today - 1) + 1 + left as i32),
                        zone,
                        rollover,
                    );
                } else {
                    p.missed_days = dates(&((last + 1)..today).collect::<Vec<_>>());
                }
            }
        }
        RuleDef::Count {
            events,
            distinct_days,
            window_days,
            ..
        } => {
            p.needed = events;
            let start = today - window_days as i32 + 1;
            let in_window: Vec<(i32, u32)> =
                days.range(start..=today).map(|(d, c)| (*d, *c)).collect();
            p.current = in_window.iter().map(|(_, c)| c).sum();
            p.distinct_days = Some((in_window.len() as u32, distinct_days));
            p.counted_days = in_window
                .iter()
                .map(|(d, _)| date_from_day_number(*d))
                .collect();
            if let Some((first, _)) = in_window.first() {
                p.next_deadline = end_of_day(
                    date_from_day_number(first + window_days as i32 - 1),
                    zone,
                    rollover,
                );
            }
        }
    }
    p.remaining = p.needed.saturating_sub(p.current);
    if let Some((have, need)) = p.distinct_days {
        p.remaining = p.remaining.max(need.saturating_sub(have));
    }
    p.status = if achieved {
        "achieved"
    } else if p.current > 0 {
        "in_progress"
    } else {
        "not_started"
    };
    if achieved {
        p.next_deadline = None;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_programs;
    use crate::events::{BirthReported, DataLogged};
    use chrono::NaiveDate;
    use std::path::Path;

    #[test]
    fn byte_splitting_agrees_with_str_splitting() {
        for s in [
            "",
            ";",
            "a",
            "a;b",
            ";a;;b;",
            "é;ü=ß;€",
            "wm:dl=1;emp=x%3By",
            "a@b@c",
            "@",
            "x=",
        ] {
            for (b, c) in [(b';', ';'), (b'=', '='), (b'@', '@')] {
                assert_eq!(
                    split_byte(s, b).collect::<Vec<_>>(),
                    s.split(c).collect::<Vec<_>>(),
                    "{s:?} split at {c:?}"
                );
                assert_eq!(split_once_byte(s, b), s.split_once(c), "{s:?} at {c:?}");
                assert_eq!(rsplit_once_byte(s, b), s.rsplit_once(c), "{s:?} at {c:?}");
                assert_eq!(has_byte(s, b), s.contains(c), "{s:?} has {c:?}");
            }
        }
    }

    const CATALOG: &str = r#"
[incentives.streak5]
description = "5 days"
event = "data_logged"
rule = { kind = "streak", days = 5 }
[incentives.birth]
description = "birth"
event = "birth_reported"
rule = { kind = "once" }
"#;
    const PROGRAMS: &str = r#"
[[programs]]
id = "p1"
employer_id = "acme"
time_zone = "America/New_York"
starts_on = 2026-01-01
ends_on = 2026-12-31
incentives = [
  { incentive = "streak5", reward = { kind = "physical", code = "PILLOW", description = "Pillow" } },
  { incentive = "birth", reward = { kind = "gift_card", code = "G50", description = "Card" } },
]
"#;
    const LIMITS: Limits = Limits {
        lateness_ms: 3 * 86_400_000,
        lateness_days: 3,
        max_clock_skew_ms: 900_000,
        ended_program_retention_days: 30,
    };

    fn programs() -> Programs {
        parse_programs(Path::new("c"), CATALOG, Path::new("p"), PROGRAMS).unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn logged(user: &str, at: &str, zone: Option<chrono_tz::Tz>) -> InputEvent {
        InputEvent::DataLogged(DataLogged {
            event_id: format!("e-{at}"),
            user_id: user.into(),
            employer_id: "acme".into(),
            event_time: t(at),
            time_zone: zone,
            data_kinds: vec!["mood".into()],
        })
    }

    fn source() -> Source<'static> {
        Source {
            topic: "t",
            partition: 0,
            offset: 1,
        }
    }

    /// Applies events in order under [`programs`]; returns all awards.
    fn run(state: &mut UserState, events: &[InputEvent]) -> Vec<AwardGranted> {
        run_on(&programs(), state, events)
    }

    fn day(d: u32) -> String {
        format!("2026-03-{d:02}T15:00:00Z")
    }

    #[test]
    fn five_consecutive_days_award_once() {
        let mut s = UserState::default();
        let events: Vec<_> = (1..=7).map(|d| logged("u1", &day(d), None)).collect();
        let awards = run(&mut s, &events);
        assert_eq!(awards.len(), 1);
        let a = &awards[0];
        assert_eq!(a.award_id, award_id_for("p1", "streak5", "u1", "program"));
        assert_eq!(
            a.achieved_local_date,
            NaiveDate::from_ymd_opt(2026, 3, 5).unwrap()
        );
        assert_eq!(a.evidence_days.len(), 5);
        assert_eq!(a.time_zone, "America/New_York");
        assert!(s.progress.is_empty(), "days are dropped once awarded");
    }

    #[test]
    fn four_days_or_a_gap_give_nothing() {
        let mut s = UserState::default();
        let four: Vec<_> = (1..=4).map(|d| logged("u1", &day(d), None)).collect();
        assert!(run(&mut s, &four).is_empty());
        let mut s = UserState::default();
        let gap: Vec<_> = [1, 2, 4, 5, 6, 8]
            .iter()
            .map(|&d| logged("u1", &day(d), None))
            .collect();
        assert!(run(&mut s, &gap).is_empty());
    }

    #[test]
    fn a_late_event_filling_the_gap_completes_the_streak() {
        let mut s = UserState::default();
        let events: Vec<_> = [1, 2, 4, 5, 3]
            .iter()
            .map(|&d| logged("u1", &day(d), None))
            .collect();
        let awards = run(&mut s, &events);
        assert_eq!(awards.len(), 1);
        assert_eq!(
            awards[0].achieved_local_date,
            NaiveDate::from_ymd_opt(2026, 3, 3).unwrap()
        );
        assert_eq!(
            awards[0].evidence_days.first(),
            Some(&NaiveDate::from_ymd_opt(2026, 3, 1).unwrap())
        );
    }

    #[test]
    fn events_beyond_the_lateness_window_are_rejected() {
        let p = programs();
        let mut s = UserState::default();
        run(&mut s, &[logged("u1", &day(10), None)]);
        let late = logged("u1", &day(6), None);
        let before = s.clone();
        let err =
            apply_event(&mut s, &late, &matching_rules(&p, &late), source(), &LIMITS).unwrap_err();
        assert_eq!(err.reason, DeadLetterReason::TooLate);
        assert_eq!(s, before, "a rejected event changes nothing");
        let in_window = logged("u1", &day(7), None);
        assert!(apply_event(
            &mut s,
            &in_window,
            &matching_rules(&p, &in_window),
            source(),
            &LIMITS
        )
        .is_ok());
    }

    #[test]
    fn future_events_are_rejected_against_the_clock() {
        let now = t("2026-03-01T12:00:00Z");
        assert!(
            check_not_in_future(&logged("u", "2026-03-01T12:10:00Z", None), now, &LIMITS).is_ok()
        );
        let err = check_not_in_future(&logged("u", "2026-03-01T13:00:00Z", None), now, &LIMITS)
            .unwrap_err();
        assert_eq!(err.reason, DeadLetterReason::TooFarInFuture);
    }

    #[test]
    fn days_are_local_to_the_user() {
        // 01:30 UTC is the previous evening in New York (program zone) but
        // the same day in Berlin (user's zone on the event).
        let berlin = Some(chrono_tz::Europe::Berlin);
        let mut s = UserState::default();
        let events: Vec<_> = (2..=6)
            .map(|d| logged("u1", &format!("2026-03-{d:02}T01:30:00Z"), berlin))
            .collect();
        let awards = run(&mut s, &events);
        assert_eq!(
            awards[0].achieved_local_date,
            NaiveDate::from_ymd_opt(2026, 3, 6).unwrap()
        );
        // Without a zone, the same instants fall on Mar 1..5 in New York.
        let mut s = UserState::default();
        let events: Vec<_> = (2..=6)
            .map(|d| logged("u1", &format!("2026-03-{d:02}T01:30:00Z"), None))
            .collect();
        assert_eq!(
            run(&mut s, &events)[0].achieved_local_date,
            NaiveDate::from_ymd_opt(2026, 3, 5).unwrap()
        );
    }

    #[test]
    fn two_events_in_one_local_day_count_once() {
        let ny = Some(chrono_tz::America::New_York);
        let mut s = UserState::default();
        // Mar 1 22:30 and 23:30 EST (03:30Z and 04:30Z on Mar 2): one local day.
        let mut events = vec![
            logged("u1", "2026-03-02T03:30:00Z", ny),
            logged("u1", "2026-03-02T04:30:00Z", ny),
        ];
        events.extend((2..=4).map(|d| logged("u1", &format!("2026-03-{d:02}T15:00:00Z"), ny)));
        assert!(run(&mut s, &events).is_empty(), "Mar 1..4 is four days");
        let awards = run(&mut s, &[logged("u1", "2026-03-05T15:00:00Z", ny)]);
        assert_eq!(awards.len(), 1);
        assert_eq!(awards[0].evidence_days.len(), 5);
    }

    #[test]
    fn a_streak_across_the_dst_change() {
        // 2026-03-08 is 23 hours long in New York. Log at 23:30 local each day.
        let ny = Some(chrono_tz::America::New_York);
        let instants = [
            "2026-03-07T04:30:00Z", // Mar 6 23:30 EST
            "2026-03-08T04:30:00Z", // Mar 7 23:30 EST
            "2026-03-09T03:30:00Z", // Mar 8 23:30 EDT
            "2026-03-10T03:30:00Z", // Mar 9 23:30 EDT
            "2026-03-11T03:30:00Z", // Mar 10 23:30 EDT
        ];
        let mut s = UserState::default();
        let awards = run(&mut s, &instants.map(|i| logged("u1", i, ny)));
        assert_eq!(awards.len(), 1);
        let days: Vec<_> = awards[0]
            .evidence_days
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            days,
            [
                "2026-03-06",
                "2026-03-07",
                "2026-03-08",
                "2026-03-09",
                "2026-03-10"
            ]
        );
    }

    #[test]
    fn birth_reported_awards_once() {
        let birth = InputEvent::BirthReported(BirthReported {
            event_id: "b1".into(),
            user_id: "u1".into(),
            employer_id: "acme".into(),
            event_time: t("2026-05-01T10:00:00Z"),
            time_zone: None,
            birth_date: NaiveDate::from_ymd_opt(2026, 4, 30).unwrap(),
        });
        let mut s = UserState::default();
        let awards = run(&mut s, &[birth.clone(), birth]);
        assert_eq!(awards.len(), 1);
        assert_eq!(awards[0].incentive_id, "birth");
        assert_eq!(
            awards[0].award_id,
            award_id_for("p1", "birth", "u1", "program")
        );
    }

    #[test]
    fn events_outside_the_program_dates_do_not_match() {
        let p = programs();
        assert!(matching_rules(&p, &logged("u1", "2025-12-31T12:00:00Z", None)).is_empty());
        assert_eq!(
            matching_rules(&p, &logged("u1", "2026-06-01T12:00:00Z", None)).len(),
            1
        );
    }

    #[test]
    fn award_ids_are_deterministic_and_distinct() {
        let a = award_id_for("p", "i", "u", "program");
        assert_eq!(a, award_id_for("p", "i", "u", "program"));
        assert_ne!(a, award_id_for("p", "i", "u2", "program"));
        assert_ne!(a, award_id_for("p", "i2", "u", "program"));
        assert_ne!(
            award_id_for("a", "bc", "u", "x"),
            award_id_for("ab", "c", "u", "x")
        );
        assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }

    #[test]
    fn state_round_trips_through_fields() {
        let mut s = UserState::default();
        run(
            &mut s,
            &[logged("u1", &day(1), None), logged("u1", &day(2), None)],
        );
        let (back, malformed) = UserState::from_fields(s.to_fields());
        assert_eq!(malformed, 0);
        assert_eq!(back, s);
        let (_, malformed) = UserState::from_fields([("wm:dl", "x"), ("zz", "1")]);
        assert_eq!(malformed, 2);
    }

    #[test]
    fn stored_states_name_rules_by_short_codes() {
        let key = "acme-wellness-2026/data-logged-5-consecutive-days";
        let codes = RuleCodes::new([key, "globex-2026/birth"]).unwrap();
        let code = rule_code(key);
        assert_eq!(code.len(), 7);
        assert!(!code.contains('/'));
        assert_eq!(rule_code(key), code, "stable");
        let mut s = UserState::default();
        s.progress
            .insert(key.to_string(), BTreeMap::from([(20513, 1), (20514, 2)]));
        s.spent_through.insert(key.to_string(), 20512);
        s.awards.insert(
            format!("{key}@2026-W12"),
            AwardMarker {
                award_id: "id".into(),
                achieved_local_date: None,
                rule_version: "r-1".into(),
            },
        );
        // A rule the codes do not know is stored by its key, and read back.
        s.progress
            .insert("gone/rule".into(), BTreeMap::from([(1, 1)]));
        let stored = s.encode(&codes);
        assert_eq!(
            stored,
            format!(
                "s:{code}=20513,20514:2;s:gone/rule=1;x:{code}=20512;a:{code}@2026-W12=id||r-1"
            )
        );
        assert_eq!(UserState::decode(&stored, &codes), (s.clone(), 0));
        // Without the codes (a rule removed from the programs), the code
        // stays the rule's name, and is written back unchanged.
        let (unknown, malformed) = UserState::decode(&stored, &RuleCodes::default());
        assert_eq!(malformed, 0);
        assert!(unknown.progress.contains_key(&code));
        assert_eq!(
            UserState::decode(&unknown.encode(&codes), &codes),
            (s.clone(), 0),
            "written back unchanged (in another field order)"
        );
        assert!(
            RuleCodes::new([key, key]).is_ok(),
            "a key twice is one rule"
        );
    }

    #[test]
    fn state_round_trips_through_its_stored_form() {
        let mut s = UserState::default();
        run(
            &mut s,
            &[logged("u1", &day(1), None), logged("u1", &day(2), None)],
        );
        for employer in ["acme", "a;b=c%d", "%3B", "%253D;;==", "é ü"] {
            s.employer = Some(employer.to_string());
            let stored = s.encode(&RuleCodes::default());
            assert_eq!(stored.split(';').count(), s.to_fields().len(), "{stored}");
            let (back, malformed) = UserState::decode(&stored, &RuleCodes::default());
            assert_eq!(malformed, 0, "{stored}");
            assert_eq!(back, s, "{stored}");
        }
        assert_eq!(
            UserState::decode("", &RuleCodes::default()),
            (UserState::default(), 0)
        );
        let (back, malformed) =
            UserState::decode("wm:dl=x;zz=1;junk;emp=acme", &RuleCodes::default());
        assert_eq!(malformed, 3);
        assert_eq!(back.employer.as_deref(), Some("acme"));
    }

    #[test]
    fn dates_and_numbers_are_written_and_read_as_chrono_and_fmt_do() {
        for (y, m, d) in [
            (2026, 3, 5),
            (0, 1, 1),
            (9999, 12, 31),
            (-1, 6, 15),
            (10_000, 2, 29),
        ] {
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            let mut out = String::new();
            push_date(&mut out, date);
            assert_eq!(out, date.to_string());
            assert_eq!(parse_date(&out), Some(date), "{out}");
        }
        // Not the fixed form: chrono decides, as before.
        for text in [
            "2026-13-01",
            "2026-02-30",
            "2026-3-05",
            "20x6-03-05",
            "",
            "+10000-02-29",
        ] {
            assert_eq!(
                parse_date(text),
                NaiveDate::parse_from_str(text, "%Y-%m-%d").ok(),
                "{text}"
            );
        }
        let mut s = UserState::default();
        s.watermarks
            .insert(EventKind::DataLogged, -1_700_000_000_000);
        s.watermarks.insert(EventKind::BirthReported, i64::MAX);
        s.progress.insert(
            "r".into(),
            BTreeMap::from([(-3, 1), (0, 2), (20_515, u32::MAX)]),
        );
        s.spent_through.insert("r".into(), i32::MIN);
        s.awards.insert(
            "r@2026-03".into(),
            AwardMarker {
                award_id: "id".into(),
                achieved_local_date: NaiveDate::from_ymd_opt(2026, 3, 5),
                rule_version: "v".into(),
            },
        );
        let stored = s.encode(&RuleCodes::default());
        assert_eq!(
            stored,
            format!(
                "wm:dl=-1700000000000;wm:br={};s:r=-3,0:2,20515:{};x:r={};a:r@2026-03=id|2026-03-05|v",
                i64::MAX,
                u32::MAX,
                i32::MIN
            )
        );
        assert_eq!(UserState::decode(&stored, &RuleCodes::default()), (s, 0));
    }

    fn days(list: &[i32]) -> BTreeMap<i32, u32> {
        list.iter().map(|&d| (d, 1)).collect()
    }

    #[test]
    fn old_days_are_pruned() {
        let mut d = days(&[1, 2, 3, 10, 20]);
        prune_before(&mut d, 9);
        assert_eq!(d.keys().copied().collect::<Vec<_>>(), vec![20]);
        assert_eq!(
            completed_streak(&days(&[1, 2, 3, 5]), 2, 3, 0),
            Some(vec![1, 2, 3])
        );
        assert_eq!(
            completed_streak(&days(&[1, 2, 3, 5]), 5, 1, 0),
            Some(vec![5])
        );
        assert_eq!(completed_streak(&days(&[1, 2, 3, 5]), 4, 1, 0), None);
    }

    #[test]
    fn grace_days_cover_single_missed_days_only() {
        // One grace day covers the missing day 3; it does not add to the count.
        assert_eq!(
            completed_streak(&days(&[1, 2, 4, 5, 6]), 6, 5, 1),
            Some(vec![1, 2, 4, 5, 6])
        );
        assert_eq!(
            completed_streak(&days(&[1, 2, 4, 5]), 5, 5, 1),
            None,
            "four present days are not five"
        );
        // One grace day cannot bridge a two-day gap.
        assert_eq!(completed_streak(&days(&[1, 2, 5, 6, 7]), 7, 5, 1), None);
        // Two grace days can cover two separate misses, or one two-day gap.
        assert_eq!(
            completed_streak(&days(&[1, 3, 5, 6, 7]), 7, 5, 2),
            Some(vec![1, 3, 5, 6, 7])
        );
        assert_eq!(
            completed_streak(&days(&[1, 2, 5, 6, 7]), 7, 5, 2),
            Some(vec![1, 2, 5, 6, 7])
        );
        assert_eq!(completed_streak(&days(&[1, 3, 5, 7, 9]), 9, 5, 2), None);
    }

    #[test]
    fn long_day_lists_find_the_same_streaks() {
        // Past 64 days the list leaves the stack buffer: same answers.
        let long: Vec<i32> = (1..=100).filter(|d| d % 10 != 0).collect();
        assert_eq!(
            completed_streak(&days(&long), 95, 5, 0),
            Some(vec![91, 92, 93, 94, 95, 96, 97, 98, 99])
        );
        assert_eq!(
            completed_streak(&days(&long), 95, 12, 1),
            Some((81..=99).filter(|d| d % 10 != 0).collect())
        );
        assert_eq!(completed_streak(&days(&long), 95, 10, 0), None);
        assert_eq!(completed_streak(&days(&long), 90, 1, 0), None);
    }

    #[test]
    fn count_windows() {
        let mut d = BTreeMap::new();
        d.insert(1, 3);
        d.insert(5, 4);
        d.insert(14, 3);
        // 10 events on 3 days within 14 days (days 1..14).
        assert_eq!(completed_count(&d, 14, 10, 3, 14), Some(vec![1, 5, 14]));
        assert_eq!(
            completed_count(&d, 14, 10, 4, 14),
            None,
            "needs four distinct days"
        );
        assert_eq!(
            completed_count(&d, 14, 10, 3, 13),
            None,
            "day 1 falls out of a 13-day window"
        );
    }

    #[test]
    fn rollover_hour_counts_small_hours_for_the_day_before() {
        let ny = chrono_tz::America::New_York;
        // 01:30 EST on Mar 3 is 06:30Z.
        assert_eq!(
            counted_day(t("2026-03-03T06:30:00Z"), ny, 2),
            NaiveDate::from_ymd_opt(2026, 3, 2).unwrap()
        );
        assert_eq!(
            counted_day(t("2026-03-03T06:30:00Z"), ny, 0),
            NaiveDate::from_ymd_opt(2026, 3, 3).unwrap()
        );
        assert_eq!(
            counted_day(t("2026-03-03T07:30:00Z"), ny, 2),
            NaiveDate::from_ymd_opt(2026, 3, 3).unwrap()
        );
    }

    #[test]
    fn periods_follow_the_repeat_policy() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 4).unwrap();
        let first = NaiveDate::from_ymd_opt(2026, 2, 28).unwrap();
        assert_eq!(period_for(Repeat::Once, d, first), "program");
        assert_eq!(period_for(Repeat::Weekly, d, first), "2026-W10");
        assert_eq!(
            period_for(
                Repeat::Weekly,
                NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
                first
            ),
            "2026-W53"
        );
        assert_eq!(period_for(Repeat::Monthly, d, first), "2026-03");
        assert_eq!(
            period_for(Repeat::EveryCompletion, d, first),
            "from-2026-02-28"
        );
    }

    const RULES_CATALOG: &str = r#"
[incentives.streak3]
description = "3 days"
event = "data_logged"
rule = { kind = "streak", days = 3 }
[incentives.mood3]
description = "3 days of mood"
event = "data_logged"
rule = { kind = "streak", days = 3, rollover_hour = 3 }
filter = { data_kinds = ["mood"] }
[incentives.four-in-7]
description = "4 logs on 2 days in a week"
event = "data_logged"
rule = { kind = "count", events = 4, distinct_days = 2, window_days = 7 }
[incentives.birth]
description = "birth in program"
event = "birth_reported"
rule = { kind = "once", birth_date_within_program = true }
"#;

    fn rule_programs(repeat: &str, incentive: &str, extra: &str) -> Programs {
        let programs = format!(
            "[[programs]]\nid = \"p\"\nemployer_id = \"acme\"\ntime_zone = \"America/New_York\"\nstarts_on = 2026-01-01\nends_on = 2026-12-31\n[[programs.incentives]]\nincentive = \"{incentive}\"\nrepeat = \"{repeat}\"\nreward = {{ kind = \"points\", code = \"1\", description = \"d\" }}\n{extra}"
        );
        parse_programs(Path::new("c"), RULES_CATALOG, Path::new("p"), &programs).unwrap()
    }

    /// Applies events in order under `p`; returns all awards.
    fn run_on(p: &Programs, state: &mut UserState, events: &[InputEvent]) -> Vec<AwardGranted> {
        let mut out = Vec::new();
        for e in events {
            let rules = matching_rules(p, e);
            out.extend(
                apply_event(state, e, &rules, source(), &LIMITS)
                    .unwrap_or_else(|r| panic!("{e:?} was rejected: {r:?}")),
            );
        }
        out
    }

    fn with_kinds(mut e: InputEvent, kinds: &[&str]) -> InputEvent {
        if let InputEvent::DataLogged(d) = &mut e {
            d.data_kinds = kinds.iter().map(|k| k.to_string()).collect();
        }
        e
    }

    #[test]
    fn repeat_policies_award_once_per_period() {
        // Weekly: a 3-day streak, logging daily from Mon Mar 2. Awarded Wed
        // Mar 4 (W10); the rest of W10 does not count towards anything, and
        // W11's award needs a new streak in W11: Mon 9, Tue 10, Wed 11.
        let p = rule_programs("weekly", "streak3", "");
        let mut s = UserState::default();
        let events: Vec<_> = (2..=11).map(|d| logged("u1", &day(d), None)).collect();
        let awards = run_on(&p, &mut s, &events);
        let periods: Vec<&str> = awards.iter().map(|a| a.period.as_str()).collect();
        assert_eq!(periods, ["2026-W10", "2026-W11"], "{awards:#?}");
        assert_eq!(awards[1].achieved_local_date.to_string(), "2026-03-11");
        assert_ne!(awards[0].award_id, awards[1].award_id);

        let p = rule_programs("monthly", "streak3", "");
        let mut s = UserState::default();
        let events: Vec<_> = (1..=12).map(|d| logged("u1", &day(d), None)).collect();
        let awards = run_on(&p, &mut s, &events);
        assert_eq!(
            awards.iter().map(|a| a.period.as_str()).collect::<Vec<_>>(),
            ["2026-03"]
        );

        let p = rule_programs("every_completion", "streak3", "");
        let mut s = UserState::default();
        let events: Vec<_> = (1..=9).map(|d| logged("u1", &day(d), None)).collect();
        let awards = run_on(&p, &mut s, &events);
        let periods: Vec<&str> = awards.iter().map(|a| a.period.as_str()).collect();
        assert_eq!(
            periods,
            ["from-2026-03-01", "from-2026-03-04", "from-2026-03-07"]
        );

        // Re-sent events and second logs of spent days decide nothing new.
        let p = rule_programs("every_completion", "streak3", "");
        let mut s = UserState::default();
        let twice_a_day: Vec<_> = (1..=9)
            .flat_map(|d| {
                [
                    logged("u1", &format!("2026-03-{d:02}T14:00:00Z"), None),
                    logged("u1", &day(d), None),
                ]
            })
            .collect();
        let awards = run_on(&p, &mut s, &twice_a_day);
        let periods: Vec<&str> = awards.iter().map(|a| a.period.as_str()).collect();
        assert_eq!(
            periods,
            ["from-2026-03-01", "from-2026-03-04", "from-2026-03-07"]
        );
        let resent: Vec<_> = (6..=9).map(|d| logged("u1", &day(d), None)).collect();
        assert!(
            run_on(&p, &mut s, &resent).is_empty(),
            "spent days do not count again"
        );

        let p = rule_programs("once", "streak3", "");
        let mut s = UserState::default();
        assert_eq!(run_on(&p, &mut s, &events).len(), 1);
    }

    #[test]
    fn filters_and_rollover_decide_what_counts() {
        let p = rule_programs("once", "mood3", "");
        let mut s = UserState::default();
        // Symptom-only logs do not count; mood logs do.
        let events = vec![
            with_kinds(logged("u1", &day(1), None), &["symptom"]),
            with_kinds(logged("u1", &day(2), None), &["symptom"]),
            with_kinds(logged("u1", &day(3), None), &["mood", "symptom"]),
            with_kinds(logged("u1", &day(4), None), &["mood"]),
        ];
        assert!(run_on(&p, &mut s, &events).is_empty());
        // 02:00 EST on Mar 6 (07:00Z) counts for Mar 5 with rollover_hour 3.
        let awards = run_on(
            &p,
            &mut s,
            &[with_kinds(
                logged("u1", "2026-03-06T07:00:00Z", None),
                &["mood"],
            )],
        );
        assert_eq!(awards.len(), 1);
        assert_eq!(awards[0].achieved_local_date.to_string(), "2026-03-05");
    }

    #[test]
    fn grace_days_per_program_and_counts_end_to_end() {
        let p = rule_programs("once", "streak3", "grace_days = 1\n");
        let mut s = UserState::default();
        let events: Vec<_> = [1, 3, 4]
            .iter()
            .map(|&d| logged("u1", &day(d), None))
            .collect();
        let awards = run_on(&p, &mut s, &events);
        assert_eq!(awards.len(), 1, "one missed day is forgiven");
        assert_eq!(awards[0].evidence_days.len(), 3);

        let p = rule_programs("once", "four-in-7", "");
        let mut s = UserState::default();
        let mut events: Vec<_> = (0..3).map(|_| logged("u1", &day(1), None)).collect();
        assert!(run_on(&p, &mut s, &events).is_empty(), "3 events");
        events = vec![logged("u1", &day(1), None)];
        assert!(
            run_on(&p, &mut s, &events).is_empty(),
            "4 events but on one day"
        );
        let awards = run_on(&p, &mut s, &[logged("u1", &day(7), None)]);
        assert_eq!(awards.len(), 1);
        assert_eq!(
            awards[0]
                .evidence_days
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            ["2026-03-01", "2026-03-07"]
        );
    }

    #[test]
    fn birth_date_conditions() {
        let p = rule_programs("once", "birth", "");
        let birth = |date: (i32, u32, u32)| {
            InputEvent::BirthReported(BirthReported {
                event_id: "b".into(),
                user_id: "u".into(),
                employer_id: "acme".into(),
                event_time: t("2026-05-01T10:00:00Z"),
                time_zone: None,
                birth_date: NaiveDate::from_ymd_opt(date.0, date.1, date.2).unwrap(),
            })
        };
        let mut s = UserState::default();
        assert!(
            run_on(&p, &mut s, &[birth((2025, 12, 30))]).is_empty(),
            "born before the program"
        );
        assert_eq!(run_on(&p, &mut s, &[birth((2026, 4, 30))]).len(), 1);
    }

    #[test]
    fn ended_programs_are_pruned_after_the_retention_in_event_time() {
        let p = rule_programs("once", "streak3", "");
        let mut s = UserState::default();
        run_on(&p, &mut s, &[logged("u1", "2026-12-30T15:00:00Z", None)]);
        assert!(!s.progress.is_empty());
        let rules = p.for_employer("acme", EventKind::DataLogged);
        assert!(
            !prune_ended_programs(&mut s, EventKind::DataLogged, rules, &LIMITS),
            "still inside the program"
        );
        s.watermarks.insert(
            EventKind::DataLogged,
            t("2027-02-15T00:00:00Z").timestamp_millis(),
        );
        assert!(prune_ended_programs(
            &mut s,
            EventKind::DataLogged,
            rules,
            &LIMITS
        ));
        assert!(s.progress.is_empty());
    }

    #[test]
    fn progress_explains_streaks_counts_and_deadlines() {
        let p = rule_programs("once", "streak3", "grace_days = 1\n");
        let rule = &p.for_employer("acme", EventKind::DataLogged)[0];
        let ny = Some(chrono_tz::America::New_York);
        let mut s = UserState::default();
        run_on(
            &p,
            &mut s,
            &[logged("u1", &day(1), ny), logged("u1", &day(3), ny)],
        );
        // Now: Mar 3 evening in New York.
        let pr = progress(rule, &s, t("2026-03-03T23:00:00Z"));
        assert_eq!(
            (pr.status, pr.current, pr.needed, pr.remaining),
            ("in_progress", 2, 3, 1)
        );
        assert_eq!(
            pr.grace_covered_days,
            vec![NaiveDate::from_ymd_opt(2026, 3, 2).unwrap()]
        );
        assert_eq!(pr.counted_days.len(), 2);
        // Grace spent: the next log must come by the end of Mar 4 (local).
        assert_eq!(
            pr.next_deadline.as_deref(),
            Some("2026-03-05T00:00:00-05:00")
        );
        // Mar 6: Mar 4 and 5 missed, the streak is broken.
        let pr = progress(rule, &s, t("2026-03-06T18:00:00Z"));
        assert_eq!((pr.status, pr.current), ("not_started", 0));
        assert_eq!(pr.missed_days.len(), 2);
        run_on(&p, &mut s, &[logged("u1", &day(4), ny)]);
        let pr = progress(rule, &s, t("2026-03-04T23:00:00Z"));
        assert_eq!(pr.status, "achieved");

        let p = rule_programs("once", "four-in-7", "");
        let rule = &p.for_employer("acme", EventKind::DataLogged)[0];
        let mut s = UserState::default();
        run_on(
            &p,
            &mut s,
            &[logged("u1", &day(2), ny), logged("u1", &day(2), ny)],
        );
        let pr = progress(rule, &s, t("2026-03-04T18:00:00Z"));
        assert_eq!(
            (pr.current, pr.needed, pr.remaining, pr.distinct_days),
            (2, 4, 2, Some((1, 2)))
        );
        assert_eq!(
            pr.next_deadline.as_deref(),
            Some("2026-03-09T00:00:00-04:00"),
            "7 days from Mar 2, after the DST change"
        );
    }
}
