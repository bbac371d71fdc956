#!/usr/bin/env bash
# scripts/test.sh -- the project's test command: start Redis + nisshi (scripts/infra-up.sh),
# then run `cargo test --locked "$@"` with the connection settings from scripts/env.sh
# exported (KAFKA_BROKERS, REDIS_URL, INCENTIVES__KAFKA__BROKERS, INCENTIVES__REDIS__URL,
# INCENTIVES_TOPIC_*). The services are left running; stop them with scripts/infra-down.sh.
#
# Reads: everything scripts/env.sh and scripts/infra-up.sh read (ports, NISSHI_BIN, ...);
#   arguments are passed to `cargo test`.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"

scripts/infra-up.sh
status=0
cargo test --locked "$@" || status=$?
echo "test.sh: Redis and nisshi are still running; stop them with scripts/infra-down.sh"
exit "$status"
