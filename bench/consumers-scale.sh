#!/usr/bin/env bash
# Consumer scale (issue 19): release builds of aigw-config and aigw-proxy on 127.0.0.1, one
# subscribed proxy with a key-auth route, then
#   1. N consumers (default 100,000), each with one key (`plugins.key-auth.key`, the
#      consumer's first credential), PUT through the REST admin API by C clients (default 8);
#   2. how long after the last PUT the proxy holds all of them (its /config_dump count is
#      too big to poll: the proxy's aigw_proxy_consumers gauge), and its RSS growth;
#   3. the last consumer's key answered 200 by the proxy, an unknown key 401.
# Bars (issue 19): applied < 2 s after the last write, proxy RSS growth < 60 MB.
# Writes bench/results/<date>-consumers-scale-<commit>.md.
# Usage: bench/consumers-scale.sh [N] [C]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
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
DATA=$(addr "$work/proxy.log" data)
STATUS=$(addr "$work/proxy.log" status)
PROXY_PID=$(cat "$work/proxy.pid")

"$PY" - "$CFG" "$DATA" "$N" "$C" "$KEY" "$PROXY_PID" "$(cat "$work/config.pid")" > "$work/out.md" <<'PYEOF'
import http.client, json, os, sys, threading, time
cfg, data, n, c, key, proxy_pid, config_pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
host, port = cfg.split(":")
dhost, dport = data.split(":")
H = {"X-API-KEY": key, "Content-Type": "application/json"}

def req(conn, method, path, body=None, headers=H):
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse(); r.read()
    return r.status

def rss_kb(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def chat(k):
    conn = http.client.HTTPConnection(dhost, int(dport), timeout=30)
    return req(conn, "POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
               {"Authorization": f"Bearer {k}", "Content-Type": "application/json"})

def ukey(i):
    return f"bench-key-{i:08d}-0123456789abcdef"

conn = http.client.HTTPConnection(host, int(port), timeout=30)
route = {"id": "chat", "uri": "/v1/chat/completions", "plugins": {"key-auth": {}, "ai-proxy": {"provider": "openai-compatible",
         "auth": {"header": {"Authorization": "Bearer sk-bench"}}, "override": {"endpoint": "http://127.0.0.1:9/v1/chat/completions"}}}}
assert req(conn, "PUT", "/apisix/admin/routes/chat", json.dumps(route)) in (200, 201)
t0 = time.monotonic()
while chat("nobody") != 401:
    assert time.monotonic() - t0 < 60, "the route never reached the proxy"
    time.sleep(0.05)
time.sleep(1.0)
rss0 = rss_kb(proxy_pid)
cpu0 = cpu_s(config_pid)
next_i = iter(range(n)); lock = threading.Lock(); errors = []
def worker():
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    while True:
        with lock:
            i = next(next_i, None)
        if i is None:
            return
        body = json.dumps({"username": f"u{i:07d}", "plugins": {"key-auth": {"key": ukey(i)}}})
        try:
            s = req(conn, "PUT", "/apisix/admin/consumers", body)
            if s not in (200, 201):
                errors.append(f"u{i}: {s}"); return
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
# The last consumer's key is past key-auth (401 → the dead upstream's 502) once the proxy
# applied the snapshot holding it; snapshots apply whole, so then it holds every one.
while chat(ukey(n - 1)) == 401:
    assert time.monotonic() - t_last < 300, "the proxy never held the last consumer"
    time.sleep(0.005)
lag = time.monotonic() - t_last
time.sleep(2.0)
rss1, hwm = rss_kb(proxy_pid), rss_kb(proxy_pid, "VmHWM")
first_ok = chat(ukey(0)) != 401
unknown = chat("bench-key-nobody")
grow = (rss1 - rss0) / 1024
def row(what, value, bar, ok):
    print(f"| {what} | {value} | {bar} | {'yes' if ok else '**no**'} |")
print(f"| measure ({n} consumers with one key each, {c} clients) | result | bar | met |")
print("|---|---|---|---|")
row(f"{n} consumer PUTs through REST", f"{put_secs:.1f} s ({n / put_secs:.0f} writes/s)", "—", True)
row("subscribed proxy holds all, after the last PUT", f"{lag * 1000:.0f} ms", "< 2 s", lag < 2)
row("proxy RSS growth", f"{grow:.1f} MB ({rss0 / 1024:.1f} → {rss1 / 1024:.1f} MB, peak {hwm / 1024:.1f} MB)", "< 60 MB", grow < 60)
row("first and last keys accepted, an unknown key refused", f"{first_ok}, {unknown}", "True, 401", first_ok and unknown == 401)
print()
print(f"aigw-config CPU for the {n} PUTs: {put_cpu:.1f} s ({put_cpu / n * 1e6:.0f} µs a write).")
PYEOF

commit=$(git rev-parse --short HEAD)
LOAD_AT_END=$(cut -d' ' -f1-3 /proc/loadavg)
out="bench/results/$(date -u +%Y-%m-%d)-consumers-scale-$commit.md"
{
  echo "# Consumer scale — $(date -u +%Y-%m-%dT%H:%MZ), commit $commit"
  echo
  echo "\`bench/consumers-scale.sh $N $C\`: release builds, aigw-config (file store, data encryption key) and one"
  echo "subscribed aigw-proxy on 127.0.0.1, driven by Python http.client keep-alive clients. Key lookup cost"
  echo "against the number of consumers: the criterion bench \`cargo bench -p aigw-proxy --bench proxy_paths -- key_auth\`."
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);"
  echo "load average at the start: $LOAD_AT_START, at the end: $LOAD_AT_END; busiest processes at the start: $BUSY_AT_START."
  echo
  cat "$work/out.md"
} > "$out"
cat "$out"
