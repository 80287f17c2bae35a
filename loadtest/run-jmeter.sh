#!/usr/bin/env bash
# Runs loadtest/herald.jmx headless against a Herald it starts itself.
#
#   loadtest/run-jmeter.sh [-Jthreads=64] [-Jrampup=5] [-Jduration=30] [other JMeter args]
#
# Installs Debian's jmeter package if `jmeter` is missing, builds Herald
# (release), starts `herald mock-providers` and `herald serve` on free
# loopback ports with a store in a temporary directory, runs the plan with
# JMeter's XStream workaround (see HeraldJMeterLauncher.java), prints
# JMeter's summary, and stops everything on exit. Everything listens on
# 127.0.0.1; the plan is pointed at the Herald started here, nowhere else.
#
# Environment: HERALD_BIN (default: target/release/herald, built if
# missing or stale), FAILURE_RATE (0.5), SIM_LATENCY_MS (0), KEEP=1 to keep
# the temporary directory (config, store, logs, JMeter's results).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- JMeter and a JDK ------------------------------------------------------
if ! command -v jmeter >/dev/null || ! command -v javac >/dev/null; then
    echo "== installing jmeter (Debian package)" >&2
    as_root apt-get update -qq
    pkgs=(jmeter jmeter-http)
    command -v javac >/dev/null || pkgs+=(default-jdk-headless)
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
JMETER_HOME=${JMETER_HOME:-/usr/share/jmeter}
[ -f "$JMETER_HOME/bin/ApacheJMeter.jar" ] || { echo "no JMeter under $JMETER_HOME" >&2; exit 1; }
# JMeter's jars on the class path itself (their manifests name the
# dependencies under /usr/share/java), so the launcher patches the same
# SaveService class JMeter then uses.
CP="$JMETER_HOME/bin/ApacheJMeter.jar"
for jar in "$JMETER_HOME"/lib/ext/*.jar "$JMETER_HOME"/lib/*.jar; do CP="$CP:$jar"; done

# --- Herald ------------------------------------------------------------------
HERALD_BIN=${HERALD_BIN:-}
if [ -z "$HERALD_BIN" ]; then
    echo "== building herald (release)" >&2
    cargo build --release --quiet --bin herald
    HERALD_BIN="$ROOT/target/release/herald"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-jmeter.XXXXXX")
SIM_PID=""
HERALD_PID=""
cleanup() {
    local status=$?
    for pid in $HERALD_PID $SIM_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $HERALD_PID $SIM_PID; do
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (at most 30 s) until FILE has at least N lines matching PATTERN.
wait_for() {
    local file=$1 pattern=$2 n=$3 pid=$4
    for _ in $(seq 1 300); do
        if [ "$(grep -c "$pattern" "$file" 2>/dev/null || true)" -ge "$n" ]; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { echo "process $pid exited:" >&2; cat "$file" >&2; return 1; }
        sleep 0.1
    done
    echo "timed out waiting for $pattern in $file" >&2
    return 1
}

echo "== starting the provider simulator" >&2
NO_COLOR=1 RUST_LOG=info "$HERALD_BIN" mock-providers \
    --sms-ports 0,0,0 --email-ports 0,0,0 \
    --failure-rate "${FAILURE_RATE:-0.5}" --latency-ms "${SIM_LATENCY_MS:-0}" \
    >"$WORK/deliveries.jsonl" 2>"$WORK/simulator.log" </dev/null &
SIM_PID=$!
wait_for "$WORK/simulator.log" "listening on http://" 6 "$SIM_PID"

{
    echo "store = \"sqlite://$WORK/herald.db\""
    grep -o 'http://127\.0\.0\.1:[0-9]*/api/[a-z]*/provider[0-9]*' "$WORK/simulator.log" | sort -u |
        while read -r url; do
            channel=$(echo "$url" | sed 's#.*/api/\([a-z]*\)/provider\([0-9]*\)#\1#')
            n=$(echo "$url" | sed 's#.*/provider\([0-9]*\)#\1#')
            printf '\n[[providers.%s]]\nname = "%s-provider%s"\nurl = "%s"\n' "$channel" "$channel" "$n" "$url"
        done
} >"$WORK/herald.toml"

echo "== starting herald" >&2
"$HERALD_BIN" serve --config "$WORK/herald.toml" --listen 127.0.0.1:0 \
    >"$WORK/herald.out" 2>"$WORK/herald.log" </dev/null &
HERALD_PID=$!
wait_for "$WORK/herald.out" "herald listening on http://" 1 "$HERALD_PID"
ADDR=$(sed -n 's#^herald listening on http://##p' "$WORK/herald.out" | head -n1)
PORT=${ADDR##*:}
echo "   herald on 127.0.0.1:$PORT, simulator failing ${FAILURE_RATE:-0.5} of requests" >&2

echo "== compiling the JMeter launcher" >&2
javac -nowarn -cp "$CP" -d "$WORK" "$ROOT/loadtest/HeraldJMeterLauncher.java"

echo "== running loadtest/herald.jmx" >&2
# -Jjmeterengine.nongui.port=0: no UDP control listener on all interfaces.
# Non-GUI JMeter adds a summariser of its own ("summary"); only the plan's
# ("herald") is shown.
# The host is fixed to the Herald started above; the -J arguments given to
# this script may set threads, rampup and duration.
java -Djmeter.home="$JMETER_HOME" -cp "$WORK:$CP" HeraldJMeterLauncher \
    -n -t "$ROOT/loadtest/herald.jmx" \
    -l "$WORK/results.jtl" -j "$WORK/jmeter.log" \
    -Jjmeterengine.nongui.port=0 -Jsummariser.interval=10 \
    "$@" -Jhost=127.0.0.1 -Jport="$PORT" 2>&1 | grep -v '^INFO \|^summary ' || true

# The assertion outcome of every sample is in the results file (CSV, no
# header): column 8 is success.
samples=$(wc -l <"$WORK/results.jtl" | tr -d ' ')
failed=$(awk -F, '$8 != "true"' "$WORK/results.jtl" | wc -l | tr -d ' ')
echo "== $samples samples, $failed failed the 202 assertion"
sleep 2
echo "== Herald's counts: $(curl -s "http://127.0.0.1:$PORT/v1/stats" 2>/dev/null || echo '?')"
echo "== simulator deliveries so far: $(wc -l <"$WORK/deliveries.jsonl" | tr -d ' ')"
[ "$samples" -gt 0 ] && [ "$failed" -eq 0 ]
