#!/usr/bin/env bash
# Instructions per request, counted by callgrind: the gateway (full policy: TLS, a token route
# with a cached key, allowlist, per-key and per-IP limits, access log to a file) and
# examples/floor_proxy (the same stack proxying with nothing else), one worker each, behind
# the same backend and the same h2load load. Unlike wall-clock CPU on a shared 2-core VM
# (±15 % between rounds), the count is the same from run to run, so a change of a few per cent
# shows (benches/RESULTS.md).
#
#   bash benches/instructions.sh                         # HTTP/1.1 and HTTP/2, 3,000 requests each
#   bash benches/instructions.sh --proto h2 --requests 5000
#   bash benches/instructions.sh --baseline-bin /tmp/old-frappe-gateway   # A/B another build
#   bash benches/instructions.sh --gateway-bin target/pgo/release/frappe-gateway   # another build as "gateway"
#
# valgrind hides the CPU's SHA extensions, so SHA-256 (the credential digest) runs in software
# here and counts several times what it costs on the real CPU. Builds the `profiling` profile
# (release + line tables); `callgrind_annotate benches/callgrind/<name>.out` shows where.
set -euo pipefail
cd "$(dirname "$0")/.."

protos="h1 h2"
requests=3000
baseline=""
gateway_bin=""
while (($#)); do
  case "$1" in
    --proto) protos="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --baseline-bin) baseline="$2"; shift 2 ;;
    --gateway-bin) gateway_bin="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=benches/lib.sh
source benches/lib.sh
install_missing valgrind:valgrind h2load:nghttp2-client curl:curl
cargo build --profile profiling --quiet --bin frappe-gateway --example bench_backend --example floor_proxy

bin=target/profiling
work=$(mktemp -d /tmp/fgw-instructions.XXXXXX)
out=benches/callgrind
mkdir -p "$out"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The key and secret examples/bench_backend accepts as whoami (as in compare_nginx.py).
auth="authorization: token 0123456789abcde:fedcba987654321"

"$bin/frappe-gateway" gen-cert --host localhost --out "$work/certs" >/dev/null
backend=$(free_port)
"$bin/examples/bench_backend" "127.0.0.1:$backend" >"$work/backend.log" 2>&1 &
pids+=($!)

gateway_config() { # port admin: the configuration compare_nginx.py benchmarks, one worker
  gateway_toml "$1" "$2" "$backend" "$work/certs" "$work/access-$1.log" "workers = 1"
}

# measure NAME PROTO COMMAND...: the command listens on $port; prints instructions per request.
measure() {
  local name=$1 proto=$2
  shift 2
  local file="$out/$name-$proto.out"
  rm -f "$file"*
  valgrind --tool=callgrind --callgrind-out-file="$file" "$@" >"$work/$name.log" 2>&1 &
  local vpid=$!
  pids+=("$vpid")
  for _ in $(seq 300); do
    curl -sk -o /dev/null "https://127.0.0.1:$port/" 2>/dev/null && break
    sleep 0.2
  done
  local h1=()
  [ "$proto" = h1 ] && h1=(--h1)
  # Warm up (the key is verified and cached, connections pooled), then count only the load.
  h2load "${h1[@]}" -n 300 -c 4 -m 4 -H "$auth" "https://127.0.0.1:$port/api/resource/ToDo" >/dev/null
  callgrind_control -z "$vpid" >/dev/null 2>&1
  local done
  done=$(h2load "${h1[@]}" -n "$requests" -c 4 -m 4 -H "$auth" "https://127.0.0.1:$port/api/resource/ToDo" |
    sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p')
  callgrind_control -d "$vpid" >/dev/null 2>&1
  sleep 0.5
  kill "$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
  # The dump asked for above (the one written at exit holds only the shutdown).
  local total
  total=$(callgrind_annotate "$file.1" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  if [ "$done" != "$requests" ]; then
    echo "$name $proto: only $done of $requests requests answered 2xx" >&2
    exit 1
  fi
  echo $((total / requests))
}

for proto in $protos; do
  port=$(free_port)
  gateway_config "$port" "$(free_port)" >"$work/gateway.toml"
  gw=$(measure gateway "$proto" "${gateway_bin:-$bin/frappe-gateway}" --config "$work/gateway.toml")
  port=$(free_port)
  floor=$(measure floor "$proto" "$bin/examples/floor_proxy" "127.0.0.1:$port" "127.0.0.1:$backend" \
    "$work/certs/gateway.crt" "$work/certs/gateway.key" 1)
  line="$proto: instructions per request: gateway $gw, floor $floor, gateway / floor $(python3 -c "print(f'{$gw / $floor:.2f}')")"
  if [ -n "$baseline" ]; then
    port=$(free_port)
    gateway_config "$port" "$(free_port)" >"$work/baseline.toml"
    base=$(measure baseline "$proto" "$baseline" --config "$work/baseline.toml")
    line="$line, baseline $base, gateway / baseline $(python3 -c "print(f'{$gw / $base:.3f}')")"
  fi
  echo "$line"
done
