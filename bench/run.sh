#!/usr/bin/env bash
# The standard aigw benchmark (shared/design/PERFORMANCE.md): nginx serves the fake upstream,
# wrk drives load on 127.0.0.1 only, and each round measures side by side:
#   direct → nginx,  an nginx proxy_pass hop (the bare-hop reference),  aigw pass-through
#   (openai-compatible),  aigw Anthropic→OpenAI conversion,  aigw ai-proxy-multi with one
#   instance and with four weighted instances (same upstream), and, with BASELINE_REV=<rev>,
#   the pass-through and Anthropic rows for a baseline build (before/after in one run);
# plus a 25-event SSE stream direct vs through aigw, and the callgrind instructions per
# request (bench/callgrind.sh) of each binary and of the nginx hop.
# Writes bench/results/<date>-<commit>.md. Bounded: ROUNDS × a few 10 s runs.
# BENCH_OTEL=1 adds a proxy exporting spans and metrics (OTLP/gRPC, every request sampled)
# to a live in-repo collector (otlp-collector), in the same rounds: the PERFORMANCE.md bar is
# within 10% of the plain proxy.
# The collector shares the machine's cores: its own CPU per request is reported beside.
# BENCH_ONLY="aigw-otel …" runs only the named targets and aigw (a quick look while working; the
# summary lines of targets not run show "-").
# Usage: [BASELINE_REV=<rev>] [BENCH_OTEL=1] [CALLGRIND=0] [BENCH_ONLY=…] bench/run.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECS="${2:-10}"
OTEL="${BENCH_OTEL:-0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aigw-target}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
for tool in wrk nginx; do
  command -v "$tool" >/dev/null 2>&1 || command -v "/usr/sbin/$tool" >/dev/null 2>&1 || { as_root apt-get update -qq; DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$tool"; }
done
command -v nginx >/dev/null 2>&1 || export PATH="$PATH:/usr/sbin"

cargo build --release -q -p aigw-proxy
PROXY="$CARGO_TARGET_DIR/release/aigw-proxy"
if [ "$OTEL" = 1 ]; then cargo build --release -q -p aigw-testkit --bin otlp-collector; fi
work=$(mktemp -d)
trap 'for f in "$work"/*.pid; do kill "$(cat "$f" 2>/dev/null)" 2>/dev/null || true; done; [ -d "$work/base-src" ] && git worktree remove --force "$work/base-src" 2>/dev/null; rm -rf "$work"' EXIT

BASE_PROXY=""
if [ -n "${BASELINE_REV:-}" ]; then
  git worktree add --detach "$work/base-src" "$BASELINE_REV" >/dev/null
  (cd "$work/base-src" && CARGO_TARGET_DIR="${BASELINE_TARGET_DIR:-$HOME/.cache/aigw-bench-base}" cargo build --release -q -p aigw-proxy)
  BASE_PROXY="${BASELINE_TARGET_DIR:-$HOME/.cache/aigw-bench-base}/release/aigw-proxy"
fi

UP=127.0.0.1:18181
HOP=127.0.0.1:18282
# Static bodies: nginx answers a POST to a static file with 405, which error_page turns into
# an internal GET of the same file (a 4.8 KB SSE body is too long for an inline `return`).
mkdir -p "$work/www/v1/chat" "$work/www/stream/v1/chat"
cp bench/chat.json "$work/www/v1/chat/completions"
cp bench/stream.sse "$work/www/stream/v1/chat/completions"
chmod -R a+rX "$work"
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/body;
  keepalive_requests 1000000;
  server {
    listen $UP reuseport;
    root $work/www;
    etag off;
    location = /v1/chat/completions { default_type application/json; error_page 405 =200 \$uri; }
    location = /stream/v1/chat/completions { default_type text/event-stream; error_page 405 =200 \$uri; }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" & echo $! > "$work/nginx-main.pid"
# The bare hop: its own nginx (one worker), proxy_pass with a keep-alive upstream pool.
cat > "$work/hop.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/hop.pid;
error_log $work/hop-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/hopbody;
  keepalive_requests 1000000;
  upstream up { server $UP; keepalive 64; }
  server {
    listen $HOP reuseport;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
nginx -c "$work/hop.conf" -p "$work" & echo $! > "$work/hop-main.pid"

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
  - id: stream
    uri: /stream/v1/chat/completions
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {header: {Authorization: "Bearer bench"}}
        options: {model: gpt-4o-mini}
        override: {endpoint: "http://$UP/stream/v1/chat/completions"}
  - id: anthropic
    uri: /v1/messages
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {header: {Authorization: "Bearer bench"}}
        options: {model: gpt-4o-mini}
        override: {endpoint: "http://$UP/v1/chat/completions"}
ROUTES
# A baseline build may predate ai-proxy-multi: it gets the routes above only.
cp "$work/routes.yaml" "$work/routes-base.yaml"
cat >> "$work/routes.yaml" <<ROUTES
  - id: multi1
    uri: /multi1/v1/chat/completions
    plugins:
      ai-proxy-multi:
        instances:
          - {name: only, provider: openai-compatible, weight: 1, auth: {header: {Authorization: "Bearer bench"}},
             options: {model: gpt-4o-mini}, override: {endpoint: "http://$UP/v1/chat/completions"}}
  - id: multi4
    uri: /multi4/v1/chat/completions
    plugins:
      ai-proxy-multi:
        fallback_strategy: [http_429, http_5xx]
        instances:
          - {name: w1, provider: openai-compatible, weight: 1, auth: {header: {Authorization: "Bearer bench"}},
             options: {model: gpt-4o-mini}, override: {endpoint: "http://$UP/v1/chat/completions"}}
          - {name: w3, provider: openai-compatible, weight: 3, auth: {header: {Authorization: "Bearer bench"}},
             options: {model: gpt-4o-mini}, override: {endpoint: "http://$UP/v1/chat/completions"}}
          - {name: w2, provider: openai-compatible, weight: 2, auth: {header: {Authorization: "Bearer bench"}},
             options: {model: gpt-4o-mini}, override: {endpoint: "http://$UP/v1/chat/completions"}}
          - {name: w5, provider: openai-compatible, weight: 5, auth: {header: {Authorization: "Bearer bench"}},
             options: {model: gpt-4o-mini}, override: {endpoint: "http://$UP/v1/chat/completions"}}
ROUTES
# Policies (issues 19, 20): a key-auth route, and a route with a token limit counted in a
# local redis-server (a limit no request reaches: admission and charge, never a refusal).
REDIS_PORT=16379
REDIS_ARGS=()
if command -v redis-server >/dev/null 2>&1; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no > "$work/redis.log" 2>&1 & echo $! > "$work/redis.pid"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  REDIS_ARGS=(--redis "redis://127.0.0.1:$REDIS_PORT")
  cat >> "$work/routes.yaml" <<ROUTES
  - id: keyauth
    uri: /ka/v1/chat/completions
    plugins:
      key-auth: {}
      ai-proxy:
        provider: openai-compatible
        auth: {header: {Authorization: "Bearer bench"}}
        options: {model: gpt-4o-mini}
        override: {endpoint: "http://$UP/v1/chat/completions"}
  - id: limited
    uri: /rl/v1/chat/completions
    plugins:
      ai-rate-limiting: {limit: 1000000000000, time_window: 3600, policy: redis}
      ai-proxy:
        provider: openai-compatible
        auth: {header: {Authorization: "Bearer bench"}}
        options: {model: gpt-4o-mini}
        override: {endpoint: "http://$UP/v1/chat/completions"}
consumers:
  - username: bench
    plugins:
      key-auth: {key: bench-consumer-key-0123456789}
ROUTES
else
  echo "bench: no redis-server: the key-auth and limited rows are skipped" >&2
fi
start_proxy() { # NAME BINARY PORT STATUS_PORT [ROUTES_FILE]
  # A leftover from an interrupted run would answer the readiness check below.
  if curl -s -o /dev/null "http://127.0.0.1:$4/readyz"; then echo "bench: port $4 is already in use (a leftover run?)" >&2; exit 1; fi
  local extra=()
  if [ -z "${5:-}" ]; then extra=("${REDIS_ARGS[@]}"); fi
  "$2" --routes "${5:-$work/routes.yaml}" "${extra[@]}" --listen "127.0.0.1:$3" --status-listen "127.0.0.1:$4" --access-log off --log-level warn 2>"$work/$1.log" &
  echo $! > "$work/$1.pid"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$4/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$4/readyz" >/dev/null || { echo "bench: $1 did not start:" >&2; cat "$work/$1.log" >&2; exit 1; }
}
GW=127.0.0.1:19180
start_proxy proxy "$PROXY" 19180 19191
PID=$(cat "$work/proxy.pid")
BGW=127.0.0.1:19280
BPID=""
if [ -n "$BASE_PROXY" ]; then start_proxy base "$BASE_PROXY" 19280 19291 "$work/routes-base.yaml"; BPID=$(cat "$work/base.pid"); fi
GW_OTEL=127.0.0.1:19380
OPID=""
if [ "$OTEL" = 1 ]; then
  "$CARGO_TARGET_DIR/release/otlp-collector" --count-only --grpc-listen 127.0.0.1:19317 --http-listen 127.0.0.1:19318 2>"$work/collector.log" &
  echo $! > "$work/collector.pid"
  for _ in $(seq 100); do curl -sf http://127.0.0.1:19318/healthz >/dev/null && break; sleep 0.1; done
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:19317 OTEL_SERVICE_NAME=aigw-bench OTEL_METRIC_EXPORT_INTERVAL=5000 \
    start_proxy otel "$PROXY" 19380 19391
  OPID=$(cat "$work/otel.pid")
fi
for _ in $(seq 100); do curl -sf -o /dev/null "http://$UP/v1/chat/completions" -d x && curl -sf -o /dev/null "http://$HOP/v1/chat/completions" -d x && break; sleep 0.1; done

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
max_mb() { sort -n "$1" | awk '{m = $1} END { if (NR == 0) print "-"; else printf "%d", m / 1024 }'; }
: > "$work/collector-cpu"; : > "$work/rss"; : > "$work/rss-otel"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
RSS_IDLE=$(rss_kb "$PID")

# wrk_run NAME URL BODY CONNS [PID] -> appends "name conns rps p50 p99 requests cpu_us_per_req" to results
wrk_run() {
  local name=$1 url=$2 body=$3 conns=$4 pid=${5:-} threads=1
  if [ -n "${BENCH_ONLY:-}" ] && [ "$name" != aigw ] && [[ " $BENCH_ONLY " != *" $name "* ]]; then return 0; fi
  local cpid=""; if [ -n "$OPID" ] && [ "$pid" = "$OPID" ]; then cpid=$(cat "$work/collector.pid"); fi
  if [ "$conns" -gt 1 ]; then threads=2; fi
  BODY_FILE="bench/$body" wrk -t1 -c"$conns" -d2s -s bench/post.lua "$url" >/dev/null 2>&1 || true
  local before=0; if [ -n "$pid" ]; then before=$(cpu_ticks "$pid"); fi
  local cbefore=0; if [ -n "$cpid" ]; then cbefore=$(cpu_ticks "$cpid"); fi
  local out; out=$(BODY_FILE="bench/$body" wrk -t"$threads" -c"$conns" -d"${SECS}s" --latency -s bench/post.lua "$url")
  local after=0; if [ -n "$pid" ]; then after=$(cpu_ticks "$pid"); fi
  local cafter=0; if [ -n "$cpid" ]; then cafter=$(cpu_ticks "$cpid"); fi
  local rps p50 p99 reqs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local cpu="-"
  if [ -n "$pid" ]; then cpu=$(awk -v t="$((after - before))" -v r="$reqs" -v hz="$TICK" 'BEGIN { printf "%.1f", t / hz * 1e6 / r }'); fi
  echo "$name $conns $rps $p50 $p99 $reqs $cpu" >> "$work/results"
  if [ -n "$cpid" ]; then
    awk -v n="$name" -v c="$conns" -v t="$((cafter - cbefore))" -v r="$reqs" -v hz="$TICK" 'BEGIN { printf "%s %s %.1f\n", n, c, t / hz * 1e6 / r }' >> "$work/collector-cpu"
  fi
  if [ "$pid" = "$PID" ]; then rss_kb "$PID" >> "$work/rss"; fi
  if [ -n "$OPID" ] && [ "$pid" = "$OPID" ]; then rss_kb "$OPID" >> "$work/rss-otel"; fi
}
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } print v }'; }

for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  for c in 1 32; do
    wrk_run direct "http://$UP/v1/chat/completions" chat_request.json "$c"
    wrk_run nginx-hop "http://$HOP/v1/chat/completions" chat_request.json "$c"
    wrk_run aigw "http://$GW/v1/chat/completions" chat_request.json "$c" "$PID"
    if [ -n "$OPID" ]; then wrk_run aigw-otel "http://$GW_OTEL/v1/chat/completions" chat_request.json "$c" "$OPID"; fi
    wrk_run aigw-anthropic "http://$GW/v1/messages" anthropic_request.json "$c" "$PID"
    wrk_run aigw-multi1 "http://$GW/multi1/v1/chat/completions" chat_request.json "$c" "$PID"
    wrk_run aigw-multi4 "http://$GW/multi4/v1/chat/completions" chat_request.json "$c" "$PID"
    if [ "${#REDIS_ARGS[@]}" -gt 0 ]; then
      API_KEY=bench-consumer-key-0123456789 wrk_run aigw-keyauth "http://$GW/ka/v1/chat/completions" chat_request.json "$c" "$PID"
      wrk_run aigw-limited "http://$GW/rl/v1/chat/completions" chat_request.json "$c" "$PID"
    fi
    if [ -n "$BPID" ]; then
      wrk_run base "http://$BGW/v1/chat/completions" chat_request.json "$c" "$BPID"
      wrk_run base-anthropic "http://$BGW/v1/messages" anthropic_request.json "$c" "$BPID"
    fi
  done
  wrk_run stream-direct "http://$UP/stream/v1/chat/completions" stream_request.json 1
  wrk_run stream-aigw "http://$GW/stream/v1/chat/completions" stream_request.json 1 "$PID"
  if [ -n "$BPID" ]; then wrk_run stream-base "http://$BGW/stream/v1/chat/completions" stream_request.json 1 "$BPID"; fi
  if [ -n "$OPID" ]; then wrk_run stream-aigw-otel "http://$GW_OTEL/stream/v1/chat/completions" stream_request.json 1 "$OPID"; fi
done

# Summaries: medians across rounds.
median() { sort -g | awk '{a[NR]=$1} END { if (NR==0) {print "-"} else if (NR%2) {print a[(NR+1)/2]} else {printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2} }'; }
col() { awk -v n="$1" -v c="$2" -v k="$3" '$1==n && $2==c {print $k}' "$work/results"; }
row() { # name conns
  local rps p50 p99 cpu
  rps=$(col "$1" "$2" 3 | median); p50=$(col "$1" "$2" 4 | to_ms | median); p99=$(col "$1" "$2" 5 | to_ms | median); cpu=$(col "$1" "$2" 7 | grep -v '^-$' | median || true)
  echo "$rps $p50 $p99 ${cpu:--}"
}
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a-b}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b == 0) print "-"; else printf "%.2f", a/b}'; }

CG=""
if [ "${CALLGRIND:-1}" != 0 ] && command -v valgrind >/dev/null 2>&1; then
  echo "callgrind: instructions per request" >&2
  specs=("aigw=$PROXY")
  if [ -n "$BASE_PROXY" ]; then specs+=("base=$BASE_PROXY"); fi
  CG=$(bench/callgrind.sh "${specs[@]}")
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
out="bench/results/$(date -u +%Y-%m-%d)-$commit.md"
names="direct nginx-hop aigw aigw-anthropic aigw-multi1 aigw-multi4"
if [ "${#REDIS_ARGS[@]}" -gt 0 ]; then names="$names aigw-keyauth aigw-limited"; fi
if [ -n "$BPID" ]; then names="$names base base-anthropic"; fi
if [ -n "$OPID" ]; then names="$names aigw-otel"; fi
{
  echo "# aigw benchmark $(date -u +%Y-%m-%dT%H:%MZ), commit $commit${BASELINE_REV:+, baseline $BASELINE_REV}"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r). Upstream: nginx 1 worker (811-byte JSON, 26-event SSE)."
  echo "wrk ${SECS}s runs, ${ROUNDS} interleaved rounds, medians. Latencies in ms. CPU = gateway process CPU time / requests."
  echo "nginx-hop: nginx proxy_pass (1 worker, keep-alive upstream) between wrk and the same upstream.${BASELINE_REV:+ base: aigw built at $BASELINE_REV, run beside it.}"
  echo
  echo "| target | conns | req/s | p50 | p99 | CPU µs/req |"
  echo "|---|---|---|---|---|---|"
  for c in 1 32; do
    for n in $names; do read -r rps p50 p99 cpu <<<"$(row "$n" "$c")"; echo "| $n | $c | $rps | $p50 | $p99 | $cpu |"; done
  done
  for n in stream-direct stream-aigw ${BPID:+stream-base} ${OPID:+stream-aigw-otel}; do read -r rps p50 p99 cpu <<<"$(row "$n" 1)"; echo "| $n (whole stream) | 1 | $rps | $p50 | $p99 | $cpu |"; done
  echo
  d1=$(col direct 1 4 | to_ms | median); h1=$(col nginx-hop 1 4 | to_ms | median)
  a1=$(col aigw 1 4 | to_ms | median); an1=$(col aigw-anthropic 1 4 | to_ms | median)
  d32=$(col direct 32 3 | median); h32=$(col nginx-hop 32 3 | median); a32=$(col aigw 32 3 | median)
  sd=$(col stream-direct 1 4 | to_ms | median); sa=$(col stream-aigw 1 4 | to_ms | median)
  hop_added=$(sub "$h1" "$d1"); aigw_added=$(sub "$a1" "$d1")
  echo "- added p50 at c1: nginx hop $hop_added ms; aigw pass-through $aigw_added ms ($(div "$aigw_added" "$hop_added") × the hop), Anthropic conversion $(sub "$an1" "$d1") ms"
  echo "- throughput at c32: nginx hop $(div "$h32" "$d32") × direct; aigw $(div "$a32" "$d32") × direct = $(div "$a32" "$h32") × the hop"
  read -r _ _ _ cpu_pass <<<"$(row aigw 32)"; read -r _ _ _ cpu_m1 <<<"$(row aigw-multi1 32)"; read -r _ _ _ cpu_m4 <<<"$(row aigw-multi4 32)"
  echo "- ai-proxy-multi CPU µs/req at c32: 1 instance $cpu_m1, 4 weighted $cpu_m4 (ai-proxy $cpu_pass; bar: 1 instance within noise, 4 weighted < +2 µs)"
  if [ "${#REDIS_ARGS[@]}" -gt 0 ]; then
    read -r _ _ _ cpu_ka <<<"$(row aigw-keyauth 32)"; read -r _ _ _ cpu_rl <<<"$(row aigw-limited 32)"
    k1=$(col aigw-keyauth 1 4 | to_ms | median); l1=$(col aigw-limited 1 4 | to_ms | median)
    echo "- key-auth route: CPU µs/req at c32 $cpu_ka vs $cpu_pass without it ($(sub "$cpu_ka" "$cpu_pass") µs; bar ≤ +1 µs); added p50 at c1 $(sub "$k1" "$a1") ms"
    echo "- token-limited route (ai-rate-limiting, policy redis, a local redis-server): added p50 at c1 $(sub "$l1" "$a1") ms (bar ≤ +0.1 ms), CPU µs/req at c32 $cpu_rl ($(sub "$cpu_rl" "$cpu_pass") µs; bar ≤ +5 µs)"
  fi
  if [ -n "$BPID" ]; then
    b1=$(col base 1 4 | to_ms | median); bn1=$(col base-anthropic 1 4 | to_ms | median); b32=$(col base 32 3 | median)
    echo "- baseline ($BASELINE_REV): added p50 at c1 pass-through $(sub "$b1" "$d1") ms, Anthropic $(sub "$bn1" "$d1") ms; c32 $(div "$b32" "$d32") × direct; this build / baseline throughput at c32: $(div "$a32" "$b32")"
  fi
  echo "- whole 26-event stream at c1: added $(sub "$sa" "$sd") ms (p50)"
  echo "- RSS: idle $((RSS_IDLE / 1024)) MB, under load max $(max_mb "$work/rss") MB"
  if [ -n "$OPID" ]; then
    o1=$(col aigw-otel 1 4 | to_ms | median); o32=$(col aigw-otel 32 3 | median)
    oc=$(col aigw-otel 32 7 | median); ac=$(col aigw 32 7 | median)
    cc=$(awk '$1=="aigw-otel" && $2==32 {print $3}' "$work/collector-cpu" | median)
    spans=$(curl -sf http://127.0.0.1:19318/spans | grep -o '"total":[0-9]*' | cut -d: -f2 || echo "?")
    dropped=$(curl -sf http://127.0.0.1:19391/metrics | awk '/^aigw_telemetry_spans_dropped_total/ {d = $2} /^aigw_telemetry_spans_failed_total/ {f = $2} END {printf "%d at the queue, %d failed", d, f}')
    echo "- OTLP exporter on (every request sampled, live collector): added p50 at c1 $(sub "$o1" "$d1") ms (plain $(sub "$a1" "$d1") ms);" \
      "throughput at c32 $(div "$o32" "$a32") × the plain proxy (bar ≥ 0.9); CPU/request at c32 ${oc} µs vs ${ac} µs" \
      "(the collector, on the same 2 cores, ${cc} µs more);" \
      "spans received ${spans}, lost ${dropped}; RSS under load max $(max_mb "$work/rss-otel") MB"
  fi
  if [ -n "$CG" ]; then
    echo
    echo "Instructions per request (callgrind, 1,000 sequential keep-alive requests minus an idle run; @warn = --log-level warn):"
    echo
    echo "| binary | instructions / request |"
    echo "|---|---|"
    while read -r l v; do echo "| $l | $v |"; done <<<"$CG"
  fi
} > "$out"
cat "$out"
