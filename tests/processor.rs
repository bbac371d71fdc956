//! The processor end to end, against the real broker and Redis.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use incentives::engine::award_id_for;
use incentives::events::InputEvent;
use incentives::partitioner::partition_for_key;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn five_consecutive_days_award_once_and_gaps_do_not() {
    let env = TestEnv::new("streak", 3);
    let p = env.start_processor();
    let mut events = Vec::new();
    events.extend((1..=7).map(|d| logged("five-days", &march(d), None))); // award (once, not at day 6 or 7)
    events.extend((1..=4).map(|d| logged("four-days", &march(d), None))); // none
    events.extend(
        [1, 2, 4, 5, 6]
            .iter()
            .map(|&d| logged("gap", &march(d), None)),
    ); // none
    events.extend(
        [1, 2, 4, 5]
            .iter()
            .map(|&d| logged("late-fill", &march(d), None)),
    );
    env.publish(&events);
    // The gap filled late (in event time, within the 3-day lateness window).
    env.publish(&[logged("late-fill", &march(3), None)]);

    env.wait_for_awards(2, WAIT);
    // Give a wrong third award the chance to show up.
    std::thread::sleep(Duration::from_secs(2));
    let awards = env.all_awards();
    let users: BTreeSet<&str> = awards.iter().map(|a| a.user_id.as_str()).collect();
    assert_eq!(
        users,
        BTreeSet::from(["five-days", "late-fill"]),
        "awards: {awards:#?}"
    );
    assert_eq!(awards.len(), 2, "exactly one award each: {awards:#?}");
    let five = awards.iter().find(|a| a.user_id == "five-days").unwrap();
    assert_eq!(
        five.award_id,
        award_id_for(
            "acme-2026",
            "data-logged-5-consecutive-days",
            "five-days",
            "program"
        )
    );
    assert_eq!(five.achieved_local_date.to_string(), "2026-03-05");
    assert_eq!(five.reward.code, "PREGNANCY-PILLOW");
    assert_eq!(five.source.topic, env.config.settings.topics.data_logged);
    assert_eq!(five.evidence_days.len(), 5);
    let late = awards.iter().find(|a| a.user_id == "late-fill").unwrap();
    assert_eq!(
        late.achieved_local_date.to_string(),
        "2026-03-03",
        "completed by the late event"
    );
    assert_eq!(
        late.evidence_days
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>(),
        [
            "2026-03-01",
            "2026-03-02",
            "2026-03-03",
            "2026-03-04",
            "2026-03-05"
        ]
    );
    p.stop();
}

#[test]
fn local_days_follow_the_users_zone_across_dst() {
    let env = TestEnv::new("zones", 3);
    let p = env.start_processor();
    let ny = Some(chrono_tz::America::New_York);
    let tokyo = Some(chrono_tz::Asia::Tokyo);
    let events = vec![
        // 23:30 local in New York across the spring-forward night (Mar 8 is 23h long).
        logged("dst", "2026-03-07T04:30:00Z", ny), // Mar 6 23:30 EST
        logged("dst", "2026-03-08T04:30:00Z", ny), // Mar 7 23:30 EST
        logged("dst", "2026-03-09T03:30:00Z", ny), // Mar 8 23:30 EDT
        logged("dst", "2026-03-10T03:30:00Z", ny), // Mar 9 23:30 EDT
        logged("dst", "2026-03-11T03:30:00Z", ny), // Mar 10 23:30 EDT
        // UTC days 1,1,3,4,4 are no streak; the New York days Feb 28..Mar 4 are.
        logged("ny-evenings", "2026-03-01T03:00:00Z", ny), // Feb 28 22:00
        logged("ny-evenings", "2026-03-01T20:00:00Z", ny), // Mar 1
        logged("ny-evenings", "2026-03-03T03:00:00Z", ny), // Mar 2 22:00
        logged("ny-evenings", "2026-03-04T03:00:00Z", ny), // Mar 3 22:00
        logged("ny-evenings", "2026-03-04T20:00:00Z", ny), // Mar 4
        // Consecutive UTC days at 16:00Z, but Tokyo days Mar 2..6 (01:00 next day).
        logged("tokyo", "2026-03-01T16:00:00Z", tokyo),
        logged("tokyo", "2026-03-02T16:00:00Z", tokyo),
        logged("tokyo", "2026-03-03T16:00:00Z", tokyo),
        logged("tokyo", "2026-03-04T16:00:00Z", tokyo),
        logged("tokyo", "2026-03-05T16:00:00Z", tokyo),
        // Consecutive UTC days (Mar 1..5), but New York days Feb 28, Mar 2..5: no streak.
        logged("utc-only", "2026-03-01T02:00:00Z", ny), // Feb 28 21:00
        logged("utc-only", "2026-03-02T23:00:00Z", ny), // Mar 2 18:00
        logged("utc-only", "2026-03-03T23:00:00Z", ny),
        logged("utc-only", "2026-03-04T23:00:00Z", ny),
        logged("utc-only", "2026-03-05T23:00:00Z", ny),
    ];
    env.publish(&events);
    env.wait_for_awards(3, WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let awards = env.all_awards();
    let by_user: BTreeMap<&str, &incentives::events::AwardGranted> =
        awards.iter().map(|a| (a.user_id.as_str(), a)).collect();
    assert_eq!(
        by_user.keys().copied().collect::<Vec<_>>(),
        ["dst", "ny-evenings", "tokyo"],
        "{awards:#?}"
    );
    let days = |u: &str| {
        by_user[u]
            .evidence_days
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        days("dst"),
        [
            "2026-03-06",
            "2026-03-07",
            "2026-03-08",
            "2026-03-09",
            "2026-03-10"
        ]
    );
    assert_eq!(
        days("ny-evenings"),
        [
            "2026-02-28",
            "2026-03-01",
            "2026-03-02",
            "2026-03-03",
            "2026-03-04"
        ]
    );
    assert_eq!(
        days("tokyo"),
        [
            "2026-03-02",
            "2026-03-03",
            "2026-03-04",
            "2026-03-05",
            "2026-03-06"
        ]
    );
    assert_eq!(by_user["tokyo"].time_zone, "Asia/Tokyo");
    assert_eq!(
        by_user["tokyo"].achieved_local_date.to_string(),
        "2026-03-06"
    );
    p.stop();
}

/// A batch's writes are completed (and its awards produced) as soon as the
/// next poll finds no record waiting, so an award does not wait for the
/// next batch's linger.
#[test]
fn an_award_does_not_wait_for_the_next_batchs_linger() {
    let linger = Duration::from_secs(3);
    let env = TestEnv::new("one-linger", 1);
    let mut config = (*env.config).clone();
    config.settings.processor.batch_linger = linger;
    // Two records fill a batch at once: the birth and the first data-logged
    // event make the first batch, the second one the next batch, which then
    // lingers for more.
    config.settings.processor.max_batch_records = 2;
    let p = ProcessorHandle::start(Arc::new(config));
    p.wait_until_assigned(WAIT);
    let published = Instant::now();
    env.publish(&[
        birth("one-linger", "one-linger-1", "2026-04-02T10:00:00Z"),
        logged("one-linger-2", &march(2), None),
        logged("one-linger-3", &march(2), None),
    ]);
    // Returns with the first award read (or after WAIT without one).
    let first = incentives::tools::read_awards(
        &env.config.settings.kafka,
        &env.config.settings.topics.awards,
        true,
        WAIT,
        Some(1),
        |_, _, _| {},
    )
    .expect("read awards");
    let arrived = published.elapsed();
    assert_eq!(first.len(), 1, "no award within {WAIT:?}");
    assert!(
        arrived < linger - Duration::from_secs(1),
        "the award took {arrived:?} with a batch linger of {linger:?}: it waited for the next batch's linger"
    );
    p.stop();
}

#[test]
fn a_birth_reported_twice_is_awarded_once() {
    let env = TestEnv::new("birth", 3);
    let p = env.start_processor();
    // The same event delivered twice, and a second report with another id.
    let b = birth("mother", "birth-1", "2026-04-02T10:00:00Z");
    env.publish(&[
        b.clone(),
        b,
        birth("mother", "birth-2", "2026-04-02T11:00:00Z"),
    ]);
    env.wait_for_awards(1, WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let awards = env.all_awards();
    assert_eq!(awards.len(), 1, "{awards:#?}");
    assert_eq!(awards[0].incentive_id, "birth-reported");
    assert_eq!(awards[0].source.event_id, "birth-1");
    assert_eq!(
        awards[0].award_id,
        award_id_for("acme-2026", "birth-reported", "mother", "program")
    );
    p.stop();
}

#[test]
fn replaying_the_input_gives_no_new_award() {
    let env = TestEnv::new("replay", 3);
    let users: Vec<String> = (0..10).map(|i| format!("replay-{i}")).collect();
    let mut events: Vec<InputEvent> = users
        .iter()
        .flat_map(|u| (1..=5).map(move |d| logged(u, &march(d), None)))
        .collect();
    events.push(birth("replay-0", "b-0", "2026-03-05T18:00:00Z"));
    env.publish(&events);
    let p = env.start_processor();
    let first = env.wait_for_awards(11, WAIT);
    assert_eq!(first.len(), 11, "{first:#?}");
    p.stop();

    // A new consumer group reads the topics from the beginning, same Redis.
    let replay = ProcessorHandle::start(
        env.with_group(&format!("{}-replay", env.config.settings.kafka.group_id)),
    );
    replay.wait_until_assigned(WAIT);
    // And upstream re-sends every event (new offsets, same content).
    env.publish(&events);
    std::thread::sleep(Duration::from_secs(5));
    let after = env.all_awards();
    assert_eq!(
        id_counts(&after),
        id_counts(&first),
        "no new award id, no second copy"
    );
    // The re-sent events were seen (and were either duplicates of awarded
    // rules or too late), not silently dropped.
    let data_logged = &env.config.settings.topics.data_logged;
    let applied = replay.metric(&format!(
        "incentives_events_total{{outcome=\"applied\",topic=\"{data_logged}\"}}"
    ));
    let dead = replay.metric(&format!(
        "incentives_events_total{{outcome=\"dead_lettered\",topic=\"{data_logged}\"}}"
    ));
    assert_eq!(
        applied + dead,
        50.0,
        "every re-sent data-logged event was handled"
    );
    replay.stop();
}

#[test]
fn an_award_left_in_the_outbox_is_re_emitted_with_the_same_bytes() {
    let env = TestEnv::new("outbox", 1);
    let p = env.start_processor();
    env.publish(
        &(1..=5)
            .map(|d| logged("crashy", &march(d), None))
            .collect::<Vec<_>>(),
    );
    let awards = env.wait_for_awards(1, WAIT);
    assert_eq!(awards.len(), 1);
    p.stop();
    // Simulate a crash after the Redis step and before the broker's ack:
    // the award is back in the outbox.
    let raw = env.read_topic(&env.config.settings.topics.awards, Duration::from_secs(2));
    assert_eq!(raw.len(), 1);
    let keys = incentives::state::Keys::new(&env.config.settings.redis.key_prefix);
    let mut r = env.redis();
    redis::cmd("HSET")
        .arg(keys.outbox(0))
        .arg(&awards[0].award_id)
        .arg(raw[0].payload.as_slice())
        .query::<()>(&mut r)
        .unwrap();
    let p = env.start_processor();
    let again = env.wait_for_awards(2, WAIT);
    p.stop();
    assert_eq!(again.len(), 2);
    assert_eq!(again[0], again[1], "the re-emitted award is identical");
    let raw = env.read_topic(&env.config.settings.topics.awards, Duration::from_secs(2));
    assert_eq!(raw[0].payload, raw[1].payload, "byte for byte");
    let left: usize = redis::cmd("HLEN")
        .arg(keys.outbox(0))
        .query(&mut r)
        .unwrap();
    assert_eq!(left, 0, "acknowledged awards leave the outbox");
}

#[test]
fn two_processors_split_the_partitions_and_award_everyone_once() {
    let env = TestEnv::new("group", 6);
    let a = env.start_processor();
    let b = env.start_processor();
    a.wait_until_assigned(WAIT);
    b.wait_until_assigned(WAIT);
    let workload = incentives::tools::Synthetic {
        users: 300,
        days: 8,
        seed: 11,
        start: chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        employers: vec!["acme".into(), "no-program-employer".into()],
    };
    let events = incentives::tools::synthetic_events(&workload);
    let (expected, _) = oracle_award_ids(&env.config, &events);
    assert!(
        expected.len() > 50,
        "the workload must award many users ({})",
        expected.len()
    );
    env.publish(&events);
    env.wait_for_awards(expected.len(), WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let awards = env.all_awards();
    let counts = id_counts(&awards);
    let found: BTreeSet<String> = counts.keys().cloned().collect();
    assert_eq!(
        found,
        expected,
        "missing: {:?}, unexpected: {:?}",
        expected.difference(&found).collect::<Vec<_>>(),
        found.difference(&expected).collect::<Vec<_>>()
    );
    assert!(
        counts.values().all(|&n| n == 1),
        "an award appeared twice without a crash"
    );
    // Both instances did part of the work, on disjoint partitions.
    let dl = &env.config.settings.topics.data_logged;
    let work = |p: &ProcessorHandle| {
        p.metric(&format!(
            "incentives_events_total{{outcome=\"applied\",topic=\"{dl}\"}}"
        )) + p.metric(&format!(
            "incentives_events_total{{outcome=\"no_program\",topic=\"{dl}\"}}"
        ))
    };
    let (wa, wb) = (work(&a), work(&b));
    let total = events
        .iter()
        .filter(|e| matches!(e, InputEvent::DataLogged(_)))
        .count() as f64;
    assert!(
        wa > 0.0 && wb > 0.0,
        "both instances processed events ({wa}, {wb})"
    );
    assert_eq!(
        wa + wb,
        total,
        "every data-logged event was processed exactly once"
    );
    a.stop();
    b.stop();
}

#[test]
fn bad_records_are_dead_lettered_and_good_ones_processed() {
    let env = TestEnv::new("dlq", 3);
    let p = env.start_processor();
    let topic = env.config.settings.topics.data_logged.clone();
    let n = env.partitions;
    let good: Vec<InputEvent> = (1..=5)
        .map(|d| logged("good-user", &march(d), None))
        .collect();
    let good_bytes: Vec<Vec<u8>> = good.iter().map(|e| env.codec.encode_event(e)).collect();
    let home = partition_for_key(b"good-user", n);

    // Interleave: good, bad, good, bad, ... all in the good user's partition
    // (except the misrouted one).
    let mut bad: Vec<(Option<i32>, &str, Vec<u8>, &str)> = Vec::new();
    bad.push((
        Some(home),
        "good-user",
        b"{\"not\":\"avro\"}".to_vec(),
        "not_single_object",
    ));
    let mut unknown = vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
    unknown.extend_from_slice(&good_bytes[0][10..]);
    bad.push((Some(home), "good-user", unknown, "unknown_fingerprint"));
    bad.push((
        Some(home),
        "good-user",
        good_bytes[0][..good_bytes[0].len() - 5].to_vec(),
        "undecodable_body",
    ));
    bad.push((
        Some(home),
        "good-user",
        invalid_zone_record(&env),
        "invalid_field",
    ));
    let other = (home + 1) % n;
    bad.push((
        Some(other),
        "good-user",
        env.codec
            .encode_event(&logged("good-user", &march(9), None)),
        "misrouted",
    ));
    bad.push((
        Some(home),
        "good-user",
        env.codec
            .encode_event(&logged("good-user", "2099-01-01T00:00:00Z", None)),
        "too_far_in_future",
    ));

    for (i, bytes) in good_bytes.iter().enumerate() {
        env.publish_raw(&topic, Some(home), "good-user", bytes, &[]);
        if let Some((partition, key, payload, _)) = bad.get(i) {
            env.publish_raw(&topic, *partition, key, payload, &[("trace-id", "abc")]);
        }
    }
    env.publish_raw(
        &topic,
        bad[5].0,
        bad[5].1,
        &bad[5].2,
        &[("trace-id", "abc")],
    );

    let awards = env.wait_for_awards(1, WAIT);
    assert_eq!(
        awards.len(),
        1,
        "the good records around the bad ones still award"
    );
    assert_eq!(awards[0].user_id, "good-user");

    let letters = wait_for_records(&env, &env.config.settings.topics.dead_letter, bad.len());
    assert_eq!(letters.len(), bad.len(), "{letters:#?}");
    let codes: BTreeSet<&str> = letters
        .iter()
        .map(|r| r.headers["incentives.error.code"].as_str())
        .collect();
    let expected_codes: BTreeSet<&str> = bad.iter().map(|b| b.3).collect();
    assert_eq!(codes, expected_codes);
    let source = env.read_topic(&topic, Duration::from_secs(1));
    for letter in &letters {
        assert_eq!(letter.headers["incentives.source.topic"], topic);
        assert_eq!(
            letter.headers["trace-id"], "abc",
            "original headers are kept"
        );
        assert!(!letter.headers["incentives.error.detail"].is_empty());
        let partition: i32 = letter.headers["incentives.source.partition"]
            .parse()
            .unwrap();
        let offset: i64 = letter.headers["incentives.source.offset"].parse().unwrap();
        let original = source
            .iter()
            .find(|r| r.partition == partition && r.offset == offset)
            .expect("source record exists");
        assert_eq!(letter.payload, original.payload, "the original bytes");
        assert_eq!(letter.key.as_deref(), Some("good-user"));
    }
    let invalid = letters
        .iter()
        .find(|l| l.headers["incentives.error.code"] == "invalid_field")
        .unwrap();
    assert!(
        invalid.headers["incentives.error.detail"].contains("time_zone"),
        "{:?}",
        invalid.headers
    );
    assert_eq!(
        p.metric("incentives_dead_letters_total{reason=\"misrouted\"}"),
        1.0
    );
    p.stop();
}

fn wait_for_records(env: &TestEnv, topic: &str, n: usize) -> Vec<RawRecord> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let records = env.read_topic(topic, Duration::from_secs(1));
        if records.len() >= n || std::time::Instant::now() > deadline {
            return records;
        }
    }
}

/// A DataLogged record with an unknown time zone, written with apache-avro
/// directly (our encoder only takes valid zones).
fn invalid_zone_record(env: &TestEnv) -> Vec<u8> {
    let _ = env;
    let schema_text =
        std::fs::read_to_string(repo_dir().join("schemas/data_logged.v1.avsc")).unwrap();
    let schema = apache_avro::Schema::parse_str(&schema_text).unwrap();
    use apache_avro::types::Value;
    let record = Value::Record(vec![
        ("event_id".into(), Value::String("bad-zone".into())),
        ("user_id".into(), Value::String("good-user".into())),
        ("employer_id".into(), Value::String("acme".into())),
        (
            "event_time".into(),
            Value::TimestampMillis(utc(&march(2)).timestamp_millis()),
        ),
        (
            "time_zone".into(),
            Value::Union(1, Box::new(Value::String("Mars/Olympus_Mons".into()))),
        ),
        (
            "data_kinds".into(),
            Value::Array(vec![Value::String("mood".into())]),
        ),
    ]);
    let body = apache_avro::to_avro_datum(&schema, record).unwrap();
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(
        &incentives::codec::schema_fingerprint(&schema_text)
            .unwrap()
            .to_le_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

/// The sweeper deletes the expired states of the owned partitions and keeps
/// the live ones; an expired state is never read back as the user's state.
#[test]
fn the_sweeper_deletes_expired_states_and_keeps_live_ones() {
    use incentives::events::EventKind;
    use incentives::state::{live_state, Keys, Stored};
    let env = TestEnv::new("sweep", 2);
    let mut config = (*env.config).clone();
    config.settings.state.sweep_interval = Duration::from_secs(1);
    let p = ProcessorHandle::start(std::sync::Arc::new(config));
    p.wait_until_assigned(WAIT);
    env.publish(&[logged("sweep-live", &march(1), None)]);
    let keys = Keys::new(&env.config.settings.redis.key_prefix);
    let hash_of = |user: &str| {
        keys.states(
            partition_for_key(user.as_bytes(), env.partitions),
            EventKind::DataLogged,
        )
    };
    let mut redis = env.redis();
    let deadline = std::time::Instant::now() + WAIT;
    let live: String = loop {
        let v: Option<String> = redis::cmd("HGET")
            .arg(hash_of("sweep-live"))
            .arg("sweep-live")
            .query(&mut redis)
            .unwrap();
        if let Some(v) = v {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the live user's state never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let now = chrono::Utc::now().timestamp();
    assert!(
        matches!(live_state(&live, now), Stored::Live(body) if body.contains("emp=acme")),
        "{live}"
    );
    // A state whose expiry passed (as if written 14 days ago, never again).
    let _: () = redis::cmd("HSET")
        .arg(hash_of("sweep-gone"))
        .arg("sweep-gone")
        .arg(format!("{}|wm:dl=1;emp=acme", now - 1))
        .query(&mut redis)
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let gone: Option<String> = redis::cmd("HGET")
            .arg(hash_of("sweep-gone"))
            .arg("sweep-gone")
            .query(&mut redis)
            .unwrap();
        if gone.is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired state was not swept"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(p.metric("incentives_states_expired_total{kind=\"dl\"}") >= 1.0);
    let still: Option<String> = redis::cmd("HGET")
        .arg(hash_of("sweep-live"))
        .arg("sweep-live")
        .query(&mut redis)
        .unwrap();
    assert_eq!(
        still.as_deref(),
        Some(live.as_str()),
        "the live state is kept"
    );
    p.stop();
}
