#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Needs Rust; starts a throwaway PostgreSQL cluster for the tests (installing
# Debian's postgresql package if initdb is missing) and stops it at the end;
# installs Debian's chromium and chromium-driver for the dashboard's browser
# test, podman for the container image's test (tests/packaging.rs), and
# schemathesis for the OpenAPI test, if they are missing.
# Everything the tests use runs on 127.0.0.1.
#
# tests/failover.rs runs its own primary and synchronous standby per test
# (scripts/pg-cluster.sh start-replicated), in temp dirs.
#
# The integration tests run against both stores: SQLite always, PostgreSQL
# through HERALD_TEST_PG_URL, which this script sets. Set it yourself to use
# a server of your own (each test creates a fresh database there), and
# HERALD_TEST_PG_CA to the CA that signed its certificate if it has TLS on
# (the TLS tests need it: scripts/pg-cluster.sh ca DIR prints the cluster's).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== format"
cargo fmt --all -- --check
echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

if [[ -z "${HERALD_TEST_PG_URL:-}" ]]; then
    echo "== postgresql"
    pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/herald-test-pg.XXXXXX")
    trap 'scripts/pg-cluster.sh stop "$pg_dir/pg" || true; rm -rf "$pg_dir"' EXIT
    HERALD_TEST_PG_URL=$(scripts/pg-cluster.sh start "$pg_dir/pg")
    HERALD_TEST_PG_CA=$(scripts/pg-cluster.sh ca "$pg_dir/pg")
    export HERALD_TEST_PG_URL HERALD_TEST_PG_CA
    echo "a throwaway cluster at $HERALD_TEST_PG_URL (TLS, CA $HERALD_TEST_PG_CA)"
fi

# The failover tests (tests/failover.rs) start replicated clusters of their
# own through scripts/pg-cluster.sh, even where HERALD_TEST_PG_URL names a
# server of yours: the PostgreSQL binaries must be here.
if ! scripts/pg-cluster.sh find-bin >/dev/null 2>&1; then
    echo "== postgresql binaries"
    scripts/pg-cluster.sh ensure-bin
fi

# The SMTP tests run a real SMTP server: Python's aiosmtpd.
if ! python3 -c "import aiosmtpd" 2>/dev/null; then
    echo "== aiosmtpd"
    python3 -m pip install --quiet aiosmtpd ||
        python3 -m pip install --quiet --break-system-packages aiosmtpd
fi

# The OpenAPI test (tests/openapi.rs) runs schemathesis against a live Herald,
# at the version it was tested with.
SCHEMATHESIS_VERSION=4.32.5
if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$SCHEMATHESIS_VERSION')" 2>/dev/null; then
    echo "== schemathesis $SCHEMATHESIS_VERSION"
    python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION" ||
        python3 -m pip install --quiet --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION"
fi

# The dashboard's browser test drives Debian's Chromium through chromedriver;
# the packaging test builds the container image with podman.
missing=()
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || missing+=(chromium chromium-driver)
command -v podman >/dev/null || missing+=(podman)
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "== ${missing[*]}"
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
fi

echo "== tests"
cargo test --workspace --all-targets --locked
