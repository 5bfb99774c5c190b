#!/usr/bin/env bash
# LocalStack in host mode (no Docker): `scripts/localstack.sh start|stop|status`.
#
# LocalStack's last PyPI release needs Python 3.13 and a few pins beside it (see
# docs/activities.md and the design brief), so it lives in its own virtualenv under
# .localstack/ (git-ignored), never in the project's .venv. `start` is idempotent: it
# installs on first use, returns at once if LocalStack already answers, and waits (bounded)
# for /_localstack/health otherwise. `stop` ends only the process this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=".localstack"
VENV="$ROOT/venv"
PIDFILE="$ROOT/localstack.pid"
LOG="$ROOT/localstack.log"
HOST_PORT="${LOCALSTACK_LISTEN:-127.0.0.1:4566}"
HEALTH="http://$HOST_PORT/_localstack/health"
START_TIMEOUT_S="${LOCALSTACK_START_TIMEOUT_S:-120}"
STOP_TIMEOUT_S=20
PINS=(
    "localstack-core[runtime]==2026.3.0"
    "cbor2<6"
    "pyopenssl<24.3"
    "cryptography<44"
    "joserfc<1.1"
    "service_identity"
)

find_python313() {
    # LOCALSTACK_PYTHON wins; then pyenv's 3.13.x; then a python3.13 on PATH. Each
    # candidate is run, because a pyenv shim on PATH exists even when it cannot run.
    local root candidate
    root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
    for candidate in ${LOCALSTACK_PYTHON:-} "$root"/versions/3.13*/bin/python3.13 python3.13; do
        if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "LocalStack needs Python 3.13: install it (e.g. 'pyenv install 3.13') or set LOCALSTACK_PYTHON" >&2
    return 1
}

# The services the broker calls (SQS, Step Functions, SNS for task.notify(), DynamoDB for
# idempotent=True handlers), and those the local loop's state machines use beside them.
SERVICES="sqs,stepfunctions,sns,dynamodb,sts,events,iam"
BROKER_SERVICES="sqs stepfunctions sns dynamodb"

# 0: every service the broker uses is available; 1: LocalStack does not answer;
# 2: it answers without one of them (printed): a LocalStack started with other SERVICES.
health() {
    # shellcheck disable=SC2086 # one argument per service
    python3 - "$HEALTH" $BROKER_SERVICES <<'EOF' 2>/dev/null
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        services = json.load(r).get("services", {})
except (OSError, ValueError):
    sys.exit(1)
ok = {"available", "running"}
missing = [s for s in sys.argv[2:] if services.get(s) not in ok]
if missing:
    print(" ".join(missing))
    sys.exit(2)
EOF
}

healthy() {
    health >/dev/null
}

install() {
    if [[ -f "$VENV/.installed" ]]; then
        return
    fi
    local py
    py="$(find_python313)"
    mkdir -p "$ROOT"
    echo "localstack: creating $VENV with $("$py" --version)"
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # The project's pip constraints (if any) are for the broker's Python; LocalStack
    # pins its own versions, so install it without them.
    PIP_CONSTRAINT="" "$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
    touch "$VENV/.installed"
}

running_pid() {
    if [[ -f "$PIDFILE" ]]; then
        local pid
        pid="$(cat "$PIDFILE")"
        if kill -0 "$pid" 2>/dev/null; then
            echo "$pid"
            return
        fi
    fi
    return 1
}

start() {
    local missing status=0
    missing="$(health)" || status=$?
    if ((status == 0)); then
        echo "localstack: already healthy at $HEALTH"
        return
    fi
    if ((status == 2)); then
        echo "localstack: the LocalStack at $HOST_PORT runs without $missing (its SERVICES):" \
            "stop it and run this again" >&2
        return 1
    fi
    install
    if ! running_pid >/dev/null; then
        echo "localstack: starting on $HOST_PORT (log: $LOG)"
        # setsid: its own process group, so `stop` can end LocalStack and its children.
        GATEWAY_LISTEN="$HOST_PORT" \
            SERVICES="$SERVICES" \
            DISABLE_EVENTS=1 \
            LOCALSTACK_VOLUME_DIR="$PWD/$ROOT/volume" \
            setsid "$VENV/bin/python" -m localstack.runtime.main >"$LOG" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
    fi
    local waited=0
    until healthy; do
        if ! running_pid >/dev/null; then
            echo "localstack: the process exited; log tail:" >&2
            tail -n 40 "$LOG" >&2 || true
            return 1
        fi
        if ((waited >= START_TIMEOUT_S)); then
            echo "localstack: not healthy after ${START_TIMEOUT_S}s; log tail:" >&2
            tail -n 40 "$LOG" >&2 || true
            stop
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "localstack: healthy at $HEALTH after ${waited}s"
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        echo "localstack: not running (no live pid in $PIDFILE)"
        rm -f "$PIDFILE"
        return
    fi
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= STOP_TIMEOUT_S)); then
            echo "localstack: still running after ${STOP_TIMEOUT_S}s, killing" >&2
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$PIDFILE"
    echo "localstack: stopped"
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
install) install ;;
status)
    if healthy; then echo "localstack: healthy at $HEALTH"; else echo "localstack: not healthy"; exit 1; fi
    ;;
*)
    echo "usage: $0 start|stop|status|install" >&2
    exit 2
    ;;
esac
