#!/bin/sh
# The aigw image's entrypoint: every replica of a scaled service runs the same command with
# the same environment, so OpenTelemetry could not tell them apart. Unless the environment
# already sets one, add service.instance.id=<hostname> (the container's short id under
# Docker / Compose, the pod name under Kubernetes) to OTEL_RESOURCE_ATTRIBUTES, then exec
# the command so that it stays PID 1 and gets SIGTERM itself.
set -eu
case ",${OTEL_RESOURCE_ATTRIBUTES:-}" in
  *,service.instance.id=*) ;;
  *)
    host=${HOSTNAME:-$(cat /proc/sys/kernel/hostname)}
    OTEL_RESOURCE_ATTRIBUTES="${OTEL_RESOURCE_ATTRIBUTES:+$OTEL_RESOURCE_ATTRIBUTES,}service.instance.id=$host"
    export OTEL_RESOURCE_ATTRIBUTES
    ;;
esac
exec "$@"
