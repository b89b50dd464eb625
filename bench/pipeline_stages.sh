#!/usr/bin/env bash
# Time each stage of the pipeline: `dvc repro <stage>` one after the other, with wall time and
# peak memory (GNU time), then a no-change `dvc repro`. Run from the repository root, after
# `make data`; extra arguments are passed to `dvc exp run` first as parameter overrides, e.g.
#   bash bench/pipeline_stages.sh -S train.weights=none
# Results: a Markdown table on stdout; logs under bench/results/.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
out=bench/results/pipeline-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
if [ $# -gt 0 ]; then
  # Apply the -S key=value overrides to params.yaml (as `dvc exp run -S` would), run nothing yet.
  python - "$@" <<'PY'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
args = sys.argv[1:]
for flag, kv in zip(args[::2], args[1::2]):
    assert flag == "-S", f"expected -S key=value, got {flag}"
    key, value = kv.split("=", 1)
    *path, leaf = key.split(".")
    node = params
    for part in path:
        node = node[part]
    node[leaf] = yaml.safe_load(value)
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
fi
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
echo "| stage | wall time (s) | peak RSS (MiB) |"
echo "|---|---:|---:|"
for stage in prepare train evaluate export; do
  /usr/bin/time -f "%e %M" -o "$out/$stage.time" dvc repro --single-item "$stage" >"$out/$stage.log" 2>&1 \
    || { echo "stage $stage failed: see $out/$stage.log" >&2; tail -20 "$out/$stage.log" >&2; exit 1; }
  read -r wall kib <"$out/$stage.time"
  echo "| $stage | $wall | $((kib / 1024)) |"
done
/usr/bin/time -f "%e %M" -o "$out/noop.time" dvc repro >"$out/noop.log" 2>&1
read -r wall kib <"$out/noop.time"
echo "| no-change \`dvc repro\` | $wall | $((kib / 1024)) |"
