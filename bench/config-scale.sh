#!/usr/bin/env bash
# Control-plane scale (PERFORMANCE.md "Config scale"; issue 9): release builds of
# aigw-config and aigw-proxy on 127.0.0.1, one subscribed proxy, then
#   1. N routes (default 10,000) PUT through the REST admin API by C concurrent clients
#      (default 8, keep-alive connections), timed;
#   2. how long after the last PUT the proxy holds all of them (its /metrics route gauge);
#   3. the latency of single PUTs (updates) at N routes, sequential;
#   4. the gRPC bytes one route change sends the proxy (the config service's
#      aigw_xds_response_bytes_total before and after), and the proxy's RSS.
#
# --store etcd: the same through etcd (CONTRACT §15): a one-member etcd (Debian's
# /usr/bin/etcd, data on the same disk as the file store's) started here, aigw-config
# with --store etcd://…; the bars are "< 30 s" for the PUTs and "< 1 s" for the proxy.
# Writes bench/results/<date>-config-scale[-etcd]-<commit>.md.
# Usage: bench/config-scale.sh [--store file|etcd] [N] [C]
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=file
if [ "${1:-}" = "--store" ]; then STORE="${2:?--store file|etcd}"; shift 2; fi
case "$STORE" in file|etcd) ;; *) echo "--store must be file or etcd" >&2; exit 2;; esac
N="${1:-10000}"
C="${2:-8}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aigw-target}"
PY="${AIGW_PYTHON:-python3}"

cargo build --release -q -p aigw-config -p aigw-proxy
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
# What else is using the CPU right now (top's first sample, busiest five).
BUSY_AT_START=$(top -b -n1 -o %CPU | awk 'NR>7 && NR<=12 {printf "%s%s (%s%%)", (NR>8?", ":""), $12, $9}')
BIN="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

KEY=bench-admin-key
TOKEN=bench-node-token
DEK=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
STORE_ARGS=(--data-dir "$work/data")
PUT_BAR=20
if [ "$STORE" = etcd ]; then
  [ -x /usr/bin/etcd ] || { echo "--store etcd needs /usr/bin/etcd (apt-get install etcd-server)" >&2; exit 1; }
  free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  EC=$(free_port); EP=$(free_port)
  /usr/bin/etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$EC" \
    --advertise-client-urls "http://127.0.0.1:$EC" --listen-peer-urls "http://127.0.0.1:$EP" \
    --initial-advertise-peer-urls "http://127.0.0.1:$EP" --initial-cluster "bench=http://127.0.0.1:$EP" \
    --logger zap --log-outputs stderr --log-level warn 2> "$work/etcd.log" & echo $! > "$work/etcd.pid"
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$EC" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
  STORE_ARGS=(--store "etcd://127.0.0.1:$EC")
  PUT_BAR=30
fi
"$BIN/aigw-config" --listen 127.0.0.1:0 "${STORE_ARGS[@]}" --admin-key "$KEY" --node-token "$TOKEN" \
  --data-encryption-key "$DEK" 2> "$work/config.log" & echo $! > "$work/config.pid"
addr() { # addr LOGFILE KIND
  for _ in $(seq 1 300); do
    a=$(grep -o "kind=\"$2\" addr=[0-9.:]*" "$1" 2>/dev/null | head -1 | sed 's/.*addr=//') && [ -n "$a" ] && { echo "$a"; return; }
    sleep 0.1
  done
  echo "no $2 address in $1" >&2; exit 1
}
CFG=$(addr "$work/config.log" admin)
"$BIN/aigw-proxy" --config-service "http://$CFG" --node-token "$TOKEN" --data-encryption-key "$DEK" \
  --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 2> "$work/proxy.log" & echo $! > "$work/proxy.pid"
STATUS=$(addr "$work/proxy.log" status)
PROXY_PID=$(cat "$work/proxy.pid")

"$PY" - "$CFG" "$STATUS" "$N" "$C" "$KEY" "$PROXY_PID" "$PUT_BAR" "$(cat "$work/config.pid")" > "$work/out.md" <<'PYEOF'
import http.client, json, sys, threading, time, statistics
cfg, status, n, c, key, proxy_pid, put_bar, config_pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7]), sys.argv[8]
host, port = cfg.split(":")
shost, sport = status.split(":")

def route(i, uri=None):
    return json.dumps({"id": f"r{i}", "uri": uri or f"/bench/r{i}", "methods": ["POST"], "plugins": {"ai-proxy": {
        "provider": "openai-compatible", "auth": {"header": {"Authorization": f"Bearer sk-bench-{i}"}},
        "options": {"model": "gpt-4o-mini"}, "override": {"endpoint": "http://127.0.0.1:9/v1/chat/completions"}}}})

def put(conn, i, uri=None):
    conn.request("PUT", f"/apisix/admin/routes/r{i}", body=route(i, uri), headers={"X-API-KEY": key, "Content-Type": "application/json"})
    r = conn.getresponse(); r.read()
    if r.status not in (200, 201):
        raise SystemExit(f"PUT r{i}: {r.status}")

def metric(h, p, name):
    conn = http.client.HTTPConnection(h, int(p), timeout=30)
    conn.request("GET", "/metrics"); text = conn.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return None

def rss_kb(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def wait_routes(count, timeout=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if metric(shost, sport, "aigw_proxy_routes") == count:
            return time.monotonic()
        time.sleep(0.005)
    raise SystemExit("proxy never held all routes")

def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

import os
wait_routes(0)
cpu0 = cpu_s(config_pid)
# 1. N PUTs by C clients.
next_i = iter(range(n)); lock = threading.Lock(); errors = []
def worker():
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    while True:
        with lock:
            i = next(next_i, None)
        if i is None:
            return
        try:
            put(conn, i)
        except BaseException as e:
            errors.append(e); return
t0 = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(c)]
[t.start() for t in threads]; [t.join() for t in threads]
t_last = time.monotonic()
if errors:
    raise SystemExit(f"errors: {errors[:3]}")
put_secs = t_last - t0
put_cpu = cpu_s(config_pid) - cpu0
# 2. When does the proxy hold them all?
t_held = wait_routes(n)
lag_ms = (t_held - t_last) * 1000
# 3. Single PUTs at N routes (updates of existing routes), sequential.
conn = http.client.HTTPConnection(host, int(port), timeout=30)
lat = []
for k in range(30):
    s = time.monotonic(); put(conn, k, f"/bench/changed/{k}"); lat.append((time.monotonic() - s) * 1000)
wait_routes(n)
time.sleep(1.0)  # let the proxy ACK the last update
# 4. Bytes one change sends, and memory.
b0 = metric(host, port, "aigw_xds_response_bytes_total"); r0 = metric(host, port, "aigw_xds_responses_sent_total")
s = time.monotonic(); put(conn, 4242, "/bench/one-change"); one_put_ms = (time.monotonic() - s) * 1000
for _ in range(2000):
    if metric(host, port, "aigw_xds_responses_sent_total") > r0:
        break
    time.sleep(0.005)
time.sleep(0.5)
b1 = metric(host, port, "aigw_xds_response_bytes_total"); r1 = metric(host, port, "aigw_xds_responses_sent_total")
full = metric(host, port, "aigw_xds_full_responses_sent_total")
commits = metric(host, port, "aigw_config_commits_total")
rss, hwm = rss_kb(proxy_pid, "VmRSS"), rss_kb(proxy_pid, "VmHWM")
lat.sort()
def row(what, value, bar, ok):
    print(f"| {what} | {value} | {bar} | {'yes' if ok else '**no**'} |")
print(f"| measure ({n} routes, {c} clients) | result | bar | met |")
print("|---|---|---|---|")
row(f"{n} PUTs through REST by {c} clients", f"{put_secs:.1f} s ({n / put_secs:.0f} writes/s, {commits} group commits)", f"< {put_bar} s", put_secs < put_bar)
row("subscribed proxy holds all, after the last PUT", f"{lag_ms:.0f} ms", "< 1 s", lag_ms < 1000)
row(f"one PUT at {n} routes (30 sequential updates)", f"p50 {statistics.median(lat):.1f} ms, max {lat[-1]:.1f} ms", "< 20 ms", statistics.median(lat) < 20)
row("one route change sent to the proxy", f"{b1 - b0} bytes in {r1 - r0} update(s)", "< 10 KB", b1 - b0 < 10240 and r1 - r0 >= 1)
row(f"proxy RSS at {n} routes", f"{rss / 1024:.1f} MB (peak {hwm / 1024:.1f} MB)", "< 60 MB", rss / 1024 < 60)
print()
print(f"Full sets sent: {full} (the proxy's first connect). One more PUT took {one_put_ms:.1f} ms.")
print(f"aigw-config CPU for the {n} PUTs: {put_cpu:.1f} s ({put_cpu / n * 1e6:.0f} µs a write; less noisy than the wall clock on a shared machine).")
PYEOF

commit=$(git rev-parse --short HEAD)
LOAD_AT_END=$(cut -d' ' -f1-3 /proc/loadavg)
suffix=""
[ "$STORE" = etcd ] && suffix="-etcd"
out="bench/results/$(date -u +%Y-%m-%d)-config-scale$suffix-$commit.md"
{
  echo "# Control-plane scale — $(date -u +%Y-%m-%dT%H:%MZ), commit $commit"
  echo
  echo "\`bench/config-scale.sh --store $STORE $N $C\`: release builds, aigw-config (store: $STORE; with a data"
  echo "encryption key, so every secret is encrypted) and one subscribed aigw-proxy on 127.0.0.1, driven by"
  echo "Python http.client keep-alive clients."
  [ "$STORE" = etcd ] && echo "etcd: one member, $(/usr/bin/etcd --version | head -1), data on the same disk, defaults otherwise."
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);"
  echo "load average at the start: $LOAD_AT_START, at the end: $LOAD_AT_END; busiest processes at the start:"
  echo "$BUSY_AT_START (the machine is shared with other engineers' builds and tests)."
  echo
  cat "$work/out.md"
} > "$out"
cat "$out"
