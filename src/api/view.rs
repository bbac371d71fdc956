//! The read API's answers, pure: from a user's states (one per event kind),
//! the programs and the time, the JSON of each route. No I/O here; the HTTP
//! layer in [`super`] reads Redis and calls these.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::config::{ProgramIncentive, Programs, Repeat, RuleDef};
use crate::engine::{progress, AwardMarker, Progress, UserState};
use crate::events::{EventKind, Reward};

/// Both event kinds, in the order entries are listed.
pub const KINDS: [EventKind; 2] = [EventKind::DataLogged, EventKind::BirthReported];

/// What one client may see of a user: the states (by event kind) of one
/// employer.
#[derive(Debug, Clone, PartialEq)]
pub struct VisibleUser {
    pub employer: String,
    /// A kind without state, or whose state belongs to another employer, is
    /// absent.
    pub states: BTreeMap<EventKind, UserState>,
}

/// Chooses what a client sees of a user. Each kind's state names its
/// employer (`emp`); states of employers `may_read` refuses are dropped. Of
/// the rest, the employer of the most recently updated state (highest
/// watermark) is the user's employer, and only states of that employer are
/// kept (a user who changed employer shows the current one's view). `None`:
/// nothing to show, which the API answers like an unknown user (404).
pub fn visible(
    states: Vec<(EventKind, UserState)>,
    may_read: impl Fn(&str) -> bool,
) -> Option<VisibleUser> {
    let readable: Vec<(EventKind, UserState, String)> = states
        .into_iter()
        .filter_map(|(kind, state)| {
            let employer = state.employer.clone()?;
            may_read(&employer).then_some((kind, state, employer))
        })
        .collect();
    let latest = |s: &UserState| s.watermarks.values().copied().max().unwrap_or(i64::MIN);
    let employer = readable
        .iter()
        .max_by_key(|(_, s, _)| latest(s))
        .map(|(_, _, e)| e.clone())?;
    let states = readable
        .into_iter()
        .filter(|(_, _, e)| *e == employer)
        .map(|(k, s, _)| (k, s))
        .collect();
    Some(VisibleUser { employer, states })
}

/// An award decided for one rule (an award marker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AwardView {
    /// `program`, `2026-W10`, `2026-03` or `from-2026-03-01` (the repeat policy's period).
    pub period: String,
    /// The award's id, as on the awards topic (UUIDv5).
    pub award_id: String,
    /// The local day the completing event counted for.
    pub achieved_local_date: Option<NaiveDate>,
    /// The rule version that decided it.
    pub rule_version: String,
}

impl AwardView {
    fn new(period: &str, marker: &AwardMarker) -> AwardView {
        AwardView {
            period: period.to_string(),
            award_id: marker.award_id.clone(),
            achieved_local_date: marker.achieved_local_date,
            rule_version: marker.rule_version.clone(),
        }
    }
}

/// Count rules: distinct local days in the window, and how many are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DistinctDays {
    pub current: u32,
    pub needed: u32,
}

/// One program incentive of the user's employer, and where the user stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncentiveEntry {
    pub program_id: String,
    pub incentive_id: String,
    /// The catalog's description.
    pub description: String,
    /// The input event that counts: `data_logged` or `birth_reported`.
    pub event: EventKind,
    /// The rule's kind: `streak`, `count` or `once`.
    pub kind: &'static str,
    /// `once`, `weekly`, `monthly` or `every_completion`.
    pub repeat: Repeat,
    /// The rule version in force now.
    pub rule_version: String,
    pub reward: Reward,
    /// Whether the program runs today (its dates, in its zone).
    pub active: bool,
    /// `achieved` (for the current period), `in_progress` or `not_started`.
    pub status: &'static str,
    /// Streak: days of the live streak; count: events in the window; once: 0 or 1.
    pub current: u32,
    pub needed: u32,
    pub remaining: u32,
    /// Count rules only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_days: Option<DistinctDays>,
    /// Local days that count now.
    pub counted_days: Vec<NaiveDate>,
    /// Missed days inside the live streak forgiven by grace days.
    pub grace_covered_days: Vec<NaiveDate>,
    /// Missed days that broke the last streak.
    pub missed_days: Vec<NaiveDate>,
    /// RFC 3339 in the user's zone: when the next qualifying event must have
    /// happened to keep the progress; null when nothing is at stake.
    pub next_deadline: Option<String>,
    /// The zone of the local days and the deadline (the user's last known
    /// zone, else the program's).
    pub time_zone: String,
    /// Awards decided for this program incentive.
    pub awards: Vec<AwardView>,
    /// `GET /v1/users/{user}/incentives/{incentive}` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
}

/// Why the user stands where they stand on one program incentive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The rule in words, with this program's overrides.
    pub rule: String,
    /// Where the user stands, in words.
    pub summary: String,
    pub counted_days: Vec<NaiveDate>,
    pub grace_covered_days: Vec<NaiveDate>,
    pub missed_days: Vec<NaiveDate>,
    /// The rule version that applies now (to progress and future awards).
    pub rule_version: String,
    /// The versions that decided past awards.
    pub award_versions: Vec<AwardVersion>,
    pub next_deadline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AwardVersion {
    pub period: String,
    pub award_id: String,
    pub rule_version: String,
    /// Whether that version is the one in force now.
    pub is_current: bool,
}

/// One award of `GET /v1/users/{user}/awards`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserAward {
    pub program_id: String,
    pub incentive_id: String,
    pub event: EventKind,
    pub period: String,
    pub award_id: String,
    pub achieved_local_date: Option<NaiveDate>,
    pub rule_version: String,
}

/// The entry of one program incentive at `now`.
pub fn entry(
    programs: &Programs,
    rule: &ProgramIncentive,
    state: &UserState,
    now: DateTime<Utc>,
) -> IncentiveEntry {
    let p = progress(rule, state, now);
    let description = programs
        .catalog
        .get(&rule.incentive_id)
        .map(|d| d.description.clone())
        .unwrap_or_default();
    IncentiveEntry {
        program_id: rule.program_id.clone(),
        incentive_id: rule.incentive_id.clone(),
        description,
        event: rule.event,
        kind: rule.rule.kind(),
        repeat: rule.repeat,
        rule_version: rule.rule_version.clone(),
        reward: rule.reward.clone(),
        active: rule.is_active_at(now),
        status: p.status,
        current: p.current,
        needed: p.needed,
        remaining: p.remaining,
        distinct_days: p
            .distinct_days
            .map(|(current, needed)| DistinctDays { current, needed }),
        counted_days: p.counted_days,
        grace_covered_days: p.grace_covered_days,
        missed_days: p.missed_days,
        next_deadline: p.next_deadline,
        time_zone: p.time_zone,
        awards: state
            .awards_of(&rule.rule_key)
            .map(|(period, m)| AwardView::new(period, m))
            .collect(),
        explanation: None,
    }
}

/// Every program incentive of the user's employer (both event kinds, in
/// configuration order), active or not.
pub fn entries(programs: &Programs, user: &VisibleUser, now: DateTime<Utc>) -> Vec<IncentiveEntry> {
    let empty = UserState::default();
    KINDS
        .iter()
        .flat_map(|kind| {
            let state = user.states.get(kind).unwrap_or(&empty);
            programs
                .for_employer(&user.employer, *kind)
                .iter()
                .map(move |rule| entry(programs, rule, state, now))
        })
        .collect()
}

/// The entries of the employer's programs that attach catalog incentive
/// `incentive_id`, each with its explanation; empty when none does.
pub fn explained(
    programs: &Programs,
    user: &VisibleUser,
    incentive_id: &str,
    now: DateTime<Utc>,
) -> Vec<IncentiveEntry> {
    let empty = UserState::default();
    KINDS
        .iter()
        .flat_map(|kind| programs.for_employer(&user.employer, *kind).iter())
        .filter(|rule| rule.incentive_id == incentive_id)
        .map(|rule| {
            let state = user.states.get(&rule.event).unwrap_or(&empty);
            let p = progress(rule, state, now);
            let mut e = entry(programs, rule, state, now);
            e.explanation = Some(explanation(rule, &p, &e.awards, e.active));
            e
        })
        .collect()
}

/// Every award marker of the user, oldest first.
pub fn awards(user: &VisibleUser) -> Vec<UserAward> {
    let mut out: Vec<UserAward> = user
        .states
        .iter()
        .flat_map(|(kind, state)| {
            state.awards.iter().filter_map(move |(marker, a)| {
                let (rule_key, period) = marker.rsplit_once('@')?;
                let (program_id, incentive_id) = rule_key.split_once('/')?;
                Some(UserAward {
                    program_id: program_id.to_string(),
                    incentive_id: incentive_id.to_string(),
                    event: *kind,
                    period: period.to_string(),
                    award_id: a.award_id.clone(),
                    achieved_local_date: a.achieved_local_date,
                    rule_version: a.rule_version.clone(),
                })
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (
            a.achieved_local_date,
            &a.program_id,
            &a.incentive_id,
            &a.period,
        )
            .cmp(&(
                b.achieved_local_date,
                &b.program_id,
                &b.incentive_id,
                &b.period,
            ))
    });
    out
}

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn list(days: &[NaiveDate]) -> String {
    days.iter()
        .map(NaiveDate::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rule in words, with this program's overrides: "5 consecutive local
/// days with a data log, 1 grace day, days start at 03:00; once per program".
pub fn describe_rule(rule: &ProgramIncentive) -> String {
    let event = match rule.event {
        EventKind::DataLogged => "a data log",
        EventKind::BirthReported => "a birth report",
    };
    let filter = rule
        .filter
        .as_ref()
        .map(|f| format!(" of {}", f.data_kinds.join(" or ")))
        .unwrap_or_default();
    let rollover = |hour: u32| {
        if hour == 0 {
            String::new()
        } else {
            format!(", days start at {hour:02}:00")
        }
    };
    let mut text = match rule.rule {
        RuleDef::Streak {
            days,
            rollover_hour,
            grace_days,
        } => {
            let grace = if grace_days == 0 {
                String::new()
            } else {
                format!(", {}", plural(grace_days, "grace day", "grace days"))
            };
            format!(
                "{} with {event}{filter}{grace}{}",
                plural(days, "local day", "consecutive local days"),
                rollover(rollover_hour)
            )
        }
        RuleDef::Count {
            events,
            distinct_days,
            window_days,
            rollover_hour,
        } => format!(
            "{} ({event}{filter} each) on at least {} within {}{}",
            plural(events, "qualifying event", "qualifying events"),
            plural(distinct_days, "local day", "different local days"),
            plural(window_days, "day", "consecutive days"),
            rollover(rollover_hour)
        ),
        RuleDef::Once {
            birth_date_within_program,
        } => {
            let mut t = format!("one qualifying event: {event}{filter}");
            if birth_date_within_program {
                let end = rule
                    .ends_on
                    .map(|d| format!("to {d}"))
                    .unwrap_or_else(|| "on".into());
                t.push_str(&format!(" with a birth date from {} {end}", rule.starts_on));
            }
            t
        }
    };
    text.push_str(match rule.repeat {
        Repeat::Once => "; once per program",
        Repeat::Weekly => "; at most once per ISO week (program time zone)",
        Repeat::Monthly => "; at most once per calendar month (program time zone)",
        Repeat::EveryCompletion => "; again on every completion",
    });
    text
}

fn explanation(
    rule: &ProgramIncentive,
    p: &Progress,
    awards: &[AwardView],
    active: bool,
) -> Explanation {
    let mut summary = match (p.status, &rule.rule) {
        ("achieved", _) => {
            let last = awards.iter().max_by_key(|a| a.achieved_local_date);
            let when = last
                .map(|a| {
                    let date = a.achieved_local_date.map(|d| format!(" on {d}")).unwrap_or_default();
                    format!("{date} (period {}, rule version {})", a.period, a.rule_version)
                })
                .unwrap_or_default();
            let again = match rule.repeat {
                Repeat::Once => "it cannot be earned again in this program",
                Repeat::Weekly => "it can be earned again next week",
                Repeat::Monthly => "it can be earned again next month",
                Repeat::EveryCompletion => "it can be earned again",
            };
            format!("Achieved{when}; {again}.")
        }
        (_, RuleDef::Streak { .. }) if p.current > 0 => {
            let grace = if p.grace_covered_days.is_empty() {
                String::new()
            } else {
                format!(" ({} covered by grace: {})", plural(p.grace_covered_days.len() as u32, "missed day", "missed days"), list(&p.grace_covered_days))
            };
            let unit = if p.remaining == 1 { "day" } else { "days" };
            format!("{} of {} consecutive days counted{grace}; {} more {unit} needed.", p.current, p.needed, p.remaining)
        }
        (_, RuleDef::Streak { .. }) if !p.missed_days.is_empty() => format!(
            "No live streak: the last one was broken by {} ({}); {} needed from the next qualifying event.",
            plural(p.missed_days.len() as u32, "missed day", "missed days"),
            list(&p.missed_days),
            plural(p.needed, "day", "consecutive days")
        ),
        (_, RuleDef::Streak { .. }) => format!("No qualifying day counted yet; {} needed.", plural(p.needed, "day", "consecutive days")),
        (_, RuleDef::Count { .. }) => {
            let days = p.distinct_days.map(|(have, need)| format!(" on {have} of {need} days")).unwrap_or_default();
            format!("{} of {} events in the window{days}; {} more needed.", p.current, p.needed, p.remaining)
        }
        (_, RuleDef::Once { .. }) => "Not yet: one qualifying event earns it.".to_string(),
    };
    if let Some(deadline) = &p.next_deadline {
        let what = match rule.rule {
            RuleDef::Count { .. } => "The oldest counted day leaves the window at",
            _ => "The next qualifying event must come before",
        };
        summary.push_str(&format!(" {what} {deadline} ({}).", p.time_zone));
    }
    if !active {
        let end = rule.ends_on.map(|d| format!(" to {d}")).unwrap_or_default();
        summary.push_str(&format!(
            " The program is not running today (it runs from {}{end}).",
            rule.starts_on
        ));
    }
    Explanation {
        rule: describe_rule(rule),
        summary,
        counted_days: p.counted_days.clone(),
        grace_covered_days: p.grace_covered_days.clone(),
        missed_days: p.missed_days.clone(),
        rule_version: rule.rule_version.clone(),
        award_versions: awards
            .iter()
            .map(|a| AwardVersion {
                period: a.period.clone(),
                award_id: a.award_id.clone(),
                rule_version: a.rule_version.clone(),
                is_current: a.rule_version == rule.rule_version,
            })
            .collect(),
        next_deadline: p.next_deadline.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_programs;
    use std::path::Path;

    const CATALOG: &str = r#"
[incentives.streak5]
description = "Five days in a row"
event = "data_logged"
rule = { kind = "streak", days = 5 }
[incentives.mood-count]
description = "Mood often"
event = "data_logged"
rule = { kind = "count", events = 10, distinct_days = 5, window_days = 14 }
filter = { data_kinds = ["mood", "sleep"] }
[incentives.birth]
description = "Birth"
event = "birth_reported"
rule = { kind = "once", birth_date_within_program = true }
"#;
    const PROGRAMS: &str = r#"
[[programs]]
id = "p"
employer_id = "acme"
time_zone = "America/New_York"
starts_on = 2026-01-01
ends_on = 2026-12-31
[[programs.incentives]]
incentive = "streak5"
reward = { kind = "points", code = "5", description = "five" }
grace_days = 1
rollover_hour = 3
[[programs.incentives]]
incentive = "mood-count"
repeat = "weekly"
reward = { kind = "points", code = "1", description = "one" }
[[programs.incentives]]
incentive = "birth"
reward = { kind = "gift_card", code = "B", description = "b" }
"#;

    fn programs() -> Programs {
        parse_programs(Path::new("c"), CATALOG, Path::new("p"), PROGRAMS).unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn state(employer: &str, wm: &str, fields: &[(&str, &str)]) -> UserState {
        let mut all = vec![
            ("emp".to_string(), employer.to_string()),
            ("wm:dl".to_string(), t(wm).timestamp_millis().to_string()),
        ];
        all.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        UserState::from_fields(all).0
    }

    #[test]
    fn rules_read_as_words() {
        let p = programs();
        let rules = p.for_employer("acme", EventKind::DataLogged);
        assert_eq!(
            describe_rule(&rules[0]),
            "5 consecutive local days with a data log, 1 grace day, days start at 03:00; once per program"
        );
        assert_eq!(
            describe_rule(&rules[1]),
            "10 qualifying events (a data log of mood or sleep each) on at least 5 different local days within 14 consecutive days; at most once per ISO week (program time zone)"
        );
        let birth = &p.for_employer("acme", EventKind::BirthReported)[0];
        assert_eq!(
            describe_rule(birth),
            "one qualifying event: a birth report with a birth date from 2026-01-01 to 2026-12-31; once per program"
        );
    }

    #[test]
    fn a_client_sees_only_states_of_its_employers() {
        let acme = state("acme", "2026-03-01T12:00:00Z", &[]);
        let mut globex = state("globex", "2026-03-05T12:00:00Z", &[]);
        globex.watermarks = [(
            EventKind::BirthReported,
            t("2026-03-05T12:00:00Z").timestamp_millis(),
        )]
        .into();
        let both = vec![
            (EventKind::DataLogged, acme.clone()),
            (EventKind::BirthReported, globex.clone()),
        ];
        // Both readable: the latest state's employer wins, the other is dropped.
        let v = visible(both.clone(), |_| true).unwrap();
        assert_eq!(v.employer, "globex");
        assert_eq!(
            v.states.keys().copied().collect::<Vec<_>>(),
            [EventKind::BirthReported]
        );
        // Only acme readable: acme's view.
        let v = visible(both.clone(), |e| e == "acme").unwrap();
        assert_eq!((v.employer.as_str(), v.states.len()), ("acme", 1));
        assert!(visible(both, |e| e == "initech").is_none());
        assert!(
            visible(vec![(EventKind::DataLogged, UserState::default())], |_| {
                true
            })
            .is_none(),
            "no employer: nothing"
        );
    }

    #[test]
    fn entries_progress_awards_and_explanations() {
        let p = programs();
        let streak = &p.for_employer("acme", EventKind::DataLogged)[0];
        // Mar 1, 2 and 4 (day numbers from the engine's epoch) with Mar 3 missed.
        let day = |d: u32| {
            crate::days::day_number(NaiveDate::from_ymd_opt(2026, 3, d).unwrap()).to_string()
        };
        let days = [day(1), day(2), day(4)].join(",");
        let dl = state(
            "acme",
            "2026-03-04T15:00:00Z",
            &[
                ("tz", "America/New_York"),
                (&format!("s:{}", streak.rule_key), &days),
                ("a:p/mood-count@2026-W09", "id-1|2026-02-27|r-old"),
            ],
        );
        let user = VisibleUser {
            employer: "acme".into(),
            states: [(EventKind::DataLogged, dl)].into(),
        };
        let now = t("2026-03-04T23:00:00Z");
        let all = entries(&p, &user, now);
        assert_eq!(
            all.iter()
                .map(|e| e.incentive_id.as_str())
                .collect::<Vec<_>>(),
            ["streak5", "mood-count", "birth"]
        );
        let e = &all[0];
        assert_eq!(
            (e.status, e.current, e.needed, e.remaining, e.active),
            ("in_progress", 3, 5, 2, true)
        );
        assert_eq!(
            e.grace_covered_days,
            [NaiveDate::from_ymd_opt(2026, 3, 3).unwrap()]
        );
        // Grace spent: the next log must come by the end of Mar 5 (03:00 on Mar 6, New York).
        assert_eq!(
            e.next_deadline.as_deref(),
            Some("2026-03-06T03:00:00-05:00")
        );
        assert_eq!(
            all[1].awards,
            [AwardView {
                period: "2026-W09".into(),
                award_id: "id-1".into(),
                achieved_local_date: NaiveDate::from_ymd_opt(2026, 2, 27),
                rule_version: "r-old".into()
            }]
        );
        assert_eq!(all[2].status, "not_started");

        let x = explained(&p, &user, "streak5", now);
        assert_eq!(x.len(), 1);
        let ex = x[0].explanation.as_ref().unwrap();
        assert_eq!(ex.rule_version, streak.rule_version);
        assert!(ex.summary.starts_with("3 of 5 consecutive days counted (1 missed day covered by grace: 2026-03-03); 2 more days needed."), "{}", ex.summary);
        assert!(
            ex.summary
                .contains("must come before 2026-03-06T03:00:00-05:00 (America/New_York)"),
            "{}",
            ex.summary
        );
        let x = explained(&p, &user, "mood-count", now);
        let ex = x[0].explanation.as_ref().unwrap();
        assert_eq!(
            ex.award_versions,
            [AwardVersion {
                period: "2026-W09".into(),
                award_id: "id-1".into(),
                rule_version: "r-old".into(),
                is_current: false
            }]
        );
        assert!(explained(&p, &user, "nope", now).is_empty());

        let a = awards(&user);
        assert_eq!(
            (
                a[0].program_id.as_str(),
                a[0].incentive_id.as_str(),
                a[0].period.as_str()
            ),
            ("p", "mood-count", "2026-W09")
        );

        // After the program's end: not active, said so.
        let later = t("2027-01-10T12:00:00Z");
        let x = explained(&p, &user, "birth", later);
        assert!(!x[0].active);
        assert!(x[0]
            .explanation
            .as_ref()
            .unwrap()
            .summary
            .contains("not running today (it runs from 2026-01-01 to 2026-12-31)"));
    }
}
