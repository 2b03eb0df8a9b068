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

if ! command -v apt-get >/dev/null; then
    echo "etcd is not installed and this is not a Debian-based system:" >&2
    echo "install etcd 3.4 or newer, or set SHIPPY_ETCD_BIN to an etcd binary." >&2
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        echo "etcd is not installed; run as root: apt-get install etcd-server etcd-client" >&2
        exit 1
    fi
fi

echo "Installing Debian's etcd-server and etcd-client"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq etcd-server etcd-client >/dev/null
etcd --version | head -n 1
