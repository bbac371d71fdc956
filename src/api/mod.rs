//! `incentives api`: the read API. Where a user stands on each incentive of
//! their employer's programs, why, and what they were awarded.
//!
//! Every answer is computed from the user's own two Redis hashes (one per
//! event kind, [`Keys::user`]), read in one pipelined round trip; nothing
//! scans the keyspace. The hash of a user lives in the shard of the user's
//! input partition, `partition_for_key(user, N)` with `N` the partition count
//! of that kind's input topic: the counts come from the broker's metadata at
//! start and are refreshed every 30 s.
//!
//! # Authentication
//!
//! The gateway's clients and keys (`gateway.clients`, `Authorization: Bearer
//! <key>`): a missing or unknown key gets 401 with `WWW-Authenticate:
//! Bearer`. A client sees only users of its `employers`: a user of another
//! employer gets **404, exactly like an unknown user**, so that a client
//! cannot learn which user ids exist elsewhere (403 would tell it).
//!
//! # Routes
//!
//! Dates are local calendar days `YYYY-MM-DD`; instants are RFC 3339.
//!
//! `GET /v1/users/{user}/incentives`: every program incentive of the user's
//! employer (both event kinds, active or not), 200:
//!
//! ```json
//! {
//!   "user_id": "u-1",
//!   "employer_id": "acme",
//!   "as_of": "2026-03-04T23:00:00Z",
//!   "incentives": [
//!     {
//!       "program_id": "acme-wellness-2026",
//!       "incentive_id": "data-logged-5-consecutive-days",
//!       "description": "Logged health data on five consecutive days",
//!       "event": "data_logged",
//!       "kind": "streak",
//!       "repeat": "once",
//!       "rule_version": "r-0123456789ab",
//!       "reward": {"kind": "physical", "code": "PREGNANCY-PILLOW", "description": "A pregnancy pillow"},
//!       "active": true,
//!       "status": "in_progress",
//!       "current": 3, "needed": 5, "remaining": 2,
//!       "counted_days": ["2026-03-02", "2026-03-03", "2026-03-04"],
//!       "grace_covered_days": [],
//!       "missed_days": [],
//!       "next_deadline": "2026-03-06T00:00:00-05:00",
//!       "time_zone": "America/New_York",
//!       "awards": []
//!     }
//!   ]
//! }
//! ```
//!
//! `status` is `achieved` (awarded for the current period), `in_progress` or
//! `not_started`. `current`/`needed`/`remaining` count days of the live
//! streak (streak rules), events in the window (count rules; these also have
//! `"distinct_days": {"current": 2, "needed": 5}`) or 0/1 (once rules).
//! `next_deadline` is when the next qualifying event must have happened to
//! keep the progress (null when nothing is at stake), in the user's zone
//! (`time_zone`: the user's last known zone, else the program's). `awards`
//! holds `{"period", "award_id", "achieved_local_date", "rule_version"}` of
//! each award decided for that program incentive (`rule_version`: the one
//! that decided it).
//!
//! `GET /v1/users/{user}/incentives/{incentive}`: `{incentive}` is a catalog
//! id; the entries (as above) of the employer's programs that attach it,
//! usually one, each with an `explanation`; 404 when none does:
//!
//! ```json
//! {
//!   "user_id": "u-1", "employer_id": "acme", "as_of": "2026-03-04T23:00:00Z",
//!   "incentive_id": "data-logged-5-consecutive-days",
//!   "incentives": [{
//!     "program_id": "acme-wellness-2026", "...": "the fields of the list above",
//!     "explanation": {
//!       "rule": "5 consecutive local days with a data log, 1 grace day, days start at 03:00; once per program",
//!       "summary": "3 of 5 consecutive days counted (1 missed day covered by grace: 2026-03-03); 2 more days needed. The next qualifying event must come before 2026-03-06T03:00:00-05:00 (America/New_York).",
//!       "counted_days": ["2026-03-01", "2026-03-02", "2026-03-04"],
//!       "grace_covered_days": ["2026-03-03"],
//!       "missed_days": [],
//!       "rule_version": "r-0123456789ab",
//!       "award_versions": [{"period": "program", "award_id": "…", "rule_version": "r-…", "is_current": true}],
//!       "next_deadline": "2026-03-06T03:00:00-05:00"
//!     }
//!   }]
//! }
//! ```
//!
//! `rule_version` is the version that applies now; `award_versions` the
//! versions that decided past awards (`is_current`: the same as now).
//!
//! `GET /v1/users/{user}/awards`: every award decided for the user (both
//! event kinds), oldest first, 200:
//!
//! ```json
//! {
//!   "user_id": "u-1", "employer_id": "acme",
//!   "awards": [{
//!     "program_id": "acme-wellness-2026", "incentive_id": "birth-reported",
//!     "event": "birth_reported", "period": "program",
//!     "award_id": "5b0c…", "achieved_local_date": "2026-04-02", "rule_version": "r-…"
//!   }]
//! }
//! ```
//!
//! Errors: `{"error": "unauthorized" | "not_found" | "unavailable", "detail":
//! "..."}` with 401, 404 (unknown user, a user of another employer, or an
//! incentive the employer's programs do not attach) or 503 with
//! `Retry-After` (Redis does not answer, or the partition counts are not
//! known yet).
//!
//! `GET /healthz` 200 while the process runs; `GET /readyz` 200 while Redis
//! answers and the broker answers metadata requests (and the partition
//! counts are known), else 503. `GET /metrics`:
//! `incentives_api_requests_total{route,status}`,
//! `incentives_api_request_seconds{route}` and
//! `incentives_api_redis_seconds`.
//!
//! A user's employer is the `emp` of their state. Each event kind's hash has
//! its own; when they differ (the user changed employer), the client sees
//! the employer of the most recently updated hash among those of its
//! employers, and only that employer's hashes.

pub mod bench;
pub mod view;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use redis::aio::ConnectionManager;
use serde_json::json;
use tracing::{info, warn};

use crate::config::Config;
use crate::engine::UserState;
use crate::events::EventKind;
use crate::gateway::auth::{authenticate, Client};
use crate::partitioner::partition_for_key;
use crate::state::{live_state, Keys, Stored};
use crate::telemetry::{Dependency, Health};
use view::{VisibleUser, KINDS};

/// Every route: (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/users/{user}/incentives"),
    ("get", "/v1/users/{user}/incentives/{incentive}"),
    ("get", "/v1/users/{user}/awards"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

/// How often the input topics' partition counts are read again.
pub const PARTITION_REFRESH: Duration = Duration::from_secs(30);
/// How often Redis and the broker are probed for readiness.
const DEPENDENCY_CHECK: Duration = Duration::from_secs(1);

/// The wall clock the answers are computed at (tests pin it).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The read API's metrics.
pub struct ApiMetrics {
    pub registry: Registry,
    /// Requests by route and status code.
    pub requests: IntCounterVec,
    /// Time from request to response, by route.
    pub request_seconds: HistogramVec,
    /// The pipelined read of a user's hashes.
    pub redis_seconds: Histogram,
}

impl ApiMetrics {
    fn new() -> ApiMetrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "incentives_api_requests_total",
                "Read API requests by route and status",
            ),
            &["route", "status"],
        )
        .expect("static metric definition");
        let buckets = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
        ];
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "incentives_api_request_seconds",
                "Read API latency, request to response",
            )
            .buckets(buckets.clone()),
            &["route"],
        )
        .expect("static metric definition");
        let redis_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "incentives_api_redis_seconds",
                "Pipelined read of a user's state hashes",
            )
            .buckets(buckets),
        )
        .expect("static metric definition");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique metric names");
        registry
            .register(Box::new(request_seconds.clone()))
            .expect("unique metric names");
        registry
            .register(Box::new(redis_seconds.clone()))
            .expect("unique metric names");
        ApiMetrics {
            registry,
            requests,
            request_seconds,
            redis_seconds,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Everything a request handler needs.
pub struct ApiState {
    config: Arc<Config>,
    /// The programs answered from; swapped by a reload (SIGHUP or a changed
    /// catalog.toml / programs.toml), like the processor's.
    programs: std::sync::RwLock<Arc<crate::config::Programs>>,
    reload_requested: AtomicBool,
    clients: Vec<Client>,
    keys: Keys,
    redis_client: redis::Client,
    redis_config: redis::aio::ConnectionManagerConfig,
    /// Connected on first use (then re-connected by the manager), so a Redis
    /// that is down at start makes the API unready, not dead.
    redis: tokio::sync::OnceCell<ConnectionManager>,
    /// Partition counts of the input topics, by [`KINDS`] index; 0: unknown.
    partitions: [AtomicI32; 2],
    metadata: Arc<BaseConsumer>,
    clock: Clock,
    pub metrics: ApiMetrics,
    pub health: Arc<Health>,
}

impl ApiState {
    /// The state with the wall clock.
    pub fn new(config: Arc<Config>) -> Result<Arc<ApiState>, ApiError> {
        Self::with_clock(config, Arc::new(Utc::now))
    }

    /// The state with answers computed at `clock()` (progress and deadlines
    /// depend on today's date).
    pub fn with_clock(config: Arc<Config>, clock: Clock) -> Result<Arc<ApiState>, ApiError> {
        let s = &config.settings;
        let redis_client = redis::Client::open(s.redis.url.as_str())?;
        let redis_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(s.redis.command_timeout)
            .set_response_timeout(s.redis.command_timeout)
            .set_number_of_retries(1);
        let mut kafka = ClientConfig::new();
        kafka
            .set("bootstrap.servers", &s.kafka.brokers)
            .set("group.id", "incentives-api-metadata");
        for (k, v) in &s.kafka.librdkafka_options {
            kafka.set(k, v);
        }
        let metadata: BaseConsumer = kafka.create()?;
        let clients = s
            .gateway
            .clients
            .iter()
            .filter_map(Client::from_settings)
            .collect();
        let health = Arc::new(Health::default());
        // Unready until the first check has seen both answer.
        health.set_dependency(Dependency::Redis, false);
        health.set_dependency(Dependency::Kafka, false);
        health.set_ready(true);
        Ok(Arc::new(ApiState {
            keys: Keys::new(&s.redis.key_prefix),
            programs: std::sync::RwLock::new(Arc::new(config.programs.clone())),
            reload_requested: AtomicBool::new(false),
            config,
            clients,
            redis_client,
            redis_config,
            redis: tokio::sync::OnceCell::new(),
            partitions: [AtomicI32::new(0), AtomicI32::new(0)],
            metadata: Arc::new(metadata),
            clock,
            metrics: ApiMetrics::new(),
            health,
        }))
    }

    async fn conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        let manager = self
            .redis
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(
                    self.redis_client.clone(),
                    self.redis_config.clone(),
                )
            })
            .await?;
        Ok(manager.clone())
    }

    fn timeout(&self) -> Duration {
        self.config.settings.redis.command_timeout
    }

    async fn ping_redis(&self) -> bool {
        let ping = async {
            let mut c = self.conn().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        matches!(tokio::time::timeout(self.timeout(), ping).await, Ok(Ok(_)))
    }

    /// The known partition counts of the input topics, by [`KINDS`] index.
    pub fn partition_counts(&self) -> Option<[i32; 2]> {
        let counts = [
            self.partitions[0].load(Ordering::Relaxed),
            self.partitions[1].load(Ordering::Relaxed),
        ];
        counts.iter().all(|&n| n > 0).then_some(counts)
    }

    fn topic(&self, kind: EventKind) -> &str {
        let t = &self.config.settings.topics;
        match kind {
            EventKind::DataLogged => &t.data_logged,
            EventKind::BirthReported => &t.birth_reported,
        }
    }

    /// Reads the partition counts of both input topics; false when the
    /// broker did not answer or a topic is missing (logged on change).
    async fn refresh_partition_counts(&self, missing_logged: &AtomicBool) -> bool {
        let mut ok = true;
        for (i, kind) in KINDS.iter().enumerate() {
            let topic = self.topic(*kind).to_string();
            let consumer = self.metadata.clone();
            let brokers = self.config.settings.kafka.brokers.clone();
            let result = tokio::task::spawn_blocking(move || {
                crate::kafka::partition_count(&consumer, &brokers, &topic, Duration::from_secs(2))
            })
            .await;
            match result {
                Ok(Ok(n)) => {
                    let old = self.partitions[i].swap(n, Ordering::Relaxed);
                    if old != 0 && old != n {
                        warn!(topic = self.topic(*kind), old, new = n, "partition count changed: users move between partitions; see README (repartitioning)");
                    } else if old == 0 {
                        info!(topic = self.topic(*kind), partitions = n, "partition count");
                    }
                }
                Ok(Err(e @ crate::kafka::TopicError::Missing { .. })) => {
                    if !missing_logged.swap(true, Ordering::Relaxed) {
                        warn!(error = %e, "cannot answer: an input topic is missing");
                    }
                    ok = false;
                }
                Ok(Err(_)) | Err(_) => ok = false,
            }
        }
        if ok {
            missing_logged.store(false, Ordering::Relaxed);
        }
        ok
    }

    /// Whether the broker answers a metadata request (one input topic).
    async fn probe_broker(&self) -> bool {
        let consumer = self.metadata.clone();
        let topic = self.topic(EventKind::DataLogged).to_string();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(1))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// The user's stored states, one pipelined round trip: (kind, stored).
    async fn read_user(
        &self,
        user: &str,
        counts: [i32; 2],
    ) -> Result<Vec<(EventKind, Option<String>)>, redis::RedisError> {
        let mut pipe = redis::pipe();
        for (kind, n) in KINDS.iter().zip(counts) {
            pipe.cmd("HGET")
                .arg(
                    self.keys
                        .states(partition_for_key(user.as_bytes(), n), *kind),
                )
                .arg(user);
        }
        let read = async {
            let mut c = self.conn().await?;
            pipe.query_async::<(Option<String>, Option<String>)>(&mut c)
                .await
        };
        let started = Instant::now();
        let (dl, br) = match tokio::time::timeout(self.timeout(), read).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "timed out reading the user's state",
                )))
            }
        };
        self.metrics
            .redis_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(vec![
            (EventKind::DataLogged, dl),
            (EventKind::BirthReported, br),
        ])
    }

    /// Authenticates, reads the user and keeps what the client may see.
    async fn load(&self, headers: &HeaderMap, user: &str) -> Result<VisibleUser, Response> {
        let Some(client) = authenticate(&self.clients, headers) else {
            return Err(unauthorized());
        };
        let Some(counts) = self.partition_counts() else {
            return Err(self.unavailable("the input topics' partition counts are not known yet (is the broker up and are the topics created?)"));
        };
        let hashes = match self.read_user(user, counts).await {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "redis read failed");
                return Err(self.unavailable("Redis does not answer; retry"));
            }
        };
        let programs = self.programs();
        let now_s = chrono::Utc::now().timestamp();
        let states = hashes
            .into_iter()
            .filter_map(|(kind, stored)| stored.map(|s| (kind, s)))
            .filter_map(|(kind, stored)| match live_state(&stored, now_s) {
                Stored::Live(body) => Some((kind, body.to_string())),
                Stored::Expired => None, // idle past its TTL: gone
                Stored::Malformed => {
                    warn!(
                        user,
                        kind = kind.tag(),
                        "stored state without a readable expiry ignored"
                    );
                    None
                }
            })
            .map(|(kind, stored)| {
                let (state, malformed) = UserState::decode(&stored, &programs.codes);
                if malformed > 0 {
                    warn!(
                        user,
                        kind = kind.tag(),
                        malformed,
                        "malformed state fields ignored"
                    );
                }
                (kind, state)
            })
            .collect();
        // The client's employers decide; the same clients may publish for them.
        view::visible(states, |employer| client.may_publish_for(employer))
            .ok_or_else(|| not_found("no such user"))
    }

    fn unavailable(&self, detail: &str) -> Response {
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "unavailable", "detail": detail})),
        )
            .into_response();
        let secs = self
            .config
            .settings
            .gateway
            .retry_after
            .as_secs()
            .max(1)
            .to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

fn unauthorized() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "unauthorized", "detail": "missing or unknown API key: send Authorization: Bearer <key>"})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn not_found(detail: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "detail": detail})),
    )
        .into_response()
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The router with every route in [`ROUTES`].
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/users/{user}/incentives", get(list_incentives))
        .route(
            "/v1/users/{user}/incentives/{incentive}",
            get(one_incentive),
        )
        .route("/v1/users/{user}/awards", get(list_awards))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
impl ApiState {
    /// The programs in force.
    pub fn programs(&self) -> Arc<crate::config::Programs> {
        self.programs
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Asks for the catalog and programs to be re-read (SIGHUP).
    pub fn request_reload(&self) {
        self.reload_requested.store(true, Ordering::SeqCst);
    }

    /// Re-reads the catalog and programs; keeps the old ones when invalid.
    pub fn reload_programs(&self) -> bool {
        match self.config.reload_programs() {
            Ok(programs) => {
                info!(
                    program_incentives = programs.all().count(),
                    "read API: configuration reloaded"
                );
                match self.programs.write() {
                    Ok(mut p) => *p = Arc::new(programs),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(programs),
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "read API: configuration reload rejected; keeping the previous configuration");
                false
            }
        }
    }
}

/// Re-reads the programs on request or when their files change.
async fn watch_programs(state: Arc<ApiState>) {
    let modified = |state: &ApiState| -> Vec<Option<std::time::SystemTime>> {
        state
            .config
            .program_files()
            .iter()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    };
    let interval = state.config.settings.processor.config_poll_interval;
    let mut seen = modified(&state);
    let mut last_check = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut due = state.reload_requested.swap(false, Ordering::SeqCst);
        if !interval.is_zero() && last_check.elapsed() >= interval {
            last_check = Instant::now();
            let now = modified(&state);
            if now != seen {
                seen = now;
                due = true;
            }
        }
        if due {
            state.reload_programs();
        }
    }
}

pub async fn run(
    state: Arc<ApiState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let checker = tokio::spawn(watch_dependencies(state.clone()));
    let watcher = tokio::spawn(watch_programs(state.clone()));
    info!(listen = %listener.local_addr()?, "read API listening");
    let result = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    checker.abort();
    watcher.abort();
    state.health.set_ready(false);
    info!("read API stopped");
    result
}

/// Keeps readiness true only while Redis and the broker answer, and the
/// partition counts fresh (every [`PARTITION_REFRESH`], and at once while
/// unknown).
async fn watch_dependencies(state: Arc<ApiState>) {
    let missing_logged = AtomicBool::new(false);
    let mut last_refresh: Option<Instant> = None;
    loop {
        let redis_up = state.ping_redis().await;
        state.health.set_dependency(Dependency::Redis, redis_up);
        let due = state.partition_counts().is_none()
            || last_refresh.is_none_or(|t| t.elapsed() >= PARTITION_REFRESH);
        let broker_up = if due {
            let ok = state.refresh_partition_counts(&missing_logged).await;
            if ok {
                last_refresh = Some(Instant::now());
            }
            ok
        } else {
            state.probe_broker().await
        };
        state.health.set_dependency(
            Dependency::Kafka,
            broker_up && state.partition_counts().is_some(),
        );
        tokio::time::sleep(DEPENDENCY_CHECK).await;
    }
}

async fn observe(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn readyz(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<Arc<ApiState>>) -> String {
    TextEncoder::new()
        .encode_to_string(&state.metrics.registry.gather())
        .unwrap_or_default()
}

async fn list_incentives(
    State(state): State<Arc<ApiState>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    let visible = match state.load(&headers, &user).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = state.now();
    let entries = view::entries(&state.programs(), &visible, now);
    Json(json!({
        "user_id": user,
        "employer_id": visible.employer,
        "as_of": instant(now),
        "incentives": entries,
    }))
    .into_response()
}

async fn one_incentive(
    State(state): State<Arc<ApiState>>,
    Path((user, incentive)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let visible = match state.load(&headers, &user).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = state.now();
    let entries = view::explained(&state.programs(), &visible, &incentive, now);
    if entries.is_empty() {
        return not_found(&format!(
            "no program of employer {:?} attaches incentive {incentive:?}",
            visible.employer
        ));
    }
    Json(json!({
        "user_id": user,
        "employer_id": visible.employer,
        "as_of": instant(now),
        "incentive_id": incentive,
        "incentives": entries,
    }))
    .into_response()
}

async fn list_awards(
    State(state): State<Arc<ApiState>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    let visible = match state.load(&headers, &user).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    Json(json!({
        "user_id": user,
        "employer_id": visible.employer,
        "awards": view::awards(&visible),
    }))
    .into_response()
}
