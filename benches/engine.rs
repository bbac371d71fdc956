//! The processor's per-event CPU work without I/O, stage by stage: `cargo bench --bench engine`.
//!
//! The same synthetic workload as `incentives bench` (`--users`, `--days`, `--seed`, here
//! `BENCH_USERS`, `BENCH_DAYS`, `BENCH_SEED`), Avro-encoded once, then, per event and in
//! event order, the steps the processor runs for a user who appears once in a batch (the
//! common case in a drain): decode the record, match the rules, parse the stored state,
//! apply the event, prune, encode the stored state. Each user's stored state is kept in a
//! map between events, in place of Redis. Prints nanoseconds per event for each stage and
//! in total (the best of `BENCH_ROUNDS` rounds, default 5), so a change to the engine or
//! the codec can be compared without the broker's and Redis's noise. It runs on jemalloc, as
//! the binary does, and also prints each stage's heap allocations per event, a figure that does
//! not move with the machine's load.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use incentives::codec::SchemaRegistry;
use incentives::config::Config;
use incentives::engine::{
    apply_event, check_not_in_future, matching_rules, prune_ended_programs, Limits, UserState,
};
use incentives::events::Source;
use incentives::state::{live_state, stored_state, Stored};
use incentives::tools::{synthetic_events, Synthetic};

/// jemalloc (the binary's allocator), counting allocations and reallocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[global_allocator]
static GLOBAL: Counting = Counting;

// SAFETY: every call goes to jemalloc with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { tikv_jemallocator::Jemalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { tikv_jemallocator::Jemalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { tikv_jemallocator::Jemalloc.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { tikv_jemallocator::Jemalloc.dealloc(ptr, layout) }
    }
}

/// A point in time and the allocations made until then.
#[derive(Clone, Copy)]
struct Mark(Instant, u64);

impl Mark {
    fn now() -> Mark {
        Mark(Instant::now(), ALLOCATIONS.load(Ordering::Relaxed))
    }
}

/// Time and allocations of one stage.
#[derive(Default, Clone, Copy)]
struct Cost {
    time: Duration,
    allocations: u64,
}

impl Cost {
    fn add(&mut self, from: Mark, to: Mark) {
        self.time += to.0 - from.0;
        self.allocations += to.1 - from.1;
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            time: self.time + o.time,
            allocations: self.allocations + o.allocations,
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid number")),
        Err(_) => default,
    }
}

#[derive(Default, Clone, Copy)]
struct Stages {
    decode_event: Cost,
    rules: Cost,
    decode_state: Cost,
    apply: Cost,
    encode_state: Cost,
}

impl Stages {
    fn total(&self) -> Cost {
        self.decode_event + self.rules + self.decode_state + self.apply + self.encode_state
    }
}

fn main() {
    let users: usize = env_or("BENCH_USERS", 20_000);
    let days: u32 = env_or("BENCH_DAYS", 10);
    let seed: u64 = env_or("BENCH_SEED", 1);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let config =
        Config::load(&config_dir).unwrap_or_else(|e| panic!("{}: {e}", config_dir.display()));
    let codec = SchemaRegistry::bundled().unwrap_or_else(|e| panic!("bundled schemas: {e}"));
    let limits = Limits::from_settings(&config.settings.processor, &config.settings.state);
    let events = synthetic_events(&Synthetic {
        users,
        days,
        seed,
        start: Utc::now().date_naive() - chrono::Duration::days(i64::from(days) + 1),
        employers: vec!["acme".into(), "globex".into()],
    });
    let records: Vec<Vec<u8>> = events.iter().map(|e| codec.encode_event(e)).collect();
    let codes = &config.programs.codes;
    let ttl = config.settings.state.idle_ttl.as_secs() as i64;
    println!(
        "engine: {} events ({users} users x {days} days, seed {seed}), best of {rounds} rounds",
        records.len()
    );

    let mut best: Option<(Stages, usize, usize)> = None;
    for _ in 0..rounds {
        let mut stored: HashMap<String, String> = HashMap::with_capacity(users);
        let mut t = Stages::default();
        let (mut applied, mut awards) = (0usize, 0usize);
        let now = Utc::now();
        let now_s = now.timestamp();
        for (offset, record) in records.iter().enumerate() {
            let started = Mark::now();
            let Ok(event) = codec.decode_event(record) else {
                panic!("record {offset} does not decode");
            };
            let decoded = Mark::now();
            if check_not_in_future(&event, now, &limits).is_err() {
                continue;
            }
            let rules = matching_rules(&config.programs, &event);
            let matched = Mark::now();
            t.decode_event.add(started, decoded);
            t.rules.add(decoded, matched);
            if rules.is_empty() {
                continue;
            }
            let mut state = match stored.get(event.user_id()).map(|v| live_state(v, now_s)) {
                Some(Stored::Live(body)) => UserState::decode(body, codes).0,
                _ => UserState::default(),
            };
            let parsed = Mark::now();
            let source = Source {
                topic: "bench",
                partition: 0,
                offset: offset as i64,
            };
            if let Ok(new) = apply_event(&mut state, &event, &rules, source, &limits) {
                applied += 1;
                awards += new.len();
                for award in &new {
                    std::hint::black_box(codec.encode_award(award));
                }
            }
            if let Some(employer) = state.employer.as_deref() {
                let employer_rules = config.programs.for_employer(employer, event.kind());
                prune_ended_programs(&mut state, event.kind(), employer_rules, &limits);
            }
            let decided = Mark::now();
            let value = stored_state(now_s + ttl, |out| state.encode_into(out, codes));
            let encoded = Mark::now();
            t.decode_state.add(matched, parsed);
            t.apply.add(parsed, decided);
            t.encode_state.add(decided, encoded);
            match stored.get_mut(event.user_id()) {
                Some(v) => *v = value,
                None => {
                    stored.insert(event.user_id().to_string(), value);
                }
            }
        }
        if best.is_none_or(|(b, _, _)| t.total().time < b.total().time) {
            best = Some((t, applied, awards));
        }
    }
    let Some((t, applied, awards)) = best else {
        panic!("BENCH_ROUNDS must be at least 1");
    };
    let n = records.len() as f64;
    println!("engine: {applied} applied, {awards} awards decided per round");
    for (stage, d) in [
        ("decode record (Avro)", t.decode_event),
        ("match rules", t.rules),
        ("parse stored state", t.decode_state),
        ("apply + prune (+ encode awards)", t.apply),
        ("encode stored state", t.encode_state),
        ("total", t.total()),
    ] {
        println!(
            "engine: {stage:<32} {:>8.0} ns/event {:>6.2} allocations/event",
            d.time.as_nanos() as f64 / n,
            d.allocations as f64 / n
        );
    }
}
