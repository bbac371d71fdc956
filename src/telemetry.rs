//! Metrics, health and logs: the Prometheus registry and the `/metrics`,
//! `/healthz` and `/readyz` server, and the tracing subscriber.
//!
//! Metric names follow `incentives_<noun>_<unit>`; labels come from bounded
//! sets (topics, outcomes, reason codes, incentive ids), never error text.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::config::{LogFormat, LogSettings};

/// The processor's metrics, registered in their own registry.
pub struct Metrics {
    pub registry: Registry,
    /// Input records by topic and outcome (`applied`, `no_program`,
    /// `duplicate`, `dead_lettered`).
    pub events: IntCounterVec,
    /// Awards published, by incentive.
    pub awards: IntCounterVec,
    /// Records dead-lettered, by reason code.
    pub dead_letters: IntCounterVec,
    /// Records per poll batch.
    pub batch_size: Histogram,
    /// Latency of Redis round trips, by operation.
    pub redis_latency: HistogramVec,
    /// Event time of the completing event to the broker's ack of its award.
    pub event_to_award: Histogram,
    /// Retries of Redis or broker faults, by dependency.
    pub retries: IntCounterVec,
    /// Input partitions this instance owns.
    pub assigned_partitions: IntGauge,
    /// Malformed fields found in stored user state (dropped).
    pub malformed_state: IntCounterVec,
    /// Configuration reloads, by result (`applied`, `rejected`).
    pub config_reloads: IntCounterVec,
    /// Expired user states deleted by the sweeper, by event kind.
    pub states_expired: IntCounterVec,
    /// Batch transactions aborted by a change of a watched partition meta
    /// hash (each is sent again as checking scripts).
    pub transactions_aborted: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new(
                "incentives_events_total",
                "Input records by topic and outcome",
            ),
            &["topic", "outcome"],
        )
        .expect("static metric definition");
        let awards = IntCounterVec::new(
            Opts::new("incentives_awards_total", "Awards published, by incentive"),
            &["incentive"],
        )
        .expect("static metric definition");
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "incentives_dead_letters_total",
                "Records dead-lettered, by reason",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("incentives_batch_records", "Records per poll batch").buckets(vec![
                1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
            ]),
        )
        .expect("static metric definition");
        let redis_latency = HistogramVec::new(
            HistogramOpts::new(
                "incentives_redis_latency_seconds",
                "Redis round trip latency by operation",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
            &["op"],
        )
        .expect("static metric definition");
        let event_to_award = Histogram::with_opts(
            HistogramOpts::new(
                "incentives_event_to_award_seconds",
                "Completing event's time to the award's broker ack",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 3600.0, 86400.0,
            ]),
        )
        .expect("static metric definition");
        let retries = IntCounterVec::new(
            Opts::new(
                "incentives_retries_total",
                "Retries of infrastructure faults",
            ),
            &["dependency"],
        )
        .expect("static metric definition");
        let assigned_partitions = IntGauge::new(
            "incentives_assigned_partitions",
            "Input partitions owned by this instance",
        )
        .expect("static metric definition");
        let malformed_state = IntCounterVec::new(
            Opts::new(
                "incentives_malformed_state_total",
                "Malformed stored state fields dropped",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "incentives_config_reloads_total",
                "Configuration reloads by result",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let transactions_aborted = IntCounter::new(
            "incentives_redis_transactions_aborted_total",
            "Batch write transactions aborted because a watched partition meta hash changed (another consumer claimed a partition); each was sent again as checking scripts",
        )
        .expect("static metric definition");
        let states_expired = IntCounterVec::new(
            Opts::new(
                "incentives_states_expired_total",
                "Expired user states deleted by the sweeper, by event kind",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        for c in [
            &states_expired,
            &events,
            &awards,
            &dead_letters,
            &retries,
            &malformed_state,
            &config_reloads,
        ] {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric names");
        }
        registry
            .register(Box::new(batch_size.clone()))
            .expect("unique metric names");
        registry
            .register(Box::new(redis_latency.clone()))
            .expect("unique metric names");
        registry
            .register(Box::new(event_to_award.clone()))
            .expect("unique metric names");
        registry
            .register(Box::new(assigned_partitions.clone()))
            .expect("unique metric names");
        registry
            .register(Box::new(transactions_aborted.clone()))
            .expect("unique metric names");
        Metrics {
            registry,
            events,
            awards,
            dead_letters,
            batch_size,
            redis_latency,
            event_to_award,
            retries,
            assigned_partitions,
            malformed_state,
            config_reloads,
            states_expired,
            transactions_aborted,
        }
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Readiness, shared between the worker and the HTTP server: ready once
/// started, and while every dependency answers.
#[derive(Default)]
pub struct Health {
    started: AtomicBool,
    redis_down: AtomicBool,
    kafka_down: AtomicBool,
}

/// The dependencies readiness tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Redis,
    Kafka,
}

impl Dependency {
    pub fn label(self) -> &'static str {
        match self {
            Dependency::Redis => "redis",
            Dependency::Kafka => "kafka",
        }
    }
}

impl Health {
    /// Marks the worker started (true) or stopping (false).
    pub fn set_ready(&self, ready: bool) {
        self.started.store(ready, Ordering::Relaxed);
    }
    pub fn set_dependency(&self, dependency: Dependency, up: bool) {
        let flag = match dependency {
            Dependency::Redis => &self.redis_down,
            Dependency::Kafka => &self.kafka_down,
        };
        flag.store(!up, Ordering::Relaxed);
    }
    pub fn dependency_up(&self, dependency: Dependency) -> bool {
        match dependency {
            Dependency::Redis => !self.redis_down.load(Ordering::Relaxed),
            Dependency::Kafka => !self.kafka_down.load(Ordering::Relaxed),
        }
    }
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Relaxed)
            && !self.redis_down.load(Ordering::Relaxed)
            && !self.kafka_down.load(Ordering::Relaxed)
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::{http::StatusCode, routing::get, Router};
    let app = Router::new()
        .route(
            "/metrics",
            get({
                let metrics = metrics.clone();
                move || async move { metrics.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if health.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.listen {addr}: {e} (set INCENTIVES__HTTP__LISTEN to a free address)"))
}

/// Installs the global tracing subscriber (RUST_LOG overrides the filter).
pub fn init_logging(settings: &LogSettings) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
