//! The processor's per-event CPU work without I/O, stage by stage: `cargo bench --bench engine`.
//!
//! The same synthetic workload as `incentives bench` (`--users`, `--days`, `--seed`, here
//! `BENCH_USERS`, `BENCH_DAYS`, `BENCH_SEED`), Avro-encoded once, then, per event and in
//! event order, the steps the processor runs for a user who appears once in a batch (the
//! common case in a drain): decode the record, match the rules, parse the stored state,
//! apply the event, prune, encode the stored state. Each user's stored state is kept in a
//! map between events, in place of Redis. Prints nanoseconds per event for each stage and
//! in total (the best of `BENCH_ROUNDS` rounds, default 5), so a change to the engine or
//! the codec can be compared without the broker's and Redis's noise.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use incentives::codec::SchemaRegistry;
use incentives::config::Config;
use incentives::engine::{
    apply_event, check_not_in_future, matching_rules, prune_ended_programs, Limits, UserState,
};
use incentives::events::SourceEvent;
use incentives::state::{live_state, stored_state, Stored};
use incentives::tools::{synthetic_events, Synthetic};

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
    decode_event: Duration,
    rules: Duration,
    decode_state: Duration,
    apply: Duration,
    encode_state: Duration,
}

impl Stages {
    fn total(&self) -> Duration {
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
        let mut source = SourceEvent {
            topic: "bench".into(),
            partition: 0,
            offset: 0,
            event_id: String::new(),
        };
        for (offset, record) in records.iter().enumerate() {
            let started = Instant::now();
            let Ok(event) = codec.decode_event(record) else {
                panic!("record {offset} does not decode");
            };
            let decoded = Instant::now();
            if check_not_in_future(&event, now, &limits).is_err() {
                continue;
            }
            let rules = matching_rules(&config.programs, &event);
            let matched = Instant::now();
            t.decode_event += decoded - started;
            t.rules += matched - decoded;
            if rules.is_empty() {
                continue;
            }
            let mut state = match stored.get(event.user_id()).map(|v| live_state(v, now_s)) {
                Some(Stored::Live(body)) => UserState::decode(body, codes).0,
                _ => UserState::default(),
            };
            let parsed = Instant::now();
            source.offset = offset as i64;
            source.event_id.clear();
            source.event_id.push_str(event.event_id());
            if let Ok(new) = apply_event(&mut state, &event, &rules, &source, &limits) {
                applied += 1;
                awards += new.len();
                for award in &new {
                    std::hint::black_box(codec.encode_award(award));
                }
            }
            if let Some(employer) = state.employer.clone() {
                let employer_rules = config.programs.for_employer(&employer, event.kind());
                prune_ended_programs(&mut state, event.kind(), employer_rules, &limits);
            }
            let decided = Instant::now();
            let value = stored_state(now_s + ttl, |out| state.encode_into(out, codes));
            let encoded = Instant::now();
            t.decode_state += parsed - matched;
            t.apply += decided - parsed;
            t.encode_state += encoded - decided;
            match stored.get_mut(event.user_id()) {
                Some(v) => *v = value,
                None => {
                    stored.insert(event.user_id().to_string(), value);
                }
            }
        }
        if best.is_none_or(|(b, _, _)| t.total() < b.total()) {
            best = Some((t, applied, awards));
        }
    }
    let Some((t, applied, awards)) = best else {
        panic!("BENCH_ROUNDS must be at least 1");
    };
    let per = |d: Duration| d.as_nanos() as f64 / records.len() as f64;
    println!("engine: {applied} applied, {awards} awards decided per round");
    for (stage, d) in [
        ("decode record (Avro)", t.decode_event),
        ("match rules", t.rules),
        ("parse stored state", t.decode_state),
        ("apply + prune (+ encode awards)", t.apply),
        ("encode stored state", t.encode_state),
        ("total", t.total()),
    ] {
        println!("engine: {stage:<32} {:>8.0} ns/event", per(d));
    }
}
