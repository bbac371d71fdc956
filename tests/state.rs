//! The Redis layer against a real Redis: the atomic batch step, the epoch
//! that fences zombies, and the offset that makes replays no-ops.

mod common;

use std::time::Duration;

use incentives::events::EventKind;
use incentives::state::{BatchWrite, RedisState, UserWrite, WriteOutcome};

fn state(prefix: &str) -> RedisState {
    RedisState::new(&common::redis_url(), prefix, Duration::from_secs(2)).unwrap()
}

fn write(topic: &str, epoch: i64, expected: i64, new: i64, user_key: &str) -> BatchWrite {
    BatchWrite {
        topic: topic.to_string(),
        partition: 4,
        epoch,
        expected_offset: expected,
        new_offset: new,
        users: vec![UserWrite {
            key: user_key.to_string(),
            ttl: Duration::from_secs(600),
            value: format!("wm:dl={new}"),
        }],
        awards: vec![(format!("award-{new}"), vec![0xC3, 0x01, 0xFF])],
    }
}

#[test]
fn a_zombie_with_an_old_epoch_cannot_write() {
    let prefix = format!("test-state-{}", uuid::Uuid::now_v7().simple());
    let mut zombie = state(&prefix);
    let mut owner = state(&prefix);
    let user = zombie.keys.user(4, EventKind::DataLogged, "u1");

    let old = zombie.claim("t", 4).unwrap();
    assert_eq!(old.applied_offset, -1);
    let new = owner.claim("t", 4).unwrap();
    assert!(new.epoch > old.epoch);

    let out = zombie
        .write_batches(&[write("t", old.epoch, -1, 10, &user)])
        .unwrap();
    assert_eq!(out, [WriteOutcome::StaleEpoch]);
    assert!(
        zombie.user_state(&user).unwrap().is_none(),
        "the zombie wrote nothing"
    );

    let out = owner
        .write_batches(&[write("t", new.epoch, -1, 10, &user)])
        .unwrap();
    assert_eq!(out, [WriteOutcome::Applied]);
    assert_eq!(
        owner.user_state(&user).unwrap().as_deref(),
        Some("wm:dl=10")
    );
    assert_eq!(
        owner.outbox(4).unwrap().len(),
        1,
        "the award is in the outbox in the same step"
    );

    // The same batch again (a redelivery, or a retry after a lost reply).
    let out = owner
        .write_batches(&[write("t", new.epoch, -1, 10, &user)])
        .unwrap();
    assert_eq!(out, [WriteOutcome::OffsetMoved { actual: 10 }]);

    // A new owner resumes after the applied offset.
    let resumed = zombie.claim("t", 4).unwrap();
    assert_eq!(resumed.applied_offset, 10);

    // Idle users vanish: the key carries a TTL.
    let mut conn = redis::Client::open(common::redis_url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let ttl: i64 = redis::cmd("TTL").arg(&user).query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= 600, "ttl {ttl}");

    owner
        .trim_outboxes(&[(4, vec!["award-10".into()])])
        .unwrap();
    assert!(owner.outbox(4).unwrap().is_empty());
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).unwrap();
}

#[test]
fn the_script_is_reloaded_after_a_script_flush() {
    let prefix = format!("test-flush-{}", uuid::Uuid::now_v7().simple());
    let mut s = state(&prefix);
    let user = s.keys.user(4, EventKind::DataLogged, "u1");
    let claim = s.claim("t", 4).unwrap();
    // What a Redis restart does to the script cache.
    let mut conn = redis::Client::open(common::redis_url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    let out = s
        .write_batches(&[write("t", claim.epoch, -1, 3, &user)])
        .unwrap();
    assert_eq!(out, [WriteOutcome::Applied]);
}
