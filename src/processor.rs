//! `incentives process`: the consumer-group worker.
//!
//! One OS thread per processor owns a `BaseConsumer`, two Redis connections
//! (claims and outbox flushes on one, the hot path on the other) and an
//! idempotent producer. Each poll is taken as a batch and handled in stages,
//! with one Redis round trip for the whole batch:
//!
//! 1. decode and validate each record, check its partition, match programs
//!    (no I/O); employers without an active program stop here;
//! 2. read the partitions' meta and the users' state, in one pipeline sent
//!    behind the previous batch's writes (same connection, so Redis applied
//!    them first); unless the poll already completed them (below), their
//!    replies arrive with this read: the previous batch's awards are then
//!    produced (acks collected later) and its offsets stored;
//! 3. decide in memory (`engine`), skipping records at or below the
//!    partition's applied offset (a replay or redelivery), user by user:
//!    users are independent, so steps 1 and 3 of a batch of 512 records or
//!    more are spread over `processor.threads` scoped threads (`parallel`),
//!    and awards and dead letters are put back in record order;
//! 4. produce dead letters and wait for the broker's ack;
//! 5. send state, applied offset and awards (to the outbox) as one Redis
//!    transaction, which the `WATCH` at the start of the read of step 2
//!    aborts if another consumer claimed one of the partitions since (then
//!    it goes again as one checking `apply_batch` script per partition
//!    batch; see `state`), without waiting: the next batch is polled and
//!    decoded meanwhile; the first time a poll finds no record waiting it
//!    completes them before it lingers for more (so an award waits for one
//!    linger, not two), and an empty poll does too;
//! 6. acknowledged awards are trimmed from the outbox with the next writes;
//! 7. offsets of applied batches are committed periodically, on revoke and
//!    on exit.
//!
//! A crash anywhere re-runs from the applied offset in Redis: state is never
//! applied twice, and an award decided before the crash is re-emitted from
//! the outbox with the same id and bytes. Redis and broker faults are retried
//! with backoff (readiness false meanwhile), never dead-lettered.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::executor::block_on;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tracing::{debug, error, info, warn};

use crate::codec::SchemaRegistry;
use crate::config::{Config, ProgramIncentive};
use crate::dead_letter::{headers, DeadLetterReason};
use crate::engine::{
    apply_event, check_not_in_future, matching_rules, prune_ended_programs, Limits, UserState,
};
use crate::events::{EventKind, InputEvent, Source};
use crate::parallel;
use crate::partitioner::partition_for_key;
use crate::state::{
    live_state, stored_state, BatchRead, BatchWrite, PartitionSnapshot, RedisState, SentWrites,
    StateError, Stored, UserWrite, WriteOutcome,
};
use crate::sweeper::Sweeper;
use crate::telemetry::{Dependency, Health, Metrics};

/// How often the input topics' partition counts are checked for changes.
const METADATA_REFRESH: Duration = Duration::from_secs(30);

/// How often an unready processor asks the broker whether it is back.
const BROKER_CHECK: Duration = Duration::from_secs(2);

/// The tracing target of the per-award "award published" debug line.
pub const AWARD_LOG_TARGET: &str = "incentives::award";

/// Awards sent and not yet acknowledged beyond which the worker waits for
/// acknowledgements before going on.
const MAX_AWARDS_IN_FLIGHT: usize = 20_000;

/// A shutdown request, shared by the signal handler and the worker.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A request to re-read the catalog and programs (SIGHUP), shared by the
/// signal handler and the worker.
#[derive(Clone, Default)]
pub struct Reload(Arc<AtomicBool>);

impl Reload {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a reload was requested since the last call.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// Notices changed program files (by modification time) and reload requests.
struct ConfigWatcher {
    reload: Reload,
    interval: Duration,
    last_check: Instant,
    seen: Vec<Option<std::time::SystemTime>>,
}

impl ConfigWatcher {
    fn new(config: &Config, reload: Reload) -> ConfigWatcher {
        let files = config.program_files();
        ConfigWatcher {
            reload,
            interval: config.settings.processor.config_poll_interval,
            last_check: Instant::now(),
            seen: files.iter().map(|f| modified(f)).collect(),
        }
    }

    /// Whether the program files should be re-read now.
    fn due(&mut self, config: &Config) -> bool {
        if self.reload.take() {
            self.seen = config.program_files().iter().map(|f| modified(f)).collect();
            return true;
        }
        if self.interval.is_zero() || self.last_check.elapsed() < self.interval {
            return false;
        }
        self.last_check = Instant::now();
        let now: Vec<_> = config.program_files().iter().map(|f| modified(f)).collect();
        if now != self.seen {
            self.seen = now;
            return true;
        }
        false
    }
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Setup(String),
    #[error("redis: {0}")]
    State(#[from] StateError),
}

/// Returned by retry loops when shutdown was requested while retrying.
struct Stopped;

/// State shared between the worker loop and the rebalance callback (which
/// runs on the worker thread, inside `poll`).
struct Shared {
    redis: Mutex<RedisState>,
    /// Epoch claimed for each owned (topic, partition).
    claims: Mutex<HashMap<(String, i32), i64>>,
    /// The applied offset this instance last wrote (or found at claim) per
    /// owned partition: a lower one in Redis means Redis lost acknowledged
    /// writes (a restart that lost its last second), not a redelivery.
    written: Mutex<HashMap<(String, i32), i64>>,
    /// Outbox shards to flush before processing (newly assigned).
    pending_flush: Mutex<BTreeSet<i32>>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    max_backoff: Duration,
    /// Rebalances served so far (assignments and revocations).
    rebalances: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another holder panicked; the data is
    // still consistent for our uses (maps and a connection that reconnects).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Retries `op` with exponential backoff until it succeeds or shutdown
    /// is requested. Readiness is false while failing.
    fn retry<T, E: std::fmt::Display>(
        &self,
        dependency: Dependency,
        mut op: impl FnMut() -> Result<T, E>,
    ) -> Result<T, Stopped> {
        let mut backoff = Duration::from_millis(100);
        let mut failed = false;
        loop {
            match op() {
                Ok(v) => {
                    if failed {
                        info!(dependency = dependency.label(), "recovered");
                        self.health.set_dependency(dependency, true);
                    }
                    return Ok(v);
                }
                Err(e) => {
                    failed = true;
                    self.health.set_dependency(dependency, false);
                    self.metrics
                        .retries
                        .with_label_values(&[dependency.label()])
                        .inc();
                    warn!(dependency = dependency.label(), error = %e, backoff_ms = backoff.as_millis() as u64, "dependency failed; retrying");
                    let until = Instant::now() + backoff;
                    while Instant::now() < until {
                        if self.shutdown.is_triggered() {
                            return Err(Stopped);
                        }
                        std::thread::sleep(Duration::from_millis(20).min(backoff));
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}

struct ProcessorContext {
    shared: Arc<Shared>,
}

impl ClientContext for ProcessorContext {
    /// librdkafka's global errors: losing every broker makes us unready
    /// until the broker answers again (checked by the worker loop).
    fn error(&self, error: KafkaError, reason: &str) {
        let all_down = matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)
        );
        if all_down {
            self.shared.health.set_dependency(Dependency::Kafka, false);
            self.shared
                .metrics
                .retries
                .with_label_values(&[Dependency::Kafka.label()])
                .inc();
        }
        warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for ProcessorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.shared.rebalances.fetch_add(1, Ordering::SeqCst);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let owned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                for (topic, partition) in &owned {
                    let claim = self.shared.retry(Dependency::Redis, || {
                        lock(&self.shared.redis).claim(topic, *partition)
                    });
                    let Ok(claim) = claim else { break };
                    if claim.applied_offset >= 0 {
                        if let Err(e) = tpl.set_partition_offset(
                            topic,
                            *partition,
                            Offset::Offset(claim.applied_offset + 1),
                        ) {
                            error!(%topic, partition, error = %e, "cannot set the resume offset");
                        }
                    }
                    info!(%topic, partition, epoch = claim.epoch, applied_offset = claim.applied_offset, "partition claimed");
                    lock(&self.shared.claims).insert((topic.clone(), *partition), claim.epoch);
                    lock(&self.shared.written)
                        .insert((topic.clone(), *partition), claim.applied_offset);
                    lock(&self.shared.pending_flush).insert(*partition);
                }
                if let Err(e) = consumer.assign(tpl) {
                    error!(error = %e, "assign failed");
                }
                self.shared
                    .metrics
                    .assigned_partitions
                    .set(owned.len() as i64);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if !consumer.assignment_lost() {
                    match consumer.commit_consumer_state(CommitMode::Sync) {
                        Ok(())
                        | Err(KafkaError::ConsumerCommit(
                            rdkafka::types::RDKafkaErrorCode::NoOffset,
                        )) => {}
                        Err(e) => warn!(error = %e, "commit on revoke failed"),
                    }
                }
                let mut claims = lock(&self.shared.claims);
                for e in tpl.elements() {
                    claims.remove(&(e.topic().to_string(), e.partition()));
                    lock(&self.shared.written).remove(&(e.topic().to_string(), e.partition()));
                }
                info!(partitions = tpl.count(), "partitions revoked");
                drop(claims);
                if let Err(e) = consumer.unassign() {
                    error!(error = %e, "unassign failed");
                }
                self.shared.metrics.assigned_partitions.set(0);
            }
            other => {
                error!(error = ?other, "rebalance error");
                lock(&self.shared.claims).clear();
                let _ = consumer.unassign();
                self.shared.metrics.assigned_partitions.set(0);
            }
        }
    }
}

/// What stage 1 made of a record.
enum Staged<'c> {
    Bad(DeadLetterReason, String),
    NoProgram,
    Apply {
        event: InputEvent,
        rules: Vec<&'c ProgramIncentive>,
    },
}

/// The records of one (topic, partition) in a poll, in offset order.
type PartitionBatch<'m, 'c> = ((&'m str, i32), Vec<(&'m BorrowedMessage<'m>, Staged<'c>)>);

/// A partition batch that passed stage 3's checks, with what Redis holds.
struct GroupInput<'m, 'c, 'r> {
    topic: &'m str,
    partition: i32,
    records: &'m [(&'m BorrowedMessage<'m>, Staged<'c>)],
    snapshot: &'r PartitionSnapshot,
    read: &'r BatchRead<'m>,
    epoch: i64,
}

/// What deciding one partition batch produced, merged in partition order.
struct GroupDecision<'m> {
    dead_letters: Vec<DeadLetter<'m>>,
    /// The offset to store once the write (if any) is durable.
    offset: Option<i64>,
    write: Option<(BatchWrite, Vec<DecidedAward>)>,
}

/// One user's records to apply in one partition batch (stage 3).
struct UserWork<'a> {
    group: usize,
    user: &'a str,
    stored: Option<&'a str>,
    /// Indexes into the group's records, in offset order.
    records: Vec<usize>,
}

/// What applying one user's records decided.
struct UserOutcome {
    applied: u64,
    /// With the index of the record that decided each.
    awards: Vec<(usize, DecidedAward)>,
    rejected: Vec<(usize, crate::engine::Rejection)>,
    /// The state to store, when a record was applied.
    write: Option<UserWrite>,
}

/// Below this many records a batch is staged and decided on the polling
/// thread alone (see [`parallel`]).
const PARALLEL_MIN_RECORDS: usize = 512;

/// A dead letter waiting for the broker.
struct DeadLetter<'m> {
    msg: &'m BorrowedMessage<'m>,
    reason: DeadLetterReason,
    detail: String,
}

/// An award decided in this batch, encoded once for Redis and the broker.
struct DecidedAward {
    partition: i32,
    award_id: String,
    user_id: String,
    incentive_id: String,
    achieved_at_ms: i64,
    bytes: Vec<u8>,
}

/// What is in flight on the hot path: the previous batch's writes (sent,
/// answered with the next read) and the awards waiting for the broker.
struct Hot {
    /// The hot path's own connection: a reply pending on it must not be
    /// read by the rebalance callback's claims (on `Shared::redis`).
    redis: RedisState,
    pending: Option<PendingWrite>,
    in_flight: Vec<(DecidedAward, rdkafka::producer::DeliveryFuture)>,
    /// Acknowledged award ids by partition, trimmed with the next writes.
    acked: BTreeMap<i32, Vec<String>>,
}

/// One batch's writes, sent to Redis, not yet answered.
struct PendingWrite {
    /// The batch writes and outbox trims, as sent.
    writes: SentWrites,
    /// The awards of each batch write, emitted once it is applied.
    awards: Vec<Vec<DecidedAward>>,
    /// Offsets to store once the writes are applied.
    offsets: Vec<(String, i32, i64)>,
    /// When the writes were sent (their latency is observed as
    /// `apply_batch` once answered).
    sent_at: Instant,
}

pub struct Processor {
    hot: Mutex<Hot>,
    config: Arc<Config>,
    codec: Arc<SchemaRegistry>,
    shared: Arc<Shared>,
    consumer: BaseConsumer<ProcessorContext>,
    producer: FutureProducer,
    /// Partition counts of the input topics (for the misrouting check).
    partition_counts: HashMap<String, i32>,
    kinds: HashMap<String, EventKind>,
    limits: Limits,
    /// Threads that stage and decide a large batch (`processor.threads`).
    threads: usize,
}

impl Processor {
    /// Connects, checks the topics and subscribes. Fails with a message
    /// saying what to fix when a topic is missing.
    pub fn new(
        config: Arc<Config>,
        codec: Arc<SchemaRegistry>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        shutdown: Shutdown,
    ) -> Result<Processor, ProcessorError> {
        let s = &config.settings;
        let redis = RedisState::new(&s.redis.url, &s.redis.key_prefix, s.redis.command_timeout)?;
        let shared = Arc::new(Shared {
            redis: Mutex::new(redis),
            claims: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            pending_flush: Mutex::new(BTreeSet::new()),
            shutdown,
            metrics,
            health,
            max_backoff: s.processor.max_backoff,
            rebalances: std::sync::atomic::AtomicU64::new(0),
        });
        let consumer: BaseConsumer<ProcessorContext> =
            crate::kafka::consumer_config(&s.kafka, s.processor.commit_interval)
                .create_with_context(ProcessorContext {
                    shared: shared.clone(),
                })?;
        let producer = crate::kafka::producer(
            &s.kafka,
            s.processor.produce_timeout,
            crate::kafka::Linger::Burst,
        )?;
        let mut partition_counts = HashMap::new();
        let mut kinds = HashMap::new();
        let outputs = [
            (s.topics.awards.as_str(), None),
            (s.topics.dead_letter.as_str(), None),
        ];
        let inputs = s.topics.inputs().map(|(t, k)| (t, Some(k)));
        for (topic, kind) in inputs.into_iter().chain(outputs) {
            let n = shared
                .retry(Dependency::Kafka, || {
                    match crate::kafka::partition_count(
                        &consumer,
                        &s.kafka.brokers,
                        topic,
                        Duration::from_secs(10),
                    ) {
                        Err(crate::kafka::TopicError::Missing { topic, detail }) => {
                            Ok(Err(crate::kafka::TopicError::Missing { topic, detail }))
                        }
                        Err(e) => Err(e),
                        Ok(n) => Ok(Ok(n)),
                    }
                })
                .map_err(|_| ProcessorError::Setup("shutdown requested during start".into()))?
                .map_err(|e| ProcessorError::Setup(e.to_string()))?;
            if let Some(kind) = kind {
                partition_counts.insert(topic.to_string(), n);
                kinds.insert(topic.to_string(), kind);
            }
        }
        shared
            .retry(Dependency::Redis, || lock(&shared.redis).ping())
            .map_err(|_| ProcessorError::Setup("shutdown requested during start".into()))?;
        let topics: Vec<&str> = s.topics.inputs().iter().map(|(t, _)| *t).collect();
        consumer.subscribe(&topics)?;
        let limits = Limits::from_settings(&s.processor, &s.state);
        info!(topics = ?topics, group = %s.kafka.group_id, "processor subscribed");
        let hot = Mutex::new(Hot {
            redis: RedisState::new(&s.redis.url, &s.redis.key_prefix, s.redis.command_timeout)?,
            pending: None,
            in_flight: Vec::new(),
            acked: BTreeMap::new(),
        });
        let threads = match s.processor.threads {
            0 => parallel::available_threads(),
            n => n,
        };
        Ok(Processor {
            hot,
            config,
            codec,
            shared,
            consumer,
            producer,
            partition_counts,
            kinds,
            limits,
            threads,
        })
    }

    /// Runs until shutdown: the first request drains the current batch,
    /// commits and leaves the group.
    /// Applies a new catalog and programs when they validate; otherwise
    /// keeps the running ones and says why. New rules apply to the events
    /// processed from now on; award markers do not depend on rule versions,
    /// so a changed rule never awards a decided period again.
    fn reload_programs(&mut self) {
        match self.config.reload_programs() {
            Ok(programs) => {
                let old: HashMap<&str, &str> = self
                    .config
                    .programs
                    .all()
                    .map(|p| (p.rule_key.as_str(), p.rule_version.as_str()))
                    .collect();
                let changed: Vec<String> = programs
                    .all()
                    .filter(|p| old.get(p.rule_key.as_str()) != Some(&p.rule_version.as_str()))
                    .map(|p| format!("{}@{}", p.rule_key, p.rule_version))
                    .collect();
                info!(program_incentives = programs.all().count(), changed = ?changed, "configuration reloaded: new rules apply to events from now on");
                self.config = Arc::new(self.config.with_programs(programs));
                self.shared
                    .metrics
                    .config_reloads
                    .with_label_values(&["applied"])
                    .inc();
            }
            Err(e) => {
                error!(error = %e, "configuration reload rejected; keeping the previous configuration (fix the file and save it again, or send SIGHUP)");
                self.shared
                    .metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
            }
        }
    }

    pub fn run(self) -> Result<(), ProcessorError> {
        self.run_with_reload(Reload::default())
    }

    pub fn run_with_reload(mut self, reload: Reload) -> Result<(), ProcessorError> {
        let mut watcher = ConfigWatcher::new(&self.config, reload);
        let sweeper_stop = Shutdown::default();
        let sweeper = self.start_sweeper(sweeper_stop.clone())?;
        self.shared.health.set_ready(true);
        let max = self.config.settings.processor.max_batch_records;
        let linger = self.config.settings.processor.batch_linger;
        let mut last_metadata_refresh = Instant::now();
        let mut last_broker_check = Instant::now();
        while !self.shared.shutdown.is_triggered() {
            if watcher.due(&self.config) {
                self.reload_programs();
            }
            if self.flush_pending_outboxes().is_err() {
                break;
            }
            let batch = self.poll_batch(max, linger);
            if batch.is_empty() {
                if self.drain(false).is_err() {
                    break;
                }
                if !self.shared.health.dependency_up(Dependency::Kafka)
                    && last_broker_check.elapsed() > BROKER_CHECK
                {
                    last_broker_check = Instant::now();
                    if self
                        .consumer
                        .fetch_metadata(None, Duration::from_secs(1))
                        .is_ok()
                    {
                        info!(dependency = "kafka", "recovered");
                        self.shared.health.set_dependency(Dependency::Kafka, true);
                    }
                }
                continue;
            }
            self.shared.health.set_dependency(Dependency::Kafka, true);
            self.shared.metrics.batch_size.observe(batch.len() as f64);
            if self.process_batch(&batch).is_err() {
                break;
            }
            drop(batch);
            if last_metadata_refresh.elapsed() > METADATA_REFRESH {
                self.refresh_partition_counts();
                last_metadata_refresh = Instant::now();
            }
        }
        self.shared.health.set_ready(false);
        info!("draining: completing writes and awards in flight, committing offsets and leaving the group");
        if self.drain(true).is_err() {
            warn!("stopped before the last writes completed; the next owner resumes from Redis and re-emits the outbox");
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => warn!(error = %e, "final commit failed"),
        }
        self.consumer.unsubscribe();
        // Serve the revoke callback so the group rebalances at once.
        let _ = self.consumer.poll(Duration::from_millis(100));
        sweeper_stop.trigger();
        if sweeper.join().is_err() {
            error!("the sweeper thread panicked");
        }
        info!("processor stopped");
        Ok(())
    }

    /// Starts the thread that deletes expired states of the owned shards.
    fn start_sweeper(&self, stop: Shutdown) -> Result<std::thread::JoinHandle<()>, ProcessorError> {
        let s = &self.config.settings;
        let shared = self.shared.clone();
        let kinds = self.kinds.clone();
        let sweeper = Sweeper {
            redis: RedisState::new(&s.redis.url, &s.redis.key_prefix, s.redis.command_timeout)?,
            interval: s.state.sweep_interval,
            owned: Box::new(move || {
                lock(&shared.claims)
                    .keys()
                    .filter_map(|(topic, p)| kinds.get(topic).map(|k| (*p, *k)))
                    .collect()
            }),
            shutdown: stop,
            metrics: self.shared.metrics.clone(),
        };
        std::thread::Builder::new()
            .name("sweeper".into())
            .spawn(move || sweeper.run())
            .map_err(|e| ProcessorError::Setup(format!("cannot start the sweeper thread: {e}")))
    }

    fn refresh_partition_counts(&mut self) {
        // Cheap: librdkafka caches metadata; only a changed count matters.
        for (topic, count) in self.partition_counts.iter_mut() {
            if let Some(n) = self
                .consumer
                .client()
                .fetch_metadata(Some(topic), Duration::from_millis(0))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map(|t| t.partitions().len() as i32)
                })
            {
                if n > 0 && n != *count {
                    warn!(%topic, old = *count, new = n, "partition count changed: users move between partitions; see README (repartitioning)");
                    *count = n;
                }
            }
        }
    }

    fn poll_batch(&self, max: usize, linger: Duration) -> Vec<BorrowedMessage<'_>> {
        let mut batch = Vec::new();
        // Records taken before a rebalance inside this poll are dropped:
        // every partition was assigned again (eager protocol) and resumes
        // from its applied offset in Redis, so they come again, in order.
        let mut generation = self.shared.rebalances.load(Ordering::SeqCst);
        // With writes or awards in flight, wait briefly: an empty poll
        // completes them (awards should not wait for the next record).
        let first_wait = {
            let hot = lock(&self.hot);
            if hot.pending.is_some() || !hot.in_flight.is_empty() || !hot.acked.is_empty() {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(100)
            }
        };
        match self.consumer.poll(first_wait) {
            None => return batch,
            Some(Err(e)) => {
                warn!(error = %e, "consumer error");
                return batch;
            }
            Some(Ok(m)) => batch.push(m),
        }
        let deadline = Instant::now() + linger;
        let mut completed = false;
        while batch.len() < max {
            // Records already fetched are taken with a zero timeout; the
            // deadline is looked at (one clock read of ours) only when the
            // queue is empty. librdkafka still reads the clock per poll.
            let next = match self.consumer.poll(Duration::ZERO) {
                Some(next) => Some(next),
                None if !completed => {
                    // The queue is empty: complete the previous batch's
                    // writes before waiting out the linger, so that its
                    // awards go out now and not after this batch's linger
                    // as well. What their replies show lost or claimed
                    // again is dropped from the records taken so far, as
                    // `process_batch` does with the replies it reads; the
                    // records taken after this come from the position a
                    // re-claim sought, or are dropped there as not owned.
                    completed = true;
                    let mut hot = lock(&self.hot);
                    let Ok(lost) = self
                        .complete_pending(&mut hot)
                        .and_then(|lost| self.collect_acks(&mut hot).map(|()| lost))
                    else {
                        return Vec::new(); // stopping: nothing more is applied
                    };
                    if !lost.is_empty() {
                        batch.retain(|m| {
                            !lost
                                .iter()
                                .any(|(t, p)| t == m.topic() && *p == m.partition())
                        });
                    }
                    continue;
                }
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.consumer.poll(left)
                }
            };
            match next {
                Some(Ok(m)) => {
                    let now = self.shared.rebalances.load(Ordering::SeqCst);
                    if now != generation {
                        debug!(
                            dropped = batch.len(),
                            "rebalance inside a poll: records taken before it come again"
                        );
                        batch.clear();
                        generation = now;
                    }
                    batch.push(m)
                }
                Some(Err(e)) => warn!(error = %e, "consumer error"),
                None => break,
            }
        }
        batch
    }

    /// Stage 1: everything that needs no I/O.
    fn stage<'c>(&'c self, msg: &BorrowedMessage<'_>, now: chrono::DateTime<Utc>) -> Staged<'c> {
        let payload = msg.payload().unwrap_or(&[]);
        if payload.len() > self.config.settings.processor.max_record_bytes {
            return Staged::Bad(
                DeadLetterReason::Oversize,
                format!(
                    "{} bytes is over processor.max_record_bytes {}",
                    payload.len(),
                    self.config.settings.processor.max_record_bytes
                ),
            );
        }
        let event = match self.codec.decode_event(payload) {
            Ok(e) => e,
            Err(e) => return Staged::Bad(e.reason(), e.to_string()),
        };
        if self.kinds.get(msg.topic()) != Some(&event.kind()) {
            return Staged::Bad(
                DeadLetterReason::InvalidField,
                format!(
                    "a {:?} record does not belong on topic {}",
                    event.kind(),
                    msg.topic()
                ),
            );
        }
        if let Some(&count) = self.partition_counts.get(msg.topic()) {
            let expected = partition_for_key(event.user_id().as_bytes(), count);
            if expected != msg.partition() {
                return Staged::Bad(
                    DeadLetterReason::Misrouted,
                    format!(
                        "user_id {:?} belongs in partition {expected} of {count} (murmur2), the record is in {}; produce with partitioner=murmur2_random and key = user_id",
                        event.user_id(),
                        msg.partition()
                    ),
                );
            }
        }
        if let Err(r) = check_not_in_future(&event, now, &self.limits) {
            return Staged::Bad(r.reason, r.detail);
        }
        let rules = matching_rules(&self.config.programs, &event);
        if rules.is_empty() {
            return Staged::NoProgram;
        }
        Staged::Apply { event, rules }
    }

    fn process_batch(&self, batch: &[BorrowedMessage<'_>]) -> Result<(), Stopped> {
        let now = Utc::now();
        let metrics = &self.shared.metrics;
        // Group by (topic, partition), keeping each partition's order.
        let mut groups: BTreeMap<(&str, i32), Vec<(&BorrowedMessage<'_>, Staged<'_>)>> =
            BTreeMap::new();
        let staged = parallel::map(
            batch,
            |_| 1,
            self.threads,
            PARALLEL_MIN_RECORDS,
            |msg| self.stage(msg, now),
        );
        for (msg, staged) in batch.iter().zip(staged) {
            groups
                .entry((msg.topic(), msg.partition()))
                .or_default()
                .push((msg, staged));
        }
        // Drop partitions this instance does not own (revoked mid-poll).
        let claims = lock(&self.shared.claims).clone();
        groups.retain(|(topic, partition), _| {
            let owned = claims.contains_key(&(topic.to_string(), *partition));
            if !owned {
                debug!(%topic, partition, "skipping records of a partition not owned");
            }
            owned
        });
        // Partition batches of employers without an active program need no
        // Redis at all: count them and move their offsets (once the writes
        // before them are durable).
        let mut offsets_to_store: Vec<(String, i32, i64)> = Vec::new();
        let groups: Vec<PartitionBatch<'_, '_>> = groups
            .into_iter()
            .filter(|((topic, partition), records)| {
                if records
                    .iter()
                    .all(|(_, staged)| matches!(staged, Staged::NoProgram))
                {
                    metrics
                        .events
                        .with_label_values(&[topic, "no_program"])
                        .inc_by(records.len() as u64);
                    if let Some((last, _)) = records.last() {
                        offsets_to_store.push((topic.to_string(), *partition, last.offset()));
                    }
                    false
                } else {
                    true
                }
            })
            .collect();

        // Stage 2: one round trip reads every partition's meta and users,
        // behind the previous batch's writes (sent on the same connection,
        // so Redis applied them first and this read sees them).
        let requests: Vec<BatchRead<'_>> = groups
            .iter()
            .map(|((topic, partition), records)| {
                let mut seen: HashSet<&str> = HashSet::with_capacity(records.len());
                let mut users: Vec<&str> = Vec::with_capacity(records.len());
                for (_, staged) in records {
                    if let Staged::Apply { event, .. } = staged {
                        if seen.insert(event.user_id()) {
                            users.push(event.user_id());
                        }
                    }
                }
                BatchRead {
                    topic,
                    partition: *partition,
                    // Every group holds a record of an input topic.
                    kind: self
                        .kinds
                        .get(*topic)
                        .copied()
                        .unwrap_or(EventKind::DataLogged),
                    users,
                }
            })
            .collect();
        let mut hot = lock(&self.hot);
        let hot = &mut *hot;
        let started = Instant::now();
        let (outcomes, snapshots) = self.shared.retry(Dependency::Redis, || {
            let writes = hot.pending.as_mut().map(|p| &mut p.writes);
            hot.redis.read_after(writes, &requests)
        })?;
        metrics
            .transactions_aborted
            .inc_by(hot.redis.take_aborted());
        metrics
            .redis_latency
            .with_label_values(&["read"])
            .observe(started.elapsed().as_secs_f64());
        let reset = match hot.pending.take() {
            Some(previous) => self.finish_writes(hot, previous, outcomes)?,
            None => BTreeSet::new(),
        };
        self.collect_acks(hot)?;

        // Stage 3: decide in memory. The checks that act on shared state run
        // here, in order; the partitions that pass are decided in parallel.
        let claims = lock(&self.shared.claims).clone();
        let mut to_decide: Vec<GroupInput<'_, '_, '_>> = Vec::with_capacity(groups.len());
        for (((topic, partition), records), (snapshot, read)) in
            groups.iter().zip(snapshots.iter().zip(&requests))
        {
            if reset.contains(&(topic.to_string(), *partition)) {
                continue; // its writes failed just now: handled there
            }
            let owned = (topic.to_string(), *partition);
            let Some(epoch) = claims.get(&owned).copied() else {
                continue; // lost while the previous writes completed
            };
            let written = lock(&self.shared.written).get(&owned).copied();
            let went_back = snapshot.epoch.unwrap_or(0) < epoch
                || written.is_some_and(|w| snapshot.applied_offset < w);
            if went_back {
                // Redis lost writes it had acknowledged. Claim again (above
                // any epoch seen) and re-apply from what Redis holds: the same
                // records in the same order decide the same awards.
                error!(%topic, partition, ours = epoch, stored = ?snapshot.epoch, written = ?written, applied = snapshot.applied_offset,
                    "Redis went back in time (lost acknowledged writes); re-claiming and re-applying from its applied offset");
                self.reclaim_after_regression(topic, *partition, epoch)?;
                continue;
            }
            if snapshot.epoch != Some(epoch) {
                warn!(%topic, partition, ours = epoch, stored = ?snapshot.epoch, "partition claimed by another consumer; dropping its batch");
                lock(&self.shared.claims).remove(&owned);
                continue;
            }
            to_decide.push(GroupInput {
                topic,
                partition: *partition,
                records,
                snapshot,
                read,
                epoch,
            });
        }
        let now_s = now.timestamp();
        let decisions = self.decide_groups(&to_decide, now_s);
        let mut dead_letters: Vec<DeadLetter<'_>> = Vec::new();
        let mut writes: Vec<BatchWrite> = Vec::new();
        let mut decided: Vec<Vec<DecidedAward>> = Vec::new();
        for (g, decision) in to_decide.iter().zip(decisions) {
            dead_letters.extend(decision.dead_letters);
            if let Some(offset) = decision.offset {
                offsets_to_store.push((g.topic.to_string(), g.partition, offset));
            }
            if let Some((write, awards)) = decision.write {
                writes.push(write);
                decided.push(awards);
            }
        }

        // Stage 4: dead letters reach the broker before the offset moves.
        if !dead_letters.is_empty() {
            self.publish_dead_letters(&dead_letters)?;
        }

        // Stage 5: one transaction for the batch's writes, sent now and
        // answered with the next read (or the drain): the next batch is
        // polled and decoded while Redis applies this one.
        let trims: Vec<(i32, Vec<String>)> = std::mem::take(&mut hot.acked).into_iter().collect();
        let mut pending = PendingWrite {
            writes: hot.redis.pack_writes(writes, &trims),
            awards: decided,
            offsets: offsets_to_store,
            sent_at: Instant::now(),
        };
        hot.redis.send_writes(&mut pending.writes);
        hot.pending = Some(pending);
        Ok(())
    }

    /// Stage 3 for the partition batches that passed the checks: parse the
    /// users' stored states, apply each user's records in offset order,
    /// encode the states to write. Users are independent, so they are
    /// decided in parallel (a batch often holds one partition's records);
    /// awards and dead letters are put back in record order, so the result
    /// is the same as deciding the records one by one.
    fn decide_groups<'m>(
        &self,
        groups: &[GroupInput<'m, '_, '_>],
        now_s: i64,
    ) -> Vec<GroupDecision<'m>> {
        let metrics = &self.shared.metrics;
        // 3a: each group's users, with the indexes of their records to apply.
        let mut work: Vec<UserWork<'_>> = Vec::new();
        let mut decisions: Vec<GroupDecision<'m>> = Vec::with_capacity(groups.len());
        let mut tallies: Vec<(u64, u64)> = Vec::with_capacity(groups.len());
        for (gi, g) in groups.iter().enumerate() {
            let applied = g.snapshot.applied_offset;
            let mut index: HashMap<&str, usize> = HashMap::with_capacity(g.read.users.len());
            for (user, stored) in g.read.users.iter().zip(&g.snapshot.users) {
                index.insert(user, work.len());
                work.push(UserWork {
                    group: gi,
                    user,
                    stored: stored.as_deref(),
                    records: Vec::new(),
                });
            }
            let mut decision = GroupDecision {
                dead_letters: Vec::new(),
                offset: None,
                write: None,
            };
            let mut last_offset = applied;
            let (mut duplicate_n, mut no_program_n) = (0u64, 0u64);
            for (ri, (msg, staged)) in g.records.iter().enumerate() {
                if msg.offset() <= applied {
                    duplicate_n += 1;
                    continue;
                }
                last_offset = last_offset.max(msg.offset());
                match staged {
                    Staged::Bad(reason, detail) => decision.dead_letters.push(DeadLetter {
                        msg,
                        reason: *reason,
                        detail: detail.clone(),
                    }),
                    Staged::NoProgram => no_program_n += 1,
                    Staged::Apply { event, .. } => {
                        if let Some(&wi) = index.get(event.user_id()) {
                            work[wi].records.push(ri);
                        }
                    }
                }
            }
            if last_offset > applied {
                decision.offset = Some(last_offset);
            }
            decisions.push(decision);
            tallies.push((duplicate_n, no_program_n));
        }
        // 3b: every user of every group, in parallel.
        let outcomes = parallel::map(
            &work,
            |w| w.records.len() + 1,
            self.threads,
            PARALLEL_MIN_RECORDS,
            |w| self.decide_user(&groups[w.group], w, now_s),
        );
        // 3c: back in record order, per group.
        let mut per_group: Vec<Vec<UserOutcome>> = (0..groups.len()).map(|_| Vec::new()).collect();
        for (outcome, w) in outcomes.into_iter().zip(&work) {
            per_group[w.group].push(outcome);
        }
        for (((g, decision), (duplicate_n, no_program_n)), users) in groups
            .iter()
            .zip(decisions.iter_mut())
            .zip(tallies)
            .zip(per_group)
        {
            let mut applied_n = 0u64;
            let mut awards: Vec<(usize, DecidedAward)> = Vec::new();
            let mut writes: Vec<UserWrite> = Vec::new();
            let mut rejected = false;
            for outcome in users {
                applied_n += outcome.applied;
                awards.extend(outcome.awards);
                for (ri, r) in outcome.rejected {
                    rejected = true;
                    decision.dead_letters.push(DeadLetter {
                        msg: g.records[ri].0,
                        reason: r.reason,
                        detail: r.detail,
                    });
                }
                writes.extend(outcome.write);
            }
            for (outcome, n) in [
                ("applied", applied_n),
                ("duplicate", duplicate_n),
                ("no_program", no_program_n),
            ] {
                if n > 0 {
                    metrics
                        .events
                        .with_label_values(&[g.topic, outcome])
                        .inc_by(n);
                }
            }
            if rejected {
                // Stage 1's dead letters and the engine's, in record order.
                decision.dead_letters.sort_by_key(|d| d.msg.offset());
            }
            let Some(new_offset) = decision.offset else {
                continue; // all duplicates
            };
            // Stable: a record's awards keep the order the engine gave them.
            awards.sort_by_key(|(ri, _)| *ri);
            let awards: Vec<DecidedAward> = awards.into_iter().map(|(_, a)| a).collect();
            if writes.is_empty() && awards.is_empty() && decision.dead_letters.is_empty() {
                continue; // nothing durable to record: no Redis write needed
            }
            let write = BatchWrite {
                topic: g.topic.to_string(),
                partition: g.partition,
                kind: g.read.kind,
                epoch: g.epoch,
                expected_offset: g.snapshot.applied_offset,
                new_offset,
                users: writes,
                awards: awards
                    .iter()
                    .map(|a| (a.award_id.clone(), a.bytes.clone()))
                    .collect(),
            };
            decision.write = Some((write, awards));
        }
        decisions
    }

    /// One user's records of one partition batch, in offset order.
    fn decide_user(&self, g: &GroupInput<'_, '_, '_>, w: &UserWork<'_>, now_s: i64) -> UserOutcome {
        let metrics = &self.shared.metrics;
        let mut outcome = UserOutcome {
            applied: 0,
            awards: Vec::new(),
            rejected: Vec::new(),
            write: None,
        };
        if w.records.is_empty() {
            return outcome;
        }
        let (mut state, malformed) = match w.stored.map(|v| live_state(v, now_s)) {
            Some(Stored::Live(body)) => UserState::decode(body, &self.config.programs.codes),
            Some(Stored::Malformed) => {
                metrics.malformed_state.with_label_values(&["expiry"]).inc();
                (UserState::default(), 0)
            }
            Some(Stored::Expired) | None => (UserState::default(), 0),
        };
        if malformed > 0 {
            metrics
                .malformed_state
                .with_label_values(&["field"])
                .inc_by(malformed as u64);
        }
        for &ri in &w.records {
            let (msg, staged) = &g.records[ri];
            let Staged::Apply { event, rules } = staged else {
                continue;
            };
            let source = Source {
                topic: g.topic,
                partition: g.partition,
                offset: msg.offset(),
            };
            match apply_event(&mut state, event, rules, source, &self.limits) {
                Ok(new_awards) => {
                    outcome.applied += 1;
                    for award in new_awards {
                        outcome.awards.push((
                            ri,
                            DecidedAward {
                                partition: g.partition,
                                bytes: self.codec.encode_award(&award),
                                award_id: award.award_id,
                                user_id: award.user_id,
                                incentive_id: award.incentive_id,
                                achieved_at_ms: award.achieved_at.timestamp_millis(),
                            },
                        ));
                    }
                }
                Err(rejection) => outcome.rejected.push((ri, rejection)),
            }
        }
        if outcome.applied == 0 {
            return outcome; // unchanged: nothing to write
        }
        if let (Some(kind), Some(employer)) = (self.kinds.get(g.topic), state.employer.as_deref()) {
            let employer_rules = self.config.programs.for_employer(employer, *kind);
            prune_ended_programs(&mut state, *kind, employer_rules, &self.limits);
        }
        let ttl = if state.has_awards() {
            self.config.settings.state.award_ttl
        } else {
            self.config.settings.state.idle_ttl
        };
        let expires_at = now_s.saturating_add(ttl.as_secs().max(1) as i64);
        let mut nothing_kept = false;
        let mut value = stored_state(expires_at, |out| {
            let before = out.len();
            state.encode_into(out, &self.config.programs.codes);
            nothing_kept = out.len() == before;
        });
        if nothing_kept {
            value.clear(); // an empty value deletes the state
        }
        outcome.write = Some(UserWrite {
            user_id: w.user.to_string(),
            value,
        });
        outcome
    }

    /// The previous batch's writes were answered: emit the awards of those
    /// applied (without waiting for the acks), store their offsets, and
    /// handle those refused. Returns the partitions whose writes failed.
    fn finish_writes(
        &self,
        hot: &mut Hot,
        previous: PendingWrite,
        outcomes: Vec<WriteOutcome>,
    ) -> Result<BTreeSet<(String, i32)>, Stopped> {
        // Partitions whose writes failed: their offsets are not stored.
        let mut failed: BTreeSet<(String, i32)> = BTreeSet::new();
        // Of those, the ones whose records in the current batch must not be
        // applied (lost to another consumer, or re-claimed after a regression).
        let mut lost: BTreeSet<(String, i32)> = BTreeSet::new();
        let mut to_emit: Vec<DecidedAward> = Vec::new();
        if !previous.writes.batches().is_empty() {
            // From sending the scripts to reading their replies (the next
            // batch was polled and decoded meanwhile).
            self.shared
                .metrics
                .redis_latency
                .with_label_values(&["apply_batch"])
                .observe(previous.sent_at.elapsed().as_secs_f64());
        }
        for ((write, outcome), awards) in previous
            .writes
            .batches()
            .iter()
            .zip(outcomes)
            .zip(previous.awards)
        {
            let owned = (write.topic.clone(), write.partition);
            let applied_ok = matches!(outcome, WriteOutcome::Applied)
                || matches!(outcome, WriteOutcome::OffsetMoved { actual } if actual == write.new_offset);
            if applied_ok {
                lock(&self.shared.written).insert(owned.clone(), write.new_offset);
                to_emit.extend(awards);
                continue;
            }
            failed.insert(owned.clone());
            // The write was sent before the last poll, whose rebalance may
            // have claimed the partition again (a newer epoch, resuming from
            // Redis's applied offset, so the current batch's records of it are
            // good): that claim stands, this write's failure is its own.
            let current = lock(&self.shared.claims).get(&owned).copied();
            if current != Some(write.epoch) {
                debug!(topic = %write.topic, partition = write.partition, outcome = ?outcome, ours = write.epoch, now = ?current,
                    "write of an earlier claim not applied; the partition was revoked or claimed again since");
                continue;
            }
            lost.insert(owned.clone());
            match outcome {
                WriteOutcome::OffsetMoved { actual } if actual < write.expected_offset => {
                    error!(topic = %write.topic, partition = write.partition, actual, expected = write.expected_offset,
                        "Redis went back in time during the batch; re-claiming and re-applying");
                    self.reclaim_after_regression(&write.topic, write.partition, write.epoch)?;
                }
                other => {
                    warn!(topic = %write.topic, partition = write.partition, outcome = ?other, "batch not applied: partition lost to another consumer");
                    lock(&self.shared.claims).remove(&owned);
                }
            }
        }
        for (partition, ids) in previous.writes.trims() {
            debug!(
                partition,
                trimmed = ids.len(),
                "acknowledged awards trimmed from the outbox"
            );
        }
        // Stage 6: awards to the broker; acks are collected later.
        for award in to_emit {
            let record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(&self.config.settings.topics.awards)
                    .key(award.user_id.as_str())
                    .payload(award.bytes.as_slice());
            match self.producer.send_result(record) {
                Ok(delivery) => hot.in_flight.push((award, delivery)),
                Err((e, _)) => {
                    debug!(error = %e, "award not queued; publishing it synchronously");
                    self.publish_awards(std::slice::from_ref(&award))?;
                }
            }
        }
        // Stage 7: offsets for records whose effects are durable.
        for (topic, partition, offset) in previous.offsets {
            if failed.contains(&(topic.clone(), partition)) {
                continue;
            }
            if let Err(e) = self.consumer.store_offset(&topic, partition, offset) {
                debug!(%topic, partition, error = %e, "offset not stored (partition revoked?)");
            }
        }
        Ok(lost)
    }

    /// Takes the acknowledgements that arrived (without waiting): acked
    /// awards are trimmed from the outbox with the next writes; a failed one
    /// is published again, waiting for the broker (readiness false).
    fn collect_acks(&self, hot: &mut Hot) -> Result<(), Stopped> {
        use futures::FutureExt;
        let mut failed = Vec::new();
        let mut still = Vec::with_capacity(hot.in_flight.len());
        let must_wait = hot.in_flight.len() > MAX_AWARDS_IN_FLIGHT;
        for (award, mut delivery) in std::mem::take(&mut hot.in_flight) {
            let result = if must_wait {
                Some(block_on(&mut delivery))
            } else {
                (&mut delivery).now_or_never()
            };
            match result {
                None => still.push((award, delivery)),
                Some(Ok(Ok(_))) => {
                    self.award_published(&award);
                    hot.acked
                        .entry(award.partition)
                        .or_default()
                        .push(award.award_id);
                }
                Some(Ok(Err((e, _)))) => {
                    warn!(award_id = %award.award_id, error = %e, "award not acknowledged; publishing it again");
                    failed.push(award);
                }
                Some(Err(_)) => failed.push(award),
            }
        }
        hot.in_flight = still;
        if !failed.is_empty() {
            // Trims itself once acknowledged.
            self.publish_awards(&failed)?;
        }
        Ok(())
    }

    /// Completes what is in flight: the last writes' replies (so their
    /// awards go out) and the outbox trims of the awards acknowledged so far.
    /// With `wait_acks` (before shutdown) it also waits for every award's
    /// acknowledgement; without (when a poll is empty) the acks still out are
    /// collected by the next batch or empty poll, so new records are not held
    /// behind a produce round trip.
    fn drain(&self, wait_acks: bool) -> Result<(), Stopped> {
        let mut hot = lock(&self.hot);
        let hot = &mut *hot;
        self.complete_pending(hot)?;
        loop {
            let before = hot.in_flight.len();
            self.collect_acks(hot)?;
            if !wait_acks || hot.in_flight.is_empty() {
                break;
            }
            if hot.in_flight.len() == before {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if !hot.acked.is_empty() {
            let trims: Vec<(i32, Vec<String>)> =
                std::mem::take(&mut hot.acked).into_iter().collect();
            let mut writes = hot.redis.pack_writes(Vec::new(), &trims);
            self.shared.retry(Dependency::Redis, || {
                hot.redis.read_after(Some(&mut writes), &[])
            })?;
        }
        Ok(())
    }

    /// Reads the replies of the writes in flight, if any, and completes
    /// them ([`Self::finish_writes`]: awards produced, offsets stored). The
    /// partitions whose records taken since must not be applied.
    fn complete_pending(&self, hot: &mut Hot) -> Result<BTreeSet<(String, i32)>, Stopped> {
        let Some(mut previous) = hot.pending.take() else {
            return Ok(BTreeSet::new());
        };
        let redis = &mut hot.redis;
        let (outcomes, _) = self.shared.retry(Dependency::Redis, || {
            redis.read_after(Some(&mut previous.writes), &[])
        })?;
        self.shared
            .metrics
            .transactions_aborted
            .inc_by(hot.redis.take_aborted());
        self.finish_writes(hot, previous, outcomes)
    }

    fn award_published(&self, a: &DecidedAward) {
        self.shared
            .metrics
            .awards
            .with_label_values(&[a.incentive_id.as_str()])
            .inc();
        let latency_ms = (Utc::now().timestamp_millis() - a.achieved_at_ms).max(0);
        self.shared
            .metrics
            .event_to_award
            .observe(latency_ms as f64 / 1000.0);
        // One line per award is a cost at full speed (formatting it was 6% of
        // the processor's CPU in a drain), so it is a debug line of its own
        // target: `log.filter = "info,incentives::award=debug"` shows it.
        debug!(target: AWARD_LOG_TARGET, award_id = %a.award_id, user_id = %a.user_id, incentive = %a.incentive_id, "award published");
    }

    /// Redis lost writes it had acknowledged: claim the partition again
    /// (above any epoch seen) and seek back to what Redis holds, so the
    /// records are re-applied in the same order and decide the same awards.
    fn reclaim_after_regression(
        &self,
        topic: &str,
        partition: i32,
        seen_epoch: i64,
    ) -> Result<(), Stopped> {
        self.shared
            .metrics
            .retries
            .with_label_values(&["redis_state_regressed"])
            .inc();
        let owned = (topic.to_string(), partition);
        let claim = self.shared.retry(Dependency::Redis, || {
            lock(&self.shared.redis).claim_above(topic, partition, seen_epoch)
        })?;
        lock(&self.shared.claims).insert(owned.clone(), claim.epoch);
        lock(&self.shared.written).insert(owned.clone(), claim.applied_offset);
        lock(&self.shared.pending_flush).insert(partition);
        let resume = if claim.applied_offset >= 0 {
            Offset::Offset(claim.applied_offset + 1)
        } else {
            Offset::Beginning
        };
        if let Err(e) = self
            .consumer
            .seek(topic, partition, resume, Duration::from_secs(5))
        {
            error!(%topic, partition, error = %e, "seek back failed; the partition resumes from Redis at its next assignment");
            lock(&self.shared.claims).remove(&owned);
        }
        Ok(())
    }

    fn publish_dead_letters(&self, letters: &[DeadLetter<'_>]) -> Result<(), Stopped> {
        let topic = &self.config.settings.topics.dead_letter;
        let mut pending: Vec<usize> = (0..letters.len()).collect();
        let timeout = self.config.settings.processor.produce_timeout;
        self.shared.retry(Dependency::Kafka, || {
            let futures: Vec<_> = pending
                .iter()
                .map(|&i| {
                    let l = &letters[i];
                    let mut hdrs = OwnedHeaders::new();
                    if let Some(original) = l.msg.headers() {
                        for h in original.iter() {
                            hdrs = hdrs.insert(Header { key: h.key, value: h.value });
                        }
                    }
                    let partition = l.msg.partition().to_string();
                    let offset = l.msg.offset().to_string();
                    let detail: String = l.detail.chars().take(512).collect();
                    hdrs = hdrs
                        .insert(Header { key: headers::SOURCE_TOPIC, value: Some(l.msg.topic()) })
                        .insert(Header { key: headers::SOURCE_PARTITION, value: Some(&partition) })
                        .insert(Header { key: headers::SOURCE_OFFSET, value: Some(&offset) })
                        .insert(Header { key: headers::ERROR_CODE, value: Some(l.reason.code()) })
                        .insert(Header { key: headers::ERROR_DETAIL, value: Some(&detail) });
                    let mut record: FutureRecord<'_, [u8], [u8]> =
                        FutureRecord::to(topic).payload(l.msg.payload().unwrap_or(&[])).headers(hdrs);
                    if let Some(key) = l.msg.key() {
                        record = record.key(key);
                    }
                    (i, self.producer.send_result(record).map_err(|(e, _)| e))
                })
                .collect();
            let mut failed = Vec::new();
            let mut last_error = None;
            for (i, f) in futures {
                let result = match f {
                    Ok(delivery) => match block_on(delivery) {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(e.to_string()),
                        Err(_) => Err("delivery canceled".to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(()) => {
                        let l = &letters[i];
                        self.shared.metrics.dead_letters.with_label_values(&[l.reason.code()]).inc();
                        self.shared.metrics.events.with_label_values(&[l.msg.topic(), "dead_lettered"]).inc();
                        warn!(topic = l.msg.topic(), partition = l.msg.partition(), offset = l.msg.offset(), reason = l.reason.code(), detail = %l.detail, "record dead-lettered");
                    }
                    Err(e) => {
                        failed.push(i);
                        last_error = Some(e);
                    }
                }
            }
            pending = failed;
            match last_error {
                None => Ok(()),
                Some(e) => Err(format!("dead-letter topic {topic}: {e} (timeout {}s)", timeout.as_secs())),
            }
        })
    }

    /// Produces awards (idempotent, acks=all), waits for the acks, then
    /// removes them from their outboxes.
    fn publish_awards(&self, awards: &[DecidedAward]) -> Result<(), Stopped> {
        let topic = &self.config.settings.topics.awards;
        let mut pending: Vec<usize> = (0..awards.len()).collect();
        self.shared.retry(Dependency::Kafka, || {
            let futures: Vec<_> = pending
                .iter()
                .map(|&i| {
                    let a = &awards[i];
                    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
                        .key(a.user_id.as_str())
                        .payload(a.bytes.as_slice());
                    (i, self.producer.send_result(record).map_err(|(e, _)| e))
                })
                .collect();
            let mut failed = Vec::new();
            let mut last_error = None;
            for (i, f) in futures {
                let ok = match f {
                    Ok(delivery) => match block_on(delivery) {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(e.to_string()),
                        Err(_) => Err("delivery canceled".to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                };
                match ok {
                    Ok(()) => self.award_published(&awards[i]),
                    Err(e) => {
                        failed.push(i);
                        last_error = Some(e);
                    }
                }
            }
            pending = failed;
            match last_error {
                None => Ok(()),
                Some(e) => Err(format!("awards topic {topic}: {e}")),
            }
        })?;
        let mut by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for a in awards {
            by_partition
                .entry(a.partition)
                .or_default()
                .push(a.award_id.clone());
        }
        let acked: Vec<(i32, Vec<String>)> = by_partition.into_iter().collect();
        self.shared.retry(Dependency::Redis, || {
            lock(&self.shared.redis).trim_outboxes(&acked)
        })
    }

    /// Re-emits awards left in the outboxes of newly claimed shards (decided
    /// before a crash or a lost ack): same id, same bytes.
    fn flush_pending_outboxes(&self) -> Result<(), Stopped> {
        let pending: Vec<i32> = std::mem::take(&mut *lock(&self.shared.pending_flush))
            .into_iter()
            .collect();
        for partition in pending {
            let entries = self.shared.retry(Dependency::Redis, || {
                lock(&self.shared.redis).outbox(partition)
            })?;
            if entries.is_empty() {
                continue;
            }
            let mut awards = Vec::with_capacity(entries.len());
            for (award_id, bytes) in entries {
                match self.codec.decode_award(&bytes) {
                    Ok(a) => awards.push(DecidedAward {
                        partition,
                        award_id,
                        user_id: a.user_id,
                        incentive_id: a.incentive_id,
                        achieved_at_ms: a.achieved_at.timestamp_millis(),
                        bytes,
                    }),
                    Err(e) => {
                        error!(partition, %award_id, error = %e, "outbox entry unreadable; left in place for inspection")
                    }
                }
            }
            info!(
                partition,
                awards = awards.len(),
                "re-emitting awards from the outbox"
            );
            self.publish_awards(&awards)?;
        }
        Ok(())
    }
}

/// Runs a processor on the current thread until `shutdown` (tests and main).
pub fn run(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> Result<(), ProcessorError> {
    run_with_reload(config, metrics, health, shutdown, Reload::default())
}

/// Like [`run`], re-reading the catalog and programs when `reload` is
/// requested (SIGHUP) or their files change.
pub fn run_with_reload(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Shutdown,
    reload: Reload,
) -> Result<(), ProcessorError> {
    let codec = Arc::new(
        SchemaRegistry::bundled()
            .map_err(|e| ProcessorError::Setup(format!("bundled schemas: {e}")))?,
    );
    let processor = Processor::new(config, codec, metrics, health, shutdown)?;
    processor.run_with_reload(reload)
}
