#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: the one helper both the C++
# tests (tests/store/pg_test_cluster.h) and the end-to-end scripts
# (tests/e2e/fleet_test.py) use.
#
#   DIR=$(tests/store/pg_cluster.sh create)   # initdb + start on 127.0.0.1:<free port>
#   cat "$DIR/url"                           # postgresql://preflight@127.0.0.1:PORT/preflight
#   tests/store/pg_cluster.sh stop "$DIR"     # stop the server, keep the data
#   tests/store/pg_cluster.sh start "$DIR"    # start it again on the same port
#   tests/store/pg_cluster.sh destroy "$DIR"  # stop and remove everything
#
# PostgreSQL refuses to run as root. Run as root (CI), the cluster belongs to
# an unprivileged system user (PREFLIGHT_PG_USER, default `preflight-test`,
# created by tools/setup.sh; `nobody` when that user does not exist) and every
# server command runs through `runuser`. Run as anyone else, it is that user's.
# Authentication is `trust` on loopback only: the cluster lives minutes.
set -euo pipefail

BIN="${PREFLIGHT_PG_BIN:-/usr/lib/postgresql/15/bin}"
die() { echo "pg_cluster: $*" >&2; exit 1; }
[ -x "$BIN/initdb" ] || die "no $BIN/initdb: install postgresql-15 (tools/setup.sh does)"

if [ "$(id -u)" -eq 0 ]; then
  OWNER="${PREFLIGHT_PG_USER:-preflight-test}"
  id -u "$OWNER" >/dev/null 2>&1 || OWNER=nobody
  as_owner() { runuser -u "$OWNER" -- "$@"; }
else
  OWNER="$(id -un)"
  as_owner() { "$@"; }
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_server() {  # DIR PORT
  as_owner "$BIN/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 60 \
    -o "-p $2 -c listen_addresses=127.0.0.1 -k $1 -c max_connections=200" start >/dev/null
}

case "${1:-}" in
  create)
    dir="$(mktemp -d "${TMPDIR:-/tmp}/preflight-pg-XXXXXX")"
    chmod 0755 "$dir"
    chown "$OWNER" "$dir"
    as_owner "$BIN/initdb" -D "$dir/data" -U preflight --auth=trust -E UTF8 --no-locale \
      >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    # The port is free when asked but another process may take it first: retry.
    for attempt in 1 2 3 4 5; do
      port="$(free_port)"
      if start_server "$dir" "$port" 2>>"$dir/start.log"; then
        echo "$port" >"$dir/port"
        as_owner "$BIN/psql" -q -h 127.0.0.1 -p "$port" -U preflight -d postgres \
          -c "CREATE DATABASE preflight" >/dev/null
        echo "postgresql://preflight@127.0.0.1:$port/preflight" >"$dir/url"
        echo "$dir"
        exit 0
      fi
    done
    cat "$dir/start.log" "$dir/server.log" >&2 || true
    die "could not start PostgreSQL in $dir"
    ;;
  start)
    [ -f "${2:-}/port" ] || die "usage: $0 start DIR (a cluster made by create)"
    start_server "$2" "$(cat "$2/port")"
    ;;
  stop)
    [ -d "${2:-}/data" ] || die "usage: $0 stop DIR"
    as_owner "$BIN/pg_ctl" -D "$2/data" -w -t 60 -m fast stop >/dev/null
    ;;
  destroy)
    [ -d "${2:-}/data" ] || die "usage: $0 destroy DIR"
    as_owner "$BIN/pg_ctl" -D "$2/data" -w -t 60 -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$2"
    ;;
  *)
    die "usage: $0 create | start DIR | stop DIR | destroy DIR"
    ;;
esac
