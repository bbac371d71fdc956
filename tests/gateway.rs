//! The HTTP gateway against the real broker and Redis: events in through
//! HTTP, awards out; authentication; validation; idempotent retries; and a
//! broker outage that must never turn into a 202 for an unstored event.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use incentives::config::{hash_api_key, ClientSettings, Config};
use incentives::processor::Shutdown;
use serde_json::{json, Value};

const ACME_KEY: &str = "acme-only-key";
const BOTH_KEY: &str = "both-employers-key";

/// A gateway on its own runtime and port, as `incentives gateway` runs it.
struct GatewayHandle {
    base: String,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<incentives::gateway::AppState>,
}

impl GatewayHandle {
    fn start(config: &Config) -> GatewayHandle {
        let mut config = config.clone();
        let g = &mut config.settings.gateway;
        g.clients = vec![
            ClientSettings {
                id: "acme-app".into(),
                api_key_sha256: hash_api_key(ACME_KEY),
                employers: vec!["acme".into()],
            },
            ClientSettings {
                id: "both-app".into(),
                api_key_sha256: hash_api_key(BOTH_KEY),
                employers: vec!["acme".into(), "globex".into()],
            },
        ];
        g.max_body_bytes = 4096;
        g.max_batch_events = 5;
        g.publish_timeout = Duration::from_secs(2);
        let config = Arc::new(config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = runtime
            .block_on(incentives::gateway::AppState::new(config))
            .unwrap();
        let shutdown = Shutdown::default();
        let (s, st) = (shutdown.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            runtime
                .block_on(incentives::gateway::run(st, listener, async move {
                    while !s.is_triggered() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }))
                .unwrap();
        });
        GatewayHandle {
            base,
            shutdown,
            thread: Some(thread),
            state,
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.state.health.is_ready() {
            assert!(Instant::now() < deadline, "gateway not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

fn post(
    env: &TestEnv,
    gw: &GatewayHandle,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    env.runtime.block_on(async {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", gw.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        for (h, v) in headers {
            req = req.header(*h, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    })
}

fn get(env: &TestEnv, gw: &GatewayHandle, path: &str) -> (u16, String) {
    env.runtime.block_on(async {
        let resp = reqwest::get(format!("{}{path}", gw.base)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

fn data_logged(user: &str, employer: &str, at: &str, event_id: Option<&str>) -> Value {
    let mut v = json!({"user_id": user, "employer_id": employer, "event_time": at, "time_zone": "America/New_York", "data_kinds": ["mood"]});
    if let Some(id) = event_id {
        v["event_id"] = json!(id);
    }
    v
}

#[test]
fn events_through_the_gateway_become_awards() {
    let env = TestEnv::new("gw-e2e", 3);
    let gw = GatewayHandle::start(&env.config);
    let p = env.start_processor();
    for d in 1..=5 {
        let body = data_logged("gw-user", "acme", &march(d), Some(&format!("gw-{d}")));
        let r = post(
            &env,
            &gw,
            "/v1/events/data-logged",
            Some(ACME_KEY),
            &[],
            &body.to_string(),
        );
        assert_eq!(r.status, 202, "{:?}", r.body);
        assert_eq!(r.body["event_id"], format!("gw-{d}"));
        assert_eq!(
            r.body["topic"],
            env.config.settings.topics.data_logged.as_str()
        );
        assert_eq!(
            r.body["partition"],
            incentives::partitioner::partition_for_key(b"gw-user", env.partitions),
            "murmur2 placement"
        );
    }
    let birth = json!({"user_id": "gw-mother", "employer_id": "acme", "event_time": "2026-04-02T10:00:00Z", "birth_date": "2026-04-01"});
    let r = post(
        &env,
        &gw,
        "/v1/events/birth-reported",
        Some(ACME_KEY),
        &[],
        &birth.to_string(),
    );
    assert_eq!(r.status, 202, "{:?}", r.body);
    let generated = r.body["event_id"].as_str().unwrap();
    assert_eq!(
        uuid::Uuid::parse_str(generated).unwrap().get_version_num(),
        7,
        "a generated event id is a UUIDv7"
    );

    let awards = env.wait_for_awards(2, Duration::from_secs(60));
    let users: BTreeSet<&str> = awards.iter().map(|a| a.user_id.as_str()).collect();
    assert_eq!(users, BTreeSet::from(["gw-mother", "gw-user"]));
    assert_eq!(
        awards
            .iter()
            .find(|a| a.user_id == "gw-mother")
            .unwrap()
            .source
            .event_id,
        generated
    );

    let (status, metrics) = get(&env, &gw, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "incentives_gateway_requests_total{route=\"/v1/events/data-logged\",status=\"202\"} 5"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("incentives_gateway_publish_seconds_count 6"),
        "{metrics}"
    );
    assert_eq!(get(&env, &gw, "/healthz").0, 200);
    assert_eq!(get(&env, &gw, "/readyz").0, 200);
    let (status, doc) = get(&env, &gw, "/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(doc, incentives::gateway::OPENAPI);
    p.stop();
}

#[test]
fn keys_and_employers_are_checked() {
    let env = TestEnv::new("gw-auth", 1);
    let gw = GatewayHandle::start(&env.config);
    let body = data_logged("u", "globex", &march(1), Some("auth-1")).to_string();
    let r = post(&env, &gw, "/v1/events/data-logged", None, &[], &body);
    assert_eq!(r.status, 401);
    assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
    let r = post(
        &env,
        &gw,
        "/v1/events/data-logged",
        Some("not-a-key"),
        &[],
        &body,
    );
    assert_eq!(r.status, 401);
    let r = post(
        &env,
        &gw,
        "/v1/events/data-logged",
        Some(ACME_KEY),
        &[],
        &body,
    );
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("globex"));
    let r = post(
        &env,
        &gw,
        "/v1/events/data-logged",
        Some(BOTH_KEY),
        &[],
        &body,
    );
    assert_eq!(r.status, 202, "{:?}", r.body);
    let records = env.read_topic(
        &env.config.settings.topics.data_logged,
        Duration::from_secs(1),
    );
    assert_eq!(
        records.len(),
        1,
        "only the authorised request was published"
    );
}

#[test]
fn invalid_requests_get_400_naming_the_field_and_413_when_too_big() {
    let env = TestEnv::new("gw-400", 1);
    let gw = GatewayHandle::start(&env.config);
    let path = "/v1/events/data-logged";
    let send = |body: &Value| post(&env, &gw, path, Some(ACME_KEY), &[], &body.to_string());

    let mut bad_zone = data_logged("u", "acme", &march(1), None);
    bad_zone["time_zone"] = json!("Mars/Olympus_Mons");
    let future = chrono::Utc::now() + chrono::Duration::hours(2);
    let bad_time = data_logged("u", "acme", &future.to_rfc3339(), None);
    let mut missing = data_logged("u", "acme", &march(1), None);
    missing.as_object_mut().unwrap().remove("user_id");
    let mut wrong_type = data_logged("u", "acme", &march(1), None);
    wrong_type["user_id"] = json!(5);
    let mut empty_id = data_logged("u", "acme", &march(1), None);
    empty_id["event_id"] = json!("");
    let mut bad_kind = data_logged("u", "acme", &march(1), None);
    bad_kind["data_kinds"] = json!(["Mood!"]);
    for (body, field) in [
        (&bad_zone, "time_zone"),
        (&bad_time, "event_time"),
        (&missing, "user_id"),
        (&wrong_type, "user_id"),
        (&empty_id, "event_id"),
        (&bad_kind, "data_kinds"),
    ] {
        let r = send(body);
        assert_eq!(r.status, 400, "{field}: {:?}", r.body);
        assert_eq!(r.body["error"], "invalid_field");
        assert_eq!(r.body["field"], field, "{:?}", r.body);
        assert!(!r.body["detail"].as_str().unwrap().is_empty());
    }
    let r = post(&env, &gw, path, Some(ACME_KEY), &[], "{not json");
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("body")));
    let r = post(
        &env,
        &gw,
        path,
        Some(ACME_KEY),
        &[("idempotency-key", "")],
        &data_logged("u", "acme", &march(1), None).to_string(),
    );
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("Idempotency-Key"))
    );

    let mut huge = data_logged("u", "acme", &march(1), None);
    huge["data_kinds"] = json!(vec!["mood"; 2000]);
    let r = send(&huge);
    assert_eq!(r.status, 413);
    let batch = json!({"events": vec![json!({"type": "data_logged"}); 6]});
    let r = post(
        &env,
        &gw,
        "/v1/events/batch",
        Some(ACME_KEY),
        &[],
        &batch.to_string(),
    );
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("events")),
        "{:?}",
        r.body
    );

    assert!(
        env.read_topic(
            &env.config.settings.topics.data_logged,
            Duration::from_secs(1)
        )
        .is_empty(),
        "nothing invalid was published"
    );
}

#[test]
fn retries_are_idempotent() {
    let env = TestEnv::new("gw-idem", 2);
    let gw = GatewayHandle::start(&env.config);
    let path = "/v1/events/data-logged";
    let body = data_logged("u-idem", "acme", &march(1), Some("same-event")).to_string();
    let first = post(&env, &gw, path, Some(ACME_KEY), &[], &body);
    let second = post(&env, &gw, path, Some(ACME_KEY), &[], &body);
    assert_eq!(first.status, 202);
    assert_eq!(second.status, 202);
    assert_eq!(first.body, second.body, "a retry gets the original answer");
    assert!(first.headers.get("idempotent-replayed").is_none());
    assert_eq!(second.headers.get("idempotent-replayed").unwrap(), "true");

    // No event id in the body: the Idempotency-Key header makes it safe.
    let body = data_logged("u-idem", "acme", &march(2), None).to_string();
    let a = post(
        &env,
        &gw,
        path,
        Some(ACME_KEY),
        &[("idempotency-key", "req-42")],
        &body,
    );
    let b = post(
        &env,
        &gw,
        path,
        Some(ACME_KEY),
        &[("idempotency-key", "req-42")],
        &body,
    );
    assert_eq!(a.status, 202);
    assert_eq!(a.body, b.body);
    assert_eq!(
        a.body["event_id"],
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            "acme-app\u{1f}req-42".as_bytes()
        )
        .to_string(),
        "the event id derives from the key, so even a retry after a 503 keeps it"
    );
    // Another client's key space is its own.
    let c = post(
        &env,
        &gw,
        path,
        Some(BOTH_KEY),
        &[("idempotency-key", "req-42")],
        &body,
    );
    assert_eq!(c.status, 202);
    assert_ne!(c.body["event_id"], a.body["event_id"]);

    let records = env.read_topic(
        &env.config.settings.topics.data_logged,
        Duration::from_secs(1),
    );
    assert_eq!(records.len(), 3, "each idempotency key published once");
    let ids: BTreeSet<String> = records
        .iter()
        .map(|r| {
            env.codec
                .decode_event(&r.payload)
                .unwrap()
                .event_id()
                .to_string()
        })
        .collect();
    assert!(ids.contains("same-event") && ids.contains(a.body["event_id"].as_str().unwrap()));
    let (_, metrics) = get(&env, &gw, "/metrics");
    assert!(
        metrics.contains("incentives_gateway_idempotent_replays_total{route=\"event\"} 2"),
        "{metrics}"
    );
}

#[test]
fn a_batch_answers_per_event() {
    let env = TestEnv::new("gw-batch", 2);
    let gw = GatewayHandle::start(&env.config);
    let mut good = data_logged("b-user", "acme", &march(1), Some("batch-1"));
    good["type"] = json!("data_logged");
    let mut bad_zone = data_logged("b-user", "acme", &march(2), Some("batch-2"));
    bad_zone["type"] = json!("data_logged");
    bad_zone["time_zone"] = json!("Nowhere/Land");
    let mut other_employer = data_logged("b-user", "globex", &march(3), Some("batch-3"));
    other_employer["type"] = json!("data_logged");
    let birth = json!({"type": "birth_reported", "event_id": "batch-4", "user_id": "b-mother", "employer_id": "acme", "event_time": "2026-04-02T10:00:00Z", "birth_date": "2026-04-01"});
    let untyped = json!({"user_id": "x"});
    let batch = json!({"events": [good, bad_zone, other_employer, birth, untyped]});
    let r = post(
        &env,
        &gw,
        "/v1/events/batch",
        Some(ACME_KEY),
        &[],
        &batch.to_string(),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let results = r.body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|x| x["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 400, 403, 202, 400], "{results:#?}");
    assert_eq!(results[1]["field"], "time_zone");
    assert_eq!(results[4]["field"], "events[4].type");
    assert_eq!(results[0]["event_id"], "batch-1");
    assert_eq!(
        results[3]["topic"],
        env.config.settings.topics.birth_reported.as_str()
    );
    let dl = env.read_topic(
        &env.config.settings.topics.data_logged,
        Duration::from_secs(1),
    );
    let br = env.read_topic(
        &env.config.settings.topics.birth_reported,
        Duration::from_secs(1),
    );
    assert_eq!((dl.len(), br.len()), (1, 1));
    // The batch's event ids are idempotent too.
    let again = json!({"events": [batch["events"][0].clone()]});
    let r = post(
        &env,
        &gw,
        "/v1/events/batch",
        Some(ACME_KEY),
        &[],
        &again.to_string(),
    );
    assert_eq!(r.body["results"][0]["offset"], results[0]["offset"]);
    assert_eq!(
        env.read_topic(
            &env.config.settings.topics.data_logged,
            Duration::from_secs(1)
        )
        .len(),
        1
    );
}

#[test]
fn with_the_broker_down_the_gateway_answers_503_and_never_202_for_an_unstored_event() {
    let dir = std::env::temp_dir().join(format!(
        "incentives-gw-broker-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let broker = PrivateBroker::start(port, &dir);
    let env = TestEnv::on_broker("gw-503", 2, &format!("127.0.0.1:{port}"));
    let gw = GatewayHandle::start(&env.config);
    gw.wait_ready();
    let path = "/v1/events/data-logged";
    let mut accepted: Vec<String> = Vec::new();
    let mut send = |id: &str| {
        let body = data_logged("u-503", "acme", &march(1), Some(id)).to_string();
        let r = post(&env, &gw, path, Some(ACME_KEY), &[], &body);
        if r.status == 202 {
            accepted.push(id.to_string());
        }
        r
    };
    assert_eq!(send("before").status, 202);

    broker.kill_9();
    let mut saw_503 = false;
    for i in 0..3 {
        let r = send(&format!("during-{i}"));
        assert_ne!(r.status, 202, "202 while the broker is down: {:?}", r.body);
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.body["error"], "not_stored");
        assert_eq!(
            r.body["event_id"],
            format!("during-{i}"),
            "the 503 names the event id to retry with"
        );
        assert!(r.headers.get("retry-after").is_some());
        saw_503 = true;
    }
    assert!(saw_503);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.state.health.is_ready() {
        assert!(
            Instant::now() < deadline,
            "gateway stayed ready with the broker down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let _broker = PrivateBroker::start(port, &dir);
    // The client retries: the failed attempts were forgotten, so they publish now.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if send("during-0").status == 202 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 202 after the broker came back"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let records = env.read_topic(
        &env.config.settings.topics.data_logged,
        Duration::from_secs(2),
    );
    let stored: BTreeSet<String> = records
        .iter()
        .map(|r| {
            env.codec
                .decode_event(&r.payload)
                .unwrap()
                .event_id()
                .to_string()
        })
        .collect();
    for id in &accepted {
        assert!(
            stored.contains(id),
            "{id} was answered 202 but is not in the topic ({stored:?})"
        );
    }
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
