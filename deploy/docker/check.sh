#!/usr/bin/env bash
# The daemon image's install steps, exercised without a Docker engine: the Dockerfile's
# own install.sh builds the wheels and installs them into a fresh venv with the machine's
# python3; then `eventq consume --help`, and the image's command against the running stack
# (EVENTQ_BOOTSTRAP_SERVERS, EVENTQ_DATABASE_URL), probed with the image's HEALTHCHECK
# script and /readyz, fed one event, stopped with SIGTERM (exit 0 expected).
# Prints "check: ok" at the end; any failure is one "check: ..." line and exit 1.
set -euo pipefail
cd "$(dirname "$0")/../.."

export EVENTQ_BOOTSTRAP_SERVERS="${EVENTQ_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
export EVENTQ_DATABASE_URL="${EVENTQ_DATABASE_URL:-postgresql://postgres@127.0.0.1:54320/eventq}"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
daemon=""
cleanup() {
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -KILL "$daemon" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "check: $*" >&2
    if [ -f "$work/daemon.log" ]; then
        echo "check: daemon log (last 40 lines):" >&2
        tail -n 40 "$work/daemon.log" >&2
    fi
    exit 1
}

started=$SECONDS
PYTHON="$python" sh deploy/docker/install.sh build . "$work/wheels" || fail "install.sh build failed (pip wheel, output above)"
PYTHON="$python" sh deploy/docker/install.sh install "$work/wheels" "$work/venv" || fail "install.sh install failed"
echo "check: wheels built and installed into a fresh venv ($(find "$work/wheels" -name "*.whl" | wc -l) wheels, $((SECONDS - started)) s)"
bin="$work/venv/bin"
"$bin/eventq" consume --help >/dev/null || fail "eventq consume --help failed"

# A topic and group of the check's own; the rest is the image's command and environment.
suffix="$(date +%s)-$$"
export EVENTQ_TOPICS="orders-image-check-$suffix" EVENTQ_GROUP="orders-projector-check-$suffix"
export EVENTQ_HEALTH_HOST=127.0.0.1 EVENTQ_SHUTDOWN_GRACE_S=5
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export EVENTQ_HEALTH_PORT="$port"
"$bin/eventq" db migrate >/dev/null || fail "eventq db migrate failed (EVENTQ_DATABASE_URL; its error is above)"
"$bin/eventq" topics create --partitions 1 "$EVENTQ_TOPICS" >/dev/null || fail "eventq topics create failed"

(cd "$work" && exec "$bin/eventq" consume orders_projector.handlers:app --health-port "$port") >"$work/daemon.log" 2>&1 &
daemon=$!

probe() {  # probe NAME COMMAND...: until it succeeds, for at most 60 s
    local name="$1" deadline=$((SECONDS + 60))
    shift
    until "$@" >/dev/null 2>&1; do
        kill -0 "$daemon" 2>/dev/null || fail "the daemon exited before $name passed"
        [ "$SECONDS" -lt "$deadline" ] || fail "$name did not pass within 60 s"
        sleep 0.5
    done
}
probe "the HEALTHCHECK (/livez)" "$bin/python" deploy/docker/healthcheck.py
readyz() {
    "$bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' \
        "http://127.0.0.1:$port/readyz"
}
probe "/readyz" readyz
echo "check: /livez (the image's HEALTHCHECK) and /readyz answer 200"

"$bin/eventq" publish --topic "$EVENTQ_TOPICS" --schemas orders_projector.schemas --type order.created.v1 \
    --data '{"order_id": "o-image-check", "amount_cents": 1}' >"$work/publish.log" 2>&1 || fail "eventq publish failed: $(tail -n 3 "$work/publish.log")"
projected() { grep -q 'orders.projected' "$work/daemon.log" && grep -q 'o-image-check' "$work/daemon.log"; }
probe "handling the published event" projected
echo "check: the installed app handled an event"

kill -TERM "$daemon"
deadline=$((SECONDS + 30))
while kill -0 "$daemon" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the daemon did not stop within 30 s of SIGTERM"
    sleep 0.2
done
rc=0
wait "$daemon" || rc=$?
daemon=""
[ "$rc" -eq 0 ] || fail "the daemon exited $rc after SIGTERM, not 0"
grep -q 'consumer.stopped' "$work/daemon.log" || fail "the daemon did not log consumer.stopped"
echo "check: SIGTERM stopped the daemon cleanly (exit 0)"
echo "check: ok ($((SECONDS - started)) s)"
