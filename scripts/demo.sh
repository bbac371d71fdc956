#!/usr/bin/env bash
# scripts/demo.sh -- end-to-end demo: start Redis + nisshi, build the release binary, run the
# processor in the background, produce synthetic events, print the awards it published,
# summarise (award count, metrics), then stop the processor with SIGTERM.
# Leaves Redis and nisshi running (stop them with scripts/infra-down.sh).
#
# Reads: DEMO_HTTP_LISTEN [127.0.0.1:9464] (processor's metrics/readiness address),
#   DEMO_READY_SECS [60], plus everything scripts/env.sh and scripts/infra-up.sh read.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"

# ---- All invocations of the incentives binary live here. -----------------------------
BIN=target/release/incentives
export INCENTIVES__HTTP__LISTEN="${DEMO_HTTP_LISTEN:-127.0.0.1:9464}"
PROCESS_CMD=("$BIN" process)
PRODUCE_CMD=("$BIN" produce --synthetic --users 200 --days 7 --seed 42)
AWARDS_CMD=("$BIN" awards --from-beginning --idle-timeout 10s)
HTTP="http://$INCENTIVES__HTTP__LISTEN"
READY_SECS="${DEMO_READY_SECS:-60}"
# ----------------------------------------------------------------------------------------

PROC_LOG="$INCENTIVES_STATE_DIR/processor.log"
PROC_PIDFILE="$INCENTIVES_STATE_DIR/processor.pid"
AWARDS_OUT="$INCENTIVES_STATE_DIR/awards.jsonl"
proc_pid=""

die() { echo "demo: error: $*" >&2; exit 1; }

# Stop the processor we started: SIGTERM, wait up to 30s, then SIGKILL.
stop_processor() {
  [[ -n "$proc_pid" ]] || return 0
  local pid=$proc_pid status=0 watchdog
  proc_pid=""
  kill -TERM "$pid" 2>/dev/null || true
  (sleep 30 && kill -KILL "$pid" 2>/dev/null && echo "demo: processor ignored SIGTERM; killed" >&2) &
  watchdog=$!
  wait "$pid" || status=$?
  kill "$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  rm -f "$PROC_PIDFILE"
  echo "demo: processor stopped (exit status $status)"
}
trap stop_processor EXIT
trap 'exit 130' INT TERM

scripts/infra-up.sh
cargo build --release --locked

# A processor left over from an interrupted demo?
if pidfile_alive "$PROC_PIDFILE"; then
  old="$(cat "$PROC_PIDFILE")"
  echo "demo: stopping leftover processor (pid $old)"
  kill -TERM "$old" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
fi
if (exec 3<>"/dev/tcp/${INCENTIVES__HTTP__LISTEN%:*}/${INCENTIVES__HTTP__LISTEN##*:}") 2>/dev/null; then
  die "something already listens on $INCENTIVES__HTTP__LISTEN (set DEMO_HTTP_LISTEN)"
fi

echo "demo: starting processor: ${PROCESS_CMD[*]} (log $PROC_LOG)"
"${PROCESS_CMD[@]}" >"$PROC_LOG" 2>&1 </dev/null &
proc_pid=$!
echo "$proc_pid" >"$PROC_PIDFILE"

deadline=$((SECONDS + READY_SECS))
until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$HTTP/readyz" || true)" == 200 ]]; do
  why=""
  kill -0 "$proc_pid" 2>/dev/null || why="processor exited before becoming ready"
  ((SECONDS < deadline)) || why="$HTTP/readyz did not answer 200 within ${READY_SECS}s"
  if [[ -n "$why" ]]; then
    echo "demo: error: $why; last lines of $PROC_LOG:" >&2
    tail -n 40 "$PROC_LOG" >&2 || true
    exit 1
  fi
  sleep 0.5
done
echo "demo: processor ready at $HTTP/readyz"

echo "demo: producing: ${PRODUCE_CMD[*]}"
"${PRODUCE_CMD[@]}"

echo "demo: awards: ${AWARDS_CMD[*]}"
"${AWARDS_CMD[@]}" | tee "$AWARDS_OUT"

echo
echo "==== summary ===="
echo "award lines: $(grep -c '^[[:space:]]*{' "$AWARDS_OUT" || true) (saved in $AWARDS_OUT)"
echo "metrics ($HTTP/metrics, incentives_*):"
{ curl -s --max-time 5 "$HTTP/metrics" | grep '^incentives_' | head -n 40; } || true
stop_processor
echo "demo: done; Redis and nisshi still running (scripts/infra-down.sh stops them)"
