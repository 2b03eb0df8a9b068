# Images for the shippy binaries, one final target per binary:
#
#   docker build --target vessel-service      -t shippy/vessel-service .
#   docker build --target consignment-service -t shippy/consignment-service .
#   docker build --target consignment-cli     -t shippy/consignment-cli .
#
# docker-compose.yml builds all three. The base images are build args, so a
# mirror or a local stand-in can replace them (scripts/compose-e2e.sh does,
# to build with no registry):
#
#   RUST_IMAGE     the build stages: an official Rust image, Debian-based,
#                  Rust 1.88 or newer (the workspace's rust-version)
#   RUNTIME_IMAGE  the final stages: a Debian image of the same release as
#                  RUST_IMAGE, since the binaries link against its glibc
#
# Written for the classic builder as well as BuildKit (no RUN --mount, no
# syntax directive), because docker-compose v1 builds with the classic one.

ARG RUST_IMAGE=rust:1.88-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# The workspace's skeleton: Cargo.toml, Cargo.lock and every member's
# manifest, with each conventional target file (src/lib.rs, src/main.rs,
# build.rs, tests/*.rs, ...) replaced by an empty one. This stage reruns on
# every change, but its output changes only with a manifest or Cargo.lock,
# and COPY --from is cached by content, so the dependency layer below is
# rebuilt only then: editing a service does not rebuild the world.
FROM ${RUST_IMAGE} AS skeleton
WORKDIR /src
COPY . .
RUN set -eu; \
    mkdir /skeleton; \
    cp Cargo.toml Cargo.lock /skeleton/; \
    find . -mindepth 2 -name Cargo.toml -not -path './target/*' | while read -r manifest; do \
        dir=$(dirname "$manifest"); \
        mkdir -p "/skeleton/$dir"; \
        cp "$manifest" "/skeleton/$dir/"; \
        for target in "$dir"/build.rs "$dir"/src/lib.rs "$dir"/src/main.rs "$dir"/src/bin/*.rs \
                "$dir"/src/bin/*/main.rs "$dir"/tests/*.rs "$dir"/tests/*/main.rs \
                "$dir"/benches/*.rs "$dir"/examples/*.rs; do \
            [ -f "$target" ] || continue; \
            mkdir -p "/skeleton/$(dirname "$target")"; \
            case "$target" in \
                */src/lib.rs) : > "/skeleton/$target" ;; \
                *) echo 'fn main() {}' > "/skeleton/$target" ;; \
            esac; \
        done; \
    done

FROM ${RUST_IMAGE} AS build

# The build scripts of the proto crate and of etcd-client run protoc (or
# whatever $PROTOC names), which also needs the well-known .proto files
# (google/protobuf/*.proto). The official Rust image has neither, so install
# Debian's; an image that already has protoc (the offline stand-in) is left
# as it is.
RUN if ! command -v protoc >/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            protobuf-compiler libprotobuf-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && protoc --version

WORKDIR /src
ENV PACKAGES="-p vessel-service -p consignment-service -p consignment-cli"

# Dependencies, in their own layer (see the skeleton stage).
COPY --from=skeleton /skeleton/ ./
RUN cargo build --release --locked $PACKAGES

# Then the workspace's own crates. COPY keeps the files' modification times,
# which can be older than the empty stand-ins built above, so touch them for
# cargo to see that they changed.
COPY . .
RUN set -eu; \
    find . -path ./target -prune -o -type f \( -name '*.rs' -o -name '*.proto' -o -name '*.sql' \) \
        -exec touch {} +; \
    cargo build --release --locked $PACKAGES; \
    mkdir /out; \
    cp target/release/vessel-service target/release/consignment-service target/release/consignment-cli /out/

# What every final image shares: CA certificates, an unprivileged user, and
# a directory that user owns for consignment-service's SQLite store.
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN groupadd --system --gid 10001 shippy \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin shippy \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/shippy
USER 10001:10001
LABEL org.opencontainers.image.licenses="MIT OR Apache-2.0"

FROM runtime AS vessel-service
COPY --from=build /out/vessel-service /usr/local/bin/vessel-service
EXPOSE 50052
ENTRYPOINT ["/usr/local/bin/vessel-service"]
LABEL org.opencontainers.image.title="vessel-service"

# Consignments are kept in /var/lib/shippy/consignments.sqlite3; mount a
# volume there to keep them (docker-compose.yml does).
FROM runtime AS consignment-service
COPY --from=build /out/consignment-service /usr/local/bin/consignment-service
ENV SHIPPY_DATA_DIR=/var/lib/shippy
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/consignment-service"]
LABEL org.opencontainers.image.title="consignment-service"

# Without arguments the CLI submits the sample consignment.json baked in
# here; `list`, `services` or another file (mounted) can be given instead.
FROM runtime AS consignment-cli
COPY --from=build /out/consignment-cli /usr/local/bin/consignment-cli
COPY consignment.json /shippy/consignment.json
WORKDIR /shippy
ENTRYPOINT ["/usr/local/bin/consignment-cli"]
CMD ["consignment.json"]
LABEL org.opencontainers.image.title="consignment-cli"
