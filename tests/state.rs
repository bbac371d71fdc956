//! The Redis layer against a real Redis: the atomic batch step, the epoch
//! that fences zombies, and the offset that makes replays no-ops.

mod common;

use std::time::Duration;

use incentives::events::EventKind;
use incentives::state::{
    live_state, stored_state, BatchRead, BatchWrite, RedisState, Stored, UserWrite, WriteOutcome,
};

fn state(prefix: &str) -> RedisState {
    RedisState::new(&common::redis_url(), prefix, Duration::from_secs(2)).unwrap()
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

fn write(topic: &str, epoch: i64, expected: i64, new: i64, user_id: &str) -> BatchWrite {
    BatchWrite {
        topic: topic.to_string(),
        partition: 4,
        kind: EventKind::DataLogged,
        epoch,
        expected_offset: expected,
        new_offset: new,
        users: vec![UserWrite {
            user_id: user_id.to_string(),
            value: stored_state(now_s() + 600, |b| b.push_str(&format!("wm:dl={new}"))),
        }],
        awards: vec![(format!("award-{new}"), vec![0xC3, 0x01, 0xFF])],
    }
}

/// The live state of user `u` in partition 4 (data logged).
fn live(s: &mut RedisState, u: &str) -> Option<String> {
    let stored = s.user_state(4, EventKind::DataLogged, u).unwrap()?;
    match live_state(&stored, now_s()) {
        Stored::Live(body) => Some(body.to_string()),
        other => panic!("{u}: {other:?} ({stored:?})"),
    }
}

#[test]
fn a_zombie_with_an_old_epoch_cannot_write() {
    let prefix = format!("test-state-{}", uuid::Uuid::now_v7().simple());
    let mut zombie = state(&prefix);
    let mut owner = state(&prefix);
    let user = "u1";

    let old = zombie.claim("t", 4).unwrap();
    assert_eq!(old.applied_offset, -1);
    let new = owner.claim("t", 4).unwrap();
    assert!(new.epoch > old.epoch);

    let out = zombie
        .write_batches(vec![write("t", old.epoch, -1, 10, user)])
        .unwrap();
    assert_eq!(out, [WriteOutcome::StaleEpoch]);
    assert!(
        zombie
            .user_state(4, EventKind::DataLogged, user)
            .unwrap()
            .is_none(),
        "the zombie wrote nothing"
    );

    let out = owner
        .write_batches(vec![write("t", new.epoch, -1, 10, user)])
        .unwrap();
    assert_eq!(out, [WriteOutcome::Applied]);
    assert_eq!(live(&mut owner, user).as_deref(), Some("wm:dl=10"));
    assert_eq!(
        owner.outbox(4).unwrap().len(),
        1,
        "the award is in the outbox in the same step"
    );

    // The same batch again (a redelivery, or a retry after a lost reply).
    let out = owner
        .write_batches(vec![write("t", new.epoch, -1, 10, user)])
        .unwrap();
    assert_eq!(out, [WriteOutcome::OffsetMoved { actual: 10 }]);

    // A new owner resumes after the applied offset.
    let resumed = zombie.claim("t", 4).unwrap();
    assert_eq!(resumed.applied_offset, 10);

    // Idle users vanish: the state carries its expiry.
    let mut conn = redis::Client::open(common::redis_url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stored = owner
        .user_state(4, EventKind::DataLogged, user)
        .unwrap()
        .unwrap();
    let (expires_at, _) = stored.split_once('|').unwrap();
    let ttl = expires_at.parse::<i64>().unwrap() - now_s();
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
    let user = "u1";
    let claim = s.claim("t", 4).unwrap();
    // What a Redis restart does to the script cache.
    let mut conn = redis::Client::open(common::redis_url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    let out = s
        .write_batches(vec![write("t", claim.epoch, -1, 3, user)])
        .unwrap();
    assert_eq!(out, [WriteOutcome::Applied]);
}

/// One batch sets many users with chunked HSETs, deletes some, and the
/// sweeper deletes exactly the expired states (and keeps what it cannot read).
#[test]
fn a_large_batch_applies_whole_and_the_sweep_deletes_only_expired_states() {
    let prefix = format!("test-sweep-{}", uuid::Uuid::now_v7().simple());
    let mut s = state(&prefix);
    let claim = s.claim("t", 4).unwrap();
    let now = now_s();
    // 2,500 users (more than one 1,000-value chunk of the script's HSET):
    // every third one already expired (as if written long ago).
    let users: Vec<UserWrite> = (0..2_500)
        .map(|i| UserWrite {
            user_id: format!("u{i}"),
            value: stored_state(if i % 3 == 0 { now - 1 } else { now + 600 }, |b| {
                b.push_str(&format!("wm:dl={i}"))
            }),
        })
        .collect();
    let mut batch = write("t", claim.epoch, -1, 5, "ignored");
    batch.users = users;
    assert_eq!(
        s.write_batches(vec![batch]).unwrap(),
        [WriteOutcome::Applied]
    );
    assert_eq!(live(&mut s, "u1").as_deref(), Some("wm:dl=1"));
    assert_eq!(live(&mut s, "u2498").as_deref(), Some("wm:dl=2498"));

    // A second batch deletes two users (empty values) and sets one.
    let mut batch = write("t", claim.epoch, 5, 6, "u1");
    batch.users.push(UserWrite {
        user_id: "u2".into(),
        value: String::new(),
    });
    batch.users.push(UserWrite {
        user_id: "u4".into(),
        value: String::new(),
    });
    assert_eq!(
        s.write_batches(vec![batch]).unwrap(),
        [WriteOutcome::Applied]
    );
    assert_eq!(live(&mut s, "u1").as_deref(), Some("wm:dl=6"));
    assert!(s
        .user_state(4, EventKind::DataLogged, "u2")
        .unwrap()
        .is_none());

    let mut conn = redis::Client::open(common::redis_url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let hash = s.keys.states(4, EventKind::DataLogged);
    let _: () = redis::cmd("HSET")
        .arg(&hash)
        .arg("no-expiry")
        .arg("wm:dl=1")
        .query(&mut conn)
        .unwrap();
    let before: usize = redis::cmd("HLEN").arg(&hash).query(&mut conn).unwrap();
    assert_eq!(before, 2_500 - 2 + 1);

    let mut cursor = 0;
    let mut deleted = 0;
    loop {
        let (next, n) = s
            .sweep_step(4, EventKind::DataLogged, cursor, now_s(), 300)
            .unwrap();
        deleted += n;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // 834 users had i % 3 == 0; none of the two deleted was among them.
    assert_eq!(deleted, 834);
    let after: Vec<String> = redis::cmd("HKEYS").arg(&hash).query(&mut conn).unwrap();
    assert_eq!(after.len(), before - 834);
    for u in &after {
        if u == "no-expiry" {
            continue;
        }
        let i: usize = u[1..].parse().unwrap();
        assert!(i % 3 != 0, "{u} expired but was kept");
    }
    assert!(
        after.iter().any(|u| u == "no-expiry"),
        "unreadable state kept"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).unwrap();
}

/// The processor's path: read (which watches the partitions' meta), then
/// the writes decided from it as one transaction, answered by the next read.
fn read_4<'a>(users: &[&'a str]) -> Vec<BatchRead<'a>> {
    vec![BatchRead {
        topic: "t",
        partition: 4,
        kind: EventKind::DataLogged,
        users: users.to_vec(),
    }]
}

#[test]
fn writes_sent_after_a_watched_read_apply_as_a_transaction() {
    let prefix = format!("test-tx-{}", uuid::Uuid::now_v7().simple());
    let mut s = state(&prefix);
    let claim = s.claim("t", 4).unwrap();
    let (_, snapshots) = s.read_after(None, &read_4(&["u1"])).unwrap();
    assert_eq!(snapshots[0].epoch, Some(claim.epoch));
    assert_eq!(snapshots[0].applied_offset, -1);

    let mut writes = s.pack_writes(vec![write("t", claim.epoch, -1, 7, "u1")], &[]);
    s.send_writes(&mut writes);
    let (outcomes, snapshots) = s.read_after(Some(&mut writes), &read_4(&["u1"])).unwrap();
    assert_eq!(outcomes, [WriteOutcome::Applied]);
    assert_eq!(s.take_aborted(), 0);
    assert_eq!(snapshots[0].applied_offset, 7, "the read sees the writes");
    assert_eq!(live(&mut s, "u1").as_deref(), Some("wm:dl=7"));
    assert_eq!(s.outbox(4).unwrap().len(), 1, "the award is in the outbox");

    // Again from the new read, with a user deleted and an outbox trim.
    let mut batch = write("t", claim.epoch, 7, 8, "u2");
    batch.users.push(UserWrite {
        user_id: "u1".into(),
        value: String::new(),
    });
    let mut writes = s.pack_writes(vec![batch], &[(4, vec!["award-7".into()])]);
    s.send_writes(&mut writes);
    let (outcomes, snapshots) = s
        .read_after(Some(&mut writes), &read_4(&["u1", "u2"]))
        .unwrap();
    assert_eq!(outcomes, [WriteOutcome::Applied]);
    assert_eq!(snapshots[0].applied_offset, 8);
    assert_eq!(snapshots[0].users[0], None, "u1 deleted");
    assert!(live(&mut s, "u2").is_some());
    let outbox: Vec<String> = s.outbox(4).unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(outbox, ["award-8"], "award-7 trimmed, award-8 added");
}

#[test]
fn a_claim_between_the_read_and_the_transaction_writes_nothing() {
    let prefix = format!("test-tx-claim-{}", uuid::Uuid::now_v7().simple());
    let mut zombie = state(&prefix);
    let mut owner = state(&prefix);
    let old = zombie.claim("t", 4).unwrap();
    let (_, snapshots) = zombie.read_after(None, &read_4(&["u1"])).unwrap();
    assert_eq!(snapshots[0].epoch, Some(old.epoch));

    // Another consumer takes the partition after the zombie's read.
    let new = owner.claim("t", 4).unwrap();
    assert!(new.epoch > old.epoch);

    let mut writes = zombie.pack_writes(vec![write("t", old.epoch, -1, 9, "u1")], &[]);
    zombie.send_writes(&mut writes);
    let (outcomes, snapshots) = zombie
        .read_after(Some(&mut writes), &read_4(&["u1"]))
        .unwrap();
    assert_eq!(
        outcomes,
        [WriteOutcome::StaleEpoch],
        "the aborted transaction is sent again as the checking script"
    );
    assert_eq!(zombie.take_aborted(), 1, "one transaction aborted");
    assert_eq!(zombie.take_aborted(), 0, "counted once");
    assert_eq!(snapshots[0].epoch, Some(new.epoch));
    assert_eq!(snapshots[0].applied_offset, -1, "nothing applied");
    assert!(zombie
        .user_state(4, EventKind::DataLogged, "u1")
        .unwrap()
        .is_none());
    assert!(zombie.outbox(4).unwrap().is_empty());
}

#[test]
fn writes_not_sent_after_their_read_go_as_checking_scripts() {
    let prefix = format!("test-tx-unsent-{}", uuid::Uuid::now_v7().simple());
    let mut s = state(&prefix);
    let claim = s.claim("t", 4).unwrap();
    s.read_after(None, &read_4(&["u1"])).unwrap();
    let mut first = s.pack_writes(vec![write("t", claim.epoch, -1, 3, "u1")], &[]);
    s.send_writes(&mut first);
    // A second transaction without a read in between has no watch to rely
    // on: send_writes leaves it, and read_after sends it as scripts, which
    // see that the offset moved (a replayed batch writes nothing).
    let mut again = s.pack_writes(vec![write("t", claim.epoch, -1, 3, "u1")], &[]);
    s.send_writes(&mut again);
    let (outcomes, _) = s.read_after(Some(&mut first), &[]).unwrap();
    assert_eq!(outcomes, [WriteOutcome::Applied]);
    let (outcomes, _) = s.read_after(Some(&mut again), &[]).unwrap();
    assert_eq!(outcomes, [WriteOutcome::OffsetMoved { actual: 3 }]);
}
