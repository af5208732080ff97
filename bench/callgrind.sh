#!/usr/bin/env bash
# Instructions per request (PERFORMANCE.md): a figure that does not drift with machine load.
# Each gateway runs under `valgrind --tool=callgrind`; 1,000 sequential keep-alive chat
# requests (bench/chat_request.json, 165 bytes) go through it to an nginx upstream serving
# bench/chat.json; the total minus an idle run (start, no request, stop), divided by 1,000.
#
# Usage: [CALLGRIND_KEEP=DIR] bench/callgrind.sh LABEL=PROXY_BINARY [LABEL=PROXY_BINARY...]
#   CALLGRIND_KEEP keeps the callgrind outputs (for callgrind_annotate --inclusive=yes).
#   also measures an nginx proxy_pass hop (label nginx-hop) for reference.
# Prints "label instructions_per_request" lines. Bounded: a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${CALLGRIND_REQUESTS:-1000}
command -v valgrind >/dev/null || { echo "callgrind: valgrind not installed" >&2; exit 1; }
command -v nginx >/dev/null 2>&1 || export PATH="$PATH:/usr/sbin"
work=$(mktemp -d)
trap 'for f in "$work"/*.pid; do kill "$(cat "$f" 2>/dev/null)" 2>/dev/null || true; done; rm -rf "$work"' EXIT

UP=127.0.0.1:18381
mkdir -p "$work/www/v1/chat"
cp bench/chat.json "$work/www/v1/chat/completions"
chmod -R a+rX "$work"
cat > "$work/up.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/up-nginx.pid;
error_log $work/up-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/body;
  keepalive_requests 1000000;
  server {
    listen $UP;
    root $work/www;
    etag off;
    location = /v1/chat/completions { default_type application/json; error_page 405 =200 \$uri; }
  }
}
NGINX
nginx -c "$work/up.conf" -p "$work" & echo $! > "$work/up.pid"

# N sequential POSTs on one keep-alive connection; exits non-zero unless all were 200.
cat > "$work/client.py" <<'PY'
import http.client, sys
host, port = sys.argv[1].split(":")
n = int(sys.argv[2])
body = open(sys.argv[3], "rb").read()
c = http.client.HTTPConnection(host, int(port), timeout=120)
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")
PY

wait_port() { for _ in $(seq 600); do python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
wait_port 18381

cat > "$work/routes.yaml" <<ROUTES
routes:
  - id: pass
    uri: /v1/chat/completions
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {header: {Authorization: "Bearer bench"}}
        options: {model: gpt-4o-mini}
        override: {endpoint: "http://$UP/v1/chat/completions"}
ROUTES

total_ir() { # callgrind output file -> total instructions
  awk '/^summary:/ {print $2; exit} /^totals:/ {t=$2} END {if (t) print t}' "$1" | head -1
}

# run_one LABEL REQUESTS CMD... : runs CMD under callgrind, sends REQUESTS, stops it; prints Ir.
run_one() {
  local label=$1 n=$2 port=$3; shift 3
  local out="$work/cg-$label-$n.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$work/$label-$n.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$work/$label.pid"
  wait_port "$port"
  if [ "$n" -gt 0 ]; then python3 "$work/client.py" "127.0.0.1:$port" "$n" bench/chat_request.json; fi
  # A SIGTERM can be lost while valgrind's guest sits in epoll_wait (seen with nginx):
  # send it again each second until the process is gone (2 min at most).
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 240); do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
    if [ -z "$state" ] || [ "$state" = Z ]; then break; fi
    sleep 0.5
    if [ $((i % 4)) = 0 ]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  wait "$pid" 2>/dev/null || true
  rm -f "$work/$label.pid"
  if [ -n "${CALLGRIND_KEEP:-}" ]; then mkdir -p "$CALLGRIND_KEEP"; cp "$out" "$CALLGRIND_KEEP/"; fi
  total_ir "$out"
}

per_request() { # LABEL PORT CMD...
  local label=$1 port=$2; shift 2
  local idle busy
  idle=$(run_one "$label" 0 "$port" "$@")
  busy=$(run_one "$label" "$N" "$port" "$@")
  awk -v b="$busy" -v i="$idle" -v n="$N" -v l="$label" 'BEGIN { printf "%s %.0f\n", l, (b - i) / n }'
}

port=18390
for spec in "$@"; do
  label=${spec%%=*}; bin=${spec#*=}
  port=$((port + 2))
  per_request "$label" "$port" "$bin" --routes "$work/routes.yaml" --listen "127.0.0.1:$port" --status-listen "127.0.0.1:$((port + 1))" --access-log off
  per_request "$label@warn" "$port" "$bin" --routes "$work/routes.yaml" --listen "127.0.0.1:$port" --status-listen "127.0.0.1:$((port + 1))" --access-log off --log-level warn
done

# The bare hop: nginx proxy_pass with a keep-alive upstream, one worker, no master.
cat > "$work/hop.conf" <<NGINX
worker_processes 1;
master_process off;
daemon off;
pid $work/hop-nginx.pid;
error_log $work/hop-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/hopbody;
  keepalive_requests 1000000;
  upstream up { server $UP; keepalive 32; }
  server {
    listen 127.0.0.1:18399;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
per_request nginx-hop 18399 nginx -c "$work/hop.conf" -p "$work"
