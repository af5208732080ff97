#!/usr/bin/env bash
# A/B of the token-limited route (issue 20): two proxy binaries (/tmp/proxy-old, /tmp/proxy-new), one nginx upstream and one redis-server, wrk c1 and c32; prints requests, p50, proxy CPU µs per request and redis-server command counts. Usage: BODY_FILE=bench/chat_request.json bench/limited-ab.sh
set -eu
W=/tmp/rl; UP=127.0.0.1:18181
mkdir -p $W/www/v1/chat; cp /work/main/bench/chat.json $W/www/v1/chat/completions
cat > $W/nginx.conf <<NGINX
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx-error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $W/body; keepalive_requests 1000000;
  server { listen $UP reuseport; root $W/www; etag off;
    location = /v1/chat/completions { default_type application/json; error_page 405 =200 \$uri; } } }
NGINX
nginx -c $W/nginx.conf -p $W & NG=$!
redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 & RD=$!
cat > $W/routes.yaml <<R
routes:
  - id: plain
    uri: /v1/chat/completions
    plugins:
      ai-proxy: {provider: openai-compatible, auth: {header: {Authorization: "Bearer b"}}, options: {model: gpt-4o-mini}, override: {endpoint: "http://$UP/v1/chat/completions"}}
  - id: limited
    uri: /rl/v1/chat/completions
    plugins:
      ai-rate-limiting: {limit: 1000000000000, time_window: 3600, policy: redis}
      ai-proxy: {provider: openai-compatible, auth: {header: {Authorization: "Bearer b"}}, options: {model: gpt-4o-mini}, override: {endpoint: "http://$UP/v1/chat/completions"}}
R
sleep 0.5
for bin in old new; do
  /tmp/proxy-$bin --routes $W/routes.yaml --redis redis://127.0.0.1:16379 --listen 127.0.0.1:19180 --status-listen 127.0.0.1:19191 --access-log off --log-level warn 2>$W/$bin.log & P=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:19191/readyz >/dev/null && break; sleep 0.1; done
  for path in /v1/chat/completions /rl/v1/chat/completions; do
    for c in 1 32; do
      redis-cli -p 16379 config resetstat >/dev/null
      t0=$(awk '{print $14+$15}' /proc/$P/stat)
      out=$(wrk -t1 -c$c -d${SECS:-8}s -s /work/main/bench/post.lua http://127.0.0.1:19180$path --latency 2>&1 || true)
      t1=$(awk '{print $14+$15}' /proc/$P/stat)
      n=$(echo "$out" | awk '/requests in/ {print $1}')
      p50=$(echo "$out" | awk '$1=="50%" {print $2}')
      st=$(redis-cli -p 16379 info commandstats | grep -E "mget|exec" | sed 's/,usec=.*//' | tr '\r\n' '  ')
      echo "$bin $path c$c n=$n p50=$p50 cpu_us=$(echo "($t1-$t0)*10000/$n" | bc -l | cut -c1-6) $st"
    done
  done
  kill $P; wait $P 2>/dev/null || true
done
kill $NG $RD
