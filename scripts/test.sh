#!/usr/bin/env bash
# scripts/test.sh -- the project's test command: start Redis + nisshi (scripts/infra-up.sh),
# run `cargo test --locked "$@"` with the connection settings from scripts/env.sh exported
# (KAFKA_BROKERS, REDIS_URL, INCENTIVES__KAFKA__BROKERS, INCENTIVES__REDIS__URL,
# INCENTIVES_TOPIC_*), then, when called without arguments, the fault-injection suite's short
# run (scripts/faults.sh short: its own Redis and broker, kill -9s, restarts, a zombie; about
# 3 minutes). With arguments only the selected cargo tests run. The services are left
# running; stop them with scripts/infra-down.sh.
#
# Reads: everything scripts/env.sh and scripts/infra-up.sh read (ports, NISSHI_BIN, ...),
#   FAULTS_SEED (scripts/faults.sh); arguments are passed to `cargo test`.
# Exit status: 0 when the tests (and the fault suite) passed, else the first failure's.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"

scripts/infra-up.sh
status=0
cargo test --locked "$@" || status=$?
if [[ $# -eq 0 && $status -eq 0 ]]; then
  echo "test.sh: cargo tests passed; running the fault-injection suite (scripts/faults.sh short)"
  scripts/faults.sh short || status=$?
fi
echo "test.sh: Redis and nisshi are still running; stop them with scripts/infra-down.sh"
exit "$status"
