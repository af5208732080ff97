# Every CI step is a recipe; .ci/run calls the README's test command.
set shell := ["bash", "-euo", "pipefail", "-c"]
export RUST_BACKTRACE := env_var_or_default("RUST_BACKTRACE", "short")

default:
    @just --list

# Run every test (unit + end-to-end against the real binaries), after installing what the
# machine lacks (redis-server, etcd, the SDK venv). The README command.
test *args:
    scripts/test {{args}}

# Same, with nextest (parallel across test binaries).
nextest *args:
    cargo nextest run --workspace {{args}}

check:
    cargo check --workspace --all-targets

# Release binaries: what the fleet image carries (the three services, fake-llm, otlp-collector).
build:
    cargo build --release --locked --bin aigw-config --bin aigw-proxy --bin aigw-token-cache --bin fake-llm --bin otlp-collector

fmt:
    cargo fmt --all

check-fmt:
    cargo fmt --all -- --check

clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# buf from PyPI's buf-bin (in the SDK venv: pip install buf-bin), else buf on PATH.
buf := if path_exists(env_var("HOME") / ".cache/aigw-venv/bin/buf") == "true" { env_var("HOME") / ".cache/aigw-venv/bin/buf" } else { "buf" }

proto-lint:
    {{buf}} lint
    {{buf}} format --diff --exit-code

proto-breaking against="main":
    buf breaking --against ".git#branch={{against}}"

# Unused dependencies (cargo install cargo-machete; .ci/run installs it).
machete:
    cargo machete

lint: check-fmt clippy machete proto-lint

ci: check-fmt clippy test

# Standalone gateway from the example routes file (the quickstart).
run: run-proxy

run-proxy:
    cargo run -p aigw-proxy -- --routes examples/routes.yaml

run-config:
    cargo run -p aigw-config -- --admin-key dev-admin-key --data-dir ./aigw-data

run-proxy-subscribed:
    cargo run -p aigw-proxy -- --config-service http://127.0.0.1:9180

# The fleet in containers (deploy/README.md), images built locally without a registry.
# Ports on 127.0.0.1: lb 9080, aigw-config 9180, fake-llm 8480, traces 4318 (the OTLP
# collector stand-in's /spans; Jaeger's UI is 16686 with a registry).
compose := `if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo docker-compose; fi`
fleet := compose + " -p aigw -f deploy/docker-compose.yml -f deploy/compose.local.yml"

up:
    deploy/images/build.sh {{fleet}}
    {{fleet}} up -d --no-build

down:
    {{fleet}} down -v --remove-orphans

# Build images, bring up a fleet, run the fleet tests under faults, tear it down.
compose-test:
    deploy/compose-test.sh

# Fuzz one target (sse, eventstream, anthropic_request, anthropic_stream, openai_to_anthropic, stream_cut, route_compile, vars, observe_json, request_body); needs nightly + cargo-fuzz.
fuzz target="anthropic_stream" secs="60":
    cd fuzz && cargo +nightly fuzz run {{target}} -- -max_total_time={{secs}}

# The standard benchmark (PERFORMANCE.md): nginx fake upstream, wrk, direct vs aigw side by side.
bench rounds="3" secs="10":
    bench/run.sh {{rounds}} {{secs}}

# The GCP token cache against a local redis-server (node token: dev-node-token).
run-token-cache:
    cargo run -p aigw-token-cache -- --redis redis://127.0.0.1:6379 --node-token dev-node-token
