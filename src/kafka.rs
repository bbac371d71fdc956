//! Kafka client settings in one place: the consumer of the processor, the
//! idempotent producer used for awards, dead letters and `produce`, and the
//! admin helpers. Only the standard protocol is used (no transactions), so
//! any Kafka-compatible broker works.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaSettings;

/// The partitioner every producer of input topics must use: the Java
/// client's default. librdkafka's own default (CRC32) places users elsewhere.
pub const PARTITIONER: &str = "murmur2_random";

fn base(settings: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.brokers);
    c
}

fn apply_overrides(c: &mut ClientConfig, settings: &KafkaSettings) {
    for (k, v) in &settings.librdkafka_options {
        c.set(k, v);
    }
}

/// The processor's consumer: offsets are stored by hand, only for records
/// whose effects are durable, and committed by librdkafka every
/// `commit_interval` (and synchronously on revoke and shutdown).
pub fn consumer_config(settings: &KafkaSettings, commit_interval: Duration) -> ClientConfig {
    let mut c = base(settings);
    c.set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            commit_interval.as_millis().to_string(),
        )
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        // Eager protocol: the rebalance callback assigns with the offsets
        // read from Redis.
        .set("partition.assignment.strategy", "range")
        .set("enable.partition.eof", "false")
        // A fetch that finds nothing new waits at most this long: some
        // brokers (nisshi) answer a waiting fetch only when the wait ends, so
        // librdkafka's 500 ms default would add up to 500 ms to the
        // event-to-award latency of a caught-up processor. Apache Kafka
        // answers as soon as a record arrives; there the only cost is an idle
        // consumer's fetch every 10 ms.
        .set("fetch.wait.max.ms", "10")
        // When the local queue is over its thresholds (queued.min.messages,
        // queued.max.messages.kbytes), librdkafka postpones a partition's
        // next fetch by this much; its 1,000 ms default stalled a draining
        // processor for 0.3-0.7 s after every ~150,000 records (half of
        // every drain was spent waiting). 10 ms re-checks the queue soon
        // after the processor took a batch from it; the thresholds still
        // bound the memory.
        .set("fetch.queue.backoff.ms", "10");
    apply_overrides(&mut c, settings);
    c
}

/// What a producer is for; it picks the crate's `linger.ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Records whose sender does not wait for each acknowledgement before
    /// it sends more (the bench's paced producer, standing in for the
    /// upstream producers): 30 ms, for fewer and larger produce requests.
    Stream,
    /// Records produced in bursts, one burst per processed batch (the
    /// processor's awards and dead letters): 5 ms gathers a burst into one
    /// produce request without holding every award for a stream's 30 ms.
    Burst,
    /// Each record's sender waits for its acknowledgement, with a bounded
    /// number in flight ([`Publisher`](crate::publisher::Publisher): the
    /// gateway, which answers 202 after the broker's ack, `produce`, the
    /// bench's backlog): 10 ms, as the linger is part of every record's
    /// wait and, with the in-flight bound, caps the rate.
    Request,
}

impl Linger {
    fn ms(self) -> &'static str {
        match self {
            Linger::Stream => "30",
            Linger::Burst => "5",
            Linger::Request => "10",
        }
    }
}

/// An idempotent producer (acks=all), partitioning like the Java client.
pub fn producer_config(
    settings: &KafkaSettings,
    delivery_timeout: Duration,
    linger: Linger,
) -> ClientConfig {
    let mut c = base(settings);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", PARTITIONER)
        // Fewer, larger produce requests: nisshi's CPU follows the number
        // of requests more than of records. 10 -> 30 ms for streams cut the
        // broker's CPU while paced by about 40% and its latency tail, and
        // doubles p50 at low rates (README, Performance, for the figures).
        // On Apache Kafka it adds at most the linger per produce at low
        // rates; `[kafka.librdkafka_options]` overrides it.
        .set("linger.ms", linger.ms())
        .set("compression.type", "lz4")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        );
    apply_overrides(&mut c, settings);
    c
}

pub fn producer(
    settings: &KafkaSettings,
    delivery_timeout: Duration,
    linger: Linger,
) -> Result<FutureProducer, KafkaError> {
    producer_config(settings, delivery_timeout, linger).create()
}

/// Why the partition count of a topic is not known.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The broker did not answer: retry.
    #[error("metadata of topic {topic:?} from {brokers}: {error} (is the broker running?)")]
    Unreachable {
        topic: String,
        brokers: String,
        error: String,
    },
    /// The broker answered that the topic does not exist: fatal.
    #[error("topic {topic:?} does not exist ({detail}); create it with scripts/infra-up.sh, `nisshi topic create` or kafka-topics.sh --create")]
    Missing { topic: String, detail: String },
}

/// The partition count of `topic`, from the broker's metadata.
pub fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<i32, TopicError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|error| TopicError::Unreachable {
            topic: topic.to_string(),
            brokers: brokers.to_string(),
            error: error.to_string(),
        })?;
    let missing = |detail: String| TopicError::Missing {
        topic: topic.to_string(),
        detail,
    };
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| missing("not in the metadata".into()))?;
    if let Some(err) = t.error() {
        return Err(missing(format!("{:?}", RDKafkaErrorCode::from(err))));
    }
    if t.partitions().is_empty() {
        return Err(missing("no partitions".into()));
    }
    Ok(t.partitions().len() as i32)
}

/// An admin client of `brokers` (topics, records).
pub fn admin_client(brokers: &str) -> Result<AdminClient<DefaultClientContext>, String> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("admin client: {e}"))
}

/// Options of the crate's admin requests: the broker gets 10 s to complete
/// each operation.
pub fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

/// Creates topics, succeeding when they already exist (tests, tools).
pub async fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> Result<(), String> {
    let admin = admin_client(brokers)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(new.iter(), &admin_options())
        .await
        .map_err(|e| format!("create topics at {brokers}: {e}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("create topic {topic}: {code}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings whose `[kafka.librdkafka_options]` hold one option.
    fn with_option(key: &str, value: &str) -> KafkaSettings {
        let mut settings = KafkaSettings::default();
        settings.librdkafka_options.insert(key.into(), value.into());
        settings
    }

    #[test]
    fn the_crates_client_choices_are_set_and_overridable() {
        let t = Duration::from_secs(5);
        let consumer = consumer_config(&KafkaSettings::default(), t);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("10"));
        let producer = producer_config(&KafkaSettings::default(), t, Linger::Stream);
        assert_eq!(producer.get("linger.ms"), Some("30"));
        let awards = producer_config(&KafkaSettings::default(), t, Linger::Burst);
        assert_eq!(awards.get("linger.ms"), Some("5"));
        let gateway = producer_config(&KafkaSettings::default(), t, Linger::Request);
        assert_eq!(gateway.get("linger.ms"), Some("10"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        // Options given in the configuration are applied last.
        let consumer = consumer_config(&with_option("fetch.queue.backoff.ms", "1000"), t);
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("1000"));
        let producer = producer_config(&with_option("linger.ms", "0"), t, Linger::Request);
        assert_eq!(producer.get("linger.ms"), Some("0"));
    }
}
