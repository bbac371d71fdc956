#!/usr/bin/env bash
# scripts/bench.sh -- the processor's benchmark on this machine, in one run: starts Redis and
# the broker (scripts/infra-up.sh), builds the release binary and runs `incentives bench`,
# which, on fresh topics, consumer group and Redis key prefix (bench-<unix time>), publishes
# a synthetic backlog and reports the raw consume throughput with the processor's client
# settings (the ceiling), the processor's sustainable throughput (a child processor draining
# the backlog), event-to-award latency p50/p99 at half that rate, CPU seconds per million
# events, Redis bytes per active user-rule and the processor's peak RSS with 1M distinct
# users. Prints a table with the targets (informational only: a figure never fails the run)
# and writes the same figures as JSON (target/bench/bench-<run>.json unless --json PATH).
# Removes the run's Redis keys and topics at the end (--keep keeps them); leaves Redis and
# the broker running (scripts/infra-down.sh stops them).
#
# --fresh-broker (this script's own option) first stops the broker scripts/infra-up.sh
# started, so the run gets a new one: one nisshi kept across runs used more CPU run after run,
# so runs in a row on one broker are not comparable (README, Performance). With the default
# memory storage that broker's topics (the demo's, too) are gone; it fails when the port is
# held by a broker the scripts did not start.
#
# Reads: arguments, passed to `incentives bench` (--users [20000], --days [10], --seed [1],
#   --partitions [6], --latency-seconds [20], --rss-users [1000000; 0 skips],
#   --json PATH, --keep; see `target/release/incentives bench --help`) but --fresh-broker,
#   plus everything scripts/env.sh and scripts/infra-up.sh read (ports, NISSHI_BIN, ...);
#   INCENTIVES_BENCH_BROKER_PID (the broker's pid, for its CPU while paced; default: the
#   pid of the broker scripts/infra-up.sh started).
# Writes: target/bench/ (the JSON, the processors' logs bench-<run>-*.log).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"

args=()
fresh_broker=false
for arg in "$@"; do
  case "$arg" in
    --fresh-broker) fresh_broker=true ;;
    -h | --help)
      # Help only: no broker, Redis or run (the build is needed for the options' text).
      echo "scripts/bench.sh [--fresh-broker] [incentives bench options]: --fresh-broker first stops the broker scripts/infra-up.sh started, so the run gets a new one; the options of \`incentives bench\` follow."
      cargo build --release --locked --quiet
      exec target/release/incentives bench --help ;;
    *) args+=("$arg") ;;
  esac
done
if $fresh_broker; then
  scripts/infra-down.sh --broker >/dev/null
  if port_open "$INCENTIVES_KAFKA_PORT"; then
    echo "bench.sh: --fresh-broker: port $INCENTIVES_KAFKA_PORT still answers after stopping the broker scripts/infra-up.sh started; it is a broker these scripts did not start: stop it, or run without --fresh-broker" >&2
    exit 1
  fi
fi
scripts/infra-up.sh >/dev/null
# The local broker's pid, so the latency phase reports the broker's CPU too.
if [[ -z "${INCENTIVES_BENCH_BROKER_PID:-}" && -s "$NISSHI_PIDFILE" ]] && kill -0 "$(cat "$NISSHI_PIDFILE")" 2>/dev/null; then
  INCENTIVES_BENCH_BROKER_PID="$(cat "$NISSHI_PIDFILE")"
  export INCENTIVES_BENCH_BROKER_PID
fi
cargo build --release --locked --quiet
exec target/release/incentives bench "${args[@]}"
