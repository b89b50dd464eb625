#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md and docs/model-quality.md in one call on a machine with
# a CUDA GPU: the default training (params.yaml, random init) on the whole dataset for five
# seeds, with its throughput, each seed's test metrics, flip averaging and the 5-seed ensemble;
# then the same with a schedule twice as long (16 epochs).
#   bash bench/gpu.sh DATASET OUT_DIR
# Needs PyTorch with CUDA, scikit-learn, Pillow, PyYAML and tqdm; not the project's venv.
set -euo pipefail
data=$1
out=$2
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1
bash bench/gpu_machine.sh "$out"
python3 bench/seeds.py --data "$data" --device cuda --seeds 1 2 3 4 5 --precisions bf16 \
  --out "$out/seeds_cuda.json" 2>&1 | tee "$out/seeds_cuda.log"
python3 bench/seeds.py --data "$data" --device cuda --seeds 1 2 3 4 5 --precisions bf16 \
  --set epochs=16 --out "$out/seeds_cuda_16_epochs.json" 2>&1 | tee "$out/seeds_cuda_16.log"
