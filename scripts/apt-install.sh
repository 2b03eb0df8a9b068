#!/usr/bin/env bash
# Installs Debian packages for the other scripts: apt-get, through sudo when
# not root. Usage: apt-install.sh PACKAGE...
set -euo pipefail

if ! command -v apt-get >/dev/null; then
    echo "$* missing and this is not a Debian-based system: install the equivalent by hand." >&2
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        echo "$* missing; run as root: apt-get install $*" >&2
        exit 1
    fi
fi

echo "Installing Debian's $*"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
