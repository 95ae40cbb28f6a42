#!/usr/bin/env bash
# promtool on the qaas rules (syntax, then the unit tests in
# deploy/prometheus/rules-test.yml) and on the example scrape configuration.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
command -v promtool >/dev/null || { echo "check_prometheus: no promtool: run scripts/setup (Debian prometheus)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3=/usr/bin/python3
[ -x "$python3" ] || python3=python3
"$python3" "$repo/deploy/prometheus/extract-rules" "$tmp/qaas-rules.yml"
promtool check rules "$tmp/qaas-rules.yml"
cp "$repo/deploy/prometheus/rules-test.yml" "$repo/deploy/prometheus/prometheus.yml" "$tmp/"
promtool test rules "$tmp/rules-test.yml"
promtool check config "$tmp/prometheus.yml"
