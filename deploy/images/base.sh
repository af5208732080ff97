#!/usr/bin/env bash
# Builds the local base image (no registry): a Debian bookworm minbase root filesystem made
# by debootstrap from this machine's own apt mirror, imported with `docker import`.
# One base serves every local image (aigw binaries, nginx, redis, etcd): the packages all share
# libc & co, and one import is cheaper than three.
#
# Prints the image reference on stdout. Cached twice: the imported image (docker) and the
# rootfs tarball ($AIGW_IMAGE_CACHE, default ~/.cache/aigw-images), both keyed by a hash of
# the inputs below, so a second run skips debootstrap. Works with both caches empty.
set -euo pipefail

SUITE=bookworm
# Everything the images need, installed at debootstrap time (no network in `docker build`):
#  ca-certificates: the proxy reaches https providers; curl: health checks;
#  nginx: the load balancer; redis-server (+ redis-tools): Redis and its health check;
#  etcd-server, etcd-client: the control plane's etcd members and their health check.
PACKAGES="ca-certificates,curl,nginx,redis-server,etcd-server,etcd-client"
cache="${AIGW_IMAGE_CACHE:-$HOME/.cache/aigw-images}"
key=$( { echo "$SUITE $PACKAGES v1"; cat "$0"; } | sha256sum | cut -c1-12)
image="aigw-local/base:$SUITE-$key"
log() { echo "base: $*" >&2; }

# deploy/compose.local.yml and deploy/Dockerfile's CI build args name this stable tag.
stable="aigw-local/base:$SUITE"
if docker image inspect "$image" >/dev/null 2>&1; then
  log "cached image $image"
  docker tag "$image" "$stable"
  echo "$stable"
  exit 0
fi

tarball="$cache/base-$SUITE-$key.tar.gz"
if [ ! -s "$tarball" ]; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  if ! command -v debootstrap >/dev/null && [ ! -x /usr/sbin/debootstrap ]; then
    log "installing debootstrap"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq debootstrap
  fi
  # The mirror comes from the machine's own apt sources; the repository names none.
  mirror=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$mirror" ] || { log "no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"; exit 1; }
  mkdir -p "$cache"
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'as_root rm -rf "$root"' EXIT
  log "debootstrap --variant=minbase $SUITE from the machine's apt mirror (packages: $PACKAGES)"
  start=$(date +%s)
  # Two stages with a policy-rc.d in between, so that the nginx and redis postinst scripts
  # do not start daemons in the chroot (that is, on this host's network).
  as_root debootstrap --foreign --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >&2
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$root/usr/sbin/policy-rc.d" >/dev/null
  as_root chmod 755 "$root/usr/sbin/policy-rc.d"
  as_root chroot "$root" /debootstrap/debootstrap --second-stage >&2
  as_root rm -f "$root/usr/sbin/policy-rc.d"
  # Slim it: package caches, docs, man pages, apt lists.
  as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
  as_root tar -C "$root" -czf "$tarball.tmp" .
  as_root chown "$(id -u):$(id -g)" "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
  log "rootfs built in $(( $(date +%s) - start ))s: $(du -h "$tarball" | cut -f1)"
fi

log "docker import $tarball as $image"
docker import --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "$tarball" "$image" >/dev/null
docker tag "$image" "$stable"
# Bases of earlier inputs are no longer used.
docker images --format '{{.Repository}}:{{.Tag}}' "aigw-local/base" | grep -vx -e "$image" -e "$stable" | xargs -r docker rmi >/dev/null 2>&1 || true
echo "$stable"
