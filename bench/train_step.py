"""Training-step throughput (images/s): a plain script's baseline against the train stage's
choices, measured side by side in one process, interleaved round by round so that machine noise
hits all variants alike.

    python bench/train_step.py [--size 224] [--batch 64] [--rounds 3] [--quick]

Each step is what train.py does per batch: forward, class-weighted cross-entropy, backward, Adam,
on a ResNet18 with a 2-class head. The baseline is what a simple script does: fp32, eager,
decoding and resizing the batch's JPEGs (files of the shared dataset) at every step, in the
training process (num_workers=0). The other variants read the prepare stage's decoded uint8
arrays (the "decoded cache") and add one change at a time; the last rows change the thread
count. bf16 autocast only pays off on CPUs with native bf16 (AVX512-BF16 or AMX).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pneumonia.config import SHARED_DATA_DIR  # noqa: E402
from pneumonia.data import load_image, resize  # noqa: E402
from pneumonia.model import build_model, to_input  # noqa: E402
from pneumonia.train import native_bf16  # noqa: E402

# name: (decode JPEGs every step, bf16 autocast, channels_last)
VARIANTS = {
    "baseline: fp32, decode JPEGs every step": (True, False, False),
    "+ decoded cache (prepare's arrays)": (False, False, False),
    "+ decoded cache + channels_last (train.precision: fp32)": (False, False, True),
    "+ decoded cache + bf16 autocast": (False, True, False),
    "+ decoded cache + channels_last + bf16 (train.precision: bf16)": (False, True, True),
}


def make_step(decode: bool, bf16: bool, channels_last: bool, files: list[Path], size: int,
              cached: torch.Tensor, y: torch.Tensor):  # fmt: skip
    torch.manual_seed(0)
    model = build_model("none", "per_image").train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([2.0, 0.7]), label_smoothing=0.1)

    def step() -> None:
        if decode:
            gray = np.stack([resize(load_image(f), size) for f in files])
            x = to_input(torch.from_numpy(gray))
        else:
            x = to_input(cached)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--quick", action="store_true", help="tiny and short: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch, args.rounds = 32, 8, 1
    files = sorted((SHARED_DATA_DIR / "chest_xray" / "train").rglob("*.jpeg"))[::7][: args.batch]
    if len(files) < args.batch:
        sys.exit(f"need {args.batch} JPEGs under {SHARED_DATA_DIR / 'chest_xray' / 'train'}")
    cached = torch.from_numpy(np.stack([resize(load_image(f), args.size) for f in files]))
    y = torch.tensor([i % 2 for i in range(args.batch)])
    threads = torch.get_num_threads()
    steps = {name: make_step(*flags, files, args.size, cached, y)
             for name, flags in VARIANTS.items()}  # fmt: skip
    fastest_fp32 = "+ decoded cache + channels_last (train.precision: fp32)"
    if threads > 1:  # the same step on fewer threads: what the thread setting is worth
        steps[f"{fastest_fp32[2:]}, 1 thread"] = steps[fastest_fp32]
    for step in steps.values():  # warm-up: first steps allocate and pick kernels
        step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(2 if args.quick else 4):
        for name, step in steps.items():
            torch.set_num_threads(1 if name.endswith("1 thread") else threads)
            started = time.perf_counter()
            for _ in range(args.rounds):
                step()
            seconds[name].append((time.perf_counter() - started) / args.rounds)
    torch.set_num_threads(threads)
    baseline = statistics.median(seconds[next(iter(VARIANTS))])
    rounds = len(seconds[next(iter(VARIANTS))])
    print(
        f"ResNet18 train step, {args.size} px, batch {args.batch}, {threads} threads, native "
        f"bf16: {'yes' if native_bf16() else 'no'}; median over {rounds} interleaved rounds.\n"
    )
    print("| variant | s/step | images/s | vs baseline |\n|---|---:|---:|---:|")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.2f} | {args.batch / median:.1f} | {baseline / median:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
