#!/usr/bin/env bash
# scripts/bench-gateway.sh -- a throughput and latency benchmark of the HTTP gateway on this
# machine: starts one release-build `incentives gateway` (fresh topics, fresh Redis key
# prefix), drives it with `incentives produce --synthetic --gateway` at full speed, then
# (unless BENCH_GW_RATE=0) a second run at a fixed rate below that, and prints each run's
# summary: events/s answered 202, failures by kind, latency from send to 202 (p50/p90/p99/max;
# it includes the idempotency claim in Redis and the broker's acks=all ack), then a table of
# both runs with the gateway's own view (mean publish time until the broker's ack, from its
# /metrics) and its CPU time per 1000 events. At full speed
# the latency is mostly queueing behind BENCH_GW_CONCURRENCY requests in flight; the paced
# run shows the latency below saturation. The load generator, gateway, Redis and broker
# share this machine's CPUs. Figures only, no pass/fail. Stops the gateway with SIGTERM;
# leaves Redis and the broker running (scripts/infra-down.sh stops them).
#
# Reads: BENCH_GW_USERS [2000], BENCH_GW_DAYS [10], BENCH_GW_SEED [1] (the paced run uses
#   seed + 1, so its event ids are new), BENCH_GW_CONCURRENCY [256] (events in flight),
#   BENCH_GW_BATCH [unset] (events per POST /v1/events/batch; unset: one event per request),
#   BENCH_GW_RATE [half the full-speed rate] (events/s of the paced run; 0 skips it),
#   BENCH_GW_LISTEN [127.0.0.1:18080], BENCH_GW_API_KEY [dev-key-change-me, the development
#   key config/incentives.toml accepts], BENCH_GW_READY_SECS [60],
#   plus everything scripts/env.sh and scripts/infra-up.sh read.
# Writes to $INCENTIVES_STATE_DIR: bench-gateway.log (the gateway's log) and
#   bench-gateway-full.json, bench-gateway-rate.json (`produce --json-summary`).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"

USERS="${BENCH_GW_USERS:-2000}"
DAYS="${BENCH_GW_DAYS:-10}"
SEED="${BENCH_GW_SEED:-1}"
CONCURRENCY="${BENCH_GW_CONCURRENCY:-256}"
BATCH="${BENCH_GW_BATCH:-}"
RATE="${BENCH_GW_RATE:-}"
LISTEN="${BENCH_GW_LISTEN:-127.0.0.1:18080}"
READY_SECS="${BENCH_GW_READY_SECS:-60}"
export INCENTIVES_API_KEY="${BENCH_GW_API_KEY:-dev-key-change-me}" # read by `produce --gateway`
BIN=target/release/incentives
URL="http://$LISTEN"
GW_LOG="$INCENTIVES_STATE_DIR/bench-gateway.log"
gw_pid=""

die() { echo "bench-gateway: error: $*" >&2; exit 1; }

# Stop the gateway we started: SIGTERM, wait up to 30s, then SIGKILL.
stop_gateway() {
  [[ -n "$gw_pid" ]] || return 0
  local pid=$gw_pid status=0 watchdog
  gw_pid=""
  kill -TERM "$pid" 2>/dev/null || true
  (sleep 30 && kill -KILL "$pid" 2>/dev/null && echo "bench-gateway: gateway ignored SIGTERM; killed" >&2) &
  watchdog=$!
  wait "$pid" || status=$?
  kill "$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  echo "bench-gateway: gateway stopped (exit status $status)"
}
trap stop_gateway EXIT
trap 'exit 130' INT TERM

# A fresh run: its own topics, Redis key prefix and idempotency keys (which expire soon).
run="gwbench-$(date +%s)"
export INCENTIVES_TOPIC_DATA_LOGGED="$run.data-logged" INCENTIVES_TOPIC_BIRTH_REPORTED="$run.birth-reported"
export INCENTIVES_TOPIC_AWARDS="$run.awards" INCENTIVES_TOPIC_DEAD_LETTER="$run.dead-letter"
scripts/infra-up.sh >/dev/null
export INCENTIVES__TOPICS__DATA_LOGGED="$run.data-logged" INCENTIVES__TOPICS__BIRTH_REPORTED="$run.birth-reported"
export INCENTIVES__TOPICS__AWARDS="$run.awards" INCENTIVES__TOPICS__DEAD_LETTER="$run.dead-letter"
export INCENTIVES__REDIS__KEY_PREFIX="$run" INCENTIVES__GATEWAY__IDEMPOTENCY_WINDOW=1h
export INCENTIVES__GATEWAY__LISTEN="$LISTEN" INCENTIVES__LOG__FILTER=warn

cargo build --release --locked --quiet

if (exec 3<>"/dev/tcp/${LISTEN%:*}/${LISTEN##*:}") 2>/dev/null; then
  die "something already listens on $LISTEN (set BENCH_GW_LISTEN)"
fi
"$BIN" gateway >"$GW_LOG" 2>&1 </dev/null &
gw_pid=$!
deadline=$((SECONDS + READY_SECS))
until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/readyz" || true)" == 200 ]]; do
  why=""
  kill -0 "$gw_pid" 2>/dev/null || why="the gateway exited before becoming ready"
  ((SECONDS < deadline)) || why="$URL/readyz did not answer 200 within ${READY_SECS}s"
  if [[ -n "$why" ]]; then
    echo "bench-gateway: error: $why; last lines of $GW_LOG:" >&2
    tail -n 40 "$GW_LOG" >&2 || true
    exit 1
  fi
  sleep 0.2
done
echo "bench-gateway: gateway ready at $URL (topics $run.*, log $GW_LOG)"

# A number from produce's JSON summary (pretty-printed; the latency keys are unique).
field() { sed -n "s/^ *\"$2\": \([0-9.eE+-]*\),\{0,1\}$/\1/p" "$1" | head -n 1; }
gateway_cpu() { awk '{print $14 + $15}' "/proc/$gw_pid/stat"; }
# "count sum" of the gateway's incentives_gateway_publish_seconds histogram.
publish_seconds() {
  curl -s --max-time 5 "$URL/metrics" | awk '$1 == "incentives_gateway_publish_seconds_count" {c = $2}
    $1 == "incentives_gateway_publish_seconds_sum" {s = $2} END {print c + 0, s + 0}'
}

# produce NAME [extra produce args...]: one load run against the gateway.
produce() {
  local name=$1 status=0; shift
  local cmd=("$BIN" produce --synthetic --users "$USERS" --days "$DAYS" --gateway "$URL"
    --concurrency "$CONCURRENCY" ${BATCH:+--batch "$BATCH"} --quiet
    --json-summary "$INCENTIVES_STATE_DIR/bench-gateway-$name.json" "$@")
  echo "bench-gateway: ${cmd[*]}"
  local cpu0 pub0; cpu0=$(gateway_cpu); pub0=$(publish_seconds)
  "${cmd[@]}" || status=$?
  kill -0 "$gw_pid" 2>/dev/null || die "the gateway exited; see $GW_LOG"
  # Gateway CPU ticks and its mean publish time (event to producer .. broker ack) in this run.
  echo "$(($(gateway_cpu) - cpu0)) $(awk -v a="$pub0" -v b="$(publish_seconds)" 'BEGIN {
    split(a, x, " "); split(b, y, " "); n = y[1] - x[1]; printf "%.2f", (n > 0 ? (y[2] - x[2]) / n * 1000 : 0) }')" \
    >"$INCENTIVES_STATE_DIR/bench-gateway-$name.gw"
  ((status == 0)) || echo "bench-gateway: produce exited with status $status (failures above)" >&2
}

rm -f "$INCENTIVES_STATE_DIR"/bench-gateway-{full,rate}.{json,gw}
produce full --seed "$SEED"
if [[ -z "$RATE" ]]; then
  RATE=$(awk -v r="$(field "$INCENTIVES_STATE_DIR/bench-gateway-full.json" achieved_rate)" 'BEGIN {printf "%d", r / 2}')
fi
if ((RATE > 0)); then
  produce rate --seed "$((SEED + 1))" --rate "$RATE"
fi

stop_gateway

hz=$(getconf CLK_TCK)
echo
echo "==== gateway benchmark: $(nproc) CPUs, $USERS users x $DAYS days, concurrency $CONCURRENCY${BATCH:+, batches of $BATCH} ===="
printf '%-14s %8s %7s %9s %8s %8s %8s %8s %12s %13s\n' run events failed "events/s" "p50 ms" "p90 ms" "p99 ms" "max ms" "gw pub. ms" "gw CPU ms/1k"
for name in full rate; do
  f="$INCENTIVES_STATE_DIR/bench-gateway-$name.json"
  [[ -s "$f" ]] || continue
  label="full speed"; [[ $name == rate ]] && label="at $RATE/s"
  read -r cpu pub <"$INCENTIVES_STATE_DIR/bench-gateway-$name.gw"
  awk -v l="$label" -v n="$(field "$f" acked)" -v fl="$(field "$f" failed)" -v r="$(field "$f" achieved_rate)" \
    -v p50="$(field "$f" p50)" -v p90="$(field "$f" p90)" -v p99="$(field "$f" p99)" -v mx="$(field "$f" max)" \
    -v pub="$pub" -v cpu="$cpu" -v hz="$hz" 'BEGIN {
      printf "%-14s %8d %7d %9.0f %8.2f %8.2f %8.2f %8.2f %12.2f %13.1f\n", l, n, fl, r, p50, p90, p99, mx, pub, (n ? cpu / hz * 1000 / n * 1000 : 0)
    }'
done
echo "latencies: from sending a request to its 202, per event; gw pub.: the gateway's mean time from handing"
echo "the event to the producer to the broker's ack (incentives_gateway_publish_seconds)"
echo "summaries: $INCENTIVES_STATE_DIR/bench-gateway-{full,rate}.json; gateway log: $GW_LOG"
