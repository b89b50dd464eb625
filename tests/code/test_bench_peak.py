"""bench/peak.py: the FMA units of known cores and torch's FLOP count of ResNet18."""

from __future__ import annotations

import pytest

from bench.peak import Cpu, fma_units, job_floor, model_flops, this_cpu
from pneumonia.model import build_model

AVX2 = {"fma", "avx", "avx2"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}


@pytest.mark.parametrize(
    ("vendor", "family", "model", "flags", "expected"),
    [
        ("AuthenticAMD", 25, 1, AVX2, (2, 8, "AVX2")),  # Zen 3, EPYC 7763 (GitHub's runners)
        ("AuthenticAMD", 25, 17, AVX512, (2, 8, "AVX-512")),  # Zen 4: AVX-512 on 256-bit units
        ("AuthenticAMD", 26, 2, AVX512, (2, 16, "AVX-512")),  # Zen 5: 512-bit units
        ("AuthenticAMD", 23, 1, AVX2, (2, 4, "AVX2")),  # Zen 1: 128-bit units
        ("GenuineIntel", 6, 143, AVX512, (2, 16, "AVX-512")),  # Sapphire Rapids
        ("GenuineIntel", 6, 85, AVX2, (2, 8, "AVX2")),
        ("GenuineIntel", 6, 42, {"avx"}, (1, 4, "SSE/AVX")),  # no FMA
    ],
)
def test_fma_units_are_what_the_core_executes(vendor, family, model, flags, expected):
    assert fma_units(vendor, family, model, flags) == expected


def test_peak_is_cores_units_lanes_two_and_clock():
    cpu = Cpu("x", cores=2, fma_units=2, lanes=8, ghz=2.45, isa="AVX2")
    assert cpu.peak_gflops_per_core == pytest.approx(78.4)
    assert cpu.peak_gflops() == pytest.approx(156.8)
    assert cpu.peak_gflops(1) == pytest.approx(78.4) and cpu.peak_gflops(8) == cpu.peak_gflops()


def test_this_cpu_reads_a_clock_and_at_least_one_core():
    cpu = this_cpu()
    assert cpu.cores >= 1 and cpu.ghz > 0 and cpu.peak_gflops() > 0


def test_resnet18_flops_match_its_published_multiply_adds():
    model = build_model("none", "per_image")
    forward = model_flops(model, 224)
    assert forward == pytest.approx(2 * 1.82e9, rel=0.01)  # 1.82 G multiply-adds at 224 px
    assert model_flops(model, 128) == pytest.approx(model_flops(model, 256) / 4, rel=0.01)
    step = model_flops(model, 224, train=True)
    assert 2.8 * forward < step < 3.1 * forward  # backward: about twice the forward
    assert model.training  # left as it was


def test_job_floor_is_the_epochs_work_over_the_peak():
    model = build_model("none", "per_image")
    cpu = Cpu("x", cores=2, fma_units=2, lanes=8, ghz=2.5, isa="AVX2")  # 160 GFLOP/s
    tflop, minutes = job_floor(cpu, model, 64, epochs=2, train=10, val=5)
    work = 2 * (10 * model_flops(model, 64, True) + 5 * model_flops(model, 64))
    assert tflop == pytest.approx(work / 1e12)
    assert minutes == pytest.approx(work / 160e9 / 60)
