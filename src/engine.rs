//! The decision logic, pure: given a user's state and an event, which
//! programs count it, which days it adds, and which awards it completes.
//! No I/O here; `state` loads and stores [`UserState`], `processor` drives it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::{ProgramIncentive, Programs, RuleDef};
use crate::days::{date_from_day_number, day_number, local_date};
use crate::dead_letter::DeadLetterReason;
use crate::events::{AwardGranted, EventKind, InputEvent, SourceEvent};

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

/// The limits that decide whether an event may count at all.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Lateness window, behind the user's watermark, in milliseconds.
    pub lateness_ms: i64,
    /// The same window in whole days (for pruning day lists).
    pub lateness_days: i32,
    /// How far ahead of the wall clock an event may be, in milliseconds.
    pub max_clock_skew_ms: i64,
}

/// Why an event was not applied (it is dead-lettered with this reason).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: DeadLetterReason,
    pub detail: String,
}

/// A user's derived state, as stored in one Redis hash.
///
/// Fields: `wm:<kind>` watermark (event time ms of the latest applied event of
/// that kind), `s:<rule_key>` streak days (comma-separated day numbers,
/// ascending), `a:<rule_key>@<period>` award marker (the award id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserState {
    pub watermarks: BTreeMap<EventKind, i64>,
    pub streak_days: BTreeMap<String, Vec<i32>>,
    pub awards: BTreeMap<String, String>,
}

impl UserState {
    /// Rebuilds the state from a Redis hash. Unknown or malformed fields are
    /// dropped (and counted by the caller through the returned number).
    pub fn from_fields(fields: impl IntoIterator<Item = (String, String)>) -> (UserState, usize) {
        let mut state = UserState::default();
        let mut malformed = 0;
        for (field, value) in fields {
            if let Some(tag) = field.strip_prefix("wm:") {
                let kind = match tag {
                    "dl" => EventKind::DataLogged,
                    "br" => EventKind::BirthReported,
                    _ => {
                        malformed += 1;
                        continue;
                    }
                };
                match value.parse() {
                    Ok(ms) => {
                        state.watermarks.insert(kind, ms);
                    }
                    Err(_) => malformed += 1,
                }
            } else if let Some(rule_key) = field.strip_prefix("s:") {
                let mut days: Vec<i32> = Vec::new();
                for part in value.split(',').filter(|p| !p.is_empty()) {
                    match part.parse() {
                        Ok(d) => days.push(d),
                        Err(_) => malformed += 1,
                    }
                }
                days.sort_unstable();
                days.dedup();
                state.streak_days.insert(rule_key.to_string(), days);
            } else if let Some(marker) = field.strip_prefix("a:") {
                state.awards.insert(marker.to_string(), value);
            } else {
                malformed += 1;
            }
        }
        (state, malformed)
    }

    /// The Redis hash of this state (the whole hash: the writer replaces it).
    pub fn to_fields(&self) -> Vec<(String, String)> {
        let mut fields =
            Vec::with_capacity(self.watermarks.len() + self.streak_days.len() + self.awards.len());
        for (kind, ms) in &self.watermarks {
            fields.push((format!("wm:{}", kind.tag()), ms.to_string()));
        }
        for (rule_key, days) in &self.streak_days {
            if days.is_empty() {
                continue;
            }
            let joined = days
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            fields.push((format!("s:{rule_key}"), joined));
        }
        for (marker, award_id) in &self.awards {
            fields.push((format!("a:{marker}"), award_id.clone()));
        }
        fields
    }

    pub fn has_awards(&self) -> bool {
        !self.awards.is_empty()
    }

    pub fn is_awarded(&self, rule_key: &str, period: &str) -> bool {
        self.awards.contains_key(&marker(rule_key, period))
    }
}

fn marker(rule_key: &str, period: &str) -> String {
    format!("{rule_key}@{period}")
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

/// Applies `event` to `state` for the given rules; returns the awards it
/// completes. A rejected event leaves the state untouched.
pub fn apply_event(
    state: &mut UserState,
    event: &InputEvent,
    rules: &[&ProgramIncentive],
    source: &SourceEvent,
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

    let mut awards = Vec::new();
    for rule in rules {
        if state.is_awarded(&rule.rule_key, PERIOD_PROGRAM) {
            continue;
        }
        let zone = event.time_zone().unwrap_or(rule.program_zone);
        let date = local_date(at, zone);
        let evidence = match rule.rule {
            RuleDef::Once => Some(vec![day_number(date)]),
            RuleDef::Streak { days: needed } => {
                let days = state.streak_days.entry(rule.rule_key.clone()).or_default();
                add_day(days, day_number(date));
                prune_days(days, needed as i32 + limits.lateness_days + 1);
                completed_run(days, day_number(date), needed as i32)
            }
        };
        let Some(evidence) = evidence else { continue };
        let award = AwardGranted {
            award_id: award_id_for(
                &rule.program_id,
                &rule.incentive_id,
                event.user_id(),
                PERIOD_PROGRAM,
            ),
            user_id: event.user_id().to_string(),
            employer_id: event.employer_id().to_string(),
            program_id: rule.program_id.clone(),
            incentive_id: rule.incentive_id.clone(),
            rule_version: rule.rule_version.clone(),
            period: PERIOD_PROGRAM.to_string(),
            reward: rule.reward.clone(),
            achieved_at: at,
            achieved_local_date: date,
            time_zone: zone.name().to_string(),
            source: source.clone(),
            evidence_days: evidence.into_iter().map(date_from_day_number).collect(),
        };
        state.streak_days.remove(&rule.rule_key);
        state.awards.insert(
            marker(&rule.rule_key, PERIOD_PROGRAM),
            award.award_id.clone(),
        );
        awards.push(award);
    }
    Ok(awards)
}

/// Inserts `day` into the sorted, duplicate-free `days`.
fn add_day(days: &mut Vec<i32>, day: i32) {
    if let Err(i) = days.binary_search(&day) {
        days.insert(i, day);
    }
}

/// Drops days that can no longer be part of a streak: anything `keep_days`
/// or more before the newest day.
fn prune_days(days: &mut Vec<i32>, keep_days: i32) {
    if let Some(&newest) = days.last() {
        let oldest_kept = newest - keep_days;
        let cut = days.partition_point(|&d| d < oldest_kept);
        days.drain(..cut);
    }
}

/// The run of consecutive days containing `day`, when it is at least
/// `needed` long. Only runs through the new day can be newly complete.
pub fn completed_run(days: &[i32], day: i32, needed: i32) -> Option<Vec<i32>> {
    let i = days.binary_search(&day).ok()?;
    let mut start = i;
    while start > 0 && days[start - 1] == days[start] - 1 {
        start -= 1;
    }
    let mut end = i;
    while end + 1 < days.len() && days[end + 1] == days[end] + 1 {
        end += 1;
    }
    let run = &days[start..=end];
    (run.len() as i32 >= needed).then(|| run.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_programs;
    use crate::events::{BirthReported, DataLogged};
    use chrono::NaiveDate;
    use std::path::Path;

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

    fn source() -> SourceEvent {
        SourceEvent {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            event_id: "e".into(),
        }
    }

    /// Applies events in order; returns all awards.
    fn run(state: &mut UserState, events: &[InputEvent]) -> Vec<AwardGranted> {
        let p = programs();
        let mut out = Vec::new();
        for e in events {
            let rules = matching_rules(&p, e);
            out.extend(apply_event(state, e, &rules, &source(), &LIMITS).unwrap());
        }
        out
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
        assert!(s.streak_days.is_empty(), "days are dropped once awarded");
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
        let err = apply_event(
            &mut s,
            &late,
            &matching_rules(&p, &late),
            &source(),
            &LIMITS,
        )
        .unwrap_err();
        assert_eq!(err.reason, DeadLetterReason::TooLate);
        assert_eq!(s, before, "a rejected event changes nothing");
        let in_window = logged("u1", &day(7), None);
        assert!(apply_event(
            &mut s,
            &in_window,
            &matching_rules(&p, &in_window),
            &source(),
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
        let (_, malformed) = UserState::from_fields(vec![
            ("wm:dl".into(), "x".into()),
            ("zz".into(), "1".into()),
        ]);
        assert_eq!(malformed, 2);
    }

    #[test]
    fn old_days_are_pruned() {
        let mut days = vec![1, 2, 3, 10, 20];
        prune_days(&mut days, 9);
        assert_eq!(days, vec![20]);
        assert_eq!(completed_run(&[1, 2, 3, 5], 2, 3), Some(vec![1, 2, 3]));
        assert_eq!(completed_run(&[1, 2, 3, 5], 5, 1), Some(vec![5]));
        assert_eq!(completed_run(&[1, 2, 3, 5], 4, 1), None);
    }
}
