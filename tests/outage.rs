//! Redis going away mid-stream: the processor retries with backoff, reports
//! not ready, dead-letters nothing, and finishes the work once Redis is back.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// A private redis-server (from Debian's package, installed by scripts/infra-up.sh).
struct PrivateRedis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    fn start(port: u16, dir: &std::path::Path) -> PrivateRedis {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server not found: run scripts/infra-up.sh (installs Debian's redis-server) or scripts/test.sh");
        let r = PrivateRedis {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(mut self) -> (u16, std::path::PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.port, self.dir.clone())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_redis_outage_is_retried_not_dead_lettered() {
    let env = TestEnv::new("outage", 2);
    let dir = std::env::temp_dir().join(format!(
        "incentives-outage-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let redis = PrivateRedis::start(free_port(), &dir);
    let mut config = (*env.config).clone();
    config.settings.redis.url = redis.url();
    config.settings.redis.command_timeout = Duration::from_millis(500);
    let p = ProcessorHandle::start(Arc::new(config));
    p.wait_until_assigned(Duration::from_secs(60));
    let dl = env.config.settings.topics.data_logged.clone();
    let applied = |p: &ProcessorHandle| {
        p.metric(&format!(
            "incentives_events_total{{outcome=\"applied\",topic=\"{dl}\"}}"
        ))
    };

    env.publish(
        &(1..=3)
            .map(|d| logged("patient", &march(d), None))
            .collect::<Vec<_>>(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(&p) < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the first three days were not applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.health.is_ready());

    let (port, dir) = redis.kill();
    env.publish(
        &(4..=5)
            .map(|d| logged("patient", &march(d), None))
            .collect::<Vec<_>>(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.health.is_ready() || p.metric("incentives_retries_total{dependency=\"redis\"}") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "readiness stayed true / no retries while Redis was down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        env.all_awards().is_empty(),
        "nothing decided while Redis is down"
    );

    let _redis = PrivateRedis::start(port, &dir);
    let awards = env.wait_for_awards(1, Duration::from_secs(60));
    assert_eq!(awards.len(), 1, "the streak completes once Redis is back");
    assert_eq!(
        awards[0].evidence_days.len(),
        5,
        "the days before the outage survived it"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.health.is_ready() {
        assert!(Instant::now() < deadline, "readiness did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(p.metric("incentives_dead_letters_total"), 0.0);
    assert!(
        env.read_topic(
            &env.config.settings.topics.dead_letter,
            Duration::from_secs(1)
        )
        .is_empty(),
        "an outage is never dead-lettered"
    );
    assert_eq!(applied(&p), 5.0);
    p.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
