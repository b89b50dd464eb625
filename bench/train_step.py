"""Training-step throughput (images/s): a plain script's baseline against the train stage's
choices, measured side by side in one process, interleaved round by round so that machine noise
hits all variants alike.

    python bench/train_step.py [--size 224] [--batch 64] [--rounds 3] [--no-compile] [--quick]

Each step is what train.py does per batch: the batch's augmentation (train.augment of
params.yaml), forward, class-weighted cross-entropy with label smoothing, backward, Adam, on the
pipeline's ResNet18. The baseline is what a simple script does: fp32, eager, decoding and
resizing the batch's JPEGs (files of the shared dataset) at every step in the training process
(num_workers=0). Every other row adds one change:
- data loader workers: the same decoding in 2 DataLoader worker processes, ahead of the step;
- decoded cache: the prepare stage's uint8 arrays instead (what train.py reads);
- channels_last, bf16 autocast (train.precision: bf16, or auto on a CPU with native bf16);
- torch.compile (inductor) of the model, fp32 and bf16, with channels_last;
- the thread count (1 instead of all cores), on the train stage's settings.
bf16 autocast only pays off on CPUs with native bf16 (AVX512-BF16 or AMX). Each row also says
the work per second it reached (GFLOP/s, torch's FLOP count of the step) and its share of the
CPU's fp32 peak (bench/peak.py). To see the AVX2 code paths on a CPU that has AVX-512, run it
with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 and --no-bf16 (oneDNN's convolutions and
ATen's vectorised kernels; the share is then still of this CPU's clock and units).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pneumonia.config import SHARED_DATA_DIR
from pneumonia.data import load_image
from pneumonia.model import build_model, to_input
from pneumonia.params import AugmentParams
from pneumonia.params import load as load_params
from pneumonia.serving import resize
from pneumonia.train import augment, native_bf16

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/train_step.py`: bench.peak beside it
    sys.path.insert(0, str(ROOT))
from bench.peak import describe, model_flops, share, this_cpu  # noqa: E402


@dataclass(frozen=True)
class Variant:
    source: str = "cache"  # "decode": JPEGs in the step; "workers": in DataLoader workers
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    threads: int = 0  # 0: torch's default (all cores)


STAGE = "train stage as configured"  # the row the speed-up is judged on
VARIANTS = {
    "baseline: fp32, decode JPEGs every step": Variant(source="decode"),
    "+ data loader workers (2) decoding the JPEGs": Variant(source="workers"),
    "+ decoded cache (prepare's arrays)": Variant(),
    "+ decoded cache + channels_last (train.precision: fp32)": Variant(channels_last=True),
    "+ decoded cache + bf16 autocast": Variant(bf16=True),
    "+ decoded cache + channels_last + bf16 (train.precision: bf16)": Variant(
        bf16=True, channels_last=True
    ),
    "+ torch.compile of the fp32 + channels_last step": Variant(channels_last=True, compile=True),
    "+ torch.compile of the bf16 + channels_last step": Variant(
        bf16=True, channels_last=True, compile=True
    ),
}


class DecodedFiles(Dataset):
    """The batch's files, decoded and resized on every access, repeated without end."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(resize(load_image(self.files[i % len(self.files)]), self.size))


def make_step(
    variant: Variant,
    files: list[Path],
    size: int,
    cached: torch.Tensor,
    y: torch.Tensor,
    aug: AugmentParams,
) -> Callable[[], None]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build_model("none", "per_image").train()
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if variant.compile else model
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([2.0, 0.7]), label_smoothing=0.1)
    if variant.source == "workers":
        batches = iter(
            DataLoader(
                DecodedFiles(files, size),
                batch_size=len(files),
                num_workers=2,
                persistent_workers=True,
            )
        )

    def step() -> None:
        if variant.source == "decode":
            gray = torch.from_numpy(np.stack([resize(load_image(f), size) for f in files]))
        elif variant.source == "workers":
            gray = next(batches)
        else:
            gray = cached
        x = to_input(augment(gray.float().div(255.0).unsqueeze(1), aug, generator))
        if variant.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16):
            loss = criterion(forward(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="leave out bf16 (with ONEDNN_MAX_CPU_ISA=AVX2 oneDNN has no fast bf16 kernel)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny and short: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch, args.rounds = 32, 8, 1
    files = sorted((SHARED_DATA_DIR / "chest_xray" / "train").rglob("*.jpeg"))[::7][: args.batch]
    if len(files) < args.batch:
        sys.exit(f"need {args.batch} JPEGs under {SHARED_DATA_DIR / 'chest_xray' / 'train'}")
    cached = torch.from_numpy(np.stack([resize(load_image(f), args.size) for f in files]))
    aug = load_params().train.augment
    y = torch.tensor([i % 2 for i in range(args.batch)])
    threads = torch.get_num_threads()
    stage = Variant(bf16=native_bf16() and not args.no_bf16, channels_last=True)
    variants = {
        name: v
        for name, v in VARIANTS.items()
        if not (v.compile and args.no_compile) and not (v.bf16 and args.no_bf16)
    }
    variants[f"{STAGE} (channels_last, {'bf16' if stage.bf16 else 'fp32'}), 1 thread"] = Variant(
        bf16=stage.bf16, channels_last=True, threads=1
    )
    steps, first_step = {}, {}
    for name, variant in variants.items():
        step = make_step(variant, files, args.size, cached, y, aug)
        started = time.perf_counter()
        step()  # warm-up: allocates, picks kernels, compiles
        first_step[name] = time.perf_counter() - started
        steps[name] = step
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(2 if args.quick else 4):
        for name, step in steps.items():
            torch.set_num_threads(variants[name].threads or threads)
            started = time.perf_counter()
            for _ in range(args.rounds):
                step()
            seconds[name].append((time.perf_counter() - started) / args.rounds)
    torch.set_num_threads(threads)
    baseline = statistics.median(seconds[next(iter(VARIANTS))])
    print(
        f"ResNet18 train step with augmentation, {args.size} px, batch {args.batch}, {threads} "
        f"threads, native bf16: {'yes' if native_bf16() else 'no'}; median over "
        f"{len(seconds[next(iter(VARIANTS))])} interleaved rounds of {args.rounds} steps. The "
        f"train stage as configured (precision auto) is channels_last + "
        f"{'bf16' if stage.bf16 else 'fp32'} on this CPU.\n"
    )
    cpu = this_cpu()
    flops = model_flops(build_model("none", "per_image"), args.size, train=True)
    print(f"{describe(cpu)}; a train step is {flops / 1e9:.2f} GFLOP per image.\n")
    print(
        "| variant | s/step | images/s | vs baseline | GFLOP/s | share of fp32 peak "
        "| first step (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, times in seconds.items():
        median = statistics.median(times)
        achieved = args.batch * flops / median / 1e9
        peak = cpu.peak_gflops(variants[name].threads or threads)
        print(
            f"| {name} | {median:.2f} | {args.batch / median:.1f} | {baseline / median:.2f}x "
            f"| {achieved:.0f} | {share(achieved, peak)} | {first_step[name]:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
