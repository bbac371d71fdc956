//! Shared helpers of the integration tests: every test gets fresh topics, a
//! fresh consumer group and a fresh Redis key prefix, so tests run in
//! parallel and leave nothing behind. The broker and Redis come from
//! `scripts/test.sh` (KAFKA_BROKERS, REDIS_URL); a missing service fails the
//! test with a hint, it never passes by skipping.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use incentives::codec::SchemaRegistry;
use incentives::config::{parse_programs, Config, Settings};
use incentives::events::{AwardGranted, InputEvent};
use incentives::processor::{self, Shutdown};
use incentives::publisher::Publisher;
use incentives::telemetry::{Health, Metrics};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub const CATALOG: &str = r#"
[incentives.data-logged-5-consecutive-days]
description = "Logged health data on five consecutive days"
event = "data_logged"
rule = { kind = "streak", days = 5 }

[incentives.birth-reported]
description = "Reported a birth"
event = "birth_reported"
rule = { kind = "once" }
"#;

pub const PROGRAMS: &str = r#"
[[programs]]
id = "acme-2026"
employer_id = "acme"
time_zone = "America/New_York"
starts_on = 2026-01-01
ends_on = 2027-12-31

[[programs.incentives]]
incentive = "data-logged-5-consecutive-days"
reward = { kind = "physical", code = "PREGNANCY-PILLOW", description = "A pregnancy pillow" }

[[programs.incentives]]
incentive = "birth-reported"
reward = { kind = "gift_card", code = "BABY-50", description = "A gift card" }
"#;

fn reachable(addr: &str) -> bool {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

pub fn kafka_brokers() -> String {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let first = brokers.split(',').next().unwrap_or_default().to_string();
    assert!(
        reachable(&first),
        "no Kafka broker at {brokers}: start one with scripts/infra-up.sh (or run the tests with scripts/test.sh), or set KAFKA_BROKERS"
    );
    brokers
}

pub fn redis_url() -> String {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379/".into());
    let client = redis::Client::open(url.as_str()).expect("REDIS_URL is a redis:// URL");
    let ok = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok();
    assert!(ok, "no Redis at {url}: start it with scripts/infra-up.sh (or run the tests with scripts/test.sh), or set REDIS_URL");
    url
}

pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, isolated world: topics, group, key prefix.
pub struct TestEnv {
    pub config: Arc<Config>,
    pub codec: SchemaRegistry,
    pub producer: FutureProducer,
    pub publisher: Publisher,
    pub runtime: tokio::runtime::Runtime,
    pub partitions: i32,
}

impl TestEnv {
    pub fn new(name: &str, partitions: i32) -> TestEnv {
        Self::with_programs(name, partitions, PROGRAMS)
    }

    pub fn with_programs(name: &str, partitions: i32, programs: &str) -> TestEnv {
        Self::build(name, partitions, CATALOG, programs, kafka_brokers())
    }

    /// A world with its own catalog and programs (both validated as the
    /// service validates them).
    pub fn with_catalog_and_programs(
        name: &str,
        partitions: i32,
        catalog: &str,
        programs: &str,
    ) -> TestEnv {
        Self::build(name, partitions, catalog, programs, kafka_brokers())
    }

    /// A world on another broker (a private one a test starts and stops).
    pub fn on_broker(name: &str, partitions: i32, brokers: &str) -> TestEnv {
        Self::build(name, partitions, CATALOG, PROGRAMS, brokers.to_string())
    }

    fn build(
        name: &str,
        partitions: i32,
        catalog: &str,
        programs: &str,
        brokers: String,
    ) -> TestEnv {
        let redis = redis_url();
        let id = format!("{name}-{}", uuid::Uuid::now_v7().simple());
        let mut settings = Settings::default();
        settings.kafka.brokers = brokers.clone();
        settings.kafka.group_id = format!("group-{id}");
        settings.kafka.session_timeout = Duration::from_secs(10);
        settings.redis.url = redis;
        settings.redis.key_prefix = format!("test-{id}");
        settings.topics.data_logged = format!("dl-{id}");
        settings.topics.birth_reported = format!("br-{id}");
        settings.topics.awards = format!("awards-{id}");
        settings.topics.dead_letter = format!("dlq-{id}");
        settings.processor.commit_interval = Duration::from_millis(500);
        settings.processor.max_backoff = Duration::from_secs(1);
        let programs = parse_programs(
            Path::new("test-catalog.toml"),
            catalog,
            Path::new("test-programs.toml"),
            programs,
        )
        .expect("test programs are valid");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let t = &settings.topics;
        runtime
            .block_on(incentives::kafka::create_topics(
                &brokers,
                &[&t.data_logged, &t.birth_reported, &t.awards, &t.dead_letter],
                partitions,
            ))
            .expect("create test topics");
        let publisher = Publisher::new(&settings.kafka, &settings.topics, Duration::from_secs(30))
            .expect("publisher");
        let producer = incentives::kafka::producer(
            &settings.kafka,
            Duration::from_secs(30),
            incentives::kafka::Linger::Request,
        )
        .expect("producer");
        let config = Arc::new(Config {
            dir: repo_dir().join("config"),
            settings,
            programs,
        });
        TestEnv {
            config,
            codec: SchemaRegistry::bundled().expect("schemas"),
            producer,
            publisher,
            runtime,
            partitions,
        }
    }

    /// The same world with a different consumer group (same topics, same Redis).
    pub fn with_group(&self, group: &str) -> Arc<Config> {
        let mut c = (*self.config).clone();
        c.settings.kafka.group_id = group.to_string();
        Arc::new(c)
    }

    pub fn start_processor(&self) -> ProcessorHandle {
        ProcessorHandle::start(self.config.clone())
    }

    pub fn publish(&self, events: &[InputEvent]) {
        let summary = self
            .runtime
            .block_on(incentives::tools::publish(&self.publisher, events));
        assert_eq!(summary.failed, 0, "events not acknowledged");
        assert_eq!(summary.sent, events.len());
    }

    /// Publishes raw bytes, optionally to an explicit partition.
    pub fn publish_raw(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(rdkafka::message::Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut record = FutureRecord::to(topic).key(key).payload(payload).headers(h);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        self.runtime
            .block_on(self.producer.send(record, Duration::from_secs(30)))
            .expect("raw record acknowledged");
    }

    /// Every award on the awards topic (reads until 2s without a record).
    pub fn all_awards(&self) -> Vec<AwardGranted> {
        incentives::tools::read_awards(
            &self.config.settings.kafka,
            &self.config.settings.topics.awards,
            true,
            Duration::from_secs(2),
            None,
            |_, _, _| {},
        )
        .expect("read awards")
    }

    /// Waits until at least `n` awards exist, then reads them all.
    pub fn wait_for_awards(&self, n: usize, timeout: Duration) -> Vec<AwardGranted> {
        let deadline = Instant::now() + timeout;
        loop {
            let awards = self.all_awards();
            if awards.len() >= n || Instant::now() > deadline {
                return awards;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Records of a topic from the beginning: (partition, offset, key, payload, headers).
    pub fn read_topic(&self, topic: &str, idle: Duration) -> Vec<RawRecord> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.config.settings.kafka.brokers)
            .set("group.id", format!("reader-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        // Everything up to the current end, then `idle` more for stragglers.
        let mut remaining: BTreeMap<i32, i64> = (0..self.partitions)
            .map(|p| {
                (
                    p,
                    consumer
                        .fetch_watermarks(topic, p, Duration::from_secs(10))
                        .expect("watermarks")
                        .1,
                )
            })
            .filter(|(_, high)| *high > 0)
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        let mut last = Instant::now();
        while !remaining.is_empty() || last.elapsed() < idle {
            assert!(
                Instant::now() < deadline,
                "could not read {topic} to its end within 30s"
            );
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                if remaining
                    .get(&m.partition())
                    .is_some_and(|high| m.offset() + 1 >= *high)
                {
                    remaining.remove(&m.partition());
                }
                last = Instant::now();
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_string(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(RawRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        out
    }

    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(self.config.settings.redis.url.as_str())
            .expect("url")
            .get_connection()
            .expect("redis connection")
    }
}

#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// A processor running on its own thread, as `incentives process` runs it.
pub struct ProcessorHandle {
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl ProcessorHandle {
    pub fn start(config: Arc<Config>) -> ProcessorHandle {
        let shutdown = Shutdown::default();
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let (s, m, h) = (shutdown.clone(), metrics.clone(), health.clone());
        let thread =
            std::thread::spawn(move || processor::run(config, m, h, s).map_err(|e| e.to_string()));
        ProcessorHandle {
            shutdown,
            metrics,
            health,
            thread: Some(thread),
        }
    }

    /// The value of a metric sample, by its rendered name with labels.
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Whether the processor's thread is still running (it has neither
    /// returned nor panicked).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    pub fn wait_until_assigned(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.metrics.assigned_partitions.get() == 0 {
            assert!(
                Instant::now() < deadline,
                "processor got no partitions within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            t.join()
                .expect("processor thread panicked")
                .expect("processor returned an error");
        }
    }
}

impl Drop for ProcessorHandle {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn utc(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&chrono::Utc)
}

/// A data-logged event of employer `acme`.
pub fn logged(user: &str, at: &str, zone: Option<chrono_tz::Tz>) -> InputEvent {
    InputEvent::DataLogged(incentives::events::DataLogged {
        event_id: format!("{user}-{at}"),
        user_id: user.into(),
        employer_id: "acme".into(),
        event_time: utc(at),
        time_zone: zone,
        data_kinds: vec!["mood".into()],
    })
}

pub fn birth(user: &str, event_id: &str, at: &str) -> InputEvent {
    InputEvent::BirthReported(incentives::events::BirthReported {
        event_id: event_id.into(),
        user_id: user.into(),
        employer_id: "acme".into(),
        event_time: utc(at),
        time_zone: Some(chrono_tz::America::Chicago),
        birth_date: chrono::NaiveDate::from_ymd_opt(2026, 4, 1).expect("date"),
    })
}

/// Noon UTC on 2026-03-DD (morning in New York: the same local day).
pub fn march(day: u32) -> String {
    format!("2026-03-{day:02}T16:00:00Z")
}

/// Award ids grouped: id -> number of times seen.
pub fn id_counts(awards: &[AwardGranted]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in awards {
        *m.entry(a.award_id.clone()).or_insert(0) += 1;
    }
    m
}

/// A broker of the test's own (to stop and restart), from the same binary
/// scripts/infra-up.sh uses.
pub fn nisshi_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("NISSHI_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nisshi"))
            .find(|p| p.is_file())
    }) {
        return found;
    }
    let cargo_bin =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/nisshi");
    assert!(
        cargo_bin.is_file(),
        "no nisshi broker binary: run scripts/infra-up.sh (it installs one) or set NISSHI_BIN"
    );
    cargo_bin
}

pub struct PrivateBroker {
    child: std::process::Child,
}

impl PrivateBroker {
    pub fn start(port: u16, dir: &Path) -> PrivateBroker {
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nisshi.log"))
            .unwrap();
        let child = std::process::Command::new(nisshi_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                "sqlite://nisshi.db",
                "--group-initial-rebalance-delay",
                "100ms",
            ])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nisshi");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private broker did not listen on {port}; see {}",
                dir.join("nisshi.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateBroker { child }
    }

    pub fn kill_9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The oracle: decides `events` with the pure engine, user by user, in the
/// order given. Returns the award ids and the events it did not apply (no
/// active program, or rejected) as `(event, why)`.
pub fn oracle_award_ids(
    config: &Config,
    events: &[InputEvent],
) -> (BTreeSet<String>, Vec<(InputEvent, String)>) {
    use incentives::engine::{apply_event, matching_rules, Limits, UserState};
    use incentives::events::Source;
    let limits = Limits::from_settings(&config.settings.processor, &config.settings.state);
    let mut states: BTreeMap<String, UserState> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let mut not_applied = Vec::new();
    let source = Source {
        topic: "",
        partition: 0,
        offset: 0,
    };
    for e in events {
        let rules = matching_rules(&config.programs, e);
        if rules.is_empty() {
            not_applied.push((e.clone(), "no active program".to_string()));
            continue;
        }
        let key = format!("{}:{:?}", e.user_id(), e.kind());
        let state = states.entry(key).or_default();
        match apply_event(state, e, &rules, source, &limits) {
            Ok(awards) => ids.extend(awards.into_iter().map(|a| a.award_id)),
            Err(r) => not_applied.push((e.clone(), format!("{r:?}"))),
        }
    }
    (ids, not_applied)
}
