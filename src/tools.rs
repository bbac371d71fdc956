//! Tools for people and tests: synthetic workloads and publishing events
//! exactly as upstream producers must (`incentives produce`; its pacing,
//! concurrency and figures live in [`crate::loadgen`]), and reading awards
//! back (`incentives awards`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::codec::SchemaRegistry;
use crate::config::KafkaSettings;
use crate::events::{AwardGranted, BirthReported, DataLogged, InputEvent};
use crate::publisher::Publisher;

/// Parameters of a synthetic workload.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub users: usize,
    pub days: u32,
    pub seed: u64,
    /// First simulated local day.
    pub start: NaiveDate,
    /// Employers the users are spread over.
    pub employers: Vec<String>,
}

/// Generates a reproducible workload: each user logs on most days (some
/// every day, some with gaps), in their own time zone, and one in ten
/// reports a birth. Events are ordered by time.
pub fn synthetic_events(s: &Synthetic) -> Vec<InputEvent> {
    const ZONES: [Tz; 5] = [
        chrono_tz::America::New_York,
        chrono_tz::Europe::Berlin,
        chrono_tz::America::Los_Angeles,
        chrono_tz::Asia::Tokyo,
        chrono_tz::Australia::Sydney,
    ];
    const KINDS: [&str; 4] = ["mood", "symptom", "sleep", "medication"];
    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut events = Vec::new();
    for u in 0..s.users {
        let user_id = format!("user-{}-{u:06}", s.seed);
        let employer = s.employers[u % s.employers.len().max(1)].clone();
        let tz = ZONES[rng.random_range(0..ZONES.len())];
        let diligent = rng.random_bool(0.6);
        for d in 0..s.days {
            if !diligent && rng.random_bool(0.3) {
                continue;
            }
            let date = s.start + chrono::Duration::days(i64::from(d));
            let minutes = rng.random_range(7 * 60..23 * 60);
            let local = date.and_time(NaiveTime::MIN) + chrono::Duration::minutes(minutes);
            let Some(at) = tz.from_local_datetime(&local).earliest() else {
                continue;
            };
            let kinds = vec![KINDS[rng.random_range(0..KINDS.len())].to_string()];
            events.push(InputEvent::DataLogged(DataLogged {
                event_id: format!("{user_id}-dl-{d}"),
                user_id: user_id.clone(),
                employer_id: employer.clone(),
                event_time: at.with_timezone(&Utc),
                time_zone: Some(tz),
                data_kinds: kinds,
            }));
        }
        if rng.random_bool(0.1) {
            let d = rng.random_range(0..s.days.max(1));
            let date = s.start + chrono::Duration::days(i64::from(d));
            let Some(at) = tz
                .from_local_datetime(&date.and_time(NaiveTime::MIN + chrono::Duration::hours(12)))
                .earliest()
            else {
                continue;
            };
            events.push(InputEvent::BirthReported(BirthReported {
                event_id: format!("{user_id}-br"),
                user_id: user_id.clone(),
                employer_id: employer.clone(),
                event_time: at.with_timezone(&Utc),
                time_zone: Some(tz),
                birth_date: date - chrono::Duration::days(1),
            }));
        }
    }
    events.sort_by_key(|e| e.event_time());
    events
}

/// What a `publish` run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishSummary {
    pub sent: usize,
    pub failed: usize,
    pub elapsed: Duration,
}

/// Publishes events (in chunks, concurrently within a chunk) and waits for
/// every acknowledgement. For a paced run with latency figures, or through
/// the gateway, see [`crate::loadgen::run`].
pub async fn publish(publisher: &Publisher, events: &[InputEvent]) -> PublishSummary {
    let started = Instant::now();
    let mut summary = PublishSummary::default();
    for chunk in events.chunks(10_000) {
        for result in publisher.publish_all(chunk).await {
            match result {
                Ok(_) => summary.sent += 1,
                Err(e) => {
                    summary.failed += 1;
                    tracing::warn!(error = %e, "event not acknowledged");
                }
            }
        }
    }
    summary.elapsed = started.elapsed();
    summary
}

/// Reads the awards topic from the beginning (or the end) until no record
/// arrived for `idle_timeout`, or `max` awards were read. Each award comes
/// with its partition and offset; undecodable records are reported as errors.
pub fn read_awards(
    kafka: &KafkaSettings,
    topic: &str,
    from_beginning: bool,
    idle_timeout: Duration,
    max: Option<usize>,
    mut on_award: impl FnMut(&AwardGranted, i32, i64),
) -> Result<Vec<AwardGranted>, String> {
    let codec = SchemaRegistry::bundled().map_err(|e| e.to_string())?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set(
            "group.id",
            format!("incentives-awards-reader-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!(
            "topic {topic:?} does not exist (run scripts/infra-up.sh)"
        ));
    }
    let mut tpl = TopicPartitionList::new();
    // From the beginning, read at least up to the end as it is now, however
    // long fetching takes; the idle timeout counts only after that.
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for &p in &partitions {
        tpl.add_partition_offset(
            topic,
            p,
            if from_beginning {
                Offset::Beginning
            } else {
                Offset::End
            },
        )
        .map_err(|e| e.to_string())?;
        if from_beginning {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(|e| format!("watermarks of {topic}: {e}"))?;
            if high > 0 {
                remaining.insert(p, high);
            }
        }
    }
    consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    let mut out = Vec::new();
    let mut last = Instant::now();
    while (!remaining.is_empty() || last.elapsed() < idle_timeout)
        && max.is_none_or(|m| out.len() < m)
    {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                last = Instant::now();
                if remaining
                    .get(&msg.partition())
                    .is_some_and(|high| msg.offset() + 1 >= *high)
                {
                    remaining.remove(&msg.partition());
                }
                match codec.decode_award(msg.payload().unwrap_or(&[])) {
                    Ok(a) => {
                        on_award(&a, msg.partition(), msg.offset());
                        out.push(a);
                    }
                    Err(e) => {
                        tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "undecodable award")
                    }
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => {}
        }
    }
    Ok(out)
}

/// Counts events per topic (for summaries).
pub fn count_by_kind(events: &[InputEvent]) -> HashMap<&'static str, usize> {
    let mut m = HashMap::new();
    for e in events {
        let k = match e {
            InputEvent::DataLogged(_) => "data_logged",
            InputEvent::BirthReported(_) => "birth_reported",
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_workloads_are_reproducible() {
        let s = Synthetic {
            users: 20,
            days: 7,
            seed: 7,
            start: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            employers: vec!["acme".into()],
        };
        let a = synthetic_events(&s);
        let b = synthetic_events(&s);
        assert_eq!(a, b);
        assert!(a.len() > 20);
        assert!(a.windows(2).all(|w| w[0].event_time() <= w[1].event_time()));
        let other = synthetic_events(&Synthetic { seed: 8, ..s });
        assert_ne!(a, other);
    }
}
