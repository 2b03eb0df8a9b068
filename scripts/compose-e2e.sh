#!/usr/bin/env bash
# Proves that `docker-compose up` works, on a machine whose Docker engine can
# pull no images. It builds local stand-ins for the three images the compose
# file and Dockerfile start from, without any registry:
#
#   shippy-standin/debian  debootstrap (minbase) + docker import    for RUNTIME_IMAGE
#   shippy-standin/rust    debootstrap with gcc and protoc, this host's Rust
#                          toolchain, and the workspace's crates from
#                          `cargo vendor`, wired in by source replacement     for RUST_IMAGE
#   shippy-standin/etcd    the base + etcd and etcdctl from Debian's
#                          etcd-server and etcd-client packages               for ETCD_IMAGE
#
# and passes them in through the environment, so the docker-compose.yml and
# Dockerfile that users run are the ones tested. Then it runs the stack under
# a project name of its own and checks that:
#   1. the CLI container created a consignment on vessel001 and exited 0;
#   2. etcd lists both services, each registered under its compose name;
#   3. the published host ports accept connections;
#   4. after `docker kill` of vessel-service, its key is gone within the
#      lease TTL + 1 s, while consignment-service stays registered;
#   5. the consignment is still listed after the consignment-service
#      container is replaced (it is stored on a volume).
# Everything it started is torn down on exit, pass or fail.
#
# Stand-in images are tagged with a hash of what went into them (Debian
# release and mirror, package lists, rustc version, Cargo.lock, ...) and
# reused while that hash holds; a new one replaces the old tags. The app
# images are built as shippy-e2e/<service>:latest, so users' shippy/* images
# are left alone, and Docker's layer cache keeps rebuilds short.
#
# Needs: docker, docker-compose (v1.29) or the compose v2 plugin, root or
# sudo (for debootstrap; installed with apt-get when missing), Debian apt
# sources for STANDIN_SUITE, cargo and rustc.
#
# Environment:
#   STANDIN_SUITE    Debian release of the stand-ins (default bookworm, as the
#                    Dockerfile's defaults)
#   STANDIN_MIRROR   Debian mirror (default: taken from this machine's apt sources)
#   E2E_LEASE_TTL    lease TTL the services get, in seconds (default 3)
#   E2E_REBUILD_STANDINS=1  rebuild the stand-ins even when cached
#   COMPOSE          compose command (default: `docker compose` when that
#                    plugin is installed, else docker-compose)
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=${STANDIN_SUITE:-bookworm}
LEASE_TTL=${E2E_LEASE_TTL:-3}
REBUILD=${E2E_REBUILD_STANDINS:-0}
BUILD_TIMEOUT=45m
UP_TIMEOUT=300
CLI_TIMEOUT=120
# Recipe versions: bump one when the way its image is made changes.
BASE_RECIPE=1
BUILDER_RECIPE=1
ETCD_RECIPE=1
BUILDER_PACKAGES=ca-certificates,gcc,libc6-dev,libprotobuf-dev,protobuf-compiler
STANDIN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

started=$SECONDS
say() { printf '\033[1m==> [%4ds] %s\033[0m\n' "$((SECONDS - started))" "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() { printf '\033[1;31mcompose-e2e: FAIL: %s\033[0m\n' "$*" >&2; exit 1; }
indent() { sed 's/^/    | /'; }
hash16() { sha256sum | cut -c1-16; }

as_root=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || fail "needs root or sudo (for debootstrap)"
    as_root=(sudo)
fi

# --- Teardown ---------------------------------------------------------------

work=""
project=""
compose=()

teardown() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $project ]]; then
        if ((status != 0)); then
            say "Logs of project $project (last 40 lines per container)"
            "${compose[@]}" logs --no-color --tail=40 2>&1 | indent || true
        fi
        say "Tearing down project $project (containers, network, volumes)"
        "${compose[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 \
            || echo "compose-e2e: warning: '${compose[*]} down' failed" >&2
    fi
    if [[ -n $work && -d $work ]]; then
        "${as_root[@]}" rm -rf "$work"
    fi
    if ((status == 0)); then
        say "PASS in $((SECONDS - started))s"
    else
        printf '\033[1;31mcompose-e2e: failed after %ds\033[0m\n' "$((SECONDS - started))" >&2
    fi
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Preflight --------------------------------------------------------------

docker info >/dev/null 2>&1 || fail "cannot reach the Docker engine (docker info failed)"
if [[ -n ${COMPOSE:-} ]]; then
    read -r -a compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    fail "neither 'docker compose' nor docker-compose is installed"
fi
for tool in cargo rustc sha256sum dpkg apt-get; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
if ! command -v debootstrap >/dev/null; then
    say "Installing debootstrap"
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq debootstrap >/dev/null
fi
arch=$(dpkg --print-architecture)
work=$(mktemp -d "${TMPDIR:-/tmp}/shippy-compose-e2e.XXXXXX")

# The first Debian mirror this machine's apt uses for $SUITE: one-line
# sources.list entries first, then deb822 .sources files.
apt_mirror() {
    local suite=$1 file
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        awk -v suite="$suite" '
            $1 == "deb" {
                sub(/^deb[ \t]+(\[[^]]*\][ \t]+)?/, "")
                split($0, f, /[ \t]+/)
                if (f[2] == suite) { print f[1]; exit }
            }' "$file"
    done
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        awk -v suite="$suite" '
            BEGIN { RS = "" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                n = split($0, lines, "\n")
                for (i = 1; i <= n; i++) {
                    line = lines[i]
                    if (line ~ /^[ \t]*#/ || !match(line, /^[A-Za-z-]+:/)) continue
                    key = tolower(substr(line, 1, RLENGTH - 1))
                    value = substr(line, RLENGTH + 1)
                    gsub(/^[ \t]+|[ \t]+$/, "", value)
                    if (key == "types") types = value
                    else if (key == "uris") uris = value
                    else if (key == "suites") suites = value
                    else if (key == "enabled") enabled = tolower(value)
                }
                if (enabled != "no" && index(" " types " ", " deb ") && index(" " suites " ", " " suite " ")) {
                    split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "$file"
    done
}

mirror=${STANDIN_MIRROR:-$(apt_mirror "$SUITE" | head -n 1)}
[[ -n $mirror ]] || fail "no Debian mirror for '$SUITE' in /etc/apt/sources.list{,.d/}; set STANDIN_MIRROR"

# --- Stand-in images --------------------------------------------------------

have_image() { [[ $REBUILD != 1 ]] && docker image inspect "$1" >/dev/null 2>&1; }

# Removes the other tags of a stand-in repository once a new one is built.
drop_old_tags() {
    local repo=$1 keep=$2 tag
    while read -r tag; do
        [[ $tag == "$keep" ]] || docker rmi "$tag" >/dev/null 2>&1 || true
    done < <(docker image ls "$repo" --format '{{.Repository}}:{{.Tag}}')
}

# debootstrap NAME [--include=...]: a minbase Debian root in $work/NAME.
debootstrap_root() {
    local name=$1; shift
    local log=$work/debootstrap-$name.log
    mkdir -p "$work/debs"
    if ! "${as_root[@]}" debootstrap --variant=minbase --arch="$arch" --cache-dir="$work/debs" "$@" \
        "$SUITE" "$work/$name" "$mirror" >"$log" 2>&1; then
        tail -n 30 "$log" | indent >&2
        fail "debootstrap of $SUITE from $mirror failed (log above); set STANDIN_MIRROR to another mirror?"
    fi
    "${as_root[@]}" rm -rf "$work/$name"/var/lib/apt/lists/* "$work/$name"/var/cache/apt/archives/*.deb
}

# import_root NAME TAG: docker import of $work/NAME, as the official Debian
# images are set up (PATH, bash).
import_root() {
    local name=$1 tag=$2
    "${as_root[@]}" tar -C "$work/$name" --numeric-owner -c . \
        | docker import --change "ENV PATH=$STANDIN_PATH" --change 'CMD ["bash"]' \
            --message "shippy stand-in: debootstrap $SUITE from $mirror" - "$tag" >/dev/null
    "${as_root[@]}" rm -rf "${work:?}/$name"
}

base_key=$(printf '%s\n' "$BASE_RECIPE" "$SUITE" "$mirror" "$arch" | hash16)
BASE_IMAGE=shippy-standin/debian:$SUITE-$base_key
if have_image "$BASE_IMAGE"; then
    say "Debian stand-in: $BASE_IMAGE (cached)"
else
    say "Debian stand-in: debootstrap $SUITE (minbase) from $mirror"
    debootstrap_root base
    import_root base "$BASE_IMAGE"
    drop_old_tags shippy-standin/debian "$BASE_IMAGE"
    ok "built $BASE_IMAGE"
fi

# etcd: the binaries from Debian's packages for $SUITE, on the base.
say "etcd stand-in: fetching etcd-server and etcd-client for $SUITE"
mkdir -p "$work/etcd"
if ! (cd "$work/etcd" && apt-get download -q "etcd-server/$SUITE" "etcd-client/$SUITE" >/dev/null 2>&1); then
    "${as_root[@]}" apt-get update -qq
    (cd "$work/etcd" && apt-get download -q "etcd-server/$SUITE" "etcd-client/$SUITE" >/dev/null) \
        || fail "apt-get download etcd-server/$SUITE etcd-client/$SUITE failed"
fi
etcd_dockerfile="FROM $BASE_IMAGE
COPY etcd etcdctl /usr/local/bin/
RUN etcd --version && etcdctl version
CMD [\"/usr/local/bin/etcd\"]"
etcd_key=$( { printf '%s\n' "$ETCD_RECIPE" "$etcd_dockerfile"; cat "$work"/etcd/*.deb; } | hash16)
ETCD_STANDIN=shippy-standin/etcd:$etcd_key
if have_image "$ETCD_STANDIN"; then
    say "etcd stand-in: $ETCD_STANDIN (cached)"
else
    say "etcd stand-in: building $ETCD_STANDIN from $(cd "$work/etcd" && echo ./*.deb | sed 's|\./||g')"
    for deb in "$work"/etcd/*.deb; do dpkg-deb -x "$deb" "$work/etcd/root"; done
    cp "$work/etcd/root/usr/bin/etcd" "$work/etcd/root/usr/bin/etcdctl" "$work/etcd/"
    printf '%s\n' "$etcd_dockerfile" >"$work/etcd/Dockerfile"
    docker build -q -t "$ETCD_STANDIN" -f "$work/etcd/Dockerfile" "$work/etcd" >/dev/null 2>"$work/etcd/build.log" \
        || { indent <"$work/etcd/build.log" >&2; fail "building the etcd stand-in failed"; }
    drop_old_tags shippy-standin/etcd "$ETCD_STANDIN"
    ok "built $ETCD_STANDIN"
fi

# Rust builder: Debian with a C toolchain (the linker) and protoc, from
# debootstrap; then this host's Rust toolchain and the vendored crates.
sysroot=$(rustc --print sysroot)
[[ -x $sysroot/bin/cargo && -x $sysroot/bin/rustc ]] || fail "no cargo and rustc in the toolchain at $sysroot"
cargo_config='[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "/usr/local/cargo/vendor"

[net]
offline = true'
builder_dockerfile='FROM @BUILDER_OS@
COPY toolchain/ /usr/local/
COPY vendor/ /usr/local/cargo/vendor/
COPY config.toml /usr/local/cargo/config.toml
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:'"$STANDIN_PATH"'
RUN rustc --version && cargo --version && protoc --version && cc --version | head -n 1'
builder_os_key=$(printf '%s\n' "$BUILDER_RECIPE" "$SUITE" "$mirror" "$arch" "$BUILDER_PACKAGES" | hash16)
BUILDER_OS=shippy-standin/rust-os:$SUITE-$builder_os_key
builder_key=$( { printf '%s\n' "$BUILDER_OS" "$cargo_config" "$builder_dockerfile"; rustc -vV; "$sysroot/bin/cargo" -V; cat Cargo.lock; } | hash16)
RUST_STANDIN=shippy-standin/rust:$builder_key
if have_image "$RUST_STANDIN"; then
    say "Rust stand-in: $RUST_STANDIN (cached)"
else
    if have_image "$BUILDER_OS"; then
        ok "reusing $BUILDER_OS"
    else
        say "Rust stand-in: debootstrap $SUITE with $BUILDER_PACKAGES"
        debootstrap_root builder-os --include="$BUILDER_PACKAGES"
        import_root builder-os "$BUILDER_OS"
        drop_old_tags shippy-standin/rust-os "$BUILDER_OS"
        ok "built $BUILDER_OS"
    fi
    say "Rust stand-in: adding $(rustc --version) from $sysroot and the vendored crates"
    ctx=$work/builder
    mkdir -p "$ctx/toolchain"
    # cargo, rustc and their libraries; not the docs, sources or other tools.
    tar -C "$sysroot" --exclude=lib/rustlib/src --exclude='lib/rustlib/manifest-*' \
        -c bin/cargo bin/rustc bin/rustdoc lib | tar -C "$ctx/toolchain" -x
    "$sysroot/bin/cargo" vendor --locked --versioned-dirs --quiet "$ctx/vendor" >/dev/null \
        || fail "cargo vendor failed"
    printf '%s\n' "$cargo_config" >"$ctx/config.toml"
    printf '%s\n' "${builder_dockerfile/@BUILDER_OS@/$BUILDER_OS}" >"$ctx/Dockerfile"
    docker build -q -t "$RUST_STANDIN" "$ctx" >/dev/null 2>"$work/builder.log" \
        || { indent <"$work/builder.log" >&2; fail "building the Rust stand-in failed"; }
    rm -rf "$ctx"
    drop_old_tags shippy-standin/rust "$RUST_STANDIN"
    ok "built $RUST_STANDIN"
fi

# --- The stack --------------------------------------------------------------

export ETCD_IMAGE=$ETCD_STANDIN RUST_IMAGE=$RUST_STANDIN RUNTIME_IMAGE=$BASE_IMAGE
export SHIPPY_IMAGE_PREFIX=shippy-e2e SHIPPY_IMAGE_TAG=latest
export SHIPPY_LEASE_TTL=$LEASE_TTL
# Free host ports, so the run never clashes with `make run` or a user's stack.
export SHIPPY_CONSIGNMENT_PORT=0 SHIPPY_VESSEL_PORT=0
project_name=shippy-e2e-$$-$RANDOM
compose_cmd=${compose[*]}
compose+=(--project-name "$project_name" --file docker-compose.yml)

say "Building the images: $compose_cmd build (cold: several minutes)"
build_start=$SECONDS
if ! timeout "$BUILD_TIMEOUT" "${compose[@]}" build >"$work/build.log" 2>&1; then
    tail -n 60 "$work/build.log" | indent >&2
    fail "building the images failed (last lines above)"
fi
ok "built in $((SECONDS - build_start))s: $(docker image ls 'shippy-e2e/*' --format '{{.Repository}} {{.Size}}' | paste -sd, - | sed 's/,/, /g')"

say "Starting the stack: $compose_cmd --project-name $project_name up -d"
project=$project_name
if ! timeout "$UP_TIMEOUT" "${compose[@]}" up -d --no-build >"$work/up.log" 2>&1; then
    indent <"$work/up.log" >&2
    fail "'up' failed or took over ${UP_TIMEOUT}s"
fi
ok "etcd healthy, both services healthy, consignment-cli started"

container() {
    docker ps -a -q --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" | head -n 1
}
etcd_id=$(container etcd)
vessel_id=$(container vessel-service)
cli_id=$(container consignment-cli)
[[ -n $etcd_id && -n $vessel_id && -n $cli_id ]] || fail "a container of the project is missing"

# 1. The CLI's output.
say "Waiting for consignment-cli to finish"
cli_status=$(timeout "$CLI_TIMEOUT" docker wait "$cli_id") || fail "consignment-cli did not finish within ${CLI_TIMEOUT}s"
cli_output=$(docker logs "$cli_id" 2>&1)
indent <<<"$cli_output"
[[ $cli_status == 0 ]] || fail "consignment-cli exited $cli_status"
grep -qi 'created consignment' <<<"$cli_output" || fail "the CLI's output shows no created consignment"
grep -Eq 'vessel_id[^[:alnum:]]+vessel001' <<<"$cli_output" || fail "the CLI's output shows no vessel_id vessel001"
ok "consignment-cli exited 0 and printed a consignment created on vessel001"

# 2. The registrations, read inside the etcd container.
etcdctl() { docker exec "$etcd_id" /usr/local/bin/etcdctl --endpoints=http://127.0.0.1:2379 "$@"; }
prefix=/shippy/services
say "Registrations: etcdctl get --prefix --keys-only $prefix/"
keys=$(etcdctl get --prefix --keys-only "$prefix/" | sed '/^$/d')
indent <<<"$keys"
records=$(etcdctl get --prefix --print-value-only "$prefix/" | sed '/^$/d')
indent <<<"$records"
for service in vessel consignment; do
    grep -q "^$prefix/shippy.service.$service/" <<<"$keys" || fail "no key for shippy.service.$service"
done
grep -q '"address":"vessel-service:50052"' <<<"$records" || fail "vessel-service is not registered as vessel-service:50052"
grep -q '"address":"consignment-service:50051"' <<<"$records" \
    || fail "consignment-service is not registered as consignment-service:50051"
ok "both services registered under their compose names"

# 3. The published ports answer gRPC health checks from the host's network,
#    asked by the service's own --probe mode.
for service_port in consignment-service:50051 vessel-service:50052; do
    service=${service_port%:*} port=${service_port#*:}
    published=$("${compose[@]}" port "$service" "$port")
    host_port=${published##*:}
    docker run --rm --network host --entrypoint "/usr/local/bin/$service" \
        "$SHIPPY_IMAGE_PREFIX/$service:$SHIPPY_IMAGE_TAG" --probe "127.0.0.1:$host_port" 2>&1 | indent \
        || fail "$service is not SERVING on its published port $published"
    ok "$service:$port is published on the host at $published"
done

# 4. A killed vessel-service disappears when its lease expires.
vessel_key=$prefix/shippy.service.vessel/
limit=$((LEASE_TTL + 1))
say "Killing vessel-service (SIGKILL); its key must be gone within ${LEASE_TTL}s TTL + 1s"
kill_start=$EPOCHREALTIME
docker kill "$vessel_id" >/dev/null
elapsed_ms() {
    local now=$EPOCHREALTIME
    echo $(((${now//[.,]/} - ${kill_start//[.,]/}) / 1000))
}
while [[ -n $(etcdctl get --prefix --keys-only "$vessel_key" | sed '/^$/d') ]]; do
    (($(elapsed_ms) <= limit * 1000)) || fail "vessel-service's key still there $(elapsed_ms) ms after the kill"
    sleep 0.1
done
gone_ms=$(elapsed_ms)
((gone_ms <= limit * 1000)) || fail "vessel-service's key went only $gone_ms ms after the kill (limit ${limit}s)"
ok "vessel-service's key gone $gone_ms ms after the kill"
[[ -n $(etcdctl get --prefix --keys-only "$prefix/shippy.service.consignment/" | sed '/^$/d') ]] \
    || fail "consignment-service's key went too"
ok "consignment-service still registered"

# 5. Consignments outlive the container: they are in the volume.
consignment=$(sed -n 's/^Created consignment \([[:alnum:]]*\).*/\1/p' <<<"$cli_output" | head -n 1)
[[ -n $consignment ]] || fail "no consignment id in the CLI's output"
say "Replacing the consignment-service container; consignment $consignment must still be listed"
timeout "$UP_TIMEOUT" "${compose[@]}" up -d --no-deps --force-recreate consignment-service >"$work/recreate.log" 2>&1 \
    || { indent <"$work/recreate.log" >&2; fail "recreating consignment-service failed"; }
consignment_service=$(container consignment-service)
deadline=$((SECONDS + 60))
until [[ $(docker inspect -f '{{.State.Health.Status}}' "$consignment_service") == healthy ]]; do
    ((SECONDS < deadline)) || fail "the new consignment-service container is not healthy after 60s"
    sleep 0.5
done
list_output=$(timeout "$CLI_TIMEOUT" "${compose[@]}" run --rm -T --no-deps consignment-cli list 2>"$work/list.log") \
    || { indent <"$work/list.log" >&2; fail "consignment-cli list failed"; }
indent <<<"$list_output"
grep -q "$consignment" <<<"$list_output" || fail "consignment $consignment is gone after the container was replaced"
ok "consignment $consignment still stored after the container was replaced"
