#!/usr/bin/env bash
# A profile-guided (PGO) release build of the gateway: builds an instrumented binary, runs it
# under a training load through the benchmark's policy (benches/compare_nginx.py's
# configuration: TLS, a token route with a cached key, allowlist, per-key and per-IP limits,
# access log) on HTTP/1.1 and HTTP/2, plus the refusals a gateway meets (unknown key, wrong
# secret, no credentials, a failed-auth lockout), then again with the rate limits on a
# redis-server of its own; merges the profile and builds again with it.
#
#   bash benches/pgo.sh            # → target/pgo/release/frappe-gateway
#   PGO_KEEP=1 bash benches/pgo.sh # keeps the training's directory (configs, access logs)
#
# Uses rustc's own llvm-profdata (`rustup component add llvm-tools`, added if missing) and
# h2load, curl, python3 and redis-server from Debian (installed if missing, as root).
# benches/RESULTS.md has what it gives.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=benches/lib.sh
source benches/lib.sh
install_missing h2load:nghttp2-client curl:curl python3:python3 redis-server:redis-server redis-cli:redis-tools
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
[ -x "$profdata" ] || rustup component add llvm-tools
[ -x "$profdata" ] || { echo "llvm-profdata not found at $profdata" >&2; exit 1; }

# Fixed paths: RUSTFLAGS is part of cargo's fingerprint, so a new path each run would rebuild
# every dependency. The instrumented build scripts write their own profiles here too; only the
# gateway's (gateway-*.profraw) are merged.
data="$PWD/target/pgo-profiles"
rm -rf "$data"
mkdir -p "$data"
work=$(mktemp -d /tmp/fgw-pgo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -n "${PGO_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

echo "pgo: building the instrumented gateway (target/pgo-generate)" >&2
RUSTFLAGS="-Cprofile-generate=$data" cargo build --release --locked --quiet \
  --target-dir target/pgo-generate --bin frappe-gateway --example bench_backend
bin=target/pgo-generate/release

"$bin/frappe-gateway" gen-cert --host localhost --out "$work/certs" >/dev/null
backend=$(free_port)
# The backend's own profile is not wanted: it writes elsewhere.
LLVM_PROFILE_FILE="$work/backend-%p.profraw" "$bin/examples/bench_backend" "127.0.0.1:$backend" \
  >"$work/backend.log" 2>&1 &
pids+=($!)
# start_gateway NAME [RATE_LIMIT_LINES]: an instrumented gateway with the benchmark's policy;
# sets $url and $gateway.
start_gateway() {
  local port
  port=$(free_port)
  gateway_toml "$port" "$(free_port)" "$backend" "$work/certs" "$work/access-$1.log" "" "${2:-}" \
    >"$work/$1.toml"
  LLVM_PROFILE_FILE="$data/gateway-%p.profraw" "$bin/frappe-gateway" --config "$work/$1.toml" \
    2>"$work/$1.err" &
  gateway=$!
  pids+=("$gateway")
  url="https://127.0.0.1:$port"
  for _ in $(seq 100); do curl -sk -o /dev/null "$url/" 2>/dev/null && break; sleep 0.1; done
}

# The profile is written when the process exits; SIGTERM is its graceful shutdown.
stop_gateway() {
  kill -TERM "$gateway"
  wait "$gateway" || true
}

# The key and secret examples/bench_backend accepts (as in compare_nginx.py).
good="authorization: token 0123456789abcde:fedcba987654321"
printf '{"doctype":"ToDo","description":"pgo"}' >"$work/todo.json"
load() { h2load "$@" >/dev/null; }

echo "pgo: training load (local rate limits)" >&2
start_gateway local
for proto in --h1 ""; do
  # shellcheck disable=SC2086 # an empty $proto is HTTP/2
  load $proto -n 20000 -c 8 -m 1 -H "$good" "$url/api/resource/ToDo"
  # shellcheck disable=SC2086
  load $proto -n 20000 -c 64 -m 4 -H "$good" "$url/api/resource/ToDo?limit_page_length=20"
  # shellcheck disable=SC2086
  load $proto -n 2000 -c 8 -m 1 -H "$good" -d "$work/todo.json" \
    -H "content-type: application/json" "$url/api/resource/ToDo"
  # shellcheck disable=SC2086
  load $proto -n 2000 -c 8 -m 1 -H "$good" "$url/api/method/frappe.auth.get_logged_user"
  # shellcheck disable=SC2086
  load $proto -n 2000 -c 8 -m 1 "$url/api/resource/ToDo"
done
# Refusals last: wrong secrets lock this address out (failed_auth_per_ip), and the lockout's
# answers are part of what a gateway under attack serves.
load --h1 -n 2000 -c 8 -H "authorization: token 0123456789abcde:wrong" "$url/api/resource/ToDo"
load -n 2000 -c 8 -m 4 -H "authorization: token unknownkey00001:wrong" "$url/api/resource/ToDo"
stop_gateway

echo "pgo: training load (rate limits on Redis)" >&2
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
export FGW_BENCH_REDIS_URL="redis://127.0.0.1:$redis_port/0"
start_gateway redis "$(printf 'backend = "redis"\nredis_url_env = "FGW_BENCH_REDIS_URL"\n')"
load --h1 -n 10000 -c 8 -H "$good" "$url/api/resource/ToDo"
load -n 10000 -c 64 -m 4 -H "$good" "$url/api/resource/ToDo"
load --h1 -n 1000 -c 8 -H "authorization: token 0123456789abcde:wrong" "$url/api/resource/ToDo"
stop_gateway

ls "$data"/gateway-*.profraw >/dev/null
"$profdata" merge -o "$data/merged.profdata" "$data"/gateway-*.profraw
# Named by its content: a new profile changes RUSTFLAGS, so cargo rebuilds with it.
profile="$data/gateway-$(sha256sum "$data/merged.profdata" | cut -c1-16).profdata"
mv "$data/merged.profdata" "$profile"

echo "pgo: building with the profile (target/pgo)" >&2
RUSTFLAGS="-Cprofile-use=$profile" cargo build --release --locked --quiet --target-dir target/pgo \
  --bin frappe-gateway
echo "target/pgo/release/frappe-gateway"
