"""Single-image inference latency and test accuracy: torch eager, the float ONNX graph and
the INT8 one (``pneumonia.quantize``) in onnxruntime.

    python bench/inference.py [--runs 200] [--quick]

Uses the pipeline's outputs (models/model.pt, models/bundle/, data/prepared/) and a real X-ray;
times the model call alone on a preprocessed 1 x 3 x S x S input (median and p95), after a
warm-up, side by side in one process. onnxruntime is timed as the web app runs it (1 intra-op
thread per worker) and with its default threads. The float ONNX graph is exported here from
models/model.pt as the export stage does; the INT8 one is the served bundle when it is
quantised (export.quantize: int8), else built here from 128 training images. Accuracy: every
model on the prepared test split, with the bundle's calibration and threshold (chosen on
validation). Prints Markdown tables, with each row's work per second (GFLOP/s: torch's FLOP
count of the model, which the INT8 graph does as multiply-adds too) and its share of the CPU's
fp32 peak for its threads (bench/peak.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pneumonia.config import PREPARED_DIR
from pneumonia.config import SAMPLES_DIR as SAMPLES
from pneumonia.data import load_image
from pneumonia.export import export_onnx
from pneumonia.metrics import classification_metrics
from pneumonia.model import load_checkpoint, predict_logits, to_input
from pneumonia.params import load as load_params
from pneumonia.prepared import load_split
from pneumonia.quantize import calibration_sample, quantize_bundle
from pneumonia.serving import Bundle, resize, sha256_file

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/inference.py`: bench.peak beside it
    sys.path.insert(0, str(ROOT))
from bench.peak import describe, model_flops, share, this_cpu  # noqa: E402


def timed(call, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def session(onnx_path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def onnx_logits(bundle: Bundle, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate(
        [bundle.run(images[i : i + batch])[0] for i in range(0, len(images), batch)]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="5 runs: checks that it works")
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "model.pt")
    parser.add_argument("--prepared", type=Path, default=PREPARED_DIR)
    args = parser.parse_args()
    runs, warmup = (5, 1) if args.quick else (args.runs, 10)

    model, size = load_checkpoint(args.model)
    bundle = Bundle(args.bundle)
    served = "INT8" if "quantization" in bundle.manifest else "float"
    test = load_split("test", args.prepared)
    tmp = Path(tempfile.mkdtemp(prefix="inference-bench-"))
    # The float graph as the export stage writes it, in a bundle with the served model.json.
    float_dir = tmp / "float"
    float_dir.mkdir()
    export_onnx(model, size, float_dir / "model.onnx", load_params().export.opset)
    manifest = {k: v for k, v in bundle.manifest.items() if k != "quantization"}
    manifest["onnx_sha256"] = sha256_file(float_dir / "model.onnx")
    (float_dir / "model.json").write_text(json.dumps(manifest))
    int8_dir = args.bundle
    if served == "float":
        train = load_split("train", args.prepared)
        sample = calibration_sample(train.images, train.labels, 16 if args.quick else 128)
        int8_dir = tmp / "int8"
        quantize_bundle(float_dir, int8_dir, sample)
    bundles = {
        f"onnxruntime float{' (served)' if served == 'float' else ''}": Bundle(float_dir),
        f"onnxruntime INT8{' (served)' if served == 'INT8' else ''}": Bundle(int8_dir),
    }

    image = sorted(SAMPLES.rglob("*.jpeg"))[0]  # a full-size original, as uploaded
    gray = resize(load_image(image), size)[None]
    x_torch = to_input(torch.from_numpy(gray))
    x_onnx = bundle.preprocess(gray)

    def torch_call():
        with torch.no_grad():
            model(x_torch)

    cpu = this_cpu()
    rows = [("torch eager (fp32, 2 threads)", cpu.cores, timed(torch_call, runs, warmup))]
    for name, b in bundles.items():
        for threads, how in ((1, "1 thread (as served)"), (0, "default threads")):
            run = session(b.onnx_path, threads)
            call = lambda run=run: run.run(["logits"], {"image": x_onnx})  # noqa: E731
            rows.append((f"{name}, {how}", threads or cpu.cores, timed(call, runs, warmup)))
    flops = model_flops(model, size)
    print(f"Single {size} px image, model call only, {runs} runs after {warmup} warm-up.")
    print(f"{describe(cpu)}; the model is {flops / 1e9:.2f} GFLOP per image.\n")
    print(
        "| runtime | median (ms) | p95 (ms) | vs torch eager | GFLOP/s | share of fp32 peak |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    eager = statistics.median(rows[0][2])
    for name, threads, times in rows:
        median, p95 = statistics.median(times), float(np.percentile(times, 95))
        achieved = flops / median / 1e6
        print(
            f"| {name} | {median:.1f} | {p95:.1f} | {eager / median:.2f}x | {achieved:.0f} "
            f"| {share(achieved, cpu.peak_gflops(threads))} |"
        )

    logits = {"torch eager (fp32)": predict_logits(model, test.images)}
    for name, b in bundles.items():
        logits[name] = onnx_logits(b, test.images)
    print(
        f"\nTest split ({len(test.labels)} images), the bundle's calibration and threshold "
        f"({bundle.threshold:.3f}):\n"
    )
    print(
        "| model | accuracy | sensitivity | specificity | ROC AUC | max abs. probability "
        "change vs torch |\n|---|---:|---:|---:|---:|---:|"
    )
    reference = bundle.calibrated(logits["torch eager (fp32)"])
    for name, values in logits.items():
        probability = bundle.calibrated(values)
        m = classification_metrics(test.labels, probability, bundle.threshold)
        print(
            f"| {name} | {m['accuracy']:.4f} | {m['sensitivity']:.4f} | "
            f"{m['specificity']:.4f} | {m['roc_auc']:.4f} | "
            f"{float(np.max(np.abs(probability - reference))):.4f} |"
        )
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
