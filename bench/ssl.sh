#!/usr/bin/env bash
# Issue 15's self-supervised chest-X-ray backbone, on a machine with a CUDA GPU: SimCLR on the
# training images without their labels (bench/ssl_pretrain.py, MINUTES of it), then three seeds
# of the default training from that backbone (bench/seeds.py --weights), scored as
# bench/approaches.sh scores its approaches (its "default" is the same training from random init).
#   bash bench/ssl.sh DATASET OUT_DIR [MINUTES]   (default 3)
# Needs PyTorch with CUDA, scikit-learn, Pillow, PyYAML and tqdm; not the project's venv.
set -euo pipefail
data=$1
out=$2
minutes=${3:-3}
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1
bash bench/gpu_machine.sh "$out"
prepared=$(mktemp -d)/prepared
python3 bench/ssl_pretrain.py --data "$data" --prepared "$prepared" --device cuda \
  --minutes "$minutes" --out "$out/ssl_backbone.pth" 2>&1 | tee "$out/ssl_pretrain.log"
python3 bench/seeds.py --prepared "$prepared" --device cuda --seeds 1 2 3 --precisions bf16 \
  --weights "$out/ssl_backbone.pth" --out "$out/ssl.json" 2>&1 | grep -v '^epoch' \
  | tee "$out/ssl.log"
rm "$out/ssl_backbone.pth"  # 45 MB; its training curve stays in ssl_backbone.json
