#!/usr/bin/env bash
# What the GPU benchmarks ran on (GPU, driver, cores, Python, torch, CUDA): OUT_DIR/machine.txt.
#   bash bench/gpu_machine.sh OUT_DIR
set -euo pipefail
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
} | tee "$1/machine.txt"
