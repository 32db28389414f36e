# Shared by the bench scripts (sourced, not run).

# install_missing COMMAND:PACKAGE...: installs, with apt as root, the Debian packages whose
# command is missing; exits naming them otherwise.
install_missing() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  ((${#need[@]})) || return 0
  if [ "$(id -u)" != 0 ]; then
    echo "needs: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# gateway_toml PORT ADMIN BACKEND_PORT CERT_DIR ACCESS_LOG [SERVER_LINES [RATE_LIMIT_LINES]]:
# the configuration benches/compare_nginx.py benchmarks (its gateway_toml).
gateway_toml() {
  python3 -c 'import sys; sys.path.insert(0, "benches"); import compare_nginx as c
print(c.gateway_toml(*sys.argv[1:6], server=sys.argv[6], rate_limit=sys.argv[7]))' \
    "$1" "$2" "$3" "$4" "$5" "${6:-}" "${7:-}"
}
