#!/usr/bin/env bash
# scripts/infra-down.sh [--broker] -- stop the local Redis and nisshi started by infra-up.sh
# (with --broker, only nisshi: scripts/bench.sh --fresh-broker restarts it this way).
# Idempotent: services that are not running are skipped. Redis data in .local/redis is kept
# (AOF); nisshi data is kept only with a persistent NISSHI_STORAGE (e.g. sqlite://...).
#
# Reads (see scripts/env.sh): INCENTIVES_KAFKA_PORT, INCENTIVES_REDIS_PORT, INCENTIVES_STATE_DIR.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

only_broker=false
case "${1:-}" in
  "") ;;
  --broker) only_broker=true ;;
  *) echo "infra-down: unknown argument ${1:-} (the only one is --broker: stop only nisshi)" >&2; exit 2 ;;
esac

# stop_pid NAME PIDFILE: SIGTERM the process in PIDFILE (if it is still NAME), wait, then SIGKILL.
stop_pid() {
  local name=$1 pidfile=$2 pid i
  if pidfile_alive "$pidfile"; then
    pid="$(cat "$pidfile")"
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$name"; then
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "infra-down: $name (pid $pid) ignored SIGTERM for 10s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
      echo "$name: stopped (pid $pid)"
    else
      echo "$name: pid file $pidfile names pid $pid, which is not $name; not touching it" >&2
    fi
  else
    echo "$name: not running"
  fi
  rm -f "$pidfile"
}

if $only_broker; then
  : # Redis keeps running
elif redis_ping; then
  pid="$(cat "$REDIS_PIDFILE" 2>/dev/null || true)"
  redis-cli -h 127.0.0.1 -p "$INCENTIVES_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  for ((i = 0; i < 100; i++)); do redis_ping || break; sleep 0.1; done
  if [[ -n "$pid" ]]; then
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  echo "redis-server: stopped${pid:+ (pid $pid)}"
  rm -f "$REDIS_PIDFILE"
else
  stop_pid redis-server "$REDIS_PIDFILE" # e.g. a hung redis that doesn't answer PING
fi

stop_pid nisshi "$NISSHI_PIDFILE"
if port_open "$INCENTIVES_KAFKA_PORT"; then
  echo "infra-down: warning: port $INCENTIVES_KAFKA_PORT still answers (not started by infra-up.sh?)" >&2
fi
if ! $only_broker && redis_ping; then
  echo "infra-down: warning: Redis on port $INCENTIVES_REDIS_PORT still answers (not started by infra-up.sh?)" >&2
fi
