//! Publishing input events with the contract's encoding and guarantees: the
//! library an existing Rust service embeds (the "visitor on the logging
//! endpoint" of the original design), and what the gateway and
//! `incentives produce` use.
//!
//! Every event is Avro single-object encoded, keyed by user id, placed with
//! the Java client's murmur2 partitioner, and produced by an idempotent
//! producer with `acks=all`. [`Publisher::publish`] returns only after the
//! broker acknowledged the record, or fails within the deadline.
//!
//! ```no_run
//! use std::time::Duration;
//! use incentives::config::Settings;
//! use incentives::json::{new_event_id, DataLoggedJson};
//! use incentives::publisher::Publisher;
//!
//! # async fn logging_endpoint() -> Result<(), Box<dyn std::error::Error>> {
//! // Once, at start-up (brokers and topic names as in incentives.toml).
//! let settings = Settings::default();
//! let publisher = Publisher::new(&settings.kafka, &settings.topics, Duration::from_secs(5))?;
//!
//! // In the logging endpoint, after the app stored the user's log:
//! let event = DataLoggedJson {
//!     event_id: Some("log-8f14e45f".into()), // your log's id: retries stay idempotent
//!     user_id: "user-42".into(),
//!     employer_id: "acme".into(),
//!     event_time: chrono::Utc::now(),
//!     time_zone: Some("America/New_York".into()),
//!     data_kinds: vec!["mood".into()],
//! }
//! .into_event(new_event_id)?; // validated like the processor validates records
//! let acked = publisher.publish(&event).await?;
//! println!("stored at partition {} offset {}", acked.partition, acked.offset);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::codec::SchemaRegistry;
use crate::config::{KafkaSettings, TopicSettings};
use crate::events::InputEvent;
use crate::kafka::Linger;

/// Where the broker stored an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not acknowledged in time: the event may or may not be stored. Retry
    /// with the same `event_id`; the processor ignores duplicates.
    #[error("the broker did not acknowledge within {0:?}; retry with the same event_id")]
    Timeout(Duration),
    /// The broker or client refused the record: retry later.
    #[error("the broker did not store the event: {0}; retry later")]
    Broker(String),
}

/// An idempotent, acks=all producer of input events. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    codec: Arc<SchemaRegistry>,
    topics: TopicSettings,
    ack_timeout: Duration,
}

impl Publisher {
    /// Connects lazily to `kafka.brokers`; `ack_timeout` bounds every publish
    /// (librdkafka also gives up on the record then, so a late write cannot
    /// follow a reported failure by long).
    pub fn new(
        kafka: &KafkaSettings,
        topics: &TopicSettings,
        ack_timeout: Duration,
    ) -> Result<Publisher, KafkaError> {
        let codec = SchemaRegistry::bundled()
            .map_err(|e| KafkaError::ClientCreation(format!("bundled schemas: {e}")))?;
        Ok(Publisher {
            // Each publish waits for its ack (with a bounded number in
            // flight at its callers): the short linger.
            producer: crate::kafka::producer(kafka, ack_timeout, Linger::Request)?,
            codec: Arc::new(codec),
            topics: topics.clone(),
            ack_timeout,
        })
    }

    /// The topic an event belongs on.
    pub fn topic_for(&self, event: &InputEvent) -> &str {
        self.topics.input(event.kind())
    }

    /// Publishes one event; returns once the broker acknowledged it.
    pub async fn publish(&self, event: &InputEvent) -> Result<Acked, PublishError> {
        let bytes = self.codec.encode_event(event);
        let record = FutureRecord::to(self.topic_for(event))
            .key(event.user_id())
            .payload(bytes.as_slice());
        let send = self.producer.send(record, Timeout::After(self.ack_timeout));
        match tokio::time::timeout(self.ack_timeout, send).await {
            Ok(Ok(delivery)) => Ok(Acked {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut),
                _,
            ))) => Err(PublishError::Timeout(self.ack_timeout)),
            Ok(Err((e, _))) => Err(PublishError::Broker(e.to_string())),
            Err(_) => Err(PublishError::Timeout(self.ack_timeout)),
        }
    }

    /// Publishes events concurrently; one result per event, in order.
    pub async fn publish_all(&self, events: &[InputEvent]) -> Vec<Result<Acked, PublishError>> {
        join_all(events.iter().map(|e| self.publish(e))).await
    }

    /// Waits until queued records are delivered (or `timeout`).
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        let _ = self.producer.flush(timeout);
    }

    /// The underlying producer (health checks).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }
}
