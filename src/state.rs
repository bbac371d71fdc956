//! Every Redis key and script of the processor, and nothing else.
//!
//! Layout (all keys of input partition `p` share the hash tag `{p}`, so one
//! script can touch them all, in Redis Cluster too):
//!
//! | key                               | type | holds                                   |
//! |-----------------------------------|------|-----------------------------------------|
//! | `<prefix>:{p}:meta`               | hash | `epoch:<topic>`, `offset:<topic>`       |
//! | `<prefix>:{p}:outbox`             | hash | award id -> encoded award, until acked  |
//! | `<prefix>:{p}:<kind>:<user id>`   | string | a user's state for one event kind (`engine::UserState::encode`), with a TTL |
//!
//! A user's state is split by event kind so that each key is written by the
//! owner of exactly one input (topic, partition): two consumers holding
//! partition `p` of two topics never write the same key.
//!
//! This module uses the synchronous client: the processor runs on its own
//! thread and the rebalance callback (which claims partitions) is synchronous.

use std::time::Duration;

use redis::{Commands, Connection, Script, Value};

use crate::events::EventKind;

const APPLY_BATCH_LUA: &str = include_str!("scripts/apply_batch.lua");
const CLAIM_PARTITION_LUA: &str = include_str!("scripts/claim_partition.lua");

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Redis is unreachable or slow: retry with backoff, never dead-letter.
    #[error("redis: {0} (is Redis running at redis.url? retrying)")]
    Redis(#[from] redis::RedisError),
    #[error("redis replied with something this version does not understand: {0}")]
    Protocol(String),
    /// Redis lost its script cache (a restart); it was loaded again: retry.
    #[error(
        "redis: the apply_batch script was not loaded (Redis restarted?); loaded it, retrying"
    )]
    NoScript,
}

/// Writes packed by [`RedisState::pack_writes`], sent ahead of a read.
#[derive(Debug, Default)]
pub struct SentWrites {
    packed: Vec<u8>,
    scripts: usize,
    trims: usize,
    sent: bool,
}

impl SentWrites {
    pub fn is_empty(&self) -> bool {
        self.scripts == 0 && self.trims == 0
    }
}

fn parse_reads(
    mut replies: impl Iterator<Item = Value>,
    requests: &[(&str, i32, Vec<String>)],
) -> Result<Vec<PartitionSnapshot>, StateError> {
    let short = || StateError::Protocol("short pipeline reply".into());
    let mut out = Vec::with_capacity(requests.len());
    for (_, _, users) in requests {
        let meta: (Option<i64>, Option<i64>) =
            redis::from_redis_value(&replies.next().ok_or_else(short)?)?;
        let stored: Vec<Option<String>> = if users.is_empty() {
            Vec::new()
        } else {
            redis::from_redis_value(&replies.next().ok_or_else(short)?)?
        };
        if stored.len() != users.len() {
            return Err(StateError::Protocol(format!(
                "MGET of {} keys answered {} values",
                users.len(),
                stored.len()
            )));
        }
        out.push(PartitionSnapshot {
            epoch: meta.0,
            applied_offset: meta.1.unwrap_or(-1),
            users: stored,
        });
    }
    Ok(out)
}

/// Key names; the one place that knows them.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    pub fn meta(&self, partition: i32) -> String {
        format!("{}:{{{partition}}}:meta", self.prefix)
    }
    pub fn outbox(&self, partition: i32) -> String {
        format!("{}:{{{partition}}}:outbox", self.prefix)
    }
    pub fn user(&self, partition: i32, kind: EventKind, user_id: &str) -> String {
        format!("{}:{{{partition}}}:{}:{user_id}", self.prefix, kind.tag())
    }
}

/// Where a claimed partition resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub epoch: i64,
    /// Last applied offset, `-1` when none.
    pub applied_offset: i64,
}

/// What one partition batch reads before deciding.
#[derive(Debug, Clone, Default)]
pub struct PartitionSnapshot {
    /// The epoch stored now (compare with the claim: a mismatch means lost).
    pub epoch: Option<i64>,
    pub applied_offset: i64,
    /// The stored state of each requested user key, in request order
    /// (`None`: no state).
    pub users: Vec<Option<String>>,
}

/// One partition batch to write.
#[derive(Debug, Clone)]
pub struct BatchWrite {
    pub topic: String,
    pub partition: i32,
    pub epoch: i64,
    pub expected_offset: i64,
    pub new_offset: i64,
    pub users: Vec<UserWrite>,
    /// (award id, encoded award) added to the outbox.
    pub awards: Vec<(String, Vec<u8>)>,
}

/// A user's whole new state (`engine::UserState::encode`); an empty value
/// deletes the key.
#[derive(Debug, Clone)]
pub struct UserWrite {
    pub key: String,
    /// Expiry from now (idle users vanish).
    pub ttl: Duration,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Applied,
    /// Another consumer owns the partition now; nothing was written.
    StaleEpoch,
    /// The applied offset is `actual`, not the one read; nothing written.
    OffsetMoved {
        actual: i64,
    },
}

/// A synchronous Redis connection that reconnects on demand.
pub struct RedisState {
    client: redis::Client,
    conn: Option<Connection>,
    timeout: Duration,
    pub keys: Keys,
    apply_batch: Script,
    claim_partition: Script,
}

impl RedisState {
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisState, StateError> {
        Ok(RedisState {
            client: redis::Client::open(url)?,
            conn: None,
            timeout,
            keys: Keys::new(prefix),
            apply_batch: Script::new(APPLY_BATCH_LUA),
            claim_partition: Script::new(CLAIM_PARTITION_LUA),
        })
    }

    fn conn(&mut self) -> Result<&mut Connection, StateError> {
        if self.conn.is_none() {
            let conn = self.client.get_connection_with_timeout(self.timeout)?;
            conn.set_read_timeout(Some(self.timeout))?;
            conn.set_write_timeout(Some(self.timeout))?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StateError::Protocol("no connection".into()))
    }

    /// Runs `f` on the connection; drops the connection on any I/O-ish error
    /// so that the next call reconnects.
    fn with_conn<T>(
        &mut self,
        f: impl FnOnce(&mut Connection, &Keys) -> redis::RedisResult<T>,
    ) -> Result<T, StateError> {
        let keys = self.keys.clone();
        let conn = self.conn()?;
        match f(conn, &keys) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                {
                    self.conn = None;
                }
                Err(e.into())
            }
        }
    }

    pub fn ping(&mut self) -> Result<(), StateError> {
        self.with_conn(|c, _| redis::cmd("PING").query::<String>(c).map(|_| ()))
    }

    /// Bumps the partition's epoch and returns where to resume.
    pub fn claim(&mut self, topic: &str, partition: i32) -> Result<Claim, StateError> {
        self.claim_above(topic, partition, 0)
    }

    /// Claims with an epoch above `seen` (the caller's last epoch), for when
    /// Redis went back in time and lost claims.
    pub fn claim_above(
        &mut self,
        topic: &str,
        partition: i32,
        seen: i64,
    ) -> Result<Claim, StateError> {
        let script = self.claim_partition.clone();
        let (epoch, applied): (i64, String) = self.with_conn(|c, keys| {
            script
                .key(keys.meta(partition))
                .arg(topic)
                .arg(seen)
                .invoke(c)
        })?;
        let applied_offset = applied
            .parse()
            .map_err(|_| StateError::Protocol(format!("applied offset {applied:?}")))?;
        Ok(Claim {
            epoch,
            applied_offset,
        })
    }

    /// Reads, in one round trip, the meta and the given user keys of each
    /// partition batch: `requests` is (topic, partition, user keys).
    pub fn read_batches(
        &mut self,
        requests: &[(&str, i32, Vec<String>)],
    ) -> Result<Vec<PartitionSnapshot>, StateError> {
        let (pipe, _) = self.read_pipeline(requests);
        let replies: Vec<Value> = self.with_conn(|c, _| pipe.query(c))?;
        parse_reads(replies.into_iter(), requests)
    }

    fn read_pipeline(&self, requests: &[(&str, i32, Vec<String>)]) -> (redis::Pipeline, usize) {
        let mut pipe = redis::pipe();
        let mut commands = 0;
        for (topic, partition, users) in requests {
            pipe.cmd("HMGET")
                .arg(self.keys.meta(*partition))
                .arg(format!("epoch:{topic}"))
                .arg(format!("offset:{topic}"));
            commands += 1;
            if !users.is_empty() {
                pipe.cmd("MGET").arg(users);
                commands += 1;
            }
        }
        (pipe, commands)
    }

    /// Applies the batches, one script call each, in one round trip.
    pub fn write_batches(
        &mut self,
        batches: &[BatchWrite],
    ) -> Result<Vec<WriteOutcome>, StateError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let mut writes = self.pack_writes(batches, &[]);
        Ok(self.read_after(Some(&mut writes), &[])?.0)
    }

    /// Packs the batches' script calls and the outbox trims (partition,
    /// acknowledged award ids) into one pipeline, to be sent ahead of the
    /// next read with [`RedisState::send_writes`].
    pub fn pack_writes(&self, batches: &[BatchWrite], trims: &[(i32, Vec<String>)]) -> SentWrites {
        let mut pipe = redis::pipe();
        for b in batches {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.apply_batch.get_hash())
                .arg(2 + b.users.len());
            cmd.arg(self.keys.meta(b.partition))
                .arg(self.keys.outbox(b.partition));
            for u in &b.users {
                cmd.arg(&u.key);
            }
            cmd.arg(&b.topic)
                .arg(b.epoch)
                .arg(b.expected_offset)
                .arg(b.new_offset)
                .arg(b.users.len());
            for u in &b.users {
                cmd.arg(u.ttl.as_secs().max(1)).arg(&u.value);
            }
            for (id, payload) in &b.awards {
                cmd.arg(id).arg(payload.as_slice());
            }
        }
        let mut trim_commands = 0;
        for (partition, ids) in trims {
            if !ids.is_empty() {
                pipe.cmd("HDEL").arg(self.keys.outbox(*partition)).arg(ids);
                trim_commands += 1;
            }
        }
        SentWrites {
            packed: pipe.get_packed_pipeline(),
            scripts: batches.len(),
            trims: trim_commands,
            sent: false,
        }
    }

    /// Sends packed writes without waiting for their replies (they are read
    /// by the next [`RedisState::read_after`]). A failed send is left for
    /// `read_after` to repeat.
    pub fn send_writes(&mut self, writes: &mut SentWrites) {
        if writes.is_empty() {
            return;
        }
        let sent = self.with_conn(|c, _| c.send_packed_command(&writes.packed));
        writes.sent = sent.is_ok();
        if !writes.sent {
            self.conn = None;
        }
    }

    /// Reads the partition batches of `requests` after `writes` (sent before,
    /// on this connection, so Redis applied them first): returns the writes'
    /// outcomes and the snapshots. On any error the connection is dropped and
    /// the writes are marked unsent: calling again re-sends them, which is
    /// safe (a script already applied answers `OFFSET_MOVED` at its own new
    /// offset; trims are idempotent).
    pub fn read_after(
        &mut self,
        writes: Option<&mut SentWrites>,
        requests: &[(&str, i32, Vec<String>)],
    ) -> Result<(Vec<WriteOutcome>, Vec<PartitionSnapshot>), StateError> {
        let (pipe, read_commands) = self.read_pipeline(requests);
        let mut empty = SentWrites::default();
        let writes = writes.unwrap_or(&mut empty);
        let mut result = self.exchange(writes, &pipe, read_commands, requests);
        if let Err(StateError::NoScript) = result {
            // Redis restarted and lost its script cache: load it and go
            // again (a partial first attempt is harmless, see above).
            self.conn = None;
            writes.sent = false;
            self.with_conn(|c, _| {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(APPLY_BATCH_LUA)
                    .query::<String>(c)
            })?;
            result = self.exchange(writes, &pipe, read_commands, requests);
        }
        if result.is_err() {
            self.conn = None;
            writes.sent = false;
        }
        result
    }

    fn exchange(
        &mut self,
        writes: &mut SentWrites,
        reads: &redis::Pipeline,
        read_commands: usize,
        requests: &[(&str, i32, Vec<String>)],
    ) -> Result<(Vec<WriteOutcome>, Vec<PartitionSnapshot>), StateError> {
        let conn = self.conn()?;
        if !writes.is_empty() && !writes.sent {
            conn.send_packed_command(&writes.packed)?;
            writes.sent = true;
        }
        if read_commands > 0 {
            conn.send_packed_command(&reads.get_packed_pipeline())?;
        }
        let mut outcomes = Vec::with_capacity(writes.scripts);
        let mut no_script = false;
        for _ in 0..writes.scripts {
            match conn.recv_response()?.extract_error() {
                Ok(v) => outcomes.push(parse_write_reply(&redis::from_redis_value::<String>(&v)?)?),
                Err(e) if e.kind() == redis::ErrorKind::NoScriptError => no_script = true,
                Err(e) => return Err(e.into()),
            }
        }
        for _ in 0..writes.trims {
            conn.recv_response()?.extract_error()?;
        }
        let mut replies = Vec::with_capacity(read_commands);
        for _ in 0..read_commands {
            replies.push(conn.recv_response()?.extract_error()?);
        }
        if no_script {
            return Err(StateError::NoScript);
        }
        Ok((outcomes, parse_reads(replies.into_iter(), requests)?))
    }

    /// Everything in a partition's outbox (awards decided, not yet acked).
    pub fn outbox(&mut self, partition: i32) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.with_conn(|c, keys| c.hgetall(keys.outbox(partition)))
    }

    /// Removes acknowledged awards from outboxes: (partition, award ids).
    pub fn trim_outboxes(&mut self, acked: &[(i32, Vec<String>)]) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        for (partition, ids) in acked {
            if !ids.is_empty() {
                pipe.cmd("HDEL")
                    .arg(self.keys.outbox(*partition))
                    .arg(ids)
                    .ignore();
            }
        }
        self.with_conn(|c, _| pipe.query::<()>(c))
    }

    /// The stored state of one user key (tools and tests).
    pub fn user_state(&mut self, key: &str) -> Result<Option<String>, StateError> {
        self.with_conn(|c, _| c.get(key))
    }
}

fn parse_write_reply(reply: &str) -> Result<WriteOutcome, StateError> {
    if reply == "OK" {
        return Ok(WriteOutcome::Applied);
    }
    if reply.starts_with("STALE_EPOCH:") {
        return Ok(WriteOutcome::StaleEpoch);
    }
    if let Some(actual) = reply.strip_prefix("OFFSET_MOVED:") {
        if let Ok(actual) = actual.parse() {
            return Ok(WriteOutcome::OffsetMoved { actual });
        }
    }
    Err(StateError::Protocol(format!(
        "apply_batch replied {reply:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_partition_hash_tag() {
        let k = Keys::new("inc");
        assert_eq!(k.meta(3), "inc:{3}:meta");
        assert_eq!(k.outbox(3), "inc:{3}:outbox");
        assert_eq!(k.user(3, EventKind::DataLogged, "u-1"), "inc:{3}:dl:u-1");
    }

    #[test]
    fn write_replies_parse() {
        assert_eq!(parse_write_reply("OK").unwrap(), WriteOutcome::Applied);
        assert_eq!(
            parse_write_reply("STALE_EPOCH:false").unwrap(),
            WriteOutcome::StaleEpoch
        );
        assert_eq!(
            parse_write_reply("OFFSET_MOVED:41").unwrap(),
            WriteOutcome::OffsetMoved { actual: 41 }
        );
        assert!(parse_write_reply("what").is_err());
    }
}
