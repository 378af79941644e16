#!/usr/bin/env bash
# A throw-away PostgreSQL server for the storage tests (tests/integration/test_storages.py).
#
#   .ci/postgres.sh installed      exit 0 if PostgreSQL's server programs are installed
#   .ci/postgres.sh start DIR      create a cluster in DIR (an empty folder), start it on a free
#                                  loopback port with a fresh random password, create a database
#                                  and print its URL (nothing else goes to stdout)
#   .ci/postgres.sh stop DIR       stop that server and delete DIR
#
# A developer runs the tests against it like this (Debian: apt-get install postgresql):
#
#   dir=$(mktemp -d); export WPL_NAS_TEST_POSTGRES=$(.ci/postgres.sh start "$dir")
#   pytest tests/integration/test_storages.py; .ci/postgres.sh stop "$dir"
#
# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user that Debian's
# package creates. Connections over TCP need the password; the Unix socket (in DIR) is trusted.
set -euo pipefail

USER_NAME=wpl
DATABASE=wpl_nas_test

die() { echo "postgres.sh: $*" >&2; exit 1; }

# The folder of the server's programs (initdb, pg_ctl, createdb): Debian's newest
# /usr/lib/postgresql/<version>/bin, or where initdb on PATH really lives.
bindir() {
    local found
    found=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
    if [[ -z $found ]] && command -v initdb >/dev/null 2>&1; then
        found=$(dirname "$(readlink -f "$(command -v initdb)")")
    fi
    [[ -n $found && -x $found/initdb && -x $found/pg_ctl && -x $found/createdb ]] || return 1
    echo "$found"
}

# Run a command as the owner of the cluster: `postgres` when we are root, else ourselves.
as_owner() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1 bin password port tries
    [[ -d $dir && -z $(ls -A "$dir") ]] || die "start needs an empty folder, not '$dir'"
    bin=$(bindir) || die "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    dir=$(cd "$dir" && pwd)
    if [[ $(id -u) == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root, but there is no 'postgres' user to run the server as"
        chown postgres: "$dir"
    fi
    chmod 700 "$dir"
    password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    (umask 077; printf '%s\n' "$password" >"$dir/pwfile")
    if [[ $(id -u) == 0 ]]; then chown postgres: "$dir/pwfile"; fi
    cd "$dir"  # the server's user may not be able to read the folder we were started in
    as_owner "$bin/initdb" -D "$dir/data" -U "$USER_NAME" --pwfile="$dir/pwfile" --auth-host=scram-sha-256 \
        --auth-local=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$dir/pwfile"
    # A free port can be taken between our look and the server's bind: try another then.
    for tries in 1 2 3; do
        port=$(free_port)
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c full_page_writes=off" start >/dev/null; then
            as_owner "$bin/createdb" -h "$dir" -p "$port" -U "$USER_NAME" "$DATABASE" \
                || die "createdb failed (server log: $dir/server.log)"
            echo "$port" >"$dir/port"
            echo "postgresql://$USER_NAME:$password@127.0.0.1:$port/$DATABASE"
            return
        fi
        echo "postgres.sh: the server did not start on port $port (try $tries of 3)" >&2
    done
    cat "$dir/server.log" >&2 || true
    die "the server did not start"
}

stop() {
    local dir=$1 bin
    [[ -d $dir ]] || return 0
    if [[ -f $dir/data/postmaster.pid ]]; then
        bin=$(bindir) || die "PostgreSQL is not installed"
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    fi
    rm -rf "$dir"
}

case ${1:-} in
    installed) bindir >/dev/null ;;
    start) [[ $# == 2 ]] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [[ $# == 2 ]] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 installed | start DIR | stop DIR" ;;
esac
