//! The broker going away mid-stream (kill -9 of a private nisshi on SQLite
//! storage): the processor reports not ready, dead-letters nothing, and
//! finishes the work once the broker is back.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn nisshi_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("NISSHI_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nisshi"))
            .find(|p| p.is_file())
    }) {
        return found;
    }
    let cargo_bin =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/nisshi");
    assert!(
        cargo_bin.is_file(),
        "no nisshi broker binary: run scripts/infra-up.sh (it installs one) or set NISSHI_BIN"
    );
    cargo_bin
}

struct PrivateBroker {
    child: Child,
}

impl PrivateBroker {
    fn start(port: u16, dir: &Path) -> PrivateBroker {
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nisshi.log"))
            .unwrap();
        let child = Command::new(nisshi_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                "sqlite://nisshi.db",
                "--group-initial-rebalance-delay",
                "100ms",
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nisshi");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private broker did not listen on {port}; see {}",
                dir.join("nisshi.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateBroker { child }
    }

    fn kill_9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_broker_outage_is_retried_not_dead_lettered() {
    let dir = std::env::temp_dir().join(format!(
        "incentives-broker-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = PrivateBroker::start(port, &dir);
    let env = TestEnv::on_broker("broker-outage", 2, &format!("127.0.0.1:{port}"));
    let p = env.start_processor();
    p.wait_until_assigned(Duration::from_secs(60));
    let dl = env.config.settings.topics.data_logged.clone();
    let applied = |p: &ProcessorHandle| {
        p.metric(&format!(
            "incentives_events_total{{outcome=\"applied\",topic=\"{dl}\"}}"
        ))
    };

    env.publish(
        &(1..=3)
            .map(|d| logged("steady", &march(d), None))
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

    broker.kill_9();
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.health.is_ready() {
        assert!(
            Instant::now() < deadline,
            "readiness stayed true with the broker gone"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let _broker = PrivateBroker::start(port, &dir);
    env.publish(
        &(4..=5)
            .map(|d| logged("steady", &march(d), None))
            .collect::<Vec<_>>(),
    );
    let awards = env.wait_for_awards(1, Duration::from_secs(90));
    assert_eq!(
        awards.len(),
        1,
        "the streak completes once the broker is back"
    );
    assert_eq!(awards[0].evidence_days.len(), 5);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.health.is_ready() {
        assert!(Instant::now() < deadline, "readiness did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        p.metric("incentives_dead_letters_total"),
        0.0,
        "an outage is never dead-lettered"
    );
    assert_eq!(applied(&p), 5.0);
    p.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
