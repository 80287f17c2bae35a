#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, on 127.0.0.1 only.
#
#   scripts/pg-cluster.sh start DIR   creates (once) and starts a cluster in DIR
#                                     on a free port; prints its URL
#   scripts/pg-cluster.sh stop DIR    stops it (fast: clients are cut off)
#   scripts/pg-cluster.sh url DIR     prints its URL
#   scripts/pg-cluster.sh ca DIR      prints the path of the CA (PEM) that
#                                     signed the server's certificate
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

cmd=${1:?usage: pg-cluster.sh start|stop|url|ca DIR}
dir=${2:?usage: pg-cluster.sh start|stop|url|ca DIR}

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
stop)
    if [[ -f "$data/postmaster.pid" ]]; then
        as_owner "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null || true
    fi
    ;;
url)
    url
    ;;
ca)
    echo "$dir/ca.crt"
    ;;
*)
    echo "usage: pg-cluster.sh start|stop|url|ca DIR" >&2
    exit 2
    ;;
esac
