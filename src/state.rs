//! Every Redis key and script of the processor, and nothing else.
//!
//! Layout (all keys of input partition `p` share the hash tag `{p}`, so one
//! script can touch them all, in Redis Cluster too; the batch transaction
//! below spans a batch's partitions, so on a cluster it would have to be cut
//! per slot: this client speaks to one Redis):
//!
//! | key                     | type | holds                                             |
//! |-------------------------|------|---------------------------------------------------|
//! | `<prefix>:{p}:meta`     | hash | `epoch:<topic>`, `offset:<topic>`                 |
//! | `<prefix>:{p}:outbox`   | hash | award id -> encoded award, until acked            |
//! | `<prefix>:{p}:<kind>`   | hash | user id -> the user's stored state for that event kind |
//!
//! A stored state is `<expires at, unix seconds>|<state>` (`engine::UserState::encode`).
//! One hash per shard and kind, not one key per user: a batch writes all its
//! users with one `HSET` (a `SET` per user cost Redis several times more per
//! event), and a field costs less memory than a key.
//!
//! A batch's writes (states, outbox, applied offset) go as one `MULTI`/`EXEC`
//! transaction, sent on the connection whose read of the same batch began
//! with a `WATCH` of the partitions' meta hashes: if anything changed a meta
//! hash since that read (another consumer's claim bumps the epoch; only the
//! owner moves the offset), Redis aborts the transaction and nothing is
//! written. That is the check the `apply_batch` script makes, without
//! passing every state through Lua (which cost Redis about five times as
//! much per batch). Writes that cannot rely on a watch (resent on a new
//! connection after an error) and an aborted transaction go as one
//! `apply_batch` script per partition batch, which checks epoch and offset
//! itself and answers per batch.
//! Redis 7.0 has no per-field expiry, so the expiry travels in the value:
//! readers treat an expired state as absent ([`live_state`]), and the
//! processor's sweeper deletes expired states ([`RedisState::sweep_step`]).
//!
//! A user's state is split by event kind so that each hash is written by the
//! owner of exactly one input (topic, partition): two consumers holding
//! partition `p` of two topics never write the same hash.
//!
//! This module uses the synchronous client: the processor runs on its own
//! thread and the rebalance callback (which claims partitions) is synchronous.

use std::time::Duration;

use redis::{Commands, Connection, Script, Value};

use crate::events::EventKind;

const APPLY_BATCH_LUA: &str = include_str!("scripts/apply_batch.lua");
const CLAIM_PARTITION_LUA: &str = include_str!("scripts/claim_partition.lua");
const SWEEP_EXPIRED_LUA: &str = include_str!("scripts/sweep_expired.lua");

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

/// A stored state: `<expires at, unix seconds>|<state>`, built in one
/// allocation; `body` writes the state ([`UserState::encode_into`](crate::engine::UserState::encode_into)).
pub fn stored_state(expires_at_unix_s: i64, body: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(itoa::Buffer::new().format(expires_at_unix_s));
    out.push('|');
    body(&mut out);
    out
}

/// What a stored value says at `now_unix_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored<'a> {
    /// The state, without its expiry.
    Live(&'a str),
    /// Expired: the same as absent (the sweeper deletes it).
    Expired,
    /// No readable expiry: not written by this version (counted, ignored).
    Malformed,
}

/// Splits a stored value into expiry and state.
pub fn live_state(stored: &str, now_unix_s: i64) -> Stored<'_> {
    let Some((expires_at, body)) = crate::engine::split_once_byte(stored, b'|') else {
        return Stored::Malformed;
    };
    match expires_at.parse::<i64>() {
        Ok(at) if at > now_unix_s => Stored::Live(body),
        Ok(_) => Stored::Expired,
        Err(_) => Stored::Malformed,
    }
}

/// How a batch's writes travel to Redis.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum WriteForm {
    /// `MULTI`, the batches' plain `HSET`/`HDEL` commands, `EXEC`: valid
    /// only on the connection whose last read `WATCH`ed the partitions' meta
    /// hashes before reading them (any change since, such as another
    /// consumer's claim, aborts the whole transaction), which is how the
    /// processor sends each batch ([`RedisState::send_writes`]). Redis does
    /// far less per user than for a script's arguments.
    #[default]
    Transaction,
    /// One `apply_batch` script per batch, which checks the epoch and the
    /// applied offset itself and answers per batch: for writes sent without
    /// that watch (a retry on a new connection, [`RedisState::write_batches`])
    /// and after an aborted transaction.
    Scripts,
}

/// Writes packed by [`RedisState::pack_writes`], sent ahead of a read.
#[derive(Debug, Default)]
pub struct SentWrites {
    /// Kept to pack them again as scripts when the transaction cannot be
    /// sent or was aborted.
    batches: Vec<BatchWrite>,
    trims: Vec<(i32, Vec<String>)>,
    form: WriteForm,
    packed: Vec<u8>,
    /// Commands queued between `MULTI` and `EXEC` (transaction form).
    queued: usize,
    trim_commands: usize,
    sent: bool,
}

impl SentWrites {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.trim_commands == 0
    }

    /// The batches, in the order of the outcomes `read_after` answers.
    pub fn batches(&self) -> &[BatchWrite] {
        &self.batches
    }

    /// The outbox trims (partition, acknowledged award ids).
    pub fn trims(&self) -> &[(i32, Vec<String>)] {
        &self.trims
    }
}

/// What one exchange's write replies said.
enum WriteReplies {
    Outcomes(Vec<WriteOutcome>),
    /// A watched meta hash changed since the read: nothing was written.
    Aborted,
    /// Redis lost its script cache (restarted).
    NoScript,
}

/// One partition batch to read before deciding: its meta and the states of
/// the given users.
#[derive(Debug, Clone)]
pub struct BatchRead<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub kind: EventKind,
    /// Distinct user ids, in the order their states are answered.
    pub users: Vec<&'a str>,
}

fn parse_reads(
    mut replies: impl Iterator<Item = Value>,
    requests: &[BatchRead<'_>],
) -> Result<Vec<PartitionSnapshot>, StateError> {
    let short = || StateError::Protocol("short pipeline reply".into());
    let mut out = Vec::with_capacity(requests.len());
    for request in requests {
        let meta: (Option<i64>, Option<i64>) =
            redis::from_owned_redis_value(replies.next().ok_or_else(short)?)?;
        let stored: Vec<Option<String>> = if request.users.is_empty() {
            Vec::new()
        } else {
            redis::from_owned_redis_value(replies.next().ok_or_else(short)?)?
        };
        if stored.len() != request.users.len() {
            return Err(StateError::Protocol(format!(
                "HMGET of {} users answered {} values",
                request.users.len(),
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
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn meta(&self, partition: i32) -> String {
        format!("{}:{{{partition}}}:meta", self.prefix)
    }
    /// The meta hash's field of a topic's claim epoch.
    pub fn epoch_field(topic: &str) -> String {
        format!("epoch:{topic}")
    }
    /// The meta hash's field of a topic's applied offset.
    pub fn offset_field(topic: &str) -> String {
        format!("offset:{topic}")
    }
    pub fn outbox(&self, partition: i32) -> String {
        format!("{}:{{{partition}}}:outbox", self.prefix)
    }
    /// The shard's state hash of one event kind: user id -> stored state.
    pub fn states(&self, partition: i32, kind: EventKind) -> String {
        format!("{}:{{{partition}}}:{}", self.prefix, kind.tag())
    }
    /// A name for one user's state (`<state hash> <user id>`), for tools,
    /// tests and logs; the state itself is the field `user_id` of
    /// [`Keys::states`].
    pub fn user_label(&self, partition: i32, kind: EventKind, user_id: &str) -> String {
        format!("{} {user_id}", self.states(partition, kind))
    }
    /// Which state hash a key is: (partition, kind), or `None` for the
    /// shard's other keys and keys of other prefixes.
    pub fn parse_states(&self, key: &str) -> Option<(i32, EventKind)> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?;
        let (partition, tag) = rest.split_once("}:")?;
        let kind = match tag {
            "dl" => EventKind::DataLogged,
            "br" => EventKind::BirthReported,
            _ => return None,
        };
        Some((partition.parse().ok()?, kind))
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
    /// The stored value of each requested user, in request order (`None`:
    /// no state); read it with [`live_state`].
    pub users: Vec<Option<String>>,
}

/// One partition batch to write.
#[derive(Debug, Clone)]
pub struct BatchWrite {
    pub topic: String,
    pub partition: i32,
    /// The topic's event kind (which state hash of the shard).
    pub kind: EventKind,
    pub epoch: i64,
    pub expected_offset: i64,
    pub new_offset: i64,
    pub users: Vec<UserWrite>,
    /// (award id, encoded award) added to the outbox.
    pub awards: Vec<(String, Vec<u8>)>,
}

/// A user's whole new stored state ([`stored_state`]); an empty value
/// deletes it.
#[derive(Debug, Clone)]
pub struct UserWrite {
    pub user_id: String,
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
    /// Counts the connections made: which one a watch was set on.
    conn_id: u64,
    /// The connection whose last read `WATCH`ed the meta hashes that the
    /// next transaction relies on; cleared when a transaction is sent.
    watched: Option<u64>,
    /// Transactions aborted since [`RedisState::take_aborted`] last asked.
    aborted: u64,
    timeout: Duration,
    pub keys: Keys,
    apply_batch: Script,
    claim_partition: Script,
    sweep_expired: Script,
}

impl RedisState {
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisState, StateError> {
        Ok(RedisState {
            client: redis::Client::open(url)?,
            conn: None,
            conn_id: 0,
            watched: None,
            aborted: 0,
            timeout,
            keys: Keys::new(prefix),
            apply_batch: Script::new(APPLY_BATCH_LUA),
            claim_partition: Script::new(CLAIM_PARTITION_LUA),
            sweep_expired: Script::new(SWEEP_EXPIRED_LUA),
        })
    }

    fn conn(&mut self) -> Result<&mut Connection, StateError> {
        if self.conn.is_none() {
            let conn = self.client.get_connection_with_timeout(self.timeout)?;
            conn.set_read_timeout(Some(self.timeout))?;
            conn.set_write_timeout(Some(self.timeout))?;
            self.conn = Some(conn);
            self.conn_id += 1;
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

    /// Reads, in one round trip, the meta and the given users' states of
    /// each partition batch.
    pub fn read_batches(
        &mut self,
        requests: &[BatchRead<'_>],
    ) -> Result<Vec<PartitionSnapshot>, StateError> {
        let (pipe, _) = self.read_pipeline(requests, false);
        let replies: Vec<Value> = self.with_conn(|c, _| pipe.query(c))?;
        parse_reads(replies.into_iter(), requests)
    }

    /// The reads of `requests`; with `watch`, after a `WATCH` of their meta
    /// hashes (which lets the writes decided from them go as a transaction).
    fn read_pipeline(&self, requests: &[BatchRead<'_>], watch: bool) -> (redis::Pipeline, usize) {
        let mut pipe = redis::pipe();
        let mut commands = 0;
        if watch && !requests.is_empty() {
            let mut metas: Vec<String> = requests
                .iter()
                .map(|r| self.keys.meta(r.partition))
                .collect();
            metas.sort_unstable();
            metas.dedup();
            pipe.cmd("WATCH").arg(metas);
            commands += 1;
        }
        for r in requests {
            pipe.cmd("HMGET")
                .arg(self.keys.meta(r.partition))
                .arg(Keys::epoch_field(r.topic))
                .arg(Keys::offset_field(r.topic));
            commands += 1;
            if !r.users.is_empty() {
                pipe.cmd("HMGET")
                    .arg(self.keys.states(r.partition, r.kind))
                    .arg(&r.users);
                commands += 1;
            }
        }
        (pipe, commands)
    }

    /// Applies the batches, one script call each, in one round trip.
    pub fn write_batches(
        &mut self,
        batches: Vec<BatchWrite>,
    ) -> Result<Vec<WriteOutcome>, StateError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let mut writes = self.pack_writes(batches, &[]);
        Ok(self.read_after(Some(&mut writes), &[])?.0)
    }

    /// Packs the batches' writes and the outbox trims (partition,
    /// acknowledged award ids) into one pipeline, to be sent ahead of the
    /// next read with [`RedisState::send_writes`]: as a transaction, which
    /// is answered `Applied` for every batch or aborted as a whole (then sent
    /// again as scripts, which answer per batch).
    pub fn pack_writes(
        &self,
        batches: Vec<BatchWrite>,
        trims: &[(i32, Vec<String>)],
    ) -> SentWrites {
        let mut writes = SentWrites {
            batches,
            trims: trims.to_vec(),
            ..SentWrites::default()
        };
        self.pack(&mut writes, WriteForm::Transaction);
        writes
    }

    fn pack(&self, writes: &mut SentWrites, form: WriteForm) {
        let mut pipe = redis::pipe();
        let mut queued = 0;
        if form == WriteForm::Transaction && !writes.batches.is_empty() {
            pipe.cmd("MULTI");
        }
        for b in &writes.batches {
            let sets = b.users.iter().filter(|u| !u.value.is_empty());
            let deletes = b.users.iter().filter(|u| u.value.is_empty());
            match form {
                WriteForm::Transaction => {
                    let states = self.keys.states(b.partition, b.kind);
                    if sets.clone().next().is_some() {
                        let cmd = pipe.cmd("HSET").arg(&states);
                        for u in sets {
                            cmd.arg(&u.user_id).arg(&u.value);
                        }
                        queued += 1;
                    }
                    if deletes.clone().next().is_some() {
                        let cmd = pipe.cmd("HDEL").arg(&states);
                        for u in deletes {
                            cmd.arg(&u.user_id);
                        }
                        queued += 1;
                    }
                    if !b.awards.is_empty() {
                        let cmd = pipe.cmd("HSET").arg(self.keys.outbox(b.partition));
                        for (id, payload) in &b.awards {
                            cmd.arg(id).arg(payload.as_slice());
                        }
                        queued += 1;
                    }
                    pipe.cmd("HSET")
                        .arg(self.keys.meta(b.partition))
                        .arg(Keys::offset_field(&b.topic))
                        .arg(b.new_offset);
                    queued += 1;
                }
                WriteForm::Scripts => {
                    let n_deletes = deletes.clone().count();
                    let cmd = pipe
                        .cmd("EVALSHA")
                        .arg(self.apply_batch.get_hash())
                        .arg(3)
                        .arg(self.keys.meta(b.partition))
                        .arg(self.keys.outbox(b.partition))
                        .arg(self.keys.states(b.partition, b.kind))
                        .arg(&b.topic)
                        .arg(b.epoch)
                        .arg(b.expected_offset)
                        .arg(b.new_offset)
                        .arg(b.users.len() - n_deletes)
                        .arg(n_deletes);
                    for u in sets {
                        cmd.arg(&u.user_id).arg(&u.value);
                    }
                    for u in deletes {
                        cmd.arg(&u.user_id);
                    }
                    for (id, payload) in &b.awards {
                        cmd.arg(id).arg(payload.as_slice());
                    }
                }
            }
        }
        if form == WriteForm::Transaction && !writes.batches.is_empty() {
            pipe.cmd("EXEC");
        }
        let mut trim_commands = 0;
        for (partition, ids) in &writes.trims {
            if !ids.is_empty() {
                pipe.cmd("HDEL").arg(self.keys.outbox(*partition)).arg(ids);
                trim_commands += 1;
            }
        }
        writes.form = form;
        writes.packed = pipe.get_packed_pipeline();
        writes.queued = queued;
        writes.trim_commands = trim_commands;
        writes.sent = false;
    }

    /// Sends packed writes without waiting for their replies (they are read
    /// by the next [`RedisState::read_after`]). A transaction goes only on
    /// the connection of the last read (whose `WATCH` it relies on); writes
    /// not sent here are sent by `read_after`, as scripts.
    pub fn send_writes(&mut self, writes: &mut SentWrites) {
        if writes.is_empty() || self.conn.is_none() {
            return;
        }
        if !writes.batches.is_empty() && writes.form == WriteForm::Transaction {
            if self.watched != Some(self.conn_id) {
                return;
            }
            self.watched = None;
        }
        let sent = self.with_conn(|c, _| c.send_packed_command(&writes.packed));
        writes.sent = sent.is_ok();
        if !writes.sent {
            self.conn = None;
        }
    }

    /// How many batch transactions were aborted (and sent again as scripts)
    /// since the last call.
    pub fn take_aborted(&mut self) -> u64 {
        std::mem::take(&mut self.aborted)
    }

    /// Reads the partition batches of `requests` after `writes` (sent before,
    /// on this connection, so Redis applied them first): returns the writes'
    /// outcomes and the snapshots. On any error the connection is dropped and
    /// the writes are marked unsent: calling again re-sends them as scripts,
    /// which is safe (a script already applied answers `OFFSET_MOVED` at its
    /// own new offset; trims are idempotent). An aborted transaction is sent
    /// again as scripts at once, with the reads behind them.
    pub fn read_after(
        &mut self,
        writes: Option<&mut SentWrites>,
        requests: &[BatchRead<'_>],
    ) -> Result<(Vec<WriteOutcome>, Vec<PartitionSnapshot>), StateError> {
        let (pipe, read_commands) = self.read_pipeline(requests, true);
        let mut empty = SentWrites::default();
        let writes = writes.unwrap_or(&mut empty);
        let mut result = self.exchange(writes, &pipe, read_commands, requests);
        for _ in 0..2 {
            match result {
                Ok((WriteReplies::Aborted, _)) => {
                    self.aborted += 1;
                    tracing::debug!(
                        batches = writes.batches.len(),
                        "the batch transaction was aborted (a watched partition meta hash changed since the read): sending it again as checking scripts"
                    );
                    self.pack(writes, WriteForm::Scripts);
                }
                Ok((WriteReplies::NoScript, _)) => {
                    // Redis restarted and lost its script cache: load it and
                    // go again (a partial first attempt is harmless, see above).
                    writes.sent = false;
                    self.with_conn(|c, _| {
                        redis::cmd("SCRIPT")
                            .arg("LOAD")
                            .arg(APPLY_BATCH_LUA)
                            .query::<String>(c)
                    })?;
                }
                _ => break,
            }
            result = self.exchange(writes, &pipe, read_commands, requests);
        }
        match result {
            Ok((WriteReplies::Outcomes(outcomes), snapshots)) => Ok((outcomes, snapshots)),
            Ok((WriteReplies::Aborted | WriteReplies::NoScript, _)) => {
                self.conn = None;
                writes.sent = false;
                Err(StateError::Protocol(
                    "the batch writes were refused three times in a row (aborted transaction or missing script)".into(),
                ))
            }
            Err(e) => {
                self.conn = None;
                writes.sent = false;
                Err(e)
            }
        }
    }

    fn exchange(
        &mut self,
        writes: &mut SentWrites,
        reads: &redis::Pipeline,
        read_commands: usize,
        requests: &[BatchRead<'_>],
    ) -> Result<(WriteReplies, Vec<PartitionSnapshot>), StateError> {
        if !writes.sent && writes.form == WriteForm::Transaction && !writes.batches.is_empty() {
            // Not sent right after its read: the watch cannot be relied on.
            self.pack(writes, WriteForm::Scripts);
        }
        let conn = self.conn()?;
        if !writes.is_empty() && !writes.sent {
            conn.send_packed_command(&writes.packed)?;
            writes.sent = true;
        }
        if read_commands > 0 {
            conn.send_packed_command(&reads.get_packed_pipeline())?;
        }
        let write_replies = match writes.form {
            _ if writes.batches.is_empty() => WriteReplies::Outcomes(Vec::new()),
            WriteForm::Transaction => {
                conn.recv_response()?.extract_error()?; // MULTI
                let mut refused = None;
                for _ in 0..writes.queued {
                    if let Err(e) = conn.recv_response()?.extract_error() {
                        refused.get_or_insert(e);
                    }
                }
                let exec = conn.recv_response()?;
                if let Some(e) = refused {
                    return Err(e.into());
                }
                match exec.extract_error()? {
                    Value::Nil => WriteReplies::Aborted,
                    Value::Array(_) => {
                        WriteReplies::Outcomes(vec![WriteOutcome::Applied; writes.batches.len()])
                    }
                    other => {
                        return Err(StateError::Protocol(format!(
                            "EXEC of the batch writes replied {other:?}"
                        )))
                    }
                }
            }
            WriteForm::Scripts => {
                let mut outcomes = Vec::with_capacity(writes.batches.len());
                let mut no_script = false;
                for _ in 0..writes.batches.len() {
                    match conn.recv_response()?.extract_error() {
                        Ok(v) => outcomes
                            .push(parse_write_reply(&redis::from_redis_value::<String>(&v)?)?),
                        Err(e) if e.kind() == redis::ErrorKind::NoScriptError => no_script = true,
                        Err(e) => return Err(e.into()),
                    }
                }
                if no_script {
                    WriteReplies::NoScript
                } else {
                    WriteReplies::Outcomes(outcomes)
                }
            }
        };
        for _ in 0..writes.trim_commands {
            conn.recv_response()?.extract_error()?;
        }
        let mut replies = Vec::with_capacity(read_commands);
        for _ in 0..read_commands {
            replies.push(conn.recv_response()?.extract_error()?);
        }
        let mut replies = replies.into_iter();
        if !requests.is_empty() {
            replies.next(); // WATCH
        }
        let snapshots = parse_reads(replies, requests)?;
        if !requests.is_empty() {
            self.watched = Some(self.conn_id);
        }
        Ok((write_replies, snapshots))
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

    /// The stored value of one user's state ([`live_state`] reads it;
    /// tools and tests).
    pub fn user_state(
        &mut self,
        partition: i32,
        kind: EventKind,
        user_id: &str,
    ) -> Result<Option<String>, StateError> {
        self.with_conn(|c, keys| c.hget(keys.states(partition, kind), user_id))
    }

    /// One step of a sweep of a state hash ([`Keys::states`]): looks at
    /// about `count` users from `cursor` (0 starts a pass) and deletes those
    /// whose state expired by `now_unix_s`. Returns the next cursor (0: the
    /// pass is complete) and the users deleted.
    pub fn sweep_step(
        &mut self,
        partition: i32,
        kind: EventKind,
        cursor: u64,
        now_unix_s: i64,
        count: usize,
    ) -> Result<(u64, u64), StateError> {
        let script = self.sweep_expired.clone();
        let (next, deleted): (String, u64) = self.with_conn(|c, keys| {
            script
                .key(keys.states(partition, kind))
                .arg(cursor)
                .arg(now_unix_s)
                .arg(count)
                .invoke(c)
        })?;
        let next = next
            .parse()
            .map_err(|_| StateError::Protocol(format!("HSCAN cursor {next:?}")))?;
        Ok((next, deleted))
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
        assert_eq!(k.states(3, EventKind::DataLogged), "inc:{3}:dl");
        assert_eq!(k.states(3, EventKind::BirthReported), "inc:{3}:br");
        assert_eq!(
            k.parse_states("inc:{3}:dl"),
            Some((3, EventKind::DataLogged))
        );
        assert_eq!(k.parse_states("inc:{3}:meta"), None);
        assert_eq!(k.parse_states("inc2:{3}:dl"), None);
        assert_eq!(k.parse_states("inc:{x}:dl"), None);
    }

    #[test]
    fn stored_states_carry_their_expiry() {
        let v = stored_state(1_000, |b| b.push_str("wm:dl=5;a:x@p=id|2026-01-01|v1"));
        assert_eq!(v, "1000|wm:dl=5;a:x@p=id|2026-01-01|v1");
        assert_eq!(
            live_state(&v, 999),
            Stored::Live("wm:dl=5;a:x@p=id|2026-01-01|v1")
        );
        assert_eq!(live_state(&v, 1_000), Stored::Expired);
        assert_eq!(live_state("wm:dl=5", 0), Stored::Malformed);
        assert_eq!(live_state("x|wm:dl=5", 0), Stored::Malformed);
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
