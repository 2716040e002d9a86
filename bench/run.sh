#!/usr/bin/env bash
# The benchmark of refresh-proxy, in one command (bench/README.md says what each line means):
#
#   bash bench/run.sh                      # 3 rounds of 6 s runs, about 10 minutes
#   bash bench/run.sh --rounds 5 --duration 10
#   bash bench/run.sh --cluster-only       # only the 3-master cluster line (docs/capacity.md)
#   bash bench/run.sh --help               # every option of bench/harness.py
#
# Installs what is missing (nginx, wrk, redis-server/redis-benchmark from Debian's packages; the
# test IdP's npm packages), builds the release binaries (refresh-proxy and the load generator
# refresh-bench), then runs bench/harness.py, which starts everything on free loopback ports in
# a temporary directory, prints the table and writes bench/results/<time>.json and <time>.html
# (the table and a chart per refresh-bench line; git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { if [ "$(id -u)" -ne 0 ]; then echo "sudo"; fi; }

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  $(need_root) apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $(need_root) apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin"

if ! command -v node >/dev/null 2>&1; then
  echo "node (20.x) is required for the IdP baseline (tests/idp)" >&2
  exit 1
fi
if [ ! -d tests/idp/node_modules/oidc-provider ] \
   || [ tests/idp/package-lock.json -nt tests/idp/node_modules/.package-lock.json ]; then
  echo "==> npm ci (tests/idp)"
  npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
fi

echo "==> cargo build --release"
cargo build --release --bin refresh-proxy --bin refresh-bench

exec python3 bench/harness.py "$@"
