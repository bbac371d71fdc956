//! Every rule kind and repeat policy end to end: each test writes its own
//! catalog and programs, publishes events through Kafka, runs a real
//! processor against the real Redis, and checks the awards topic exactly
//! (ids, periods, evidence days, achieved dates, rule versions), including
//! the events that must not award.
//!
//! Waiting is by progress, never by the clock: a processor runs until its
//! metrics show it handled every published record, then stops, which drains
//! the batch in hand (awards acknowledged by the broker), so the awards topic
//! is complete when it is read.

mod common;

use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use common::*;
use incentives::engine::award_id_for;
use incentives::events::{AwardGranted, BirthReported, DataLogged, InputEvent};
use incentives::telemetry::Metrics;

const WAIT: Duration = Duration::from_secs(120);

const NEW_YORK: Tz = chrono_tz::America::New_York;
const CHICAGO: Tz = chrono_tz::America::Chicago;
const LOS_ANGELES: Tz = chrono_tz::America::Los_Angeles;
const BERLIN: Tz = chrono_tz::Europe::Berlin;
const LONDON: Tz = chrono_tz::Europe::London;

// ------------------------------------------------------------------ events

/// A local wall-clock time (`2026-03-04 01:00`) in `zone`, as a UTC instant
/// (RFC 3339). Panics on a time that does not exist or is ambiguous.
fn local(zone: Tz, at: &str) -> String {
    let naive = NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M").expect("local time");
    zone.from_local_datetime(&naive)
        .single()
        .unwrap_or_else(|| panic!("{at} is not a single local time in {zone}"))
        .with_timezone(&Utc)
        .to_rfc3339()
}

/// A data-logged event of employer `acme` at the local time `at` in `zone`,
/// carrying `zone` and the given data kinds.
fn logged_kinds(user: &str, zone: Tz, at: &str, kinds: &[&str]) -> InputEvent {
    InputEvent::DataLogged(DataLogged {
        event_id: format!("{user}@{at}"),
        user_id: user.into(),
        employer_id: "acme".into(),
        event_time: utc(&local(zone, at)),
        time_zone: Some(zone),
        data_kinds: kinds.iter().map(|k| k.to_string()).collect(),
    })
}

/// A mood log at the local time `at` in `zone`.
fn mood(user: &str, zone: Tz, at: &str) -> InputEvent {
    logged_kinds(user, zone, at, &["mood"])
}

/// A mood log at an explicit UTC instant, from a user in `zone`.
fn mood_utc(user: &str, zone: Tz, at_utc: &str) -> InputEvent {
    InputEvent::DataLogged(DataLogged {
        event_id: format!("{user}@{at_utc}"),
        user_id: user.into(),
        employer_id: "acme".into(),
        event_time: utc(at_utc),
        time_zone: Some(zone),
        data_kinds: vec!["mood".into()],
    })
}

/// A mood log at noon local time on each of `dates` (`2026-03-02`).
fn noons(user: &str, zone: Tz, dates: &[&str]) -> Vec<InputEvent> {
    dates
        .iter()
        .map(|d| mood(user, zone, &format!("{d} 12:00")))
        .collect()
}

/// March 2026 dates (`[2, 3]` -> `2026-03-02`, `2026-03-03`).
fn mar(days: &[u32]) -> Vec<String> {
    days.iter().map(|d| format!("2026-03-{d:02}")).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A birth report at the local time `at` in `zone`.
fn birth_report(user: &str, id: &str, zone: Tz, at: &str, birth_date: &str) -> InputEvent {
    InputEvent::BirthReported(BirthReported {
        event_id: id.into(),
        user_id: user.into(),
        employer_id: "acme".into(),
        event_time: utc(&local(zone, at)),
        time_zone: Some(zone),
        birth_date: date(birth_date),
    })
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
}

// ------------------------------------------------------------------ running

/// What a processor did with its input records (both input topics).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Outcomes {
    applied: u64,
    no_program: u64,
    dead_lettered: u64,
    duplicate: u64,
}

impl Outcomes {
    fn of(env: &TestEnv, metrics: &Metrics) -> Outcomes {
        let t = &env.config.settings.topics;
        let get = |outcome: &str| -> u64 {
            [&t.data_logged, &t.birth_reported]
                .iter()
                .map(|topic| {
                    metrics
                        .events
                        .with_label_values(&[topic.as_str(), outcome])
                        .get()
                })
                .sum()
        };
        Outcomes {
            applied: get("applied"),
            no_program: get("no_program"),
            dead_lettered: get("dead_lettered"),
            duplicate: get("duplicate"),
        }
    }

    /// Records decided one way or another (a duplicate is not a decision).
    fn handled(&self) -> u64 {
        self.applied + self.no_program + self.dead_lettered
    }
}

/// Runs a processor until it handled `records` new input records, then stops
/// it (the batch in hand is drained, its awards acknowledged), and returns
/// what it did and every award on the topic.
fn process(env: &TestEnv, records: usize) -> (Outcomes, Vec<AwardGranted>) {
    let p = env.start_processor();
    let metrics = p.metrics.clone();
    let deadline = Instant::now() + WAIT;
    loop {
        let o = Outcomes::of(env, &metrics);
        if o.handled() >= records as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the processor handled {o:?}, not {records} records, within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p.stop();
    (Outcomes::of(env, &metrics), env.all_awards())
}

/// Publishes `events` and processes them; nothing may be dead-lettered.
fn publish_and_process(env: &TestEnv, events: &[InputEvent]) -> (Outcomes, Vec<AwardGranted>) {
    env.publish(events);
    let (outcomes, awards) = process(env, events.len());
    assert_eq!(
        outcomes.dead_lettered, 0,
        "no event of these tests is bad or too late: {outcomes:?}"
    );
    (outcomes, awards)
}

/// Upstream re-sends every event (new offsets, same content) and a new
/// processor handles them: no award id may appear that was not there, and
/// none twice.
fn republish_gives_no_new_award(env: &TestEnv, events: &[InputEvent], before: &[AwardGranted]) {
    env.publish(events);
    let (outcomes, after) = process(env, events.len());
    assert_eq!(
        outcomes.handled(),
        events.len() as u64,
        "every re-sent event was handled: {outcomes:?}"
    );
    let describe = |awards: &[AwardGranted]| -> Vec<String> {
        awards
            .iter()
            .map(|a| {
                format!(
                    "{} {}/{} {} {}",
                    a.award_id, a.program_id, a.incentive_id, a.user_id, a.period
                )
            })
            .collect()
    };
    assert_eq!(
        id_counts(&after),
        id_counts(before),
        "re-sending the events decided again:\nbefore: {:#?}\nafter: {:#?}",
        describe(before),
        describe(&after)
    );
}

// ------------------------------------------------------------------ expectations

/// One expected award, completed by `by` (its time, id, zone and topic are
/// the award's `achieved_at`, `source` and `time_zone`).
struct Want {
    program: &'static str,
    incentive: &'static str,
    period: String,
    evidence: Vec<String>,
    achieved_local: &'static str,
    by: InputEvent,
}

fn want(
    program: &'static str,
    incentive: &'static str,
    period: &str,
    evidence: &[&str],
    achieved_local: &'static str,
    by: &InputEvent,
) -> Want {
    Want {
        program,
        incentive,
        period: period.to_string(),
        evidence: evidence.iter().map(|d| d.to_string()).collect(),
        achieved_local,
        by: by.clone(),
    }
}

/// The awards on the topic are exactly `wanted`, field by field.
fn assert_awards(env: &TestEnv, awards: &[AwardGranted], wanted: &[Want]) {
    let key = |p: &str, i: &str, u: &str, period: &str| format!("{p}/{i} {u} {period}");
    let mut got: Vec<&AwardGranted> = awards.iter().collect();
    got.sort_by_key(|a| key(&a.program_id, &a.incentive_id, &a.user_id, &a.period));
    let mut wanted: Vec<&Want> = wanted.iter().collect();
    wanted.sort_by_key(|w| key(w.program, w.incentive, w.by.user_id(), &w.period));
    let got_keys: Vec<String> = got
        .iter()
        .map(|a| key(&a.program_id, &a.incentive_id, &a.user_id, &a.period))
        .collect();
    let wanted_keys: Vec<String> = wanted
        .iter()
        .map(|w| key(w.program, w.incentive, w.by.user_id(), &w.period))
        .collect();
    assert_eq!(
        got_keys, wanted_keys,
        "awards (program/incentive user period); all: {awards:#?}"
    );
    for (a, w) in got.iter().zip(&wanted) {
        let what = key(w.program, w.incentive, w.by.user_id(), &w.period);
        let rule = env
            .config
            .programs
            .all()
            .find(|pi| pi.program_id == w.program && pi.incentive_id == w.incentive)
            .unwrap_or_else(|| panic!("{what}: no such program incentive"));
        assert_eq!(
            a.award_id,
            award_id_for(w.program, w.incentive, w.by.user_id(), &w.period),
            "{what}: award id"
        );
        assert_eq!(a.employer_id, "acme", "{what}");
        assert!(
            a.rule_version.starts_with("r-"),
            "{what}: rule version {:?}",
            a.rule_version
        );
        assert_eq!(a.rule_version, rule.rule_version, "{what}: rule version");
        assert_eq!(a.reward, rule.reward, "{what}: reward");
        let evidence: Vec<String> = a.evidence_days.iter().map(|d| d.to_string()).collect();
        assert_eq!(evidence, w.evidence, "{what}: evidence days");
        assert_eq!(
            a.achieved_local_date.to_string(),
            w.achieved_local,
            "{what}: achieved local date"
        );
        assert_eq!(
            a.achieved_at,
            w.by.event_time(),
            "{what}: achieved at (the completing event)"
        );
        assert_eq!(
            a.source.event_id,
            w.by.event_id(),
            "{what}: completing event"
        );
        let topic = match w.by {
            InputEvent::DataLogged(_) => &env.config.settings.topics.data_logged,
            InputEvent::BirthReported(_) => &env.config.settings.topics.birth_reported,
        };
        assert_eq!(&a.source.topic, topic, "{what}: source topic");
        let zone = w.by.time_zone().unwrap_or(rule.program_zone);
        assert_eq!(a.time_zone, zone.name(), "{what}: time zone");
    }
    let counts = id_counts(awards);
    assert!(
        counts.values().all(|&n| n == 1),
        "each award once: {counts:?}"
    );
}

fn find<'a>(events: &'a [InputEvent], user: &str, at_local: &str) -> &'a InputEvent {
    events
        .iter()
        .find(|e| e.user_id() == user && e.event_id() == format!("{user}@{at_local}"))
        .unwrap_or_else(|| panic!("no event {user}@{at_local}"))
}

fn reward(code: &str) -> String {
    format!("reward = {{ kind = \"points\", code = \"{code}\", description = \"{code} points\" }}")
}

// ------------------------------------------------------------------ 1. rollover hour

const ROLLOVER_CATALOG: &str = r#"
[incentives.streak3-night-owl]
description = "Three days in a row; activity before 04:00 counts for the day before"
event = "data_logged"
rule = { kind = "streak", days = 3, rollover_hour = 4 }

[incentives.streak3]
description = "Three days in a row"
event = "data_logged"
rule = { kind = "streak", days = 3 }
"#;

#[test]
fn a_streak_with_a_rollover_hour_counts_the_small_hours_for_the_day_before() {
    let programs = format!(
        r#"
[[programs]]
id = "acme-nights"
employer_id = "acme"
time_zone = "America/New_York"
starts_on = 2026-03-01
ends_on = 2026-03-31
incentives = [
  {{ incentive = "streak3-night-owl", {r1} }},
  {{ incentive = "streak3", {r2} }},
]

[[programs]]
id = "acme-nights-override"
employer_id = "acme"
time_zone = "America/New_York"
starts_on = 2026-03-01
ends_on = 2026-03-31
incentives = [
  {{ incentive = "streak3", rollover_hour = 4, {r3} }},
]
"#,
        r1 = reward("10"),
        r2 = reward("20"),
        r3 = reward("30")
    );
    let env = TestEnv::with_catalog_and_programs("rollover", 3, ROLLOVER_CATALOG, &programs);
    // The DST night: 03:30 EDT on Mar 8 is 07:30Z (the clocks jumped 02:00 -> 03:00).
    assert_eq!(
        local(NEW_YORK, "2026-03-08 03:30"),
        "2026-03-08T07:30:00+00:00"
    );
    assert_eq!(
        local(NEW_YORK, "2026-03-04 01:00"),
        "2026-03-04T06:00:00+00:00"
    );
    let events = vec![
        // Evening Mar 2, 01:00 on Mar 4 (counts for Mar 3 with the rollover),
        // evening Mar 4: Mar 2, 3, 4 with it; Mar 2, 4, 4 without.
        mood("owl", NEW_YORK, "2026-03-02 20:00"),
        mood("owl", NEW_YORK, "2026-03-04 01:00"),
        mood("owl", NEW_YORK, "2026-03-04 19:00"),
        // Across the spring-forward night: 03:30 EDT is before 04:00 local.
        mood("owl-dst", NEW_YORK, "2026-03-06 21:00"),
        mood("owl-dst", NEW_YORK, "2026-03-08 03:30"),
        mood("owl-dst", NEW_YORK, "2026-03-08 21:00"),
        // 04:00 sharp is the new day already: Mar 2, 4, 4 under every rule.
        mood("early-bird", NEW_YORK, "2026-03-02 20:00"),
        mood("early-bird", NEW_YORK, "2026-03-04 04:00"),
        mood("early-bird", NEW_YORK, "2026-03-04 19:00"),
    ];
    let (_, awards) = publish_and_process(&env, &events);
    let owl_done = find(&events, "owl", "2026-03-04 19:00");
    let dst_done = find(&events, "owl-dst", "2026-03-08 21:00");
    let owl_days = ["2026-03-02", "2026-03-03", "2026-03-04"];
    let dst_days = ["2026-03-06", "2026-03-07", "2026-03-08"];
    assert_awards(
        &env,
        &awards,
        &[
            want(
                "acme-nights",
                "streak3-night-owl",
                "program",
                &owl_days,
                "2026-03-04",
                owl_done,
            ),
            want(
                "acme-nights",
                "streak3-night-owl",
                "program",
                &dst_days,
                "2026-03-08",
                dst_done,
            ),
            // The program-level override gives the plain streak the rollover.
            want(
                "acme-nights-override",
                "streak3",
                "program",
                &owl_days,
                "2026-03-04",
                owl_done,
            ),
            want(
                "acme-nights-override",
                "streak3",
                "program",
                &dst_days,
                "2026-03-08",
                dst_done,
            ),
            // Without a rollover (acme-nights/streak3) the same events are no streak.
        ],
    );
    let plain = |p: &str| {
        env.config
            .programs
            .all()
            .find(|pi| pi.program_id == p && pi.incentive_id == "streak3")
            .unwrap()
            .rule_version
            .clone()
    };
    assert_ne!(
        plain("acme-nights"),
        plain("acme-nights-override"),
        "the override is part of the rule version"
    );
}

// ------------------------------------------------------------------ 2. grace days

const GRACE_CATALOG: &str = r#"
[incentives.streak4-grace]
description = "Four days in a row, one missed day forgiven"
event = "data_logged"
rule = { kind = "streak", days = 4, grace_days = 1 }

[incentives.streak4]
description = "Four days in a row (programs may forgive missed days)"
event = "data_logged"
rule = { kind = "streak", days = 4 }

[incentives.streak4-strict]
description = "Four days in a row, no exceptions"
event = "data_logged"
rule = { kind = "streak", days = 4 }
"#;

#[test]
fn a_streak_with_grace_days_forgives_single_missed_days_only() {
    let programs = format!(
        r#"
[[programs]]
id = "acme-grace"
employer_id = "acme"
time_zone = "Europe/Berlin"
starts_on = 2026-03-01
ends_on = 2026-03-31
incentives = [
  {{ incentive = "streak4-grace", {r1} }},
  {{ incentive = "streak4", grace_days = 1, {r2} }},
  {{ incentive = "streak4-strict", {r3} }},
]
"#,
        r1 = reward("10"),
        r2 = reward("20"),
        r3 = reward("30")
    );
    let env = TestEnv::with_catalog_and_programs("grace", 3, GRACE_CATALOG, &programs);
    let steady = mar(&[2, 3, 4, 5]);
    let one_miss = mar(&[2, 3, 5, 6]); // Mar 4 missed
    let two_day_gap = mar(&[2, 3, 6, 7]); // Mar 4 and 5 missed
    let two_misses = mar(&[1, 2, 4, 6]); // Mar 3 and 5 missed
    let short = mar(&[2, 3, 5]); // a grace day is no day: three present days
    let mut events = Vec::new();
    events.extend(noons("steady", BERLIN, &strs(&steady)));
    events.extend(noons("one-miss", BERLIN, &strs(&one_miss)));
    events.extend(noons("two-day-gap", BERLIN, &strs(&two_day_gap)));
    events.extend(noons("two-misses", BERLIN, &strs(&two_misses)));
    events.extend(noons("short", BERLIN, &strs(&short)));
    let (_, awards) = publish_and_process(&env, &events);
    let steady_done = find(&events, "steady", "2026-03-05 12:00");
    let miss_done = find(&events, "one-miss", "2026-03-06 12:00");
    let mut wanted = Vec::new();
    for incentive in ["streak4-grace", "streak4", "streak4-strict"] {
        wanted.push(want(
            "acme-grace",
            incentive,
            "program",
            &strs(&steady),
            "2026-03-05",
            steady_done,
        ));
    }
    // The catalog's grace day and the program's override forgive Mar 4;
    // the strict rule does not.
    for incentive in ["streak4-grace", "streak4"] {
        wanted.push(want(
            "acme-grace",
            incentive,
            "program",
            &strs(&one_miss),
            "2026-03-06",
            miss_done,
        ));
    }
    assert_awards(&env, &awards, &wanted);
}

// ------------------------------------------------------------------ 3. count within a window

#[test]
fn a_count_needs_its_events_on_distinct_days_within_the_window() {
    let catalog = r#"
[incentives.four-in-7]
description = "Four logs on at least two days within a week"
event = "data_logged"
rule = { kind = "count", events = 4, distinct_days = 2, window_days = 7 }
"#;
    let programs = format!(
        r#"
[[programs]]
id = "acme-counts"
employer_id = "acme"
time_zone = "America/Chicago"
starts_on = 2026-03-01
ends_on = 2026-03-31
incentives = [ {{ incentive = "four-in-7", {r} }} ]
"#,
        r = reward("40")
    );
    let env = TestEnv::with_catalog_and_programs("count", 3, catalog, &programs);
    let at = |user: &str, times: &[&str]| -> Vec<InputEvent> {
        times.iter().map(|t| mood(user, CHICAGO, t)).collect()
    };
    let mut events = Vec::new();
    // Three logs on Mon Mar 2 and one on Sun Mar 8 (after the DST change):
    // Mar 2..8 is seven days.
    events.extend(at(
        "two-days",
        &[
            "2026-03-02 09:00",
            "2026-03-02 12:00",
            "2026-03-02 18:00",
            "2026-03-08 12:00",
        ],
    ));
    // Five logs, one day.
    events.extend(at(
        "one-day",
        &[
            "2026-03-02 08:00",
            "2026-03-02 10:00",
            "2026-03-02 12:00",
            "2026-03-02 14:00",
            "2026-03-02 16:00",
        ],
    ));
    // Mar 2..9 is eight days: the fourth log is outside the first three's week.
    events.extend(at(
        "too-spread",
        &[
            "2026-03-02 09:00",
            "2026-03-02 12:00",
            "2026-03-02 18:00",
            "2026-03-09 12:00",
        ],
    ));
    // One a day.
    events.extend(at(
        "daily",
        &[
            "2026-03-02 12:00",
            "2026-03-03 12:00",
            "2026-03-04 12:00",
            "2026-03-05 12:00",
        ],
    ));
    // Late evening local is still the same local day (not the next UTC day).
    events.extend(at(
        "evenings",
        &[
            "2026-03-02 22:30",
            "2026-03-02 23:30",
            "2026-03-02 23:59",
            "2026-03-03 00:30",
        ],
    ));
    let (_, awards) = publish_and_process(&env, &events);
    assert_awards(
        &env,
        &awards,
        &[
            want(
                "acme-counts",
                "four-in-7",
                "program",
                &["2026-03-02", "2026-03-08"],
                "2026-03-08",
                find(&events, "two-days", "2026-03-08 12:00"),
            ),
            want(
                "acme-counts",
                "four-in-7",
                "program",
                &["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05"],
                "2026-03-05",
                find(&events, "daily", "2026-03-05 12:00"),
            ),
            want(
                "acme-counts",
                "four-in-7",
                "program",
                &["2026-03-02", "2026-03-03"],
                "2026-03-03",
                find(&events, "evenings", "2026-03-03 00:30"),
            ),
        ],
    );
}

// ------------------------------------------------------------------ 4. once with a birth date condition

#[test]
fn a_birth_counts_only_when_born_within_the_program() {
    let catalog = r#"
[incentives.birth-in-program]
description = "A baby born during the program"
event = "birth_reported"
rule = { kind = "once", birth_date_within_program = true }

[incentives.birth-any]
description = "Reported a birth"
event = "birth_reported"
rule = { kind = "once" }
"#;
    let programs = format!(
        r#"
[[programs]]
id = "acme-babies"
employer_id = "acme"
time_zone = "Europe/London"
starts_on = 2026-03-01
ends_on = 2026-12-31
incentives = [
  {{ incentive = "birth-in-program", {r1} }},
  {{ incentive = "birth-any", {r2} }},
]
"#,
        r1 = reward("100"),
        r2 = reward("5")
    );
    let env = TestEnv::with_catalog_and_programs("births", 3, catalog, &programs);
    let events = vec![
        birth_report(
            "inside",
            "b-inside",
            LONDON,
            "2026-03-12 10:00",
            "2026-03-10",
        ),
        birth_report(
            "first-day",
            "b-first-day",
            LONDON,
            "2026-03-02 10:00",
            "2026-03-01",
        ),
        birth_report(
            "before",
            "b-before",
            LONDON,
            "2026-03-03 10:00",
            "2026-02-20",
        ),
        // A report with the wrong date, then the corrected one.
        birth_report(
            "corrected",
            "b-corrected-1",
            LONDON,
            "2026-03-05 10:00",
            "2026-02-27",
        ),
        birth_report(
            "corrected",
            "b-corrected-2",
            LONDON,
            "2026-03-05 11:00",
            "2026-03-02",
        ),
    ];
    let (_, awards) = publish_and_process(&env, &events);
    let by_id = |id: &str| events.iter().find(|e| e.event_id() == id).unwrap();
    let once = |incentive: &'static str, id: &str, day: &'static str| {
        want("acme-babies", incentive, "program", &[day], day, by_id(id))
    };
    assert_awards(
        &env,
        &awards,
        &[
            once("birth-in-program", "b-inside", "2026-03-12"),
            once("birth-any", "b-inside", "2026-03-12"),
            once("birth-in-program", "b-first-day", "2026-03-02"),
            once("birth-any", "b-first-day", "2026-03-02"),
            // Born before the program: only the unconditional incentive.
            once("birth-any", "b-before", "2026-03-03"),
            // The first report earns the unconditional one, the correction the other.
            once("birth-any", "b-corrected-1", "2026-03-05"),
            once("birth-in-program", "b-corrected-2", "2026-03-05"),
        ],
    );
}

// ------------------------------------------------------------------ 5. filters

#[test]
fn a_filter_counts_only_the_listed_data_kinds() {
    let catalog = r#"
[incentives.mood-streak3]
description = "Logged a mood three days in a row"
event = "data_logged"
rule = { kind = "streak", days = 3 }
filter = { data_kinds = ["mood"] }

[incentives.any-streak3]
description = "Logged anything three days in a row"
event = "data_logged"
rule = { kind = "streak", days = 3 }
"#;
    let programs = format!(
        r#"
[[programs]]
id = "acme-moods"
employer_id = "acme"
time_zone = "America/New_York"
starts_on = 2026-03-01
incentives = [
  {{ incentive = "mood-streak3", {r1} }},
  {{ incentive = "any-streak3", {r2} }},
]
"#,
        r1 = reward("15"),
        r2 = reward("10")
    );
    let env = TestEnv::with_catalog_and_programs("filters", 3, catalog, &programs);
    let log = |user: &str, day: u32, kinds: &[&str]| {
        logged_kinds(user, NEW_YORK, &format!("2026-03-{day:02} 12:00"), kinds)
    };
    let events = vec![
        log("mixed", 2, &["symptom"]),
        log("mixed", 3, &["symptom", "sleep"]),
        log("mixed", 4, &["mood", "symptom"]),
        log("mixed", 5, &["mood"]),
        log("mixed", 6, &["mood"]),
        log("symptoms-only", 2, &["symptom"]),
        log("symptoms-only", 3, &["symptom"]),
        log("symptoms-only", 4, &["symptom"]),
        log("mood-gap", 2, &["mood"]),
        log("mood-gap", 3, &["symptom"]),
        log("mood-gap", 4, &["mood"]),
    ];
    let (_, awards) = publish_and_process(&env, &events);
    let day4 = |u: &str| find(&events, u, "2026-03-04 12:00");
    let first3 = ["2026-03-02", "2026-03-03", "2026-03-04"];
    assert_awards(
        &env,
        &awards,
        &[
            want(
                "acme-moods",
                "any-streak3",
                "program",
                &first3,
                "2026-03-04",
                day4("mixed"),
            ),
            want(
                "acme-moods",
                "mood-streak3",
                "program",
                &["2026-03-04", "2026-03-05", "2026-03-06"],
                "2026-03-06",
                find(&events, "mixed", "2026-03-06 12:00"),
            ),
            want(
                "acme-moods",
                "any-streak3",
                "program",
                &first3,
                "2026-03-04",
                day4("symptoms-only"),
            ),
            want(
                "acme-moods",
                "any-streak3",
                "program",
                &first3,
                "2026-03-04",
                day4("mood-gap"),
            ),
        ],
    );
}

// ------------------------------------------------------------------ 6. repeat policies

const STREAK3_CATALOG: &str = r#"
[incentives.streak3]
description = "Three days in a row"
event = "data_logged"
rule = { kind = "streak", days = 3 }
"#;

/// A world whose one program (New York, all of 2026) attaches `streak3`
/// with the given repeat policy.
fn repeat_env(name: &str, repeat: &str) -> TestEnv {
    let programs = format!(
        r#"
[[programs]]
id = "acme-repeat"
employer_id = "acme"
time_zone = "America/New_York"
starts_on = 2026-01-01
ends_on = 2026-12-31
incentives = [ {{ incentive = "streak3", repeat = "{repeat}", {r} }} ]
"#,
        r = reward("25")
    );
    TestEnv::with_catalog_and_programs(name, 3, STREAK3_CATALOG, &programs)
}

#[test]
fn weekly_repeat_awards_once_per_iso_week() {
    let env = repeat_env("weekly", "weekly");
    let mut events = Vec::new();
    // Mon Mar 2 .. Wed Mar 11: W10 completes Wed Mar 4; Thu..Sun of W10 count
    // for nothing; W11 needs a new streak: Mon 9, Tue 10, Wed 11.
    events.extend(noons(
        "daily",
        NEW_YORK,
        &strs(&mar(&(2..=11).collect::<Vec<_>>())),
    ));
    // Sat 7, Sun 8 (W10), Mon 9 (W11): completes in W11; Tue..Thu of W11 do
    // not award again.
    events.extend(noons(
        "straddle",
        NEW_YORK,
        &strs(&mar(&[7, 8, 9, 10, 11, 12])),
    ));
    // A whole week, Mon..Sun: one award, although Mar 5..7 is a second streak.
    events.extend(noons(
        "one-week",
        NEW_YORK,
        &strs(&mar(&(2..=8).collect::<Vec<_>>())),
    ));
    let (_, awards) = publish_and_process(&env, &events);
    let by = |u: &str, d: u32| find(&events, u, &format!("2026-03-{d:02} 12:00"));
    assert_awards(
        &env,
        &awards,
        &[
            want(
                "acme-repeat",
                "streak3",
                "2026-W10",
                &strs(&mar(&[2, 3, 4])),
                "2026-03-04",
                by("daily", 4),
            ),
            want(
                "acme-repeat",
                "streak3",
                "2026-W11",
                &strs(&mar(&[9, 10, 11])),
                "2026-03-11",
                by("daily", 11),
            ),
            want(
                "acme-repeat",
                "streak3",
                "2026-W11",
                &strs(&mar(&[7, 8, 9])),
                "2026-03-09",
                by("straddle", 9),
            ),
            want(
                "acme-repeat",
                "streak3",
                "2026-W10",
                &strs(&mar(&[2, 3, 4])),
                "2026-03-04",
                by("one-week", 4),
            ),
        ],
    );
    republish_gives_no_new_award(&env, &events, &awards);
}

#[test]
fn monthly_repeat_awards_once_per_month_of_the_program_zone() {
    let env = repeat_env("monthly", "monthly");
    let days = |from: NaiveDate, n: u64| -> Vec<String> {
        from.iter_days()
            .take(n as usize)
            .map(|d| d.to_string())
            .collect()
    };
    let mut events = Vec::new();
    // Mar 28 .. Apr 5: March completes Mar 30, Mar 31 counts for nothing,
    // April needs a new streak: Apr 1, 2, 3.
    events.extend(noons(
        "month-end",
        NEW_YORK,
        &strs(&days(date("2026-03-28"), 9)),
    ));
    // Mar 30, 31, Apr 1: completes in April, with March days as evidence.
    events.extend(noons(
        "across",
        NEW_YORK,
        &strs(&days(date("2026-03-30"), 3)),
    ));
    // A user in Berlin, logging at 04:00 local (22:00 the evening before in
    // New York): Berlin days Mar 30, 31, Apr 1 complete on the New York date
    // Mar 31, so the period is March (the program's zone) while the achieved
    // local day is Apr 1 (the user's).
    for at in [
        "2026-03-30T02:00:00Z",
        "2026-03-31T02:00:00Z",
        "2026-04-01T02:00:00Z",
        "2026-04-02T02:00:00Z",
    ] {
        events.push(mood_utc("berlin", BERLIN, at));
    }
    let (_, awards) = publish_and_process(&env, &events);
    let by = |u: &str, d: &str| find(&events, u, &format!("{d} 12:00"));
    let berlin_done = events
        .iter()
        .find(|e| e.event_id() == "berlin@2026-04-01T02:00:00Z")
        .unwrap();
    assert_awards(
        &env,
        &awards,
        &[
            want(
                "acme-repeat",
                "streak3",
                "2026-03",
                &["2026-03-28", "2026-03-29", "2026-03-30"],
                "2026-03-30",
                by("month-end", "2026-03-30"),
            ),
            want(
                "acme-repeat",
                "streak3",
                "2026-04",
                &["2026-04-01", "2026-04-02", "2026-04-03"],
                "2026-04-03",
                by("month-end", "2026-04-03"),
            ),
            want(
                "acme-repeat",
                "streak3",
                "2026-04",
                &["2026-03-30", "2026-03-31", "2026-04-01"],
                "2026-04-01",
                by("across", "2026-04-01"),
            ),
            want(
                "acme-repeat",
                "streak3",
                "2026-03",
                &["2026-03-30", "2026-03-31", "2026-04-01"],
                "2026-04-01",
                berlin_done,
            ),
        ],
    );
    republish_gives_no_new_award(&env, &events, &awards);
}

/// Every completion awards, each for the period of its first counted day.
fn every_completion_case() -> (TestEnv, Vec<InputEvent>, Vec<AwardGranted>) {
    let env = repeat_env("every", "every_completion");
    let mut events = Vec::new();
    // Mar 1..9 (across the DST change): three streaks of three.
    events.extend(noons(
        "daily",
        NEW_YORK,
        &strs(&mar(&(1..=9).collect::<Vec<_>>())),
    ));
    // Mar 1, 2, then a gap; Mar 4, 5, 6: one streak, from Mar 4.
    events.extend(noons("gappy", NEW_YORK, &strs(&mar(&[1, 2, 4, 5, 6]))));
    let (_, awards) = publish_and_process(&env, &events);
    let by = |u: &str, d: u32| find(&events, u, &format!("2026-03-{d:02} 12:00"));
    assert_awards(
        &env,
        &awards,
        &[
            want(
                "acme-repeat",
                "streak3",
                "from-2026-03-01",
                &strs(&mar(&[1, 2, 3])),
                "2026-03-03",
                by("daily", 3),
            ),
            want(
                "acme-repeat",
                "streak3",
                "from-2026-03-04",
                &strs(&mar(&[4, 5, 6])),
                "2026-03-06",
                by("daily", 6),
            ),
            want(
                "acme-repeat",
                "streak3",
                "from-2026-03-07",
                &strs(&mar(&[7, 8, 9])),
                "2026-03-09",
                by("daily", 9),
            ),
            want(
                "acme-repeat",
                "streak3",
                "from-2026-03-04",
                &strs(&mar(&[4, 5, 6])),
                "2026-03-06",
                by("gappy", 6),
            ),
        ],
    );
    (env, events, awards)
}

#[test]
fn every_completion_repeat_awards_each_completion_for_its_own_period() {
    every_completion_case();
}

#[test]
fn every_completion_repeat_decides_nothing_again_when_the_events_are_re_sent() {
    let (env, events, awards) = every_completion_case();
    republish_gives_no_new_award(&env, &events, &awards);
}

#[test]
fn every_completion_counts_each_day_for_one_completion_however_often_the_user_logs() {
    let env = repeat_env("every-twice", "every_completion");
    // Logging twice a day (09:00 and 18:00) on Mar 1..9 earns what logging
    // once a day does: the 18:00 log of a completing day is not the first
    // day of the next streak.
    let mut events = Vec::new();
    for d in mar(&(1..=9).collect::<Vec<_>>()) {
        events.push(mood("twice", NEW_YORK, &format!("{d} 09:00")));
        events.push(mood("twice", NEW_YORK, &format!("{d} 18:00")));
    }
    let (_, awards) = publish_and_process(&env, &events);
    let by = |d: u32| find(&events, "twice", &format!("2026-03-{d:02} 09:00"));
    assert_awards(
        &env,
        &awards,
        &[
            want(
                "acme-repeat",
                "streak3",
                "from-2026-03-01",
                &strs(&mar(&[1, 2, 3])),
                "2026-03-03",
                by(3),
            ),
            want(
                "acme-repeat",
                "streak3",
                "from-2026-03-04",
                &strs(&mar(&[4, 5, 6])),
                "2026-03-06",
                by(6),
            ),
            want(
                "acme-repeat",
                "streak3",
                "from-2026-03-07",
                &strs(&mar(&[7, 8, 9])),
                "2026-03-09",
                by(9),
            ),
        ],
    );
}

#[test]
fn every_completion_re_sent_events_of_a_decided_completion_do_not_block_the_next() {
    let env = repeat_env("every-block", "every_completion");
    let first = noons("user", NEW_YORK, &strs(&mar(&[1, 2, 3])));
    let (_, before) = publish_and_process(&env, &first);
    assert_eq!(before.len(), 1, "{before:#?}");
    // Upstream re-sends the three events (new offsets), then the user logs
    // Mar 4, 5, 6: a new streak, from Mar 4.
    let mut then = first.clone();
    then.extend(noons("user", NEW_YORK, &strs(&mar(&[4, 5, 6]))));
    let (_, awards) = publish_and_process(&env, &then);
    assert_awards(
        &env,
        &awards,
        &[
            want(
                "acme-repeat",
                "streak3",
                "from-2026-03-01",
                &strs(&mar(&[1, 2, 3])),
                "2026-03-03",
                &first[2],
            ),
            want(
                "acme-repeat",
                "streak3",
                "from-2026-03-04",
                &strs(&mar(&[4, 5, 6])),
                "2026-03-06",
                find(&then, "user", "2026-03-06 12:00"),
            ),
        ],
    );
}

#[test]
fn once_repeat_awards_once_per_program() {
    let env = repeat_env("once", "once");
    let mut events = Vec::new();
    events.extend(noons(
        "daily",
        NEW_YORK,
        &strs(&mar(&(1..=9).collect::<Vec<_>>())),
    ));
    events.extend(noons("later", NEW_YORK, &strs(&mar(&[5, 6, 7, 9, 10, 11]))));
    let (_, awards) = publish_and_process(&env, &events);
    let by = |u: &str, d: u32| find(&events, u, &format!("2026-03-{d:02} 12:00"));
    assert_awards(
        &env,
        &awards,
        &[
            want(
                "acme-repeat",
                "streak3",
                "program",
                &strs(&mar(&[1, 2, 3])),
                "2026-03-03",
                by("daily", 3),
            ),
            want(
                "acme-repeat",
                "streak3",
                "program",
                &strs(&mar(&[5, 6, 7])),
                "2026-03-07",
                by("later", 7),
            ),
        ],
    );
    republish_gives_no_new_award(&env, &events, &awards);
}

// ------------------------------------------------------------------ 7. program dates

#[test]
fn events_outside_the_program_dates_in_its_zone_do_not_count() {
    // Mar 2..6 in Los Angeles; the users live in London (8 hours ahead).
    let programs = format!(
        r#"
[[programs]]
id = "acme-one-week"
employer_id = "acme"
time_zone = "America/Los_Angeles"
starts_on = 2026-03-02
ends_on = 2026-03-06
incentives = [ {{ incentive = "streak3", {r} }} ]
"#,
        r = reward("50")
    );
    let env = TestEnv::with_catalog_and_programs("dates", 3, STREAK3_CATALOG, &programs);
    assert_eq!(
        local(LOS_ANGELES, "2026-03-01 23:00"),
        "2026-03-02T07:00:00+00:00"
    );
    let events = vec![
        // Mar 2 07:00 in London is still Mar 1 in Los Angeles: not counted,
        // so London days Mar 3 and 4 are only two.
        mood("too-early", LONDON, "2026-03-02 07:00"),
        mood("too-early", LONDON, "2026-03-03 12:00"),
        mood("too-early", LONDON, "2026-03-04 12:00"),
        // 09:00 in London is 01:00 on Mar 2 in Los Angeles: counted.
        mood("first-hours", LONDON, "2026-03-02 09:00"),
        mood("first-hours", LONDON, "2026-03-03 12:00"),
        mood("first-hours", LONDON, "2026-03-04 12:00"),
        // Mar 7 07:00 in London is Mar 6 23:00 in Los Angeles: counted, for
        // the user's local day Mar 7.
        mood("last-hours", LONDON, "2026-03-05 12:00"),
        mood("last-hours", LONDON, "2026-03-06 12:00"),
        mood("last-hours", LONDON, "2026-03-07 07:00"),
        // Mar 7 09:00 in London is Mar 7 01:00 in Los Angeles: after the end.
        mood("too-late", LONDON, "2026-03-05 12:00"),
        mood("too-late", LONDON, "2026-03-06 12:00"),
        mood("too-late", LONDON, "2026-03-07 09:00"),
    ];
    let (outcomes, awards) = publish_and_process(&env, &events);
    assert_eq!(
        (outcomes.applied, outcomes.no_program),
        (10, 2),
        "the two events outside the program are skipped as no_program: {outcomes:?}"
    );
    assert_awards(
        &env,
        &awards,
        &[
            want(
                "acme-one-week",
                "streak3",
                "program",
                &strs(&mar(&[2, 3, 4])),
                "2026-03-04",
                find(&events, "first-hours", "2026-03-04 12:00"),
            ),
            want(
                "acme-one-week",
                "streak3",
                "program",
                &strs(&mar(&[5, 6, 7])),
                "2026-03-07",
                find(&events, "last-hours", "2026-03-07 07:00"),
            ),
        ],
    );
}
