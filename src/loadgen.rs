//! Load generation for `incentives produce`: sends events at a steady target
//! rate with at most N in flight, measures each event's latency from send to
//! acknowledgement, and sums it up in a [`Report`].
//!
//! Two [`Sink`]s: the broker, through the [`Publisher`] (acknowledged = the
//! broker's ack, acks=all), and the HTTP gateway ([`GatewaySink`];
//! acknowledged = `202 Accepted`, which the gateway answers only after the
//! broker's ack). The [`Pacer`] is a token bucket; [`Latencies`] keeps every
//! sample and answers exact (nearest-rank) percentiles.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::events::InputEvent;
use crate::json::{BirthReportedJson, DataLoggedJson, EventJson};
use crate::publisher::{PublishError, Publisher};

/// How much unused rate the [`Pacer`] lets accumulate: after a stall, one
/// event plus at most this much of the schedule is sent back to back. It also
/// absorbs timers that fire late (tokio's have millisecond resolution).
pub const PACER_BURST: Duration = Duration::from_millis(20);

/// A token bucket (in its "virtual schedule" form): `rate` events per
/// second, refilled continuously, holding one event plus at most
/// [`PACER_BURST`] worth. Events are due on a steady schedule, not in bursts;
/// a sender that fell behind (a timer that fired late, a full in-flight
/// window) catches up by at most the burst.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: Option<f64>,
    /// When the next event is due (the bucket's "theoretical arrival time").
    next: Instant,
    burst: Duration,
}

impl Pacer {
    /// `rate` in events per second; `None`, zero, negative or not finite
    /// means unlimited.
    pub fn new(rate: Option<f64>, start: Instant) -> Pacer {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        Pacer {
            rate,
            next: start,
            burst: PACER_BURST,
        }
    }

    /// The target rate, when limited.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Takes `n` events' worth of tokens and returns when they may be sent:
    /// `now` when the bucket holds enough, else the instant it will.
    pub fn reserve(&mut self, now: Instant, n: u64) -> Instant {
        let Some(rate) = self.rate else { return now };
        let floor = now.checked_sub(self.burst).unwrap_or(now);
        if self.next < floor {
            self.next = floor;
        }
        let at = self.next.max(now);
        self.next += Duration::from_secs_f64(n as f64 / rate);
        at
    }
}

/// Latency samples; percentiles by nearest rank over all of them (exact, a
/// few bytes per event).
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    nanos: Vec<u64>,
    sorted: bool,
}

/// The usual figures of a set of latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// Records `n` samples of `d` (the events of one batch request).
    pub fn record_n(&mut self, d: Duration, n: usize) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.extend(std::iter::repeat_n(v, n));
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.nanos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nanos.is_empty()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.nanos.sort_unstable();
            self.sorted = true;
        }
    }

    /// The smallest sample with at least `p` percent of the samples at or
    /// below it (nearest rank); `None` without samples.
    pub fn percentile(&mut self, p: f64) -> Option<Duration> {
        self.sort();
        let n = self.nanos.len();
        if n == 0 {
            return None;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
        self.nanos
            .get(rank.clamp(1, n) - 1)
            .map(|v| Duration::from_nanos(*v))
    }

    pub fn summary(&mut self) -> LatencySummary {
        let at = |s: &mut Self, p| s.percentile(p).unwrap_or_default();
        let count = self.len();
        let mean = if count == 0 {
            Duration::ZERO
        } else {
            let sum: u128 = self.nanos.iter().map(|v| u128::from(*v)).sum();
            Duration::from_nanos(u64::try_from(sum / count as u128).unwrap_or(u64::MAX))
        };
        LatencySummary {
            count,
            p50: at(self, 50.0),
            p90: at(self, 90.0),
            p99: at(self, 99.0),
            max: at(self, 100.0),
            mean,
        }
    }
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and acknowledged. `replayed`: the gateway answered from its
    /// idempotency store (the event id was sent before; nothing was published).
    Acked { replayed: bool },
    /// Not acknowledged: a short kind to count by (`http 503`, `timeout`,
    /// `broker`, ...) and a detail (an error body, a message).
    Failed { kind: String, detail: String },
}

impl Outcome {
    fn failed(kind: impl Into<String>, detail: impl Into<String>) -> Outcome {
        Outcome::Failed {
            kind: kind.into(),
            detail: detail.into(),
        }
    }
}

/// Where events go. `send` returns one outcome per event, in order.
pub trait Sink: Sync {
    /// For summaries: "broker 127.0.0.1:19092", "gateway http://...".
    fn describe(&self) -> String;
    /// Events per send (1, or the gateway batch size).
    fn batch_size(&self) -> usize {
        1
    }
    fn send<'a>(&'a self, events: &'a [InputEvent]) -> BoxFuture<'a, Vec<Outcome>>;
}

/// The broker, through the [`Publisher`] (acknowledged = the broker's ack).
pub struct BrokerSink {
    pub publisher: Publisher,
    pub brokers: String,
}

impl BrokerSink {
    /// Connects to the broker and fetches the metadata of `topics`, so that a
    /// broker that is down (or a missing topic, on a broker that does not
    /// create topics on demand) fails the run at once, and the first events
    /// do not wait for the connection. Blocking.
    pub fn connect(&self, topics: &[&str], timeout: Duration) -> Result<(), String> {
        use rdkafka::producer::Producer;
        let client = self.publisher.producer().client();
        for topic in topics {
            let metadata = client
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| format!("cannot reach the broker at {}: {e}", self.brokers))?;
            let found = metadata.topics().iter().find(|t| t.name() == *topic);
            match found {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
                _ => {
                    return Err(format!(
                        "topic {topic:?} does not exist at {} (scripts/infra-up.sh creates it)",
                        self.brokers
                    ))
                }
            }
        }
        Ok(())
    }
}

impl Sink for BrokerSink {
    fn describe(&self) -> String {
        format!("broker {}", self.brokers)
    }

    fn send<'a>(&'a self, events: &'a [InputEvent]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                out.push(match self.publisher.publish(e).await {
                    Ok(_) => Outcome::Acked { replayed: false },
                    Err(e @ PublishError::Timeout(_)) => {
                        Outcome::failed("broker timeout", e.to_string())
                    }
                    Err(e @ PublishError::Broker(_)) => Outcome::failed("broker", e.to_string()),
                });
            }
            out
        })
    }
}

/// The HTTP gateway: `POST /v1/events/data-logged` and `/birth-reported`
/// (one event per request, `202` = acknowledged), or `POST /v1/events/batch`
/// with per-item statuses. Events always carry their `event_id`, so a retry
/// is idempotent. One connection-pooling client.
pub struct GatewaySink {
    client: reqwest::Client,
    base: String,
    authorization: String,
    batch: Option<usize>,
}

#[derive(Serialize)]
struct BatchBody<'a> {
    events: &'a [EventJson],
}

#[derive(Deserialize)]
struct BatchAnswer {
    results: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    index: usize,
    status: u16,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl GatewaySink {
    /// `base_url`: `http://host:port` (no TLS in this build). `batch`: send
    /// `POST /v1/events/batch` with this many events per request. `timeout`
    /// bounds each request; `pool` is the number of idle connections kept.
    pub fn new(
        base_url: &str,
        api_key: &str,
        batch: Option<usize>,
        timeout: Duration,
        pool: usize,
    ) -> Result<GatewaySink, String> {
        let url =
            reqwest::Url::parse(base_url).map_err(|e| format!("--gateway {base_url:?}: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "--gateway {base_url:?}: only http:// is supported (this build has no TLS; put a TLS-terminating proxy in front for https)"
            ));
        }
        if api_key.is_empty() {
            return Err("--gateway needs an API key: --api-key or INCENTIVES_API_KEY".into());
        }
        if batch == Some(0) {
            return Err("--batch must be at least 1".into());
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(GatewaySink {
            client,
            base: base_url.trim_end_matches('/').to_string(),
            authorization: format!("Bearer {api_key}"),
            batch,
        })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
    }

    async fn send_one(&self, event: &InputEvent) -> Outcome {
        let request = match to_json(event) {
            EventJson::DataLogged(j) => self.post("/v1/events/data-logged").json(&j),
            EventJson::BirthReported(j) => self.post("/v1/events/birth-reported").json(&j),
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return transport_failure(&e),
        };
        let status = response.status();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes() == b"true");
        // Read the body in every case, so the connection goes back to the pool.
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return transport_failure(&e),
        };
        if status == reqwest::StatusCode::ACCEPTED {
            Outcome::Acked { replayed }
        } else {
            Outcome::failed(
                format!("http {}", status.as_u16()),
                shorten(&String::from_utf8_lossy(&body)),
            )
        }
    }

    async fn send_batch(&self, events: &[InputEvent]) -> Vec<Outcome> {
        let items: Vec<EventJson> = events.iter().map(to_json).collect();
        let all = |o: Outcome| vec![o; events.len()];
        let response = match self
            .post("/v1/events/batch")
            .json(&BatchBody { events: &items })
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return all(transport_failure(&e)),
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return all(transport_failure(&e)),
        };
        if status != reqwest::StatusCode::OK {
            return all(Outcome::failed(
                format!("http {}", status.as_u16()),
                shorten(&String::from_utf8_lossy(&body)),
            ));
        }
        let answer: BatchAnswer = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => {
                return all(Outcome::failed(
                    "bad batch answer",
                    format!("{e}: {}", shorten(&String::from_utf8_lossy(&body))),
                ))
            }
        };
        let mut out = all(Outcome::failed(
            "bad batch answer",
            "no result for this item",
        ));
        for item in answer.results {
            let Some(slot) = out.get_mut(item.index) else {
                continue;
            };
            *slot = if item.status == 202 {
                Outcome::Acked { replayed: false }
            } else {
                Outcome::failed(
                    format!("http {}", item.status),
                    shorten(&Value::Object(item.rest).to_string()),
                )
            };
        }
        out
    }
}

impl Sink for GatewaySink {
    fn describe(&self) -> String {
        match self.batch {
            Some(n) => format!("gateway {} (batches of {n})", self.base),
            None => format!("gateway {}", self.base),
        }
    }

    fn batch_size(&self) -> usize {
        self.batch.unwrap_or(1)
    }

    fn send<'a>(&'a self, events: &'a [InputEvent]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            if self.batch.is_some() {
                return self.send_batch(events).await;
            }
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                out.push(self.send_one(e).await);
            }
            out
        })
    }
}

fn transport_failure(e: &reqwest::Error) -> Outcome {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    Outcome::failed(kind, detail)
}

fn shorten(text: &str) -> String {
    const MAX: usize = 300;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// The JSON form of an event (the gateway's request body), with its event id.
pub fn to_json(event: &InputEvent) -> EventJson {
    match event {
        InputEvent::DataLogged(e) => EventJson::DataLogged(DataLoggedJson {
            event_id: Some(e.event_id.clone()),
            user_id: e.user_id.clone(),
            employer_id: e.employer_id.clone(),
            event_time: e.event_time,
            time_zone: e.time_zone.map(|tz| tz.name().to_string()),
            data_kinds: e.data_kinds.clone(),
        }),
        InputEvent::BirthReported(e) => EventJson::BirthReported(BirthReportedJson {
            event_id: Some(e.event_id.clone()),
            user_id: e.user_id.clone(),
            employer_id: e.employer_id.clone(),
            event_time: e.event_time,
            time_zone: e.time_zone.map(|tz| tz.name().to_string()),
            birth_date: e.birth_date,
        }),
    }
}

/// How to drive a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events per second; `None` = as fast as the sink and `concurrency` allow.
    pub rate: Option<f64>,
    /// Most events in flight (sent, not yet answered). A batch counts its
    /// events; one send is always allowed.
    pub concurrency: usize,
    /// How many failures to print (with their detail) as they happen.
    pub error_samples: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            rate: None,
            concurrency: 256,
            error_samples: 5,
        }
    }
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The sink, as [`Sink::describe`] says.
    pub sink: String,
    /// Events given to the run.
    pub events: usize,
    /// Acknowledged, in total and by event type.
    pub acked: u64,
    pub acked_by_type: BTreeMap<&'static str, u64>,
    /// Of the acknowledged, answered from the gateway's idempotency store.
    pub replayed: u64,
    pub failed: u64,
    pub failed_by_kind: BTreeMap<String, u64>,
    /// Not sent because the run was stopped.
    pub not_sent: u64,
    /// The first failures, as printed.
    pub error_samples: Vec<String>,
    /// From the first send to the last answer.
    pub elapsed: Duration,
    pub target_rate: Option<f64>,
    pub concurrency: usize,
    pub batch: usize,
    /// Latency of acknowledged events, from send to ack.
    pub latency: LatencySummary,
}

fn type_name(e: &InputEvent) -> &'static str {
    match e {
        InputEvent::DataLogged(_) => "data_logged",
        InputEvent::BirthReported(_) => "birth_reported",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Report {
    /// Acknowledged events per second.
    pub fn achieved_rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// One line: `produced N events (X data_logged, Y birth_reported) to
    /// SINK in T s: R events/s, F failed; latency p50 .. p90 .. p99 .. max ..`.
    pub fn summary_line(&self) -> String {
        let by = |t| self.acked_by_type.get(t).copied().unwrap_or(0);
        let target = match self.target_rate {
            Some(r) => format!(" (target {r:.0}/s)"),
            None => String::new(),
        };
        let failed = if self.failed_by_kind.is_empty() {
            String::new()
        } else {
            let kinds: Vec<String> = self
                .failed_by_kind
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            format!(" ({})", kinds.join(", "))
        };
        let l = &self.latency;
        let latency = if l.count == 0 {
            "no latency samples".to_string()
        } else {
            format!(
                "latency p50 {:.2}ms p90 {:.2}ms p99 {:.2}ms max {:.2}ms",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.max)
            )
        };
        format!(
            "produced {} events ({} data_logged, {} birth_reported) to {} in {:.2}s: {:.0} events/s{target}, {} failed{failed}; {latency}",
            self.acked,
            by("data_logged"),
            by("birth_reported"),
            self.sink,
            self.elapsed.as_secs_f64(),
            self.achieved_rate(),
            self.failed,
        )
    }

    /// Lines worth a reader's attention after the summary line.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.not_sent > 0 {
            notes.push(format!(
                "interrupted: {} events were not sent",
                self.not_sent
            ));
        }
        if self.replayed > 0 {
            notes.push(format!(
                "{} of the acknowledged events were answered from the gateway's idempotency store: their event ids \
                 were sent before (an earlier run with the same --seed or file?), so nothing was published for them \
                 and their latency is not a publish latency",
                self.replayed
            ));
        }
        if let Some(target) = self.target_rate {
            let complete = self.not_sent == 0 && self.failed == 0;
            if complete
                && self.elapsed >= Duration::from_secs(2)
                && self.achieved_rate() < 0.95 * target
            {
                notes.push(format!(
                    "the target rate of {target:.0}/s was not reached ({:.0}/s): the sink is saturated or \
                     --concurrency {} is too low for its latency",
                    self.achieved_rate(),
                    self.concurrency
                ));
            }
        }
        notes
    }

    /// The same figures as JSON (latencies in milliseconds).
    pub fn to_json(&self) -> Value {
        let l = &self.latency;
        json!({
            "sink": self.sink,
            "events": self.events,
            "sent": self.acked + self.failed,
            "acked": self.acked,
            "acked_by_type": self.acked_by_type,
            "replayed": self.replayed,
            "failed": self.failed,
            "failed_by_kind": self.failed_by_kind,
            "not_sent": self.not_sent,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "achieved_rate": self.achieved_rate(),
            "target_rate": self.target_rate,
            "concurrency": self.concurrency,
            "batch": self.batch,
            "latency_ms": {
                "count": l.count,
                "p50": ms(l.p50),
                "p90": ms(l.p90),
                "p99": ms(l.p99),
                "max": ms(l.max),
                "mean": ms(l.mean),
            },
            "error_samples": self.error_samples,
        })
    }
}

/// A progress bar on stderr, counting answered events; hidden when `quiet`
/// or when stderr is not a terminal.
pub fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template =
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({rate}, eta {eta}) {msg}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        ));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A finished send: its events, their outcomes, the time from send to answer.
type Done<'a> = (&'a [InputEvent], Vec<Outcome>, Duration);

/// Sends `events` to `sink` (in sends of [`Sink::batch_size`]), paced by
/// `options.rate`, with at most `options.concurrency` events in flight,
/// until all are answered or `stop` resolves (then the events in flight are
/// awaited and the rest counted as not sent). `progress` counts answered
/// events; the first failures are printed above it.
pub async fn run(
    sink: &dyn Sink,
    events: &[InputEvent],
    options: &Options,
    progress: &ProgressBar,
    stop: impl Future<Output = ()>,
) -> Report {
    let batch = sink.batch_size().max(1);
    let concurrency = options.concurrency.max(1);
    let mut report = Report {
        sink: sink.describe(),
        events: events.len(),
        concurrency,
        batch,
        ..Report::default()
    };
    let mut latencies = Latencies::default();
    let started = Instant::now();
    let mut pacer = Pacer::new(options.rate, started);
    report.target_rate = pacer.rate();
    let mut in_flight = FuturesUnordered::new();
    let mut in_flight_events = 0usize;
    let mut stopped = false;
    tokio::pin!(stop);

    let mut record = |report: &mut Report, (chunk, outcomes, latency): Done| {
        let mut acked = 0;
        for (event, outcome) in chunk.iter().zip(outcomes) {
            match outcome {
                Outcome::Acked { replayed } => {
                    acked += 1;
                    report.acked += 1;
                    *report.acked_by_type.entry(type_name(event)).or_insert(0) += 1;
                    if replayed {
                        report.replayed += 1;
                    }
                }
                Outcome::Failed { kind, detail } => {
                    report.failed += 1;
                    if report.error_samples.len() < options.error_samples {
                        let line = format!("event {}: {kind}: {detail}", event.event_id());
                        progress.suspend(|| eprintln!("error: {line}"));
                        report.error_samples.push(line);
                        if report.error_samples.len() == options.error_samples {
                            progress
                                .suspend(|| eprintln!("(further errors are counted, not printed)"));
                        }
                    }
                    *report.failed_by_kind.entry(kind).or_insert(0) += 1;
                }
            }
        }
        latencies.record_n(latency, acked);
        progress.inc(chunk.len() as u64);
        if report.failed > 0 {
            progress.set_message(format!("{} failed", report.failed));
        }
    };

    let mut chunks = events.chunks(batch);
    let mut pending = chunks.next();
    while let Some(chunk) = pending {
        // (`stopped` is false here: it ends the loop below.)
        if futures::poll!(stop.as_mut()).is_ready() {
            break;
        }
        // Room in the window?
        while in_flight_events + chunk.len() > concurrency && !in_flight.is_empty() && !stopped {
            tokio::select! {
                biased;
                _ = &mut stop, if !stopped => stopped = true,
                Some(done) = in_flight.next() => {
                    let done: Done = done;
                    in_flight_events -= done.0.len();
                    record(&mut report, done);
                }
            }
        }
        // Its turn in the schedule? Answers are recorded while waiting.
        let at = pacer.reserve(Instant::now(), chunk.len() as u64);
        if at > Instant::now() && !stopped {
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(at));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stop, if !stopped => { stopped = true; break }
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                        let done: Done = done;
                        in_flight_events -= done.0.len();
                        record(&mut report, done);
                    }
                    _ = &mut sleep => break,
                }
            }
        }
        if stopped {
            break;
        }
        in_flight_events += chunk.len();
        in_flight.push(async move {
            let sent = Instant::now();
            let outcomes = sink.send(chunk).await;
            (chunk, outcomes, sent.elapsed())
        });
        pending = chunks.next();
    }
    let unsent: usize = pending.map(<[InputEvent]>::len).unwrap_or(0)
        + chunks.map(<[InputEvent]>::len).sum::<usize>();
    report.not_sent = unsent as u64;
    while let Some(done) = in_flight.next().await {
        record(&mut report, done);
    }
    report.elapsed = started.elapsed();
    report.latency = latencies.summary();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use chrono::{TimeZone, Utc};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives the pacer like `run` does, with a simulated clock: each send
    /// happens at the instant the pacer names, or later when the sender is late.
    fn simulate(
        pacer: &mut Pacer,
        start: Instant,
        sends: usize,
        n: u64,
        late_by: impl Fn(usize) -> Duration,
    ) -> Vec<Duration> {
        let mut now = start;
        let mut at = Vec::new();
        for i in 0..sends {
            let due = pacer.reserve(now, n);
            now = due.max(now) + late_by(i);
            at.push(now - start);
        }
        at
    }

    #[test]
    fn unlimited_pacer_never_waits() {
        let t0 = Instant::now();
        for rate in [
            None,
            Some(0.0),
            Some(-5.0),
            Some(f64::NAN),
            Some(f64::INFINITY),
        ] {
            let mut p = Pacer::new(rate, t0);
            assert_eq!(p.rate(), None);
            for _ in 0..1000 {
                assert_eq!(p.reserve(t0, 100), t0);
            }
        }
    }

    #[test]
    fn pacer_spaces_events_evenly() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(1000.0), t0);
        let at = simulate(&mut p, t0, 1000, 1, |_| Duration::ZERO);
        // The first event goes at once, then one every millisecond: 1000 events in 999 ms.
        assert_eq!(at[0], Duration::ZERO);
        for (i, t) in at.iter().enumerate() {
            let want = ms(i as u64);
            assert!(
                t.abs_diff(want) < Duration::from_micros(5),
                "event {i} at {t:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn pacer_counts_batches_as_their_events() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(100.0), t0);
        // 50 events at 100/s: the next send is due half a second later.
        assert_eq!(p.reserve(t0, 50), t0);
        let next = p.reserve(t0, 50);
        assert!(
            (next - t0).abs_diff(ms(500)) < Duration::from_micros(1),
            "{:?}",
            next - t0
        );
        // 10 sends of 50 take 4.5 s (the first is free).
        let mut p = Pacer::new(Some(100.0), t0);
        let at = simulate(&mut p, t0, 10, 50, |_| Duration::ZERO);
        assert!(
            at[9].abs_diff(ms(4500)) < Duration::from_micros(5),
            "{:?}",
            at[9]
        );
    }

    #[test]
    fn a_late_sender_catches_up_by_at_most_the_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(10_000.0), t0);
        // Stalled for a second after the first event: only the burst (20 ms
        // = 200 events) goes back to back, not the 10,000 missed.
        assert_eq!(p.reserve(t0, 1), t0);
        let t1 = t0 + Duration::from_secs(1);
        let immediate = (0..10_000).take_while(|_| p.reserve(t1, 1) == t1).count();
        assert!((199..=201).contains(&immediate), "{immediate} sent at once");
        // Afterwards the steady pace resumes: 100 µs apart.
        let a = p.reserve(t1, 1);
        let b = p.reserve(t1, 1);
        assert!((b - a).abs_diff(Duration::from_micros(100)) < Duration::from_micros(1));
    }

    #[test]
    fn a_slightly_late_timer_does_not_lower_the_rate() {
        // Timers fire up to a millisecond late; at 5000/s the credit absorbs it,
        // so 10,000 events still take 2 s.
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(5000.0), t0);
        let at = simulate(&mut p, t0, 10_000, 1, |i| {
            if i % 7 == 0 {
                Duration::from_micros(900)
            } else {
                Duration::ZERO
            }
        });
        let total = *at.last().unwrap_or(&Duration::ZERO);
        assert!(total.abs_diff(ms(2000)) < ms(2), "{total:?}");
        // At a low rate the burst is one event: after a long pause, one goes at once,
        // the next (almost) an interval later.
        let mut p = Pacer::new(Some(2.0), t0);
        assert_eq!(p.reserve(t0, 1), t0);
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(p.reserve(t1, 1), t1);
        assert_eq!(p.reserve(t1, 1), t1 + ms(480));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut l = Latencies::default();
        assert_eq!(l.percentile(50.0), None);
        assert_eq!(l.summary(), LatencySummary::default());
        // 1..=100 ms, recorded out of order.
        for i in (1..=100).rev() {
            l.record(ms(i));
        }
        assert_eq!(l.percentile(50.0), Some(ms(50)));
        assert_eq!(l.percentile(90.0), Some(ms(90)));
        assert_eq!(l.percentile(99.0), Some(ms(99)));
        assert_eq!(l.percentile(99.9), Some(ms(100)));
        assert_eq!(l.percentile(100.0), Some(ms(100)));
        assert_eq!(l.percentile(0.0), Some(ms(1)));
        let s = l.summary();
        assert_eq!(
            (s.count, s.p50, s.p90, s.p99, s.max),
            (100, ms(50), ms(90), ms(99), ms(100))
        );
        assert_eq!(s.mean, Duration::from_micros(50_500));
        // Recording after a percentile re-sorts.
        l.record(Duration::ZERO);
        assert_eq!(l.percentile(0.0), Some(Duration::ZERO));
        assert_eq!(l.len(), 101);
    }

    #[test]
    fn percentiles_of_few_and_weighted_samples() {
        let mut l = Latencies::default();
        l.record(ms(7));
        assert_eq!(l.summary().p50, ms(7));
        assert_eq!(l.summary().p99, ms(7));
        // A batch of 98 fast events and two slow ones: p99 is slow, p90 fast.
        let mut l = Latencies::default();
        l.record_n(ms(1), 98);
        l.record_n(ms(40), 2);
        let s = l.summary();
        assert_eq!((s.p50, s.p90, s.p99, s.max), (ms(1), ms(1), ms(40), ms(40)));
    }

    fn sample_events(n: usize) -> Vec<InputEvent> {
        (0..n)
            .map(|i| {
                let at = Utc
                    .timestamp_millis_opt(1_772_000_000_000 + i as i64)
                    .single()
                    .unwrap_or_default();
                if i % 10 == 9 {
                    InputEvent::BirthReported(crate::events::BirthReported {
                        event_id: format!("e-{i}"),
                        user_id: format!("u-{}", i % 7),
                        employer_id: "acme".into(),
                        event_time: at,
                        time_zone: Some(chrono_tz::Europe::Berlin),
                        birth_date: at.date_naive(),
                    })
                } else {
                    InputEvent::DataLogged(crate::events::DataLogged {
                        event_id: format!("e-{i}"),
                        user_id: format!("u-{}", i % 7),
                        employer_id: "acme".into(),
                        event_time: at,
                        time_zone: None,
                        data_kinds: vec!["mood".into()],
                    })
                }
            })
            .collect()
    }

    /// Answers after a few yields; fails every event whose id ends in 3;
    /// remembers the most events it held at once.
    #[derive(Default)]
    struct FakeSink {
        batch: usize,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        seen: Mutex<Vec<String>>,
    }

    impl Sink for FakeSink {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn batch_size(&self) -> usize {
            self.batch
        }
        fn send<'a>(&'a self, events: &'a [InputEvent]) -> BoxFuture<'a, Vec<Outcome>> {
            Box::pin(async move {
                let now = self.in_flight.fetch_add(events.len(), Ordering::SeqCst) + events.len();
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                self.in_flight.fetch_sub(events.len(), Ordering::SeqCst);
                if let Ok(mut seen) = self.seen.lock() {
                    seen.extend(events.iter().map(|e| e.event_id().to_string()));
                }
                events
                    .iter()
                    .map(|e| {
                        if e.event_id().ends_with('3') {
                            Outcome::failed("http 503", "not stored")
                        } else {
                            Outcome::Acked {
                                replayed: e.event_id() == "e-0",
                            }
                        }
                    })
                    .collect()
            })
        }
    }

    #[tokio::test]
    async fn run_counts_outcomes_and_bounds_the_events_in_flight() {
        let events = sample_events(1000);
        for (batch, concurrency) in [(1, 16), (10, 50), (25, 10)] {
            let sink = FakeSink {
                batch,
                ..FakeSink::default()
            };
            let options = Options {
                rate: None,
                concurrency,
                error_samples: 2,
            };
            let report = run(
                &sink,
                &events,
                &options,
                &ProgressBar::hidden(),
                std::future::pending(),
            )
            .await;
            let failed = events
                .iter()
                .filter(|e| e.event_id().ends_with('3'))
                .count() as u64;
            assert_eq!(report.failed, failed);
            assert_eq!(report.acked, 1000 - failed);
            assert_eq!(report.failed_by_kind.get("http 503"), Some(&failed));
            assert_eq!(report.acked_by_type.get("birth_reported"), Some(&100));
            assert_eq!(
                report.acked_by_type.get("data_logged"),
                Some(&(900 - failed))
            );
            assert_eq!(report.replayed, 1);
            assert_eq!(report.error_samples.len(), 2);
            assert_eq!(report.latency.count as u64, report.acked);
            assert_eq!(report.not_sent, 0);
            let max = sink.max_in_flight.load(Ordering::SeqCst);
            // A batch larger than the window still goes, alone.
            assert!(
                max <= concurrency.max(batch),
                "batch {batch}: {max} in flight, limit {concurrency}"
            );
            assert!(
                max >= concurrency.min(events.len()) / 2,
                "batch {batch}: only {max} in flight"
            );
            let mut seen = sink.seen.lock().map(|s| s.clone()).unwrap_or_default();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 1000, "every event sent exactly once");
            let line = report.summary_line();
            assert!(
                line.starts_with(&format!("produced {} events (", report.acked)),
                "{line}"
            );
            assert!(line.contains("failed (http 503: "), "{line}");
            let json = report.to_json();
            assert_eq!(json["sent"], 1000);
            assert_eq!(json["failed_by_kind"]["http 503"], failed);
        }
    }

    /// Ready after being polled `n` times (a Ctrl-C in the middle of a run).
    struct ReadyAfter(usize);

    impl Future for ReadyAfter {
        type Output = ();
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.0 == 0 {
                return std::task::Poll::Ready(());
            }
            self.0 -= 1;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stopped_run_waits_for_the_events_in_flight() {
        let events = sample_events(100);
        let sink = FakeSink {
            batch: 1,
            ..FakeSink::default()
        };
        let options = Options {
            rate: None,
            concurrency: 8,
            error_samples: 0,
        };
        let report = run(
            &sink,
            &events,
            &options,
            &ProgressBar::hidden(),
            ReadyAfter(20),
        )
        .await;
        let answered = report.acked + report.failed;
        assert!(answered >= 8 && report.not_sent >= 50, "{report:?}");
        assert_eq!(answered + report.not_sent, 100);
        assert_eq!(
            sink.in_flight.load(Ordering::SeqCst),
            0,
            "nothing left in flight"
        );
        assert_eq!(
            sink.seen.lock().map(|s| s.len()).unwrap_or(0) as u64,
            answered
        );
        assert!(report.notes().iter().any(|n| n.starts_with("interrupted")));
        // Stopped before it began: nothing is sent.
        let report = run(
            &sink,
            &events,
            &options,
            &ProgressBar::hidden(),
            std::future::ready(()),
        )
        .await;
        assert_eq!((report.acked, report.failed, report.not_sent), (0, 0, 100));
    }

    #[test]
    fn json_bodies_carry_the_event_id_and_zone() {
        let events = sample_events(10);
        let v = serde_json::to_value(to_json(&events[9])).unwrap();
        assert_eq!(v["type"], "birth_reported");
        assert_eq!(v["event_id"], "e-9");
        assert_eq!(v["time_zone"], "Europe/Berlin");
        let back: EventJson = serde_json::from_value(v).unwrap();
        assert_eq!(back.into_event(|| unreachable!()).unwrap(), events[9]);
        let v = serde_json::to_value(to_json(&events[0])).unwrap();
        assert_eq!(v["type"], "data_logged");
        let back: EventJson = serde_json::from_value(v).unwrap();
        assert_eq!(back.into_event(|| unreachable!()).unwrap(), events[0]);
    }

    #[test]
    fn gateway_urls_are_checked() {
        let t = Duration::from_secs(1);
        assert!(GatewaySink::new("http://127.0.0.1:8080/", "k", None, t, 4).is_ok());
        let e = GatewaySink::new("https://gw.example", "k", None, t, 4)
            .err()
            .unwrap_or_default();
        assert!(e.contains("only http://"), "{e}");
        let e = GatewaySink::new("127.0.0.1:8080", "k", None, t, 4)
            .err()
            .unwrap_or_default();
        assert!(e.contains("--gateway"), "{e}");
        let e = GatewaySink::new("http://127.0.0.1:8080", "", None, t, 4)
            .err()
            .unwrap_or_default();
        assert!(e.contains("API key"), "{e}");
        let sink = GatewaySink::new("http://127.0.0.1:8080/", "k", Some(100), t, 4).unwrap();
        assert_eq!(sink.batch_size(), 100);
        assert_eq!(
            sink.describe(),
            "gateway http://127.0.0.1:8080 (batches of 100)"
        );
    }
}
