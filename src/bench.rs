//! `incentives bench`: the processor's figures on this machine, in one run,
//! against the configured broker and Redis (loopback in development).
//!
//! Every phase uses fresh topics, a fresh consumer group and a fresh Redis
//! key prefix named after the run (`bench-<unix time>`):
//!
//! 1. **Backlog**: the synthetic workload of `produce --synthetic` is
//!    published through the crate's publisher (acks=all, murmur2).
//! 2. **Ceiling**: a consumer with the processor's exact client settings
//!    ([`crate::kafka::consumer_config`]), in a fresh group, reads the backlog
//!    and does nothing per record: events/s from the first record to the last.
//! 3. **Sustainable throughput**: an `incentives process` child drains the
//!    backlog; events/s from its first applied batch to its last (group join
//!    excluded), with the lag over time, its CPU seconds per million events
//!    and its peak RSS. With the CPU per event of the other processes (the
//!    ceiling's consumer, the inflow's producer and broker, Redis and the
//!    broker during the drain) it gives the live rate the cores could carry
//!    at most, and the most a processor could cost per event for that rate
//!    to reach the target, in all and beyond what the ceiling's consumer
//!    costs to read the records ([`CpuBudget`]).
//! 4. **Latency at half that rate**: with the same child running, a paced
//!    producer sends data-logged events (event time = now) for backlog users
//!    and one birth in 50 for fresh users (each decides an award); a consumer
//!    of the awards topic measures, per award, the time from sending its
//!    source event to reading the award: p50, p99, max, and the lag.
//! 5. **Redis memory per active user-rule** (measured after phase 3): the
//!    `MEMORY USAGE` of the run's user keys over the (user key, rule) pairs
//!    holding state, and the `used_memory` delta across the drain.
//! 6. **RSS with many distinct users** (`--rss-users`): one event for each of
//!    N users on fresh topics, drained by a fresh child; its peak RSS.
//! 7. **Live ceiling**: the ceiling's consumer, in place of the processor,
//!    reading live what the paced producer of the live probes sends on the
//!    same cores ([`BareConsumer`], [`Bench::phase_live_ceiling`]).
//!
//! The figures go to a table (with the targets, informational only) and to
//! a JSON file. Children are stopped with SIGTERM; the run's Redis keys and
//! topics are removed unless `--keep`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::codec::{DataLoggedFields, SchemaRegistry};
use crate::config::{Config, KafkaSettings, RuleDef, Settings, TopicSettings};
use crate::engine::UserState;
use crate::events::{BirthReported, DataLogged, EventKind, InputEvent};
use crate::loadgen::{self, BrokerSink, Latencies};
use crate::publisher::Publisher;
use crate::tools;

/// Target: sustainable throughput at least this share of the ceiling.
pub const TARGET_SUSTAINABLE_SHARE: f64 = 0.5;
/// Target: p99 event-to-award latency below this, at half the sustainable rate.
pub const TARGET_P99: Duration = Duration::from_millis(250);
/// Target: Redis bytes per active user-rule (5-day streak) below this.
pub const TARGET_REDIS_BYTES_PER_USER_RULE: f64 = 300.0;
/// Target: processor peak RSS below this (bytes; MB = 10^6 bytes) ...
pub const TARGET_RSS_BYTES: u64 = 200_000_000;
/// ... with this many distinct users.
pub const TARGET_RSS_USERS: usize = 1_000_000;

/// The ceiling reads the backlog again (fresh groups) until this many
/// seconds were measured, at most [`CEILING_PASSES`] times.
const CEILING_SECONDS: f64 = 2.0;
const CEILING_PASSES: usize = 10;
/// Length of one probe of the live sustainable rate.
const LIVE_PROBE: Duration = Duration::from_secs(8);
/// Most probes of the live sustainable rate on the way down.
const LIVE_PROBES: usize = 5;
/// The first live probe asks for this share of the drain rate ...
const LIVE_START: f64 = 0.7;
/// ... and each next one on the way down for this share of the one before.
const LIVE_STEP: f64 = 0.8;
/// Probes after the first sustained one, each halfway between the best
/// sustained rate and the lowest rate above it that was not (or the drain
/// rate).
const LIVE_REFINE: usize = 2;
/// The live search stops refining when the best sustained rate is within
/// this factor of the lowest rate above it that was not sustained.
const LIVE_RESOLUTION: f64 = 1.05;
/// A paced phase reached its rate when it sent at least this share of it.
const RATE_REACHED: f64 = 0.95;

fn rate_reached(achieved: f64, target: f64) -> bool {
    achieved >= RATE_REACHED * target
}
/// Length of the inflow phase (the paced producer alone).
const INFLOW: Duration = Duration::from_secs(4);
/// Most events the paced producer queues between two looks at the clock
/// (so a producer slower than the rate asked for stops on time).
const MAX_PER_TICK: u64 = 10_000;

/// Employers of the synthetic workload (`produce --synthetic`'s default).
const EMPLOYERS: [&str; 2] = ["acme", "globex"];
/// One event in this many of the latency phase is a birth.
const BIRTH_EVERY: u64 = 50;
/// The data kinds of the paced data-logged events.
const LIVE_DATA_KINDS: [&str; 1] = ["mood"];
/// Events in flight while publishing.
const PUBLISH_CONCURRENCY: usize = 1024;
/// How long a publish may wait for the broker's ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// A phase fails when nothing moves for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fresh processor may take to apply its first batch.
const FIRST_BATCH_TIMEOUT: Duration = Duration::from_secs(90);

/// What `incentives bench` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `incentives` binary started as the processor child.
    pub exe: PathBuf,
    /// Synthetic workload of the backlog.
    pub users: usize,
    pub days: u32,
    pub seed: u64,
    /// Partitions of every topic the run creates.
    pub partitions: i32,
    /// Length of the paced latency phase.
    pub latency: Duration,
    /// Rate of the latency phase; `None`: half the sustainable rate.
    pub latency_rate: Option<f64>,
    /// Distinct users of the RSS phase; 0 skips it.
    pub rss_users: usize,
    /// Where the JSON goes (default: `<out_dir>/<run>.json`).
    pub json: Option<PathBuf>,
    /// Where processor logs (and the default JSON) go.
    pub out_dir: PathBuf,
    /// Keep the run's Redis keys and topics.
    pub keep: bool,
    /// The nice value of the paced producer's threads (its sending thread
    /// and librdkafka's); 0: the same as the bench's other threads.
    pub producer_nice: i32,
}

/// Runs every phase, prints the table and writes the JSON.
pub fn run(config: &Config, options: &Options) -> anyhow::Result<()> {
    let started_at = Utc::now();
    let run = format!("bench-{}", started_at.timestamp());
    std::fs::create_dir_all(&options.out_dir).with_context(|| {
        format!(
            "cannot create {} (choose another place with --json)",
            options.out_dir.display()
        )
    })?;
    let json_path = options
        .json
        .clone()
        .unwrap_or_else(|| options.out_dir.join(format!("{run}.json")));
    check_redis(&config.settings.redis.url)?;
    check_broker(&config.settings.kafka)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut bench = Bench {
        config,
        options,
        runtime,
        run: run.clone(),
        created: Vec::new(),
        notes: Vec::new(),
        paced: PacedProducer::new(&config.settings.kafka, options.producer_nice)?,
    };
    eprintln!(
        "bench: run {run}: broker {}, Redis {}",
        config.settings.kafka.brokers,
        redact_url(&config.settings.redis.url)
    );
    if options.producer_nice != 0 {
        bench.notes.push(format!(
            "the paced producer ran at nice {} (--producer-nice): it took the CPU the processor, broker and Redis left",
            options.producer_nice
        ));
    }
    let result = bench.phases();
    bench.cleanup();
    let figures = match result {
        Ok(f) => f,
        Err(e) => {
            for note in &bench.notes {
                eprintln!("note: {note}");
            }
            return Err(e);
        }
    };
    let rows = table_rows(&figures);
    println!();
    println!(
        "==== incentives bench {run}: {} CPUs, broker and Redis as configured ====",
        cpus()
    );
    print!("{}", format_table(&rows));
    for note in &bench.notes {
        println!("note: {note}");
    }
    let document = to_json(
        &run,
        started_at,
        options,
        config,
        &figures,
        &rows,
        &bench.notes,
    );
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&document)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    println!("figures as JSON: {}", json_path.display());
    Ok(())
}

// ---------------------------------------------------------------- the run

/// The names one phase uses: topics, group and key prefix are all `name`.
#[derive(Debug, Clone)]
struct RunNames {
    name: String,
    topics: TopicSettings,
}

impl RunNames {
    fn new(name: &str) -> RunNames {
        RunNames {
            name: name.to_string(),
            topics: TopicSettings {
                data_logged: format!("{name}.data-logged"),
                birth_reported: format!("{name}.birth-reported"),
                awards: format!("{name}.awards"),
                dead_letter: format!("{name}.dead-letter"),
            },
        }
    }

    fn topics(&self) -> [&str; 4] {
        [
            &self.topics.data_logged,
            &self.topics.birth_reported,
            &self.topics.awards,
            &self.topics.dead_letter,
        ]
    }

    /// The settings of a processor of this run.
    fn settings(&self, base: &Settings) -> Settings {
        let mut s = base.clone();
        s.topics = self.topics.clone();
        s.kafka.group_id = self.name.clone();
        s.redis.key_prefix = self.name.clone();
        s
    }

    /// The same, as environment overrides for the child.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "INCENTIVES__TOPICS__DATA_LOGGED",
                self.topics.data_logged.clone(),
            ),
            (
                "INCENTIVES__TOPICS__BIRTH_REPORTED",
                self.topics.birth_reported.clone(),
            ),
            ("INCENTIVES__TOPICS__AWARDS", self.topics.awards.clone()),
            (
                "INCENTIVES__TOPICS__DEAD_LETTER",
                self.topics.dead_letter.clone(),
            ),
            ("INCENTIVES__REDIS__KEY_PREFIX", self.name.clone()),
            ("INCENTIVES__KAFKA__GROUP_ID", self.name.clone()),
        ]
    }
}

struct Bench<'a> {
    config: &'a Config,
    options: &'a Options,
    runtime: tokio::runtime::Runtime,
    run: String,
    /// What to remove at the end.
    created: Vec<RunNames>,
    notes: Vec<String>,
    /// The producer of every paced phase (inflow, probes, latency): one
    /// idempotent producer for the run. nisshi keeps the state of every
    /// producer id it handed out in one metadata document that it rewrites
    /// with each idempotent batch, so the bench adds one id, not one per
    /// phase.
    paced: PacedProducer,
}

/// Everything measured.
#[derive(Debug, Clone)]
struct Figures {
    users: usize,
    backlog: Published,
    ceiling: Ceiling,
    inflow: Inflow,
    /// Phase 7: the bare consumer's live rate (`None` when it could not run:
    /// a note says why).
    live_ceiling: Option<Live>,
    sustainable: Drain,
    /// From the ceiling's, the inflow's and the drain's CPU.
    budget: CpuBudget,
    live: Live,
    latency: LatencyFigures,
    redis: RedisFigures,
    rss: Option<RssFigures>,
}

impl Figures {
    /// The live ceiling, when a probe of phase 7 was sustained.
    fn live_ceiling_rate(&self) -> Option<f64> {
        self.live_ceiling
            .as_ref()
            .map(|l| l.rate)
            .filter(|&r| r > 0.0)
    }
}

impl Bench<'_> {
    fn phases(&mut self) -> anyhow::Result<Figures> {
        let names = RunNames::new(&self.run);
        let settings = names.settings(&self.config.settings);
        self.create_topics(&names)?;
        let (backlog, users) = self.phase_backlog(&settings, &names)?;
        let ceiling = phase_ceiling(&settings, &names, backlog.events)?;
        if ceiling.from_assignment.unwrap_or(0.0) < 1.0 {
            self.notes.push(format!(
                "the ceiling consumers read for only {:.2}s in {} passes: the ceiling is rough (more --users or --days give a steadier figure)",
                ceiling.from_assignment.unwrap_or(0.0),
                ceiling.passes
            ));
        }
        let inflow = self.phase_inflow(&users, ceiling.rate)?;
        let used_before = redis_used_memory(&settings.redis.url)?;
        let mut processor = self.spawn_processor(&names, "processor")?;
        let sustainable = phase_sustainable(&mut processor, backlog.events, &settings.redis.url)?;
        let used_after = redis_used_memory(&settings.redis.url)?;
        let redis = phase_redis(&settings, &names, used_before, used_after)?;
        self.delete_read_records(&names, "the drain");
        let budget = CpuBudget::from_figures(cpus(), &ceiling, &inflow, &sustainable);
        eprintln!(
            "bench:   CPU per event: {}; live upper bound {:.0} events/s with this processor, {} with one as cheap as the bare consumer; {}",
            budget.describe(),
            budget.this_processor(),
            budget.bare().map_or("?".into(), |r| format!("{r:.0}")),
            allowance_text(&budget, ceiling.rate, None)
        );
        self.notes.extend(budget_note(&budget, ceiling.rate));
        let live = self.phase_live(&settings, &names, &mut processor, &users, sustainable.rate);
        let live = match live {
            Ok(l) => l,
            Err(e) => {
                self.stop_processor(&mut processor)?;
                return Err(e);
            }
        };
        let rate = self.options.latency_rate.unwrap_or(live.rate / 2.0);
        let latency = self.phase_latency(&settings, &mut processor, users.clone(), rate);
        self.stop_processor(&mut processor)?;
        let latency = latency?;
        let rss = if self.options.rss_users > 0 {
            Some(self.phase_rss(self.options.rss_users)?)
        } else {
            eprintln!("bench: 6/7 RSS: skipped (--rss-users 0)");
            None
        };
        // Last: its 8-second probes at up to the producer's limit cannot
        // leave the broker slower for the processor's phases.
        // A failure here loses no other figure: it becomes a note.
        let live_ceiling = match self.phase_live_ceiling(&users, ceiling.rate) {
            Ok(l) => Some(l),
            Err(e) => {
                self.notes
                    .push(format!("live ceiling (phase 7) not measured: {e:#}"));
                None
            }
        };
        Ok(Figures {
            users: self.options.users,
            backlog,
            ceiling,
            inflow,
            live_ceiling,
            sustainable,
            budget,
            live,
            latency,
            redis,
            rss,
        })
    }

    /// Phase 3b: the highest paced rate, with the producer on the same
    /// machine, at which the lag does not grow and the processor catches up:
    /// probes of [`LIVE_PROBE`] chosen by [`next_live_rate`] (down from 70%
    /// of the drain rate by 20% steps until one is sustained, then halfway
    /// towards the lowest rate that was not, twice); the figure is the
    /// highest rate a sustained probe sent.
    fn phase_live(
        &mut self,
        settings: &Settings,
        names: &RunNames,
        processor: &mut Processor,
        users: &[User],
        drain_rate: f64,
    ) -> anyhow::Result<Live> {
        eprintln!(
            "bench: 3b/7 live: paced rates from {:.0}% of the drain rate down, {}s each, until the lag does not grow; then {LIVE_REFINE} halfway to the lowest rate not sustained",
            LIVE_START * 100.0,
            LIVE_PROBE.as_secs()
        );
        let mut probes: Vec<Probe> = Vec::new();
        while let Some(rate) = next_live_rate(drain_rate, &probes) {
            let i = probes.len();
            let birth = birth_program(self.config, Utc::now());
            let live = LiveEvents::new(
                &format!("{}-probe{i}", self.run),
                users.to_vec(),
                birth,
                self.options.seed.wrapping_add(i as u64 + 1),
            );
            // Its figure is the lag, not the latency: no awards matched to
            // 100,000s of send instants on the cores the processor shares.
            let f = self.measure_latency_for(settings, processor, live, rate, LIVE_PROBE, false)?;
            // The processor kept up with what was sent (the producer shares
            // the cores and may not reach the rate asked for).
            let probe = Probe::new(rate, f.achieved_rate, &f.lag, f.caught_up, f.cpu);
            eprintln!("bench:   {}", probe.describe());
            probes.push(probe);
            if f.caught_up {
                self.delete_read_records(names, &format!("probe {}", i + 1));
            }
        }
        if let Some(best) = best_sustained(&probes) {
            if let Some(limited) = producer_limited(&probes) {
                self.notes.push(
                    limited.producer_limit_note("live sustainable throughput", "the processor"),
                );
            }
            return Ok(Live {
                rate: best.achieved_rate,
                probes,
            });
        }
        let rate = probes
            .last()
            .map_or(drain_rate * LIVE_START, |p| p.target_rate * LIVE_STEP);
        self.notes.push(format!(
            "no probed rate was sustained ({rate:.0}/s, a step below the last, is used for the latency phase's half)"
        ));
        Ok(Live { rate, probes })
    }

    /// Phase 2b: what the producer side alone takes in on this machine. The
    /// paced producer of phase 3b, with no processor running, is asked for
    /// the ceiling's rate for [`INFLOW`], on topics of its own; the figure is
    /// the events acknowledged per second until the last acknowledgement.
    /// The live phase shares the cores with this same producer and broker,
    /// so its rate cannot be higher.
    fn phase_inflow(&mut self, users: &[User], ceiling: f64) -> anyhow::Result<Inflow> {
        eprintln!(
            "bench: 2b/7 inflow: the paced producer alone (no processor) asked for the ceiling's rate for {}s",
            INFLOW.as_secs()
        );
        let names = RunNames::new(&format!("{}-inflow", self.run));
        let settings = names.settings(&self.config.settings);
        self.create_topics(&names)?;
        let birth = birth_program(self.config, Utc::now());
        let mut live = LiveEvents::new(&names.name, users.to_vec(), birth, self.options.seed);
        let producer = &self.paced;
        producer.warm_up(&settings.topics, &live.warm_up_event(Utc::now()))?;
        let target_rate = ceiling.max(1.0);
        let cpu_before = CpuSnapshot::take(None, &settings.redis.url);
        let started = Instant::now();
        let sent = at_nice(producer.nice, || {
            paced_send(
                producer,
                &settings.topics,
                &mut live,
                target_rate,
                INFLOW,
                false,
            )
        });
        let seconds = started.elapsed().as_secs_f64();
        let cpu = CpuSnapshot::take(None, &settings.redis.url).cores_since(&cpu_before);
        let inflow = Inflow {
            target_rate,
            sent: sent.sent,
            acked: sent.acked,
            failed: sent.failed,
            seconds,
            rate: sent.acked as f64 / seconds.max(1e-9),
            ack_latency: sent.ack_latency,
            cpu,
        };
        eprintln!(
            "bench:   {} sent, {} acknowledged in {:.2}s: {:.0} events/s ({:.0}% of the ceiling); {}",
            inflow.sent,
            inflow.acked,
            inflow.seconds,
            inflow.rate,
            ratio_f(inflow.rate, ceiling) * 100.0,
            inflow.cpu.describe()
        );
        if inflow.failed > 0 {
            self.notes.push(format!(
                "inflow: {} paced events were not acknowledged (see the warnings above)",
                inflow.failed
            ));
        }
        self.notes.extend(inflow_note(inflow.rate, ceiling));
        Ok(inflow)
    }

    /// Phase 7: the live ceiling. The ceiling's bare consumer ([`BareConsumer`])
    /// in place of the processor, with the paced producer of phase 3b on the
    /// same cores, on topics of its own (`bench-<unix time>-bare.*`): the
    /// same probes as phase 3b ([`next_live_rate`], from 70% of the
    /// ceiling down), and the same deletion of the records read while paced.
    /// No processor can keep up live with more than this consumer, which
    /// reads the records with the same client settings and does nothing
    /// else; the processor's live rate is judged against it too.
    fn phase_live_ceiling(&mut self, users: &[User], ceiling: f64) -> anyhow::Result<Live> {
        eprintln!(
            "bench: 7/7 live ceiling: the ceiling's bare consumer instead of the processor, paced rates from {:.0}% of the ceiling down, {}s each, until the lag does not grow",
            LIVE_START * 100.0,
            LIVE_PROBE.as_secs()
        );
        let names = RunNames::new(&format!("{}-bare", self.run));
        let settings = names.settings(&self.config.settings);
        self.create_topics(&names)?;
        let bare = BareConsumer::start(&settings, self.options.partitions)?;
        if !wait_until(FIRST_BATCH_TIMEOUT, || bare.assigned()) {
            bare.stop();
            bail!(
                "the bare consumer of {} was assigned no partitions in {}s: is the broker at {} overloaded? (scripts/infra-up.sh)",
                names.name,
                FIRST_BATCH_TIMEOUT.as_secs(),
                settings.kafka.brokers
            );
        }
        let mut probes: Vec<Probe> = Vec::new();
        while let Some(rate) = next_live_rate(ceiling, &probes) {
            let i = probes.len();
            let mut live = LiveEvents::new(
                &format!("{}-probe{i}", names.name),
                users.to_vec(),
                birth_program(self.config, Utc::now()),
                self.options.seed.wrapping_add(i as u64 + 1),
            );
            if let Err(e) = self
                .paced
                .warm_up(&settings.topics, &live.warm_up_event(Utc::now()))
            {
                bare.stop();
                return Err(e);
            }
            let base = bare.read();
            let read = Arc::clone(&bare.read);
            let Stretch { sent, cpu, lag, .. } = self.paced_stretch(
                &settings,
                &mut live,
                (rate, LIVE_PROBE, false),
                None,
                move || Some(read.load(Ordering::Relaxed).saturating_sub(base)),
                || Retention::start_bare(&settings, Arc::clone(&bare.positions)),
            );
            let caught_up = wait_until(Duration::from_secs(30), || {
                bare.read().saturating_sub(base) >= sent.acked
            });
            let achieved = sent.sent as f64 / sent.elapsed.as_secs_f64().max(1e-9);
            let probe = Probe::new(rate, achieved, &lag, caught_up, cpu);
            eprintln!(
                "bench:   {} (the load generator's cores include the bare consumer's threads)",
                probe.describe()
            );
            probes.push(probe);
        }
        bare.stop();
        self.delete_read_records(&names, "the live ceiling");
        let best = best_sustained(&probes);
        let rate = best.map_or(0.0, |p| p.achieved_rate);
        let limited = producer_limited(&probes);
        if let Some(limited) = limited {
            self.notes
                .push(limited.producer_limit_note("live ceiling", "the bare consumer"));
        }
        if rate == 0.0 {
            self.notes.push(
                "live ceiling: the bare consumer kept up with none of the probed rates".to_string(),
            );
        } else if rate < TARGET_SUSTAINABLE_SHARE * ceiling {
            // When the producer was the limit, a processor (which costs more
            // than the bare consumer) leaves it no more of the cores.
            self.notes.push(format!(
                "live ceiling: {:.0} events/s ({:.0}% of the ceiling) was the most a consumer that reads the records with the processor's client settings and does nothing else kept up with live, {} while the paced producer and the broker shared its cores: on this machine no processor can reach the live target (>= {:.0}% of the ceiling)",
                rate,
                ratio_f(rate, ceiling) * 100.0,
                if limited.is_some() {
                    "all the paced producer could send"
                } else {
                    "the highest sustained rate"
                },
                TARGET_SUSTAINABLE_SHARE * 100.0
            ));
        }
        Ok(Live { rate, probes })
    }

    /// Phase 1: the synthetic backlog; also its users, for phase 4.
    fn phase_backlog(
        &self,
        settings: &Settings,
        names: &RunNames,
    ) -> anyhow::Result<(Published, Vec<User>)> {
        let o = self.options;
        eprintln!(
            "bench: 1/7 backlog: {} users x {} days (seed {}) to {}.*",
            o.users, o.days, o.seed, names.name
        );
        let events = tools::synthetic_events(&tools::Synthetic {
            users: o.users,
            days: o.days,
            seed: o.seed,
            start: Utc::now().date_naive() - chrono::Duration::days(i64::from(o.days) + 1),
            employers: EMPLOYERS.iter().map(|e| e.to_string()).collect(),
        });
        let backlog = self.publish(settings, &events, "backlog")?;
        eprintln!(
            "bench:   published {} events in {:.1}s ({:.0}/s)",
            backlog.events, backlog.seconds, backlog.rate
        );
        Ok((backlog, backlog_users(&events)))
    }

    /// Phase 4, with the processor of phase 3 still running.
    fn phase_latency(
        &mut self,
        settings: &Settings,
        processor: &mut Processor,
        users: Vec<User>,
        rate: f64,
    ) -> anyhow::Result<LatencyFigures> {
        eprintln!(
            "bench: 4/7 latency: {rate:.0} events/s for {}s, 1 in {BIRTH_EVERY} a birth of a fresh user",
            self.options.latency.as_secs()
        );
        let birth = birth_program(self.config, Utc::now());
        if birth.is_none() {
            self.notes.push(
                "no active program has a once-rule on births: the latency phase sends data-logged \
                 events only and few awards may come of them"
                    .into(),
            );
        }
        let live = LiveEvents::new(&self.run, users, birth, self.options.seed);
        let mut latency = self.measure_latency(settings, processor, live, rate)?;
        latency.peak_rss_after = processor.peak_rss().ok();
        let l = &latency.latency;
        eprintln!(
            "bench:   {} awards measured: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; sent {:.0}/s",
            l.count,
            ms(l.p50),
            ms(l.p99),
            ms(l.max),
            latency.achieved_rate
        );
        if !latency.rate_reached() {
            self.notes.push(format!(
                "the paced producer reached {:.0} events/s of the {:.0} asked for: the latency was measured at that lower rate",
                latency.achieved_rate, latency.target_rate
            ));
        }
        if !latency.caught_up {
            self.notes.push(
                "after the latency phase the processor did not catch up (or not every birth's award \
                 was read) within 30s"
                    .into(),
            );
        }
        Ok(latency)
    }

    fn stop_processor(&mut self, processor: &mut Processor) -> anyhow::Result<()> {
        let status = processor.stop()?;
        if !status.success() {
            self.notes.push(format!(
                "a processor exited with {status} on SIGTERM; see {}",
                processor.log.display()
            ));
        }
        Ok(())
    }

    fn create_topics(&mut self, names: &RunNames) -> anyhow::Result<()> {
        let brokers = &self.config.settings.kafka.brokers;
        self.created.push(names.clone());
        self.runtime
            .block_on(crate::kafka::create_topics(
                brokers,
                &names.topics(),
                self.options.partitions,
            ))
            .map_err(|e| {
                anyhow!(
                    "{e} (is the broker at {brokers} running? start it with scripts/infra-up.sh)"
                )
            })
    }

    /// Once the processor has handled every record of the run's topics:
    /// deletes them (up to the end offsets), as retention would. nisshi's
    /// memory storage lists every stored batch of a partition on each fetch,
    /// so without this each phase would run on a broker slower than the one
    /// before (Apache Kafka finds a fetch offset through its index, whatever
    /// the history). Best effort: a failure becomes a note.
    fn delete_read_records(&mut self, names: &RunNames, after: &str) {
        let brokers = &self.config.settings.kafka.brokers;
        let topics = [
            names.topics.data_logged.as_str(),
            names.topics.birth_reported.as_str(),
            names.topics.awards.as_str(),
        ];
        match self
            .runtime
            .block_on(delete_read_records(brokers, &topics))
        {
            Ok(n) => eprintln!("bench:   deleted the {n} records read, after {after}"),
            Err(e) => self.notes.push(format!(
                "the records read were not deleted after {after} ({e}): the later phases ran on a broker holding them"
            )),
        }
    }

    /// Publishes `events` as fast as acknowledgements come back.
    fn publish(
        &self,
        settings: &Settings,
        events: &[InputEvent],
        what: &str,
    ) -> anyhow::Result<Published> {
        let sink = BrokerSink {
            publisher: Publisher::new(&settings.kafka, &settings.topics, ACK_TIMEOUT)?,
            brokers: settings.kafka.brokers.clone(),
        };
        sink.connect(
            &[
                &settings.topics.data_logged,
                &settings.topics.birth_reported,
            ],
            Duration::from_secs(10),
        )
        .map_err(|e| anyhow!("{e} (start the broker with scripts/infra-up.sh)"))?;
        let options = loadgen::Options {
            rate: None,
            concurrency: PUBLISH_CONCURRENCY,
            error_samples: 5,
        };
        let progress = loadgen::progress_bar(events.len() as u64, false);
        let report = self.runtime.block_on(loadgen::run(
            &sink,
            events,
            &options,
            &progress,
            std::future::pending::<()>(),
        ));
        progress.finish_and_clear();
        if report.failed > 0 {
            bail!(
                "{what}: {} of {} events were not acknowledged by the broker ({}); is it overloaded or down? (scripts/infra-up.sh)",
                report.failed,
                report.events,
                report.error_samples.join("; ")
            );
        }
        Ok(Published {
            events: report.acked,
            seconds: report.elapsed.as_secs_f64(),
            rate: report.achieved_rate(),
        })
    }

    fn spawn_processor(&self, names: &RunNames, what: &str) -> anyhow::Result<Processor> {
        let log = self
            .options
            .out_dir
            .join(format!("{}-{what}.log", names.name));
        Processor::spawn(&self.options.exe, &self.config.dir, names, log)
    }

    fn measure_latency(
        &self,
        settings: &Settings,
        processor: &mut Processor,
        live: LiveEvents,
        rate: f64,
    ) -> anyhow::Result<LatencyFigures> {
        self.measure_latency_for(settings, processor, live, rate, self.options.latency, true)
    }

    /// One paced stretch (`pace`: rate, duration, whether to keep each send
    /// instant) against the consumer under test, after its warm-up: the lag
    /// of `handled()` (records it handled since) behind the records written
    /// to the input topics ([`LagSampler`]), sampled meanwhile; the cores
    /// used (`pid`: the consumer's process, when it is a child); and the
    /// records it got through deleted once a second by the [`Retention`]
    /// that `retention` starts.
    fn paced_stretch(
        &self,
        settings: &Settings,
        live: &mut LiveEvents,
        (rate, duration, record_sends): (f64, Duration, bool),
        pid: Option<u32>,
        handled: impl Fn() -> Option<u64> + Send + 'static,
        retention: impl FnOnce() -> Retention,
    ) -> Stretch {
        let producer = &self.paced;
        let sampler = LagSampler::start(handled, producer.deliveries().acked.clone(), settings);
        let cpu_before = CpuSnapshot::take(pid, &settings.redis.url);
        let retention = retention();
        let sent = at_nice(producer.nice, || {
            paced_send(
                producer,
                &settings.topics,
                live,
                rate,
                duration,
                record_sends,
            )
        });
        let cpu = CpuSnapshot::take(pid, &settings.redis.url).cores_since(&cpu_before);
        let (lag, aof_rewrites) = sampler.stop();
        let handled = retention.handled;
        let deleted_while_paced = retention.stop();
        match &deleted_while_paced {
            Ok(n) => eprintln!("bench:   deleted the {n} records {handled} while paced"),
            Err(e) => eprintln!("bench:   records {handled} while paced not deleted: {e}"),
        }
        Stretch {
            sent,
            cpu,
            lag,
            aof_rewrites,
            deleted_while_paced,
        }
    }

    fn measure_latency_for(
        &self,
        settings: &Settings,
        processor: &mut Processor,
        mut live: LiveEvents,
        rate: f64,
        duration: Duration,
        match_awards: bool,
    ) -> anyhow::Result<LatencyFigures> {
        // Awards are read and matched to their events' send instants only for
        // the latency: a probe keeps no send instants and counts the
        // processor's published awards from its metrics, so no consumer of
        // ours fetches from the broker every 10 ms beside the processor.
        let reader = if match_awards {
            Some(AwardReader::start(
                &settings.kafka,
                &settings.topics.awards,
            )?)
        } else {
            None
        };
        let awards_before = processor.awards().unwrap_or(0);
        // One acknowledged event first, so that the paced events do not carry
        // the producer's start-up (connection, metadata, idempotent producer
        // id: up to a second).
        let producer = &self.paced;
        producer.warm_up(&settings.topics, &live.warm_up_event(Utc::now()))?;
        let base = processor
            .processed()
            .ok_or_else(|| anyhow!("cannot read the processor's /metrics at {}", processor.http))?;
        let own_before = processor.event_to_award();
        let http = processor.http;
        let Stretch {
            sent,
            cpu,
            lag,
            aof_rewrites,
            deleted_while_paced,
        } = self.paced_stretch(
            settings,
            &mut live,
            (rate, duration, match_awards),
            Some(processor.pid()),
            move || {
                let text = http_get(http, "/metrics", Duration::from_secs(2)).ok()?;
                Some((sum_metric(&text, "incentives_events_total") as u64).saturating_sub(base))
            },
            || Retention::start(settings, self.options.partitions),
        );
        // Let the processor catch up and the last awards arrive.
        let settle_started = Instant::now();
        let caught_up = wait_until(Duration::from_secs(30), || {
            let done = processor
                .processed()
                .is_some_and(|n| n.saturating_sub(base) >= sent.acked);
            let awards = match &reader {
                Some(reader) => reader.count(),
                None => processor
                    .awards()
                    .unwrap_or(0)
                    .saturating_sub(awards_before),
            };
            done && awards >= sent.births_acked
        });
        let settle = settle_started.elapsed();
        let own_mean = match (own_before, processor.event_to_award()) {
            (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => Some((s1 - s0) / (c1 - c0)),
            _ => None,
        };
        let awards = reader.map(AwardReader::stop).unwrap_or_default();
        let mut latencies = Latencies::default();
        let mut unmatched = 0u64;
        for (event_id, read_at) in &awards {
            match sent.at.get(event_id) {
                Some(sent_at) => latencies.record(read_at.saturating_duration_since(*sent_at)),
                None => unmatched += 1,
            }
        }
        Ok(LatencyFigures {
            target_rate: rate,
            achieved_rate: sent.sent as f64 / sent.elapsed.as_secs_f64().max(1e-9),
            seconds: sent.elapsed.as_secs_f64(),
            sent: sent.sent,
            acked: sent.acked,
            failed: sent.failed,
            births: sent.births,
            births_acked: sent.births_acked,
            awards_read: awards.len() as u64,
            awards_unmatched: unmatched,
            latency: latencies.summary(),
            ack_latency: sent.ack_latency,
            lag_trend: lag_trend(&lag, rate),
            lag,
            caught_up,
            settle_seconds: settle.as_secs_f64(),
            peak_rss_after: None,
            processor_mean_event_to_ack: own_mean,
            cpu,
            aof_rewrites,
            deleted_while_paced,
        })
    }

    /// Phase 6.
    fn phase_rss(&mut self, users: usize) -> anyhow::Result<RssFigures> {
        eprintln!(
            "bench: 6/7 RSS: one event for each of {users} distinct users, a fresh processor"
        );
        let names = RunNames::new(&format!("{}-rss", self.run));
        let settings = names.settings(&self.config.settings);
        self.create_topics(&names)?;
        let now = Utc::now();
        let started = Instant::now();
        let mut published = 0u64;
        const CHUNK: usize = 100_000;
        for first in (0..users).step_by(CHUNK) {
            let events: Vec<InputEvent> = (first..users.min(first + CHUNK))
                .map(|i| distinct_user_event(&names.name, i, now))
                .collect();
            published += self.publish(&settings, &events, "rss")?.events;
            eprintln!("bench:   published {published} of {users}");
        }
        let seconds = started.elapsed().as_secs_f64();
        let used_before = redis_used_memory(&settings.redis.url)?;
        let mut processor = self.spawn_processor(&names, "processor")?;
        let drain = measure_drain(
            &mut processor,
            published,
            Duration::from_millis(50),
            &settings.redis.url,
        )?;
        let used_after = redis_used_memory(&settings.redis.url)?;
        self.stop_processor(&mut processor)?;
        eprintln!(
            "bench:   {} events in {:.2}s: {:.0} events/s, peak RSS {:.1} MB",
            drain.events,
            drain.seconds,
            drain.rate,
            mb(drain.peak_rss)
        );
        Ok(RssFigures {
            users,
            published: Published {
                events: published,
                seconds,
                rate: published as f64 / seconds.max(1e-9),
            },
            drain,
            used_memory_delta: used_after as i64 - used_before as i64,
        })
    }

    /// Removes the run's Redis keys and topics (unless `--keep`). Best effort:
    /// failures become notes.
    fn cleanup(&mut self) {
        if self.options.keep {
            let names: Vec<&str> = self.created.iter().map(|n| n.name.as_str()).collect();
            self.notes.push(format!(
                "--keep: Redis keys and topics of {} kept",
                names.join(", ")
            ));
            return;
        }
        let url = self.config.settings.redis.url.clone();
        let brokers = self.config.settings.kafka.brokers.clone();
        for names in std::mem::take(&mut self.created) {
            match unlink_prefix(&url, &names.name) {
                Ok(n) => eprintln!("bench: removed {n} Redis keys of {}", names.name),
                Err(e) => self.notes.push(format!(
                    "cannot remove the Redis keys {}:* ({e})",
                    glob_escape(&names.name)
                )),
            }
            let topics = names.topics();
            if let Err(e) = self.runtime.block_on(delete_topics(&brokers, &topics)) {
                self.notes
                    .push(format!("cannot delete the topics {}.*: {e}", names.name));
            }
        }
    }
}

/// Phase 2.
fn phase_ceiling(settings: &Settings, names: &RunNames, total: u64) -> anyhow::Result<Ceiling> {
    eprintln!(
        "bench: 2/7 ceiling: consumers with the processor's settings read the backlog (passes until {}s)",
        CEILING_SECONDS
    );
    let (mut records, mut bytes, mut seconds, mut assigned) = (0u64, 0u64, 0.0f64, 0.0f64);
    let mut passes = 0;
    // The consumers run in this process: its CPU is theirs.
    let cpu_before = CpuSnapshot::take(None, &settings.redis.url);
    while passes < CEILING_PASSES && assigned < CEILING_SECONDS {
        let pass = measure_ceiling(settings, names, total, passes)?;
        records += pass.records;
        bytes += pass.bytes;
        seconds += pass.seconds;
        assigned += pass.from_assignment.unwrap_or(pass.seconds);
        passes += 1;
    }
    // From each pass's assignment to its last record: the first fetch is
    // counted, so a short backlog is not flattered by librdkafka's prefetch.
    let ceiling = Ceiling {
        records,
        bytes,
        seconds,
        rate: records as f64 / assigned.max(1e-9),
        from_assignment: Some(assigned),
        passes,
        cpu: CpuSnapshot::take(None, &settings.redis.url).used_since(&cpu_before),
    };
    eprintln!(
        "bench:   {} records in {passes} passes, {:.2}s from assignments to last records: {:.0} events/s",
        ceiling.records, assigned, ceiling.rate
    );
    Ok(ceiling)
}

/// Phase 3.
/// A drain rate needs records applied after the first sample: a backlog the
/// processor applied before the bench first looked at it gives none (and
/// the live phase would then be asked for 0 events/s).
fn check_drain_measured(d: &Drain, total: u64) -> anyhow::Result<()> {
    if d.events == 0 {
        bail!(
            "the processor applied the whole backlog ({total} events) before the drain could be measured; use a larger backlog (more --users or --days)"
        );
    }
    Ok(())
}

fn phase_sustainable(
    processor: &mut Processor,
    total: u64,
    redis_url: &str,
) -> anyhow::Result<Drain> {
    eprintln!("bench: 3/7 sustainable: a processor drains the backlog");
    let d = measure_drain(processor, total, Duration::from_millis(25), redis_url)?;
    check_drain_measured(&d, total)?;
    eprintln!(
        "bench:   {} events in {:.2}s: {:.0} events/s, {:.1} CPU s per million, peak RSS {:.1} MB",
        d.events,
        d.seconds,
        d.rate,
        d.cpu_per_million,
        mb(d.peak_rss)
    );
    Ok(d)
}

/// Phase 5 (run after phase 3, before phase 4 adds state).
fn phase_redis(
    settings: &Settings,
    names: &RunNames,
    used_before: u64,
    used_after: u64,
) -> anyhow::Result<RedisFigures> {
    eprintln!("bench: 5/7 Redis memory of the drained state (measured before phase 4 adds to it)");
    let redis = measure_redis(&settings.redis.url, &names.name, used_before, used_after)?;
    eprintln!(
        "bench:   {} keys; {:.0} bytes per active user-rule of the streak (MEMORY USAGE)",
        redis.keys,
        redis.dl_bytes_per_user_rule()
    );
    Ok(redis)
}

// ---------------------------------------------------------------- checks

fn check_redis(url: &str) -> anyhow::Result<()> {
    let shown = redact_url(url);
    let hint = "start it with scripts/infra-up.sh, or set INCENTIVES__REDIS__URL";
    let mut conn = redis_connection(url).map_err(|e| anyhow!("{e}; {hint}"))?;
    redis::cmd("PING")
        .query::<String>(&mut conn)
        .map_err(|e| anyhow!("Redis at {shown} does not answer PING: {e}; {hint}"))?;
    Ok(())
}

fn check_broker(kafka: &KafkaSettings) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .map_err(|e| anyhow!("Kafka client for {}: {e}", kafka.brokers))?;
    consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| {
            anyhow!(
                "cannot reach the broker at {}: {e}; start it with scripts/infra-up.sh, or set INCENTIVES__KAFKA__BROKERS",
                kafka.brokers
            )
        })?;
    Ok(())
}

fn redis_connection(url: &str) -> anyhow::Result<redis::Connection> {
    let shown = redact_url(url);
    let client = redis::Client::open(url).map_err(|e| anyhow!("bad Redis URL {shown}: {e}"))?;
    let conn = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(|e| anyhow!("cannot connect to Redis at {shown}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(conn)
}

/// `redis://user:secret@host/` -> `redis://***@host/`: URLs may hold passwords.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

// ---------------------------------------------------------------- phase 1 and 6: publishing

#[derive(Debug, Clone, Copy)]
struct Published {
    events: u64,
    seconds: f64,
    rate: f64,
}

/// A backlog user: id, employer and zone, as the synthetic workload made them.
#[derive(Debug, Clone, PartialEq)]
struct User {
    id: String,
    employer: String,
    zone: Option<Tz>,
}

fn backlog_users(events: &[InputEvent]) -> Vec<User> {
    let mut users = BTreeMap::new();
    for e in events {
        if let InputEvent::DataLogged(d) = e {
            users.entry(d.user_id.clone()).or_insert_with(|| User {
                id: d.user_id.clone(),
                employer: d.employer_id.clone(),
                zone: d.time_zone,
            });
        }
    }
    users.into_values().collect()
}

/// The RSS phase's event for user `i`: one data-logged event each, spread
/// over the last hour.
fn distinct_user_event(run: &str, i: usize, now: DateTime<Utc>) -> InputEvent {
    InputEvent::DataLogged(DataLogged {
        event_id: format!("{run}-{i}"),
        user_id: format!("{run}-user-{i:07}"),
        employer_id: EMPLOYERS[i % EMPLOYERS.len()].to_string(),
        event_time: now - chrono::Duration::seconds((i % 3600) as i64),
        time_zone: Some(chrono_tz::America::New_York),
        data_kinds: vec!["mood".into()],
    })
}

// ---------------------------------------------------------------- phase 2: ceiling

#[derive(Debug, Clone, Copy)]
struct Ceiling {
    records: u64,
    bytes: u64,
    /// From the first record to the last.
    seconds: f64,
    rate: f64,
    /// From the group's assignment to the last record (includes the first fetch).
    from_assignment: Option<f64>,
    /// Reads of the whole backlog, each by a fresh group.
    passes: usize,
    /// Over all passes; `load_generator` is this process, so the consumers.
    cpu: CpuUse,
}

fn measure_ceiling(
    settings: &Settings,
    names: &RunNames,
    total: u64,
    pass: usize,
) -> anyhow::Result<Ceiling> {
    let mut settings = settings.clone();
    settings.kafka.group_id = format!("{}-ceiling-{pass}", names.name);
    settings.topics = names.topics.clone();
    let consumer = bare_consumer(&settings, "ceiling consumer")?;
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < total {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                first.get_or_insert(last);
                records += 1;
                bytes += m.payload().map_or(0, |p| p.len()) as u64;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "ceiling consumer error"),
            None => {}
        }
        let idle = match first {
            Some(_) => last.elapsed(),
            None => started.elapsed(),
        };
        if idle > STALL_TIMEOUT {
            bail!(
                "the ceiling consumer read {records} of {total} records and then nothing for {}s; is the broker at {} overloaded? (scripts/infra-up.sh)",
                STALL_TIMEOUT.as_secs(),
                settings.kafka.brokers
            );
        }
    }
    let seconds = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    let from_assignment = consumer
        .context()
        .assigned_at()
        .map(|a| last.saturating_duration_since(a).as_secs_f64());
    Ok(Ceiling {
        records,
        bytes,
        seconds,
        rate: records.saturating_sub(1) as f64 / seconds.max(1e-9),
        from_assignment,
        passes: 1,
        cpu: CpuUse::default(),
    })
}

/// A consumer with the processor's client settings
/// ([`crate::kafka::consumer_config`]) in the group of `settings`, subscribed
/// to its two input topics, that remembers when it was assigned partitions:
/// the ceiling's and the live ceiling's (`what` names it in errors).
fn bare_consumer(settings: &Settings, what: &str) -> anyhow::Result<BaseConsumer<AssignmentClock>> {
    let consumer: BaseConsumer<AssignmentClock> =
        crate::kafka::consumer_config(&settings.kafka, settings.processor.commit_interval)
            .create_with_context(AssignmentClock::default())
            .map_err(|e| anyhow!("{what}: {e}"))?;
    consumer
        .subscribe(&[
            &settings.topics.data_logged,
            &settings.topics.birth_reported,
        ])
        .map_err(|e| anyhow!("{what}: subscribe: {e}"))?;
    Ok(consumer)
}

/// Remembers when the group assigned partitions (the ceiling's consumer).
#[derive(Default)]
struct AssignmentClock {
    assigned: std::sync::Mutex<Option<Instant>>,
}

impl AssignmentClock {
    fn assigned_at(&self) -> Option<Instant> {
        self.assigned.lock().ok().and_then(|a| *a)
    }
}

impl rdkafka::client::ClientContext for AssignmentClock {}

impl rdkafka::consumer::ConsumerContext for AssignmentClock {
    fn post_rebalance(
        &self,
        _consumer: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let (rdkafka::consumer::Rebalance::Assign(_), Ok(mut at)) =
            (rebalance, self.assigned.lock())
        {
            at.get_or_insert_with(Instant::now);
        }
    }
}

/// Phase 7's consumer: a bare consumer as the ceiling's (the processor's
/// client settings, [`crate::kafka::consumer_config`], nothing done per
/// record but count it and note its offset), reading a run's input topics live on a thread of
/// its own: the records it read, and the last offset it read of each
/// partition (partition-major, data-logged first, as [`Retention`] reads the
/// processor's applied offsets).
struct BareConsumer {
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
    assigned: Arc<AtomicBool>,
    positions: Arc<std::sync::Mutex<Vec<Option<i64>>>>,
    thread: JoinHandle<()>,
}

impl BareConsumer {
    /// How often the thread shares its positions (for the deletions).
    const SHARE_EVERY: Duration = Duration::from_millis(100);

    fn start(settings: &Settings, partitions: i32) -> anyhow::Result<BareConsumer> {
        let consumer = bare_consumer(settings, "bare consumer")?;
        let data_logged = settings.topics.data_logged.clone();
        let slots = usize::try_from(partitions.max(1)).unwrap_or(1) * 2;
        let (stop, read, assigned) = (Arc::default(), Arc::default(), Arc::default());
        let positions = Arc::new(std::sync::Mutex::new(vec![None; slots]));
        let thread = {
            let (stop, read, assigned): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicBool>) =
                (Arc::clone(&stop), Arc::clone(&read), Arc::clone(&assigned));
            let positions = Arc::clone(&positions);
            std::thread::spawn(move || {
                let mut mine: Vec<Option<i64>> = vec![None; slots];
                let mut shared_at = Instant::now();
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match consumer.poll(Duration::from_millis(10)) {
                        Some(Ok(m)) => {
                            count += 1;
                            read.store(count, Ordering::Relaxed);
                            let topic = usize::from(m.topic() != data_logged);
                            let slot = usize::try_from(m.partition())
                                .ok()
                                .and_then(|p| mine.get_mut(p * 2 + topic));
                            if let Some(slot) = slot {
                                *slot = Some(m.offset());
                            }
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "bare consumer error"),
                        None => {}
                    }
                    if shared_at.elapsed() >= Self::SHARE_EVERY {
                        shared_at = Instant::now();
                        assigned.store(
                            consumer.context().assigned_at().is_some(),
                            Ordering::Relaxed,
                        );
                        positions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone_from(&mine);
                    }
                }
            })
        };
        Ok(BareConsumer {
            stop,
            read,
            assigned,
            positions,
            thread,
        })
    }

    fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    fn assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.thread.join().is_err() {
            tracing::warn!("the bare consumer's thread panicked");
        }
    }
}

// ---------------------------------------------------------------- phases 3 and 6: the processor

/// An `incentives process` child on a run's names, logging to a file.
struct Processor {
    child: Child,
    http: SocketAddr,
    log: PathBuf,
}

impl Processor {
    fn spawn(
        exe: &Path,
        config_dir: &Path,
        names: &RunNames,
        log: PathBuf,
    ) -> anyhow::Result<Processor> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(exe)
            .arg("--config-dir")
            .arg(config_dir)
            .arg("process")
            .envs(names.env())
            .env("INCENTIVES__HTTP__LISTEN", http.to_string())
            .env("INCENTIVES__LOG__FILTER", "warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {} process", exe.display()))?;
        Ok(Processor { child, http, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the child has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the processor exited ({status}); see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// Input records handled so far (`incentives_events_total`, all labels).
    fn processed(&self) -> Option<u64> {
        let text = http_get(self.http, "/metrics", Duration::from_secs(2)).ok()?;
        Some(sum_metric(&text, "incentives_events_total") as u64)
    }

    /// (sum, count) of the processor's `incentives_event_to_award_seconds`.
    fn event_to_award(&self) -> Option<(f64, f64)> {
        let text = http_get(self.http, "/metrics", Duration::from_secs(2)).ok()?;
        Some((
            sum_metric(&text, "incentives_event_to_award_seconds_sum"),
            sum_metric(&text, "incentives_event_to_award_seconds_count"),
        ))
    }

    fn awards(&self) -> Option<u64> {
        let text = http_get(self.http, "/metrics", Duration::from_secs(2)).ok()?;
        Some(sum_metric(&text, "incentives_awards_total") as u64)
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        process_cpu_seconds(&self.pid().to_string())
            .ok_or_else(|| anyhow!("cannot read or parse /proc/{}/stat", self.pid()))
    }

    /// Peak resident set size (VmHWM), bytes.
    fn peak_rss(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        parse_status_kb(&text, "VmHWM").ok_or_else(|| anyhow!("no VmHWM in {path}"))
    }

    /// SIGTERM (the processor drains and commits), then waits up to 30s
    /// before SIGKILL.
    fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "bench: the processor (pid {}) ignored SIGTERM for 30s; killing it",
            self.pid()
        );
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(listener.local_addr()?.port())
}

/// A plain HTTP/1.1 GET; the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "answer {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(body.to_string())
}

/// The sum of a metric over all its label sets in Prometheus text format.
fn sum_metric(text: &str, name: &str) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labels) = rest.strip_prefix('{') {
            labels.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None // another metric with this name as prefix
        };
        if let Some(v) = value
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
        }
    }
    sum
}

/// utime + stime (clock ticks) from `/proc/<pid>/stat`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let utime: u64 = stat_field(stat, 14)?.parse().ok()?;
    let stime: u64 = stat_field(stat, 15)?.parse().ok()?;
    Some(utime + stime)
}

/// Field `n` (numbered from 1, as in proc(5); 3 or more) of a
/// `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
/// parentheses; the fields after its closing parenthesis start at field 3.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

/// A `Name:   1234 kB` line of `/proc/<pid>/status`, in bytes.
fn parse_status_kb(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        let kb: u64 = value.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// One lag sample: seconds since the phase began, records handled, lag.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LagSample {
    at: f64,
    processed: u64,
    lag: i64,
}

/// A backlog drained by a processor.
#[derive(Debug, Clone)]
struct Drain {
    /// Records handled from the first applied batch to the last.
    events: u64,
    seconds: f64,
    rate: f64,
    /// From the start of the child to its first applied batch.
    join_seconds: f64,
    cpu_seconds: f64,
    cpu_per_million: f64,
    peak_rss: u64,
    awards: Option<u64>,
    lag: Vec<LagSample>,
    /// Every process over the drain (the load generator is the bench,
    /// sampling the processor's metrics).
    cpu: CpuUse,
}

/// Waits for the child's first applied batch, then samples its progress
/// every `poll` until it handled `total` records.
fn measure_drain(
    processor: &mut Processor,
    total: u64,
    poll: Duration,
    redis_url: &str,
) -> anyhow::Result<Drain> {
    let spawned = Instant::now();
    let (first_at, first_n, first_cpu) = loop {
        processor.check_alive()?;
        if let Some(n) = processor.processed().filter(|n| *n > 0) {
            break (Instant::now(), n, processor.cpu_seconds()?);
        }
        if spawned.elapsed() > FIRST_BATCH_TIMEOUT {
            bail!(
                "the processor applied nothing within {}s; see {} (is Redis or the broker down? scripts/infra-up.sh)",
                FIRST_BATCH_TIMEOUT.as_secs(),
                processor.log.display()
            );
        }
        std::thread::sleep(poll.min(Duration::from_millis(20)));
    };
    let join_seconds = first_at.duration_since(spawned).as_secs_f64();
    let cpu_first = CpuSnapshot::take(Some(processor.pid()), redis_url);
    let mut lag = vec![LagSample {
        at: 0.0,
        processed: first_n,
        lag: total as i64 - first_n as i64,
    }];
    let (mut n, mut moved) = (first_n, Instant::now());
    while n < total {
        std::thread::sleep(poll);
        processor.check_alive()?;
        if let Some(now_n) = processor.processed() {
            if now_n > n {
                moved = Instant::now();
            }
            n = now_n;
            lag.push(LagSample {
                at: first_at.elapsed().as_secs_f64(),
                processed: n,
                lag: total as i64 - n as i64,
            });
        }
        if moved.elapsed() > STALL_TIMEOUT {
            bail!(
                "the processor handled {n} of {total} records and then nothing for {}s; see {}",
                STALL_TIMEOUT.as_secs(),
                processor.log.display()
            );
        }
    }
    let seconds = first_at.elapsed().as_secs_f64();
    let cpu_seconds = processor.cpu_seconds()? - first_cpu;
    let cpu = CpuSnapshot::take(Some(processor.pid()), redis_url).used_since(&cpu_first);
    let events = n - first_n;
    Ok(Drain {
        events,
        seconds,
        rate: events as f64 / seconds.max(1e-9),
        join_seconds,
        cpu_seconds,
        cpu_per_million: cpu_seconds / (events.max(1) as f64) * 1e6,
        peak_rss: processor.peak_rss()?,
        awards: processor.awards(),
        lag,
        cpu,
    })
}

// ---------------------------------------------------------------- phase 4: latency

/// The birth program the latency phase reports births to: its employer,
/// zone, and a birth date inside it.
#[derive(Debug, Clone, PartialEq)]
struct BirthProgram {
    employer: String,
    zone: Tz,
    birth_date: NaiveDate,
}

/// A program active now with a once-rule on births (any birth date inside
/// the program counts, also for `birth_date_within_program`).
fn birth_program(config: &Config, now: DateTime<Utc>) -> Option<BirthProgram> {
    let mut candidates: Vec<_> = config
        .programs
        .all()
        .filter(|pi| {
            pi.event == EventKind::BirthReported
                && matches!(pi.rule, RuleDef::Once { .. })
                && pi.filter.is_none()
                && pi.is_active_at(now)
        })
        .collect();
    candidates.sort_by(|a, b| a.rule_key.cmp(&b.rule_key));
    let pi = candidates.first()?;
    let yesterday = crate::days::local_date(now, pi.program_zone) - chrono::Duration::days(1);
    Some(BirthProgram {
        employer: pi.employer_id.clone(),
        zone: pi.program_zone,
        birth_date: yesterday.max(pi.starts_on),
    })
}

/// The latency phase's events: data-logged for random backlog users, and
/// every [`BIRTH_EVERY`]th a birth of a fresh user (when a birth program exists).
struct LiveEvents {
    run: String,
    users: Vec<User>,
    birth: Option<BirthProgram>,
    rng: StdRng,
    /// The user id of the last event [`LiveEvents::encode`] made up.
    born: String,
}

impl LiveEvents {
    fn new(run: &str, users: Vec<User>, birth: Option<BirthProgram>, seed: u64) -> LiveEvents {
        LiveEvents {
            run: run.to_string(),
            users,
            birth,
            rng: StdRng::seed_from_u64(seed ^ 0x6c61_7465),
            born: String::new(),
        }
    }

    /// A data-logged event outside the numbered ones (its id ends in
    /// `-warm-up`), for a backlog user when there are any.
    fn warm_up_event(&mut self, now: DateTime<Utc>) -> InputEvent {
        let mut event = self.data_logged(0, now);
        event.event_id = format!("{}-warm-up", self.run);
        InputEvent::DataLogged(event)
    }

    /// Event `i` ([`LiveEvents::event`]) encoded into `out` (cleared
    /// first), its id written into `id`: (its kind, its user id). A
    /// data-logged event, 49 of 50, is encoded from the user's fields with
    /// no event built and nothing allocated: this runs on the load
    /// generator's thread, which shares the cores with the processor.
    fn encode(
        &mut self,
        i: u64,
        now: DateTime<Utc>,
        codec: &SchemaRegistry,
        out: &mut Vec<u8>,
        id: &mut String,
    ) -> (EventKind, &str) {
        out.clear();
        id.clear();
        id.push_str(&self.run);
        id.push_str("-live-");
        id.push_str(itoa::Buffer::new().format(i));
        if self.birth.is_some() && i % BIRTH_EVERY == BIRTH_EVERY - 1 {
            let event = self.event(i, now);
            out.extend_from_slice(&codec.encode_event(&event));
            self.born = event.user_id().to_string();
            return (EventKind::BirthReported, &self.born);
        }
        let (user_id, employer_id, time_zone) = self.pick_user(i);
        codec.encode_data_logged_into(
            out,
            &DataLoggedFields {
                event_id: id,
                user_id,
                employer_id,
                event_time_ms: now.timestamp_millis(),
                time_zone,
                data_kinds: &LIVE_DATA_KINDS,
            },
        );
        (EventKind::DataLogged, user_id)
    }

    /// The user of data-logged event `i`: a random backlog user, or one made
    /// up (kept in `born`) when there are none. (id, employer, zone).
    fn pick_user(&mut self, i: u64) -> (&str, &str, Option<Tz>) {
        if self.users.is_empty() {
            self.born = format!("{}-live-user-{i}", self.run);
            return (&self.born, EMPLOYERS[0], None);
        }
        let user = &self.users[self.rng.random_range(0..self.users.len())];
        (&user.id, &user.employer, user.zone)
    }

    fn event(&mut self, i: u64, now: DateTime<Utc>) -> InputEvent {
        if let Some(b) = self
            .birth
            .as_ref()
            .filter(|_| i % BIRTH_EVERY == BIRTH_EVERY - 1)
        {
            return InputEvent::BirthReported(BirthReported {
                event_id: format!("{}-live-{i}", self.run),
                user_id: format!("{}-born-{i}", self.run),
                employer_id: b.employer.clone(),
                event_time: now,
                time_zone: Some(b.zone),
                birth_date: b.birth_date,
            });
        }
        InputEvent::DataLogged(self.data_logged(i, now))
    }

    /// Event `i` as a data-logged event of a random backlog user.
    fn data_logged(&mut self, i: u64, now: DateTime<Utc>) -> DataLogged {
        let event_id = format!("{}-live-{i}", self.run);
        let (user_id, employer_id, time_zone) = self.pick_user(i);
        DataLogged {
            event_id,
            user_id: user_id.to_string(),
            employer_id: employer_id.to_string(),
            event_time: now,
            time_zone,
            data_kinds: LIVE_DATA_KINDS.iter().map(|k| k.to_string()).collect(),
        }
    }
}

/// The note of an inflow under the live target's share of the ceiling: no
/// processor can then reach that target on this machine.
fn inflow_note(inflow_rate: f64, ceiling: f64) -> Option<String> {
    (inflow_rate < TARGET_SUSTAINABLE_SHARE * ceiling).then(|| {
        format!(
            "the producer side alone (the paced producer and the broker, no processor) took in {:.0} events/s, {:.0}% of the ceiling: on this machine no processor can reach the live target (>= {:.0}% of the ceiling), as the live phase runs this same producer and broker on the same cores; the drain rate is the processor's own capacity",
            inflow_rate,
            ratio_f(inflow_rate, ceiling) * 100.0,
            TARGET_SUSTAINABLE_SHARE * 100.0
        )
    })
}

/// The live phase's CPU bill, per event, from the phases that ran each part
/// alone: the paced producer and the broker taking the events in (phase
/// 2b), the broker and Redis serving a draining processor (phase 3), the
/// processor itself (phase 3) and the ceiling's bare consumer (phase 2).
/// In CPU seconds per event; `None` where a process could not be read
/// (a remote Redis, no broker pid), which leaves it out of the sums.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuBudget {
    cores: f64,
    load_generator: Option<f64>,
    broker_produce: Option<f64>,
    broker_serving: Option<f64>,
    redis: Option<f64>,
    processor: f64,
    bare_consumer: Option<f64>,
}

impl CpuBudget {
    fn from_figures(cores: usize, ceiling: &Ceiling, inflow: &Inflow, drain: &Drain) -> CpuBudget {
        let inflow_use = CpuUse {
            cores: inflow.cpu,
            seconds: inflow.seconds,
        };
        CpuBudget {
            cores: cores as f64,
            load_generator: inflow_use.per_event(|c| c.load_generator, inflow.acked),
            broker_produce: inflow_use.per_event(|c| c.broker, inflow.acked),
            broker_serving: drain.cpu.per_event(|c| c.broker, drain.events),
            redis: drain.cpu.per_event(|c| c.redis, drain.events),
            processor: drain.cpu_per_million / 1e6,
            bare_consumer: ceiling.cpu.per_event(|c| c.load_generator, ceiling.records),
        }
    }

    /// Everything on the live path but the processor.
    fn others(&self) -> f64 {
        [
            self.load_generator,
            self.broker_produce,
            self.broker_serving,
            self.redis,
        ]
        .iter()
        .flatten()
        .sum()
    }

    /// The live rate the cores could carry at these costs with a processor
    /// costing `processor` CPU seconds per event: an upper bound, as the
    /// cores are never all busy and the paced producer and broker cost more
    /// per event at lower rates (smaller produce requests).
    fn bound(&self, processor: f64) -> f64 {
        self.cores / (self.others() + processor).max(1e-12)
    }

    /// The inverse of [`CpuBudget::bound`]: the most CPU seconds per event
    /// a processor could cost for the cores to carry `rate` live beside the
    /// others at their costs (negative when the others alone need more than
    /// the cores at that rate). Like the bound, optimistic.
    fn processor_allowance(&self, rate: f64) -> f64 {
        self.cores / rate.max(1e-12) - self.others()
    }

    /// What [`CpuBudget::processor_allowance`] leaves for everything a
    /// processor does beyond reading the records (decoding, deciding, its
    /// Redis client, publishing), taking the bare consumer's cost as what
    /// reading them costs; negative when reading alone costs more.
    fn allowance_beyond_reading(&self, rate: f64) -> Option<f64> {
        self.bare_consumer
            .map(|bare| self.processor_allowance(rate) - bare)
    }

    /// With this processor's cost per event.
    fn this_processor(&self) -> f64 {
        self.bound(self.processor)
    }

    /// With a processor that costs only what the bare consumer of the
    /// ceiling costs (it reads the records with the same client settings and
    /// does nothing else, yet the broker and Redis still do this design's
    /// work).
    fn bare(&self) -> Option<f64> {
        self.bare_consumer.map(|c| self.bound(c))
    }

    /// `load generator 2.31, broker 0.45 + 0.30, Redis 1.70, processor
    /// 5.20, bare consumer 1.27 µs`.
    fn describe(&self) -> String {
        let us = |c: Option<f64>| c.map_or("?".into(), |c| format!("{:.2}", c * 1e6));
        format!(
            "load generator {}, broker {} + {}, Redis {}, processor {}, bare consumer {} µs",
            us(self.load_generator),
            us(self.broker_produce),
            us(self.broker_serving),
            us(self.redis),
            us(Some(self.processor)),
            us(self.bare_consumer)
        )
    }
}

/// What a processor could cost per event for the bound to reach the live
/// target: `for 50% of the ceiling (324,081/s) a processor could cost at
/// most 2.19 µs per event (this one 4.47 in the drain, 5.10 at the live
/// rate)`; `live`: this processor's CPU per event at the live rate, once
/// measured ([`Live::processor_cpu_per_event`]).
fn allowance_text(b: &CpuBudget, ceiling: f64, live: Option<f64>) -> String {
    let rate = TARGET_SUSTAINABLE_SHARE * ceiling;
    let allowed = b.processor_allowance(rate);
    let head = format!(
        "for {:.0}% of the ceiling ({}/s)",
        TARGET_SUSTAINABLE_SHARE * 100.0,
        thousands(rate)
    );
    if allowed > 0.0 {
        let live = live.map_or(String::new(), |c| {
            format!(", {:.2} at the live rate", c * 1e6)
        });
        let reading = match b.bare_consumer.zip(b.allowance_beyond_reading(rate)) {
            Some((bare, beyond)) if beyond > 0.0 => format!(
                ", {:.2} beyond the {:.2} the bare consumer costs to read them",
                beyond * 1e6,
                bare * 1e6
            ),
            Some((bare, _)) => format!(
                ", less than the {:.2} the bare consumer costs to read them alone",
                bare * 1e6
            ),
            None => String::new(),
        };
        format!(
            "{head} a processor could cost at most {:.2} µs per event (this one {:.2} in the drain{live}){reading}",
            allowed * 1e6,
            b.processor * 1e6
        )
    } else {
        format!("{head} the others alone need more than the cores, whatever the processor")
    }
}

/// A note when even a processor as cheap as the bare consumer could not
/// keep up live with the target share of the ceiling on these cores.
fn budget_note(b: &CpuBudget, ceiling: f64) -> Option<String> {
    let bare = b.bare()?;
    (bare < TARGET_SUSTAINABLE_SHARE * ceiling).then(|| {
        format!(
            "CPU budget: at the CPU per event measured here ({}), {:.0} cores carry at most {:.0} events/s live even with a processor that costs only what the bare consumer costs ({:.0}% of the ceiling; this processor: {:.0} events/s, {:.0}%): the live target (>= {:.0}% of the ceiling) is out of reach on this machine while the load generator, the broker and Redis share its cores",
            b.describe(),
            b.cores,
            bare,
            ratio_f(bare, ceiling) * 100.0,
            b.this_processor(),
            ratio_f(b.this_processor(), ceiling) * 100.0,
            TARGET_SUSTAINABLE_SHARE * 100.0
        )
    })
}

/// Phase 2b: the producer side alone ([`Bench::phase_inflow`]).
#[derive(Debug, Clone)]
struct Inflow {
    /// Asked for: the ceiling's rate.
    target_rate: f64,
    sent: u64,
    acked: u64,
    failed: u64,
    /// From the first send to the last acknowledgement.
    seconds: f64,
    /// Acknowledged events per second over `seconds`.
    rate: f64,
    /// Send to the broker's ack.
    ack_latency: loadgen::LatencySummary,
    /// No processor runs: the broker, Redis (idle) and the load generator.
    cpu: CpuCores,
}

/// What [`Bench::paced_stretch`] measured.
struct Stretch {
    sent: Sent,
    cpu: CpuCores,
    lag: Vec<LagSample>,
    /// When Redis was rewriting its AOF, on the lag samples' clock.
    aof_rewrites: Vec<RewriteSpan>,
    deleted_while_paced: Result<i64, String>,
}

/// What the paced producer did.
#[derive(Debug, Default)]
struct Sent {
    /// Event id -> when it was handed to the producer.
    at: HashMap<String, Instant>,
    sent: u64,
    acked: u64,
    failed: u64,
    births: u64,
    births_acked: u64,
    /// From the first send to the last (not to the last ack).
    elapsed: Duration,
    /// Send to the broker's ack of the sent events.
    ack_latency: loadgen::LatencySummary,
}

/// Delivery reports of the paced producer, counted in its delivery callback:
/// no future, task or in-flight limit per record, so the producer's own cost
/// stays small next to the processor's on the shared cores. The opaque of a
/// record is its send instant (nanoseconds since `base`) shifted left by one,
/// with the low bit set for a birth.
struct PacedDeliveries {
    base: Instant,
    acked: Arc<AtomicU64>,
    births_acked: AtomicU64,
    failed: AtomicU64,
    /// Send to the broker's ack, of every acknowledged record.
    ack_latency: std::sync::Mutex<Latencies>,
}

impl PacedDeliveries {
    fn new() -> PacedDeliveries {
        PacedDeliveries {
            base: Instant::now(),
            acked: Arc::default(),
            births_acked: AtomicU64::default(),
            failed: AtomicU64::default(),
            ack_latency: std::sync::Mutex::default(),
        }
    }

    fn opaque(&self, sent_at: Instant, birth: bool) -> usize {
        let nanos = sent_at.saturating_duration_since(self.base).as_nanos();
        (usize::try_from(nanos).unwrap_or(usize::MAX >> 1) << 1) | usize::from(birth)
    }

    fn reset(&self) {
        self.acked.store(0, Ordering::Relaxed);
        self.births_acked.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
        *self.ack_latency.lock().unwrap_or_else(|p| p.into_inner()) = Latencies::default();
    }
}

impl rdkafka::ClientContext for PacedDeliveries {}

impl rdkafka::producer::ProducerContext for PacedDeliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, opaque: usize) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                self.births_acked
                    .fetch_add((opaque & 1) as u64, Ordering::Relaxed);
                let sent_at = self.base + Duration::from_nanos((opaque >> 1) as u64);
                self.ack_latency
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(sent_at.elapsed());
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, "paced event not acknowledged");
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The paced phases' producer: the crate's producer settings (idempotent,
/// acks=all, murmur2, the configured options) and the contract's encoding,
/// as [`Publisher`], with acknowledgements counted by [`PacedDeliveries`].
struct PacedProducer {
    producer: rdkafka::producer::BaseProducer<PacedDeliveries>,
    codec: SchemaRegistry,
    /// The nice value its threads run at ([`Options::producer_nice`]).
    nice: i32,
}

impl PacedProducer {
    /// Its librdkafka client is created on a thread at `nice`, so that
    /// librdkafka's own threads (which compress and send) inherit it.
    fn new(kafka: &KafkaSettings, nice: i32) -> anyhow::Result<PacedProducer> {
        let producer = at_nice(nice, || {
            crate::kafka::producer_config(kafka, ACK_TIMEOUT, crate::kafka::Linger::Stream)
                .create_with_context(PacedDeliveries::new())
        })
        .map_err(|e| anyhow!("paced producer: {e}"))?;
        Ok(PacedProducer {
            producer,
            codec: SchemaRegistry::bundled().map_err(|e| anyhow!("bundled schemas: {e}"))?,
            nice,
        })
    }

    fn deliveries(&self) -> &PacedDeliveries {
        use rdkafka::producer::Producer;
        self.producer.context()
    }

    /// Queues one event handed over at `sent_at` (waiting while librdkafka's
    /// queue is full); false when it could not be queued.
    fn send(&self, topics: &TopicSettings, event: &InputEvent, sent_at: Instant) -> bool {
        let bytes = self.codec.encode_event(event);
        self.send_encoded(topics, event.kind(), event.user_id(), &bytes, sent_at)
    }

    /// [`PacedProducer::send`] of an event already encoded.
    fn send_encoded(
        &self,
        topics: &TopicSettings,
        kind: EventKind,
        user_id: &str,
        bytes: &[u8],
        sent_at: Instant,
    ) -> bool {
        use rdkafka::producer::BaseRecord;
        let topic = topics.input(kind);
        let birth = kind == EventKind::BirthReported;
        let opaque = self.deliveries().opaque(sent_at, birth);
        let mut record = BaseRecord::with_opaque_to(topic, opaque)
            .key(user_id)
            .payload(bytes);
        let mut deadline = None;
        loop {
            match self.producer.send(record) {
                Ok(()) => return true,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    // Only a full queue takes the clock: the common send does not.
                    let until = *deadline.get_or_insert_with(|| Instant::now() + ACK_TIMEOUT);
                    if Instant::now() >= until {
                        tracing::warn!("paced event not queued: librdkafka's queue stayed full");
                        return false;
                    }
                    record = back;
                    self.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    tracing::warn!(error = %e, "paced event not queued");
                    return false;
                }
            }
        }
    }

    /// Sends one event and waits for its acknowledgement (on the first use,
    /// the producer's start-up: connection, metadata, idempotent producer
    /// id), with the counts reset before and after: each phase counts its
    /// own events.
    fn warm_up(&self, topics: &TopicSettings, event: &InputEvent) -> anyhow::Result<()> {
        use rdkafka::producer::Producer;
        self.deliveries().reset();
        if !self.send(topics, event, Instant::now()) {
            bail!("the warm-up event could not be queued");
        }
        self.producer
            .flush(ACK_TIMEOUT)
            .map_err(|e| anyhow!("the warm-up event was not acknowledged: {e}"))?;
        let d = self.deliveries();
        if d.acked.load(Ordering::Relaxed) != 1 {
            bail!("the warm-up event was not acknowledged (see the warnings above)");
        }
        d.reset();
        Ok(())
    }
}

/// Runs `f` on a thread at the nice value `nice` (threads it starts inherit
/// it), or on this one when `nice` is 0. Any thread may lower its own
/// priority; when the system refuses, a warning says so and `f` runs anyway.
fn at_nice<T: Send>(nice: i32, f: impl FnOnce() -> T + Send) -> T {
    if nice == 0 {
        return f();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                if let Err(e) = set_own_nice(nice) {
                    tracing::warn!(error = %e, nice, "the paced producer's priority was not lowered");
                }
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Sets the calling thread's nice value (on Linux a thread's own; other
/// systems are not supported here).
fn set_own_nice(nice: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads only its integer arguments; `who` 0 is
        // the calling thread on Linux, where the nice value is per thread.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } == 0 {
            return Ok(());
        }
        Err(std::io::Error::last_os_error())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
        Err(std::io::Error::other("only on Linux"))
    }
}

/// Sends events at `rate` for `duration` from this thread: every
/// millisecond or so, the events due by then (their event time and send
/// instant taken one by one; at most [`MAX_PER_TICK`] before the next look
/// at the clock), then serves delivery reports; waits for the last
/// acknowledgements at the end. Acknowledgements are counted in
/// `producer.deliveries().acked` as they arrive. `record_sends` keeps each
/// event's send instant in [`Sent::at`] (to match awards with). Its callers
/// run it at the producer's nice value ([`at_nice`]).
fn paced_send(
    producer: &PacedProducer,
    topics: &TopicSettings,
    live: &mut LiveEvents,
    rate: f64,
    duration: Duration,
    record_sends: bool,
) -> Sent {
    use rdkafka::producer::Producer;
    const TICK: Duration = Duration::from_millis(1);
    let total = (rate * duration.as_secs_f64()).ceil() as u64;
    let mut out = Sent::default();
    if record_sends {
        // Room for every send instant before the first send: a map that grows
        // rehashes all it holds (at 1.8M events, some 300 ms) while this
        // thread neither sends nor takes acks; the events due meanwhile then
        // went out as one burst the processor worked off for as long. Those
        // stalls, at 2.3, 4.6, 9.2 and 18.3 s of a 20-second latency phase,
        // made its p99 (over 250 ms in 11 of 11 runs; README, Performance).
        out.at.reserve(usize::try_from(total).unwrap_or(0));
    }
    let start = Instant::now();
    let mut queue_failed = 0u64;
    let mut i = 0u64;
    // Reused for every event.
    let (mut bytes, mut id) = (Vec::with_capacity(256), String::new());
    while i < total {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = ((elapsed.as_secs_f64() * rate) as u64 + 1)
            .min(total)
            .min(i + MAX_PER_TICK);
        while i < due {
            let (kind, user) = live.encode(i, Utc::now(), &producer.codec, &mut bytes, &mut id);
            i += 1;
            let birth = kind == EventKind::BirthReported;
            out.sent += 1;
            out.births += u64::from(birth);
            let sent_at = Instant::now();
            if record_sends {
                out.at.insert(id.clone(), sent_at);
            }
            if !producer.send_encoded(topics, kind, user, &bytes, sent_at) {
                queue_failed += 1;
            }
        }
        producer.producer.poll(Duration::ZERO);
        let next = start + Duration::from_secs_f64(i as f64 / rate);
        let wait = next.saturating_duration_since(Instant::now()).min(TICK);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    out.elapsed = start.elapsed();
    if let Err(e) = producer.producer.flush(ACK_TIMEOUT) {
        tracing::warn!(error = %e, "paced events not all acknowledged");
    }
    let d = producer.deliveries();
    out.acked = d.acked.load(Ordering::Relaxed);
    out.births_acked = d.births_acked.load(Ordering::Relaxed);
    out.failed = d.failed.load(Ordering::Relaxed) + queue_failed;
    out.ack_latency = d
        .ack_latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .summary();
    out
}

/// Reads the awards topic from its end offsets (taken when started) on a
/// thread: (source event id, when read).
struct AwardReader {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: JoinHandle<Vec<(String, Instant)>>,
}

impl AwardReader {
    fn start(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<AwardReader> {
        let codec = SchemaRegistry::bundled().map_err(|e| anyhow!("bundled schemas: {e}"))?;
        // The processor's client settings (fetch waits, the configured raw
        // options), so the reader adds what a downstream consumer set up like
        // the processor would; partitions are assigned, nothing is committed.
        let mut reader = kafka.clone();
        reader.group_id = format!("{topic}-bench-reader");
        let consumer: BaseConsumer = crate::kafka::consumer_config(&reader, Duration::from_secs(5))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| anyhow!("awards consumer: {e}"))?;
        let timeout = Duration::from_secs(10);
        let partitions = crate::kafka::partition_count(&consumer, &kafka.brokers, topic, timeout)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| anyhow!("end offsets of {topic}: {e}"))?;
            tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
        consumer.assign(&tpl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (stop_flag, counter) = (stop.clone(), count.clone());
        let thread = std::thread::spawn(move || {
            let mut read = Vec::new();
            while !stop_flag.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(20)) {
                    Some(Ok(m)) => {
                        let at = Instant::now();
                        match codec.decode_award(m.payload().unwrap_or(&[])) {
                            Ok(a) => {
                                read.push((a.source.event_id, at));
                                counter.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => tracing::warn!(error = %e, "undecodable award"),
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "awards consumer error"),
                    None => {}
                }
            }
            read
        });
        Ok(AwardReader {
            stop,
            count,
            thread,
        })
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn stop(self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The records in the input topics' logs: their partitions' end offsets
/// summed, read with a small client of its own in one `ListOffsets` request
/// (the offsets a consumer group's lag is measured against).
pub struct LogEnd {
    consumer: BaseConsumer,
    partitions: TopicPartitionList,
}

impl LogEnd {
    const TIMEOUT: Duration = Duration::from_secs(1);

    pub fn connect(brokers: &str, topics: &TopicSettings) -> anyhow::Result<LogEnd> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .map_err(|e| anyhow!("end offsets client: {e}"))?;
        let mut partitions = TopicPartitionList::new();
        for (topic, _) in topics.inputs() {
            let n = crate::kafka::partition_count(&consumer, brokers, topic, Self::TIMEOUT)?;
            for p in 0..n {
                // A timestamp of -1 (`Offset::End`) asks for the end offset.
                partitions.add_partition_offset(topic, p, Offset::End)?;
            }
        }
        Ok(LogEnd {
            consumer,
            partitions,
        })
    }

    /// `None` when an end offset cannot be read.
    pub fn read(&self) -> Option<i64> {
        let ends = self
            .consumer
            .offsets_for_times(self.partitions.clone(), Self::TIMEOUT)
            .ok()?;
        ends.elements()
            .iter()
            .try_fold(0i64, |sum, e| match e.offset() {
                Offset::Offset(end) if e.error().is_ok() => Some(sum + end),
                _ => None,
            })
    }
}

/// Samples the lag every 100 ms on a thread, and on the same clock whether
/// Redis is rewriting its AOF. The lag is the records written to the input
/// topics since the sampler started (their end offsets, [`LogEnd`]) less
/// those handled; where the end offsets cannot be read, the acknowledged
/// sends stand in for the records written. Acknowledgements reach a
/// producer that shares the cores late (hundreds of ms when the cores are
/// full), which made a lag sampled against them look smaller than it was
/// while they were held back and larger once they came.
struct LagSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<LagSample>, Vec<RewriteSpan>)>,
}

impl LagSampler {
    /// Samples `handled()` (records handled since the phase began; `None`
    /// when it cannot be read) against the records written since (`acked`,
    /// the acknowledged sends, where the end offsets cannot be read), and
    /// Redis's `aof_rewrite_in_progress` (`INFO persistence`; a Redis that
    /// does not answer yields no spans).
    fn start(
        handled: impl Fn() -> Option<u64> + Send + 'static,
        acked: Arc<AtomicU64>,
        settings: &Settings,
    ) -> LagSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let redis_url = settings.redis.url.clone();
        // The end offsets before the caller starts to send (read on the
        // sampler's thread they would already count some of its records).
        let log_end = LogEnd::connect(&settings.kafka.brokers, &settings.topics)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "lag against the acknowledged sends: the input topics' end offsets cannot be read")
            })
            .ok();
        let base = log_end.as_ref().and_then(LogEnd::read);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut redis = redis_connection(&redis_url).ok();
            let (mut samples, mut rewrites) = (Vec::new(), RewriteSpans::default());
            while !flag.load(Ordering::Relaxed) {
                let at = started.elapsed().as_secs_f64();
                // Handled first: what is handled while the end offsets are
                // read can only make the lag look larger, never smaller.
                if let Some(processed) = handled() {
                    let written = log_end
                        .as_ref()
                        .and_then(LogEnd::read)
                        .zip(base)
                        .map(|(end, base)| end - base);
                    let written = written.unwrap_or_else(|| acked.load(Ordering::Relaxed) as i64);
                    samples.push(LagSample {
                        at,
                        processed,
                        lag: written - processed as i64,
                    });
                }
                let info: Option<String> = redis
                    .as_mut()
                    .and_then(|c| redis::cmd("INFO").arg("persistence").query(c).ok());
                if let Some(n) = info
                    .as_deref()
                    .and_then(|i| info_field::<u8>(i, "aof_rewrite_in_progress"))
                {
                    rewrites.observe(at, n == 1);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (samples, rewrites.spans)
        });
        LagSampler { stop, thread }
    }

    /// The lag samples and the AOF rewrite spans.
    fn stop(self) -> (Vec<LagSample>, Vec<RewriteSpan>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A stretch of time, in seconds since a watch started, during which Redis
/// was rewriting its AOF (`end` is `None` when it still was at the end).
#[derive(Debug, Clone, Copy, PartialEq)]
struct RewriteSpan {
    start: f64,
    end: Option<f64>,
}

/// Turns samples of `aof_rewrite_in_progress` into [`RewriteSpan`]s: a
/// span starts at the first sample that sees a rewrite and ends at the
/// first that does not (so each end is late by up to one interval, and a
/// rewrite shorter than the interval can be missed; `aof_rewrites` in the
/// CPU figures counts them all).
#[derive(Debug, Default)]
struct RewriteSpans {
    spans: Vec<RewriteSpan>,
}

impl RewriteSpans {
    fn observe(&mut self, at: f64, in_progress: bool) {
        let open = self.spans.last_mut().filter(|s| s.end.is_none());
        match (open, in_progress) {
            (Some(open), false) => open.end = Some(at),
            (None, true) => self.spans.push(RewriteSpan {
                start: at,
                end: None,
            }),
            _ => {}
        }
    }
}

/// `17.6-18.5 s`, `19.8 s-` (still running at the end), joined by `, `;
/// `none seen` when empty.
fn describe_rewrites(spans: &[RewriteSpan]) -> String {
    if spans.is_empty() {
        return "none seen".into();
    }
    spans
        .iter()
        .map(|s| match s.end {
            Some(end) => format!("{:.1}-{:.1} s", s.start, end),
            None => format!("{:.1} s-", s.start),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the lag grew over a paced phase.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LagTrend {
    /// Lag at the last sample (clamped at 0).
    end: i64,
    max: i64,
    /// Mean lag of the first and last third of the samples.
    first_third_mean: f64,
    last_third_mean: f64,
    /// The last third's mean exceeds the first's by more than 100 ms worth of events.
    growing: bool,
}

fn lag_trend(samples: &[LagSample], rate: f64) -> LagTrend {
    let lags: Vec<i64> = samples.iter().map(|s| s.lag.max(0)).collect();
    let third = lags.len() / 3;
    let mean = |xs: &[i64]| {
        if xs.is_empty() {
            0.0
        } else {
            xs.iter().sum::<i64>() as f64 / xs.len() as f64
        }
    };
    let first = mean(&lags[..third]);
    let last = mean(&lags[lags.len() - third..]);
    LagTrend {
        end: lags.last().copied().unwrap_or(0),
        max: lags.iter().copied().max().unwrap_or(0),
        first_third_mean: first,
        last_third_mean: last,
        growing: third > 0 && last - first > rate * 0.1,
    }
}

/// Runs `done` every 20 ms until it says true (true) or `timeout` passes (false).
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Phase 3b: the live sustainable rate and the probes that found it.
#[derive(Debug, Clone)]
struct Live {
    rate: f64,
    probes: Vec<Probe>,
}

impl Live {
    /// The processor's CPU seconds per event at the live rate: its cores in
    /// the best sustained probe over the rate that probe sent (sustained, so
    /// it handled about what was sent). `None` without a sustained probe or
    /// without the processor's cores.
    fn processor_cpu_per_event(&self) -> Option<f64> {
        let best = best_sustained(&self.probes)?;
        Some(best.cpu.processor? / best.achieved_rate.max(1e-9))
    }
}

#[derive(Debug, Clone)]
struct Probe {
    target_rate: f64,
    achieved_rate: f64,
    sustained: bool,
    /// Where the cores went while the producer was paced: whether the
    /// machine or one process was the limit.
    cpu: CpuCores,
    /// The samples the verdict was drawn from ([`Probe::trend`]; in the
    /// JSON, so that it can be checked).
    lag: Vec<LagSample>,
}

impl Probe {
    /// Sustained: the lag did not grow and the consumer caught up.
    fn new(
        target: f64,
        achieved: f64,
        samples: &[LagSample],
        caught_up: bool,
        cpu: CpuCores,
    ) -> Probe {
        Probe {
            target_rate: target,
            achieved_rate: achieved,
            sustained: !lag_trend(samples, target).growing && caught_up,
            cpu,
            lag: samples.to_vec(),
        }
    }

    /// The lag's end, maximum and whether it grew, at the rate asked for.
    fn trend(&self) -> LagTrend {
        lag_trend(&self.lag, self.target_rate)
    }

    /// `asked 110001/s, sent 109991/s, lag end 12701 max 20921 (not
    /// growing): sustained; cores: processor 0.61, ...`.
    fn describe(&self) -> String {
        let trend = self.trend();
        format!(
            "asked {:.0}/s, sent {:.0}/s, lag end {} max {} ({}): {}; cores: {}",
            self.target_rate,
            self.achieved_rate,
            trend.end,
            trend.max,
            if trend.growing {
                "growing"
            } else {
                "not growing"
            },
            if self.sustained {
                "sustained"
            } else {
                "not sustained"
            },
            self.cpu.describe()
        )
    }

    /// The note of a search that ended at this probe, the producer's limit
    /// ([`producer_limited`]): `figure` for `consumer`.
    fn producer_limit_note(&self, figure: &str, consumer: &str) -> String {
        format!(
            "{figure}: the paced producer (on the same cores) sent {:.0}/s of the {:.0}/s asked for and {consumer} kept up: the figure is the producer's limit, a lower bound of {consumer}'s",
            self.achieved_rate, self.target_rate
        )
    }

    /// The paced producer sent (about) the rate asked for.
    fn reached(&self) -> bool {
        rate_reached(self.achieved_rate, self.target_rate)
    }
}

/// The sustained probe that sent the most.
fn best_sustained(probes: &[Probe]) -> Option<&Probe> {
    probes
        .iter()
        .filter(|p| p.sustained)
        .max_by(|a, b| a.achieved_rate.total_cmp(&b.achieved_rate))
}

/// A sustained probe whose producer sent less than asked (the one that sent
/// the most): the consumer kept up with all the producer could send.
fn producer_limited(probes: &[Probe]) -> Option<&Probe> {
    probes
        .iter()
        .filter(|p| p.sustained && !p.reached())
        .max_by(|a, b| a.achieved_rate.total_cmp(&b.achieved_rate))
}

/// The rate of the next live probe, or `None` when the search is over.
/// Down from [`LIVE_START`] of the drain rate by [`LIVE_STEP`] until a
/// probe is sustained (at most [`LIVE_PROBES`]); then up to [`LIVE_REFINE`]
/// probes halfway between the best sustained rate and the lowest rate above
/// it that was not sustained (the drain rate when none was), unless the
/// best one was the producer's limit or the two are within
/// [`LIVE_RESOLUTION`].
fn next_live_rate(drain_rate: f64, probes: &[Probe]) -> Option<f64> {
    let Some(first_sustained) = probes.iter().position(|p| p.sustained) else {
        return match probes.last() {
            None => Some(drain_rate * LIVE_START),
            Some(_) if probes.len() >= LIVE_PROBES => None,
            Some(last) => Some(last.target_rate * LIVE_STEP),
        };
    };
    if probes.len() - first_sustained > LIVE_REFINE {
        return None;
    }
    if producer_limited(probes).is_some() {
        return None; // the producer's limit: asking for more is pointless
    }
    let best = best_sustained(probes)?;
    let above = probes
        .iter()
        .filter(|p| !p.sustained && p.target_rate > best.target_rate)
        .map(|p| p.target_rate)
        .fold(drain_rate, f64::min);
    (above > best.target_rate * LIVE_RESOLUTION).then(|| (best.target_rate + above) / 2.0)
}

#[derive(Debug, Clone)]
struct LatencyFigures {
    target_rate: f64,
    achieved_rate: f64,
    seconds: f64,
    sent: u64,
    acked: u64,
    failed: u64,
    births: u64,
    births_acked: u64,
    awards_read: u64,
    /// Awards whose source event was not sent in this phase.
    awards_unmatched: u64,
    latency: loadgen::LatencySummary,
    /// The paced events' send to the broker's ack (the first hop of the
    /// event-to-award latency).
    ack_latency: loadgen::LatencySummary,
    lag: Vec<LagSample>,
    lag_trend: LagTrend,
    /// The processor handled every event and every birth's award was read.
    caught_up: bool,
    /// From the last send to that point.
    settle_seconds: f64,
    peak_rss_after: Option<u64>,
    /// The processor's own mean, event time to the broker's ack of the award
    /// (`incentives_event_to_award_seconds`), in this phase.
    processor_mean_event_to_ack: Option<f64>,
    /// Where the cores went while the producer was paced.
    cpu: CpuCores,
    /// When Redis was rewriting its AOF while paced ([`LagSampler`]).
    aof_rewrites: Vec<RewriteSpan>,
    /// The input records applied by the processor and deleted from the
    /// broker while paced ([`Retention`]), or why they were not.
    deleted_while_paced: Result<i64, String>,
}

/// The environment variable naming the broker's process id (set by
/// scripts/bench.sh for the local broker): its CPU while paced is reported.
const BROKER_PID_ENV: &str = "INCENTIVES_BENCH_BROKER_PID";

/// CPU of the processes on the event path and Redis's AOF rewrites: as
/// totals (CPU seconds, `aof_rewrites`) in a [`CpuSnapshot`], and over an
/// interval (cores, i.e. CPU seconds per wall second, and rewrites started)
/// from [`CpuSnapshot::cores_since`]. `None` where it cannot be read (a
/// remote Redis without INFO, a broker without a pid).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuCores {
    processor: Option<f64>,
    load_generator: Option<f64>,
    redis: Option<f64>,
    broker: Option<f64>,
    /// A rewrite forks a child that competes for the cores.
    aof_rewrites: Option<u64>,
}

/// The cores each process used over a span of `seconds`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuUse {
    cores: CpuCores,
    seconds: f64,
}

impl CpuUse {
    /// CPU seconds per event of one process (`cores` picks it) when
    /// `events` were handled in the span.
    fn per_event(&self, cores: impl Fn(&CpuCores) -> Option<f64>, events: u64) -> Option<f64> {
        (events > 0).then_some(())?;
        cores(&self.cores).map(|c| c * self.seconds / events as f64)
    }
}

#[derive(Debug, Clone, Copy)]
struct CpuSnapshot {
    at: Instant,
    totals: CpuCores,
}

impl CpuSnapshot {
    fn take(processor_pid: Option<u32>, redis_url: &str) -> CpuSnapshot {
        let broker = std::env::var(BROKER_PID_ENV)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        let info = redis_info(redis_url);
        CpuSnapshot {
            at: Instant::now(),
            totals: CpuCores {
                processor: processor_pid.and_then(|p| process_cpu_seconds(&p.to_string())),
                load_generator: process_cpu_seconds("self"),
                redis: info.as_deref().and_then(parse_redis_cpu),
                broker: broker.and_then(|p| process_cpu_seconds(&p.to_string())),
                aof_rewrites: info.as_deref().and_then(|i| info_field(i, "aof_rewrites")),
            },
        }
    }

    fn used_since(&self, before: &CpuSnapshot) -> CpuUse {
        CpuUse {
            cores: self.cores_since(before),
            seconds: self.at.duration_since(before.at).as_secs_f64(),
        }
    }

    fn cores_since(&self, before: &CpuSnapshot) -> CpuCores {
        let wall = self.at.duration_since(before.at).as_secs_f64();
        let cores = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if wall > 0.0 && a >= b => Some((a - b) / wall),
            _ => None,
        };
        let (now, then) = (&self.totals, &before.totals);
        CpuCores {
            processor: cores(now.processor, then.processor),
            load_generator: cores(now.load_generator, then.load_generator),
            redis: cores(now.redis, then.redis),
            broker: cores(now.broker, then.broker),
            aof_rewrites: match (now.aof_rewrites, then.aof_rewrites) {
                (Some(a), Some(b)) => a.checked_sub(b),
                _ => None,
            },
        }
    }
}

impl CpuCores {
    /// `processor 0.25, broker 0.90, Redis 0.20, load generator 0.40;
    /// 1 Redis AOF rewrite`. The processor is left out when there is none
    /// (the inflow phase); any other figure not read shows as `?`.
    fn describe(&self) -> String {
        let processor = self.processor.map(|c| ("processor", Some(c)));
        let cores = processor
            .into_iter()
            .chain([
                ("broker", self.broker),
                ("Redis", self.redis),
                ("load generator", self.load_generator),
            ])
            .map(|(name, c)| match c {
                Some(c) => format!("{name} {c:.2}"),
                None => format!("{name} ?"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        match self.aof_rewrites {
            Some(1) => format!("{cores}; 1 Redis AOF rewrite"),
            Some(n) => format!("{cores}; {n} Redis AOF rewrites"),
            None => cores,
        }
    }
}

/// utime + stime of `/proc/<pid>/stat` (`pid` may be `self`), seconds.
fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat_cpu_ticks(&text)? as f64 / clock_ticks_per_second())
}

/// Redis's `INFO cpu` and `INFO persistence`.
fn redis_info(url: &str) -> Option<String> {
    let mut conn = redis_connection(url).ok()?;
    redis::cmd("INFO")
        .arg("cpu")
        .arg("persistence")
        .query(&mut conn)
        .ok()
}

/// used_cpu_user + used_cpu_sys, seconds.
fn parse_redis_cpu(info: &str) -> Option<f64> {
    Some(info_field::<f64>(info, "used_cpu_user")? + info_field::<f64>(info, "used_cpu_sys")?)
}

impl LatencyFigures {
    fn rate_reached(&self) -> bool {
        rate_reached(self.achieved_rate, self.target_rate)
    }
}

// ---------------------------------------------------------------- phase 5: Redis

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct KeyGroup {
    keys: u64,
    bytes: u64,
    user_rules: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct RedisFigures {
    keys: u64,
    data_logged: KeyGroup,
    birth_reported: KeyGroup,
    other: KeyGroup,
    used_memory_before: u64,
    used_memory_after: u64,
}

impl RedisFigures {
    /// MEMORY USAGE of the data-logged user keys per active user-rule.
    fn dl_bytes_per_user_rule(&self) -> f64 {
        ratio(self.data_logged.bytes, self.data_logged.user_rules)
    }

    fn used_memory_delta(&self) -> i64 {
        self.used_memory_after as i64 - self.used_memory_before as i64
    }

    /// The `used_memory` delta per active user-rule (every kind).
    fn delta_per_user_rule(&self) -> f64 {
        let rules = self.data_logged.user_rules + self.birth_reported.user_rules;
        self.used_memory_delta() as f64 / rules.max(1) as f64
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Which of the run's keys a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// A shard's state hash of one event kind (user id -> stored state).
    States(EventKind),
    Other,
}

/// `<prefix>:{p}:dl` and `<prefix>:{p}:br` are state hashes ([`Keys::states`]);
/// `meta`, `outbox` (and anything else) are not.
fn classify_key(key: &str, prefix: &str) -> KeyKind {
    match crate::state::Keys::new(prefix).parse_states(key) {
        Some((_, kind)) => KeyKind::States(kind),
        None => KeyKind::Other,
    }
}

/// The rules a user state holds something for: progress days, spent
/// days, or award markers (`<rule>@<period>`).
fn active_rules(state: &UserState) -> usize {
    let mut rules: BTreeSet<&str> = BTreeSet::new();
    for (rule, days) in &state.progress {
        if !days.is_empty() {
            rules.insert(rule);
        }
    }
    rules.extend(state.spent_through.keys().map(String::as_str));
    rules.extend(
        state
            .awards
            .keys()
            .map(|m| m.rsplit_once('@').map_or(m.as_str(), |(r, _)| r)),
    );
    rules.len()
}

/// Escapes Redis glob characters, so that a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// SCANs `<prefix>:*`, handing each batch of keys to `f`.
fn scan_prefix(
    conn: &mut redis::Connection,
    prefix: &str,
    mut f: impl FnMut(&mut redis::Connection, Vec<String>) -> redis::RedisResult<()>,
) -> redis::RedisResult<()> {
    let pattern = format!("{}:*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(2000)
            .query(conn)?;
        if !keys.is_empty() {
            f(conn, keys)?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

fn measure_redis(url: &str, prefix: &str, before: u64, after: u64) -> anyhow::Result<RedisFigures> {
    let mut conn = redis_connection(url)?;
    let mut figures = RedisFigures {
        used_memory_before: before,
        used_memory_after: after,
        ..RedisFigures::default()
    };
    scan_prefix(&mut conn, prefix, |conn, keys| {
        measure_keys(conn, prefix, &keys, &mut figures)
    })
    .map_err(|e| anyhow!("Redis SCAN of {prefix}:*: {e}"))?;
    Ok(figures)
}

/// Adds one SCAN batch to `figures`: `TYPE` and exact `MEMORY USAGE`
/// (`SAMPLES 0`: every field counted) of every key, pipelined, then every
/// state hash whole (`HGETALL`), to count its users and active user-rules.
fn measure_keys(
    conn: &mut redis::Connection,
    prefix: &str,
    keys: &[String],
    figures: &mut RedisFigures,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("TYPE")
            .arg(k)
            .cmd("MEMORY")
            .arg("USAGE")
            .arg(k)
            .arg("SAMPLES")
            .arg(0);
    }
    let answers: Vec<redis::Value> = pipe.query(conn)?;
    let now_s = chrono::Utc::now().timestamp();
    for (key, pair) in keys.iter().zip(answers.chunks(2)) {
        let kind: String = pair
            .first()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        let bytes: u64 = pair
            .get(1)
            .and_then(|v| redis::from_redis_value::<Option<u64>>(v).ok().flatten())
            .unwrap_or(0);
        figures.keys += 1;
        let group = match classify_key(key, prefix) {
            KeyKind::States(EventKind::DataLogged) if kind == "hash" => &mut figures.data_logged,
            KeyKind::States(EventKind::BirthReported) if kind == "hash" => {
                &mut figures.birth_reported
            }
            _ => {
                figures.other.keys += 1;
                figures.other.bytes += bytes;
                continue;
            }
        };
        group.bytes += bytes;
        let stored: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(conn)?;
        for (_, value) in stored {
            group.keys += 1;
            if let crate::state::Stored::Live(body) = crate::state::live_state(&value, now_s) {
                let state = UserState::decode(body, &crate::engine::RuleCodes::default()).0;
                group.user_rules += active_rules(&state) as u64;
            }
        }
    }
    Ok(())
}

fn redis_used_memory(url: &str) -> anyhow::Result<u64> {
    let mut conn = redis_connection(url)?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut conn)
        .map_err(|e| anyhow!("Redis INFO memory: {e}"))?;
    info_field(&info, "used_memory").ok_or_else(|| anyhow!("no used_memory in Redis INFO memory"))
}

/// A numeric `name:value` line of Redis `INFO`.
fn info_field<T: std::str::FromStr>(info: &str, name: &str) -> Option<T> {
    info.lines().find_map(|line| {
        let (k, v) = line.trim_end().split_once(':')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

/// UNLINKs every key of `<prefix>:*`; the number removed.
fn unlink_prefix(url: &str, prefix: &str) -> anyhow::Result<u64> {
    let mut conn = redis_connection(url)?;
    let mut removed = 0u64;
    scan_prefix(&mut conn, prefix, |conn, keys| {
        let n: u64 = redis::cmd("UNLINK").arg(&keys[..]).query(conn)?;
        removed += n;
        Ok(())
    })?;
    Ok(removed)
}

async fn delete_topics(brokers: &str, topics: &[&str]) -> Result<(), String> {
    let admin = crate::kafka::admin_client(brokers)?;
    let results = admin
        .delete_topics(topics, &crate::kafka::admin_options())
        .await
        .map_err(|e| e.to_string())?;
    none_failed(
        results
            .into_iter()
            .filter_map(|r| r.err().map(|(t, code)| format!("{t}: {code}"))),
    )
}

/// Ok when `failures` (one line per topic or partition) is empty, else
/// all of them in one error.
fn none_failed(failures: impl Iterator<Item = String>) -> Result<(), String> {
    let failed: Vec<String> = failures.collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join(", "))
    }
}

/// Deletes every record of `topics` below their end offsets (Kafka's
/// DeleteRecords, what retention does), once every consumer has read them.
/// The records deleted, or what failed.
async fn delete_read_records(brokers: &str, topics: &[&str]) -> Result<i64, String> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let mut offsets = TopicPartitionList::new();
    let mut records = 0i64;
    for topic in topics {
        let partitions = crate::kafka::partition_count(&consumer, brokers, topic, timeout)
            .map_err(|e| e.to_string())?;
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| format!("end offsets of {topic}: {e}"))?;
            if high > low {
                records += high - low;
                offsets
                    .add_partition_offset(topic, p, Offset::Offset(high))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let admin = crate::kafka::admin_client(brokers)?;
    delete_records_before(&admin, &offsets).await?;
    Ok(records)
}

/// DeleteRecords: each partition of `offsets` keeps its records from the
/// offset given on.
async fn delete_records_before(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    offsets: &TopicPartitionList,
) -> Result<(), String> {
    if offsets.count() == 0 {
        return Ok(());
    }
    let result = admin
        .delete_records(offsets, &crate::kafka::admin_options())
        .await
        .map_err(|e| e.to_string())?;
    none_failed(result.elements().iter().filter_map(|e| {
        e.error()
            .err()
            .map(|err| format!("{}/{}: {err}", e.topic(), e.partition()))
    }))
}

/// While events are paced, deletes from the broker, once a second, the input
/// records the processor has applied (the offsets it keeps in Redis), as a
/// broker's retention would. nisshi's memory storage (the scripts' broker)
/// lists every stored batch of a partition on each fetch, so a phase that
/// kept them ran on a broker slowing down as it went: over a 20-second
/// latency phase at 108,549 events/s its cores rose from 0.34 to 0.60.
struct Retention {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<i64, String>>,
    /// What the consumer did to the records deleted: "applied", "read".
    handled: &'static str,
}

impl Retention {
    const EVERY: Duration = Duration::from_secs(1);

    /// Deletes the input records the processor of `settings` has applied
    /// (its offsets in Redis).
    fn start(settings: &Settings, partitions: i32) -> Retention {
        let redis_url = settings.redis.url.clone();
        let keys = crate::state::Keys::new(&settings.redis.key_prefix);
        let topics = input_topics(settings);
        Self::start_with(settings, "applied", move || {
            let redis = redis_connection(&redis_url).map_err(|e| e.to_string())?;
            let mut reads = redis::pipe();
            for p in 0..partitions {
                for topic in &topics {
                    reads
                        .cmd("HGET")
                        .arg(keys.meta(p))
                        .arg(crate::state::Keys::offset_field(topic));
                }
            }
            Ok(Applied::Redis(redis, reads))
        })
    }

    /// Deletes the input records up to `handled`, the last offset a bare
    /// consumer read of each partition (as [`BareConsumer::positions`]).
    fn start_bare(
        settings: &Settings,
        handled: Arc<std::sync::Mutex<Vec<Option<i64>>>>,
    ) -> Retention {
        Self::start_with(settings, "read", move || Ok(Applied::Positions(handled)))
    }

    /// The deleting thread; `open` gives it, on that thread, where it reads
    /// how far the consumer got.
    fn start_with(
        settings: &Settings,
        handled: &'static str,
        open: impl FnOnce() -> Result<Applied, String> + Send + 'static,
    ) -> Retention {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let brokers = settings.kafka.brokers.clone();
        let topics = input_topics(settings);
        let thread = std::thread::spawn(move || {
            let admin = crate::kafka::admin_client(&brokers)?;
            let mut applied_source = open()?;
            // (topic, partition) -> the first offset kept.
            let mut kept_from: HashMap<(usize, i32), i64> = HashMap::new();
            let mut deleted = 0i64;
            let mut next = Instant::now() + Self::EVERY;
            while !flag.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                next += Self::EVERY;
                let applied = applied_source.read()?;
                let advanced = retention_advances(&applied, topics.len(), &kept_from);
                let mut offsets = TopicPartitionList::new();
                for &((t, p), from) in &advanced {
                    offsets
                        .add_partition_offset(&topics[t], p, Offset::Offset(from))
                        .map_err(|e| e.to_string())?;
                }
                futures::executor::block_on(delete_records_before(&admin, &offsets))?;
                for (at, from) in advanced {
                    if let Some(before) = kept_from.insert(at, from) {
                        deleted += from - before;
                    }
                }
            }
            Ok(deleted)
        });
        Retention {
            stop,
            thread,
            handled,
        }
    }

    /// Stops the deletions: the records deleted after the first pass (which
    /// only finds where the processor stands), or why they stopped.
    fn stop(self) -> Result<i64, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the deleting thread panicked".to_string()))
    }
}

/// Where [`Retention`] reads how far the consumer got: the last offset
/// handled of each partition and input topic, partition-major (`None` where
/// nothing was handled yet).
enum Applied {
    /// The processor's applied offsets, read with this pipeline of `HGET`s.
    Redis(redis::Connection, redis::Pipeline),
    /// A bare consumer's positions ([`BareConsumer::positions`]).
    Positions(Arc<std::sync::Mutex<Vec<Option<i64>>>>),
}

impl Applied {
    fn read(&mut self) -> Result<Vec<Option<i64>>, String> {
        match self {
            Applied::Redis(redis, reads) => reads
                .query(redis)
                .map_err(|e| format!("applied offsets in Redis: {e}")),
            Applied::Positions(p) => Ok(p.lock().unwrap_or_else(|p| p.into_inner()).clone()),
        }
    }
}

/// The run's two input topics, data-logged first (the order of the
/// offsets [`Applied`] reads).
fn input_topics(settings: &Settings) -> [String; 2] {
    [
        settings.topics.data_logged.clone(),
        settings.topics.birth_reported.clone(),
    ]
}

/// The partitions whose records can go further than before: from the
/// applied offsets read for each partition and topic (partition-major, as
/// [`Retention`] reads them; `None` where the processor applied nothing yet)
/// and the first offset each keeps now, ((topic index, partition), the new
/// first offset kept: the one after the applied).
fn retention_advances(
    applied: &[Option<i64>],
    topics: usize,
    kept_from: &HashMap<(usize, i32), i64>,
) -> Vec<((usize, i32), i64)> {
    let topics = topics.max(1);
    applied
        .iter()
        .enumerate()
        .filter_map(|(i, applied)| {
            let at = (i % topics, i32::try_from(i / topics).ok()?);
            let from = applied.as_ref()?.checked_add(1)?;
            match kept_from.get(&at) {
                Some(&before) if before >= from => None,
                _ => Some((at, from)),
            }
        })
        .collect()
}

// ---------------------------------------------------------------- phase 6: RSS

#[derive(Debug, Clone)]
struct RssFigures {
    users: usize,
    published: Published,
    drain: Drain,
    used_memory_delta: i64,
}

// ---------------------------------------------------------------- output

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    figure: String,
    value: String,
    target: String,
    /// `None`: no target, or not applicable.
    met: Option<bool>,
}

fn row(figure: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        figure: figure.into(),
        value: value.into(),
        target: "-".into(),
        met: None,
    }
}

fn row_with_target(
    figure: impl Into<String>,
    value: impl Into<String>,
    target: impl Into<String>,
    met: Option<bool>,
) -> Row {
    Row {
        target: target.into(),
        met,
        ..row(figure, value)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// 1234567.8 -> "1,234,568".
fn thousands(x: f64) -> String {
    let n = x.round().abs() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x.round() < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Each probe's figures: the live phases' JSON.
fn probes_json(probes: &[Probe]) -> Vec<Value> {
    probes
        .iter()
        .map(|p| {
            let trend = p.trend();
            json!({
                "target_rate": p.target_rate,
                "achieved_rate": p.achieved_rate,
                "lag_end": trend.end,
                "lag_max": trend.max,
                "growing": trend.growing,
                "sustained": p.sustained,
                "cpu_cores": cpu_json(&p.cpu),
                "lag_samples": lag_samples_json(&p.lag),
            })
        })
        .collect()
}

/// `[[seconds, lag], ...]`, the seconds to the millisecond.
fn lag_samples_json(samples: &[LagSample]) -> Vec<Value> {
    samples
        .iter()
        .map(|s| json!([(s.at * 1e3).round() / 1e3, s.lag]))
        .collect()
}

fn table_rows(f: &Figures) -> Vec<Row> {
    let share = ratio_f(f.live.rate, f.ceiling.rate);
    let live_ceiling = f.live_ceiling_rate();
    let drain_share = ratio_f(f.sustainable.rate, f.ceiling.rate);
    let l = &f.latency;
    let at = format!("at {}/s", thousands(l.achieved_rate));
    let trend = &l.lag_trend;
    let mut rows = vec![
        row(
            "raw consume throughput (ceiling)",
            format!("{} events/s", thousands(f.ceiling.rate)),
        ),
        row(
            "producer side alone (inflow)",
            format!(
                "{} events/s ({:.0}% of ceiling), ack p99 {:.1} ms; {}",
                thousands(f.inflow.rate),
                ratio_f(f.inflow.rate, f.ceiling.rate) * 100.0,
                ms(f.inflow.ack_latency.p99),
                f.inflow.cpu.describe()
            ),
        ),
        row(
            "live ceiling (bare consumer, paced producer)",
            match (&f.live_ceiling, live_ceiling) {
                (None, _) => "not measured (see the notes)".to_string(),
                (Some(_), None) => "no probed rate sustained".to_string(),
                (Some(_), Some(rate)) => format!(
                    "{} events/s ({:.0}% of ceiling)",
                    thousands(rate),
                    ratio_f(rate, f.ceiling.rate) * 100.0
                ),
            },
        ),
        row("live upper bound from CPU per event", {
            let b = &f.budget;
            let bare = b.bare();
            format!(
                    "{} events/s with this processor ({:.0}% of ceiling), {} with one as cheap as the bare consumer ({}); {:.0} cores, per event: {}; {}",
                    thousands(b.this_processor()),
                    ratio_f(b.this_processor(), f.ceiling.rate) * 100.0,
                    bare.map_or("?".into(), thousands),
                    bare.map_or("?".into(), |r| format!("{:.0}%", ratio_f(r, f.ceiling.rate) * 100.0)),
                    b.cores,
                    b.describe(),
                    allowance_text(b, f.ceiling.rate, f.live.processor_cpu_per_event())
                )
        }),
        row(
            "processor backlog drain rate",
            format!(
                "{} events/s ({:.0}% of ceiling)",
                thousands(f.sustainable.rate),
                drain_share * 100.0
            ),
        ),
        row_with_target(
            "processor sustainable throughput (live)",
            format!(
                "{} events/s ({:.0}% of ceiling, {} of the live ceiling)",
                thousands(f.live.rate),
                share * 100.0,
                live_ceiling.map_or("?".to_string(), |c| format!(
                    "{:.0}%",
                    ratio_f(f.live.rate, c) * 100.0
                ))
            ),
            format!(">= {:.0}% of ceiling", TARGET_SUSTAINABLE_SHARE * 100.0),
            Some(share >= TARGET_SUSTAINABLE_SHARE),
        ),
        row(
            format!("event-to-award p50 {at}"),
            format!("{:.1} ms", ms(l.latency.p50)),
        ),
        row_with_target(
            format!("event-to-award p99 {at}"),
            format!("{:.1} ms", ms(l.latency.p99)),
            format!("< {} ms", TARGET_P99.as_millis()),
            (l.latency.count > 0).then(|| l.latency.p99 < TARGET_P99),
        ),
        row(
            "event-to-award max, awards measured",
            format!("{:.1} ms, {}", ms(l.latency.max), l.latency.count),
        ),
        row(
            "paced events, send to broker ack p50 / p99",
            format!(
                "{:.1} / {:.1} ms",
                ms(l.ack_latency.p50),
                ms(l.ack_latency.p99)
            ),
        ),
        row(
            "processor's own mean, event to award ack",
            l.processor_mean_event_to_ack
                .map_or("-".into(), |s| format!("{:.1} ms", s * 1e3)),
        ),
        row("CPU while paced, cores", l.cpu.describe()),
        row(
            if (l.target_rate - f.live.rate / 2.0).abs() < 1.0 {
                "paced rate (half sustainable)"
            } else {
                "paced rate (--latency-rate)"
            },
            format!(
                "{} of {}/s{}",
                thousands(l.achieved_rate),
                thousands(l.target_rate),
                if l.rate_reached() { "" } else { " NOT REACHED" }
            ),
        ),
        row(
            "lag at end / max while paced",
            format!(
                "{} / {} events ({})",
                trend.end,
                trend.max,
                if trend.growing {
                    "GROWING"
                } else {
                    "not growing"
                }
            ),
        ),
        row(
            "Redis AOF rewriting while paced",
            format!(
                "{} into the {:.1} s (sampled every 100 ms, on the lag samples' clock)",
                describe_rewrites(&l.aof_rewrites),
                l.seconds
            ),
        ),
        row(
            "processor CPU per million events",
            format!(
                "{:.1} s in the drain, {} at the live rate",
                f.sustainable.cpu_per_million,
                f.live
                    .processor_cpu_per_event()
                    .map_or("?".into(), |c| format!("{:.1} s", c * 1e6))
            ),
        ),
        row_with_target(
            "Redis per active user-rule (5-day streak)",
            format!(
                "{:.0} B ({} user-rules, MEMORY USAGE)",
                f.redis.dl_bytes_per_user_rule(),
                thousands(f.redis.data_logged.user_rules as f64)
            ),
            format!("< {TARGET_REDIS_BYTES_PER_USER_RULE:.0} B"),
            (f.redis.data_logged.user_rules > 0)
                .then(|| f.redis.dl_bytes_per_user_rule() < TARGET_REDIS_BYTES_PER_USER_RULE),
        ),
        row(
            "Redis per active user-rule (used_memory)",
            format!(
                "{:.0} B ({} user states in {} keys)",
                f.redis.delta_per_user_rule(),
                thousands((f.redis.data_logged.keys + f.redis.birth_reported.keys) as f64),
                thousands(f.redis.keys as f64)
            ),
        ),
        row(
            "processor peak RSS (backlog)",
            format!(
                "{:.1} MB ({} users)",
                mb(f.sustainable.peak_rss),
                thousands(f.users as f64)
            ),
        ),
    ];
    match &f.rss {
        Some(r) => {
            let counts = r.users >= TARGET_RSS_USERS;
            rows.push(row_with_target(
                format!("processor peak RSS, {} users", thousands(r.users as f64)),
                format!("{:.1} MB", mb(r.drain.peak_rss)),
                format!(
                    "< {:.0} MB at {} users",
                    mb(TARGET_RSS_BYTES),
                    thousands(TARGET_RSS_USERS as f64)
                ),
                counts.then_some(r.drain.peak_rss < TARGET_RSS_BYTES),
            ));
            rows.push(row(
                format!("throughput, {} distinct users", thousands(r.users as f64)),
                format!(
                    "{} events/s, {:.1} CPU s/M",
                    thousands(r.drain.rate),
                    r.drain.cpu_per_million
                ),
            ));
        }
        None => rows.push(row_with_target(
            "processor peak RSS, distinct users",
            "skipped (--rss-users 0)",
            format!("< {:.0} MB at 1M users", mb(TARGET_RSS_BYTES)),
            None,
        )),
    }
    rows
}

fn ratio_f(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The rows as an aligned text table with a header.
fn format_table(rows: &[Row]) -> String {
    let met = |r: &Row| match r.met {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    };
    let header = Row {
        figure: "figure".into(),
        value: "value".into(),
        target: "target".into(),
        met: None,
    };
    let width = |f: fn(&Row) -> &str| {
        rows.iter()
            .chain([&header])
            .map(|r| f(r).chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w1, w2, w3) = (
        width(|r| &r.figure),
        width(|r| &r.value),
        width(|r| &r.target),
    );
    let mut out = format!(
        "{:<w1$}  {:<w2$}  {:<w3$}  met?\n",
        header.figure, header.value, header.target
    );
    out.push_str(&format!(
        "{}  {}  {}  ----\n",
        "-".repeat(w1),
        "-".repeat(w2),
        "-".repeat(w3)
    ));
    for r in rows {
        out.push_str(&format!(
            "{:<w1$}  {:<w2$}  {:<w3$}  {}\n",
            r.figure,
            r.value,
            r.target,
            met(r)
        ));
    }
    out
}

fn lag_json(samples: &[LagSample]) -> Value {
    Value::Array(
        samples
            .iter()
            .map(|s| json!([(s.at * 1000.0).round() / 1000.0, s.processed, s.lag]))
            .collect(),
    )
}

fn cpu_json(c: &CpuCores) -> Value {
    json!({
        "processor": c.processor,
        "broker": c.broker,
        "redis": c.redis,
        "redis_aof_rewrites": c.aof_rewrites,
        "load_generator": c.load_generator,
    })
}

/// Send to the broker's ack of the paced events.
fn ack_json(a: &loadgen::LatencySummary) -> Value {
    json!({
        "count": a.count,
        "p50": ms(a.p50),
        "p99": ms(a.p99),
        "max": ms(a.max),
    })
}

fn cpu_use_json(c: &CpuUse) -> Value {
    json!({"seconds": c.seconds, "cores": cpu_json(&c.cores)})
}

fn budget_json(b: &CpuBudget, ceiling: f64) -> Value {
    let us = |c: Option<f64>| c.map(|c| c * 1e6);
    json!({
        "cores": b.cores,
        "cpu_us_per_event": {
            "load_generator": us(b.load_generator),
            "broker_produce": us(b.broker_produce),
            "broker_serving_processor": us(b.broker_serving),
            "redis": us(b.redis),
            "processor": b.processor * 1e6,
            "bare_consumer": us(b.bare_consumer),
        },
        "live_bound_this_processor": b.this_processor(),
        "live_bound_this_processor_share_of_ceiling": ratio_f(b.this_processor(), ceiling),
        "live_bound_bare_consumer": b.bare(),
        "live_bound_bare_consumer_share_of_ceiling": b.bare().map(|r| ratio_f(r, ceiling)),
        "processor_us_per_event_allowed_at_target":
            b.processor_allowance(TARGET_SUSTAINABLE_SHARE * ceiling) * 1e6,
        "processor_us_per_event_allowed_at_target_beyond_reading":
            us(b.allowance_beyond_reading(TARGET_SUSTAINABLE_SHARE * ceiling)),
    })
}

fn drain_json(d: &Drain) -> Value {
    json!({
        "cpu": cpu_use_json(&d.cpu),
        "events": d.events,
        "seconds": d.seconds,
        "events_per_second": d.rate,
        "group_join_seconds": d.join_seconds,
        "cpu_seconds": d.cpu_seconds,
        "cpu_seconds_per_million_events": d.cpu_per_million,
        "peak_rss_bytes": d.peak_rss,
        "awards": d.awards,
        "lag_samples_columns": ["seconds", "processed", "lag"],
        "lag_samples": lag_json(&d.lag),
    })
}

fn published_json(p: &Published) -> Value {
    json!({"events": p.events, "seconds": p.seconds, "events_per_second": p.rate})
}

fn group_json(g: &KeyGroup) -> Value {
    json!({
        "keys": g.keys,
        "memory_usage_bytes": g.bytes,
        "active_user_rules": g.user_rules,
        "bytes_per_user_rule": ratio(g.bytes, g.user_rules),
    })
}

fn to_json(
    run: &str,
    started_at: DateTime<Utc>,
    options: &Options,
    config: &Config,
    f: &Figures,
    rows: &[Row],
    notes: &[String],
) -> Value {
    let l = &f.latency;
    let (commit, dirty) = git_commit();
    json!({
        "run": run,
        "started_at": started_at.to_rfc3339(),
        "git_commit": commit,
        "git_dirty": dirty,
        "machine": {"cpus": cpus()},
        "parameters": {
            "users": options.users,
            "days": options.days,
            "seed": options.seed,
            "partitions": options.partitions,
            "latency_seconds": options.latency.as_secs_f64(),
            "latency_rate": options.latency_rate,
            "rss_users": options.rss_users,
            "producer_nice": options.producer_nice,
            "brokers": config.settings.kafka.brokers,
            "redis": redact_url(&config.settings.redis.url),
            "config_dir": config.dir.display().to_string(),
        },
        "backlog": published_json(&f.backlog),
        "ceiling": {
            "records": f.ceiling.records,
            "bytes": f.ceiling.bytes,
            "seconds": f.ceiling.seconds,
            "events_per_second": f.ceiling.rate,
            "passes": f.ceiling.passes,
            "seconds_from_assignment": f.ceiling.from_assignment,
            "events_per_second_from_assignment": f.ceiling.from_assignment
                .map(|s| f.ceiling.records as f64 / s.max(1e-9)),
            "cpu": cpu_use_json(&f.ceiling.cpu),
        },
        "cpu_budget": budget_json(&f.budget, f.ceiling.rate),
        "inflow": {
            "target_rate": f.inflow.target_rate,
            "sent": f.inflow.sent,
            "acked": f.inflow.acked,
            "failed": f.inflow.failed,
            "seconds": f.inflow.seconds,
            "events_per_second": f.inflow.rate,
            "share_of_ceiling": ratio_f(f.inflow.rate, f.ceiling.rate),
            "send_to_ack_ms": ack_json(&f.inflow.ack_latency),
            "cpu_cores": cpu_json(&f.inflow.cpu),
        },
        "live_ceiling": f.live_ceiling.as_ref().map(|l| json!({
            "events_per_second": l.rate,
            "share_of_ceiling": ratio_f(l.rate, f.ceiling.rate),
            "probes": probes_json(&l.probes),
        })),
        "sustainable": {
            "share_of_ceiling": ratio_f(f.live.rate, f.ceiling.rate),
            "events_per_second": f.live.rate,
            "share_of_live_ceiling": f.live_ceiling_rate().map(|c| ratio_f(f.live.rate, c)),
            "cpu_seconds_per_million_events": f.live.processor_cpu_per_event().map(|c| c * 1e6),
            "probes": probes_json(&f.live.probes),
            "drain_share_of_ceiling": ratio_f(f.sustainable.rate, f.ceiling.rate),
            "drain": drain_json(&f.sustainable),
        },
        "latency": {
            "target_rate": l.target_rate,
            "achieved_rate": l.achieved_rate,
            "rate_reached": l.rate_reached(),
            "seconds": l.seconds,
            "sent": l.sent,
            "acked": l.acked,
            "failed": l.failed,
            "births": l.births,
            "births_acked": l.births_acked,
            "awards_read": l.awards_read,
            "awards_unmatched": l.awards_unmatched,
            "cpu_cores_while_paced": cpu_json(&l.cpu),
            "event_to_award_ms": {
                "count": l.latency.count,
                "p50": ms(l.latency.p50),
                "p90": ms(l.latency.p90),
                "p99": ms(l.latency.p99),
                "max": ms(l.latency.max),
                "mean": ms(l.latency.mean),
            },
            "lag": {
                "end": l.lag_trend.end,
                "max": l.lag_trend.max,
                "first_third_mean": l.lag_trend.first_third_mean,
                "last_third_mean": l.lag_trend.last_third_mean,
                "growing": l.lag_trend.growing,
                "samples": lag_samples_json(&l.lag),
            },
            "event_send_to_ack_ms": ack_json(&l.ack_latency),
            "processor_mean_event_time_to_award_ack_ms": l.processor_mean_event_to_ack.map(|s| s * 1e3),
            "caught_up": l.caught_up,
            "settle_seconds": l.settle_seconds,
            "records_deleted_while_paced": l.deleted_while_paced.as_ref().ok(),
            "records_not_deleted_while_paced": l.deleted_while_paced.as_ref().err(),
            "peak_rss_bytes_after": l.peak_rss_after,
            "lag_samples_columns": ["seconds", "processed", "lag"],
            "lag_samples": lag_json(&l.lag),
            "redis_aof_rewrite_spans_seconds": l.aof_rewrites.iter().map(|s| json!([s.start, s.end])).collect::<Vec<_>>(),
        },
        "redis": {
            "keys": f.redis.keys,
            "data_logged": group_json(&f.redis.data_logged),
            "birth_reported": group_json(&f.redis.birth_reported),
            "other": group_json(&f.redis.other),
            "bytes_per_active_user_rule_memory_usage": f.redis.dl_bytes_per_user_rule(),
            "used_memory_before": f.redis.used_memory_before,
            "used_memory_after": f.redis.used_memory_after,
            "used_memory_delta": f.redis.used_memory_delta(),
            "bytes_per_active_user_rule_used_memory": f.redis.delta_per_user_rule(),
        },
        "rss": f.rss.as_ref().map(|r| json!({
            "users": r.users,
            "published": published_json(&r.published),
            "drain": drain_json(&r.drain),
            "peak_rss_bytes": r.drain.peak_rss,
            "redis_used_memory_delta": r.used_memory_delta,
            "redis_used_memory_per_user": r.used_memory_delta as f64 / r.users.max(1) as f64,
        })),
        "table": rows.iter().map(|r| json!({
            "figure": r.figure, "value": r.value, "target": r.target, "met": r.met,
        })).collect::<Vec<_>>(),
        "targets": {
            "sustainable_share_of_ceiling": TARGET_SUSTAINABLE_SHARE,
            "p99_event_to_award_ms": ms(TARGET_P99),
            "redis_bytes_per_active_user_rule": TARGET_REDIS_BYTES_PER_USER_RULE,
            "peak_rss_bytes": TARGET_RSS_BYTES,
            "peak_rss_users": TARGET_RSS_USERS,
        },
        "notes": notes,
    })
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `git rev-parse HEAD` and whether tracked files changed; `None` outside a checkout.
fn git_commit() -> (Option<String>, Option<bool>) {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"]);
    let dirty = commit
        .as_ref()
        .and_then(|_| run(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    (commit, dirty)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe at `target` that sent `sent` and was (not) sustained.
    fn probe(target: f64, sent: f64, sustained: bool) -> Probe {
        Probe {
            target_rate: target,
            achieved_rate: sent,
            sustained,
            cpu: CpuCores::default(),
            lag: Vec::new(),
        }
    }

    /// Runs the live search against a processor that sustains `capacity`
    /// and a producer that sends at most `producer`; the probes' rates.
    fn search(drain: f64, capacity: f64, producer: f64) -> (Vec<f64>, Option<f64>) {
        let mut probes = Vec::new();
        while let Some(rate) = next_live_rate(drain, &probes) {
            let sent = rate.min(producer);
            probes.push(probe(rate, sent, sent <= capacity));
            assert!(probes.len() <= LIVE_PROBES + LIVE_REFINE, "the search ends");
        }
        let rates = probes.iter().map(|p| p.target_rate.round()).collect();
        (
            rates,
            best_sustained(&probes).map(|p| p.achieved_rate.round()),
        )
    }

    #[test]
    fn aof_rewrite_samples_become_spans() {
        let mut spans = RewriteSpans::default();
        for (at, on) in [
            (0.0, false),
            (0.1, true),
            (0.2, true),
            (0.3, false),
            (0.4, false),
            (0.5, true),
        ] {
            spans.observe(at, on);
        }
        assert_eq!(
            spans.spans,
            vec![
                RewriteSpan {
                    start: 0.1,
                    end: Some(0.3)
                },
                RewriteSpan {
                    start: 0.5,
                    end: None
                },
            ]
        );
        assert_eq!(describe_rewrites(&spans.spans), "0.1-0.3 s, 0.5 s-");
        assert_eq!(describe_rewrites(&[]), "none seen");
    }

    #[test]
    fn the_live_cpu_per_event_is_that_of_the_best_sustained_probe() {
        let with_cores = |rate: f64, sent: f64, sustained: bool, cores: f64| Probe {
            cpu: CpuCores {
                processor: Some(cores),
                ..CpuCores::default()
            },
            ..probe(rate, sent, sustained)
        };
        let live = Live {
            rate: 150_000.0,
            probes: vec![
                with_cores(200_000.0, 200_000.0, false, 0.8),
                with_cores(150_000.0, 150_000.0, true, 0.6),
                with_cores(120_000.0, 120_000.0, true, 0.6),
            ],
        };
        let c = live.processor_cpu_per_event().expect("a sustained probe");
        assert!((c - 4e-6).abs() < 1e-12, "{c}");
        let none_sustained = Live {
            rate: 0.0,
            probes: vec![with_cores(200_000.0, 200_000.0, false, 0.8)],
        };
        assert_eq!(none_sustained.processor_cpu_per_event(), None);
        let unread = Live {
            rate: 150_000.0,
            probes: vec![probe(150_000.0, 150_000.0, true)],
        };
        assert_eq!(unread.processor_cpu_per_event(), None);
    }

    #[test]
    fn the_live_search_steps_down_then_halves_the_gap_twice() {
        // 700, 560 fail; 448 holds; then 504 (holds), 532 (fails).
        let (rates, live) = search(1000.0, 520.0, f64::MAX);
        assert_eq!(rates, vec![700.0, 560.0, 448.0, 504.0, 532.0]);
        assert_eq!(live, Some(504.0));
    }

    #[test]
    fn a_first_probe_that_holds_is_refined_towards_the_drain_rate() {
        let (rates, live) = search(1000.0, 2000.0, f64::MAX);
        assert_eq!(rates, vec![700.0, 850.0, 925.0]);
        assert_eq!(live, Some(925.0));
    }

    #[test]
    fn a_producer_limited_probe_is_not_refined() {
        // The producer sends 300/s whatever is asked: 448 sent 300 (held).
        let (rates, live) = search(1000.0, 2000.0, 300.0);
        assert_eq!(rates, vec![700.0]);
        assert_eq!(live, Some(300.0));
    }

    #[test]
    fn a_producer_limited_probe_above_the_best_ends_the_search() {
        // 700 was reached and held; 850 was asked, the producer sent only 690
        // and the consumer kept up: asking 850 again would find nothing new.
        let probes = [probe(700.0, 700.0, true), probe(850.0, 690.0, true)];
        assert_eq!(next_live_rate(1000.0, &probes), None);
        assert_eq!(
            producer_limited(&probes).map(|p| p.target_rate),
            Some(850.0)
        );
        assert_eq!(producer_limited(&probes[..1]).map(|p| p.target_rate), None);
    }

    #[test]
    fn nothing_sustained_stops_after_the_last_step_down() {
        let (rates, live) = search(1000.0, 10.0, f64::MAX);
        assert_eq!(rates, vec![700.0, 560.0, 448.0, 358.0, 287.0]);
        assert_eq!(live, None);
    }

    #[test]
    fn metrics_are_summed_over_labels_and_only_for_that_name() {
        let text = "\
# HELP incentives_events_total Input records by topic and outcome
# TYPE incentives_events_total counter
incentives_events_total{outcome=\"applied\",topic=\"a\"} 120
incentives_events_total{outcome=\"no_program\",topic=\"b\"} 3
incentives_events_total_other 1000
incentives_awards_total{incentive=\"x\"} 7
incentives_events_total 5
";
        assert_eq!(sum_metric(text, "incentives_events_total"), 128.0);
        assert_eq!(sum_metric(text, "incentives_awards_total"), 7.0);
        assert_eq!(sum_metric(text, "missing"), 0.0);
    }

    #[test]
    fn proc_stat_and_status_are_parsed() {
        // The command name may contain spaces and parentheses.
        let stat =
            "1234 (incent (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let status =
            "Name:\tincentives\nVmPeak:\t  900000 kB\nVmHWM:\t   95232 kB\nVmRSS:\t   90000 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(95232 * 1024));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn redis_cpu_and_cores_are_computed() {
        let info = "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:2.500000\r\nused_cpu_sys_children:9.0\r\n";
        assert_eq!(parse_redis_cpu(info), Some(3.75));
        assert_eq!(parse_redis_cpu("# CPU\r\nused_cpu_sys:1.0\r\n"), None);
        let at = Instant::now();
        let before = CpuSnapshot {
            at,
            totals: CpuCores {
                processor: Some(10.0),
                load_generator: Some(1.0),
                redis: Some(5.0),
                broker: None,
                aof_rewrites: Some(3),
            },
        };
        let after = CpuSnapshot {
            at: at + Duration::from_secs(2),
            totals: CpuCores {
                processor: Some(11.0),
                load_generator: Some(1.5),
                redis: Some(4.0),
                broker: Some(3.0),
                aof_rewrites: Some(5),
            },
        };
        let cores = after.cores_since(&before);
        assert_eq!(
            cores,
            CpuCores {
                processor: Some(0.5),
                load_generator: Some(0.25),
                redis: None, // went backwards: a restarted Redis
                broker: None,
                aof_rewrites: Some(2),
            }
        );
        assert_eq!(
            cores.describe(),
            "processor 0.50, broker ?, Redis ?, load generator 0.25; 2 Redis AOF rewrites"
        );
        // No processor (the inflow phase): left out, not shown as `?`.
        let inflow = CpuCores {
            processor: None,
            ..cores
        };
        assert_eq!(
            inflow.describe(),
            "broker ?, Redis ?, load generator 0.25; 2 Redis AOF rewrites"
        );
        assert_eq!(
            info_field("aof_rewrites:108\r\n", "aof_rewrites"),
            Some(108u64)
        );
    }

    #[test]
    fn info_fields_are_read_exactly() {
        let info =
            "# Memory\r\nused_memory:35807680\r\nused_memory_human:34.15M\r\nused_memory_rss:1\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(35_807_680u64));
        assert_eq!(info_field(info, "used_memory_rss"), Some(1u64));
        assert_eq!(info_field::<u64>(info, "used_memory_human"), None);
    }

    #[test]
    fn keys_are_classified_by_kind() {
        let p = "bench-1";
        assert_eq!(
            classify_key("bench-1:{3}:dl", p),
            KeyKind::States(EventKind::DataLogged)
        );
        assert_eq!(
            classify_key("bench-1:{0}:br", p),
            KeyKind::States(EventKind::BirthReported)
        );
        assert_eq!(classify_key("bench-1:{3}:meta", p), KeyKind::Other);
        assert_eq!(classify_key("bench-1:{3}:outbox", p), KeyKind::Other);
        assert_eq!(classify_key("bench-10:{3}:dl", p), KeyKind::Other);
        assert_eq!(
            classify_key("bench-1:{3}:dl:legacy-user-key", p),
            KeyKind::Other
        );
    }

    #[test]
    fn active_rules_count_each_rule_once() {
        let decode = |s: &str| UserState::decode(s, &crate::engine::RuleCodes::default()).0;
        let state = decode(
            "wm:dl=1;emp=acme;tz=Europe/Berlin;s:acme/streak=20000,20001;\
             x:acme/streak=19990;a:acme/streak@program=id|2026-03-01|v1;\
             a:acme/streak@2026-W10=id|2026-03-01|v1;a:globex/streak@program=id||v1",
        );
        assert_eq!(active_rules(&state), 2);
        let state = decode("wm:dl=1;emp=acme;s:acme/streak=20000;s:acme/count=");
        assert_eq!(active_rules(&state), 1, "an empty day list is no state");
        assert_eq!(active_rules(&decode("wm:dl=1;emp=acme")), 0);
    }

    #[test]
    fn glob_characters_are_escaped_and_urls_redacted() {
        assert_eq!(glob_escape("bench-1"), "bench-1");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:16379/"),
            "redis://127.0.0.1:16379/"
        );
        assert_eq!(redact_url("unix-socket"), "unix-socket");
    }

    fn samples(lags: &[i64]) -> Vec<LagSample> {
        lags.iter()
            .enumerate()
            .map(|(i, &lag)| LagSample {
                at: i as f64 * 0.1,
                processed: 0,
                lag,
            })
            .collect()
    }

    #[test]
    fn retention_deletes_only_what_the_processor_applied_and_never_goes_back() {
        // Two topics, three partitions, partition-major: p0 (dl, br), p1 ...
        let applied = [Some(9), None, Some(0), Some(4), None, None];
        let mut kept: HashMap<(usize, i32), i64> = HashMap::new();
        let first = retention_advances(&applied, 2, &kept);
        assert_eq!(first, vec![((0, 0), 10), ((0, 1), 1), ((1, 1), 5)]);
        kept.extend(first);
        // Nothing new applied: nothing to delete.
        assert!(retention_advances(&applied, 2, &kept).is_empty());
        // An applied offset behind the one kept (a slow read) is left alone.
        let later = [Some(20), Some(3), Some(0), Some(2), None, Some(7)];
        assert_eq!(
            retention_advances(&later, 2, &kept),
            vec![((0, 0), 21), ((1, 0), 4), ((1, 2), 8)]
        );
    }

    #[test]
    fn lag_trend_tells_a_steady_lag_from_a_growing_one() {
        let steady = lag_trend(&samples(&[10, 200, 50, 120, 30, 180, 90, 40, 150]), 1000.0);
        assert!(!steady.growing, "{steady:?}");
        assert_eq!((steady.end, steady.max), (150, 200));
        let growing = lag_trend(
            &samples(&[0, 100, 200, 300, 400, 500, 600, 700, 800]),
            1000.0,
        );
        assert!(growing.growing, "{growing:?}");
        let empty = lag_trend(&[], 1000.0);
        assert!(!empty.growing);
        assert_eq!(empty.end, 0);
        // Negative lags (acks counted after the processor saw the record) count as 0.
        assert_eq!(lag_trend(&samples(&[-5]), 1.0).max, 0);
    }

    #[test]
    fn a_probe_is_sustained_only_when_the_lag_did_not_grow_and_the_consumer_caught_up() {
        let steady = samples(&[10, 200, 50, 120, 30, 180, 90, 40, 150]);
        let growing = samples(&[0, 100, 200, 300, 400, 500, 600, 700, 800]);
        let cpu = CpuCores::default();
        let p = Probe::new(1000.0, 990.0, &steady, true, cpu);
        assert!(p.sustained && p.reached(), "{p:?}");
        assert_eq!((p.trend().end, p.trend().max), (150, 200));
        assert!(
            p.describe().contains("(not growing): sustained"),
            "{}",
            p.describe()
        );
        assert!(!Probe::new(1000.0, 990.0, &steady, false, cpu).sustained);
        let g = Probe::new(1000.0, 990.0, &growing, true, cpu);
        assert!(!g.sustained && g.trend().growing);
        assert!(
            g.describe().contains("(growing): not sustained"),
            "{}",
            g.describe()
        );
    }

    #[test]
    fn latency_percentiles_of_award_samples() {
        let mut l = Latencies::default();
        for i in 1..=1000 {
            l.record(Duration::from_millis(i));
        }
        let s = l.summary();
        assert_eq!(s.p50, Duration::from_millis(500));
        assert_eq!(s.p99, Duration::from_millis(990));
        assert_eq!(s.max, Duration::from_millis(1000));
    }

    #[test]
    fn a_drain_with_no_records_after_the_first_sample_is_an_error() {
        let drain = |events| Drain {
            events,
            seconds: 0.0,
            rate: 0.0,
            join_seconds: 0.5,
            cpu_seconds: 0.0,
            cpu_per_million: 0.0,
            peak_rss: 0,
            awards: None,
            lag: Vec::new(),
            cpu: CpuUse::default(),
        };
        let e = check_drain_measured(&drain(0), 5_488)
            .unwrap_err()
            .to_string();
        assert!(e.contains("5488 events") && e.contains("--users"), "{e}");
        assert!(check_drain_measured(&drain(1), 5_488).is_ok());
    }

    #[test]
    fn cpu_per_event_is_cores_times_seconds_over_events() {
        let span = CpuUse {
            cores: CpuCores {
                redis: Some(0.5),
                broker: None,
                ..CpuCores::default()
            },
            seconds: 4.0,
        };
        assert_eq!(span.per_event(|c| c.redis, 1_000_000), Some(2e-6));
        assert_eq!(span.per_event(|c| c.broker, 1_000_000), None);
        assert_eq!(span.per_event(|c| c.redis, 0), None);
    }

    #[test]
    fn the_cpu_budget_bounds_the_live_rate_and_notes_an_unreachable_target() {
        // Figures of the order measured on the 2-core machine (µs per event).
        let b = CpuBudget {
            cores: 2.0,
            load_generator: Some(2.3e-6),
            broker_produce: Some(0.45e-6),
            broker_serving: Some(0.25e-6),
            redis: Some(1.7e-6),
            processor: 5.3e-6,
            bare_consumer: Some(1.3e-6),
        };
        assert!((b.others() - 4.7e-6).abs() < 1e-12);
        assert!(
            (b.this_processor() - 200_000.0).abs() < 1.0,
            "{}",
            b.this_processor()
        );
        let bare = b.bare().expect("measured");
        assert!((bare - 2.0 / 6.0e-6).abs() < 1.0, "{bare}");
        let note = budget_note(&b, 800_000.0).expect("333,333/s is under 400,000/s");
        assert!(note.contains("at most 333333 events/s"), "{note}");
        assert!(
            note.contains("(42% of the ceiling; this processor: 200000 events/s, 25%)"),
            "{note}"
        );
        assert_eq!(
            budget_note(&b, 600_000.0),
            None,
            "333,333/s is over half of 600,000/s"
        );
        // The allowance is the bound's inverse: at this processor's own
        // bound it is this processor's cost.
        assert!((b.processor_allowance(200_000.0) - b.processor).abs() < 1e-12);
        assert!((b.processor_allowance(400_000.0) - 0.3e-6).abs() < 1e-12);
        assert_eq!(
            allowance_text(&b, 800_000.0, None),
            "for 50% of the ceiling (400,000/s) a processor could cost at most 0.30 µs per event (this one 5.30 in the drain), less than the 1.30 the bare consumer costs to read them alone"
        );
        assert_eq!(
            allowance_text(&b, 800_000.0, Some(6.1e-6)),
            "for 50% of the ceiling (400,000/s) a processor could cost at most 0.30 µs per event (this one 5.30 in the drain, 6.10 at the live rate), less than the 1.30 the bare consumer costs to read them alone"
        );
        // What is left beyond reading: 2 / 300,000 - 4.7 - 1.3 µs.
        let beyond = b.allowance_beyond_reading(300_000.0).expect("measured");
        assert!(
            (beyond - (2.0 / 300_000.0 - 6.0e-6)).abs() < 1e-12,
            "{beyond}"
        );
        assert_eq!(
            allowance_text(&b, 600_000.0, None),
            "for 50% of the ceiling (300,000/s) a processor could cost at most 1.97 µs per event (this one 5.30 in the drain), 0.67 beyond the 1.30 the bare consumer costs to read them"
        );
        assert_eq!(
            allowance_text(&b, 1_000_000.0, None),
            "for 50% of the ceiling (500,000/s) the others alone need more than the cores, whatever the processor"
        );
        // A process not read is left out of the sums: the bound only rises.
        let unread = CpuBudget {
            broker_produce: None,
            broker_serving: None,
            ..b
        };
        assert!(unread.this_processor() > b.this_processor());
        assert!(
            unread.describe().contains("broker ? + ?"),
            "{}",
            unread.describe()
        );
        // Without the bare consumer's figure there is no bound to note and
        // nothing to say of what reading costs.
        let no_bare = CpuBudget {
            bare_consumer: None,
            ..b
        };
        assert_eq!(budget_note(&no_bare, 800_000.0), None);
        assert_eq!(no_bare.allowance_beyond_reading(300_000.0), None);
        assert_eq!(
            allowance_text(&no_bare, 600_000.0, None),
            "for 50% of the ceiling (300,000/s) a processor could cost at most 1.97 µs per event (this one 5.30 in the drain)"
        );
    }

    /// The calling thread's nice value, from `/proc/thread-self/stat`.
    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("readable");
        stat_field(&stat, 19) // nice
            .expect("field 19")
            .parse()
            .expect("a number")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn at_nice_runs_on_a_thread_at_that_nice_value() {
        let here = std::thread::current().id();
        let mine = own_nice();
        assert_eq!(
            at_nice(0, || (std::thread::current().id(), own_nice())),
            (here, mine),
            "0 runs here, as it is"
        );
        // Above this thread's own (which anyone may set), at most 19.
        let want = (mine + 3).min(19);
        let (there, nice) = at_nice(want, || (std::thread::current().id(), own_nice()));
        assert_ne!(there, here);
        assert_eq!(nice, want);
        assert_eq!(own_nice(), mine, "this thread keeps its own");
        // Threads started from it inherit it (as librdkafka's do).
        let inherited = at_nice(want, || {
            std::thread::spawn(own_nice).join().expect("joined")
        });
        assert_eq!(inherited, want);
    }

    #[test]
    fn an_inflow_under_half_the_ceiling_is_noted() {
        let note = inflow_note(619_921.0, 1_529_953.0).expect("41% of the ceiling");
        assert!(
            note.contains("619921 events/s, 41% of the ceiling"),
            "{note}"
        );
        assert!(note.contains(">= 50% of the ceiling"), "{note}");
        assert_eq!(inflow_note(863_136.0, 898_663.0), None);
        assert_eq!(
            inflow_note(450_000.0, 900_000.0),
            None,
            "exactly half can be met"
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-1234.0), "-1,234");
    }

    #[test]
    fn the_table_is_aligned_with_a_met_column() {
        let rows = vec![
            row("ceiling", "100 events/s"),
            row_with_target("p99", "12.5 ms", "< 250 ms", Some(true)),
            row_with_target("rss", "250.0 MB", "< 200 MB", Some(false)),
        ];
        let table = format_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("figure "));
        assert!(lines[0].ends_with("met?"));
        assert!(lines[2].ends_with("  -"), "{table}");
        assert!(lines[3].ends_with("  yes"), "{table}");
        assert!(lines[4].ends_with("  NO"), "{table}");
        let value_col = lines[0].find("value").unwrap();
        assert!(lines
            .iter()
            .skip(2)
            .all(|l| !l[value_col..].starts_with(' ')));
    }

    #[test]
    fn live_events_are_one_birth_in_fifty_with_unique_ids() {
        let users = vec![User {
            id: "user-1-000001".into(),
            employer: "globex".into(),
            zone: Some(chrono_tz::Europe::Berlin),
        }];
        let birth = BirthProgram {
            employer: "acme".into(),
            zone: chrono_tz::America::New_York,
            birth_date: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        };
        let mut live = LiveEvents::new("bench-1", users, Some(birth), 1);
        let now = Utc::now();
        let events: Vec<InputEvent> = (0..500).map(|i| live.event(i, now)).collect();
        let births = events
            .iter()
            .filter(|e| e.kind() == EventKind::BirthReported)
            .count();
        assert_eq!(births, 10);
        let ids: BTreeSet<&str> = events.iter().map(|e| e.event_id()).collect();
        assert_eq!(ids.len(), 500);
        let born: BTreeSet<&str> = events
            .iter()
            .filter(|e| e.kind() == EventKind::BirthReported)
            .map(|e| e.user_id())
            .collect();
        assert_eq!(born.len(), 10, "each birth is a fresh user");
        assert!(events.iter().all(|e| e.event_time() == now));
        assert!(events
            .iter()
            .filter(|e| e.kind() == EventKind::DataLogged)
            .all(|e| e.user_id() == "user-1-000001" && e.employer_id() == "globex"));
        // Without a birth program, only data-logged events.
        let mut plain = LiveEvents::new("bench-1", vec![], None, 1);
        assert!((0..100).all(|i| plain.event(i, now).kind() == EventKind::DataLogged));
    }

    #[test]
    fn the_paced_producers_encoding_is_the_events_encoding() {
        let users: Vec<User> = ["user-1-000001", "user-1-000002", "user-1-000003"]
            .iter()
            .zip([
                Some(chrono_tz::Europe::Berlin),
                None,
                Some(chrono_tz::Asia::Tokyo),
            ])
            .map(|(id, zone)| User {
                id: id.to_string(),
                employer: "globex".into(),
                zone,
            })
            .collect();
        let program = || BirthProgram {
            employer: "acme".into(),
            zone: chrono_tz::America::New_York,
            birth_date: NaiveDate::from_ymd_opt(2026, 3, 1).expect("a valid date"),
        };
        let codec = SchemaRegistry::bundled().expect("the bundled schemas load");
        let now = Utc::now();
        for (users, birth) in [(users.clone(), Some(program())), (vec![], None)] {
            // Same seed: the same users are drawn.
            let mut built = LiveEvents::new("bench-1", users.clone(), birth, 1);
            let mut encoded =
                LiveEvents::new("bench-1", users, built.birth.as_ref().map(|_| program()), 1);
            let (mut bytes, mut id) = (Vec::new(), String::new());
            for i in 0..120 {
                let event = built.event(i, now);
                let (kind, user) = encoded.encode(i, now, &codec, &mut bytes, &mut id);
                assert_eq!((kind, user), (event.kind(), event.user_id()), "event {i}");
                assert_eq!(id, event.event_id());
                assert_eq!(bytes, codec.encode_event(&event), "event {i}");
            }
        }
    }

    #[test]
    fn the_birth_program_is_the_shipped_acme_one() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let config = Config::load_with_env(&dir, &[]).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-06-15T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let b = birth_program(&config, now).unwrap();
        assert_eq!(b.employer, "acme");
        assert_eq!(b.birth_date, NaiveDate::from_ymd_opt(2026, 6, 14).unwrap());
        // Before any program starts: none.
        let early = DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(birth_program(&config, early).is_none());
    }

    #[test]
    fn run_names_cover_topics_group_and_prefix() {
        let n = RunNames::new("bench-7");
        assert_eq!(
            n.topics(),
            [
                "bench-7.data-logged",
                "bench-7.birth-reported",
                "bench-7.awards",
                "bench-7.dead-letter"
            ]
        );
        let s = n.settings(&Settings::default());
        assert_eq!(s.kafka.group_id, "bench-7");
        assert_eq!(s.redis.key_prefix, "bench-7");
        let env: BTreeMap<_, _> = n.env().into_iter().collect();
        assert_eq!(env["INCENTIVES__TOPICS__AWARDS"], "bench-7.awards");
        assert_eq!(env["INCENTIVES__KAFKA__GROUP_ID"], "bench-7");
        assert_eq!(env.len(), 6);
        let e = distinct_user_event("bench-7-rss", 12, Utc::now());
        assert_eq!(e.user_id(), "bench-7-rss-user-0000012");
    }
}
