#!/usr/bin/env bash
# scripts/bench.sh -- a backlog benchmark of the processor on this machine: publishes a
# synthetic workload to fresh topics, then starts one release-build processor on the
# backlog and reports how fast it drains it (events/s from the first to the last batch,
# CPU seconds per million events, peak RSS, Redis memory used by its keys).
# Figures only, no pass/fail. The broker and Redis come from scripts/infra-up.sh.
#
# Reads: BENCH_USERS [20000], BENCH_DAYS [10], BENCH_SEED [1], BENCH_HTTP [127.0.0.1:9465],
#   plus everything scripts/env.sh and scripts/infra-up.sh read.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"

USERS="${BENCH_USERS:-20000}"
DAYS="${BENCH_DAYS:-10}"
SEED="${BENCH_SEED:-1}"
HTTP="${BENCH_HTTP:-127.0.0.1:9465}"
BIN=target/release/incentives

scripts/infra-up.sh >/dev/null
cargo build --release --locked --quiet
run="bench-$(date +%s)"
INCENTIVES_TOPIC_DATA_LOGGED="$run.data-logged" INCENTIVES_TOPIC_BIRTH_REPORTED="$run.birth-reported" \
  INCENTIVES_TOPIC_AWARDS="$run.awards" INCENTIVES_TOPIC_DEAD_LETTER="$run.dead-letter" scripts/infra-up.sh >/dev/null
export INCENTIVES__TOPICS__DATA_LOGGED="$run.data-logged" INCENTIVES__TOPICS__BIRTH_REPORTED="$run.birth-reported"
export INCENTIVES__TOPICS__AWARDS="$run.awards" INCENTIVES__TOPICS__DEAD_LETTER="$run.dead-letter"
export INCENTIVES__REDIS__KEY_PREFIX="$run" INCENTIVES__KAFKA__GROUP_ID="$run" INCENTIVES__HTTP__LISTEN="$HTTP"
export INCENTIVES__LOG__FILTER=warn

echo "bench: publishing $USERS users x $DAYS days (seed $SEED) to $run.*"
produced=$("$BIN" produce --synthetic --users "$USERS" --days "$DAYS" --seed "$SEED" 2>&1 | tee /dev/stderr | sed -n 's/^produced \([0-9]*\) events.*/\1/p')

metric_sum() { curl -s "http://$HTTP/metrics" | awk -v m="$1" 'index($1, m) == 1 {s += $2} END {print s + 0}'; }

"$BIN" process >"$INCENTIVES_STATE_DIR/bench-processor.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
# Time from the first applied batch to the last, so group join time is not counted.
while [[ "$(metric_sum incentives_events_total)" == 0 ]]; do sleep 0.05; done
start=$(date +%s.%N)
while (( $(metric_sum incentives_events_total) < produced )); do
  kill -0 $pid 2>/dev/null || { echo "bench: processor exited; see $INCENTIVES_STATE_DIR/bench-processor.log" >&2; exit 1; }
  sleep 0.05
done
end=$(date +%s.%N)
cpu_ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
awards=$(metric_sum incentives_awards_total)
kill -TERM $pid; wait $pid || true; trap - EXIT
redis_bytes=$(redis-cli -p "$INCENTIVES_REDIS_PORT" --scan --pattern "$run:*" | while read -r k; do redis-cli -p "$INCENTIVES_REDIS_PORT" memory usage "$k"; done | awk '{s += $1} END {print s + 0}')
keys=$(redis-cli -p "$INCENTIVES_REDIS_PORT" --scan --pattern "$run:*" | wc -l)
hz=$(getconf CLK_TCK)
awk -v n="$produced" -v s="$start" -v e="$end" -v cpu="$cpu_ticks" -v hz="$hz" -v rss="$rss_kb" -v a="$awards" -v rb="$redis_bytes" -v k="$keys" 'BEGIN {
  t = e - s; if (t <= 0) t = 0.001
  printf "events            %d\n", n
  printf "awards            %d\n", a
  printf "drain time        %.2f s (first to last batch)\n", t
  printf "throughput        %.0f events/s\n", n / t
  printf "processor CPU     %.2f s (%.2f s per million events)\n", cpu / hz, cpu / hz / n * 1e6
  printf "processor peak RSS %.1f MB\n", rss / 1024
  printf "redis keys        %d, %.1f MB (MEMORY USAGE sum), %.0f bytes per key\n", k, rb / 1048576, (k ? rb / k : 0)
}'
