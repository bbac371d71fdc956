//! The `incentives` binary as a person runs it: `config check`, and
//! `process` with its HTTP endpoints, env overrides and SIGTERM drain.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const BIN: &str = env!("CARGO_BIN_EXE_incentives");

#[test]
fn config_check_accepts_the_shipped_config_and_names_bad_keys() {
    let ok = Command::new(BIN)
        .args(["--config-dir", "config", "config", "check"])
        .current_dir(repo_dir())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("acme-wellness-2026/data-logged-5-consecutive-days"),
        "{out}"
    );

    let dir =
        std::env::temp_dir().join(format!("incentives-cfg-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["incentives.toml", "catalog.toml", "programs.toml"] {
        std::fs::copy(repo_dir().join("config").join(f), dir.join(f)).unwrap();
    }
    let programs = std::fs::read_to_string(dir.join("programs.toml"))
        .unwrap()
        .replace("Europe/Berlin", "Europe/Atlantis");
    std::fs::write(dir.join("programs.toml"), programs).unwrap();
    let bad = Command::new(BIN)
        .arg("--config-dir")
        .arg(&dir)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("programs.toml")
            && err.contains("programs[1].time_zone")
            && err.contains("Europe/Atlantis"),
        "{err}"
    );

    // An environment override with a bad value names the variable.
    let bad = Command::new(BIN)
        .args(["--config-dir", "config", "config", "check"])
        .current_dir(repo_dir())
        .env("INCENTIVES__PROCESSOR__MAX_BATCH_RECORDS", "many")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("processor.max_batch_records")
            && err.contains("INCENTIVES__PROCESSOR__MAX_BATCH_RECORDS"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

#[test]
fn the_process_command_serves_health_and_metrics_and_drains_on_sigterm() {
    let env = TestEnv::new("cli", 2);
    let s = &env.config.settings;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("incentives-cli-{port}.log"));
    let mut child = Command::new(BIN)
        .args(["--config-dir", "config", "process"])
        .current_dir(repo_dir())
        .env("INCENTIVES__KAFKA__BROKERS", &s.kafka.brokers)
        .env("INCENTIVES__KAFKA__GROUP_ID", &s.kafka.group_id)
        .env("INCENTIVES__KAFKA__SESSION_TIMEOUT", "10s")
        .env("INCENTIVES__REDIS__URL", &s.redis.url)
        .env("INCENTIVES__REDIS__KEY_PREFIX", &s.redis.key_prefix)
        .env("INCENTIVES__TOPICS__DATA_LOGGED", &s.topics.data_logged)
        .env(
            "INCENTIVES__TOPICS__BIRTH_REPORTED",
            &s.topics.birth_reported,
        )
        .env("INCENTIVES__TOPICS__AWARDS", &s.topics.awards)
        .env("INCENTIVES__TOPICS__DEAD_LETTER", &s.topics.dead_letter)
        .env("INCENTIVES__PROCESSOR__COMMIT_INTERVAL", "500ms")
        .env("INCENTIVES__HTTP__LISTEN", &listen)
        .env("INCENTIVES__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = http_get(&listen, "/readyz") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 60s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "process exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http_get(&listen, "/healthz").unwrap().0, 200);

    // The shipped programs: employer acme runs the 5-day streak.
    let events: Vec<_> = (1..=5)
        .map(|d| logged("cli-user", &march(d), None))
        .collect();
    env.publish(&events);
    let awards = env.wait_for_awards(1, Duration::from_secs(60));
    assert_eq!(awards.len(), 1);
    assert_eq!(awards[0].program_id, "acme-wellness-2026");

    let (status, metrics) = http_get(&listen, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("incentives_awards_total{incentive=\"data-logged-5-consecutive-days\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("incentives_redis_latency_seconds_bucket"),
        "{metrics}"
    );

    // SIGHUP re-reads the catalog and programs.
    assert!(Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = http_get(&listen, "/metrics").unwrap();
        if m.contains("incentives_config_reloads_total{result=\"applied\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no reload after SIGHUP: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 30s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit {status:?}: {logs}");
    assert!(
        logs.lines()
            .any(|l| l.starts_with('{') && l.contains("\"processor stopped\"")),
        "JSON logs with the drain line: {logs}"
    );

    // The drain committed the offsets of everything processed.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.kafka.brokers)
        .set("group.id", &s.kafka.group_id)
        .create()
        .unwrap();
    let partition = incentives::partitioner::partition_for_key(b"cli-user", env.partitions);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&s.topics.data_logged, partition);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let offset = committed
        .find_partition(&s.topics.data_logged, partition)
        .unwrap()
        .offset();
    assert_eq!(
        offset,
        Offset::Offset(5),
        "committed offset after the drain"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn produce_from_a_file_then_tail_the_awards() {
    let env = TestEnv::new("cli-produce", 3);
    let s = &env.config.settings;
    let with_env = |cmd: &mut Command| {
        cmd.current_dir(repo_dir())
            .env("INCENTIVES__KAFKA__BROKERS", &s.kafka.brokers)
            .env("INCENTIVES__TOPICS__DATA_LOGGED", &s.topics.data_logged)
            .env(
                "INCENTIVES__TOPICS__BIRTH_REPORTED",
                &s.topics.birth_reported,
            )
            .env("INCENTIVES__TOPICS__AWARDS", &s.topics.awards)
            .env("INCENTIVES__TOPICS__DEAD_LETTER", &s.topics.dead_letter);
    };
    let mut produce = Command::new(BIN);
    produce.args(["produce", "--file", "tests/data/events.jsonl"]);
    with_env(&mut produce);
    let out = produce.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("produced 6 events (5 data_logged, 1 birth_reported)"));

    // Exactly the upstream encoding: keyed by user, murmur2-partitioned, decodable.
    let records = env.read_topic(&s.topics.data_logged, Duration::from_secs(1));
    assert_eq!(records.len(), 5);
    for r in &records {
        assert_eq!(r.key.as_deref(), Some("sample-user"));
        assert_eq!(
            r.partition,
            incentives::partitioner::partition_for_key(b"sample-user", env.partitions)
        );
        assert!(env.codec.decode_event(&r.payload).is_ok());
    }
    let p = env.start_processor();
    env.wait_for_awards(2, Duration::from_secs(60));
    p.stop();

    let mut tail = Command::new(BIN);
    tail.args(["awards", "--from-beginning", "--idle-timeout", "3s"]);
    with_env(&mut tail);
    let out = tail.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let users: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|l| l["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        std::collections::BTreeSet::from(["sample-mother", "sample-user"])
    );
    assert!(lines
        .iter()
        .all(|l| l["award_id"].as_str().is_some_and(|id| id.len() == 36)));
}

#[test]
fn the_gateway_finishes_requests_in_flight_on_sigterm() {
    // A broker address where nothing listens: every publish waits the full
    // publish_timeout (2s) and ends in 503, so a request is surely in flight.
    let nowhere = free_port();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("incentives-gw-{port}.log"));
    let mut child = Command::new(BIN)
        .args(["--config-dir", "config", "gateway"])
        .current_dir(repo_dir())
        .env("INCENTIVES__KAFKA__BROKERS", format!("127.0.0.1:{nowhere}"))
        .env("INCENTIVES__REDIS__URL", redis_url())
        .env(
            "INCENTIVES__REDIS__KEY_PREFIX",
            format!("test-gw-cli-{port}"),
        )
        .env("INCENTIVES__GATEWAY__LISTEN", &listen)
        .env("INCENTIVES__GATEWAY__PUBLISH_TIMEOUT", "2s")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&listen, "/healthz").is_none() {
        assert!(
            Instant::now() < deadline,
            "gateway did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        http_get(&listen, "/readyz").map(|r| r.0),
        Some(503),
        "not ready without a broker"
    );

    let addr = listen.clone();
    let in_flight = std::thread::spawn(move || {
        let body = r#"{"event_id":"inflight-1","user_id":"u","employer_id":"acme","event_time":"2026-03-01T12:00:00Z","data_kinds":["mood"]}"#;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "POST /v1/events/data-logged HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer dev-key-change-me\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let answer = in_flight.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "the request in flight got its answer: {answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("retry-after"),
        "{answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn bench_explains_itself_and_names_the_fix_when_redis_is_down() {
    let help = Command::new(BIN)
        .args(["bench", "--help"])
        .current_dir(repo_dir())
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--users",
        "--rss-users",
        "--latency-seconds",
        "--json",
        "--keep",
    ] {
        assert!(text.contains(option), "{option} missing from: {text}");
    }
    // Nothing listens on port 1: the error says what to do, before any phase runs.
    let down = Command::new(BIN)
        .args(["--config-dir", "config", "bench", "--rss-users", "0"])
        .env("INCENTIVES__REDIS__URL", "redis://127.0.0.1:1/")
        .current_dir(repo_dir())
        .output()
        .unwrap();
    assert!(!down.status.success());
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("scripts/infra-up.sh"), "{err}");
}
