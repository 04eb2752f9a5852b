#!/usr/bin/env bash
# The whole test suite: bootstrap, local PostgreSQL and Mosquitto up, then ruff, mypy and pytest.
#
#   bash scripts/test.sh                 everything
#   bash scripts/test.sh -k demo -x      extra arguments go to pytest
#
# Exits non-zero when any step fails; when pytest fails, with pytest's own exit code (5 means it
# collected no test, which is a failure here too).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh

PG_HOST=127.0.0.1 PG_PORT=5432 MQTT_HOST=127.0.0.1 MQTT_PORT=1883

say() { echo "test.sh: $*" >&2; }

tcp_open() { timeout 2 bash -c ">/dev/tcp/$1/$2" 2>/dev/null; }

wait_for() {  # wait_for WHAT SECONDS COMMAND...
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq $((seconds * 10))); do
        "$@" && return 0
        sleep 0.1
    done
    say "$what did not come up within ${seconds}s"
    return 1
}

pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2; }

# The tests' databases live on the local PostgreSQL unless VIGIL_TEST_ADMIN_URL names another
# server (tests/conftest.py); then that server is the operator's to run.
if [[ -z "${VIGIL_TEST_ADMIN_URL:-}" ]]; then
    if ! pg_ready; then
        shopt -s nullglob
        clusters=(/etc/postgresql/*/main)
        if ((${#clusters[@]} == 0)); then
            versions=(/usr/lib/postgresql/*/bin/initdb)
            ((${#versions[@]})) || { say "no PostgreSQL server installed"; exit 3; }
            version="$(printf '%s\n' "${versions[@]}" | cut -d/ -f5 | sort -V | tail -n1)"
            say "no PostgreSQL cluster: creating $version/main on port $PG_PORT"
            pg_createcluster --port "$PG_PORT" "$version" main >/dev/null
            clusters=("/etc/postgresql/$version/main")
        fi
        shopt -u nullglob
        for cluster in "${clusters[@]}"; do
            version="$(basename "$(dirname "$cluster")")"
            say "starting PostgreSQL $version/main"
            pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        done
        wait_for PostgreSQL 60 pg_ready
    fi
    # Local TCP logins as postgres are trusted on this machine kind: check it, don't change it.
    if ! psql -X -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -c 'SELECT 1' >/dev/null
    then
        say "cannot log in to PostgreSQL at $PG_HOST:$PG_PORT as postgres without a password;"
        say "set VIGIL_TEST_ADMIN_URL to a server and user that can create databases"
        exit 3
    fi
fi

if ! tcp_open "$MQTT_HOST" "$MQTT_PORT"; then
    say "starting Mosquitto"
    install -d -o mosquitto -g mosquitto /run/mosquitto /var/log/mosquitto 2>/dev/null || true
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
    wait_for Mosquitto 30 tcp_open "$MQTT_HOST" "$MQTT_PORT"
fi

status=0
say "ruff"
.venv/bin/ruff check services device_gateway alerting coach_console simulators bench || status=1
say "mypy"
.venv/bin/mypy || status=1
say "pytest"
pytest_status=0
.venv/bin/pytest "$@" || pytest_status=$?

if ((pytest_status != 0)); then
    say "pytest failed (exit $pytest_status)"
    exit "$pytest_status"
fi
if ((status != 0)); then
    say "ruff or mypy failed (see above)"
fi
exit "$status"
