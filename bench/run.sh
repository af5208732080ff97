#!/usr/bin/env bash
# The standard aigw benchmark (shared/design/PERFORMANCE.md): nginx serves the fake upstream,
# wrk drives load on 127.0.0.1 only, and each round measures side by side:
#   direct → nginx,  aigw pass-through (openai-compatible),  aigw Anthropic→OpenAI conversion,
# plus a 25-event SSE stream direct vs through aigw. Bounded: ROUNDS × a few 10 s runs.
# Writes bench/results/<date>-<commit>.md. Usage: bench/run.sh [ROUNDS] [SECONDS]
# BENCH_OTEL=1 adds a second proxy exporting spans and metrics (OTLP/gRPC, every request
# sampled) to a live in-repo collector (otlp-collector), measured in the same rounds: the
# PERFORMANCE.md bar is within 10% of the plain proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECS="${2:-10}"
OTEL="${BENCH_OTEL:-0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aigw-target}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
for tool in wrk nginx; do
  command -v "$tool" >/dev/null 2>&1 || { as_root apt-get update -qq; DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$tool"; }
done
command -v nginx >/dev/null 2>&1 || export PATH="$PATH:/usr/sbin"

cargo build --release -q -p aigw-proxy
PROXY="$CARGO_TARGET_DIR/release/aigw-proxy"
if [ "$OTEL" = 1 ]; then cargo build --release -q -p aigw-testkit --bin otlp-collector; fi
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

UP=127.0.0.1:18181
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
GW=127.0.0.1:19180
"$PROXY" --routes "$work/routes.yaml" --listen "$GW" --status-listen 127.0.0.1:19191 --access-log off --log-level warn 2>"$work/proxy.log" &
echo $! > "$work/proxy.pid"
PID=$(cat "$work/proxy.pid")
for _ in $(seq 100); do curl -sf http://127.0.0.1:19191/readyz >/dev/null && curl -sf -o /dev/null "http://$UP/v1/chat/completions" -d x && break; sleep 0.1; done
GW_OTEL=127.0.0.1:19280
if [ "$OTEL" = 1 ]; then
  "$CARGO_TARGET_DIR/release/otlp-collector" --grpc-listen 127.0.0.1:19317 --http-listen 127.0.0.1:19318 2>"$work/collector.log" &
  echo $! > "$work/collector.pid"
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:19317 OTEL_SERVICE_NAME=aigw-bench OTEL_METRIC_EXPORT_INTERVAL=5000 \
    "$PROXY" --routes "$work/routes.yaml" --listen "$GW_OTEL" --status-listen 127.0.0.1:19292 --access-log off --log-level warn 2>"$work/proxy-otel.log" &
  echo $! > "$work/proxy-otel.pid"
  PID_OTEL=$(cat "$work/proxy-otel.pid")
  for _ in $(seq 100); do curl -sf http://127.0.0.1:19292/readyz >/dev/null && curl -sf http://127.0.0.1:19318/healthz >/dev/null && break; sleep 0.1; done
fi

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/${1:-$PID}/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/${1:-$PID}/stat"; }
# The proxy process behind a URL (the plain one or the exporting one).
pid_for() { if [[ "$1" == *"$GW_OTEL"* ]]; then echo "$PID_OTEL"; else echo "$PID"; fi; }
through_aigw() { [[ "$1" == *"$GW"* || "$1" == *"$GW_OTEL"* ]]; }
TICK=$(getconf CLK_TCK)
RSS_IDLE=$(rss_kb)

# wrk_run NAME URL BODY CONNS -> appends "name conns rps p50_ms p99_ms requests cpu_us_per_req" to results
wrk_run() {
  local name=$1 url=$2 body=$3 conns=$4 threads=1
  if [ "$conns" -gt 1 ]; then threads=2; fi
  BODY_FILE="bench/$body" wrk -t1 -c"$conns" -d2s -s bench/post.lua "$url" >/dev/null 2>&1 || true
  local pid; pid=$(pid_for "$url")
  local before; before=$(cpu_ticks "$pid")
  local out; out=$(BODY_FILE="bench/$body" wrk -t"$threads" -c"$conns" -d"${SECS}s" --latency -s bench/post.lua "$url")
  local after; after=$(cpu_ticks "$pid")
  local rps p50 p99 reqs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local cpu="-"
  if through_aigw "$url"; then cpu=$(awk -v t="$((after - before))" -v r="$reqs" -v hz="$TICK" 'BEGIN { printf "%.1f", t / hz * 1e6 / r }'); fi
  echo "$name $conns $rps $p50 $p99 $reqs $cpu" >> "$work/results"
  if [[ "$url" == *"$GW_OTEL"* ]]; then rss_kb "$PID_OTEL" >> "$work/rss-otel"; elif through_aigw "$url"; then rss_kb >> "$work/rss"; fi
}
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } print v }'; }

for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  for c in 1 32; do
    wrk_run direct "http://$UP/v1/chat/completions" chat_request.json "$c"
    wrk_run aigw "http://$GW/v1/chat/completions" chat_request.json "$c"
    if [ "$OTEL" = 1 ]; then wrk_run aigw-otel "http://$GW_OTEL/v1/chat/completions" chat_request.json "$c"; fi
    wrk_run aigw-anthropic "http://$GW/v1/messages" anthropic_request.json "$c"
  done
  wrk_run stream-direct "http://$UP/stream/v1/chat/completions" stream_request.json 1
  wrk_run stream-aigw "http://$GW/stream/v1/chat/completions" stream_request.json 1
  if [ "$OTEL" = 1 ]; then wrk_run stream-aigw-otel "http://$GW_OTEL/stream/v1/chat/completions" stream_request.json 1; fi
done

# Summaries: medians across rounds.
median() { sort -g | awk '{a[NR]=$1} END { if (NR==0) {print "-"} else if (NR%2) {print a[(NR+1)/2]} else {printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2} }'; }
col() { awk -v n="$1" -v c="$2" -v k="$3" '$1==n && $2==c {print $k}' "$work/results"; }
row() { # name conns
  local rps p50 p99 cpu
  rps=$(col "$1" "$2" 3 | median); p50=$(col "$1" "$2" 4 | to_ms | median); p99=$(col "$1" "$2" 5 | to_ms | median); cpu=$(col "$1" "$2" 7 | grep -v '^-$' | median || true)
  echo "$rps $p50 $p99 ${cpu:--}"
}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
out="bench/results/$(date -u +%Y-%m-%d)-$commit.md"
{
  echo "# aigw benchmark $(date -u +%Y-%m-%dT%H:%MZ), commit $commit"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r). Upstream: nginx 1 worker (811-byte JSON, 26-event SSE)."
  echo "wrk ${SECS}s runs, ${ROUNDS} interleaved rounds, medians. Latencies in ms. CPU = aigw process CPU time / requests."
  echo
  echo "| target | conns | req/s | p50 | p99 | CPU µs/req |"
  echo "|---|---|---|---|---|---|"
  names="direct aigw aigw-anthropic"; snames="stream-direct stream-aigw"
  if [ "$OTEL" = 1 ]; then names="direct aigw aigw-otel aigw-anthropic"; snames="stream-direct stream-aigw stream-aigw-otel"; fi
  for c in 1 32; do
    for n in $names; do read -r rps p50 p99 cpu <<<"$(row $n $c)"; echo "| $n | $c | $rps | $p50 | $p99 | $cpu |"; done
  done
  for n in $snames; do read -r rps p50 p99 cpu <<<"$(row $n 1)"; echo "| $n (whole stream) | 1 | $rps | $p50 | $p99 | $cpu |"; done
  echo
  d1=$(col direct 1 4 | to_ms | median); a1=$(col aigw 1 4 | to_ms | median); an1=$(col aigw-anthropic 1 4 | to_ms | median)
  d32=$(col direct 32 3 | median); a32=$(col aigw 32 3 | median)
  sd=$(col stream-direct 1 4 | to_ms | median); sa=$(col stream-aigw 1 4 | to_ms | median)
  echo "- added p50 at c1: pass-through $(awk -v a="$a1" -v d="$d1" 'BEGIN{printf "%.3f", a-d}') ms, Anthropic conversion $(awk -v a="$an1" -v d="$d1" 'BEGIN{printf "%.3f", a-d}') ms"
  echo "- throughput at c32: $(awk -v a="$a32" -v d="$d32" 'BEGIN{printf "%.2f", a/d}') × direct"
  echo "- whole 26-event stream at c1: added $(awk -v a="$sa" -v d="$sd" 'BEGIN{printf "%.3f", a-d}') ms (p50)"
  echo "- RSS: idle $((RSS_IDLE / 1024)) MB, under load max $(( $(sort -n "$work/rss" | tail -1) / 1024 )) MB"
  if [ "$OTEL" = 1 ]; then
    o1=$(col aigw-otel 1 4 | to_ms | median); o32=$(col aigw-otel 32 3 | median)
    oc=$(col aigw-otel 32 7 | median); ac=$(col aigw 32 7 | median)
    spans=$(curl -sf http://127.0.0.1:19318/spans | grep -o '"total":[0-9]*' | cut -d: -f2 || echo "?")
    dropped=$(curl -sf http://127.0.0.1:19292/metrics | awk '/^aigw_telemetry_spans_(dropped|failed)_total/ {s += $2} END {print s + 0}')
    echo "- OTLP exporter on (every request sampled, live collector): added p50 at c1 $(awk -v a="$o1" -v d="$d1" 'BEGIN{printf "%.3f", a-d}') ms (plain $(awk -v a="$a1" -v d="$d1" 'BEGIN{printf "%.3f", a-d}') ms);" \
      "throughput at c32 $(awk -v o="$o32" -v a="$a32" 'BEGIN{printf "%.3f", o/a}') × the plain proxy (bar ≥ 0.9); CPU/request at c32 ${oc} µs vs ${ac} µs;" \
      "spans received ${spans}, dropped or failed ${dropped}; RSS under load max $(( $(sort -n "$work/rss-otel" | tail -1) / 1024 )) MB"
  fi
} > "$out"
cat "$out"
