//! The broker going away mid-stream (kill -9 of a private nisshi on SQLite
//! storage): the processor reports not ready, dead-letters nothing, and
//! finishes the work once the broker is back.

mod common;

use std::time::{Duration, Instant};

use common::*;

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
