#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (initdb, postgres, pg_isready) are
# available for the tests, installing Debian's postgresql package when they
# are missing. The tests start their own private servers; nothing here
# starts or configures one. SHIPPY_PG_BIN, when set, names the directory
# holding the binaries instead.
set -euo pipefail

if [[ -n "${SHIPPY_PG_BIN:-}" ]]; then
    [[ -x "$SHIPPY_PG_BIN/initdb" ]] || { echo "SHIPPY_PG_BIN=$SHIPPY_PG_BIN holds no initdb" >&2; exit 1; }
    exit 0
fi
if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "PostgreSQL is not installed and this is not a Debian-based system:" >&2
    echo "install PostgreSQL 13 or newer, or set SHIPPY_PG_BIN to its bin directory." >&2
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        echo "PostgreSQL is not installed; run as root: apt-get install postgresql" >&2
        exit 1
    fi
fi

echo "Installing Debian's postgresql"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq postgresql >/dev/null
ls -d /usr/lib/postgresql/*/bin
