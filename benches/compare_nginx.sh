#!/usr/bin/env bash
# Side-by-side benchmark (see ../shared/BENCH.md): the gateway with its full policy (TLS, token
# route with a cached key, allowlist, per-key and per-IP limits that never trigger, access log to
# a file) against nginx as a plain TLS proxy, same backend, same certificate, same wrk load,
# interleaved rounds. Prints req/s per round, the median gateway/nginx ratio, and each proxy's
# CPU microseconds per request (utime+stime from /proc, steadier than req/s).
#
# Needs nginx and wrk (apt-get install -y nginx wrk). Usage:
#   bash benches/compare_nginx.sh            # 3 rounds of 10 s at -c64, then -c8
#   ROUNDS=5 DURATION=20s bash benches/compare_nginx.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
KEY=0123456789abcde
SECRET=fedcba987654321

command -v nginx >/dev/null && command -v wrk >/dev/null || { echo "needs nginx and wrk: apt-get install -y nginx wrk" >&2; exit 1; }
cargo build --release --quiet --bin frappe-gateway --example bench_backend

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND=$(free_port); NGINX=$(free_port); GATEWAY=$(free_port); ADMIN=$(free_port)

target/release/frappe-gateway gen-cert --host localhost --out "$work/certs" >/dev/null
target/release/examples/bench_backend "127.0.0.1:$BACKEND" & pids+=($!)

mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<EOF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGINX ssl;
    http2 on;
    ssl_certificate $work/certs/gateway.crt;
    ssl_certificate_key $work/certs/gateway.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
# nginx 1.22 has no `http2 on;` directive: fall back to the listen flag.
nginx -t -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 || sed -i "s/listen 127.0.0.1:$NGINX ssl;/listen 127.0.0.1:$NGINX ssl http2;/; /http2 on;/d" "$work/nginx.conf"
nginx -c "$work/nginx.conf" -p "$work"

cat > "$work/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GATEWAY"
tls_cert = "$work/certs/gateway.crt"
tls_key = "$work/certs/gateway.key"
[admin]
listen = "127.0.0.1:$ADMIN"
[upstream]
url = "http://127.0.0.1:$BACKEND"
[network]
allow = ["127.0.0.0/8", "10.0.0.0/8"]
[rate_limit]
per_key = "100000000/min"
per_ip = "100000000/min"
failed_auth_per_ip = "20/min"
[[route]]
path = "/api/"
auth = "token"
allow = ["127.0.0.0/8"]
[log]
access = "$work/access.log"
level = "warn"
EOF
target/release/frappe-gateway --config "$work/gateway.toml" 2>"$work/gateway.err" & pids+=($!)
GATEWAY_PID=$!
sleep 1
NGINX_PIDS=$(pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')

cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
URL_PATH=/api/resource/ToDo
AUTH="Authorization: token $KEY:$SECRET"

# run NAME PORT CONNS PIDS... → prints "reqs_per_sec cpu_us_per_req"
run() {
  local port=$1 conns=$2; shift 2
  local before after out reqs rps
  before=$(cpu_ticks "$@")
  out=$(wrk -t2 -c"$conns" -d"$DURATION" -H "$AUTH" "https://localhost:$port$URL_PATH")
  after=$(cpu_ticks "$@")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  echo "$rps $(( (after - before) * TICK_US / (reqs > 0 ? reqs : 1) ))"
}

curl -sf --cacert "$work/certs/gateway.crt" -H "$AUTH" "https://localhost:$GATEWAY$URL_PATH" >/dev/null || { echo "gateway not answering" >&2; cat "$work/gateway.err" >&2; exit 1; }
for conns in 64 8; do
  echo "== wrk -t2 -c$conns -d$DURATION, $ROUNDS interleaved rounds (gateway: TLS + token auth + allowlist + limits + access log)"
  run "$NGINX" "$conns" $NGINX_PIDS >/dev/null; run "$GATEWAY" "$conns" "$GATEWAY_PID" >/dev/null   # warm up
  ratios=()
  for r in $(seq 1 "$ROUNDS"); do
    read -r n_rps n_cpu < <(run "$NGINX" "$conns" $NGINX_PIDS)
    read -r g_rps g_cpu < <(run "$GATEWAY" "$conns" "$GATEWAY_PID")
    ratio=$(python3 -c "print(f'{$g_rps/$n_rps:.2f}')")
    ratios+=("$ratio")
    printf 'round %d: nginx %8.0f req/s %4d us/req | gateway %8.0f req/s %4d us/req | ratio %s\n' "$r" "$n_rps" "$n_cpu" "$g_rps" "$g_cpu" "$ratio"
  done
  echo "median gateway/nginx throughput ratio: $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
done
