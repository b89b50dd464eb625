"""How far from the hardware a benchmark is: the CPU's fp32 peak and a model's FLOPs.

    python -m bench.peak [--sizes 128 160 224] [--images 3660 622]

fp32 peak = physical cores x FMA units per core x fp32 lanes per unit x 2 (a fused
multiply-add is two operations) x clock. The FMA units and their width are what the core
executes, not the widest instruction set it decodes: AMD's Zen 4 runs AVX-512 on two 256-bit
units, so it has Zen 3's peak per clock; Zen 5 and Intel's Xeons with AVX-512 have two 512-bit
units (some Xeon Silver and Bronze parts have one: their peak is half what this says). The
clock is the one /proc/cpuinfo reports (a virtual machine reports its host's nominal clock; a
boost clock above it would make the shares printed here too high). A large fp32 matrix
product (torch's SGEMM) is timed beside it: the share a dense kernel reaches on this CPU.

FLOPs are counted by torch (``torch.utils.flop_counter``: 2 per multiply-add of the
convolutions and the matrix products, which are nearly all of a ResNet's work); a training step
counts the backward pass too. An INT8 model does the same multiply-adds, so its "GFLOP/s" is
the same work per second, compared with the fp32 peak as the issue that asked for it does.
The train stage's work (params.yaml's epochs, each training image's step and each validation
image's forward pass) divided by the peak is the least time any code could take on this CPU.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Cpu:
    name: str
    cores: int  # physical cores this process may run on
    fma_units: int  # per core
    lanes: int  # fp32 lanes of one FMA unit
    ghz: float
    isa: str

    @property
    def peak_gflops_per_core(self) -> float:
        return self.fma_units * self.lanes * 2 * self.ghz

    def peak_gflops(self, threads: int | None = None) -> float:
        """fp32 peak of ``threads`` cores (default: all of them)."""
        return self.peak_gflops_per_core * min(threads or self.cores, self.cores)


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings share FMA units)."""
    allowed = os.sched_getaffinity(0)
    cores = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return len(cores)


def fma_units(vendor: str, family: int, model: int, flags: set[str]) -> tuple[int, int, str]:
    """(FMA units per core, fp32 lanes per unit, instruction set) of an x86 core."""
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/AVX"
    if "fma" not in flags:
        return 1, 4 if isa == "SSE/AVX" else 8, isa
    if vendor == "AuthenticAMD":
        if family >= 26:  # Zen 5: two 512-bit units
            return 2, 16 if isa == "AVX-512" else 8, isa
        if family == 23 and model < 0x30:  # Zen 1 and Zen+: 128-bit units
            return 2, 4, isa
        return 2, 8, isa  # Zen 2, Zen 3, Zen 4 (AVX-512 on 256-bit units)
    return 2, 16 if isa == "AVX-512" else 8, isa


def this_cpu() -> Cpu:
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    vendor = info.get("vendor_id", "")
    family, model = int(info.get("cpu family", "0")), int(info.get("model", "0"))
    units, lanes, isa = fma_units(vendor, family, model, flags)
    name = f"{info.get('model name', 'unknown CPU')} (family {family} model {model})"
    ghz = float(info.get("cpu MHz", "0")) / 1000
    return Cpu(name, physical_cores(), units, lanes, ghz, isa)


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The best of ``repeats`` n x n fp32 matrix products on ``threads`` threads, in GFLOP/s."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9


def model_flops(model: torch.nn.Module, size: int, train: bool = False) -> float:
    """FLOPs of one image through ``model`` at ``size`` px (forward; ``train``: and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, 3, size, size)  # 2: BatchNorm in training mode needs more than one
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.train(train)
    try:
        with counter:
            out = model(x)
            if train:
                out.float().sum().backward()
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def share(gflops: float, peak: float) -> str:
    return f"{100 * gflops / peak:.0f}%"


def describe(cpu: Cpu) -> str:
    return (
        f"{cpu.name}, {cpu.isa}: {cpu.cores} physical core(s) x {cpu.fma_units} FMA units x "
        f"{cpu.lanes} fp32 lanes x 2 x {cpu.ghz:.2f} GHz = {cpu.peak_gflops():.0f} GFLOP/s fp32 "
        f"peak ({cpu.peak_gflops_per_core:.0f} per core)"
    )


def job_floor(cpu: Cpu, model, size: int, epochs: int, train: int, val: int) -> tuple[float, float]:
    """(TFLOP, minutes at the fp32 peak of all cores) of the train stage's epochs: each training
    image's step and each validation image's forward pass, every epoch."""
    work = epochs * (train * model_flops(model, size, True) + val * model_flops(model, size))
    return work / 1e12, work / (cpu.peak_gflops() * 1e9) / 60


def main() -> int:
    from pneumonia.model import build_model
    from pneumonia.params import load as load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 224])
    parser.add_argument(
        "--images",
        type=int,
        nargs=2,
        default=[3660, 622],
        metavar=("TRAIN", "VAL"),
        help="training and validation images (the shared data's split: 3,660 and 622)",
    )
    args = parser.parse_args()
    epochs = load_params().train.epochs
    cpu = this_cpu()
    print(describe(cpu) + "\n")
    print("| threads | SGEMM 2048 GFLOP/s | share of peak |")
    print("|---:|---:|---:|")
    for threads in sorted({1, cpu.cores}):
        measured = sgemm_gflops(threads)
        print(f"| {threads} | {measured:.0f} | {share(measured, cpu.peak_gflops(threads))} |")
    model = build_model("none", "per_image")
    train, val = args.images
    print(
        f"\n| ResNet18 input | GFLOP per image, forward | GFLOP per image, train step | "
        f"train stage: {epochs} epochs of {train:,} + {val:,} images, TFLOP | its minutes at "
        f"this CPU's fp32 peak |"
    )
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        forward, step = model_flops(model, size) / 1e9, model_flops(model, size, True) / 1e9
        tflop, minutes = job_floor(cpu, model, size, epochs, train, val)
        print(f"| {size} px | {forward:.2f} | {step:.2f} | {tflop:.0f} | {minutes:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
