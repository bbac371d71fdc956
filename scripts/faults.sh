#!/usr/bin/env bash
# scripts/faults.sh -- the fault-injection suite (issue 5), one command: builds the release
# binaries and runs target/release/faults, which starts its own redis-server (AOF) and its own
# nisshi broker (SQLite storage) on free ports, runs 1-3 `incentives process` children, and
# while a deterministic synthetic workload is published injects kill -9 of processors (at
# random moments, right after a batch reached Redis, right after an assignment), scale out and
# in, Redis kill -9 under appendfsync everysec and always plus a simulated host crash (the
# last second of the AOF lost), broker kill -9 and restart, and SIGSTOP of a processor past
# the session timeout. Then it checks the awards topic, the dead-letter topic and Redis
# against a pure-engine oracle and prints what each fault showed and a table of checks.
#
# Usage: scripts/faults.sh [short|full] [more faults options]
#   short  a few of each fault, about 2 minutes on 2 cores (besides the build)
#   full   24 processor kills and every other fault at least twice, about 5.5 minutes
#   e.g.   scripts/faults.sh short --seed 7
#          scripts/faults.sh full --phases kills,zombie --keep
#          (phases: scale, kills, redis-everysec, redis-loss, redis-always, broker, zombie)
# Reads: FAULTS_SEED [1] (workload and random choices; --seed wins), NISSHI_BIN (broker binary;
#   else `nisshi` on PATH, else ~/.cargo/bin/nisshi, else `cargo install nisshi`),
#   CARGO_TARGET_DIR [target].
# Exit status: 0 every check passed; 1 a check failed (missing or unexpected award, two
#   different awards for one decision, Redis differing from the oracle, a dead letter, a
#   stalled partition); 2 the suite could not run. Logs and data of a failing run are kept
#   (the work directory is printed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-short}"
[[ $# -gt 0 ]] && shift
case "$mode" in
  short | full) ;;
  *) echo "usage: scripts/faults.sh [short|full] [faults options]" >&2; exit 2 ;;
esac

die() { echo "faults.sh: error: $*" >&2; exit 2; }
sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null; then
  echo "faults.sh: redis-server not found; installing Debian's redis-server package"
  sudo_if_needed apt-get update
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin/nisshi"
if [[ -n "${NISSHI_BIN:-}" ]]; then
  [[ -x "$NISSHI_BIN" ]] || die "NISSHI_BIN=$NISSHI_BIN is not an executable file"
elif command -v nisshi >/dev/null; then
  NISSHI_BIN="$(command -v nisshi)"
elif [[ -x "$cargo_bin" ]]; then
  NISSHI_BIN="$cargo_bin"
else
  command -v cargo >/dev/null || die "nisshi not found and cargo is not installed; set NISSHI_BIN"
  echo "faults.sh: nisshi not found; running 'cargo install nisshi --version 0.8.1' (takes ~30 min; set NISSHI_BIN to skip)"
  cargo install nisshi --version 0.8.1 --locked --ignore-rust-version
  NISSHI_BIN="$cargo_bin"
fi

cargo build --release --locked --bins
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/faults" --mode "$mode" --seed "${FAULTS_SEED:-1}" \
  --nisshi-bin "$NISSHI_BIN" --processor-bin "$target_dir/release/incentives" "$@"
