//! `incentives gateway`: the HTTP way in for the app's backend. It checks
//! who is calling and for which employer, validates the event like the
//! processor would, publishes it through the [`Publisher`] and answers 202
//! only once the broker acknowledged it (503 with `Retry-After` otherwise).
//! Retries are safe: an event id or `Idempotency-Key` is published once within
//! `gateway.idempotency_window`, and a retry gets the original answer.
//!
//! Routes are listed once, in [`ROUTES`]; the checked-in OpenAPI document
//! (`openapi.json`, served at `/openapi.json`) is tested against that list.

pub mod auth;
mod idempotency;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::config::Config;
use crate::events::InputEvent;
use crate::json::{
    new_event_id, parse, parse_value, BirthReportedJson, DataLoggedJson, EventJson, FieldError,
};
use crate::publisher::Publisher;
use crate::telemetry::{Dependency, Health};

pub use auth::Client;
use idempotency::{Claim, Idempotency};

/// The checked-in OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route: (method, path). The router and the OpenAPI test use this.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/events/data-logged"),
    ("post", "/v1/events/birth-reported"),
    ("post", "/v1/events/batch"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// The gateway's metrics.
pub struct GatewayMetrics {
    pub registry: Registry,
    /// Requests by route and status code.
    pub requests: IntCounterVec,
    /// Time from handing an event to the producer to the broker's ack.
    pub publish_seconds: Histogram,
    /// Retries answered from the idempotency store.
    pub replays: IntCounterVec,
}

impl GatewayMetrics {
    fn new() -> GatewayMetrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "incentives_gateway_requests_total",
                "Requests by route and status",
            ),
            &["route", "status"],
        )
        .expect("static metric definition");
        let publish_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "incentives_gateway_publish_seconds",
                "Publish latency until the broker's ack",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("static metric definition");
        let replays = IntCounterVec::new(
            Opts::new(
                "incentives_gateway_idempotent_replays_total",
                "Retries answered from the idempotency store",
            ),
            &["route"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique metric names");
        registry
            .register(Box::new(publish_seconds.clone()))
            .expect("unique metric names");
        registry
            .register(Box::new(replays.clone()))
            .expect("unique metric names");
        GatewayMetrics {
            registry,
            requests,
            publish_seconds,
            replays,
        }
    }
}

/// Everything a request handler needs.
pub struct AppState {
    config: Arc<Config>,
    publisher: Publisher,
    idempotency: Idempotency,
    clients: Vec<Client>,
    pub metrics: GatewayMetrics,
    pub health: Arc<Health>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl AppState {
    /// Builds the state; Redis is connected lazily (and re-connected) by the
    /// connection manager, so a Redis that is down makes the gateway unready,
    /// not dead.
    pub async fn new(config: Arc<Config>) -> Result<Arc<AppState>, GatewayError> {
        let g = &config.settings.gateway;
        let publisher = Publisher::new(
            &config.settings.kafka,
            &config.settings.topics,
            g.publish_timeout,
        )?;
        let idempotency = Idempotency::new(&config.settings.redis, g)?;
        let clients = g.clients.iter().filter_map(Client::from_settings).collect();
        let health = Arc::new(Health::default());
        // Unready until the first dependency check has seen both answer.
        health.set_dependency(Dependency::Redis, false);
        health.set_dependency(Dependency::Kafka, false);
        health.set_ready(true);
        Ok(Arc::new(AppState {
            config,
            publisher,
            idempotency,
            clients,
            metrics: GatewayMetrics::new(),
            health,
        }))
    }
}

/// The router with every route in [`ROUTES`].
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.settings.gateway.max_body_bytes;
    Router::new()
        .route("/v1/events/data-logged", post(post_data_logged))
        .route("/v1/events/birth-reported", post(post_birth_reported))
        .route("/v1/events/batch", post(post_batch))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn run(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let checker = tokio::spawn(check_dependencies(state.clone()));
    info!(listen = %listener.local_addr()?, "gateway listening");
    let result = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    checker.abort();
    state.health.set_ready(false);
    state.publisher.flush(Duration::from_secs(5));
    info!("gateway stopped");
    result
}

/// Keeps readiness true only while Redis and the broker answer.
async fn check_dependencies(state: Arc<AppState>) {
    loop {
        let redis_up = state.idempotency.ping().await;
        state.health.set_dependency(Dependency::Redis, redis_up);
        let producer = state.publisher.producer().clone();
        let broker_up = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(1))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        state.health.set_dependency(Dependency::Kafka, broker_up);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
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
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> String {
    TextEncoder::new()
        .encode_to_string(&state.metrics.registry.gather())
        .unwrap_or_default()
}

/// An answer for one event: the status and its JSON body.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    body: Value,
    replayed: bool,
}

impl Answer {
    fn error(status: StatusCode, error: &str, detail: impl Into<String>) -> Answer {
        Answer {
            status,
            body: json!({"error": error, "detail": detail.into()}),
            replayed: false,
        }
    }
    fn invalid(e: FieldError) -> Answer {
        Answer {
            status: StatusCode::BAD_REQUEST,
            body: json!({"error": "invalid_field", "field": e.field, "detail": e.detail}),
            replayed: false,
        }
    }
    fn into_response(self, retry_after: Duration) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::CONFLICT {
            let secs = retry_after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
    /// The same answer as one item of a batch result.
    fn as_batch_item(&self, index: usize) -> Value {
        let mut item = json!({"index": index, "status": self.status.as_u16()});
        if let (Some(target), Some(fields)) = (item.as_object_mut(), self.body.as_object()) {
            for (k, v) in fields {
                target.insert(k.clone(), v.clone());
            }
        }
        item
    }
}

fn unauthorized() -> Response {
    let mut r = Answer::error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or unknown API key: send Authorization: Bearer <key>",
    )
    .into_response(Duration::ZERO);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The `Idempotency-Key` header, when present and usable.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, FieldError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .ok()
        .filter(|t| !t.is_empty() && t.len() <= 255 && t.bytes().all(|b| b.is_ascii_graphic()));
    match text {
        Some(t) => Ok(Some(t.to_string())),
        None => Err(FieldError {
            field: "Idempotency-Key".into(),
            detail: "must be 1 to 255 visible ASCII characters".into(),
        }),
    }
}

async fn post_data_logged(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    post_single(state, headers, body, |b| {
        parse::<DataLoggedJson>(b).map(EventJson::DataLogged)
    })
    .await
}

async fn post_birth_reported(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    post_single(state, headers, body, |b| {
        parse::<BirthReportedJson>(b).map(EventJson::BirthReported)
    })
    .await
}

async fn post_single(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Bytes,
    parse_body: impl FnOnce(&[u8]) -> Result<EventJson, FieldError>,
) -> Response {
    let retry_after = state.config.settings.gateway.retry_after;
    let Some(client) = auth::authenticate(&state.clients, &headers) else {
        return unauthorized();
    };
    let header_key = match idempotency_header(&headers) {
        Ok(k) => k,
        Err(e) => return Answer::invalid(e).into_response(retry_after),
    };
    let parsed = match parse_body(&body) {
        Ok(p) => p,
        Err(e) => return Answer::invalid(e).into_response(retry_after),
    };
    let answer = handle_event(&state, client, parsed, header_key).await;
    answer.into_response(retry_after)
}

/// Checks, validates and publishes one parsed event (single or batch item).
async fn handle_event(
    state: &AppState,
    client: &Client,
    parsed: EventJson,
    header_key: Option<String>,
) -> Answer {
    let employer = match &parsed {
        EventJson::DataLogged(e) => &e.employer_id,
        EventJson::BirthReported(e) => &e.employer_id,
    };
    if !client.may_publish_for(employer) {
        return Answer::error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "client {} may not publish for employer_id {employer:?}",
                client.id
            ),
        );
    }
    // With only an Idempotency-Key, the event id derives from it, so a retry
    // after a 503 (which may have been stored after all) carries the same id
    // and the processor recognises the duplicate.
    let derived_id = |key: &str| {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}\u{1f}{key}", client.id).as_bytes(),
        )
        .to_string()
    };
    let key = header_key
        .clone()
        .or_else(|| parsed.event_id().map(str::to_string));
    let new_id = || match &header_key {
        Some(k) => derived_id(k),
        None => new_event_id(),
    };
    let event = match parsed.into_event(new_id) {
        Ok(e) => e,
        Err(e) => return Answer::invalid(e),
    };
    let skew = state.config.settings.processor.max_clock_skew;
    let ahead_ms = event.event_time().timestamp_millis() - Utc::now().timestamp_millis();
    if ahead_ms > skew.as_millis() as i64 {
        return Answer::invalid(FieldError {
            field: "event_time".into(),
            detail: format!(
                "is {}s in the future; at most {}s of clock skew is allowed",
                ahead_ms / 1000,
                skew.as_secs()
            ),
        });
    }
    let Some(key) = key else {
        return publish(state, &event).await;
    };
    match state.idempotency.claim(&client.id, &key).await {
        Ok(Claim::New) => {
            let answer = publish(state, &event).await;
            state
                .idempotency
                .settle(&client.id, &key, answer.status, &answer.body)
                .await;
            answer
        }
        Ok(Claim::Done { status, body }) => {
            state.metrics.replays.with_label_values(&["event"]).inc();
            Answer {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED),
                body,
                replayed: true,
            }
        }
        Ok(Claim::InProgress) => Answer::error(
            StatusCode::CONFLICT,
            "in_progress",
            format!("a request with key {key:?} is being published; retry"),
        ),
        Err(e) => {
            warn!(error = %e, "idempotency store unavailable");
            Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_stored",
                "the idempotency store (Redis) is unavailable; nothing was published, retry",
            )
        }
    }
}

async fn publish(state: &AppState, event: &InputEvent) -> Answer {
    let started = Instant::now();
    let result = state.publisher.publish(event).await;
    match result {
        Ok(acked) => {
            state
                .metrics
                .publish_seconds
                .observe(started.elapsed().as_secs_f64());
            Answer {
                status: StatusCode::ACCEPTED,
                body: json!({
                    "event_id": event.event_id(),
                    "topic": state.publisher.topic_for(event),
                    "partition": acked.partition,
                    "offset": acked.offset,
                }),
                replayed: false,
            }
        }
        Err(e) => {
            warn!(event_id = event.event_id(), error = %e, "event not acknowledged");
            let mut answer =
                Answer::error(StatusCode::SERVICE_UNAVAILABLE, "not_stored", e.to_string());
            // Retrying with this id lets the processor drop a late duplicate.
            answer.body["event_id"] = json!(event.event_id());
            answer
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    events: Vec<Value>,
}

async fn post_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let retry_after = state.config.settings.gateway.retry_after;
    let Some(client) = auth::authenticate(&state.clients, &headers) else {
        return unauthorized();
    };
    let batch: BatchBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return Answer::invalid(e).into_response(retry_after),
    };
    let max = state.config.settings.gateway.max_batch_events;
    if batch.events.is_empty() || batch.events.len() > max {
        let detail = format!("must hold 1 to {max} events, has {}", batch.events.len());
        return Answer::invalid(FieldError {
            field: "events".into(),
            detail,
        })
        .into_response(retry_after);
    }
    let answers =
        futures::future::join_all(batch.events.into_iter().enumerate().map(|(i, item)| {
            let state = &state;
            async move {
                match parse_value::<EventJson>(item) {
                    Ok(parsed) => handle_event(state, client, parsed, None).await,
                    Err(mut e) => {
                        e.field = if e.field == "body" {
                            format!("events[{i}]")
                        } else {
                            format!("events[{i}].{}", e.field)
                        };
                        Answer::invalid(e)
                    }
                }
            }
        }))
        .await;
    let results: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| a.as_batch_item(i))
        .collect();
    let mut response = (StatusCode::OK, Json(json!({ "results": results }))).into_response();
    let retryable = answers.iter().any(|a| {
        matches!(
            a.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT
        )
    });
    if retryable {
        if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

/// The employers of each configured client, for `config check`.
pub fn client_summary(config: &Config) -> Vec<(String, HashSet<String>)> {
    config
        .settings
        .gateway
        .clients
        .iter()
        .map(|c| (c.id.clone(), c.employers.iter().cloned().collect()))
        .collect()
}
