#!/usr/bin/env bash
# A PostgreSQL server for the benchmarks: Debian's postgresql-15, a fresh cluster in a temporary
# directory on a free loopback port (as the postgres user when run as root), with the databases
# bench_instances and bench_ledger use.
#   bench/postgres.sh start | url | async | stop
# `async` makes the role's commits stop waiting for the WAL flush (synchronous_commit = off) and
# empties the three databases, for a second run of bench_instances.
set -euo pipefail
state=${TMPDIR:-/tmp}/metro-bench-postgres
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_user=()
[[ $(id -u) -eq 0 ]] && as_user=(runuser -u postgres --)
case ${1:-} in
  start)
    "$0" stop
    mkdir -p "$state"
    [[ $(id -u) -eq 0 ]] && chown postgres "$state"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo "$port" >"$state.port"
    "${as_user[@]}" "$bin/initdb" -D "$state/data" -U metro --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    # Durable as a real server is (fsync on): the figures include PostgreSQL's commits.
    "${as_user[@]}" "$bin/pg_ctl" -D "$state/data" -l "$state/log" -w -t 60 \
      -o "-p $port -k $state -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    for db in bench_pg1 bench_pg2 bench_pg3 bench_ledger; do
      "$bin/psql" -h "$state" -p "$port" -U metro -d postgres -qc "CREATE DATABASE $db"
    done
    ;;
  async)
    port=$(cat "$state.port")
    "$bin/psql" -h "$state" -p "$port" -U metro -d postgres -qc \
      "ALTER ROLE metro SET synchronous_commit = off"
    for db in bench_pg1 bench_pg2 bench_pg3; do
      "$bin/psql" -h "$state" -p "$port" -U metro -d postgres -qc "DROP DATABASE $db"
      "$bin/psql" -h "$state" -p "$port" -U metro -d postgres -qc "CREATE DATABASE $db"
    done
    ;;
  url)
    echo "postgresql://metro@127.0.0.1:$(cat "$state.port")/"
    ;;
  stop)
    if [[ -d $state/data ]]; then
      "${as_user[@]}" "$bin/pg_ctl" -D "$state/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$state" "$state.port"
    ;;
  *)
    echo "usage: $0 start|url|async|stop" >&2
    exit 2
    ;;
esac
