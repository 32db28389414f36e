#!/usr/bin/env bash
# Side-by-side load benchmark of the gateway and nginx (see ../shared/BENCH.md, README
# "Performance"): builds the release binaries, installs nginx, wrk, h2load and redis-server from
# Debian if missing, then runs benches/compare_nginx.py (its --help lists every option).
#
#   bash benches/compare_nginx.sh --quick        # under a minute: 2 rounds of 1 s
#   bash benches/compare_nginx.sh                # 3 interleaved rounds of 5 s, c=8 and c=64, h1 and h2
#   bash benches/compare_nginx.sh --redis        # gateway rate_limit.backend "redis" vs "local"
#   bash benches/compare_nginx.sh --rounds 5 --duration 10 --conns 64 --proto h1
#   bash benches/pgo.sh && bash benches/compare_nginx.sh --gateway-bin target/pgo/release/frappe-gateway \
#     --baseline-bin target/release/frappe-gateway   # the PGO build, the plain one beside it
#
# Never build or run other heavy work while it measures: the machine's other load is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=benches/lib.sh
source benches/lib.sh
tools=(nginx:nginx wrk:wrk h2load:nghttp2-client curl:curl)
[[ " $* " == *" --redis "* ]] && tools+=(redis-server:redis-server)
install_missing "${tools[@]}"
cargo build --release --quiet --bin frappe-gateway --example bench_backend --example floor_proxy
exec python3 benches/compare_nginx.py "$@"
