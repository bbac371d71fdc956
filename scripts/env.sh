# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this file
# scripts/env.sh -- shared settings for the local dev scripts; source it, don't run it.
# Defines where the local Redis and Kafka-compatible broker (nisshi) listen, where their
# state lives, the topic names, and exports the connection settings for the app and tests.
#
# Reads (all optional, defaults in brackets):
#   INCENTIVES_KAFKA_PORT [19092]        INCENTIVES_REDIS_PORT [16379]
#   INCENTIVES_STATE_DIR [$REPO/.local]  (pid files, logs, redis data)
#   INCENTIVES_PARTITIONS [6]            partitions for each topic created by infra-up.sh
#   INCENTIVES_TOPIC_DATA_LOGGED [incentives.data-logged.v1]
#   INCENTIVES_TOPIC_BIRTH_REPORTED [incentives.birth-reported.v1]
#   INCENTIVES_TOPIC_AWARDS [incentives.awards.v1]
#   INCENTIVES_TOPIC_DEAD_LETTER [incentives.dead-letter.v1]
#   NISSHI_BIN      broker binary (else `nisshi` on PATH, else ~/.cargo/bin/nisshi, else cargo install)
#   NISSHI_STORAGE [memory://nisshi/]   e.g. sqlite://.local/nisshi.db to keep topics and data across
#                  restarts (relative to $REPO; an absolute path needs 4 slashes: sqlite:////abs/x.db)
# Exports: REPO, the variables above, KAFKA_BROKERS, REDIS_URL,
#   INCENTIVES__KAFKA__BROKERS, INCENTIVES__REDIS__URL and INCENTIVES__TOPICS__* (the app's
#   config overrides, so the app uses what the scripts started and created).

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO

export INCENTIVES_KAFKA_PORT="${INCENTIVES_KAFKA_PORT:-19092}"
export INCENTIVES_REDIS_PORT="${INCENTIVES_REDIS_PORT:-16379}"
export INCENTIVES_STATE_DIR="${INCENTIVES_STATE_DIR:-$REPO/.local}"
export INCENTIVES_PARTITIONS="${INCENTIVES_PARTITIONS:-6}"
export NISSHI_STORAGE="${NISSHI_STORAGE:-memory://nisshi/}"

export INCENTIVES_TOPIC_DATA_LOGGED="${INCENTIVES_TOPIC_DATA_LOGGED:-incentives.data-logged.v1}"
export INCENTIVES_TOPIC_BIRTH_REPORTED="${INCENTIVES_TOPIC_BIRTH_REPORTED:-incentives.birth-reported.v1}"
export INCENTIVES_TOPIC_AWARDS="${INCENTIVES_TOPIC_AWARDS:-incentives.awards.v1}"
export INCENTIVES_TOPIC_DEAD_LETTER="${INCENTIVES_TOPIC_DEAD_LETTER:-incentives.dead-letter.v1}"
INCENTIVES_TOPICS=(
  "$INCENTIVES_TOPIC_DATA_LOGGED"
  "$INCENTIVES_TOPIC_BIRTH_REPORTED"
  "$INCENTIVES_TOPIC_AWARDS"
  "$INCENTIVES_TOPIC_DEAD_LETTER"
)

export KAFKA_BROKERS="127.0.0.1:$INCENTIVES_KAFKA_PORT"
export REDIS_URL="redis://127.0.0.1:$INCENTIVES_REDIS_PORT/"
export INCENTIVES__KAFKA__BROKERS="$KAFKA_BROKERS"
export INCENTIVES__REDIS__URL="$REDIS_URL"
export INCENTIVES__TOPICS__DATA_LOGGED="$INCENTIVES_TOPIC_DATA_LOGGED"
export INCENTIVES__TOPICS__BIRTH_REPORTED="$INCENTIVES_TOPIC_BIRTH_REPORTED"
export INCENTIVES__TOPICS__AWARDS="$INCENTIVES_TOPIC_AWARDS"
export INCENTIVES__TOPICS__DEAD_LETTER="$INCENTIVES_TOPIC_DEAD_LETTER"

# State files.
REDIS_DIR="$INCENTIVES_STATE_DIR/redis"
REDIS_PIDFILE="$INCENTIVES_STATE_DIR/redis.pid"
REDIS_LOG="$INCENTIVES_STATE_DIR/redis.log"
NISSHI_PIDFILE="$INCENTIVES_STATE_DIR/nisshi.pid"
NISSHI_LOG="$INCENTIVES_STATE_DIR/nisshi.log"
NISSHI_URL="tcp://$KAFKA_BROKERS"

# Is something accepting TCP connections on 127.0.0.1:$1?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Does the pid in file $1 name a live process?
pidfile_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

redis_ping() { redis-cli -h 127.0.0.1 -p "$INCENTIVES_REDIS_PORT" ping 2>/dev/null | grep -q PONG; }
