//! `faults`: the fault-injection suite (issue 5), one command.
//!
//! ```sh
//! cargo run --release --bin faults -- --mode short|full --seed N   # or scripts/faults.sh [short|full]
//! ```
//!
//! It starts its own `redis-server` (AOF on, `appendfsync` per phase) and its
//! own nisshi broker (SQLite storage, so a restart keeps topics, data and group
//! offsets) on free ports, creates fresh topics with 6 partitions, writes a
//! configuration whose catalog has streak (with grace days and a rollover hour),
//! count (one with a data-kind filter) and once rules under every repeat policy,
//! and runs a private copy of `incentives process` as 1 to 3 child OS processes.
//! While a deterministic synthetic workload is published in one wave per step
//! (every event is retried until the broker acknowledged it, and about 1% are sent
//! twice on purpose, as an upstream retry after a lost ack would), it injects, and
//! logs what it did, when, and what it observed:
//!
//! - kill -9 of processors at random moments, right after a batch was applied to
//!   Redis (before the offset commit: the suite checks that Redis was ahead of the
//!   committed Kafka offset), and right after a processor got its partitions (the
//!   claim and outbox flush); each victim is replaced by a new process;
//! - scale out 1 -> 3 and in 3 -> 1 (rebalances, graceful SIGTERM);
//! - Redis kill -9 and restart from its AOF with `appendfsync everysec` and
//!   `always`, and a simulated host crash under `everysec`: kill -9 and the AOF
//!   cut back to its size a second earlier, as an OS crash before the next fsync
//!   would leave it (full mode also does it right after a rebalance, losing the
//!   partition claims);
//! - broker kill -9 and restart on the same SQLite database;
//! - SIGSTOP of a processor for longer than the session timeout while the
//!   other takes over, then SIGCONT (a zombie waking after its partitions moved),
//!   stopped right after it applied a batch or right after it read a batch's state.
//!
//! After each fault every data-logged partition must progress again; one that
//! does not is a stalled partition (a failure), healed with a rebalance so that the
//! run goes on. Then every processor is drained and stopped, and the checker reads
//! the input topics back and replays them, partition by partition in offset order,
//! through the pure engine (the oracle), reads the whole awards and dead-letter
//! topics and Redis, and reports: awards expected, found, missing, unexpected, ids
//! seen more than once (identical bytes: a re-emission, allowed; different content:
//! a double decision, a failure), awards whose content differs from the oracle's,
//! dead letters (faults must cause none), and Redis (every user state hash equal to
//! the oracle's, every award marker, applied offsets, empty outboxes).
//!
//! `--phases` runs a subset (to find which fault causes a failure). Exit status:
//! 0 every check passed, 1 a check failed, 2 the suite could not run. A failing
//! run keeps its work directory (processor, Redis and broker logs and data).

#![deny(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::NaiveDate;
use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use incentives::codec::SchemaRegistry;
use incentives::config::{Config, KafkaSettings, TopicSettings};
use incentives::dead_letter::{headers as dl_headers, DeadLetterReason};
use incentives::engine::{
    apply_event, check_not_in_future, matching_rules, prune_ended_programs, Limits, UserState,
};
use incentives::events::{AwardGranted, EventKind, InputEvent, Source};
use incentives::partitioner::partition_for_key;
use incentives::publisher::Publisher;
use incentives::state::{live_state, Keys, Stored};
use incentives::tools::{synthetic_events, Synthetic};

const PARTITIONS: i32 = 6;
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Events per publish call of the feeder.
const CHUNK: usize = 100;
/// Every this many events, one is published a second time on purpose.
const RESEND_EVERY: usize = 97;

// ------------------------------------------------------------------ output

static START: OnceLock<Instant> = OnceLock::new();

fn since_start() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

macro_rules! say {
    ($($t:tt)*) => {{
        println!("[{:>6.1}s] {}", since_start(), format!($($t)*));
    }};
}

// ------------------------------------------------------------------ command line

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A few of each fault, about 2 minutes on 2 cores (what CI runs).
    Short,
    /// 24 processor kills and every other fault at least twice, about 5-6 minutes.
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PhaseKind {
    /// Scale out 1 -> 3 and back in to 1.
    Scale,
    /// kill -9 of processors (random moments, after a batch, after an assignment).
    Kills,
    /// Redis kill -9 and restart under appendfsync everysec.
    RedisEverysec,
    /// Simulated host crash under everysec: the last second of the AOF is lost.
    RedisLoss,
    /// Redis kill -9 and restart under appendfsync always.
    RedisAlways,
    /// Broker kill -9 and restart on the same SQLite database.
    Broker,
    /// SIGSTOP longer than the session timeout, then SIGCONT.
    Zombie,
}

/// Fault-injection suite: faults while a workload runs, then a checker
/// against a pure-engine oracle. Exit status 0 pass, 1 a check failed, 2 the
/// suite could not run.
#[derive(Parser, Debug)]
#[command(args_override_self = true)]
struct Args {
    #[arg(long, value_enum, default_value = "short")]
    mode: Mode,
    /// Seed of the workload and of every random choice of the suite.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run only these phases (comma-separated), in the mode's order.
    #[arg(long, value_enum, value_delimiter = ',')]
    phases: Vec<PhaseKind>,
    /// Synthetic users (default: 1200 short, 6000 full).
    #[arg(long)]
    users: Option<usize>,
    /// Simulated days (default: 28 short, 42 full).
    #[arg(long)]
    days: Option<u32>,
    /// The `incentives` binary (default: next to this one).
    #[arg(long)]
    processor_bin: Option<PathBuf>,
    /// The nisshi broker binary (default: $NISSHI_BIN, PATH, ~/.cargo/bin/nisshi).
    #[arg(long)]
    nisshi_bin: Option<PathBuf>,
    /// Where logs and data go (default: a new directory under the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory after a passing run (a failing run always keeps it).
    #[arg(long)]
    keep: bool,
}

/// What a Redis crash loses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// A process crash: every write reached the AOF file (nothing lost).
    None,
    /// A host crash under everysec: the last second of the AOF is gone.
    LastSecond,
    /// The same, right after a rebalance: the partition claims are lost.
    ClaimsOfARebalance,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Scale,
    Kills(usize),
    Redis { always: bool, loss: Loss },
    Broker,
    Zombie,
}

impl Step {
    fn kind(self) -> PhaseKind {
        match self {
            Step::Scale => PhaseKind::Scale,
            Step::Kills(_) => PhaseKind::Kills,
            Step::Redis {
                loss: Loss::LastSecond | Loss::ClaimsOfARebalance,
                ..
            } => PhaseKind::RedisLoss,
            Step::Redis { always: true, .. } => PhaseKind::RedisAlways,
            Step::Redis { .. } => PhaseKind::RedisEverysec,
            Step::Broker => PhaseKind::Broker,
            Step::Zombie => PhaseKind::Zombie,
        }
    }

    /// Planned seconds (the share of the workload published during it).
    fn weight(self) -> f64 {
        match self {
            Step::Scale => 14.0,
            Step::Kills(n) => 6.5 * n as f64,
            Step::Redis {
                loss: Loss::ClaimsOfARebalance,
                ..
            } => 45.0,
            Step::Redis { .. } => 8.0,
            Step::Broker => 20.0,
            Step::Zombie => 25.0,
        }
    }

    fn label(self) -> String {
        match self {
            Step::Scale => "scale 1->3->1".into(),
            Step::Kills(n) => format!("kill -9 x{n}"),
            Step::Redis { always, loss } => format!(
                "redis {} ({})",
                match loss {
                    Loss::None => "kill -9",
                    Loss::LastSecond => "host crash",
                    Loss::ClaimsOfARebalance => "host crash/rebal.",
                },
                if always { "always" } else { "everysec" }
            ),
            Step::Broker => "broker kill -9".into(),
            Step::Zombie => "zombie (SIGSTOP)".into(),
        }
    }
}

fn plan(mode: Mode) -> Vec<Step> {
    let everysec = |loss| Step::Redis {
        always: false,
        loss,
    };
    let always = Step::Redis {
        always: true,
        loss: Loss::None,
    };
    match mode {
        Mode::Short => vec![
            Step::Scale,
            Step::Kills(5),
            everysec(Loss::None),
            everysec(Loss::LastSecond),
            always,
            Step::Broker,
            Step::Zombie,
        ],
        Mode::Full => vec![
            Step::Scale,
            Step::Kills(8),
            everysec(Loss::None),
            everysec(Loss::LastSecond),
            Step::Broker,
            Step::Zombie,
            Step::Kills(8),
            Step::Scale,
            always,
            Step::Broker,
            Step::Zombie,
            Step::Kills(8),
            always,
            everysec(Loss::ClaimsOfARebalance),
        ],
    }
}

// ------------------------------------------------------------------ configuration

const CATALOG: &str = r#"# Written by the fault-injection suite (src/bin/faults.rs).
[incentives.streak-5]
description = "Logged on five consecutive days"
event = "data_logged"
rule = { kind = "streak", days = 5 }

[incentives.streak-3-grace]
description = "Three days in a row, one missed day forgiven, days end at 03:00"
event = "data_logged"
rule = { kind = "streak", days = 3, grace_days = 1, rollover_hour = 3 }

[incentives.count-6-in-10]
description = "Logged 6 times on at least 4 days within 10 days"
event = "data_logged"
rule = { kind = "count", events = 6, distinct_days = 4, window_days = 10 }

[incentives.mood-3-in-7]
description = "Logged mood 3 times on at least 2 days within 7 days"
event = "data_logged"
rule = { kind = "count", events = 3, distinct_days = 2, window_days = 7 }
filter = { data_kinds = ["mood"] }

[incentives.birth]
description = "Reported a birth"
event = "birth_reported"
rule = { kind = "once" }

[incentives.birth-in-program]
description = "Reported a birth that happened during the program"
event = "birth_reported"
rule = { kind = "once", birth_date_within_program = true }
"#;

/// Two employers: acme from before the workload (New York), globex starting a
/// week into it (Berlin), so its first days take the no-program path.
const PROGRAMS: &str = r#"# Written by the fault-injection suite (src/bin/faults.rs).
[[programs]]
id = "acme-faults"
employer_id = "acme"
time_zone = "America/New_York"
starts_on = 2025-01-01
ends_on = 2027-12-31

[[programs.incentives]]
incentive = "streak-5"
reward = { kind = "physical", code = "PILLOW", description = "A pregnancy pillow" }
repeat = "once"

[[programs.incentives]]
incentive = "streak-3-grace"
reward = { kind = "points", code = "50", description = "50 points" }
repeat = "weekly"

[[programs.incentives]]
incentive = "birth"
reward = { kind = "gift_card", code = "BABY-50", description = "A gift card" }

[[programs]]
id = "globex-faults"
employer_id = "globex"
time_zone = "Europe/Berlin"
starts_on = 2025-03-08

[[programs.incentives]]
incentive = "count-6-in-10"
reward = { kind = "points", code = "100", description = "100 points" }
repeat = "monthly"

[[programs.incentives]]
incentive = "mood-3-in-7"
reward = { kind = "points", code = "10", description = "10 points" }
repeat = "every_completion"

[[programs.incentives]]
incentive = "streak-5"
reward = { kind = "points", code = "70", description = "70 points" }
repeat = "weekly"
grace_days = 1

[[programs.incentives]]
incentive = "birth-in-program"
reward = { kind = "physical", code = "STROLLER", description = "A stroller" }
"#;

/// First simulated day: fixed, so a seed always means the same workload (it
/// crosses both DST changes of March 2025).
fn workload_start() -> Result<NaiveDate> {
    NaiveDate::from_ymd_opt(2025, 3, 1).ok_or_else(|| anyhow!("bad start date"))
}

// ------------------------------------------------------------------ helpers

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

fn sleep(d: Duration) {
    std::thread::sleep(d)
}

fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(d.max(0.0))
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(name)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|rest| rest.trim().parse().ok())
    })
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

fn redis_conn(url: &str) -> Result<redis::Connection> {
    let client = redis::Client::open(url)?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    conn.set_write_timeout(Some(Duration::from_secs(3)))?;
    Ok(conn)
}

type Tp = (String, i32);
type Offsets = BTreeMap<Tp, i64>;

// ------------------------------------------------------------------ Redis

struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    fsync: &'static str,
}

impl RedisServer {
    fn start(dir: &Path) -> Result<RedisServer> {
        std::fs::create_dir_all(dir)?;
        let mut r = RedisServer {
            child: None,
            port: free_port()?,
            dir: dir.to_path_buf(),
            fsync: "everysec",
        };
        r.spawn()?;
        Ok(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", self.fsync])
            // No AOF rewrite during the run: the host-crash fault cuts the tail
            // of the one incremental AOF file.
            .args(["--auto-aof-rewrite-percentage", "0"])
            .args(["--aof-load-truncated", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "redis-server not found: install Debian's redis-server (scripts/faults.sh does)",
            )?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = redis_conn(&self.url()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "redis-server exited during startup ({status}); see {}",
                        self.dir.join("redis.log").display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING within 30s");
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn set_fsync(&mut self, mode: &'static str) -> Result<()> {
        let mut c = redis_conn(&self.url())?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg(mode)
            .query::<()>(&mut c)?;
        self.fsync = mode;
        Ok(())
    }

    /// The incremental AOF file Redis appends to (Redis 7 multi-part AOF).
    fn incr_aof(&self) -> Result<PathBuf> {
        let dir = self.dir.join("appendonlydir");
        let manifest = std::fs::read_to_string(dir.join("appendonly.aof.manifest"))
            .context("reading the AOF manifest")?;
        let name = manifest
            .lines()
            .filter(|l| l.contains("type i"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .next_back()
            .ok_or_else(|| anyhow!("no incremental AOF in the manifest"))?;
        Ok(dir.join(name))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ------------------------------------------------------------------ broker

struct Broker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl Broker {
    fn start(bin: &Path, dir: &Path) -> Result<Broker> {
        std::fs::create_dir_all(dir)?;
        let mut b = Broker {
            child: None,
            port: free_port()?,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
        };
        b.spawn()?;
        Ok(b)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let url = format!("tcp://{}", self.addr());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nisshi.log"))?;
        let child = Command::new(&self.bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://nisshi.db"])
            .args(["--group-initial-rebalance-delay", "100ms"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !port_open(self.port) {
            if Instant::now() > deadline {
                bail!(
                    "nisshi did not listen on {} within 30s; see {}",
                    self.port,
                    self.dir.join("nisshi.log").display()
                );
            }
            sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn nisshi_bin(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("NISSHI_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nisshi"))
            .find(|p| p.is_file())
    }) {
        return Ok(found);
    }
    let cargo = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/nisshi");
    if cargo.is_file() {
        return Ok(cargo);
    }
    bail!("no nisshi broker: set NISSHI_BIN or pass --nisshi-bin (scripts/faults.sh installs one)")
}

// ------------------------------------------------------------------ processors

struct Proc {
    n: usize,
    child: Child,
    port: u16,
    log: PathBuf,
    stopped: bool,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics(&self) -> Option<String> {
        http_get(self.port, "/metrics", Duration::from_millis(500))
            .ok()
            .map(|(_, b)| b)
    }

    fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().and_then(|b| metric_value(&b, name))
    }

    /// A counter: 0 while the process answers but has not counted yet
    /// (labelled series appear at their first increment); None when it does not answer.
    fn counter(&self, name: &str) -> Option<f64> {
        self.metrics()
            .map(|b| metric_value(&b, name).unwrap_or(0.0))
    }

    /// Batches this process applied to Redis (one per partition batch write).
    fn applied_batches(&self) -> Option<f64> {
        self.counter("incentives_redis_latency_seconds_count{op=\"apply_batch\"}")
    }

    fn assigned(&self) -> Option<f64> {
        self.metric("incentives_assigned_partitions")
    }

    fn ready(&self) -> bool {
        matches!(
            http_get(self.port, "/readyz", Duration::from_millis(500)),
            Ok((200, _))
        )
    }

    /// The partitions this process holds, from its log (claims since the last revoke).
    fn held_partitions(&self) -> BTreeSet<Tp> {
        let mut held = BTreeSet::new();
        let Ok(f) = std::fs::File::open(&self.log) else {
            return held;
        };
        for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            match v.get("message").and_then(|m| m.as_str()) {
                Some("partitions revoked") => held.clear(),
                Some("partition claimed") => {
                    if let (Some(t), Some(p)) = (
                        v.get("topic").and_then(|t| t.as_str()),
                        v.get("partition").and_then(|p| p.as_i64()),
                    ) {
                        held.insert((t.to_string(), p as i32));
                    }
                }
                _ => {}
            }
        }
        held
    }
}

// ------------------------------------------------------------------ processor logs

#[derive(Default, Debug, Clone)]
struct LogStats {
    claims: usize,
    revokes: usize,
    reemit_flushes: usize,
    reemitted_awards: u64,
    fenced_reads: usize,
    fenced_writes: usize,
    retries_redis: usize,
    retries_kafka: usize,
    dead_lettered: usize,
    errors: usize,
    client_errors: usize,
    panics: usize,
    awards_published: usize,
    error_samples: Vec<String>,
}

impl LogStats {
    fn add_line(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            if line.contains("panicked") {
                self.panics += 1;
                self.error_samples.push(line.chars().take(200).collect());
            }
            return;
        };
        let message = v.get("message").and_then(|m| m.as_str()).unwrap_or("");
        match message {
            "partition claimed" => self.claims += 1,
            "partitions revoked" => self.revokes += 1,
            "re-emitting awards from the outbox" => {
                self.reemit_flushes += 1;
                self.reemitted_awards += v.get("awards").and_then(|a| a.as_u64()).unwrap_or(0);
            }
            "partition claimed by another consumer; dropping its batch" => self.fenced_reads += 1,
            "batch not applied: partition lost to another consumer" => self.fenced_writes += 1,
            "dependency failed; retrying" => match v.get("dependency").and_then(|d| d.as_str()) {
                Some("redis") => self.retries_redis += 1,
                _ => self.retries_kafka += 1,
            },
            "record dead-lettered" => self.dead_lettered += 1,
            "award published" => self.awards_published += 1,
            _ => {}
        }
        if v.get("level").and_then(|l| l.as_str()) == Some("ERROR") {
            if message.starts_with("librdkafka:") {
                // librdkafka's own log (broker connections), expected during a broker outage.
                self.client_errors += 1;
                return;
            }
            self.errors += 1;
            if self.error_samples.len() < 5 {
                self.error_samples.push(format!(
                    "{message} {}",
                    v.get("error").map(|e| e.to_string()).unwrap_or_default()
                ));
            }
        }
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "logs: {} claims, {} revokes, {} awards published",
            self.claims, self.revokes, self.awards_published
        );
        if self.reemit_flushes > 0 {
            let _ = write!(
                s,
                ", outbox re-emitted {} awards in {} flushes",
                self.reemitted_awards, self.reemit_flushes
            );
        }
        if self.fenced_reads + self.fenced_writes > 0 {
            let _ = write!(
                s,
                ", epoch fence dropped {} batches at read and {} at write",
                self.fenced_reads, self.fenced_writes
            );
        }
        if self.retries_redis + self.retries_kafka > 0 {
            let _ = write!(
                s,
                ", retries redis {} kafka {}",
                self.retries_redis, self.retries_kafka
            );
        }
        if self.client_errors > 0 {
            let _ = write!(s, ", {} librdkafka ERROR lines", self.client_errors);
        }
        if self.dead_lettered > 0 {
            let _ = write!(s, ", DEAD-LETTERED {}", self.dead_lettered);
        }
        if self.errors + self.panics > 0 {
            let _ = write!(
                s,
                ", {} ERROR lines, {} panics ({})",
                self.errors,
                self.panics,
                self.error_samples.join("; ")
            );
        }
        s
    }
}

// ------------------------------------------------------------------ the feeder

struct Wave {
    events: Vec<InputEvent>,
    spread: Duration,
}

#[derive(Default)]
struct FeedStats {
    acked: AtomicUsize,
    resent: AtomicUsize,
    failed_sends: AtomicUsize,
    recreated: AtomicUsize,
    waves_done: AtomicUsize,
    acked_ids: Mutex<HashSet<String>>,
}

struct Feeder {
    tx: Option<mpsc::Sender<Wave>>,
    stats: Arc<FeedStats>,
    thread: Option<JoinHandle<Result<()>>>,
    waves_sent: usize,
}

impl Feeder {
    fn start(kafka: KafkaSettings, topics: TopicSettings) -> Feeder {
        let (tx, rx) = mpsc::channel::<Wave>();
        let stats = Arc::new(FeedStats::default());
        let s = stats.clone();
        let thread = std::thread::spawn(move || feed(kafka, topics, rx, s));
        Feeder {
            tx: Some(tx),
            stats,
            thread: Some(thread),
            waves_sent: 0,
        }
    }

    fn submit(&mut self, wave: Wave) -> Result<()> {
        self.tx
            .as_ref()
            .ok_or_else(|| anyhow!("feeder closed"))?
            .send(wave)
            .map_err(|_| anyhow!("the feeder thread stopped"))?;
        self.waves_sent += 1;
        Ok(())
    }

    fn idle(&self) -> bool {
        self.stats.waves_done.load(Ordering::SeqCst) >= self.waves_sent
    }

    fn finish(&mut self, timeout: Duration) -> Result<()> {
        // An empty wave: whatever is still paced goes out at once.
        self.submit(Wave {
            events: Vec::new(),
            spread: Duration::ZERO,
        })?;
        let deadline = Instant::now() + timeout;
        while !self.idle() {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the feeder did not get every event acknowledged within {timeout:?}");
            }
            sleep(Duration::from_millis(200));
        }
        self.tx = None;
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow!("the feeder thread panicked"))??;
        }
        Ok(())
    }
}

/// Publishes each wave paced over its spread; every event is retried until the
/// broker acknowledged it (a retry may store it twice: allowed).
fn feed(
    kafka: KafkaSettings,
    topics: TopicSettings,
    rx: mpsc::Receiver<Wave>,
    stats: Arc<FeedStats>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let make = || Publisher::new(&kafka, &topics, Duration::from_secs(10));
    let mut publisher = make()?;
    let mut queue: std::collections::VecDeque<Wave> = std::collections::VecDeque::new();
    let mut seq = 0usize;
    loop {
        let wave = match queue.pop_front() {
            Some(w) => w,
            None => match rx.recv() {
                Ok(w) => w,
                Err(_) => break,
            },
        };
        let chunks: Vec<&[InputEvent]> = wave.events.chunks(CHUNK).collect();
        let n = chunks.len().max(1);
        let started = Instant::now();
        for (i, chunk) in chunks.into_iter().enumerate() {
            // Paced over the wave's spread, unless the next wave is already
            // waiting (its step started): then the rest goes out at once.
            while let Ok(next) = rx.try_recv() {
                queue.push_back(next);
            }
            let due = started + wave.spread.mul_f64(i as f64 / n as f64);
            if queue.is_empty() {
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    sleep(wait);
                }
            }
            let mut pending: Vec<InputEvent> = chunk.to_vec();
            // About 1% are sent twice, as an upstream retry after a lost ack
            // would: the copy lands at a later offset.
            for e in chunk {
                seq += 1;
                if seq % RESEND_EVERY == 0 {
                    pending.push(e.clone());
                    stats.resent.fetch_add(1, Ordering::SeqCst);
                }
            }
            let mut backoff = Duration::from_millis(200);
            let mut outage: Option<Instant> = None;
            loop {
                let results = rt.block_on(publisher.publish_all(&pending));
                let mut failed = Vec::new();
                let mut fatal = false;
                let mut last_error = String::new();
                for (event, result) in pending.into_iter().zip(results) {
                    match result {
                        Ok(_) => {
                            stats.acked.fetch_add(1, Ordering::SeqCst);
                            if let Ok(mut ids) = stats.acked_ids.lock() {
                                ids.insert(event.event_id().to_string());
                            }
                        }
                        Err(e) => {
                            last_error = e.to_string();
                            fatal |= last_error.contains("atal");
                            failed.push(event);
                        }
                    }
                }
                if failed.is_empty() {
                    if let Some(t) = outage {
                        say!(
                            "feeder: every send acknowledged again after {:.1}s of retries",
                            t.elapsed().as_secs_f64()
                        );
                    }
                    break;
                }
                stats.failed_sends.fetch_add(failed.len(), Ordering::SeqCst);
                if outage.is_none() {
                    say!(
                        "feeder: {} sends not acknowledged ({last_error}); retrying them until acked",
                        failed.len()
                    );
                    outage = Some(Instant::now());
                }
                sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                if fatal {
                    // A fatal idempotent-producer error leaves the producer unusable.
                    publisher = make()?;
                    stats.recreated.fetch_add(1, Ordering::SeqCst);
                }
                pending = failed;
            }
        }
        stats.waves_done.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

// ------------------------------------------------------------------ the world

struct FaultRow {
    t: f64,
    step: String,
    text: String,
}

struct World {
    dir: PathBuf,
    config_dir: PathBuf,
    processor_bin: PathBuf,
    env: Vec<(String, String)>,
    config: Config,
    keys: Keys,
    redis: RedisServer,
    broker: Broker,
    procs: Vec<Proc>,
    next_proc: usize,
    all_logs: Vec<PathBuf>,
    rows: Vec<FaultRow>,
    notes: Vec<String>,
    unexpected_exits: usize,
    kills: usize,
    zombies: usize,
    stalls: Vec<String>,
    rng: StdRng,
    admin: Option<BaseConsumer>,
    group_reader: Option<BaseConsumer>,
    step: String,
}

impl Drop for World {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl World {
    fn topics(&self) -> [(String, EventKind); 2] {
        let t = &self.config.settings.topics;
        [
            (t.data_logged.clone(), EventKind::DataLogged),
            (t.birth_reported.clone(), EventKind::BirthReported),
        ]
    }

    fn brokers(&self) -> String {
        self.config.settings.kafka.brokers.clone()
    }

    fn row(&mut self, text: String) {
        say!("  -> {text}");
        self.rows.push(FaultRow {
            t: since_start(),
            step: self.step.clone(),
            text,
        });
    }

    // -------------------------------------------------------------- processes

    fn start_proc(&mut self) -> Result<usize> {
        let n = self.next_proc;
        self.next_proc += 1;
        let port = free_port()?;
        let log = self.dir.join(format!("processor-{n}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(&self.processor_bin);
        cmd.arg("--config-dir").arg(&self.config_dir).arg("process");
        for (k, _) in std::env::vars() {
            if k.starts_with("INCENTIVES") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("INCENTIVES__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.processor_bin.display()))?;
        self.procs.push(Proc {
            n,
            child,
            port,
            log: log.clone(),
            stopped: false,
        });
        self.all_logs.push(log);
        // Up when it serves /healthz.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(p) = self.proc(n) {
                if matches!(
                    http_get(p.port, "/healthz", Duration::from_millis(300)),
                    Ok((200, _))
                ) {
                    break;
                }
            }
            self.reap();
            if self.proc(n).is_none() {
                bail!(
                    "processor #{n} exited during startup; see {}",
                    self.dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!("processor #{n} did not serve /healthz within 20s");
            }
            sleep(Duration::from_millis(50));
        }
        Ok(n)
    }

    fn proc(&self, n: usize) -> Option<&Proc> {
        self.procs.iter().find(|p| p.n == n)
    }

    fn running(&self) -> Vec<usize> {
        self.procs
            .iter()
            .filter(|p| !p.stopped)
            .map(|p| p.n)
            .collect()
    }

    /// Notices processors that exited without being told to.
    fn reap(&mut self) {
        let mut gone = Vec::new();
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                gone.push((p.n, status));
            }
        }
        for (n, status) in gone {
            self.procs.retain(|p| p.n != n);
            self.unexpected_exits += 1;
            let note = format!(
                "processor #{n} exited on its own ({status}) during '{}'; see processor-{n}.log",
                self.step
            );
            say!("  !! {note}");
            self.notes.push(note);
        }
    }

    fn kill9(&mut self, n: usize) -> Result<u32> {
        let i = self
            .procs
            .iter()
            .position(|p| p.n == n)
            .ok_or_else(|| anyhow!("no processor #{n}"))?;
        let mut p = self.procs.remove(i);
        let pid = p.pid();
        p.child.kill()?;
        let _ = p.child.wait();
        self.kills += 1;
        Ok(pid)
    }

    /// SIGTERM and wait: the graceful drain. Returns how long it took.
    fn terminate(&mut self, n: usize) -> Result<Duration> {
        let i = self
            .procs
            .iter()
            .position(|p| p.n == n)
            .ok_or_else(|| anyhow!("no processor #{n}"))?;
        let mut p = self.procs.remove(i);
        let t = Instant::now();
        if p.stopped {
            let _ = signal(p.pid(), "CONT");
        }
        signal(p.pid(), "TERM")?;
        let deadline = t + Duration::from_secs(30);
        loop {
            match p.child.try_wait()? {
                Some(status) => {
                    if !status.success() {
                        self.notes
                            .push(format!("processor #{n} exited with {status} after SIGTERM"));
                    }
                    return Ok(t.elapsed());
                }
                None if Instant::now() > deadline => {
                    let note = format!("processor #{n} did not exit within 30s of SIGTERM; killed");
                    say!("  !! {note}");
                    self.notes.push(note);
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    return Ok(t.elapsed());
                }
                None => sleep(Duration::from_millis(50)),
            }
        }
    }

    fn ensure_running(&mut self, at_least: usize) -> Result<()> {
        self.reap();
        while self.running().len() < at_least {
            let n = self.start_proc()?;
            say!("  started processor #{n}");
        }
        Ok(())
    }

    /// Waits until `pred` holds for the assignments of `procs`; returns the wait.
    fn wait_assigned(
        &mut self,
        procs: &[usize],
        timeout: Duration,
        pred: impl Fn(&[f64]) -> bool,
    ) -> Option<Instant> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            self.reap();
            let counts: Vec<f64> = procs
                .iter()
                .map(|n| self.proc(*n).and_then(|p| p.assigned()).unwrap_or(0.0))
                .collect();
            if pred(&counts) {
                return Some(Instant::now());
            }
            sleep(Duration::from_millis(100));
        }
        None
    }

    /// Partition epochs from Redis (0: never claimed).
    fn epochs(&self) -> Result<Offsets> {
        let mut c = redis_conn(&self.redis.url())?;
        let mut out = Offsets::new();
        for p in 0..PARTITIONS {
            let fields: Vec<String> = self
                .topics()
                .iter()
                .map(|(t, _)| Keys::epoch_field(t))
                .collect();
            let values: Vec<Option<i64>> = redis::cmd("HMGET")
                .arg(self.keys.meta(p))
                .arg(&fields)
                .query(&mut c)?;
            for ((t, _), v) in self.topics().iter().zip(values) {
                out.insert((t.clone(), p), v.unwrap_or(0));
            }
        }
        Ok(out)
    }

    /// Batches applied to Redis, summed over the running processors.
    fn applied_batches_total(&self) -> f64 {
        self.procs
            .iter()
            .filter(|p| !p.stopped)
            .filter_map(|p| p.applied_batches())
            .sum()
    }

    fn all_ready(&self) -> bool {
        self.procs.iter().filter(|p| !p.stopped).all(|p| p.ready())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Option<Instant> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            self.reap();
            if self.all_ready() {
                return Some(Instant::now());
            }
            sleep(Duration::from_millis(100));
        }
        None
    }

    // -------------------------------------------------------------- broker and Redis views

    fn admin(&mut self) -> Result<&BaseConsumer> {
        if self.admin.is_none() {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", self.brokers())
                .set("group.id", format!("faults-admin-{}", uuid::Uuid::now_v7()))
                .set("enable.auto.commit", "false")
                .create()?;
            self.admin = Some(c);
        }
        self.admin
            .as_ref()
            .ok_or_else(|| anyhow!("no admin client"))
    }

    fn highs(&mut self) -> Result<Offsets> {
        let topics = self.topics();
        let admin = self.admin()?;
        let mut out = Offsets::new();
        for (t, _) in &topics {
            for p in 0..PARTITIONS {
                let (_, high) = admin.fetch_watermarks(t, p, Duration::from_secs(2))?;
                out.insert((t.clone(), p), high);
            }
        }
        Ok(out)
    }

    /// Kafka offsets committed by the processors' group (next offset to read).
    fn committed(&mut self) -> Result<Offsets> {
        if self.group_reader.is_none() {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", self.brokers())
                .set("group.id", &self.config.settings.kafka.group_id)
                .set("enable.auto.commit", "false")
                .create()?;
            self.group_reader = Some(c);
        }
        let topics = self.topics();
        let mut tpl = TopicPartitionList::new();
        for (t, _) in &topics {
            for p in 0..PARTITIONS {
                tpl.add_partition(t, p);
            }
        }
        let reader = self
            .group_reader
            .as_ref()
            .ok_or_else(|| anyhow!("no group reader"))?;
        let got = reader.committed_offsets(tpl, Duration::from_secs(3))?;
        Ok(got
            .elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                };
                ((e.topic().to_string(), e.partition()), o)
            })
            .collect())
    }

    /// Applied offsets from Redis (-1: none).
    fn applied(&self) -> Result<Offsets> {
        let mut c = redis_conn(&self.redis.url())?;
        let mut out = Offsets::new();
        for p in 0..PARTITIONS {
            let fields: Vec<String> = self
                .topics()
                .iter()
                .map(|(t, _)| Keys::offset_field(t))
                .collect();
            let values: Vec<Option<i64>> = redis::cmd("HMGET")
                .arg(self.keys.meta(p))
                .arg(&fields)
                .query(&mut c)?;
            for ((t, _), v) in self.topics().iter().zip(values) {
                out.insert((t.clone(), p), v.unwrap_or(-1));
            }
        }
        Ok(out)
    }

    fn outbox_total(&self) -> Result<usize> {
        let mut c = redis_conn(&self.redis.url())?;
        let mut total = 0;
        for p in 0..PARTITIONS {
            let n: usize = redis::cmd("HLEN").arg(self.keys.outbox(p)).query(&mut c)?;
            total += n;
        }
        Ok(total)
    }

    /// Time until every data-logged partition moved past `before` or caught up.
    fn wait_progress(&mut self, before: &Offsets, timeout: Duration) -> Option<Instant> {
        let t = Instant::now();
        let dl = self.config.settings.topics.data_logged.clone();
        while t.elapsed() < timeout {
            self.reap();
            if let (Ok(now), Ok(highs)) = (self.applied(), self.highs()) {
                let all = (0..PARTITIONS).all(|p| {
                    let k = (dl.clone(), p);
                    let a = now.get(&k).copied().unwrap_or(-1);
                    let b = before.get(&k).copied().unwrap_or(-1);
                    let h = highs.get(&k).copied().unwrap_or(0);
                    a > b || a >= h - 1
                });
                if all {
                    return Some(Instant::now());
                }
            }
            sleep(Duration::from_millis(200));
        }
        None
    }

    fn log_marks(&self) -> Vec<(PathBuf, u64)> {
        self.all_logs
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect()
    }

    fn log_stats_since(&self, marks: &[(PathBuf, u64)], only: Option<&Path>) -> LogStats {
        self.log_stats_between(marks, only, None)
    }

    /// Log statistics from the marks up to byte `until` (of the one log `only`).
    fn log_stats_between(
        &self,
        marks: &[(PathBuf, u64)],
        only: Option<&Path>,
        until: Option<u64>,
    ) -> LogStats {
        let mut stats = LogStats::default();
        for path in &self.all_logs {
            if only.is_some_and(|o| o != path) {
                continue;
            }
            let from = marks
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, m)| *m)
                .unwrap_or(0);
            let Ok(mut f) = std::fs::File::open(path) else {
                continue;
            };
            if f.seek(SeekFrom::Start(from)).is_err() {
                continue;
            }
            let mut pos = from;
            for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
                if until.is_some_and(|u| pos >= u) {
                    break;
                }
                pos += line.len() as u64 + 1;
                stats.add_line(&line);
            }
        }
        stats
    }

    // -------------------------------------------------------------- faults

    fn scale(&mut self) -> Result<()> {
        self.ensure_running(1)?;
        while self.running().len() > 1 {
            let n = self.running()[0];
            let took = self.terminate(n)?;
            say!(
                "  stopped processor #{n} (SIGTERM, {:.1}s)",
                took.as_secs_f64()
            );
        }
        let first = self.running()[0];
        sleep(secs(self.rng.random_range(1.0..3.0)));
        let t = Instant::now();
        let a = self.start_proc()?;
        let b = self.start_proc()?;
        let all = [first, a, b];
        let out = self.wait_assigned(&all, Duration::from_secs(60), |c| {
            c.iter().all(|&x| x > 0.0)
        });
        let got: Vec<String> = all
            .iter()
            .map(|n| {
                format!(
                    "#{n}:{}",
                    self.proc(*n).and_then(|p| p.assigned()).unwrap_or(0.0)
                )
            })
            .collect();
        self.row(format!(
            "scale out 1->3 (started #{a}, #{b}): {} ({})",
            match out {
                Some(at) => format!(
                    "all three hold partitions {:.1}s after the start",
                    at.duration_since(t).as_secs_f64()
                ),
                None => "NOT all three got partitions within 60s".into(),
            },
            got.join(" ")
        ));
        sleep(secs(self.rng.random_range(3.0..6.0)));
        let before = self.applied().unwrap_or_default();
        let mut stopping = all.to_vec();
        stopping.shuffle(&mut self.rng);
        let keep = stopping[0];
        let mut drains = Vec::new();
        for n in &stopping[1..] {
            drains.push(format!("#{n} {:.1}s", self.terminate(*n)?.as_secs_f64()));
        }
        let t = Instant::now();
        let all12 = self.wait_assigned(&[keep], Duration::from_secs(60), |c| c[0] >= 12.0);
        let all12 = took(all12, t);
        let progress = self.wait_progress(&before, Duration::from_secs(45));
        self.row(format!(
            "scale in 3->1 (SIGTERM, drain took {}): #{keep} {}; all partitions progressing {}",
            drains.join(", "),
            match all12 {
                Some(d) => format!("holds all 12 input partitions after {d:.1}s"),
                None => "did NOT get all 12 partitions within 60s".into(),
            },
            fmt_wait(progress, t),
        ));
        self.heal_if_stalled(progress)
    }

    fn kills(&mut self, n: usize) -> Result<()> {
        #[derive(Clone, Copy, Debug)]
        enum Kind {
            Random,
            AfterApply,
            AfterAssign,
        }
        let after_apply = n.div_ceil(3);
        let after_assign = (n / 5).max(1).min(n.saturating_sub(after_apply));
        let mut kinds: Vec<Kind> = std::iter::repeat_n(Kind::AfterApply, after_apply)
            .chain(std::iter::repeat_n(Kind::AfterAssign, after_assign))
            .collect();
        while kinds.len() < n {
            kinds.push(Kind::Random);
        }
        kinds.shuffle(&mut self.rng);
        let mut last_before = Offsets::new();
        let mut last_kill = Instant::now();
        for (i, kind) in kinds.into_iter().enumerate() {
            let population = if self.rng.random_bool(0.5) { 3 } else { 2 };
            self.ensure_running(population)?;
            sleep(secs(self.rng.random_range(0.5..2.5)));
            self.reap();
            let running = self.running();
            if running.is_empty() {
                continue;
            }
            match kind {
                Kind::Random => {
                    sleep(secs(self.rng.random_range(0.0..3.0)));
                    self.reap();
                    let running = self.running();
                    let Some(&victim) = running.get(self.rng.random_range(0..running.len().max(1)))
                    else {
                        continue;
                    };
                    last_before = self.applied().unwrap_or_default();
                    let pid = self.kill9(victim)?;
                    last_kill = Instant::now();
                    let replacement = self.start_proc()?;
                    self.row(format!(
                        "kill {}: -9 #{victim} (pid {pid}) at a random moment; started #{replacement}",
                        i + 1
                    ));
                }
                Kind::AfterApply => {
                    // A victim that holds partitions and applies batches.
                    let t = Instant::now();
                    let mut done = false;
                    while t.elapsed() < Duration::from_secs(25) && !done {
                        self.reap();
                        let candidates: Vec<usize> = self
                            .running()
                            .into_iter()
                            .filter(|n| {
                                self.proc(*n).and_then(|p| p.assigned()).unwrap_or(0.0) > 0.0
                            })
                            .collect();
                        if candidates.is_empty() {
                            sleep(Duration::from_millis(200));
                            continue;
                        }
                        let victim = candidates[self.rng.random_range(0..candidates.len())];
                        let Some(base) = self.proc(victim).and_then(|p| p.applied_batches()) else {
                            sleep(Duration::from_millis(100));
                            continue;
                        };
                        let watch = Instant::now();
                        while watch.elapsed() < Duration::from_secs(8) {
                            let now = self.proc(victim).and_then(|p| p.applied_batches());
                            if now.is_some_and(|c| c > base) {
                                let seen = Instant::now();
                                let held = self
                                    .proc(victim)
                                    .map(|p| p.held_partitions())
                                    .unwrap_or_default();
                                last_before = self.applied().unwrap_or_default();
                                let pid = self.kill9(victim)?;
                                let lag_ms = seen.elapsed().as_secs_f64() * 1000.0;
                                last_kill = Instant::now();
                                let applied = self.applied().unwrap_or_default();
                                let committed = self.committed().unwrap_or_default();
                                let ahead: Vec<i64> = held
                                    .iter()
                                    .filter_map(|tp| {
                                        let a = applied.get(tp).copied()?;
                                        let c = committed.get(tp).copied().unwrap_or(0);
                                        (a + 1 > c).then_some(a + 1 - c)
                                    })
                                    .collect();
                                let replacement = self.start_proc()?;
                                self.row(format!(
                                    "kill {}: -9 #{victim} (pid {pid}) {lag_ms:.0}ms after its apply_batch #{}: Redis ahead of the committed Kafka offset on {} of its {} partitions (by {} records); started #{replacement}",
                                    i + 1,
                                    now.unwrap_or_default(),
                                    ahead.len(),
                                    held.len(),
                                    ahead.iter().sum::<i64>(),
                                ));
                                done = true;
                                break;
                            }
                            if self.proc(victim).is_none() {
                                break;
                            }
                            sleep(Duration::from_millis(2));
                        }
                    }
                    if !done {
                        self.reap();
                        let running = self.running();
                        if let Some(&victim) = running.first() {
                            last_before = self.applied().unwrap_or_default();
                            let pid = self.kill9(victim)?;
                            last_kill = Instant::now();
                            let replacement = self.start_proc()?;
                            self.row(format!(
                                "kill {}: no applied batch seen within 25s; -9 #{victim} (pid {pid}) anyway; started #{replacement}",
                                i + 1
                            ));
                        }
                    }
                }
                Kind::AfterAssign => {
                    let fresh = self.start_proc()?;
                    let t = Instant::now();
                    let got = self.wait_assigned(&[fresh], Duration::from_secs(40), |c| c[0] > 0.0);
                    let held = self
                        .proc(fresh)
                        .map(|p| p.held_partitions())
                        .unwrap_or_default();
                    last_before = self.applied().unwrap_or_default();
                    let pid = self.kill9(fresh)?;
                    last_kill = Instant::now();
                    self.row(format!(
                        "kill {}: started #{fresh}, -9 (pid {pid}) {} (it had claimed {} partitions: claim/outbox-flush window)",
                        i + 1,
                        match got {
                            Some(_) => format!("as soon as it got partitions, {:.1}s after its start", t.elapsed().as_secs_f64()),
                            None => "after 40s without partitions".into(),
                        },
                        held.len()
                    ));
                }
            }
        }
        self.ensure_running(2)?;
        let progress = self.wait_progress(&last_before, Duration::from_secs(60));
        self.row(format!(
            "after the last kill every data-logged partition progressed {}",
            fmt_wait(progress, last_kill)
        ));
        self.heal_if_stalled(progress)
    }

    fn redis_fault(&mut self, always: bool, loss: Loss) -> Result<()> {
        let mode = if always { "always" } else { "everysec" };
        self.ensure_running(2)?;
        if self.redis.fsync != mode {
            self.redis.set_fsync(mode)?;
            self.row(format!("CONFIG SET appendfsync {mode} (live)"));
        }
        sleep(secs(self.rng.random_range(1.5..3.5)));
        let mut cut = None;
        let mut rebalance_note = String::new();
        match loss {
            Loss::None => {}
            Loss::LastSecond => {
                let aof = self.redis.incr_aof()?;
                let size0 = std::fs::metadata(&aof)?.len();
                sleep(Duration::from_secs(1));
                cut = Some((aof, size0));
            }
            Loss::ClaimsOfARebalance => {
                // Start a processor (a rebalance: every member claims its
                // partitions, bumping their epochs) and crash within a second
                // of the claims, losing them.
                let aof = self.redis.incr_aof()?;
                let mut sizes: Vec<(Instant, u64)> = Vec::new();
                let fresh = self.start_proc()?;
                let log = self.proc(fresh).map(|p| p.log.clone()).unwrap_or_default();
                let t = Instant::now();
                let mut claimed = None;
                while t.elapsed() < Duration::from_secs(40) {
                    sizes.push((Instant::now(), std::fs::metadata(&aof)?.len()));
                    if wait_log_message(&log, 0, "partition claimed", Duration::ZERO).is_some() {
                        claimed = Some(Instant::now());
                        break;
                    }
                    sleep(Duration::from_millis(20));
                }
                let seen = claimed.unwrap_or_else(Instant::now);
                let size0 = sizes
                    .iter()
                    .find(|(at, _)| {
                        seen.saturating_duration_since(*at) <= Duration::from_millis(900)
                    })
                    .map(|(_, s)| *s)
                    .unwrap_or(0);
                rebalance_note = format!(
                    "started #{fresh}; {} after its start it claimed partitions; ",
                    match claimed {
                        Some(c) => format!("{:.1}s", c.duration_since(t).as_secs_f64()),
                        None => "NOT within 40s".into(),
                    }
                );
                cut = Some((aof, size0));
            }
        }
        let before = self.applied()?;
        let epochs_before = self.epochs().unwrap_or_default();
        let outbox_before = self.outbox_total().unwrap_or(0);
        let marks = self.log_marks();
        self.redis.kill9();
        let mut dropped = 0;
        if let Some((aof, size0)) = &cut {
            let size1 = std::fs::metadata(aof)?.len();
            let f = std::fs::OpenOptions::new().write(true).open(aof)?;
            f.set_len(*size0)?;
            f.sync_all()?;
            dropped = size1.saturating_sub(*size0);
        }
        let down = self.rng.random_range(2.0..4.0);
        sleep(secs(down));
        let unready = self
            .procs
            .iter()
            .filter(|p| !p.stopped && !p.ready())
            .count();
        self.redis.spawn()?;
        let t_up = Instant::now();
        let after = self.applied()?;
        let epochs_after = self.epochs().unwrap_or_default();
        let outbox_after = self.outbox_total().unwrap_or(0);
        let regressed: Vec<(Tp, i64)> = before
            .iter()
            .filter_map(|(tp, b)| {
                let a = after.get(tp).copied().unwrap_or(-1);
                (a < *b).then(|| (tp.clone(), b - a))
            })
            .collect();
        let epochs_back = epochs_before
            .iter()
            .filter(|(tp, e)| epochs_after.get(*tp).copied().unwrap_or(0) < **e)
            .count();
        let ready = self.wait_ready(Duration::from_secs(60));
        let progress = self.wait_progress(&after, Duration::from_secs(30));
        let stats = self.log_stats_since(&marks, None);
        let what = match loss {
            Loss::None => format!("kill -9 redis under appendfsync {mode}"),
            Loss::LastSecond => format!(
                "simulated host crash under everysec: kill -9 and the AOF cut back to its size 1.0s earlier ({dropped} bytes of acknowledged writes lost)"
            ),
            Loss::ClaimsOfARebalance => format!(
                "simulated host crash under everysec right after a rebalance: {rebalance_note}kill -9 and the AOF cut back to its size 0.9s before the claims ({dropped} bytes lost)"
            ),
        };
        self.row(format!(
            "{what}; down {down:.1}s ({unready} processors unready); after the restart the applied offsets of {} partitions were behind (by {} records in all) and {epochs_back} partition epochs went back; outboxes {outbox_before} -> {outbox_after} awards; processors ready {}; every data-logged partition progressed {}; batches dropped as 'claimed by another consumer': {}",
            regressed.len(),
            regressed.iter().map(|(_, d)| d).sum::<i64>(),
            fmt_wait(ready, t_up),
            fmt_wait(progress, t_up),
            stats.fenced_reads + stats.fenced_writes,
        ));
        self.heal_if_stalled(progress)
    }

    /// After a fault, partitions that stopped progressing are a failure (a
    /// stuck partition); a rebalance heals them so later steps start from a
    /// working group.
    fn heal_if_stalled(&mut self, progress: Option<Instant>) -> Result<()> {
        if progress.is_some() {
            return Ok(());
        }
        let stuck: Vec<String> = match (self.applied(), self.highs()) {
            (Ok(a), Ok(h)) => h
                .iter()
                .filter(|(tp, high)| a.get(*tp).copied().unwrap_or(-1) + 1 < **high)
                .map(|((t, p), high)| {
                    format!(
                        "{}[{p}] {}/{high}",
                        t.rsplit('.').next().unwrap_or(t),
                        a.get(&(t.clone(), *p)).copied().unwrap_or(-1) + 1
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        self.stalls
            .push(format!("{}: {}", self.step, stuck.join(" ")));
        let t = Instant::now();
        let at = self.applied().unwrap_or_default();
        let n = self.start_proc()?;
        let healed = self.wait_progress(&at, Duration::from_secs(60));
        self.row(format!(
            "STALLED: partitions not progressing ({}); a rebalance (started #{n}) got them going again {}",
            stuck.join(" "),
            fmt_wait(healed, t)
        ));
        Ok(())
    }

    fn broker_fault(&mut self) -> Result<()> {
        self.ensure_running(2)?;
        sleep(secs(self.rng.random_range(1.5..3.5)));
        let marks = self.log_marks();
        let batches_at_kill = self.applied_batches_total();
        self.broker.kill9();
        self.admin = None;
        self.group_reader = None;
        let t = Instant::now();
        let mut unready_after = None;
        let (mut samples, mut ready_samples) = (0usize, 0usize);
        let down = self.rng.random_range(5.0..9.0);
        while t.elapsed() < secs(down) {
            let ready: Vec<bool> = self
                .procs
                .iter()
                .filter(|p| !p.stopped)
                .map(|p| p.ready())
                .collect();
            samples += ready.len();
            ready_samples += ready.iter().filter(|r| **r).count();
            if unready_after.is_none() && ready.iter().all(|r| !r) {
                unready_after = Some(t.elapsed());
            }
            sleep(Duration::from_millis(100));
        }
        let outage_stats = self.log_stats_since(&marks, None);
        let batches_in_outage = self.applied_batches_total() - batches_at_kill;
        let at_restart = self.applied()?;
        self.broker.spawn()?;
        let t_up = Instant::now();
        let ready = self.wait_ready(Duration::from_secs(90));
        let progress = self.wait_progress(&at_restart, Duration::from_secs(60));
        self.row(format!(
            "kill -9 nisshi, down {down:.1}s, restarted on the same SQLite db: every processor unready {}; readiness samples during the outage: {ready_samples} of {samples} said ready; {} awards published and {} batches applied from already-fetched records while it was down; after the restart all ready {}, every data-logged partition progressed {}",
            match unready_after {
                Some(d) => format!("{:.1}s after the kill", d.as_secs_f64()),
                None => "NOT at once during the outage".into(),
            },
            outage_stats.awards_published,
            batches_in_outage,
            fmt_wait(ready, t_up),
            fmt_wait(progress, t_up),
        ));
        self.heal_if_stalled(progress)
    }

    fn zombie(&mut self) -> Result<()> {
        self.ensure_running(2)?;
        while self.running().len() > 2 {
            let n = self.running()[0];
            self.terminate(n)?;
        }
        let pair = self.running();
        self.wait_assigned(&pair, Duration::from_secs(60), |c| {
            c.iter().all(|&x| x > 0.0)
        });
        let victim = pair[self.rng.random_range(0..pair.len())];
        let other = pair
            .iter()
            .copied()
            .find(|&n| n != victim)
            .unwrap_or(victim);
        // Stop it mid-flight: alternately right after it read a batch's state
        // (it would write with a stale epoch) and right after it applied one
        // (its awards may not be published yet).
        self.zombies += 1;
        let (metric, moment) = if self.zombies % 2 == 1 {
            (
                "incentives_redis_latency_seconds_count{op=\"apply_batch\"}",
                "right after it applied a batch",
            )
        } else {
            (
                "incentives_redis_latency_seconds_count{op=\"read\"}",
                "right after it read a batch's state",
            )
        };
        let mut when = "at a random moment (no batch seen within 15s)".to_string();
        if let Some(base) = self.proc(victim).and_then(|p| p.counter(metric)) {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(15) {
                if self
                    .proc(victim)
                    .and_then(|p| p.counter(metric))
                    .is_some_and(|c| c > base)
                {
                    when = moment.into();
                    break;
                }
                sleep(Duration::from_millis(1));
            }
        }
        let marks = self.log_marks();
        let held = self
            .proc(victim)
            .map(|p| p.held_partitions())
            .unwrap_or_default();
        let pid = self
            .proc(victim)
            .map(|p| p.pid())
            .ok_or_else(|| anyhow!("victim gone"))?;
        signal(pid, "STOP")?;
        let t = Instant::now();
        if let Some(p) = self.procs.iter_mut().find(|p| p.n == victim) {
            p.stopped = true;
        }
        let hold = SESSION_TIMEOUT + secs(self.rng.random_range(6.0..10.0));
        let takeover = took(self.wait_assigned(&[other], hold, |c| c[0] >= 12.0), t);
        if let Some(rest) = hold.checked_sub(t.elapsed()) {
            sleep(rest);
        }
        let applied_while_stopped = self.applied().unwrap_or_default();
        let log = self.proc(victim).map(|p| p.log.clone()).unwrap_or_default();
        let log_at_cont = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        signal(pid, "CONT")?;
        let t_cont = Instant::now();
        if let Some(p) = self.procs.iter_mut().find(|p| p.n == victim) {
            p.stopped = false;
        }
        // Rejoined: it claims partitions again (its gauge is stale until it
        // learns it was expelled).
        let rejoin = wait_log_message(
            &log,
            log_at_cont,
            "partition claimed",
            Duration::from_secs(45),
        );
        let rejoined = took(rejoin.map(|(at, _)| at), t_cont);
        sleep(Duration::from_secs(3));
        // What the zombie did between waking up and rejoining.
        let zombie_stats = self.log_stats_between(&marks, Some(&log), rejoin.map(|(_, pos)| pos));
        let progress = self.wait_progress(&applied_while_stopped, Duration::from_secs(45));
        self.row(format!(
            "SIGSTOP #{victim} (pid {pid}, held {} partitions) {when}, for {:.1}s (session timeout {}s): #{other} {}; SIGCONT: the zombie's own log shows {} batches dropped by the epoch check at read, {} at write, {} awards re-published; it {}; every data-logged partition progressed {}",
            held.len(),
            hold.as_secs_f64(),
            SESSION_TIMEOUT.as_secs(),
            match takeover {
                Some(d) => format!("held all 12 partitions {d:.1}s after the stop"),
                None => "did NOT take over all 12 partitions while it was stopped".into(),
            },
            zombie_stats.fenced_reads,
            zombie_stats.fenced_writes,
            zombie_stats.awards_published,
            match rejoined {
                Some(d) => format!("rejoined and got partitions {d:.1}s after SIGCONT"),
                None => "did not get partitions again within 45s".into(),
            },
            fmt_wait(progress, t_cont),
        ));
        self.heal_if_stalled(progress)
    }
}

/// Waits for a log line with this message after byte `from` of a processor
/// log (checks at least once); returns when, and where the line starts.
fn wait_log_message(
    path: &Path,
    from: u64,
    message: &str,
    timeout: Duration,
) -> Option<(Instant, u64)> {
    let t = Instant::now();
    loop {
        if let Ok(mut f) = std::fs::File::open(path) {
            if f.seek(SeekFrom::Start(from)).is_ok() {
                let mut pos = from;
                let mut reader = BufReader::new(f);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let hit = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| {
                            v.get("message")
                                .and_then(|m| m.as_str())
                                .map(|m| m == message)
                        })
                        .unwrap_or(false);
                    if hit {
                        return Some((Instant::now(), pos));
                    }
                    pos += line.len() as u64;
                    line.clear();
                }
            }
        }
        if t.elapsed() >= timeout {
            return None;
        }
        sleep(Duration::from_millis(100));
    }
}

/// "after 3.2s" (from `since` to the moment a wait succeeded), or a failure.
fn fmt_wait(at: Option<Instant>, since: Instant) -> String {
    match at {
        Some(at) => format!(
            "after {:.1}s",
            at.saturating_duration_since(since).as_secs_f64()
        ),
        None => "NOT within the timeout".into(),
    }
}

fn took(at: Option<Instant>, since: Instant) -> Option<f64> {
    at.map(|at| at.saturating_duration_since(since).as_secs_f64())
}

// ------------------------------------------------------------------ reading topics

struct Raw {
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

fn read_topic(brokers: &str, topic: &str) -> Result<Vec<Raw>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("faults-reader-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}"))?;
        if high > low {
            remaining.insert(p, high);
        }
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!("could not read {topic} to its end within 300s");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if remaining
                    .get(&m.partition())
                    .is_some_and(|high| m.offset() + 1 >= *high)
                {
                    remaining.remove(&m.partition());
                }
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_string(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Raw {
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => say!("reader of {topic}: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

// ------------------------------------------------------------------ the oracle

struct Oracle {
    awards: BTreeMap<String, AwardGranted>,
    /// (topic, partition, offset) -> reason code.
    dead: BTreeMap<(String, i32, i64), &'static str>,
    /// Redis key -> the user's state hash, as the processor must have written it.
    states: BTreeMap<String, BTreeMap<String, String>>,
    /// Per (topic, partition): the last record with an effect, and the last record.
    ends: BTreeMap<Tp, (i64, i64)>,
    event_ids: HashSet<String>,
    records: usize,
    double_decisions: usize,
}

/// Replays the input topics as read back, partition by partition in offset
/// order, through the same pure steps the processor takes.
fn oracle(
    config: &Config,
    codec: &SchemaRegistry,
    keys: &Keys,
    inputs: &[(String, EventKind, Vec<Raw>)],
) -> Oracle {
    let limits = Limits::from_settings(&config.settings.processor, &config.settings.state);
    let now = chrono::Utc::now();
    let mut o = Oracle {
        awards: BTreeMap::new(),
        dead: BTreeMap::new(),
        states: BTreeMap::new(),
        ends: BTreeMap::new(),
        event_ids: HashSet::new(),
        records: 0,
        double_decisions: 0,
    };
    let mut states: BTreeMap<String, UserState> = BTreeMap::new();
    for (topic, kind, records) in inputs {
        for r in records {
            o.records += 1;
            let end = o
                .ends
                .entry((topic.clone(), r.partition))
                .or_insert((-1, -1));
            end.1 = end.1.max(r.offset);
            let mut dead = |reason: DeadLetterReason, end: &mut (i64, i64)| {
                o.dead
                    .insert((topic.clone(), r.partition, r.offset), reason.code());
                end.0 = end.0.max(r.offset);
            };
            if r.payload.len() > config.settings.processor.max_record_bytes {
                dead(DeadLetterReason::Oversize, end);
                continue;
            }
            let event = match codec.decode_event(&r.payload) {
                Ok(e) => e,
                Err(e) => {
                    dead(e.reason(), end);
                    continue;
                }
            };
            o.event_ids.insert(event.event_id().to_string());
            if event.kind() != *kind {
                dead(DeadLetterReason::InvalidField, end);
                continue;
            }
            if partition_for_key(event.user_id().as_bytes(), PARTITIONS) != r.partition {
                dead(DeadLetterReason::Misrouted, end);
                continue;
            }
            if let Err(rej) = check_not_in_future(&event, now, &limits) {
                dead(rej.reason, end);
                continue;
            }
            let rules = matching_rules(&config.programs, &event);
            if rules.is_empty() {
                continue; // no program: skipped without touching Redis
            }
            end.0 = end.0.max(r.offset);
            let key = keys.user_label(r.partition, *kind, event.user_id());
            let state = states.entry(key).or_default();
            let source = Source {
                topic,
                partition: r.partition,
                offset: r.offset,
            };
            match apply_event(state, &event, &rules, source, &limits) {
                Ok(awards) => {
                    if let Some(employer) = state.employer.clone() {
                        prune_ended_programs(
                            state,
                            *kind,
                            config.programs.for_employer(&employer, *kind),
                            &limits,
                        );
                    }
                    for a in awards {
                        if o.awards.insert(a.award_id.clone(), a).is_some() {
                            o.double_decisions += 1;
                        }
                    }
                }
                Err(rej) => {
                    o.dead
                        .insert((topic.clone(), r.partition, r.offset), rej.reason.code());
                }
            }
        }
    }
    for (key, state) in states {
        let fields: BTreeMap<String, String> = state.to_fields().into_iter().collect();
        if !fields.is_empty() {
            o.states.insert(key, fields);
        }
    }
    o
}

// ------------------------------------------------------------------ the checker

#[derive(Default)]
struct Report {
    lines: Vec<(String, String, bool)>,
    failed: bool,
}

impl Report {
    fn line(&mut self, name: &str, value: String, fail: bool) {
        self.failed |= fail;
        self.lines.push((name.to_string(), value, fail));
    }

    fn print(&self) {
        println!();
        println!("  {:<34} RESULT", "CHECK");
        for (name, value, fail) in &self.lines {
            println!(
                "  {:<34} {}{}",
                name,
                value,
                if *fail { "   <-- FAIL" } else { "" }
            );
        }
    }
}

fn check(world: &mut World, feeder: &Feeder, stuck: &[String]) -> Result<Report> {
    let codec = SchemaRegistry::bundled().map_err(|e| anyhow!("bundled schemas: {e}"))?;
    let brokers = world.brokers();
    let t = &world.config.settings.topics;
    let (dl, br, awards_topic, dead_topic) = (
        t.data_logged.clone(),
        t.birth_reported.clone(),
        t.awards.clone(),
        t.dead_letter.clone(),
    );
    say!("checker: reading the input topics back");
    let inputs = vec![
        (
            dl.clone(),
            EventKind::DataLogged,
            read_topic(&brokers, &dl)?,
        ),
        (
            br.clone(),
            EventKind::BirthReported,
            read_topic(&brokers, &br)?,
        ),
    ];
    say!("checker: replaying them through the pure engine (the oracle)");
    let o = oracle(&world.config, &codec, &world.keys, &inputs);
    say!("checker: reading the awards and dead-letter topics");
    let award_records = read_topic(&brokers, &awards_topic)?;
    let dead_records = read_topic(&brokers, &dead_topic)?;

    let mut r = Report::default();
    let acked_ids = feeder
        .stats
        .acked_ids
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let lost: usize = acked_ids
        .iter()
        .filter(|id| !o.event_ids.contains(*id))
        .count();
    r.line(
        "events acknowledged",
        format!(
            "{} distinct ({} sends failed and were retried, publisher re-created {} times)",
            acked_ids.len(),
            feeder.stats.failed_sends.load(Ordering::SeqCst),
            feeder.stats.recreated.load(Ordering::SeqCst)
        ),
        false,
    );
    r.line(
        "input records on the topics",
        format!(
            "{} ({} more than distinct events: {} sent twice on purpose, the rest re-sent after an unacknowledged send)",
            o.records,
            o.records.saturating_sub(o.event_ids.len()),
            feeder.stats.resent.load(Ordering::SeqCst)
        ),
        false,
    );
    r.line(
        "acknowledged events lost by broker",
        lost.to_string(),
        lost > 0,
    );

    // Awards.
    let mut found: BTreeMap<String, Vec<&Raw>> = BTreeMap::new();
    let mut undecodable = 0;
    let mut decoded: HashMap<String, AwardGranted> = HashMap::new();
    for rec in &award_records {
        match codec.decode_award(&rec.payload) {
            Ok(a) => {
                found.entry(a.award_id.clone()).or_default().push(rec);
                decoded.entry(a.award_id.clone()).or_insert(a);
            }
            Err(_) => undecodable += 1,
        }
    }
    let expected: BTreeSet<&String> = o.awards.keys().collect();
    let found_ids: BTreeSet<&String> = found.keys().collect();
    let missing: Vec<&&String> = expected.difference(&found_ids).collect();
    let unexpected: Vec<&&String> = found_ids.difference(&expected).collect();
    let mut reemitted = 0;
    let mut reemitted_copies = 0;
    let mut double = Vec::new();
    for (id, recs) in &found {
        if recs.len() > 1 {
            if recs.iter().all(|x| x.payload == recs[0].payload) {
                reemitted += 1;
                reemitted_copies += recs.len() - 1;
            } else {
                double.push(id.clone());
            }
        }
    }
    let differ: Vec<&String> = o
        .awards
        .iter()
        .filter(|(id, a)| decoded.get(*id).is_some_and(|d| d != *a))
        .map(|(id, _)| id)
        .collect();
    let mut by_incentive: BTreeMap<String, usize> = BTreeMap::new();
    for a in o.awards.values() {
        *by_incentive
            .entry(format!("{}/{}", a.program_id, a.incentive_id))
            .or_default() += 1;
    }
    r.line(
        "awards expected (oracle)",
        format!(
            "{} ({})",
            o.awards.len(),
            by_incentive
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        o.awards.is_empty() || o.double_decisions > 0,
    );
    r.line(
        "awards found (distinct ids)",
        format!("{} in {} records", found.len(), award_records.len()),
        undecodable > 0,
    );
    r.line(
        "missing",
        format!("{}{}", missing.len(), sample(&missing)),
        !missing.is_empty(),
    );
    r.line(
        "unexpected",
        format!("{}{}", unexpected.len(), sample(&unexpected)),
        !unexpected.is_empty(),
    );
    r.line(
        "ids seen more than once",
        format!(
            "{} ({} identical re-emissions with {} extra copies, {} with different content)",
            reemitted + double.len(),
            reemitted,
            reemitted_copies,
            double.len()
        ),
        false,
    );
    r.line(
        "double decisions (different content)",
        format!("{}{}", double.len(), sample(&double)),
        !double.is_empty(),
    );
    r.line(
        "awards differing from the oracle's",
        format!("{}{}", differ.len(), sample(&differ)),
        !differ.is_empty(),
    );
    if undecodable > 0 {
        r.line("undecodable award records", undecodable.to_string(), true);
    }

    // Dead letters.
    let mut dead_found: BTreeMap<(String, i32, i64), String> = BTreeMap::new();
    for rec in &dead_records {
        let h = &rec.headers;
        let key = (
            h.get(dl_headers::SOURCE_TOPIC).cloned().unwrap_or_default(),
            h.get(dl_headers::SOURCE_PARTITION)
                .and_then(|p| p.parse().ok())
                .unwrap_or(-1),
            h.get(dl_headers::SOURCE_OFFSET)
                .and_then(|p| p.parse().ok())
                .unwrap_or(-1),
        );
        dead_found.insert(
            key,
            h.get(dl_headers::ERROR_CODE).cloned().unwrap_or_default(),
        );
    }
    let dead_unexpected: Vec<String> = dead_found
        .iter()
        .filter(|(k, _)| !o.dead.contains_key(*k))
        .map(|((t, p, off), code)| format!("{t}[{p}]@{off} {code}"))
        .collect();
    let dead_missing = o
        .dead
        .keys()
        .filter(|k| !dead_found.contains_key(*k))
        .count();
    r.line(
        "dead letters",
        format!(
            "{} records ({} expected by the oracle, {} unexpected{}, {} expected but absent)",
            dead_records.len(),
            o.dead.len(),
            dead_unexpected.len(),
            sample(&dead_unexpected),
            dead_missing
        ),
        !dead_unexpected.is_empty() || dead_missing > 0,
    );

    // Redis.
    let mut conn = redis_conn(&world.redis.url())?;
    let prefix = world.config.settings.redis.key_prefix.clone();
    let codes = &world.config.programs.codes;
    let mut keys_found: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(2000)
            .query(&mut conn)?;
        keys_found.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    // Every state hash of the run, whole: user label -> the state's fields.
    let now_s = chrono::Utc::now().timestamp();
    let mut redis_states: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for key in &keys_found {
        let Some((partition, kind)) = world.keys.parse_states(key) else {
            continue; // meta, outbox
        };
        let stored: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(&mut conn)?;
        for (user, value) in stored {
            let label = world.keys.user_label(partition, kind, &user);
            let fields = match live_state(&value, now_s) {
                Stored::Live(body) => UserState::decode(body, codes)
                    .0
                    .to_fields()
                    .into_iter()
                    .collect(),
                // Shown as a difference, never silently equal.
                Stored::Expired | Stored::Malformed => {
                    BTreeMap::from([("unreadable".to_string(), value.clone())])
                }
            };
            redis_states.insert(label, fields);
        }
    }
    let mut equal = 0;
    let mut differing = Vec::new();
    let mut absent = Vec::new();
    for (k, fields) in &o.states {
        match redis_states.get(k) {
            Some(v) if v == fields => equal += 1,
            Some(_) => differing.push(k.clone()),
            None => absent.push(k.clone()),
        }
    }
    let extra: Vec<String> = redis_states
        .keys()
        .filter(|k| !o.states.contains_key(*k))
        .cloned()
        .collect();
    r.line(
        "redis user states = oracle's",
        format!(
            "{equal} of {} equal, {} differ{}, {} absent{}, {} extra{}",
            o.states.len(),
            differing.len(),
            sample(&differing),
            absent.len(),
            sample(&absent),
            extra.len(),
            sample(&extra)
        ),
        !differing.is_empty() || !absent.is_empty() || !extra.is_empty(),
    );
    let mut markers_ok = 0;
    let mut markers_bad = Vec::new();
    for a in o.awards.values() {
        let kind = if a.source.topic == dl {
            EventKind::DataLogged
        } else {
            EventKind::BirthReported
        };
        let key = world.keys.user_label(a.source.partition, kind, &a.user_id);
        let field = format!("a:{}/{}@{}", a.program_id, a.incentive_id, a.period);
        let ok = redis_states
            .get(&key)
            .and_then(|s| s.get(&field))
            .is_some_and(|v| v.starts_with(&format!("{}|", a.award_id)));
        if ok {
            markers_ok += 1;
        } else {
            markers_bad.push(format!("{key} {field}"));
        }
    }
    r.line(
        "redis award markers",
        format!(
            "{markers_ok} of {} present{}",
            o.awards.len(),
            sample(&markers_bad)
        ),
        !markers_bad.is_empty(),
    );
    let applied = world.applied()?;
    let mut offsets_bad = Vec::new();
    for (tp, (effective, last)) in &o.ends {
        let a = applied.get(tp).copied().unwrap_or(-1);
        if a < *effective || a > *last {
            offsets_bad.push(format!(
                "{}[{}] applied {a}, last record {last}",
                tp.0, tp.1
            ));
        }
    }
    r.line(
        "redis applied offsets",
        format!(
            "{} of {} partitions at the end of their input{}",
            o.ends.len() - offsets_bad.len(),
            o.ends.len(),
            sample(&offsets_bad)
        ),
        !offsets_bad.is_empty(),
    );
    let outbox = world.outbox_total()?;
    r.line(
        "redis outboxes",
        format!("{outbox} awards left"),
        outbox > 0,
    );
    r.line(
        "partitions stalled after a fault",
        format!(
            "{} faults (healed only by a forced rebalance){}",
            world.stalls.len(),
            sample(&world.stalls)
        ),
        !world.stalls.is_empty(),
    );
    r.line(
        "stuck partitions at the end",
        format!("{}{}", stuck.len(), sample(stuck)),
        !stuck.is_empty(),
    );
    r.line("processor kills (-9)", world.kills.to_string(), false);
    r.line(
        "processors that exited on their own",
        world.unexpected_exits.to_string(),
        false,
    );
    Ok(r)
}

fn sample<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = items.iter().take(3).map(|i| i.to_string()).collect();
    format!(
        " [{}{}]",
        shown.join(", "),
        if items.len() > 3 { ", ..." } else { "" }
    )
}

// ------------------------------------------------------------------ main

fn main() -> ExitCode {
    let _ = START.get_or_init(Instant::now);
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("faults: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool> {
    let run_id = format!("faults-{}", uuid::Uuid::now_v7().simple());
    let dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(&run_id),
    };
    std::fs::create_dir_all(&dir)?;
    let processor_bin = match &args.processor_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory of the current executable"))?
            .join("incentives"),
    };
    if !processor_bin.is_file() {
        bail!(
            "no processor binary at {} (cargo build --release, or --processor-bin)",
            processor_bin.display()
        );
    }
    // A private copy: the shared target dir may be rebuilt while the suite runs.
    let copy = dir.join("incentives");
    std::fs::copy(&processor_bin, &copy)
        .with_context(|| format!("copying {}", processor_bin.display()))?;
    let processor_bin = copy;
    let nisshi = nisshi_bin(args.nisshi_bin.clone())?;
    let steps: Vec<Step> = plan(args.mode)
        .into_iter()
        .filter(|s| args.phases.is_empty() || args.phases.contains(&s.kind()))
        .collect();
    let (users, days) = match args.mode {
        Mode::Short => (args.users.unwrap_or(1200), args.days.unwrap_or(28)),
        Mode::Full => (args.users.unwrap_or(6000), args.days.unwrap_or(42)),
    };
    say!(
        "faults: mode {:?}, seed {}, {users} users x {days} days, work dir {}",
        args.mode,
        args.seed,
        dir.display()
    );
    say!(
        "plan: {}",
        steps
            .iter()
            .map(|s| s.label())
            .collect::<Vec<_>>()
            .join(" | ")
    );

    // Infrastructure of our own.
    let redis = RedisServer::start(&dir.join("redis"))?;
    say!("redis-server on {} (AOF, appendfsync everysec)", redis.port);
    let broker = Broker::start(&nisshi, &dir.join("broker"))?;
    say!(
        "nisshi on {} (sqlite storage in {})",
        broker.port,
        broker.dir.display()
    );

    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    std::fs::write(
        config_dir.join("incentives.toml"),
        "# Written by the fault-injection suite; settings come from INCENTIVES__* variables.\n",
    )?;
    std::fs::write(config_dir.join("catalog.toml"), CATALOG)?;
    std::fs::write(config_dir.join("programs.toml"), PROGRAMS)?;
    let env: Vec<(String, String)> = vec![
        ("INCENTIVES__KAFKA__BROKERS".into(), broker.addr()),
        ("INCENTIVES__KAFKA__GROUP_ID".into(), run_id.clone()),
        (
            "INCENTIVES__KAFKA__SESSION_TIMEOUT".into(),
            format!("{}s", SESSION_TIMEOUT.as_secs()),
        ),
        ("INCENTIVES__REDIS__URL".into(), redis.url()),
        ("INCENTIVES__REDIS__KEY_PREFIX".into(), run_id.clone()),
        ("INCENTIVES__REDIS__COMMAND_TIMEOUT".into(), "2s".into()),
        (
            "INCENTIVES__TOPICS__DATA_LOGGED".into(),
            format!("{run_id}.data-logged"),
        ),
        (
            "INCENTIVES__TOPICS__BIRTH_REPORTED".into(),
            format!("{run_id}.birth-reported"),
        ),
        (
            "INCENTIVES__TOPICS__AWARDS".into(),
            format!("{run_id}.awards"),
        ),
        (
            "INCENTIVES__TOPICS__DEAD_LETTER".into(),
            format!("{run_id}.dead-letter"),
        ),
        ("INCENTIVES__PROCESSOR__COMMIT_INTERVAL".into(), "1s".into()),
        ("INCENTIVES__PROCESSOR__MAX_BACKOFF".into(), "1s".into()),
        (
            "INCENTIVES__PROCESSOR__PRODUCE_TIMEOUT".into(),
            "10s".into(),
        ),
        (
            "INCENTIVES__PROCESSOR__CONFIG_POLL_INTERVAL".into(),
            "0s".into(),
        ),
        ("INCENTIVES__LOG__FORMAT".into(), "json".into()),
        (
            "INCENTIVES__LOG__FILTER".into(),
            // The per-award line (debug, its own target) is counted in the rows.
            format!(
                "info,{}=debug,librdkafka=warn,rdkafka=warn",
                incentives::processor::AWARD_LOG_TARGET
            ),
        ),
    ];
    let config = Config::load_with_env(&config_dir, &env)
        .map_err(|e| anyhow!("the suite's configuration: {e}"))?;
    let t = &config.settings.topics;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(incentives::kafka::create_topics(
        &broker.addr(),
        &[&t.data_logged, &t.birth_reported, &t.awards, &t.dead_letter],
        PARTITIONS,
    ))
    .map_err(|e| anyhow!(e))?;
    say!("topics {run_id}.* created with {PARTITIONS} partitions");

    let keys = Keys::new(&config.settings.redis.key_prefix);
    let mut world = World {
        dir: dir.clone(),
        config_dir,
        processor_bin,
        env,
        keys,
        redis,
        broker,
        procs: Vec::new(),
        next_proc: 1,
        all_logs: Vec::new(),
        rows: Vec::new(),
        notes: Vec::new(),
        unexpected_exits: 0,
        kills: 0,
        zombies: 0,
        stalls: Vec::new(),
        rng: StdRng::seed_from_u64(args.seed),
        admin: None,
        group_reader: None,
        step: "setup".into(),
        config,
    };

    // The workload, cut into one wave per step (in event-time order).
    let events = synthetic_events(&Synthetic {
        users,
        days,
        seed: args.seed,
        start: workload_start()?,
        employers: vec!["acme".into(), "globex".into()],
    });
    say!("workload: {} events", events.len());
    let total_weight: f64 = steps.iter().map(|s| s.weight()).sum::<f64>().max(1.0);
    let mut waves: Vec<Wave> = Vec::new();
    let mut rest = events.as_slice();
    for (i, s) in steps.iter().enumerate() {
        let take = if i + 1 == steps.len() {
            rest.len()
        } else {
            ((events.len() as f64) * s.weight() / total_weight).round() as usize
        }
        .min(rest.len());
        let (wave, tail) = rest.split_at(take);
        waves.push(Wave {
            events: wave.to_vec(),
            spread: secs(s.weight()),
        });
        rest = tail;
    }
    if steps.is_empty() {
        waves.push(Wave {
            events: events.clone(),
            spread: secs(20.0),
        });
    }

    let n = world.start_proc()?;
    let t0 = Instant::now();
    let got = took(
        world.wait_assigned(&[n], Duration::from_secs(60), |c| c[0] >= 12.0),
        t0,
    );
    say!(
        "processor #{n} started; {}",
        match got {
            Some(d) => format!("holds all 12 input partitions after {d:.1}s"),
            None => "did not get all partitions within 60s".into(),
        }
    );
    let mut feeder = Feeder::start(
        world.config.settings.kafka.clone(),
        world.config.settings.topics.clone(),
    );

    let mut step_stats: Vec<(String, LogStats)> = Vec::new();
    let mut waves = waves.into_iter();
    if steps.is_empty() {
        if let Some(w) = waves.next() {
            feeder.submit(w)?;
        }
    }
    for (i, step) in steps.iter().enumerate() {
        world.step = format!("{}. {}", i + 1, step.label());
        say!("=== {}", world.step);
        if let Some(w) = waves.next() {
            let n = w.events.len();
            feeder.submit(w)?;
            say!(
                "  wave of {n} events queued, paced over {:.0}s",
                step.weight()
            );
        }
        let marks = world.log_marks();
        let result = match *step {
            Step::Scale => world.scale(),
            Step::Kills(n) => world.kills(n),
            Step::Redis { always, loss } => world.redis_fault(always, loss),
            Step::Broker => world.broker_fault(),
            Step::Zombie => world.zombie(),
        };
        if let Err(e) = result {
            let note = format!("step '{}' could not complete: {e:#}", world.step);
            say!("  !! {note}");
            world.notes.push(note);
        }
        let stats = world.log_stats_since(&marks, None);
        say!("  {}", stats.summary());
        step_stats.push((world.step.clone(), stats));
    }

    // Drain: everything published and acknowledged, every partition applied.
    world.step = "drain".into();
    say!("=== drain: waiting for the feeder, then for every partition to be applied");
    world.ensure_running(2)?;
    feeder.finish(Duration::from_secs(600))?;
    say!(
        "feeder done: {} events acknowledged",
        feeder.stats.acked.load(Ordering::SeqCst)
    );
    let t = Instant::now();
    let mut stuck: Vec<String> = Vec::new();
    loop {
        world.reap();
        if world.running().len() < 2 {
            world.ensure_running(2)?;
        }
        let state = (
            world.highs(),
            world.applied(),
            world.committed(),
            world.outbox_total(),
        );
        if let (Ok(highs), Ok(applied), Ok(committed), Ok(outbox)) = state {
            stuck = highs
                .iter()
                .filter(|(tp, high)| {
                    let a = applied.get(*tp).copied().unwrap_or(-1);
                    let c = committed.get(*tp).copied().unwrap_or(0);
                    a + 1 < **high && c < **high
                })
                .map(|((t, p), high)| {
                    format!(
                        "{t}[{p}] applied {} committed {} of {high}",
                        applied.get(&(t.clone(), *p)).copied().unwrap_or(-1),
                        committed.get(&(t.clone(), *p)).copied().unwrap_or(0)
                    )
                })
                .collect();
            if stuck.is_empty() && outbox == 0 {
                break;
            }
            if outbox > 0 && stuck.is_empty() && t.elapsed() > Duration::from_secs(60) {
                stuck.push(format!("{outbox} awards left in the outboxes"));
            }
        }
        if t.elapsed() > Duration::from_secs(180) {
            say!("  !! not drained within 180s: {}", stuck.join("; "));
            break;
        }
        sleep(Duration::from_millis(500));
    }
    say!("drained in {:.1}s", t.elapsed().as_secs_f64());
    sleep(Duration::from_secs(2));
    let marks = world.log_marks();
    for n in world.running() {
        world.terminate(n)?;
    }
    step_stats.push(("drain".into(), world.log_stats_since(&marks, None)));
    let faults_done = since_start();

    let report = check(&mut world, &feeder, &stuck)?;

    println!();
    println!("FAULTS (what was done, when, and what it showed)");
    println!("  {:>7}  {:<26} event", "t", "step");
    for row in &world.rows {
        println!("  {:>6.1}s  {:<26} {}", row.t, row.step, row.text);
    }
    println!();
    println!("PROCESSOR LOGS PER STEP");
    for (step, stats) in &step_stats {
        println!("  {:<26} {}", step, stats.summary());
    }
    if !world.notes.is_empty() {
        println!();
        println!("NOTES");
        for n in &world.notes {
            println!("  - {n}");
        }
    }
    report.print();
    println!();
    println!(
        "faults and drain took {:.0}s, the whole run {:.0}s; work dir {}",
        faults_done,
        since_start(),
        dir.display()
    );
    let pass = !report.failed;
    println!("RESULT: {}", if pass { "PASS" } else { "FAIL" });
    drop(world);
    if pass && !args.keep && args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(pass)
}
