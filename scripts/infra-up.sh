#!/usr/bin/env bash
# scripts/infra-up.sh -- start the local Redis and Kafka-compatible broker (nisshi) and
# create the topics. Idempotent: services already answering are left alone, existing
# topics are kept. State (pids, logs, redis data) goes to $INCENTIVES_STATE_DIR (.local/).
#
# Reads (see scripts/env.sh for defaults): INCENTIVES_KAFKA_PORT, INCENTIVES_REDIS_PORT,
#   INCENTIVES_STATE_DIR, INCENTIVES_PARTITIONS, INCENTIVES_TOPIC_*, NISSHI_STORAGE,
#   NISSHI_BIN (broker binary; else `nisshi` on PATH, else ~/.cargo/bin/nisshi, else
#   `cargo install nisshi`), INFRA_WAIT_SECS [30] (how long to wait for each service).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO" # relative NISSHI_STORAGE urls (sqlite://.local/...) resolve from the repo root
WAIT_SECS="${INFRA_WAIT_SECS:-30}"
mkdir -p "$INCENTIVES_STATE_DIR" "$REDIS_DIR"

die() { echo "infra-up: error: $*" >&2; exit 1; }
sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# wait_for NAME LOGFILE PIDFILE CMD...: poll CMD until it succeeds, the process dies, or timeout.
wait_for() {
  local name=$1 log=$2 pidfile=$3; shift 3
  local deadline=$((SECONDS + WAIT_SECS))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$pidfile" && -e "$pidfile" ]] && ! pidfile_alive "$pidfile"; then
      tail -n 20 "$log" >&2 || true
      die "$name exited during startup; see $log"
    fi
    ((SECONDS < deadline)) || { tail -n 20 "$log" >&2 || true; die "$name not answering after ${WAIT_SECS}s; see $log"; }
    sleep 0.2
  done
}

# ---------------------------------------------------------------- Redis
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "infra-up: redis-server not found; installing Debian's redis-server package"
  sudo_if_needed apt-get update
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi
if ! redis_ping; then
  port_open "$INCENTIVES_REDIS_PORT" && die "port $INCENTIVES_REDIS_PORT is in use but is not answering Redis PING"
  rm -f "$REDIS_PIDFILE"
  redis-server --port "$INCENTIVES_REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
    --dir "$REDIS_DIR" --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" \
    --appendonly yes --appendfsync everysec --save "" --auto-aof-rewrite-min-size 1gb \
    || die "redis-server failed to start; see $REDIS_LOG"
  wait_for redis "$REDIS_LOG" "" redis_ping
fi
echo "redis:  $REDIS_URL (pid $(cat "$REDIS_PIDFILE" 2>/dev/null || echo '?'), data $REDIS_DIR)"

# ---------------------------------------------------------------- nisshi
resolve_nisshi() {
  local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin/nisshi"
  if [[ -n "${NISSHI_BIN:-}" ]]; then
    [[ -x "$NISSHI_BIN" ]] || die "NISSHI_BIN=$NISSHI_BIN is not an executable file"
  elif command -v nisshi >/dev/null; then
    NISSHI_BIN="$(command -v nisshi)"
  elif [[ -x "$cargo_bin" ]]; then
    NISSHI_BIN="$cargo_bin"
  else
    command -v cargo >/dev/null || die "nisshi not found and cargo is not installed; set NISSHI_BIN"
    echo "infra-up: nisshi not found; running 'cargo install nisshi --version 0.8.1' (takes ~30 min; set NISSHI_BIN to skip)"
    cargo install nisshi --version 0.8.1 --locked --ignore-rust-version
    NISSHI_BIN="$cargo_bin"
    [[ -x "$NISSHI_BIN" ]] || die "cargo install finished but $NISSHI_BIN is missing"
  fi
}
resolve_nisshi
nisshi_ready() { "$NISSHI_BIN" topic list --broker "$NISSHI_URL"; }

if port_open "$INCENTIVES_KAFKA_PORT"; then
  nisshi_ready >/dev/null 2>&1 || die "port $INCENTIVES_KAFKA_PORT is in use but does not answer as a Kafka broker"
else
  rm -f "$NISSHI_PIDFILE"
  if [[ -s "$NISSHI_LOG" && -n "$(tail -c 1 "$NISSHI_LOG")" ]]; then echo >>"$NISSHI_LOG"; fi
  echo "--- infra-up.sh starting nisshi at $(date -u +%FT%TZ)" >>"$NISSHI_LOG"
  # setsid: own session, so Ctrl-C in the calling terminal doesn't stop the broker.
  setsid nohup "$NISSHI_BIN" broker \
    --listener-url "$NISSHI_URL" --advertised-listener-url "$NISSHI_URL" \
    --storage-engine "$NISSHI_STORAGE" --group-initial-rebalance-delay 100ms \
    >>"$NISSHI_LOG" 2>&1 </dev/null &
  echo $! >"$NISSHI_PIDFILE"
  wait_for nisshi "$NISSHI_LOG" "$NISSHI_PIDFILE" nisshi_ready
fi
echo "kafka:  $KAFKA_BROKERS (nisshi, pid $(cat "$NISSHI_PIDFILE" 2>/dev/null || echo '?'), storage $NISSHI_STORAGE, log $NISSHI_LOG)"

# ---------------------------------------------------------------- topics
# `topic list` prints one JSON array; `topic create` on an existing topic exits 1 and
# prints "Topic with this name already exists." (on stdout), which we tolerate.
existing="$(nisshi_ready | grep -o '"name":"[^"]*"' || true)"
for topic in "${INCENTIVES_TOPICS[@]}"; do
  grep -qxF "\"name\":\"$topic\"" <<<"$existing" && continue
  if ! out="$(NO_COLOR=1 "$NISSHI_BIN" topic create --broker "$NISSHI_URL" \
      --partitions "$INCENTIVES_PARTITIONS" --silent "$topic" 2>&1)"; then
    grep -q 'already exists' <<<"$out" || die "creating topic $topic failed: $out"
  fi
done
echo "topics: ${INCENTIVES_TOPICS[*]} (new ones get $INCENTIVES_PARTITIONS partitions)"
