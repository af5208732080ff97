# Every CI step is a recipe; .ci/run calls the README's test command.
set shell := ["bash", "-euo", "pipefail", "-c"]
export RUST_BACKTRACE := env_var_or_default("RUST_BACKTRACE", "short")

default:
    @just --list

# Run every test (unit + end-to-end against the real binaries). The README command.
test *args:
    cargo test --workspace {{args}}

# Same, with nextest (parallel across test binaries).
nextest *args:
    cargo nextest run --workspace {{args}}

check:
    cargo check --workspace --all-targets

fmt:
    cargo fmt --all

check-fmt:
    cargo fmt --all -- --check

clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# Needs buf (https://buf.build); not installed by CI.
proto-lint:
    buf lint
    buf format --diff --exit-code

proto-breaking against="main":
    buf breaking --against ".git#branch={{against}}"

lint: check-fmt clippy

ci: check-fmt clippy test

# Standalone gateway from the example routes file (the quickstart).
run-proxy:
    cargo run -p aigw-proxy -- --routes examples/routes.yaml

run-config:
    cargo run -p aigw-config -- --admin-key dev-admin-key --data-dir ./aigw-data

run-proxy-subscribed:
    cargo run -p aigw-proxy -- --config-service http://127.0.0.1:9180

dev-up:
    docker compose -f deploy/docker-compose.yml up -d --build

dev-down:
    docker compose -f deploy/docker-compose.yml down -v

# Fuzz one target (sse, anthropic_request, anthropic_stream, vars); needs nightly + cargo-fuzz.
fuzz target="anthropic_stream" secs="60":
    cd fuzz && cargo +nightly fuzz run {{target}} -- -max_total_time={{secs}}

# The standard benchmark (PERFORMANCE.md): nginx fake upstream, wrk, direct vs aigw side by side.
bench rounds="3" secs="10":
    bench/run.sh {{rounds}} {{secs}}

# The GCP token cache against a local redis-server (node token: dev-node-token).
run-token-cache:
    cargo run -p aigw-token-cache -- --redis redis://127.0.0.1:6379 --node-token dev-node-token
