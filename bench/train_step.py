"""Training-step throughput (images/s): the plain fp32 baseline against the faster variants,
measured side by side in one process, interleaved round by round so machine noise hits all alike.

    python bench/train_step.py [--size 224] [--batch 64] [--rounds 3] [--quick]

Each step is what train.py does per batch: forward, class-weighted cross-entropy, backward, Adam,
on a ResNet18 with a 2-class head and real X-rays from the shared samples.
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

from pneumonia.config import SAMPLES_DIR as SAMPLES  # noqa: E402
from pneumonia.data import load_image, resize  # noqa: E402
from pneumonia.model import build_model, to_input  # noqa: E402

VARIANTS = {  # name: (autocast bf16, channels_last)
    "fp32 (baseline)": (False, False),
    "fp32 + channels_last": (False, True),
    "bf16 autocast": (True, False),
    "bf16 autocast + channels_last (train.precision: bf16)": (True, True),
}


def make_step(bf16: bool, channels_last: bool, x: torch.Tensor, y: torch.Tensor):
    torch.manual_seed(0)
    model = build_model("none").train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([2.0, 0.7]))

    def step() -> None:
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
    paths = sorted(SAMPLES.rglob("*.jpeg"))
    gray = np.stack([resize(load_image(paths[i % len(paths)]), args.size)
                     for i in range(args.batch)])  # fmt: skip
    x = to_input(torch.from_numpy(gray))
    y = torch.tensor([i % 2 for i in range(args.batch)])
    steps = {name: make_step(*flags, x, y) for name, flags in VARIANTS.items()}
    for step in steps.values():  # warm-up: first steps allocate and pick kernels
        step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(2 if args.quick else 4):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(args.rounds):
                step()
            seconds[name].append((time.perf_counter() - started) / args.rounds)
    baseline = statistics.median(seconds["fp32 (baseline)"])
    rounds = len(seconds["fp32 (baseline)"])
    print(
        f"ResNet18 train step, {args.size} px, batch {args.batch}, {torch.get_num_threads()} "
        f"threads; median over {rounds} interleaved rounds.\n"
    )
    print("| variant | s/step | images/s | vs baseline |\n|---|---:|---:|---:|")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.2f} | {args.batch / median:.1f} | {baseline / median:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
