"""Single-image inference latency: torch eager vs the served ONNX model (onnxruntime).

    python bench/inference.py [--runs 200] [--quick]

Uses the pipeline's outputs (models/model.pt, models/bundle/) and a real X-ray; times the
model call alone on a preprocessed 1 x 3 x S x S input (median and p95), after a warm-up, side
by side in one process. onnxruntime is timed as the web app runs it (1 intra-op thread per
worker) and with its default threads. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pneumonia.config import SAMPLES_DIR as SAMPLES  # noqa: E402
from pneumonia.data import load_image, resize  # noqa: E402
from pneumonia.model import load_checkpoint, to_input  # noqa: E402
from pneumonia.predict import Bundle  # noqa: E402


def timed(call, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(name: str, times: list[float]) -> str:
    p95 = float(np.percentile(times, 95))
    return f"| {name} | {statistics.median(times):.1f} | {p95:.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="5 runs: checks that it works")
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "model.pt")
    args = parser.parse_args()
    runs, warmup = (5, 1) if args.quick else (args.runs, 10)
    import onnxruntime as ort

    model, size = load_checkpoint(args.model)
    bundle = Bundle(args.bundle)
    image = sorted(SAMPLES.rglob("*.jpeg"))[0]  # a full-size original, as uploaded
    gray = resize(load_image(image), size)[None]
    x_torch = to_input(torch.from_numpy(gray))
    x_onnx = bundle.preprocess(gray)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    single = ort.InferenceSession(str(args.bundle / "model.onnx"), options,
                                  providers=["CPUExecutionProvider"])  # fmt: skip

    def torch_call():
        with torch.no_grad():
            model(x_torch)

    rows = [
        ("torch eager (fp32, 2 threads)", timed(torch_call, runs, warmup)),
        ("onnxruntime, 1 thread (as served)",
         timed(lambda: single.run(["logits"], {"image": x_onnx}), runs, warmup)),
        ("onnxruntime, default threads",
         timed(lambda: bundle.session.run(["logits"], {"image": x_onnx}), runs, warmup)),
    ]  # fmt: skip
    print(f"Single {size} px image, model call only, {runs} runs after {warmup} warm-up.\n")
    print("| runtime | median (ms) | p95 (ms) |\n|---|---:|---:|")
    for name, times in rows:
        print(summary(name, times))
    eager = statistics.median(rows[0][1])
    print(f"\nonnxruntime (default threads) speed-up over torch eager: "
          f"{eager / statistics.median(rows[2][1]):.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
