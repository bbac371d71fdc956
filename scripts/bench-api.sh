#!/usr/bin/env bash
# scripts/bench-api.sh -- the read API's latency on this machine: publishes a synthetic
# workload to fresh topics (fresh Redis key prefix), lets one release-build processor drain
# it and stops it, starts one release-build `incentives api` on the resulting state, and
# measures GET requests over random users of the workload with the in-process client of
# `incentives api-bench` (one pooled HTTP client; the three user routes in turn:
# /incentives, /incentives/{incentive} with its explanation, /awards). For each
# concurrency in BENCH_API_CONCURRENCY it prints p50/p90/p99/max from send to the end of the
# body, overall and by route, then the API's own mean request time and Redis read time from
# its /metrics. Client, API and Redis share this machine's CPUs (the broker is idle by
# then). Figures only, no pass/fail. Stops what it started; leaves Redis and the broker
# running (scripts/infra-down.sh stops them).
#
# Reads: BENCH_API_USERS [2000], BENCH_API_DAYS [10], BENCH_API_SEED [1],
#   BENCH_API_REQUESTS [20000] (measured requests per run, after 500 unmeasured),
#   BENCH_API_CONCURRENCY ["1 8"] (requests in flight; one run each),
#   BENCH_API_LISTEN [127.0.0.1:18081], BENCH_API_HTTP [127.0.0.1:9466] (the processor's
#   /metrics), BENCH_API_KEY [dev-key-change-me, the development key config/incentives.toml
#   accepts; it may read both synthetic employers], BENCH_API_READY_SECS [60],
#   plus everything scripts/env.sh and scripts/infra-up.sh read.
# Writes to $INCENTIVES_STATE_DIR: bench-api-processor.log, bench-api.log (the API's log).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"

USERS="${BENCH_API_USERS:-2000}"
DAYS="${BENCH_API_DAYS:-10}"
SEED="${BENCH_API_SEED:-1}"
REQUESTS="${BENCH_API_REQUESTS:-20000}"
CONCURRENCY="${BENCH_API_CONCURRENCY:-1 8}"
LISTEN="${BENCH_API_LISTEN:-127.0.0.1:18081}"
HTTP="${BENCH_API_HTTP:-127.0.0.1:9466}"
READY_SECS="${BENCH_API_READY_SECS:-60}"
export INCENTIVES_API_KEY="${BENCH_API_KEY:-dev-key-change-me}" # read by `api-bench`
BIN=target/release/incentives
URL="http://$LISTEN"
PROC_LOG="$INCENTIVES_STATE_DIR/bench-api-processor.log"
API_LOG="$INCENTIVES_STATE_DIR/bench-api.log"
proc_pid=""
api_pid=""

die() { echo "bench-api: error: $*" >&2; exit 1; }

# stop NAME PID: SIGTERM, wait up to 30s, then SIGKILL.
stop() {
  local name=$1 pid=$2 status=0 watchdog
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  (sleep 30 && kill -KILL "$pid" 2>/dev/null && echo "bench-api: $name ignored SIGTERM; killed" >&2) &
  watchdog=$!
  wait "$pid" || status=$?
  kill "$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  echo "bench-api: $name stopped (exit status $status)"
}
cleanup() {
  local p=$proc_pid a=$api_pid
  proc_pid="" api_pid=""
  stop processor "$p"
  stop api "$a"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
busy "$LISTEN" && die "something already listens on $LISTEN (set BENCH_API_LISTEN)"
busy "$HTTP" && die "something already listens on $HTTP (set BENCH_API_HTTP)"

# A fresh run: its own topics, consumer group and Redis key prefix.
scripts/infra-up.sh >/dev/null
run="apibench-$(date +%s)"
INCENTIVES_TOPIC_DATA_LOGGED="$run.data-logged" INCENTIVES_TOPIC_BIRTH_REPORTED="$run.birth-reported" \
  INCENTIVES_TOPIC_AWARDS="$run.awards" INCENTIVES_TOPIC_DEAD_LETTER="$run.dead-letter" scripts/infra-up.sh >/dev/null
export INCENTIVES__TOPICS__DATA_LOGGED="$run.data-logged" INCENTIVES__TOPICS__BIRTH_REPORTED="$run.birth-reported"
export INCENTIVES__TOPICS__AWARDS="$run.awards" INCENTIVES__TOPICS__DEAD_LETTER="$run.dead-letter"
export INCENTIVES__REDIS__KEY_PREFIX="$run" INCENTIVES__KAFKA__GROUP_ID="$run"
export INCENTIVES__HTTP__LISTEN="$HTTP" INCENTIVES__API__LISTEN="$LISTEN" INCENTIVES__LOG__FILTER=warn

cargo build --release --locked --quiet

echo "bench-api: publishing $USERS users x $DAYS days (seed $SEED) to $run.*"
summary=$("$BIN" produce --synthetic --users "$USERS" --days "$DAYS" --seed "$SEED" --quiet 2>&1) \
  || { echo "$summary" >&2; die "produce failed"; }
echo "$summary"
produced=$(sed -n 's/^produced \([0-9]*\) events.*/\1/p' <<<"$summary")
[[ -n "$produced" ]] || die "produce printed no summary"

metric_sum() { curl -s --max-time 5 "http://$1/metrics" | awk -v m="$2" 'index($1, m) == 1 {s += $2} END {print s + 0}'; }

"$BIN" process >"$PROC_LOG" 2>&1 </dev/null &
proc_pid=$!
deadline=$((SECONDS + 300))
while (( $(metric_sum "$HTTP" incentives_events_total) < produced )); do
  kill -0 "$proc_pid" 2>/dev/null || die "the processor exited; see $PROC_LOG"
  ((SECONDS < deadline)) || die "the processor did not drain $produced events within 300s; see $PROC_LOG"
  sleep 0.2
done
awards=$(metric_sum "$HTTP" incentives_awards_total)
echo "bench-api: processor drained $produced events, $awards awards"
p=$proc_pid; proc_pid=""; stop processor "$p"

"$BIN" api >"$API_LOG" 2>&1 </dev/null &
api_pid=$!
deadline=$((SECONDS + READY_SECS))
until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/readyz" || true)" == 200 ]]; do
  kill -0 "$api_pid" 2>/dev/null || { tail -n 40 "$API_LOG" >&2 || true; die "the API exited before becoming ready"; }
  ((SECONDS < deadline)) || { tail -n 40 "$API_LOG" >&2 || true; die "$URL/readyz did not answer 200 within ${READY_SECS}s"; }
  sleep 0.2
done
echo "bench-api: API ready at $URL (key prefix $run, log $API_LOG)"

# "count sum" of one of the API's histograms (all label sets).
histogram() {
  curl -s --max-time 5 "$URL/metrics" | awk -v m="$1" 'index($1, m "_count") == 1 {c += $2}
    index($1, m "_sum") == 1 {s += $2} END {print c + 0, s + 0}'
}
mean_ms() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); n = y[1] - x[1]
  printf "%.3f", (n > 0 ? (y[2] - x[2]) / n * 1000 : 0) }'; }

echo
echo "==== read API benchmark: $(nproc) CPUs, $USERS users x $DAYS days ($produced events, $awards awards), random users ===="
for c in $CONCURRENCY; do
  req0=$(histogram incentives_api_request_seconds); redis0=$(histogram incentives_api_redis_seconds)
  cmd=("$BIN" api-bench --url "$URL" --users "$USERS" --seed "$SEED" --requests "$REQUESTS" --concurrency "$c")
  echo "\$ ${cmd[*]}"
  "${cmd[@]}"
  kill -0 "$api_pid" 2>/dev/null || die "the API exited; see $API_LOG"
  echo "API's own view: mean request $(mean_ms "$req0" "$(histogram incentives_api_request_seconds)") ms," \
    "mean Redis read $(mean_ms "$redis0" "$(histogram incentives_api_redis_seconds)") ms (incentives_api_*_seconds)"
  echo
done
