#!/usr/bin/env bash
# Checks the Prometheus examples and superd's live /metrics with promtool.
# Installs promtool (Debian package prometheus) when it is missing and the
# machine allows it.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing promtool (Debian package prometheus)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
fi
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool is not installed and cannot be installed here (needs root and apt-get); nothing checked" >&2
  exit 1
fi

promtool check config examples/prometheus/prometheus.yml
promtool check rules examples/prometheus/superd-alerts.yml

# A live scrape of every built-in service's families.
go build -o bin/superd ./cmd/superd
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=${PROMCHECK_PORT:-19464}
cat > "$dir/superd.hcl" <<HCL
metrics { address = "127.0.0.1:$port" }
cluster {
  node = "promcheck"
  nats { store_dir = "$dir/nats" }
}
service "echo" "echo" {
  endpoint "tcp" { address = "127.0.0.1:0" }
}
service "chat" "lobby" {
  cluster = true
  endpoint "tcp" { address = "127.0.0.1:0" }
}
service "logfile" "audit" {
  path = "$dir/audit.log"
  endpoint "unix" { path = "$dir/audit.sock" }
}
HCL
bin/superd run -config "$dir/superd.hcl" -log-level warn &
pid=$!
# HTTP GET with bash alone (CI machines may have no curl): prints the body.
get() {
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$1" >&3
  local out; out=$(cat <&3); exec 3<&-
  case "$out" in "HTTP/1.0 200"*|"HTTP/1.1 200"*) printf '%s\n' "$out" | sed '1,/^\r$/d' ;; *) return 1 ;; esac
}
for _ in $(seq 100); do
  if get /readyz >/dev/null 2>&1; then break; fi
  sleep 0.1
done
get /metrics > "$dir/metrics.txt"
promtool check metrics < "$dir/metrics.txt"
echo "promtool: examples and live /metrics OK"
