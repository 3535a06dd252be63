# Shared by scripts/run and scripts/test: a virtual environment with the pinned
# requirements, and private PostgreSQL / Redis instances when DATABASE_URL /
# REDIS_URL are not given. Source it; do not run it.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
VENV="$ROOT/.venv"
mkdir -p "$LOCAL"
# runuser, apt-get and friends live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf '%s\n' "forgedrain: $*" >&2; }
die() { say "$*"; exit 1; }

# --- Python ------------------------------------------------------------------

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        local python
        python="$(find_python)" || die "Python 3.11 or newer with the venv module is needed (on Debian: apt-get install python3 python3-venv)"
        say "creating the virtual environment in .venv with $python"
        "$python" -m venv "$VENV"
    fi
    # Reinstall only when a requirements file changed since the last install.
    local stamp="$VENV/.requirements.sha256" wanted
    wanted="$(cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
        say "installing pinned requirements"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
        printf '%s\n' "$wanted" >"$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}

# --- Debian packages -----------------------------------------------------------

pg_bindir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
        printf '%s\n' "$dir"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    else
        return 1
    fi
}

ensure_packages() {
    local missing=()
    [ "${NEED_POSTGRES:-0}" = 1 ] && ! pg_bindir >/dev/null && missing+=(postgresql)
    [ "${NEED_REDIS:-0}" = 1 ] && ! command -v redis-server >/dev/null 2>&1 && missing+=(redis-server)
    # The tests deliver to a real rsyslog over TCP and TLS (GnuTLS stream driver).
    if [ "${NEED_RSYSLOG:-0}" = 1 ]; then
        command -v rsyslogd >/dev/null 2>&1 || missing+=(rsyslog)
        ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || missing+=(rsyslog-gnutls)
    fi
    # The dashboard's browser tests drive Debian's chromium through Playwright (no browser download).
    [ "${NEED_CHROMIUM:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1 && missing+=(chromium)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing ${missing[*]}: install the package(s) (Debian: apt-get install ${missing[*]}), or set DATABASE_URL / REDIS_URL to running servers"
    fi
    say "installing ${missing[*]} from Debian's packages"
    # Keep the packages' post-install scripts from starting system-wide
    # services: we run our own private instances instead.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    local ok=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 && ok=1
    if [ $ok = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null && ok=1
    fi
    [ $created_policy = 1 ] && rm -f "$policy"
    [ $ok = 1 ] || die "could not install ${missing[*]} with apt-get"
    return 0
}

# axe-core, the accessibility checker the browser tests inject into every page they reach. Pinned; from
# npm into .local/node (git-ignored); nothing to do when that version is there already.
AXE_VERSION=4.14.1
ensure_axe() {
    local dir="$ROOT/.local/node"
    local package="$dir/node_modules/axe-core/package.json"
    if [ -f "$package" ] && grep -q "\"version\": \"$AXE_VERSION\"" "$package"; then
        return 0
    fi
    command -v npm >/dev/null 2>&1 || die "npm is missing: install it (Debian: apt-get install npm) for the browser tests' axe-core"
    say "installing axe-core $AXE_VERSION from npm into .local/node"
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-save --no-audit --no-fund --silent "axe-core@$AXE_VERSION" >/dev/null \
        || die "could not install axe-core $AXE_VERSION with npm"
}

free_port() {
    "$VENV/bin/python" - <<'EOF'
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
EOF
}

# --- PostgreSQL ----------------------------------------------------------------

# PostgreSQL refuses to run as root: as root, the cluster belongs to the
# `postgres` system user (created by Debian's package).
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# start_postgres DIR [extra postgres -c settings...]
# Initialises DIR once, starts a server on a free loopback port and exports
# DATABASE_URL for database "forgedrain". Sets PG_STARTED_DIR for stop_postgres.
start_postgres() {
    local dir="$1"; shift
    local bindir port
    bindir="$(pg_bindir)" || die "PostgreSQL binaries not found"
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "the postgres system user is missing (apt-get install postgresql creates it)"
        command -v runuser >/dev/null 2>&1 || die "runuser (util-linux) is needed to run PostgreSQL as the postgres user"
        chown postgres: "$dir"
        runuser -u postgres -- test -w "$dir" ||
            die "the postgres user cannot write $dir (a parent folder is private); clone the repository somewhere readable, or set DATABASE_URL"
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
            die "initdb failed; see $dir/initdb.log"
    fi
    port="$(free_port)"
    local options="-p $port -c listen_addresses=127.0.0.1 -k $dir"
    local setting
    for setting in "$@"; do options="$options -c $setting"; done
    as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$options" -w -t 60 start >/dev/null ||
        die "PostgreSQL did not start; see $dir/postgres.log"
    PG_STARTED_DIR="$dir"
    if ! as_pg "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'forgedrain'" | grep -q 1; then
        as_pg "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres forgedrain
    fi
    export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/forgedrain"
    say "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in ${dir#"$ROOT"/})"
}

stop_postgres() {
    [ -n "${PG_STARTED_DIR:-}" ] || return 0
    as_pg "$(pg_bindir)/pg_ctl" -D "$PG_STARTED_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    PG_STARTED_DIR=""
}

# --- Redis -----------------------------------------------------------------------

# start_redis DIR: a private, memory-only Redis on a free loopback port.
start_redis() {
    local dir="$1" port
    mkdir -p "$dir"
    port="$(free_port)"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" ||
        die "Redis did not start; see $dir/redis.log"
    local tries=0
    until redis-cli -p "$port" ping >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ $tries -lt 100 ] || die "Redis did not answer; see $dir/redis.log"
        sleep 0.05
    done
    REDIS_STARTED_DIR="$dir"
    export REDIS_URL="redis://127.0.0.1:$port/0"
    say "Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2) on 127.0.0.1:$port"
}

stop_redis() {
    [ -n "${REDIS_STARTED_DIR:-}" ] || return 0
    local pid
    pid="$(cat "$REDIS_STARTED_DIR/redis.pid" 2>/dev/null || true)"
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        local tries=0
        while kill -0 "$pid" 2>/dev/null && [ $tries -lt 100 ]; do sleep 0.05; tries=$((tries + 1)); done
    fi
    REDIS_STARTED_DIR=""
}

stop_services() {
    stop_postgres
    stop_redis
}

# ensure_services PG_DIR REDIS_DIR [postgres settings...]
ensure_services() {
    local pg_dir="$1" redis_dir="$2"; shift 2
    NEED_POSTGRES=0 NEED_REDIS=0
    [ -z "${DATABASE_URL:-}" ] && NEED_POSTGRES=1
    [ -z "${REDIS_URL:-}" ] && NEED_REDIS=1
    ensure_packages
    trap stop_services EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    [ $NEED_POSTGRES = 1 ] && start_postgres "$pg_dir" "$@"
    [ $NEED_REDIS = 1 ] && start_redis "$redis_dir"
    return 0
}
