#!/usr/bin/env bash
# Runs the whole system on this host:
#   1. a private etcd on 127.0.0.1:2379 (skipped when SHIPPY_ETCD_ENDPOINTS is set),
#   2. vessel-service (:50052) and consignment-service (:50051),
#   3. once both are registered, consignment-cli on consignment.json.
# The services keep running until Ctrl-C (or SIGTERM), which stops them —
# each removes its registration — and then the private etcd.
#
# Environment: BIN (default target/release), SHIPPY_ETCD_ENDPOINTS, and any
# other SHIPPY_* setting the services and CLI read.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release}
RUN_DIR=.run
START_TIMEOUT=30
mkdir -p "$RUN_DIR"

etcd_pid=""
service_pids=()

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf 'run: %s\n' "$*" >&2; stop; exit 1; }

# Prefixes each line of a process's output with its name. The prefixer
# ignores SIGINT so that the services' shutdown logs still get printed.
prefixed() {
    local name=$1; shift
    "$@" > >(trap '' INT; exec sed -u "s/^/$(printf '%-12s' "$name")| /") 2>&1 &
    last_pid=$!
}

# Stops the services (each deregisters), then the private etcd. Safe to
# call twice: it runs on signals, on failure, and on every exit.
stop() {
    trap - INT TERM
    if ((${#service_pids[@]})); then
        kill -INT "${service_pids[@]}" 2>/dev/null || true
        wait "${service_pids[@]}" 2>/dev/null || true
        service_pids=()
    fi
    if [[ -n $etcd_pid ]]; then
        kill -TERM "$etcd_pid" 2>/dev/null || true
        wait "$etcd_pid" 2>/dev/null || true
        etcd_pid=""
    fi
}

on_signal() {
    echo
    say "Stopping: services deregister, then etcd stops"
    stop
    say "Stopped"
    exit 0
}
trap on_signal INT TERM
trap stop EXIT

for binary in vessel-service consignment-service consignment-cli; do
    [[ -x $BIN/$binary ]] || fail "$BIN/$binary is missing; run 'make build' first"
done

etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints "$SHIPPY_ETCD_ENDPOINTS" "$@"; }

# Waits until `check` succeeds, failing after START_TIMEOUT seconds or when
# process `pid` dies (its log is in the terminal above).
wait_for() {
    local what=$1 pid=$2 check=$3
    local deadline=$((SECONDS + START_TIMEOUT))
    until eval "$check" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || fail "$what: the process exited (see its log above)"
        ((SECONDS < deadline)) || fail "$what: not ready after ${START_TIMEOUT}s"
        sleep 0.2
    done
}

if [[ -z ${SHIPPY_ETCD_ENDPOINTS:-} ]]; then
    if (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null; then
        fail "port 2379 is already in use. If that is an etcd, use it with: SHIPPY_ETCD_ENDPOINTS=http://127.0.0.1:2379 make run"
    fi
    say "Starting a private etcd on 127.0.0.1:2379 (data in $RUN_DIR/etcd, log in $RUN_DIR/etcd.log)"
    rm -rf "$RUN_DIR/etcd"
    # In its own session, so Ctrl-C reaches the services first and etcd is
    # still there when they deregister.
    setsid "${SHIPPY_ETCD_BIN:-etcd}" --name shippy --data-dir "$RUN_DIR/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster shippy=http://127.0.0.1:2380 >"$RUN_DIR/etcd.log" 2>&1 &
    etcd_pid=$!
    export SHIPPY_ETCD_ENDPOINTS=http://127.0.0.1:2379
    wait_for "etcd" "$etcd_pid" "etcdctl_ endpoint health"
else
    say "Using etcd at $SHIPPY_ETCD_ENDPOINTS"
fi

prefix=${SHIPPY_REGISTRY_PREFIX:-/shippy/services}
registered() { [[ -n $(etcdctl_ get --prefix --keys-only "$prefix/$1/") ]]; }

say "Starting vessel-service"
prefixed vessel "$BIN/vessel-service"
service_pids+=("$last_pid")
wait_for "vessel-service" "$last_pid" "registered ${SHIPPY_VESSEL_SERVICE:-shippy.service.vessel}"

say "Starting consignment-service"
prefixed consignment "$BIN/consignment-service"
service_pids+=("$last_pid")
wait_for "consignment-service" "$last_pid" "registered ${SHIPPY_CONSIGNMENT_SERVICE:-shippy.service.consignment}"

say "Both services are registered; submitting consignment.json"
if ! "$BIN/consignment-cli" consignment.json; then
    echo "run: the CLI failed (see above); the services keep running" >&2
fi

echo
say "Running. Registrations: etcdctl --endpoints $SHIPPY_ETCD_ENDPOINTS get --prefix $prefix"
say "Submit again: $BIN/consignment-cli consignment.json    Stop: Ctrl-C"
wait -n "${service_pids[@]}" || true
fail "a service stopped unexpectedly (see its log above); stopping the rest"
