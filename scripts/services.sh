#!/usr/bin/env bash
# Runs the real services Harmony's integration tests need -- Postgres, Redis, Kafka (KRaft)
# and DynamoDB Local -- natively on 127.0.0.1, without Docker.
#
#   bash scripts/services.sh up       install what is missing, start what is not answering, wait
#   bash scripts/services.sh down     stop what `up` started (by pid file)
#   bash scripts/services.sh start SERVICE...   `up` for the named services only (postgres redis kafka dynamodb)
#   bash scripts/services.sh stop SERVICE...    `down` for the named services only (a real outage: the
#                                               fault-injection suite stops and starts its own services so)
#   bash scripts/services.sh status   one line per service: up/down (exit 1 if any is down)
#   bash scripts/services.sh env      `export` lines for the services' URLs (eval "$(... env)")
#   bash scripts/services.sh smoke    talk to each service once (scripts/services/smoke.mjs)
#
# Settings (environment):
#   PG_PORT=55432 REDIS_PORT=56379 KAFKA_PORT=59092 KAFKA_CONTROLLER_PORT=<KAFKA_PORT+1>
#   DYNAMODB_PORT=58000
#   DYNAMODB_STORAGE=memory                     or `disk`: DynamoDB Local keeps its tables in the
#                                               services dir (-dbPath), so they outlive a stop and start
#   DYNAMODB_DIR=<services dir>/dynamodb        where `disk` keeps them (a tmpfs such as /dev/shm: they
#                                               outlive a stop and start without a disk sync per write)
#   KAFKA_PROXIED_PORT, KAFKA_PROXIED_ADVERTISED  a second Kafka listener on KAFKA_PROXIED_PORT that
#                                               advertises KAFKA_PROXIED_ADVERTISED (host:port of a proxy
#                                               in front of it), so clients bootstrapped through the proxy
#                                               stay behind it (the fault-injection suite's Toxiproxy)
#   HARMONY_SERVICES_DIR=<repo>/.services      data dirs, logs, pid files
#   HARMONY_CACHE_DIR=~/.cache/harmony          jars resolved from Maven Central (kept across runs)
#   HARMONY_MAVEN_REPO=~/.m2/repository         Maven's local repository
#   HARMONY_SERVICES_TIMEOUT=120                seconds to wait for each service to answer
#   PG_BIN=/usr/lib/postgresql/15/bin           Postgres server binaries
#
# Installs with apt (as root): postgresql-15, redis-server, and if absent a JRE, maven, curl.
# Kafka and DynamoDB Local jars come from Maven Central through the poms in scripts/services/.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
HELPERS="$SCRIPT_DIR/services"

HOST=127.0.0.1
PG_PORT="${PG_PORT:-55432}"
REDIS_PORT="${REDIS_PORT:-56379}"
KAFKA_PORT="${KAFKA_PORT:-59092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
DYNAMODB_PORT="${DYNAMODB_PORT:-58000}"
DYNAMODB_STORAGE="${DYNAMODB_STORAGE:-memory}"
KAFKA_PROXIED_PORT="${KAFKA_PROXIED_PORT:-}"
KAFKA_PROXIED_ADVERTISED="${KAFKA_PROXIED_ADVERTISED:-}"
TIMEOUT="${HARMONY_SERVICES_TIMEOUT:-120}"

USER_HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
SERVICES_DIR="$(realpath -m "${HARMONY_SERVICES_DIR:-$REPO_DIR/.services}")"
CACHE_DIR="$(realpath -m "${HARMONY_CACHE_DIR:-$USER_HOME/.cache/harmony}")"
MAVEN_REPO="$(realpath -m "${HARMONY_MAVEN_REPO:-$USER_HOME/.m2/repository}")"
LOG_DIR="$SERVICES_DIR/logs"
RUN_DIR="$SERVICES_DIR/run"

PG_DB=harmony
PG_USER=harmony
PG_PASSWORD=harmony
PG_OS_USER="${HARMONY_PG_OS_USER:-postgres}"   # used only when running as root

pom_property() { sed -n "s:.*<$2>\(.*\)</$2>.*:\1:p" "$HELPERS/$1/pom.xml" | head -n1; }
KAFKA_VERSION="$(pom_property kafka kafka.version)"
DYNAMODB_VERSION="$(pom_property dynamodb dynamodb.local.version)"
KAFKA_LIB="$CACHE_DIR/kafka-$KAFKA_VERSION"
DYNAMODB_LIB="$CACHE_DIR/dynamodb-local-$DYNAMODB_VERSION"

SERVICES=(postgres redis kafka dynamodb)

export DEBIAN_FRONTEND=noninteractive

log() { printf 'services: %s\n' "$*" >&2; }
die() {
  printf 'services: error: %s\n' "$*" >&2
  exit 1
}
is_root() { [[ "$(id -u)" == 0 ]]; }

# --- small helpers -----------------------------------------------------------------------

port_open() { timeout 2 bash -c ": >/dev/tcp/$HOST/$1" 2>/dev/null; }

# pid_alive PIDFILE PATTERN: print the pid from PIDFILE if that process lives and its command
# line contains PATTERN (guards against a recycled pid).
pid_alive() {
  local pid
  [[ -f "$1" ]] || return 1
  pid="$(head -n1 "$1" 2>/dev/null | tr -dc 0-9)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  echo "$pid"
}

# listener_pid PORT PATTERN: the pid listening on HOST:PORT, if its command line has PATTERN.
listener_pid() {
  local pid
  command -v ss >/dev/null || return 1
  pid="$(ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2)"
  [[ -n "$pid" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  echo "$pid"
}

# kill_wait PID NAME GRACE_SECONDS: SIGTERM, wait, then SIGKILL.
kill_wait() {
  local pid=$1 name=$2 grace=$3 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "$name: pid $pid still running after ${grace}s, killing"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
}

log_tail() {
  local f=$1
  if [[ -f "$f" ]]; then
    if grep -qE '(ERROR|FATAL|PANIC|Exception)' "$f" 2>/dev/null; then
      printf -- '----- first errors in %s -----\n' "$f" >&2
      grep -m 5 -E '(ERROR|FATAL|PANIC|Exception)' "$f" >&2 || true
    fi
    printf -- '----- last lines of %s -----\n' "$f" >&2
    tail -n "${2:-40}" "$f" >&2 || true
    printf -- '-----\n' >&2
  else
    printf 'services: (no log at %s)\n' "$f" >&2
  fi
}

# --- installing --------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
  is_root || die "cannot apt-get install $* (not root): install them, then rerun"
  command -v apt-get >/dev/null || die "cannot install $*: no apt-get on this machine"
  mkdir -p "$LOG_DIR"
  local apt_log="$LOG_DIR/apt.log" made_policy=0 rc=0
  if ((APT_UPDATED == 0)) && ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    log "apt: apt-get update"
    apt-get update -qq >>"$apt_log" 2>&1 || { log_tail "$apt_log"; die "apt-get update failed"; }
    APT_UPDATED=1
  fi
  # Keep Debian's own services (redis on 6379, the main Postgres cluster) from auto-starting.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  log "apt: installing $*"
  apt-get install -y -qq --no-install-recommends "$@" >>"$apt_log" 2>&1 || rc=$?
  if ((rc != 0 && APT_UPDATED == 0)); then
    log "apt: install failed, retrying after apt-get update"
    rc=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"; } >>"$apt_log" 2>&1 || rc=$?
    APT_UPDATED=1
  fi
  if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi
  ((rc == 0)) || { log_tail "$apt_log"; die "apt-get install $* failed"; }
}

pg_bin() {
  if [[ -n "${PG_BIN:-}" ]]; then
    echo "$PG_BIN"
  elif [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
    echo /usr/lib/postgresql/15/bin
  else
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
    if [[ -n "$d" && -x "$d/initdb" ]]; then echo "$d"; else echo /usr/lib/postgresql/15/bin; fi
  fi
}

# Installs, in one apt run, whatever the services that need starting lack.
ensure_installed() {
  local want=("$@") pkgs=() s
  for s in "${want[@]}"; do
    case $s in
      postgres) [[ -x "$(pg_bin)/initdb" ]] || pkgs+=(postgresql-15) ;;
      redis) command -v redis-server >/dev/null && command -v redis-cli >/dev/null || pkgs+=(redis-server) ;;
      kafka | dynamodb)
        command -v java >/dev/null || pkgs+=(openjdk-17-jre-headless)
        if [[ $s == kafka && ! -f "$KAFKA_LIB/.harmony-resolved" ]] ||
          [[ $s == dynamodb && ! -f "$DYNAMODB_LIB/.harmony-resolved" ]]; then
          command -v mvn >/dev/null || pkgs+=(maven)
        fi
        ;;
    esac
  done
  [[ " ${want[*]} " == *" dynamodb "* ]] && ! command -v curl >/dev/null && pkgs+=(curl)
  if ((${#pkgs[@]})); then
    # de-duplicate
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    apt_install "${pkgs[@]}"
  fi
  if [[ " ${want[*]} " == *" postgres "* ]] && is_root && ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
    log "postgres: creating system user $PG_OS_USER"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$PG_OS_USER"
  fi
}

# resolve_jars NAME DEST: copy the runtime dependencies of scripts/services/NAME/pom.xml into
# DEST once (the pom's checksum is stamped; a changed pom resolves again).
resolve_jars() {
  local name=$1 dest=$2 pom="$HELPERS/$1/pom.xml" sum tmp mvn_log="$LOG_DIR/maven-$1.log"
  sum="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -f "$dest/.harmony-resolved" && "$(cat "$dest/.harmony-resolved")" == "$sum" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "$name: mvn not found"
  log "$name: resolving jars from Maven Central into $dest"
  mkdir -p "$CACHE_DIR"
  tmp="$dest.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! mvn -B -q -f "$pom" -Dmaven.repo.local="$MAVEN_REPO" \
    dependency:copy-dependencies -DoutputDirectory="$tmp" >"$mvn_log" 2>&1; then
    rm -rf "$tmp"
    log_tail "$mvn_log"
    die "$name: resolving jars with Maven failed"
  fi
  echo "$sum" >"$tmp/.harmony-resolved"
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

# --- Postgres ----------------------------------------------------------------------------

as_pg() {
  if is_root; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi
}

postgres_answering() {
  local b
  b="$(pg_bin)"
  if [[ -x "$b/pg_isready" ]]; then
    "$b/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1
  else
    port_open "$PG_PORT"
  fi
}

# Postgres refuses to run as root, so its files belong to $PG_OS_USER. If that user cannot
# reach the services dir (e.g. it is under a home dir closed to others), the cluster lives
# in /var/tmp instead; the choice is recorded in $RUN_DIR/pg_base for `down`.
pg_base_choose() {
  local base="$SERVICES_DIR/postgres" fallback
  fallback="/var/tmp/harmony-pg-$(printf %s "$SERVICES_DIR" | sha256sum | cut -c1-12)"
  if is_root && ! runuser -u "$PG_OS_USER" -- test -x "$SERVICES_DIR" 2>/dev/null; then
    if [[ ! -f "$RUN_DIR/pg_base" && -d "$fallback" ]] &&
      ! pid_alive "$fallback/data/postmaster.pid" postgres >/dev/null; then
      rm -rf "$fallback" # left over from a services dir that has since been removed
    fi
    base="$fallback"
  fi
  echo "$base"
}

pg_base_recorded() {
  if [[ -f "$RUN_DIR/pg_base" ]]; then
    cat "$RUN_DIR/pg_base"
  else
    echo "$SERVICES_DIR/postgres"
  fi
}

pg_start() {
  local bin base data pwfile
  bin="$(pg_bin)"
  base="$(pg_base_choose)"
  data="$base/data"
  mkdir -p "$base"
  echo "$base" >"$RUN_DIR/pg_base"
  if is_root; then chown "$PG_OS_USER:" "$base"; fi
  chmod 700 "$base"
  if pid_alive "$data/postmaster.pid" postgres >/dev/null; then
    log "postgres: a server on $data is running but not answering on port $PG_PORT; restarting it"
    as_pg "$bin/pg_ctl" -D "$data" stop -m fast -w -t 30 >/dev/null 2>&1 || true
  fi
  if [[ ! -f "$data/.harmony-initdb" ]]; then
    log "postgres: initdb $data"
    rm -rf "$data"
    pwfile="$base/.pwfile"
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"
    if is_root; then chown "$PG_OS_USER:" "$pwfile"; fi
    if ! as_pg "$bin/initdb" -D "$data" -U "$PG_USER" --pwfile="$pwfile" -E UTF8 --no-locale \
      --auth-host=scram-sha-256 --auth-local=peer --no-sync >"$base/initdb.log" 2>&1; then
      rm -f "$pwfile"
      log_tail "$base/initdb.log"
      die "postgres: initdb failed"
    fi
    rm -f "$pwfile"
    echo "include_if_exists = 'harmony.conf'" >>"$data/postgresql.conf"
    touch "$data/.harmony-initdb"
  fi
  # Rewritten on every start so the port settings apply.
  cat >"$data/harmony.conf" <<EOF
# Written by scripts/services.sh on each start.
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  if is_root; then chown "$PG_OS_USER:" "$data/harmony.conf" "$data/postgresql.conf"; fi
  log "postgres: starting on $HOST:$PG_PORT"
  : >"$base/postgres.log"
  if is_root; then chown "$PG_OS_USER:" "$base/postgres.log"; fi
  ln -sfn "$base/postgres.log" "$LOG_DIR/postgres.log"
  as_pg "$bin/pg_ctl" -D "$data" -l "$base/postgres.log" -W start >/dev/null 2>&1 9>&- ||
    { log_tail "$base/postgres.log"; die "postgres: pg_ctl start failed"; }
}

pg_after_ready() {
  local bin exists
  bin="$(pg_bin)"
  exists="$(PGPASSWORD="$PG_PASSWORD" "$bin/psql" -X -q -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres \
    -tAc "select 1 from pg_database where datname = '$PG_DB'")" ||
    die "postgres: cannot connect as $PG_USER on $HOST:$PG_PORT"
  if [[ "$exists" != 1 ]]; then
    log "postgres: creating database $PG_DB"
    PGPASSWORD="$PG_PASSWORD" "$bin/createdb" -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -O "$PG_USER" "$PG_DB"
  fi
}

pg_stop() {
  local base data bin pid
  base="$(pg_base_recorded)"
  data="$base/data"
  bin="$(pg_bin)"
  if pid="$(pid_alive "$data/postmaster.pid" postgres)"; then
    log "postgres: stopping (pid $pid)"
    if ! as_pg "$bin/pg_ctl" -D "$data" stop -m fast -w -t 30 >/dev/null 2>&1; then
      kill_wait "$pid" postgres 5
    fi
  elif pid="$(listener_pid "$PG_PORT" postgres)"; then
    log "postgres: stopping pid $pid found on port $PG_PORT (no pid file)"
    kill_wait "$pid" postgres 30
  fi
}

# --- Redis -------------------------------------------------------------------------------

redis_answering() {
  if command -v redis-cli >/dev/null; then
    [[ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
  else
    port_open "$REDIS_PORT"
  fi
}

redis_start() {
  mkdir -p "$SERVICES_DIR/redis"
  log "redis: starting on $HOST:$REDIS_PORT"
  : >"$LOG_DIR/redis.log"
  redis-server --bind "$HOST" --port "$REDIS_PORT" --protected-mode yes \
    --save '' --appendonly no --dir "$SERVICES_DIR/redis" \
    --daemonize yes --pidfile "$RUN_DIR/redis.pid" --logfile "$LOG_DIR/redis.log" \
    >>"$LOG_DIR/redis.log" 2>&1 9>&- || { log_tail "$LOG_DIR/redis.log"; die "redis: redis-server failed to start"; }
}

redis_stop() {
  local pid
  if pid="$(pid_alive "$RUN_DIR/redis.pid" redis-server)" ||
    pid="$(listener_pid "$REDIS_PORT" redis-server)"; then
    log "redis: stopping (pid $pid)"
    kill_wait "$pid" redis 10
  fi
  rm -f "$RUN_DIR/redis.pid"
}

# --- Kafka -------------------------------------------------------------------------------

KAFKA_DIR="$SERVICES_DIR/kafka"
KAFKA_LOG="$LOG_DIR/kafka.log"
KAFKA_PID="$RUN_DIR/kafka.pid"

kafka_answering() { port_open "$KAFKA_PORT"; }

kafka_start() {
  local cid java_opts pid
  resolve_jars kafka "$KAFKA_LIB"
  if pid="$(pid_alive "$KAFKA_PID" kafka.Kafka)"; then
    log "kafka: pid $pid runs but does not answer on $KAFKA_PORT; restarting it"
    kill_wait "$pid" kafka 30
  fi
  mkdir -p "$KAFKA_DIR/data"
  # A broker answers metadata with the addresses advertised for the listener a client came in on:
  # clients that reach PROXIED through a proxy are told the proxy's address, and stay behind it.
  local listeners="PLAINTEXT://$HOST:$KAFKA_PORT" advertised="PLAINTEXT://$HOST:$KAFKA_PORT"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [[ -n "$KAFKA_PROXIED_PORT" ]]; then
    [[ -n "$KAFKA_PROXIED_ADVERTISED" ]] || die "kafka: KAFKA_PROXIED_PORT needs KAFKA_PROXIED_ADVERTISED (host:port)"
    listeners+=",PROXIED://$HOST:$KAFKA_PROXIED_PORT"
    advertised+=",PROXIED://$KAFKA_PROXIED_ADVERTISED"
    protocols+=",PROXIED:PLAINTEXT"
  fi
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/services.sh on each start: single-node KRaft (combined broker+controller).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=$listeners,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$KAFKA_DIR/data
num.partitions=8
default.replication.factor=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
log.retention.hours=24
EOF
  java_opts=(-Xmx512m -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true -Dlog4j.configuration="file:$HELPERS/kafka/log4j.properties")
  [[ -f "$KAFKA_LOG" ]] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"
  : >"$KAFKA_LOG"
  if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
    if [[ ! -s "$KAFKA_DIR/cluster.id" ]]; then
      # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding. Not
      # one starting with '-' (1 in 64): the format tool would read it as an option.
      local id="-"
      while [[ "$id" == -* ]]; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
      done
      printf '%s' "$id" >"$KAFKA_DIR/cluster.id"
    fi
    cid="$(cat "$KAFKA_DIR/cluster.id")"
    log "kafka: formatting storage (cluster id $cid)"
    if ! java "${java_opts[@]}" -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format \
      -t "$cid" -c "$KAFKA_DIR/server.properties" --ignore-formatted >>"$KAFKA_LOG" 2>&1; then
      log_tail "$KAFKA_LOG"
      die "kafka: formatting the storage failed"
    fi
  fi
  log "kafka $KAFKA_VERSION: starting on $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT)"
  (
    cd "$KAFKA_DIR"
    exec 9>&- # the lock of services.sh stays with services.sh
    exec setsid nohup java "${java_opts[@]}" -cp "$KAFKA_LIB/*" \
      kafka.Kafka "$KAFKA_DIR/server.properties" >>"$KAFKA_LOG" 2>&1 </dev/null
  ) &
  echo $! >"$KAFKA_PID"
}

kafka_ready_after_start() {
  port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null
}

kafka_stop() {
  local pid
  if pid="$(pid_alive "$KAFKA_PID" kafka.Kafka)" || pid="$(listener_pid "$KAFKA_PORT" kafka.Kafka)"; then
    log "kafka: stopping (pid $pid)"
    kill_wait "$pid" kafka 30
  fi
  rm -f "$KAFKA_PID"
}

# --- DynamoDB Local ----------------------------------------------------------------------

DYNAMODB_LOG="$LOG_DIR/dynamodb.log"
DYNAMODB_PID="$RUN_DIR/dynamodb.pid"
DYNAMODB_MAIN=com.amazonaws.services.dynamodbv2.local.main.ServerRunner

dynamodb_answering() {
  local code
  command -v curl >/dev/null || { port_open "$DYNAMODB_PORT"; return; }
  code="$(curl -s -o /dev/null -m 3 -w '%{http_code}' -X POST "http://$HOST:$DYNAMODB_PORT/" 2>/dev/null || true)"
  [[ -n "$code" && "$code" != 000 ]]
}

dynamodb_start() {
  local pid so arch
  arch="$(uname -m)"
  [[ "$arch" == x86_64 ]] || die "dynamodb: sqlite4java has no native library for $arch in this setup"
  resolve_jars dynamodb "$DYNAMODB_LIB"
  # sqlite4java looks for libsqlite4java-linux-amd64.so on java.library.path.
  if [[ ! -f "$DYNAMODB_LIB/native/libsqlite4java-linux-amd64.so" ]]; then
    so="$(ls "$DYNAMODB_LIB"/libsqlite4java-linux-amd64-*.so 2>/dev/null | head -n1 || true)"
    [[ -n "$so" ]] || die "dynamodb: libsqlite4java-linux-amd64 .so missing from $DYNAMODB_LIB"
    mkdir -p "$DYNAMODB_LIB/native"
    cp "$so" "$DYNAMODB_LIB/native/libsqlite4java-linux-amd64.so"
  fi
  if pid="$(pid_alive "$DYNAMODB_PID" "$DYNAMODB_MAIN")"; then
    log "dynamodb: pid $pid runs but does not answer on $DYNAMODB_PORT; restarting it"
    kill_wait "$pid" dynamodb 10
  fi
  mkdir -p "$SERVICES_DIR/dynamodb"
  local storage=(-inMemory) db_dir="${DYNAMODB_DIR:-$SERVICES_DIR/dynamodb}"
  case $DYNAMODB_STORAGE in
    memory) ;;
    disk) mkdir -p "$db_dir" && storage=(-dbPath "$db_dir") ;;
    *) die "dynamodb: DYNAMODB_STORAGE must be memory or disk, not $DYNAMODB_STORAGE" ;;
  esac
  [[ -f "$DYNAMODB_LOG" ]] && mv -f "$DYNAMODB_LOG" "$DYNAMODB_LOG.1"
  log "dynamodb local $DYNAMODB_VERSION: starting on $HOST:$DYNAMODB_PORT (storage: $DYNAMODB_STORAGE)"
  (
    cd "$SERVICES_DIR/dynamodb"
    exec 9>&- # the lock of services.sh stays with services.sh
    exec setsid nohup java -Xmx256m -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Djava.library.path="$DYNAMODB_LIB/native" -cp "$DYNAMODB_LIB/*" "$DYNAMODB_MAIN" \
      "${storage[@]}" -sharedDb -disableTelemetry -port "$DYNAMODB_PORT" >"$DYNAMODB_LOG" 2>&1 </dev/null
  ) &
  echo $! >"$DYNAMODB_PID"
}

dynamodb_stop() {
  local pid
  if pid="$(pid_alive "$DYNAMODB_PID" "$DYNAMODB_MAIN")" ||
    pid="$(listener_pid "$DYNAMODB_PORT" "$DYNAMODB_MAIN")"; then
    log "dynamodb: stopping (pid $pid)"
    kill_wait "$pid" dynamodb 10
  fi
  rm -f "$DYNAMODB_PID"
}

# --- commands ----------------------------------------------------------------------------

answering() { "${1}_answering"; }

service_addr() {
  case $1 in
    postgres) echo "$HOST:$PG_PORT" ;;
    redis) echo "$HOST:$REDIS_PORT" ;;
    kafka) echo "$HOST:$KAFKA_PORT" ;;
    dynamodb) echo "$HOST:$DYNAMODB_PORT" ;;
  esac
}

service_log() {
  case $1 in
    postgres) echo "$LOG_DIR/postgres.log" ;;
    redis) echo "$LOG_DIR/redis.log" ;;
    kafka) echo "$KAFKA_LOG" ;;
    dynamodb) echo "$DYNAMODB_LOG" ;;
  esac
}

# service_pid NAME: pid of the process `up` started, if it still lives (for early failure).
service_pid() {
  case $1 in
    postgres) pid_alive "$(pg_base_recorded)/data/postmaster.pid" postgres ;;
    redis) pid_alive "$RUN_DIR/redis.pid" redis-server ;;
    kafka) pid_alive "$KAFKA_PID" kafka.Kafka ;;
    dynamodb) pid_alive "$DYNAMODB_PID" "$DYNAMODB_MAIN" ;;
  esac
}

ready_after_start() {
  case $1 in
    kafka) kafka_ready_after_start ;;
    *) answering "$1" ;;
  esac
}

# Serializes up/down. Fd 9 holds the lock: every long-lived process started here gets 9>&-,
# or it would hold the lock for as long as it runs.
lock() {
  mkdir -p "$SERVICES_DIR"
  exec 9>"$SERVICES_DIR/.lock"
  flock -w 900 9 || die "another services.sh holds $SERVICES_DIR/.lock"
}

# known_services NAME...: fails on a name that is not a service.
known_services() {
  local s
  for s in "$@"; do
    [[ " ${SERVICES[*]} " == *" $s "* ]] || die "unknown service '$s' (one of: ${SERVICES[*]})"
  done
}

# cmd_up [SERVICE...]: every service when none is named.
cmd_up() {
  local t0=$SECONDS s to_start=() failed=() deadline start_at wanted=("$@")
  ((${#wanted[@]})) || wanted=("${SERVICES[@]}")
  known_services "${wanted[@]}"
  lock
  mkdir -p "$LOG_DIR" "$RUN_DIR"
  for s in "${wanted[@]}"; do
    if answering "$s"; then
      [[ $s == postgres ]] && pg_after_ready
      log "$s: already up on $(service_addr "$s")"
    else
      to_start+=("$s")
    fi
  done
  if ((${#to_start[@]} == 0)); then
    log "${wanted[*]}: up"
    return 0
  fi
  ensure_installed "${to_start[@]}"
  # Resolve jars before starting anything, so downloads do not eat into the start timeouts.
  for s in "${to_start[@]}"; do
    case $s in
      kafka) resolve_jars kafka "$KAFKA_LIB" ;;
      dynamodb) resolve_jars dynamodb "$DYNAMODB_LIB" ;;
    esac
  done
  # The JVMs take longest; start them first, then wait for everything together.
  for s in dynamodb kafka postgres redis; do
    [[ " ${to_start[*]} " == *" $s "* ]] || continue
    case $s in
      postgres) pg_start ;;
      redis) redis_start ;;
      kafka) kafka_start ;;
      dynamodb) dynamodb_start ;;
    esac
  done
  for s in "${to_start[@]}"; do
    start_at=$SECONDS
    deadline=$((SECONDS + TIMEOUT))
    while ! ready_after_start "$s"; do
      if ((SECONDS >= deadline)); then
        log "$s: did not answer on $(service_addr "$s") within ${TIMEOUT}s"
        log_tail "$(service_log "$s")"
        failed+=("$s")
        break
      fi
      if ! service_pid "$s" >/dev/null && ((SECONDS - start_at > 1)) && ! answering "$s"; then
        log "$s: process exited before answering on $(service_addr "$s")"
        log_tail "$(service_log "$s")"
        failed+=("$s")
        break
      fi
      sleep 0.3
    done
    if [[ " ${failed[*]-} " != *" $s "* ]]; then
      [[ $s == postgres ]] && pg_after_ready
      log "$s: up on $(service_addr "$s")"
    fi
  done
  if ((${#failed[@]})); then
    die "failed to start: ${failed[*]} (logs in $LOG_DIR)"
  fi
  log "${wanted[*]}: up ($((SECONDS - t0))s)"
}

# cmd_down [SERVICE...]: every service when none is named.
cmd_down() {
  local wanted=("$@") s
  ((${#wanted[@]})) || wanted=("${SERVICES[@]}")
  known_services "${wanted[@]}"
  if [[ ! -d "$SERVICES_DIR" ]]; then
    mkdir -p "$SERVICES_DIR"
  fi
  lock
  for s in dynamodb kafka redis postgres; do
    [[ " ${wanted[*]} " == *" $s "* ]] || continue
    case $s in
      postgres) pg_stop ;;
      redis) redis_stop ;;
      kafka) kafka_stop ;;
      dynamodb) dynamodb_stop ;;
    esac
  done
  log "${wanted[*]}: down"
}

cmd_status() {
  local s all=0
  for s in "${SERVICES[@]}"; do
    if answering "$s"; then
      printf '%-9s up    %s\n' "$s" "$(service_addr "$s")"
    else
      printf '%-9s down  %s\n' "$s" "$(service_addr "$s")"
      all=1
    fi
  done
  return $all
}

cmd_env() {
  cat <<EOF
export DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT/$PG_DB
export REDIS_URL=redis://$HOST:$REDIS_PORT
export KAFKA_BROKERS=$HOST:$KAFKA_PORT
export DYNAMODB_ENDPOINT=http://$HOST:$DYNAMODB_PORT
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local
EOF
}

cmd_smoke() {
  local node=node
  [[ -x "$REPO_DIR/node_modules/.bin/node" ]] && node="$REPO_DIR/node_modules/.bin/node"
  eval "$(cmd_env)"
  local t0 out
  t0=$(date +%s%N)
  out="$("$(pg_bin)/psql" -X -q -tA "$DATABASE_URL" -c 'select 1' 2>&1)" || out="$out (psql failed)"
  if [[ "$out" == 1 ]]; then
    echo "smoke: postgres ok ($(( ($(date +%s%N) - t0) / 1000000 ))ms)"
  else
    echo "smoke: postgres FAILED: $out" >&2
    "$node" "$HELPERS/smoke.mjs" || true
    return 1
  fi
  "$node" "$HELPERS/smoke.mjs"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  start | stop)
    (($# > 1)) || die "usage: $0 $1 SERVICE... (one of: ${SERVICES[*]})"
    verb=$1
    shift
    if [[ $verb == start ]]; then cmd_up "$@"; else cmd_down "$@"; fi
    ;;
  status) cmd_status ;;
  env) cmd_env ;;
  smoke) cmd_smoke ;;
  -h | --help | help)
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
    ;;
  *)
    echo "usage: bash scripts/services.sh up|down|start SERVICE...|stop SERVICE...|status|env|smoke" >&2
    exit 2
    ;;
esac
