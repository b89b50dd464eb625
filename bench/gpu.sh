#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one call on a machine with a CUDA GPU: the default
# training (params.yaml, random init) on the whole dataset for five seeds, with its throughput
# and each seed's test metrics; then one seed without loader workers (what they buy).
#   bash bench/gpu.sh DATASET OUT_DIR
# Needs PyTorch with CUDA, scikit-learn, Pillow, PyYAML and tqdm; not the project's venv.
set -euo pipefail
data=$1
out=$2
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
} | tee "$out/machine.txt"
python3 bench/seeds.py --data "$data" --device cuda --seeds 1 2 3 4 5 --precisions bf16 \
  --out "$out/seeds_cuda.json" 2>&1 | tee "$out/seeds_cuda.log"
python3 bench/seeds.py --data "$data" --device cuda --seeds 1 --precisions bf16 \
  --set loader_workers=0 --out "$out/seeds_cuda_no_workers.json" 2>&1 | tail -4
