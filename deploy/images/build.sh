#!/usr/bin/env bash
# Builds every image the fleet needs without a registry: the aigw binaries (cargo, on the
# host), the Debian base (base.sh, cached), and the aigw image on that base through the
# same deploy/Dockerfile users build with a registry (deploy/compose.local.yml swaps the
# base images). nginx and Redis run on the base itself (Debian's packages).
#
# Usage: deploy/images/build.sh COMPOSE-COMMAND... (e.g. `docker compose -p aigw -f ... -f ...`)
# Times each step on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
trap 'rm -rf deploy/.bin' EXIT
t() { local s; s=$(date +%s); "$@"; echo "images: $1 ... took $(( $(date +%s) - s ))s" >&2; }

# Only what the image carries (not the test targets): the three services and the two
# stand-ins for the outside world.
bins=(aigw-config aigw-proxy aigw-token-cache fake-llm otlp-collector)
build_bins() { cargo build --release --locked "${bins[@]/#/--bin=}"; }
t build_bins
t deploy/images/base.sh >/dev/null
mkdir -p deploy/.bin
for b in "${bins[@]}"; do cp "$target/release/$b" deploy/.bin/; done
# One image serves every aigw service and the stand-ins: build it once.
t "$@" build aigw-config
