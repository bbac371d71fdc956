//! The processor's sweeper: deletes expired user states from the state
//! hashes of the partitions this instance owns (Redis 7.0 has no per-field
//! expiry; see [`crate::state`]). Every reader already ignores an expired
//! state, so the sweep only frees memory: it never decides anything, and a
//! late or skipped pass changes no award. It runs on its own thread and
//! Redis connection, and it paces itself: after each step it waits
//! [`REST_PER_BUSY`] times as long as the step took, so Redis (single
//! threaded) gives the sweep about a tenth of its time and the hot path's
//! batches wait at most one step. Unpaced, a pass over the 100,000 or more
//! states a bench run holds ran its steps of 2-3 ms back to back, and the
//! processor fell behind by up to 48,000 events meanwhile (README,
//! Performance).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::events::EventKind;
use crate::processor::Shutdown;
use crate::state::RedisState;
use crate::telemetry::Metrics;

/// Users looked at per sweep step (one short script call each).
const USERS_PER_STEP: usize = 1000;
/// The first pass starts this soon after start (or after the interval, when shorter).
const FIRST_PASS_AFTER: Duration = Duration::from_secs(60);
/// After each step the sweeper rests this many times the step's duration.
const REST_PER_BUSY: u32 = 9;
/// The longest rest between two steps (a step slowed by a stalled Redis
/// does not park the pass for long).
const MAX_REST: Duration = Duration::from_secs(1);

/// The pause after a sweep step that took `step`: the sweep takes about
/// 1 / (1 + [`REST_PER_BUSY`]) of the time, at most [`MAX_REST`] apart.
pub fn rest_after(step: Duration) -> Duration {
    step.saturating_mul(REST_PER_BUSY).min(MAX_REST)
}

/// The shards owned now: (partition, event kind).
pub type OwnedShards = Box<dyn Fn() -> Vec<(i32, EventKind)> + Send>;

pub struct Sweeper {
    /// Its own connection: a sweep step never sits between the hot path's
    /// pipelined writes and their replies.
    pub redis: RedisState,
    pub interval: Duration,
    pub owned: OwnedShards,
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
}

impl Sweeper {
    /// Sweeps every owned shard once per interval until shutdown.
    pub fn run(mut self) {
        let mut next_pass = Instant::now() + self.interval.min(FIRST_PASS_AFTER);
        while !self.shutdown.is_triggered() {
            if Instant::now() < next_pass {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            next_pass = Instant::now() + self.interval;
            let shards = (self.owned)();
            let started = Instant::now();
            let mut deleted = 0u64;
            for (partition, kind) in shards.iter().copied() {
                match self.sweep_shard(partition, kind) {
                    Ok(n) => deleted += n,
                    Err(e) => {
                        warn!(partition, kind = kind.tag(), error = %e, "sweep of expired states failed; the next pass retries");
                    }
                }
            }
            if deleted > 0 {
                info!(
                    shards = shards.len(),
                    deleted,
                    seconds = started.elapsed().as_secs_f64(),
                    "expired user states deleted"
                );
            } else {
                debug!(shards = shards.len(), "sweep found no expired user states");
            }
        }
    }

    /// One full pass over one state hash; returns the states deleted.
    fn sweep_shard(
        &mut self,
        partition: i32,
        kind: EventKind,
    ) -> Result<u64, crate::state::StateError> {
        let mut cursor = 0;
        let mut deleted = 0;
        loop {
            let now = chrono::Utc::now().timestamp();
            let started = Instant::now();
            let (next, n) = self
                .redis
                .sweep_step(partition, kind, cursor, now, USERS_PER_STEP)?;
            let took = started.elapsed();
            deleted += n;
            if n > 0 {
                self.metrics
                    .states_expired
                    .with_label_values(&[kind.tag()])
                    .inc_by(n);
            }
            if next == 0 || self.shutdown.is_triggered() {
                return Ok(deleted);
            }
            cursor = next;
            std::thread::sleep(rest_after(took));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_followed_by_nine_times_its_duration_at_most_a_second() {
        assert_eq!(
            rest_after(Duration::from_millis(3)),
            Duration::from_millis(27)
        );
        assert_eq!(rest_after(Duration::ZERO), Duration::ZERO);
        assert_eq!(rest_after(Duration::from_millis(200)), MAX_REST);
    }
}
