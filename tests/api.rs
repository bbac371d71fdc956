//! The read API against the real broker and Redis: events in, a processor
//! deciding, then progress, explanations and awards read back over HTTP;
//! authentication and employer visibility; health and metrics.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use incentives::api::ApiState;
use incentives::config::{hash_api_key, ClientSettings, Config};
use incentives::events::EventKind;
use incentives::processor::Shutdown;
use serde_json::{json, Value};

const ACME_KEY: &str = "api-acme-key";
const GLOBEX_KEY: &str = "api-globex-key";
const STREAK: &str = "data-logged-5-consecutive-days";

/// The read API on its own runtime and port, as `incentives api` runs it,
/// with a clock the test sets (or the wall clock).
struct ApiHandle {
    base: String,
    clock: Arc<Mutex<DateTime<Utc>>>,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<ApiState>,
    http: reqwest::Client,
    /// Runs the test's HTTP calls.
    client_rt: tokio::runtime::Runtime,
}

impl ApiHandle {
    fn start(config: &Config, now: Option<&str>) -> ApiHandle {
        let mut config = config.clone();
        config.settings.gateway.clients = vec![
            ClientSettings {
                id: "acme-app".into(),
                api_key_sha256: hash_api_key(ACME_KEY),
                employers: vec!["acme".into()],
            },
            ClientSettings {
                id: "globex-app".into(),
                api_key_sha256: hash_api_key(GLOBEX_KEY),
                employers: vec!["globex".into()],
            },
        ];
        let config = Arc::new(config);
        let clock = Arc::new(Mutex::new(now.map(utc).unwrap_or_else(Utc::now)));
        let state = match now {
            Some(_) => {
                let c = clock.clone();
                ApiState::with_clock(config, Arc::new(move || *c.lock().unwrap())).unwrap()
            }
            None => ApiState::new(config).unwrap(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = Shutdown::default();
        let (s, st) = (shutdown.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            runtime
                .block_on(incentives::api::run(st, listener, async move {
                    while !s.is_triggered() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }))
                .unwrap();
        });
        let api = ApiHandle {
            base,
            clock,
            shutdown,
            thread: Some(thread),
            state,
            http: reqwest::Client::new(),
            client_rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !api.state.health.is_ready() {
            assert!(Instant::now() < deadline, "read API not ready within 30s");
            std::thread::sleep(Duration::from_millis(50));
        }
        api
    }

    fn set_clock(&self, now: &str) {
        *self.clock.lock().unwrap() = utc(now);
    }

    /// GET with an optional key: (status, JSON body or the text as a string).
    fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        self.client_rt.block_on(async {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    fn acme(&self, path: &str) -> Value {
        let (status, body) = self.get(path, Some(ACME_KEY));
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// Polls `path` (as acme) until `done` holds (the processor is async).
    fn wait_for(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(path, Some(ACME_KEY));
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} not as expected within 60s: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ny() -> Option<chrono_tz::Tz> {
    Some(chrono_tz::America::New_York)
}

/// The entry of one incentive in a `/incentives` answer.
fn entry<'a>(body: &'a Value, incentive: &str) -> &'a Value {
    body["incentives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["incentive_id"] == incentive)
        .unwrap_or_else(|| panic!("no {incentive} in {body}"))
}

#[test]
fn progress_explanations_and_awards_from_the_users_keys() {
    let env = TestEnv::new("api-read", 3);
    let p = env.start_processor();
    // streaker: Mar 1-3 (in progress); achiever: Mar 1-5 (awarded); mother: a birth.
    let mut events: Vec<_> = (1..=3)
        .map(|d| logged("api-streaker", &march(d), ny()))
        .collect();
    events.extend((1..=5).map(|d| logged("api-achiever", &march(d), ny())));
    events.push(birth("api-mother", "api-birth-1", "2026-04-02T10:00:00Z"));
    env.publish(&events);
    let awards = env.wait_for_awards(2, Duration::from_secs(60));
    assert_eq!(awards.len(), 2, "{awards:#?}");

    // Mar 3, 18:00 in New York.
    let api = ApiHandle::start(&env.config, Some("2026-03-03T23:00:00Z"));
    let streak_rule = &env
        .config
        .programs
        .for_employer("acme", EventKind::DataLogged)[0];
    let birth_rule = &env
        .config
        .programs
        .for_employer("acme", EventKind::BirthReported)[0];

    // A streak in progress.
    let body = api.wait_for("/v1/users/api-streaker/incentives", |b| {
        entry(b, STREAK)["current"] == 3
    });
    assert_eq!(body["user_id"], "api-streaker");
    assert_eq!(body["employer_id"], "acme");
    assert_eq!(body["as_of"], "2026-03-03T23:00:00Z");
    assert_eq!(body["incentives"].as_array().unwrap().len(), 2, "{body}");
    let e = entry(&body, STREAK);
    assert_eq!(e["program_id"], "acme-2026");
    assert_eq!(
        e["description"],
        "Logged health data on five consecutive days"
    );
    assert_eq!(
        (&e["event"], &e["kind"], &e["repeat"]),
        (&json!("data_logged"), &json!("streak"), &json!("once"))
    );
    assert_eq!(e["rule_version"], streak_rule.rule_version.as_str());
    assert_eq!(e["reward"]["code"], "PREGNANCY-PILLOW");
    assert_eq!(e["active"], true);
    assert_eq!(e["status"], "in_progress");
    assert_eq!(
        (&e["current"], &e["needed"], &e["remaining"]),
        (&json!(3), &json!(5), &json!(2))
    );
    assert_eq!(
        e["counted_days"],
        json!(["2026-03-01", "2026-03-02", "2026-03-03"])
    );
    assert_eq!(e["grace_covered_days"], json!([]));
    assert_eq!(e["missed_days"], json!([]));
    // The next log must come by the end of Mar 4, New York time.
    assert_eq!(e["next_deadline"], "2026-03-05T00:00:00-05:00");
    assert_eq!(e["time_zone"], "America/New_York");
    assert_eq!(e["awards"], json!([]));
    assert!(
        e.get("explanation").is_none(),
        "the list has no explanations"
    );
    let b = entry(&body, "birth-reported");
    assert_eq!(
        (&b["status"], &b["current"], &b["kind"]),
        (&json!("not_started"), &json!(0), &json!("once"))
    );

    // Its explanation.
    let body = api.acme(&format!("/v1/users/api-streaker/incentives/{STREAK}"));
    assert_eq!(body["incentive_id"], STREAK);
    let list = body["incentives"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["current"], 3);
    let x = &list[0]["explanation"];
    assert_eq!(
        x["rule"],
        "5 consecutive local days with a data log; once per program"
    );
    assert_eq!(
        x["counted_days"],
        json!(["2026-03-01", "2026-03-02", "2026-03-03"])
    );
    assert_eq!(x["rule_version"], streak_rule.rule_version.as_str());
    assert_eq!(x["award_versions"], json!([]));
    assert_eq!(x["next_deadline"], "2026-03-05T00:00:00-05:00");
    assert_eq!(
        x["summary"],
        "3 of 5 consecutive days counted; 2 more days needed. The next qualifying event must come before 2026-03-05T00:00:00-05:00 (America/New_York)."
    );

    // Three days later the streak is broken: Mar 4 and 5 were missed.
    api.set_clock("2026-03-06T18:00:00Z");
    let body = api.acme(&format!("/v1/users/api-streaker/incentives/{STREAK}"));
    let e = &body["incentives"][0];
    assert_eq!(
        (&e["status"], &e["current"]),
        (&json!("not_started"), &json!(0))
    );
    assert_eq!(e["missed_days"], json!(["2026-03-04", "2026-03-05"]));
    assert_eq!(e["next_deadline"], Value::Null);
    assert!(
        e["explanation"]["summary"].as_str().unwrap().starts_with(
            "No live streak: the last one was broken by 2 missed days (2026-03-04, 2026-03-05)"
        ),
        "{e}"
    );
    api.set_clock("2026-03-03T23:00:00Z");

    // An achieved streak: its award and the version that decided it.
    let achiever_award = awards.iter().find(|a| a.user_id == "api-achiever").unwrap();
    let body = api.wait_for("/v1/users/api-achiever/incentives", |b| {
        entry(b, STREAK)["status"] == "achieved"
    });
    let e = entry(&body, STREAK);
    assert_eq!(e["next_deadline"], Value::Null);
    assert_eq!(
        e["awards"],
        json!([{
            "period": "program",
            "award_id": achiever_award.award_id,
            "achieved_local_date": "2026-03-05",
            "rule_version": streak_rule.rule_version,
        }])
    );
    let body = api.acme(&format!("/v1/users/api-achiever/incentives/{STREAK}"));
    let x = &body["incentives"][0]["explanation"];
    assert_eq!(
        x["award_versions"],
        json!([{
            "period": "program",
            "award_id": achiever_award.award_id,
            "rule_version": streak_rule.rule_version,
            "is_current": true,
        }])
    );
    assert_eq!(
        x["summary"],
        format!(
            "Achieved on 2026-03-05 (period program, rule version {}); it cannot be earned again in this program.",
            streak_rule.rule_version
        )
    );

    // A birth award, in /incentives and /awards.
    let mother_award = awards.iter().find(|a| a.user_id == "api-mother").unwrap();
    let body = api.acme("/v1/users/api-mother/incentives");
    let b = entry(&body, "birth-reported");
    assert_eq!(
        (&b["status"], &b["current"]),
        (&json!("achieved"), &json!(1))
    );
    assert_eq!(b["rule_version"], birth_rule.rule_version.as_str());
    assert_eq!(b["awards"][0]["award_id"], mother_award.award_id.as_str());
    assert_eq!(entry(&body, STREAK)["status"], "not_started");
    let body = api.acme("/v1/users/api-mother/awards");
    assert_eq!(
        body,
        json!({
            "user_id": "api-mother",
            "employer_id": "acme",
            "awards": [{
                "program_id": "acme-2026",
                "incentive_id": "birth-reported",
                "event": "birth_reported",
                "period": "program",
                "award_id": mother_award.award_id,
                "achieved_local_date": "2026-04-02",
                "rule_version": birth_rule.rule_version,
            }]
        })
    );
    let body = api.acme("/v1/users/api-achiever/awards");
    assert_eq!(body["awards"].as_array().unwrap().len(), 1);
    assert_eq!(body["awards"][0]["incentive_id"], STREAK);
    assert_eq!(body["awards"][0]["event"], "data_logged");
    assert_eq!(
        api.acme("/v1/users/api-streaker/awards")["awards"],
        json!([])
    );

    // An incentive no program of the employer attaches.
    let (status, body) = api.get(
        "/v1/users/api-streaker/incentives/no-such-incentive",
        Some(ACME_KEY),
    );
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("not_found")),
        "{body}"
    );
    p.stop();
}

#[test]
fn only_clients_of_the_users_employer_see_the_user() {
    let env = TestEnv::new("api-auth", 2);
    let p = env.start_processor();
    env.publish(&[logged("api-auth-user", &march(1), ny())]);
    // The wall clock: the answers must work without a pinned clock too.
    let api = ApiHandle::start(&env.config, None);
    let path = "/v1/users/api-auth-user/incentives";
    let body = api.wait_for(path, |b| b["employer_id"] == "acme");
    assert_eq!(body["incentives"].as_array().unwrap().len(), 2);
    p.stop();

    // 401: no key, a wrong key, another scheme; before anything is read.
    for key in [None, Some("wrong-key")] {
        for route in [
            path,
            "/v1/users/api-auth-user/awards",
            "/v1/users/nobody/incentives/x",
        ] {
            let (status, body) = api.get(route, key);
            assert_eq!(
                (status, &body["error"]),
                (401, &json!("unauthorized")),
                "{route}: {body}"
            );
        }
    }
    let req = api
        .http
        .get(format!("{}{path}", api.base))
        .header("authorization", format!("Basic {ACME_KEY}"));
    let resp = api.client_rt.block_on(req.send()).unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");

    // Another employer's client: 404, the same answer as an unknown user.
    let (status, other) = api.get(path, Some(GLOBEX_KEY));
    let (unknown_status, unknown) = api.get("/v1/users/nobody-at-all/incentives", Some(GLOBEX_KEY));
    assert_eq!((status, unknown_status), (404, 404));
    assert_eq!(other, unknown);
    assert_eq!(
        other,
        json!({"error": "not_found", "detail": "no such user"})
    );
    for route in [
        "/v1/users/api-auth-user/awards",
        &format!("/v1/users/api-auth-user/incentives/{STREAK}"),
    ] {
        assert_eq!(api.get(route, Some(GLOBEX_KEY)).0, 404, "{route}");
    }
    assert_eq!(
        api.get("/v1/users/nobody-at-all/awards", Some(ACME_KEY)).0,
        404
    );

    // Health and metrics.
    assert_eq!(api.get("/healthz", None).0, 200);
    assert_eq!(api.get("/readyz", None).0, 200);
    let (status, metrics) = api.get("/metrics", None);
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains(
            r#"incentives_api_requests_total{route="/v1/users/{user}/incentives",status="200"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"incentives_api_requests_total{route="/v1/users/{user}/incentives",status="404"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("incentives_api_request_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("incentives_api_redis_seconds_count"),
        "{metrics}"
    );
    assert_eq!(
        api.state.partition_counts(),
        Some([2, 2]),
        "partition counts from the broker's metadata"
    );
}

#[test]
fn the_api_reloads_programs_and_keeps_them_when_a_change_is_invalid() {
    let env = TestEnv::new("api-reload", 1);
    let dir = std::env::temp_dir().join(format!(
        "incentives-api-reload-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("catalog.toml"), CATALOG).unwrap();
    std::fs::write(dir.join("programs.toml"), PROGRAMS).unwrap();
    let mut config = (*env.config).clone();
    config.dir = dir.clone();
    let state = incentives::api::ApiState::new(std::sync::Arc::new(config)).unwrap();
    let before = state.programs().all().count();

    let more = format!(
        "{PROGRAMS}\n[[programs]]\nid = \"acme-extra\"\nemployer_id = \"acme\"\ntime_zone = \"UTC\"\nstarts_on = 2026-01-01\n[[programs.incentives]]\nincentive = \"birth-reported\"\nreward = {{ kind = \"points\", code = \"1\", description = \"d\" }}\n"
    );
    std::fs::write(dir.join("programs.toml"), &more).unwrap();
    assert!(state.reload_programs());
    assert_eq!(state.programs().all().count(), before + 1);

    std::fs::write(
        dir.join("programs.toml"),
        more.replace("\"UTC\"", "\"Nowhere/Zone\""),
    )
    .unwrap();
    assert!(!state.reload_programs(), "an invalid change is rejected");
    assert_eq!(
        state.programs().all().count(),
        before + 1,
        "and the running programs are kept"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
