#!/usr/bin/env bash
# Makes sure etcd (and etcdctl) are available, installing Debian's
# etcd-server and etcd-client packages when they are missing.
# SHIPPY_ETCD_BIN, when set, names an etcd binary to use instead.
set -euo pipefail

if [[ -n "${SHIPPY_ETCD_BIN:-}" ]]; then
    [[ -x "$SHIPPY_ETCD_BIN" ]] || { echo "SHIPPY_ETCD_BIN=$SHIPPY_ETCD_BIN is not executable" >&2; exit 1; }
    exit 0
fi
if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
    exit 0
fi

"$(dirname "$0")/apt-install.sh" etcd-server etcd-client
etcd --version | head -n 1
