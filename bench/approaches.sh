#!/usr/bin/env bash
# Issue 15's training approaches side by side on a machine with a CUDA GPU: three seeds each of
# the default training and of one change at a time (mixup, CutMix, both, longer schedules, a
# higher learning rate, smaller batches), and students distilled from the 3-seed ensemble of the
# defaults; every run is also scored with BatchNorm statistics adapted to the test images
# (bench/seeds.py's last_bn_target). One JSON per approach in OUT_DIR, written as it ends.
#   bash bench/approaches.sh DATASET OUT_DIR [APPROACH...]   (default: all, in this order)
# Needs PyTorch with CUDA, scikit-learn, Pillow, PyYAML and tqdm; not the project's venv.
set -euo pipefail
data=$1
out=$2
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1
bash bench/gpu_machine.sh "$out"
prepared=$(mktemp -d)/prepared
all=(
  "default"
  "mixup augment.mixup=0.2"
  "cutmix augment.cutmix=1.0"
  "mixup_cutmix augment.mixup=0.2 augment.cutmix=1.0"
  "epochs_10 epochs=10"
  "epochs_12 epochs=12"
  "lr_0.002 lr=0.002"
  "batch_32 batch_size=32"
  "batch_32_epochs_10 batch_size=32 epochs=10"
  "batch_16 batch_size=16"
  "distilled --distill"
)
wanted=("${@:3}")
for approach in "${all[@]}"; do
  read -r name overrides <<<"$approach"
  if ((${#wanted[@]})) && [[ ! " ${wanted[*]} " == *" $name "* ]]; then continue; fi
  sets=()
  for o in $overrides; do
    if [[ $o == --* ]]; then sets+=("$o"); else sets+=(--set "$o"); fi
  done
  echo "== $name: ${overrides:-params.yaml}"
  python3 bench/seeds.py --data "$data" --prepared "$prepared" --device cuda --seeds 1 2 3 \
    --precisions bf16 "${sets[@]}" --out "$out/$name.json" 2>&1 \
    | grep -v '^epoch' | tee "$out/$name.log"
done
