#!/usr/bin/env bash
# `make install` from the locks in a fresh clone: wall time, the venv's size and the disk used
# (free space before and after), then a second `make install`, which must install nothing.
#   bash bench/install.sh [WORKDIR]     # default: a temporary folder, removed afterwards
# Prints a Markdown table; pip's download cache (~/.cache/pip) is what it is on this machine:
# say which (a cold cache downloads about 3 GB of wheels).
set -euo pipefail
repo="$(git rev-parse --show-toplevel)"
work="${1:-$(mktemp -d)}"
[ $# -gt 0 ] || trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone"
free_kib() { df --output=avail -k "$work" | tail -1; }
before=$(free_kib)
start=$(date +%s.%N)
make install >"$work/install.log" 2>&1 || { tail -20 "$work/install.log" >&2; exit 1; }
first=$(echo "$(date +%s.%N) - $start" | bc)
after=$(free_kib)
venv_mib=$(du -sm .venv | cut -f1)
packages=$(.venv/bin/python -m pip list --format=freeze 2>/dev/null | wc -l)
start=$(date +%s.%N)
second_log=$(make install 2>&1)
second=$(echo "$(date +%s.%N) - $start" | bc)
if grep -q "pip install" <<<"$second_log"; then
  echo "the second make install installed again:" >&2; echo "$second_log" >&2; exit 1
fi
differences=$(.venv/bin/python -m pneumonia.locks installed requirements-dev.txt 2>&1) || {
  echo "the venv differs from the lock: $differences" >&2; exit 1; }
echo "| step | wall time (s) | venv (MiB) | disk used (MiB) | packages |"
echo "|---|---:|---:|---:|---:|"
printf '| make install, fresh clone | %.0f | %s | %s | %s |\n' "$first" "$venv_mib" \
  "$(( (before - after) / 1024 ))" "$packages"
printf '| make install again | %.1f | | | nothing installed (%s) |\n' "$second" \
  "$(tr '\n' ' ' <<<"$second_log" | cut -c1-60)"
