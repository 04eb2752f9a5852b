#!/usr/bin/env bash
# The whole system with simulated members: bootstrap, then `vigil demo` (arguments pass through,
# e.g. --members 100 --rate 50 --duration 60). Uses VIGIL_DATABASE_URL and VIGIL_MQTT_URL when
# they answer, else starts private PostgreSQL and Mosquitto under VIGIL_STATE_DIR (.vigil).
# Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/vigil demo "$@"
