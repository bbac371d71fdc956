//! `incentives api-bench`: the read API's latency, measured in-process (one
//! pooled HTTP client; no process per request). GETs of random users of a
//! synthetic workload (`user-<seed>-<n>`, as `produce --synthetic` names
//! them) rotate over the three user routes, with `concurrency` requests in
//! flight; every request's time from send to the end of its body is kept and
//! the exact (nearest-rank) percentiles are reported, overall and by route.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::loadgen::{Latencies, LatencySummary};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `http://host:port` of `incentives api`.
    pub base_url: String,
    pub api_key: String,
    /// Users `user-<seed>-000000` .. `user-<seed>-<users - 1>`.
    pub users: usize,
    pub seed: u64,
    /// Measured requests.
    pub requests: usize,
    /// Requests sent (and not counted) first: connections, caches.
    pub warmup: usize,
    pub concurrency: usize,
    /// The catalog incentive of the explanation route.
    pub incentive: String,
    pub timeout: Duration,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub requests: usize,
    pub elapsed: Duration,
    /// HTTP status -> count (transport errors under 0).
    pub statuses: BTreeMap<u16, usize>,
    pub overall: LatencySummary,
    pub by_route: BTreeMap<&'static str, LatencySummary>,
}

const ROUTES: [&str; 3] = ["incentives", "incentive", "awards"];

impl BenchReport {
    /// Lines for people: overall and by route, in milliseconds.
    pub fn lines(&self, concurrency: usize) -> Vec<String> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let row = |name: &str, s: &LatencySummary| {
            format!(
                "{name:<38} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                s.count,
                ms(s.mean),
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max)
            )
        };
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| {
                if *s == 0 {
                    format!("transport error: {n}")
                } else {
                    format!("{s}: {n}")
                }
            })
            .collect();
        let mut out = vec![
            format!(
                "{} requests, concurrency {concurrency}, {:.2}s, {:.0} requests/s; statuses {}",
                self.requests,
                self.elapsed.as_secs_f64(),
                self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9),
                statuses.join(", ")
            ),
            format!(
                "{:<38} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "route (ms)", "n", "mean", "p50", "p90", "p99", "max"
            ),
            row("all", &self.overall),
        ];
        for (route, s) in &self.by_route {
            out.push(row(&route_path(route), s));
        }
        out
    }
}

fn route_path(route: &str) -> String {
    match route {
        "incentives" => "GET /v1/users/{user}/incentives".into(),
        "incentive" => "GET /v1/users/{user}/incentives/{id}".into(),
        _ => "GET /v1/users/{user}/awards".into(),
    }
}

/// Runs the benchmark. Any answer but 200 is counted by status (404 means
/// the user has no state: not the same workload, or expired).
pub async fn run(o: &BenchOptions) -> Result<BenchReport, String> {
    if o.users == 0 || o.requests == 0 || o.concurrency == 0 {
        return Err("--users, --requests and --concurrency must be at least 1".into());
    }
    let client = reqwest::Client::builder()
        .timeout(o.timeout)
        .pool_max_idle_per_host(o.concurrency)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let base = o.base_url.trim_end_matches('/').to_string();
    let authorization = format!("Bearer {}", o.api_key);
    let mut rng = StdRng::seed_from_u64(o.seed ^ 0x5eed);
    let plan: Vec<(usize, String)> = (0..o.warmup + o.requests)
        .map(|i| {
            let user = format!("user-{}-{:06}", o.seed, rng.random_range(0..o.users));
            let route = i % ROUTES.len();
            let path = match route {
                0 => format!("/v1/users/{user}/incentives"),
                1 => format!("/v1/users/{user}/incentives/{}", o.incentive),
                _ => format!("/v1/users/{user}/awards"),
            };
            (route, format!("{base}{path}"))
        })
        .collect();
    let one = |url: String| {
        let request = client
            .get(url)
            .header(reqwest::header::AUTHORIZATION, &authorization);
        async move {
            let started = Instant::now();
            let status = match request.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    // Read the body: it is part of the answer, and the
                    // connection goes back to the pool.
                    match r.bytes().await {
                        Ok(_) => status,
                        Err(_) => 0,
                    }
                }
                Err(_) => 0,
            };
            (status, started.elapsed())
        }
    };
    // Warm-up: connections and Redis, not counted.
    let mut warm = plan[..o.warmup].iter().map(|(_, u)| u.clone());
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < o.concurrency {
            match warm.next() {
                Some(u) => in_flight.push(one(u)),
                None => break,
            }
        }
        if in_flight.next().await.is_none() {
            break;
        }
    }
    let mut overall = Latencies::default();
    let mut by_route: BTreeMap<&'static str, Latencies> = BTreeMap::new();
    let mut statuses = BTreeMap::new();
    let mut queue = plan[o.warmup..].iter();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < o.concurrency {
            let Some((route, url)) = queue.next() else {
                break;
            };
            let route = ROUTES[*route];
            let f = one(url.clone());
            in_flight.push(async move { (route, f.await) });
        }
        let Some((route, (status, took))) = in_flight.next().await else {
            break;
        };
        *statuses.entry(status).or_insert(0) += 1;
        overall.record(took);
        by_route.entry(route).or_default().record(took);
    }
    let elapsed = started.elapsed();
    Ok(BenchReport {
        requests: o.requests,
        elapsed,
        statuses,
        overall: overall.summary(),
        by_route: by_route
            .into_iter()
            .map(|(r, mut l)| (r, l.summary()))
            .collect(),
    })
}
