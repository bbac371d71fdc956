//! The `incentives` binary: parses the command line and calls the library.

/// jemalloc, not glibc's malloc: the processor allocates and frees many
/// small values per event, and glibc's `free` and `malloc_consolidate` were a
/// fifth of its CPU (README, Performance: what moved each figure).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the
/// environment overrides them): one arena, as few threads allocate (the
/// processor's batch thread and its scoped helpers), and freed pages given
/// back after 500 ms instead of 10 s, which keeps the peak RSS down.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static JEMALLOC_CONF: &[u8; 29] = b"narenas:1,dirty_decay_ms:500\0";

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};

use incentives::config::Config;
use incentives::loadgen::{self, BrokerSink, GatewaySink, Sink};
use incentives::processor::{self, Shutdown};
use incentives::publisher::Publisher;
use incentives::telemetry::{self, Health, Metrics};
use incentives::tools;

/// A rewards engine: decides, exactly once, that a user earned an incentive
/// and publishes the award.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Directory holding incentives.toml, catalog.toml and programs.toml.
    /// Settings can be overridden with INCENTIVES__<SECTION>__<KEY>.
    #[arg(
        long,
        global = true,
        env = "INCENTIVES_CONFIG_DIR",
        default_value = "config"
    )]
    config_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor: consume events, keep day counters in Redis,
    /// publish awards. Serves /metrics, /healthz, /readyz on http.listen.
    /// SIGINT/SIGTERM drain and commit; a second signal exits at once.
    /// SIGHUP (or a saved change) re-reads catalog.toml and programs.toml;
    /// an invalid change is logged and the running configuration kept.
    Process,
    /// Run the HTTP gateway for the app's backend: authenticated, validated,
    /// idempotent event publishing; 202 only after the broker's ack.
    /// Serves /metrics, /healthz, /readyz, /openapi.json on gateway.listen.
    /// SIGINT/SIGTERM finish the requests in flight; a second signal exits.
    Gateway,
    /// Run the read API: each user's progress on their employer's program
    /// incentives, explanations and awards, from the user's own Redis keys.
    /// Authenticated with the gateway's clients (a client sees only users of
    /// its employers). Serves /metrics, /healthz, /readyz on api.listen.
    /// SIGINT/SIGTERM finish the requests in flight; a second signal exits.
    Api,
    /// Measure the read API's latency: GETs of random users of a synthetic
    /// workload (as `produce --synthetic` names them) over its three user
    /// routes; prints p50/p90/p99/max overall and by route.
    #[command(hide = true)]
    ApiBench(ApiBenchArgs),
    /// Publish events from a file or a synthetic workload, exactly as upstream
    /// producers must (Avro single-object encoding, key = user id, murmur2
    /// partitioner, acks=all), or through the HTTP gateway (--gateway).
    /// Paced (--rate) or as fast as possible; a progress bar, then a summary:
    /// events acknowledged and failed (by kind), elapsed, achieved rate, and
    /// latency from send to acknowledgement (p50/p90/p99/max).
    Produce(ProduceArgs),
    /// Print awards from the awards topic as JSON lines.
    Awards(AwardsArgs),
    /// Benchmark the processor on this machine: throughput, latency, CPU,
    /// Redis memory and RSS, as a table and as JSON.
    ///
    /// Uses the configured broker and Redis, on fresh topics, consumer group
    /// and key prefix (bench-<unix time>): the raw consume throughput of a
    /// synthetic backlog with the processor's client settings (the ceiling),
    /// what the bench's paced producer and the broker alone take in (the
    /// inflow, no processor running), the live ceiling (the ceiling's bare
    /// consumer in place of the processor, probed live as below, from 70% of
    /// the ceiling down), the processor's drain rate (a child
    /// `incentives process` draining it), its live sustainable rate (paced
    /// probes of 8 s with the producer on the same machine, from 70% of the
    /// drain rate down by 20% steps until the lag does not grow, then two
    /// halving the gap to the lowest rate that grew it; the records read are
    /// deleted after the drain and after each probe caught up with, and the
    /// input records the processor applied once a second while paced, as
    /// retention would), event-to-award
    /// latency p50/p99 at half the live rate (with
    /// the CPU the processor, broker, Redis and load generator used meanwhile;
    /// the broker's needs INCENTIVES_BENCH_BROKER_PID, which scripts/bench.sh
    /// sets for its local broker), CPU seconds per million events (in the
    /// drain and at the live rate), the live
    /// rate the machine's cores could carry at the CPU per event each process
    /// used (with this processor, and with one as cheap as the bare
    /// consumer) and the most a processor could cost per event for that rate
    /// to reach the target (and what that leaves beyond the bare consumer's
    /// cost of reading the records), Redis bytes per active user-rule, and
    /// peak RSS with --rss-users distinct users. Prints a table with the
    /// targets (informational; never a failing exit because of a figure) and
    /// writes the figures as JSON. scripts/bench.sh builds and runs it.
    Bench(BenchArgs),
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print a summary; starts nothing.
    Check,
    /// Print the SHA-256 of an API key, for gateway.clients[].api_key_sha256.
    HashKey {
        /// The API key (prefer reading it from a file: "$(cat key.txt)").
        key: String,
    },
}

#[derive(Args)]
struct ProduceArgs {
    /// JSON-lines file of events ({"type":"data_logged"|"birth_reported", ...}, see README).
    /// Works with --rate and --gateway like --synthetic.
    #[arg(
        long,
        conflicts_with = "synthetic",
        required_unless_present = "synthetic"
    )]
    file: Option<PathBuf>,
    /// Generate synthetic users over simulated days instead (ordered by event
    /// time; the same --users, --days, --seed and --start-date give the same events,
    /// event ids included).
    #[arg(long)]
    synthetic: bool,
    /// Synthetic: number of users.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Synthetic: number of simulated days.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Synthetic: random seed (the same seed gives the same events; user and
    /// event ids contain it).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Synthetic: first simulated day (default: `days` + 1 days ago, so that
    /// every event lies in the past).
    #[arg(long)]
    start_date: Option<NaiveDate>,
    /// Synthetic: employers the users are spread over (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "acme,globex")]
    employers: Vec<String>,
    /// Target rate in events per second, held steady by a token bucket (at most
    /// 20 ms worth of events go back to back to catch up). 0: as fast as the
    /// acknowledgements come back with --concurrency events in flight.
    #[arg(long, value_name = "EVENTS_PER_SEC", default_value_t = 0.0, value_parser = parse_rate)]
    rate: f64,
    /// Most events in flight (sent, not yet acknowledged). A --batch request
    /// counts its events; one request is always allowed.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// How long to wait for each acknowledgement (the broker's ack, or the
    /// gateway's answer) before counting the event as failed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Send through the HTTP gateway at this address (http://host:port; no TLS)
    /// instead of to the broker: one POST /v1/events/data-logged or
    /// /v1/events/birth-reported per event, with its event_id; 202 counts as
    /// acknowledged, any other status as an error of that status.
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    /// With --gateway: the client's API key, sent as "Authorization: Bearer KEY".
    #[arg(
        long,
        value_name = "KEY",
        env = "INCENTIVES_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// With --gateway: POST /v1/events/batch with N events per request
    /// (at most the gateway's gateway.max_batch_events, default 500); each
    /// item's status is counted.
    #[arg(long, value_name = "N", requires = "gateway", value_parser = clap::value_parser!(u32).range(1..))]
    batch: Option<u32>,
    /// No progress bar (there is none when stderr is not a terminal either).
    #[arg(long, short)]
    quiet: bool,
    /// Also write the summary's figures (and the workload) as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json_summary: Option<PathBuf>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate in events per second (a number, 0 or more)"
        )),
    }
}

#[derive(Args)]
struct ApiBenchArgs {
    /// The read API (http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    url: String,
    /// A client's API key, sent as "Authorization: Bearer KEY".
    #[arg(long, env = "INCENTIVES_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Users of the synthetic workload (`produce --synthetic --users`).
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Seed of the synthetic workload (`produce --synthetic --seed`).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Measured requests.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Requests sent first and not measured.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// The catalog incentive of GET /v1/users/{user}/incentives/{incentive}.
    #[arg(long, default_value = "data-logged-5-consecutive-days")]
    incentive: String,
    /// Longest wait for one answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct BenchArgs {
    /// Users of the synthetic backlog (as `produce --synthetic --users`).
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    /// Simulated days of the synthetic backlog.
    #[arg(long, default_value_t = 10)]
    days: u32,
    /// Seed of the synthetic backlog.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Partitions of each topic the run creates.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// Seconds of paced events (at half the sustainable rate) for the
    /// event-to-award latency.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    latency_seconds: u64,
    /// Events/s of the latency phase instead of half the sustainable rate.
    #[arg(long, value_name = "EVENTS_PER_SEC", value_parser = parse_rate)]
    latency_rate: Option<f64>,
    /// Distinct users (one event each) for the peak RSS phase; 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    rss_users: usize,
    /// Write the figures as JSON here (default: target/bench/<run>.json).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Keep the run's Redis keys and topics (default: removed at the end).
    #[arg(long)]
    keep: bool,
    /// Run the paced producer (its sending thread and librdkafka's threads)
    /// at this nice value, so that on a machine it shares with the
    /// processor, broker and Redis it takes the CPU they leave; the awards
    /// reader and the other measuring threads keep the bench's priority.
    /// 0: the same priority as everything else.
    #[arg(long, default_value_t = 10, value_name = "0-19", value_parser = clap::value_parser!(i32).range(0..=19))]
    producer_nice: i32,
}

#[derive(Args)]
struct AwardsArgs {
    /// Start at the beginning of the topic (default: only new awards).
    #[arg(long)]
    from_beginning: bool,
    /// Stop after no award arrived for this long ("10s"; default: never).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Stop after this many awards.
    #[arg(long)]
    max: Option<usize>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load(dir: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(dir).map_err(|e| anyhow::anyhow!("{e}"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load(&cli.config_dir)?;
    telemetry::init_logging(&config.settings.log);
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let programs: Vec<_> = config.programs.all().collect();
            println!("configuration in {} is valid", cli.config_dir.display());
            println!("  kafka.brokers = {}", config.settings.kafka.brokers);
            println!("  redis.url     = {}", config.settings.redis.url);
            println!(
                "  catalog: {} incentives; programs: {} program incentives",
                config.programs.catalog.len(),
                programs.len()
            );
            for pi in programs {
                println!(
                    "    {} (employer {}, version {})",
                    pi.rule_key, pi.employer_id, pi.rule_version
                );
            }
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::HashKey { key },
        } => {
            println!("{}", incentives::config::hash_api_key(&key));
            Ok(())
        }
        Command::Process => process(config),
        Command::Gateway => gateway(config),
        Command::Api => api(config),
        Command::ApiBench(args) => api_bench(args),
        Command::Produce(args) => produce(config, args),
        Command::Awards(args) => awards(config, args),
        Command::Bench(args) => bench(config, args),
    }
}

fn bench(config: Config, args: BenchArgs) -> anyhow::Result<()> {
    let options = incentives::bench::Options {
        exe: std::env::current_exe().context("cannot find this program's path")?,
        users: args.users,
        days: args.days,
        seed: args.seed,
        partitions: args.partitions,
        latency: Duration::from_secs(args.latency_seconds),
        latency_rate: args.latency_rate.filter(|r| *r > 0.0),
        rss_users: args.rss_users,
        json: args.json,
        out_dir: PathBuf::from("target/bench"),
        keep: args.keep,
        producer_nice: args.producer_nice,
    };
    incentives::bench::run(&config, &options)
}

fn process(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let shutdown = Shutdown::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(telemetry::bind(config.settings.http.listen))?;
    let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(telemetry::serve(
        listener,
        metrics.clone(),
        health.clone(),
        async {
            let _ = stop_http_rx.await;
        },
    ));
    runtime.spawn(watch_signals(shutdown.clone()));
    let reload = processor::Reload::default();
    runtime.spawn(watch_sighup(reload.clone()));
    tracing::info!(listen = %config.settings.http.listen, "serving /metrics, /healthz, /readyz");
    let result = processor::run_with_reload(config, metrics, health, shutdown, reload);
    let _ = stop_http_tx.send(());
    runtime.shutdown_timeout(Duration::from_secs(2));
    result.context("processor failed")
}

fn gateway(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listen = config.settings.gateway.listen;
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on gateway.listen {listen}: {e} (set INCENTIVES__GATEWAY__LISTEN)"
            )
        })?;
        if config.settings.gateway.clients.is_empty() {
            tracing::warn!("no [[gateway.clients]] configured: every event request will get 401");
        }
        let state = incentives::gateway::AppState::new(config.clone()).await?;
        let shutdown = Shutdown::default();
        tokio::spawn(watch_signals(shutdown.clone()));
        incentives::gateway::run(state, listener, async move {
            while !shutdown.is_triggered() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await?;
        Ok(())
    })
}

/// SIGHUP: re-read catalog.toml and programs.toml.
async fn watch_sighup(reload: processor::Reload) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the catalog and programs");
        reload.request();
    }
}

fn api(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listen = config.settings.api.listen;
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on api.listen {listen}: {e} (set INCENTIVES__API__LISTEN)"
            )
        })?;
        if config.settings.gateway.clients.is_empty() {
            tracing::warn!("no [[gateway.clients]] configured: every request will get 401");
        }
        let state = incentives::api::ApiState::new(config.clone())?;
        let shutdown = Shutdown::default();
        tokio::spawn(watch_signals(shutdown.clone()));
        let reload = processor::Reload::default();
        tokio::spawn(watch_sighup(reload.clone()));
        let for_reload = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if reload.take() {
                    for_reload.request_reload();
                }
            }
        });
        incentives::api::run(state, listener, async move {
            while !shutdown.is_triggered() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await?;
        Ok(())
    })
}

fn api_bench(args: ApiBenchArgs) -> anyhow::Result<()> {
    let options = incentives::api::bench::BenchOptions {
        base_url: args.url,
        api_key: args.api_key,
        users: args.users,
        seed: args.seed,
        requests: args.requests,
        warmup: args.warmup,
        concurrency: args.concurrency as usize,
        incentive: args.incentive,
        timeout: args.timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime
        .block_on(incentives::api::bench::run(&options))
        .map_err(anyhow::Error::msg)?;
    for line in report.lines(options.concurrency) {
        println!("{line}");
    }
    Ok(())
}

/// First SIGINT/SIGTERM: drain. Second: exit at once.
async fn watch_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut received = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        received += 1;
        if received == 1 {
            tracing::info!("shutdown requested: draining (send the signal again to exit at once)");
            shutdown.trigger();
        } else {
            tracing::warn!("second signal: exiting without draining");
            std::process::exit(130);
        }
    }
}

fn produce(config: Config, args: ProduceArgs) -> anyhow::Result<()> {
    let (events, workload) = if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let events = incentives::json::parse_json_lines(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        (
            events,
            serde_json::json!({"source": "file", "path": file.display().to_string()}),
        )
    } else {
        let start = args.start_date.unwrap_or_else(|| {
            chrono::Utc::now().date_naive() - chrono::Duration::days(i64::from(args.days) + 1)
        });
        if args.employers.is_empty() {
            bail!("--employers must name at least one employer");
        }
        let workload = serde_json::json!({
            "source": "synthetic",
            "users": args.users,
            "days": args.days,
            "seed": args.seed,
            "start_date": start.to_string(),
            "employers": args.employers,
        });
        let events = tools::synthetic_events(&tools::Synthetic {
            users: args.users,
            days: args.days,
            seed: args.seed,
            start,
            employers: args.employers.clone(),
        });
        (events, workload)
    };
    let concurrency = args.concurrency as usize;
    let sink: Box<dyn Sink> = match &args.gateway {
        Some(url) => {
            let key = args.api_key.as_deref().unwrap_or_default();
            let batch = args.batch.map(|b| b as usize);
            Box::new(
                GatewaySink::new(url, key, batch, args.timeout, concurrency)
                    .map_err(anyhow::Error::msg)?,
            )
        }
        None => {
            let sink = BrokerSink {
                publisher: Publisher::new(
                    &config.settings.kafka,
                    &config.settings.topics,
                    args.timeout,
                )?,
                brokers: config.settings.kafka.brokers.clone(),
            };
            let topics = &config.settings.topics;
            sink.connect(
                &[&topics.data_logged, &topics.birth_reported],
                args.timeout.min(Duration::from_secs(10)),
            )
            .map_err(anyhow::Error::msg)?;
            Box::new(sink)
        }
    };
    let options = loadgen::Options {
        rate: (args.rate > 0.0).then_some(args.rate),
        concurrency,
        error_samples: 5,
    };
    let progress = loadgen::progress_bar(events.len() as u64, args.quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        // First Ctrl-C: send nothing more, wait for the events in flight, summarise.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let bar = progress.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            bar.suspend(|| {
                eprintln!(
                    "stopping: waiting for the events in flight (Ctrl-C again to exit at once)"
                )
            });
            let _ = stop_tx.send(());
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
        let stop = async {
            if stop_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        loadgen::run(sink.as_ref(), &events, &options, &progress, stop).await
    });
    progress.finish_and_clear();
    eprintln!("{}", report.summary_line());
    for note in report.notes() {
        eprintln!("note: {note}");
    }
    if let Some(path) = &args.json_summary {
        let mut json = report.to_json();
        if let Some(fields) = json.as_object_mut() {
            fields.insert("workload".into(), workload);
        }
        let text = serde_json::to_string_pretty(&json)? + "\n";
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.failed > 0 {
        bail!(
            "{} of {} events were not acknowledged by the {}",
            report.failed,
            report.events,
            report.sink
        );
    }
    if report.not_sent > 0 {
        bail!("stopped before all events were sent");
    }
    Ok(())
}

fn awards(config: Config, args: AwardsArgs) -> anyhow::Result<()> {
    let idle = args.idle_timeout.unwrap_or(Duration::MAX);
    let mut printed = 0usize;
    tools::read_awards(
        &config.settings.kafka,
        &config.settings.topics.awards,
        args.from_beginning,
        idle,
        args.max,
        |a, _, _| {
            match serde_json::to_string(a) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("cannot print award {}: {e}", a.award_id),
            }
            printed += 1;
        },
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    eprintln!("{printed} awards");
    Ok(())
}
