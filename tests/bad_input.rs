//! Bad input never stops a partition (issue 5, part 2): the malformed records
//! of `incentives::corpus` mixed at 1% into a valid stream, against the real
//! broker and Redis. Every bad record ends in the dead-letter topic with its
//! headers and bytes, no good record does, every good record is applied and
//! awards as the pure engine says, the processor keeps running, and no
//! partition's applied offset stands still for a second while it has records
//! to process.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use incentives::corpus::{BadClass, BadRecord, Corpus, Slot};
use incentives::dead_letter::headers;
use incentives::events::EventKind;
use incentives::partitioner::partition_for_key;
use incentives::state::{BatchRead, RedisState};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

const PARTITIONS: i32 = 6;
const USERS: usize = 2_000;
const DAYS: u32 = 11;
const SEED: u64 = 5_002;
/// The share of bad records in the mixed stream.
const BAD_SHARE: f64 = 0.01;
/// Publishing pace: 500 records every 100 ms (5,000 records/s), so the
/// processor works while the stream is still arriving.
const CHUNK: usize = 500;
const CHUNK_EVERY: Duration = Duration::from_millis(100);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const MAX_STALL: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(120);
/// The extra header every published record carries (its stream position).
const TRACE: &str = "trace-id";
/// Failures listed in an assertion message, at most.
const SHOWN: usize = 20;

/// One record as published.
struct Outgoing {
    /// Position in the mixed stream (the `trace-id` header).
    pos: usize,
    topic: String,
    partition: i32,
    key: String,
    payload: Vec<u8>,
    /// `None` for a good record.
    bad: Option<BadRecord>,
}

/// One look at every (topic, partition): last produced and applied offsets.
struct Sample {
    at: Instant,
    produced: Vec<i64>,
    applied: Vec<i64>,
}

#[test]
fn a_bad_input_corpus_at_one_percent_is_dead_lettered_and_stalls_no_partition() {
    let env = TestEnv::new("bad-input", PARTITIONS);
    let settings = &env.config.settings;
    let topic_of = |kind: EventKind| match kind {
        EventKind::DataLogged => settings.topics.data_logged.clone(),
        EventKind::BirthReported => settings.topics.birth_reported.clone(),
    };

    // The valid stream and what it must decide.
    let good = incentives::tools::synthetic_events(&incentives::tools::Synthetic {
        users: USERS,
        days: DAYS,
        seed: SEED,
        start: chrono::NaiveDate::from_ymd_opt(2026, 3, 1).expect("date"),
        employers: vec!["acme".into()],
    });
    let (expected_awards, not_applied) = oracle_award_ids(&env.config, &good);
    assert!(
        not_applied.is_empty(),
        "the valid stream must apply whole: {:?}",
        &not_applied[..not_applied.len().min(3)]
    );
    assert!(
        expected_awards.len() > 500,
        "the valid stream must award many users ({})",
        expected_awards.len()
    );

    // Mixed with the corpus, placed as producers must place records (the
    // misrouted ones one partition off).
    let mut corpus = Corpus::new(&env.codec, SEED, settings.processor.max_record_bytes);
    let slots = corpus.interleave(&good, BAD_SHARE);
    let outgoing: Vec<Outgoing> = slots
        .into_iter()
        .enumerate()
        .map(|(pos, slot)| match slot {
            Slot::Good(i) => {
                let e = &good[i];
                Outgoing {
                    pos,
                    topic: topic_of(e.kind()),
                    partition: partition_for_key(e.user_id().as_bytes(), PARTITIONS),
                    key: e.user_id().to_string(),
                    payload: env.codec.encode_event(e),
                    bad: None,
                }
            }
            Slot::Bad(b) => {
                let home = partition_for_key(b.key.as_bytes(), PARTITIONS);
                Outgoing {
                    pos,
                    topic: topic_of(b.topic),
                    partition: if b.misrouted {
                        (home + 1) % PARTITIONS
                    } else {
                        home
                    },
                    key: b.key.clone(),
                    payload: b.payload.clone(),
                    bad: Some(b),
                }
            }
        })
        .collect();
    let bad_count = outgoing.iter().filter(|o| o.bad.is_some()).count();
    let classes: BTreeMap<BadClass, usize> =
        outgoing
            .iter()
            .filter_map(|o| o.bad.as_ref())
            .fold(BTreeMap::new(), |mut m, b| {
                *m.entry(b.class).or_default() += 1;
                m
            });
    assert_eq!(
        classes.len(),
        BadClass::ALL.len(),
        "every class is in the stream: {classes:?}"
    );
    println!(
        "stream: {} records, {} good ({} users, {} expected awards), {bad_count} bad: {}",
        outgoing.len(),
        good.len(),
        USERS,
        expected_awards.len(),
        classes
            .iter()
            .map(|(c, n)| format!("{} {n}", c.name()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let p = env.start_processor();
    p.wait_until_assigned(WAIT);

    // The sampler: every 50 ms, each (topic, partition)'s last produced
    // offset (acknowledged to the publisher) and applied offset (in Redis).
    let tps: Vec<(String, i32)> = [
        &settings.topics.data_logged,
        &settings.topics.birth_reported,
    ]
    .iter()
    .flat_map(|t| (0..PARTITIONS).map(move |p| (t.to_string(), p)))
    .collect();
    let produced: Arc<Mutex<BTreeMap<(String, i32), i64>>> = Arc::default();
    let published = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (tps, produced, published) = (tps.clone(), produced.clone(), published.clone());
        let mut redis = RedisState::new(
            &settings.redis.url,
            &settings.redis.key_prefix,
            Duration::from_secs(5),
        )
        .expect("redis client");
        std::thread::spawn(move || -> (Vec<Sample>, bool) {
            let requests: Vec<BatchRead<'_>> = tps
                .iter()
                .map(|(t, p)| BatchRead {
                    topic: t.as_str(),
                    partition: *p,
                    kind: EventKind::DataLogged, // no users read: only the meta
                    users: Vec::new(),
                })
                .collect();
            let deadline = Instant::now() + WAIT;
            let mut samples = Vec::new();
            loop {
                let at = Instant::now();
                let done = published.load(Ordering::SeqCst);
                let produced: Vec<i64> = {
                    let map = produced.lock().expect("produced offsets");
                    tps.iter()
                        .map(|tp| map.get(tp).copied().unwrap_or(-1))
                        .collect()
                };
                let applied: Vec<i64> = redis
                    .read_batches(&requests)
                    .expect("read applied offsets from Redis")
                    .iter()
                    .map(|s| s.applied_offset)
                    .collect();
                let caught_up = produced.iter().zip(&applied).all(|(p, a)| a >= p);
                samples.push(Sample {
                    at,
                    produced,
                    applied,
                });
                if done && caught_up {
                    return (samples, true);
                }
                if Instant::now() > deadline {
                    return (samples, false);
                }
                std::thread::sleep(SAMPLE_EVERY.saturating_sub(at.elapsed()));
            }
        })
    };

    // Publish, paced; remember where each record landed.
    let publish_started = Instant::now();
    let mut landed: Vec<(i32, i64)> = Vec::with_capacity(outgoing.len());
    for chunk in outgoing.chunks(CHUNK) {
        let started = Instant::now();
        let mut deliveries = Vec::with_capacity(chunk.len());
        for o in chunk {
            let trace = o.pos.to_string();
            let hdrs = OwnedHeaders::new().insert(Header {
                key: TRACE,
                value: Some(trace.as_str()),
            });
            let mut record = FutureRecord::to(&o.topic)
                .partition(o.partition)
                .key(o.key.as_str())
                .payload(o.payload.as_slice())
                .headers(hdrs);
            loop {
                match env.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => panic!("record #{} not enqueued: {e}", o.pos),
                }
            }
        }
        for (o, delivery) in chunk.iter().zip(deliveries) {
            let d = futures::executor::block_on(delivery)
                .expect("delivery report")
                .unwrap_or_else(|(e, _)| panic!("record #{} not acknowledged: {e}", o.pos));
            assert_eq!(d.partition, o.partition, "record #{} partition", o.pos);
            landed.push((d.partition, d.offset));
            let mut map = produced.lock().expect("produced offsets");
            let last = map.entry((o.topic.clone(), d.partition)).or_insert(-1);
            *last = (*last).max(d.offset);
        }
        std::thread::sleep(CHUNK_EVERY.saturating_sub(started.elapsed()));
    }
    published.store(true, Ordering::SeqCst);
    let publish_took = publish_started.elapsed();
    let (samples, caught_up) = sampler.join().expect("sampler thread");
    let drained_after = publish_started.elapsed();

    // (c) The processor is alive and ready.
    assert!(
        p.is_running(),
        "the processor thread ended (crashed or returned) while processing the corpus"
    );
    assert!(
        p.health.is_ready(),
        "the processor is not ready (/readyz would answer 503) after the corpus"
    );

    // (d) No partition stood still for a second with records to process.
    let last = samples.last().expect("at least one sample");
    assert!(
        caught_up,
        "the processor did not apply every partition to its end within {WAIT:?}: {}",
        tps.iter()
            .enumerate()
            .filter(|(i, _)| last.applied[*i] < last.produced[*i])
            .map(|(i, (t, p))| format!(
                "{t}/{p} applied {} of {}",
                last.applied[i], last.produced[i]
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let (stalls, timing_from) = longest_stalls(&samples, tps.len());
    let timing_from = timing_from
        .map(|t| format!("{:.2?}", t - publish_started))
        .unwrap_or_else(|| "never (no record applied)".into());
    let mut report = format!(
        "published {} records in {publish_took:.2?}; every partition applied to its end {drained_after:.2?} after the first send; \
         {} samples every {SAMPLE_EVERY:?}; stall timing from the first applied record, {timing_from} after the first send\n\
         {:<6} {:>9} {:>8} {:>4} {:>13} {:>10} {:>10}\n",
        outgoing.len(),
        samples.len(),
        "topic",
        "partition",
        "records",
        "bad",
        "longest stall",
        "began at",
        "at offset"
    );
    for (i, (t, part)) in tps.iter().enumerate() {
        let on = |o: &&Outgoing| &o.topic == t && o.partition == *part;
        let records = outgoing.iter().filter(on).count();
        let bad = outgoing
            .iter()
            .filter(on)
            .filter(|o| o.bad.is_some())
            .count();
        let kind = if t == &settings.topics.data_logged {
            "dl"
        } else {
            "br"
        };
        let s = stalls[i];
        let _ = writeln!(
            report,
            "{kind:<6} {part:>9} {records:>8} {bad:>4} {:>10} ms {:>10} {:>10}",
            s.longest.as_millis(),
            format!("+{:.2?}", s.began),
            s.at_offset
        );
    }
    println!("{report}");
    let stalled: Vec<String> = tps
        .iter()
        .zip(&stalls)
        .filter(|(_, s)| s.longest >= MAX_STALL)
        .map(|((t, p), s)| {
            format!(
                "{t}/{p} stood still {:.2?} at offset {} from +{:.2?}",
                s.longest, s.at_offset, s.began
            )
        })
        .collect();
    assert!(
        stalled.is_empty(),
        "a partition's applied offset did not move for {MAX_STALL:?} or more while it had records to process: {}\n{report}",
        stalled.join("; ")
    );

    // (a) The dead-letter topic holds exactly the bad records, with their
    // headers and bytes.
    let by_source: BTreeMap<(&str, i32, i64), usize> = outgoing
        .iter()
        .zip(&landed)
        .enumerate()
        .map(|(i, (o, (part, off)))| ((o.topic.as_str(), *part, *off), i))
        .collect();
    let letters = env.read_topic(&settings.topics.dead_letter, Duration::from_secs(1));
    let mut lettered = vec![0usize; outgoing.len()];
    let mut wrong: Vec<String> = Vec::new();
    let mut good_lettered: Vec<String> = Vec::new();
    for letter in &letters {
        let h = |name: &str| letter.headers.get(name).map(String::as_str).unwrap_or("");
        let source = (
            h(headers::SOURCE_TOPIC),
            h(headers::SOURCE_PARTITION).parse::<i32>().unwrap_or(-1),
            h(headers::SOURCE_OFFSET).parse::<i64>().unwrap_or(-1),
        );
        let Some(&i) = by_source.get(&source) else {
            wrong.push(format!(
                "a dead letter points at no published record: {:?}",
                letter.headers
            ));
            continue;
        };
        let o = &outgoing[i];
        let Some(b) = &o.bad else {
            good_lettered.push(format!(
                "good record #{} ({}/{}@{}, user {}) dead-lettered as {}: {}",
                o.pos,
                source.0,
                source.1,
                source.2,
                o.key,
                h(headers::ERROR_CODE),
                h(headers::ERROR_DETAIL)
            ));
            continue;
        };
        lettered[i] += 1;
        let what = format!(
            "bad record #{} ({}, {}) at {}/{}@{}",
            o.pos,
            b.class.name(),
            b.variant,
            source.0,
            source.1,
            source.2
        );
        if h(headers::ERROR_CODE) != b.reason.code() {
            wrong.push(format!(
                "{what}: error code {:?}, expected {:?} ({})",
                h(headers::ERROR_CODE),
                b.reason.code(),
                h(headers::ERROR_DETAIL)
            ));
        }
        if h(TRACE) != o.pos.to_string() {
            wrong.push(format!(
                "{what}: header {TRACE} is {:?}, expected {:?}",
                letter.headers.get(TRACE),
                o.pos.to_string()
            ));
        }
        if letter.payload != o.payload {
            wrong.push(format!(
                "{what}: payload of {} bytes differs from the {} bytes published",
                letter.payload.len(),
                o.payload.len()
            ));
        }
        if letter.key.as_deref() != Some(o.key.as_str()) {
            wrong.push(format!(
                "{what}: key {:?}, expected {:?}",
                letter.key, o.key
            ));
        }
        if h(headers::ERROR_DETAIL).is_empty() {
            wrong.push(format!("{what}: no {} header", headers::ERROR_DETAIL));
        }
        if let Some(field) = b.field {
            if !h(headers::ERROR_DETAIL).contains(field) {
                wrong.push(format!(
                    "{what}: the detail {:?} does not name the field {field}",
                    h(headers::ERROR_DETAIL)
                ));
            }
        }
    }
    let missing: Vec<String> = outgoing
        .iter()
        .zip(&lettered)
        .zip(&landed)
        .filter(|((o, n), _)| o.bad.is_some() && **n == 0)
        .map(|((o, _), (part, off))| {
            let b = o.bad.as_ref().expect("bad");
            format!(
                "#{} {} ({}, expected {}) at {}/{part}@{off}",
                o.pos,
                b.class.name(),
                b.variant,
                b.reason.code(),
                o.topic
            )
        })
        .collect();
    let twice: Vec<String> = outgoing
        .iter()
        .zip(&lettered)
        .filter(|(_, n)| **n > 1)
        .map(|(o, n)| format!("#{} dead-lettered {n} times", o.pos))
        .collect();
    assert!(
        good_lettered.is_empty(),
        "{} good records were dead-lettered, first {SHOWN}:\n{}",
        good_lettered.len(),
        first(&good_lettered)
    );
    assert!(
        missing.is_empty(),
        "{} of {bad_count} bad records are not in the dead-letter topic, first {SHOWN}:\n{}",
        missing.len(),
        first(&missing)
    );
    assert!(
        wrong.is_empty() && twice.is_empty(),
        "{} dead letters differ from their source, {} are duplicated; first {SHOWN}:\n{}\n{}",
        wrong.len(),
        twice.len(),
        first(&wrong),
        first(&twice)
    );
    assert_eq!(
        letters.len(),
        bad_count,
        "the dead-letter topic holds exactly the bad records"
    );

    // (b) Every good record was applied, and the awards are the oracle's.
    let metric = |outcome: &str, topic: &str| {
        p.metric(&format!(
            "incentives_events_total{{outcome=\"{outcome}\",topic=\"{topic}\"}}"
        ))
    };
    let mut counts = String::new();
    for kind in [EventKind::DataLogged, EventKind::BirthReported] {
        let t = topic_of(kind);
        let good_here = good.iter().filter(|e| e.kind() == kind).count() as f64;
        let bad_here = outgoing
            .iter()
            .filter(|o| o.topic == t && o.bad.is_some())
            .count() as f64;
        let (applied, dead, no_program, duplicate) = (
            metric("applied", &t),
            metric("dead_lettered", &t),
            metric("no_program", &t),
            metric("duplicate", &t),
        );
        let _ = writeln!(
            counts,
            "{kind:?}: good {good_here}, applied {applied}; bad {bad_here}, dead-lettered {dead}; no_program {no_program}, duplicate {duplicate}"
        );
        assert_eq!(
            (applied, no_program),
            (good_here, 0.0),
            "{t}: every good record counted as applied (applied, no_program)\n{counts}"
        );
        assert_eq!(
            dead, bad_here,
            "{t}: dead-lettered records are the bad ones\n{counts}"
        );
    }
    print!("{counts}");
    let mut by_reason: BTreeMap<&str, f64> = BTreeMap::new();
    for b in outgoing.iter().filter_map(|o| o.bad.as_ref()) {
        *by_reason.entry(b.reason.code()).or_default() += 1.0;
    }
    for (code, n) in &by_reason {
        assert_eq!(
            p.metric(&format!(
                "incentives_dead_letters_total{{reason=\"{code}\"}}"
            )),
            *n,
            "incentives_dead_letters_total{{reason=\"{code}\"}}"
        );
    }
    println!("dead letters by reason: {by_reason:?}");

    let awards = env.wait_for_awards(expected_awards.len(), WAIT);
    let ids = id_counts(&awards);
    let found: BTreeSet<String> = ids.keys().cloned().collect();
    let missing_awards: Vec<&String> = expected_awards.difference(&found).collect();
    let unexpected: Vec<&String> = found.difference(&expected_awards).collect();
    assert!(
        missing_awards.is_empty() && unexpected.is_empty(),
        "awards differ from the oracle's over the good records: {} missing (first {:?}), {} unexpected (first {:?})",
        missing_awards.len(),
        missing_awards.iter().take(SHOWN).collect::<Vec<_>>(),
        unexpected.len(),
        unexpected.iter().take(SHOWN).collect::<Vec<_>>()
    );
    let repeated: Vec<(&String, &usize)> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "awards published more than once without a crash: {repeated:?}"
    );
    println!("awards: {} as the oracle decided", awards.len());

    assert!(p.is_running(), "the processor thread ended");
    p.stop();
}

/// A (topic, partition)'s longest stand-still.
#[derive(Debug, Clone, Copy, Default)]
struct Stall {
    longest: Duration,
    /// When it began, after the timing started.
    began: Duration,
    /// The applied offset it stood at.
    at_offset: i64,
}

/// The longest time each (topic, partition) had records to process while its
/// applied offset stood still, from the first sample where any record was
/// applied (joining the group is no stall). Also returns when timing started.
fn longest_stalls(samples: &[Sample], n: usize) -> (Vec<Stall>, Option<Instant>) {
    let Some(start) = samples
        .iter()
        .position(|s| s.applied.iter().any(|a| *a >= 0))
    else {
        return (vec![Stall::default(); n], None);
    };
    let samples = &samples[start..];
    let t0 = samples[0].at;
    let end = samples.last().map_or(t0, |s| s.at);
    let stalls = (0..n)
        .map(|tp| {
            let mut worst = Stall::default();
            let mut since: Option<Instant> = None;
            let mut last = samples[0].applied[tp];
            let mut close = |since: Instant, until: Instant, offset: i64| {
                if until - since > worst.longest {
                    worst = Stall {
                        longest: until - since,
                        began: since - t0,
                        at_offset: offset,
                    };
                }
            };
            for s in samples {
                let pending = s.produced[tp] > s.applied[tp];
                if s.applied[tp] != last {
                    if let Some(t) = since {
                        close(t, s.at, last);
                    }
                    since = pending.then_some(s.at);
                    last = s.applied[tp];
                } else if pending {
                    since.get_or_insert(s.at);
                } else if let Some(t) = since.take() {
                    close(t, s.at, last);
                }
            }
            if let Some(t) = since {
                close(t, end, last);
            }
            worst
        })
        .collect();
    (stalls, Some(t0))
}

fn first(lines: &[String]) -> String {
    lines
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}
