# shippy: consignment and vessel gRPC services with etcd service discovery.
#
#   make build   build release binaries into target/release
#   make run     run etcd, both services and the CLI on this host (Ctrl-C stops all)
#   make test    lint, then every test (installs etcd-server and postgresql when missing)
#   make faults  run the fault tests one at a time and print what they measured
#   make bench   build release binaries, benchmark them against a raw gRPC floor,
#                write BENCHMARKS.md and BENCHMARKS.json (make test runs a smoke run)
#
# In containers, with docker-compose v1.29 or the compose v2 plugin:
#   make up           build the images and run etcd, both services and the CLI (docker-compose up --build)
#   make down         remove the containers and network; the consignments volume stays
#   make docker-build build the images without starting anything
#   make compose-e2e  check docker-compose.yml end to end on stand-in images made
#                     locally, with no registry (CI runs it after make test)
#
# The build compiles .proto files (ours and etcd-client's) with protoc:
# Debian's protobuf-compiler, installed on first use, unless PROTOC names
# another one.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
# The compose v2 plugin when it is installed, else docker-compose v1.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

DEBIAN_PROTOC := /usr/bin/protoc
PROTOC ?= $(DEBIAN_PROTOC)
export PROTOC

.PHONY: build run test lint check-format tools etcd postgres clean faults bench
.PHONY: up down docker-build compose-e2e

build: tools
	$(CARGO) build --release --workspace --bins

run: build etcd
	./scripts/run.sh

# --locked: a Cargo.lock out of step with the manifests fails here, as it
# would fail the image build (cargo build --locked in the Dockerfile).
test: tools etcd postgres lint
	$(CARGO) test --locked --workspace

lint: tools check-format
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

check-format:
	$(CARGO) fmt --all -- --check

# Installs Debian's protoc (and the well-known .proto files it needs) only
# when PROTOC still points at it, so an explicit PROTOC=... is respected.
tools:
	@if [ "$(PROTOC)" = "$(DEBIAN_PROTOC)" ] && [ ! -x "$(DEBIAN_PROTOC)" ]; then \
		./scripts/apt-install.sh protobuf-compiler libprotobuf-dev; \
	fi

etcd:
	@./scripts/install-etcd.sh

# The tests start private PostgreSQL servers from Debian's binaries.
postgres:
	@./scripts/install-postgres.sh

clean:
	$(CARGO) clean
	rm -rf .run

# Runs the fault tests one at a time, holds them to their timing claims,
# and prints what each measured. --workspace builds every binary the tests
# start, with the same features as make test.
faults: tools etcd
	@mkdir -p .run
	@SHIPPY_FAULT_TIMING=strict $(CARGO) test --locked --workspace --test faults \
		-- --test-threads=1 --nocapture >.run/faults.log 2>&1 \
		|| { cat .run/faults.log; exit 1; }
	@sed -n 's/.*fault: /- /p' .run/faults.log

# Runs the whole benchmark (a few minutes) on the release binaries and
# rewrites BENCHMARKS.md and BENCHMARKS.json in the repository root.
# perf (Debian's linux-perf) profiles the services when a target does not
# hold; without it the report says no profile was taken.
bench: build etcd
	@command -v perf >/dev/null || ./scripts/apt-install.sh linux-perf \
		|| echo "perf is not available: the benchmark runs without a profile"
	$(CARGO) run --release --quiet -p shippy-bench -- suite --out $(CURDIR)

up:
	$(COMPOSE) up --build

down:
	$(COMPOSE) down --remove-orphans

docker-build:
	$(COMPOSE) build

compose-e2e:
	COMPOSE="$(COMPOSE)" ./scripts/compose-e2e.sh
