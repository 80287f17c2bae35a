#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, on 127.0.0.1 only.
#
#   scripts/pg-cluster.sh start DIR   creates (once) and starts a cluster in DIR
#                                     on a free port; prints its URL
#   scripts/pg-cluster.sh stop DIR    stops it (fast: clients are cut off); for
#                                     a replicated DIR, both servers
#   scripts/pg-cluster.sh url DIR     prints its URL
#   scripts/pg-cluster.sh ca DIR      prints the path of the CA (PEM) that
#                                     signed the server's certificate
#   scripts/pg-cluster.sh find-bin    prints the directory of the PostgreSQL
#                                     binaries, or fails; never installs
#   scripts/pg-cluster.sh ensure-bin  the same, installing them if missing
#
# Replicated mode, for the failover tests: two servers, a primary and a
# synchronous streaming standby made from it with `pg_basebackup -R`
# (synchronous_standby_names = '*', synchronous_commit = on), each on a free
# port of 127.0.0.1 with TLS as above. Its URL names both hosts with
# target_session_attrs=read-write, as an operator's would.
#
#   start-replicated DIR   creates (once) and starts both; prints the URL
#   kill DIR               kill -9 of the primary's postmaster and its children
#                          (a lost machine)
#   stop-primary DIR       stops the primary cleanly (-m fast: a switchover)
#   promote DIR            promotes the standby and, as Patroni does when no
#                          standby is left, empties synchronous_standby_names
#                          there so that commits do not wait for one
#   stop-standby DIR       stops the standby (-m fast)
#   start-standby DIR      starts the standby again
#   rejoin DIR             brings the old primary back as a read-only standby
#                          of the new one (rebuilt with pg_basebackup -R, since
#                          its WAL may have gone past the promotion point),
#                          and makes it synchronous again
#   node-url DIR primary|standby
#                          the URL of one server alone
#
# The cluster has TLS on (not required): a CA made for it by the openssl CLI
# signed a certificate for 127.0.0.1 and localhost, so clients can connect
# with sslmode=verify-full&sslrootcert=$(pg-cluster.sh ca DIR).
#
# If initdb is not on the PATH nor in /usr/lib/postgresql/*/bin, Debian's
# postgresql package is installed. initdb and postgres refuse to run as root,
# so as root the cluster belongs to (and runs as) the `postgres` user, created
# if needed. The unix socket lives in DIR too, never in /var/run.
set -euo pipefail

usage="usage: pg-cluster.sh start|stop|url|ca|start-replicated|kill|stop-primary|promote|stop-standby|start-standby|rejoin|node-url DIR, or find-bin|ensure-bin"
cmd=${1:?$usage}

find_bin() {
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return
    fi
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$found" && -x "$found/initdb" ]]; then
        echo "$found"
    fi
}

if [[ "$cmd" == find-bin ]]; then
    bin=$(find_bin)
    [[ -n "$bin" ]] || { echo "pg-cluster: no initdb on the PATH nor in /usr/lib/postgresql/*/bin" >&2; exit 1; }
    echo "$bin"
    exit 0
fi
[[ "$cmd" == ensure-bin ]] || dir=${2:?$usage}

bin=$(find_bin)
if [[ -z "$bin" ]]; then
    echo "pg-cluster: initdb not found; installing Debian's postgresql package" >&2
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
    bin=$(find_bin)
    [[ -n "$bin" ]] || { echo "pg-cluster: no initdb after installing postgresql" >&2; exit 1; }
fi
if [[ "$cmd" == ensure-bin ]]; then
    echo "$bin"
    exit 0
fi

# Runs a PostgreSQL binary as the cluster's owner.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

data="$dir/data"

free_port() {
    python3 - <<'EOF' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

# A CA of the cluster's own and a server certificate it signed.
make_certificates() {
    if ! command -v openssl >/dev/null 2>&1; then
        echo "pg-cluster: installing Debian's openssl package" >&2
        sudo=""
        [[ $(id -u) -ne 0 ]] && sudo="sudo"
        $sudo apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl >&2
    fi
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 30 \
        -subj "/CN=Herald test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new "${ec[@]}" -keyout "$data/server.key" -out "$dir/server.csr" \
        -subj "/CN=localhost" 2>/dev/null
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
        "extendedKeyUsage=serverAuth" >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 30 -extfile "$dir/server.ext" -out "$data/server.crt" 2>/dev/null
    chmod 600 "$data/server.key"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres "$data/server.key" "$data/server.crt"
    fi
}

url() {
    echo "postgres://herald:herald@127.0.0.1:$(cat "$dir/port")/postgres"
}

# --- Replicated mode: DIR/a and DIR/b are the two servers; DIR/primary and
# DIR/standby name which is which (a promotion swaps them).

replicated() { [[ -f "$dir/replicated" ]]; }
node_of() { cat "$dir/$1"; }
node_port() { cat "$dir/$1/port"; }
node_url() { echo "postgres://herald:herald@127.0.0.1:$(node_port "$1")/postgres"; }

replicated_url() {
    local p s
    p=$(node_of primary)
    s=$(node_of standby)
    echo "postgres://herald:herald@127.0.0.1:$(node_port "$p"),127.0.0.1:$(node_port "$s")/postgres?target_session_attrs=read-write"
}

# Runs SQL on one server through its unix socket.
node_sql() {
    local node=$1
    shift
    as_owner "$bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 \
        "host=$dir/$node port=$(node_port "$node") user=herald password=herald dbname=postgres" \
        -c "$*"
}

node_start() {
    local node=$1
    as_owner "$bin/pg_ctl" -D "$dir/$node/data" -l "$dir/$node/server.log" -w -t 60 start >/dev/null ||
        { cat "$dir/$node/server.log" >&2; exit 1; }
}

node_stop() {
    local node=$1
    if [[ -f "$dir/$node/data/postmaster.pid" ]]; then
        as_owner "$bin/pg_ctl" -D "$dir/$node/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    fi
}

# A standby of the primary `from` in node `node`, made by pg_basebackup -R
# (which writes standby.signal and primary_conninfo), on its own port.
make_standby() {
    local node=$1 from=$2 port
    # A node rebuilt keeps its address: it is in the cluster's URL.
    port=$(cat "$dir/$node/port" 2>/dev/null || free_port)
    rm -rf "$dir/$node"
    mkdir -p "$dir/$node"
    [[ $(id -u) -eq 0 ]] && chown postgres "$dir/$node"
    # --no-sync and syncfs: fsyncing each file of a copy made for a test is
    # seconds on a busy disk, for nothing.
    as_owner "$bin/pg_basebackup" -D "$dir/$node/data" -R -X stream -c fast --no-sync \
        -d "host=127.0.0.1 port=$(node_port "$from") user=herald password=herald application_name=$node" \
        >"$dir/$node/basebackup.log" 2>&1 ||
        { cat "$dir/$node/basebackup.log" >&2; exit 1; }
    echo "$port" >"$dir/$node/port"
    cat >>"$dir/$node/data/postgresql.conf" <<EOF
port = $(cat "$dir/$node/port")
unix_socket_directories = '$dir/$node'
recovery_init_sync_method = syncfs
EOF
    # The standby names itself to the primary (pg_stat_replication's
    # application_name) by its node.
    cat >>"$dir/$node/data/postgresql.auto.conf" <<EOF
primary_conninfo = 'host=127.0.0.1 port=$(node_port "$from") user=herald password=herald application_name=$node sslmode=prefer'
EOF
}

start_replicated() {
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$dir"
        chmod o+x "$(dirname "$dir")" 2>/dev/null || true
    fi
    if [[ ! -f "$dir/replicated" ]]; then
        rm -rf "$dir/a" "$dir/b"
        mkdir -p "$dir/a"
        [[ $(id -u) -eq 0 ]] && chown postgres "$dir/a"
        echo herald >"$dir/pwfile"
        [[ $(id -u) -eq 0 ]] && chown postgres "$dir/pwfile"
        data="$dir/a/data"
        as_owner "$bin/initdb" -D "$data" -U herald --pwfile="$dir/pwfile" --no-sync \
            --auth=scram-sha-256 -E UTF8 --locale=C >"$dir/a/initdb.log" 2>&1 ||
            { cat "$dir/a/initdb.log" >&2; exit 1; }
        free_port >"$dir/a/port"
        cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $(cat "$dir/a/port")
unix_socket_directories = '$dir/a'
max_connections = 200
shared_buffers = 32MB
fsync = on
log_min_messages = warning
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
wal_level = replica
max_wal_senders = 5
hot_standby = on
synchronous_commit = on
synchronous_standby_names = ''
EOF
        make_certificates
        # Commits wait for a synchronous standby once one is asked for: the
        # primary starts without, and asks once its standby exists.
        node_start a
        make_standby b a
        node_start b
        sed -i "s/^synchronous_standby_names = ''$/synchronous_standby_names = '*'/" "$data/postgresql.conf"
        node_sql a "SELECT pg_reload_conf()" >/dev/null
        echo a >"$dir/primary"
        echo b >"$dir/standby"
        touch "$dir/replicated"
    else
        node_start "$(node_of primary)"
        node_start "$(node_of standby)"
    fi
    wait_streaming
    replicated_url
}

# Waits (up to 30 s) until the standby streams from the primary.
wait_streaming() {
    local p i
    p=$(node_of primary)
    for i in $(seq 1 60); do
        if [[ $(node_sql "$p" "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null) -ge 1 ]]; then
            return 0
        fi
        sleep 0.5
    done
    echo "pg-cluster: the standby is not streaming after 30 s" >&2
    exit 1
}

kill_primary() {
    local p pid children
    p=$(node_of primary)
    [[ -f "$dir/$p/data/postmaster.pid" ]] || { echo "pg-cluster: the primary is not running" >&2; exit 1; }
    pid=$(head -n 1 "$dir/$p/data/postmaster.pid")
    children=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
    kill -9 "$pid" $children 2>/dev/null || true
    # Until the port is closed.
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        # A zombie no one reaps (a container without init) is gone too.
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
        sleep 0.05
    done
}

promote() {
    local p s
    p=$(node_of primary)
    s=$(node_of standby)
    as_owner "$bin/pg_ctl" -D "$dir/$s/data" -w -t 60 promote >/dev/null
    node_sql "$s" "ALTER SYSTEM SET synchronous_standby_names = ''" >/dev/null
    node_sql "$s" "SELECT pg_reload_conf()" >/dev/null
    echo "$s" >"$dir/primary"
    echo "$p" >"$dir/standby"
}

rejoin() {
    local p s
    p=$(node_of primary)
    s=$(node_of standby)
    node_stop "$s"
    make_standby "$s" "$p"
    node_start "$s"
    node_sql "$p" "ALTER SYSTEM SET synchronous_standby_names = '*'" >/dev/null
    node_sql "$p" "SELECT pg_reload_conf()" >/dev/null
    wait_streaming
}

case "$cmd" in
start)
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$dir"
        # The owner must reach DIR through its parents (a temp dir may be 0700).
        chmod o+x "$(dirname "$dir")" 2>/dev/null || true
    fi
    if [[ ! -f "$data/PG_VERSION" ]]; then
        echo herald >"$dir/pwfile"
        [[ $(id -u) -eq 0 ]] && chown postgres "$dir/pwfile"
        as_owner "$bin/initdb" -D "$data" -U herald --pwfile="$dir/pwfile" \
            --auth=scram-sha-256 -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; exit 1; }
        free_port >"$dir/port"
        cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $(cat "$dir/port")
unix_socket_directories = '$dir'
max_connections = 400
shared_buffers = 128MB
fsync = on
log_min_messages = warning
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
EOF
        make_certificates
    fi
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
        { cat "$dir/server.log" >&2; exit 1; }
    url
    ;;
start-replicated)
    start_replicated
    ;;
kill)
    kill_primary
    ;;
stop-primary)
    node_stop "$(node_of primary)"
    ;;
promote)
    promote
    ;;
stop-standby)
    node_stop "$(node_of standby)"
    ;;
start-standby)
    node_start "$(node_of standby)"
    ;;
rejoin)
    rejoin
    ;;
node-url)
    node_url "$(node_of "${3:?usage: pg-cluster.sh node-url DIR primary|standby}")"
    ;;
stop)
    if replicated; then
        node_stop a
        node_stop b
    fi
    if [[ -f "$data/postmaster.pid" ]]; then
        as_owner "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null || true
    fi
    ;;
url)
    if replicated; then replicated_url; else url; fi
    ;;
ca)
    echo "$dir/ca.crt"
    ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac
