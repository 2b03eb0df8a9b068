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

# Debian's package would otherwise create a "main" cluster on port 5432 and
# start it where it can; the tests need only the binaries.
if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | "${sudo[@]}" tee /etc/postgresql-common/createcluster.conf >/dev/null
fi
"$(dirname "$0")/apt-install.sh" postgresql
ls -d /usr/lib/postgresql/*/bin
