#!/usr/bin/env bash
# Set up a machine for Vigil: Debian packages, then the Python virtual environment in .venv.
#
# Idempotent and non-interactive (CI=true, no stdin): it installs only what is missing and
# reinstalls the Python packages only when pyproject.toml changed since the last install.
# Quiet when all is well; a failing step prints its full output and stops the script.
# Expects Debian 12 (bookworm) and root, or sudo without a password.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages Vigil needs on a development or CI machine:
#   postgresql          server binaries: tests create private clusters, `vigil demo` falls back
#                       to one (services/embedded.py) when no server answers
#   postgresql-contrib  btree_gist (exclusion constraints); part of postgresql-15 on Debian 12,
#                       named here for releases where it is separate
#   mosquitto           the MQTT broker (gateway, tests, the demo's private broker)
#   mosquitto-clients   mosquitto_pub / mosquitto_sub, for poking at the broker by hand
#   chromium            headless browser for the coach console's browser tests
#   chromium-driver     /usr/bin/chromedriver of the same Chromium build (Selenium drives it;
#                       nothing downloads a driver or a browser at test time)
DEBIAN_PACKAGES=(postgresql postgresql-contrib mosquitto mosquitto-clients chromium chromium-driver)

VENV=.venv
STAMP="$VENV/.vigil-pyproject.sha256"
LOG="$(mktemp -t vigil-bootstrap.XXXXXX)"
trap 'rm -f "$LOG"' EXIT

fail() {
    echo "bootstrap: $*" >&2
    if [[ -s "$LOG" ]]; then
        echo "----- output -----" >&2
        cat "$LOG" >&2
        echo "------------------" >&2
    fi
    exit 1
}

# Run a command with its output in $LOG; show that output only if it fails.
quietly() {
    local what=$1
    shift
    : >"$LOG"
    "$@" </dev/null >"$LOG" 2>&1 || fail "$what failed: $*"
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        echo "need root (or passwordless sudo) to run: $*" >&2
        return 1
    fi
}

installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# 1. Debian packages: `apt-get update` only when something is missing.
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || fail "missing ${missing[*]} and this is not a Debian system"
    echo "bootstrap: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    quietly "apt-get update" as_root apt-get update -q
    quietly "apt-get install" as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}"
fi

# 2. The virtual environment, with Python 3.11 (or a newer python3).
if [[ ! -x "$VENV/bin/python" ]]; then
    python=""
    if command -v python3.11 >/dev/null && python3.11 -c 'pass' 2>/dev/null; then
        python=python3.11
    elif command -v python3 >/dev/null \
        && python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=python3
    else
        fail "Python 3.11 or newer is needed (python3.11 or python3 on PATH)"
    fi
    echo "bootstrap: creating $VENV with $($python --version 2>&1)" >&2
    quietly "creating $VENV" "$python" -m venv "$VENV"
    rm -f "$STAMP"
fi

# 3. Vigil and its development tools, when pyproject.toml changed since the last install.
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" != "$have" || ! -x "$VENV/bin/vigil" ]]; then
    echo "bootstrap: installing Python packages (pyproject.toml changed)" >&2
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    quietly "pip install" "$VENV/bin/python" -m pip install -q -e '.[dev]'
    echo "$want" >"$STAMP"
fi
