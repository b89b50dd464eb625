"""INT8 variants of one trained model side by side: which operators run quantised.

    python -m bench.quantization [--rounds 12] [--quick]

Exports the float graph of models/model.pt as the export stage does and quantises it twice from
the same training images: the convolutions only (the served model until session 10) and
``pneumonia.quantize.QUANTIZED_OPS`` (now: the residual additions, their ReLUs and the max
pooling too). For each: decisions changed against the float model on the validation and test
splits (the bundle's calibration and threshold), ROC AUC, the median latency over interleaved
rounds (1 thread, both outputs, as the app runs it; on a shared virtual machine the fastest
round is the steadier figure) and what ONNX Runtime's profiler gives to
QuantizeLinear / DequantizeLinear nodes (how many run, their share of the time). Prints
Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.inference import session, timed
from pneumonia.config import BUNDLE_DIR, MODELS_DIR, PREPARED_DIR
from pneumonia.export import batched_probabilities, export_onnx
from pneumonia.metrics import classification_metrics
from pneumonia.model import load_checkpoint
from pneumonia.params import load as load_params
from pneumonia.prepared import load_split
from pneumonia.quantize import QUANTIZED_OPS, calibration_sample, quantize_model
from pneumonia.serving import Bundle, sha256_file

VARIANTS = {
    "INT8, convolutions only (before)": ("Conv",),
    "INT8, the residual path (now)": QUANTIZED_OPS,
}
CONVERSIONS = ("QuantizeLinear", "DequantizeLinear")


def conversions(onnx_path: Path, x: np.ndarray, runs: int) -> tuple[int, float]:
    """How many Quantize/DequantizeLinear nodes ONNX Runtime runs, and their share of the
    kernel time, from its profiler over ``runs`` calls."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(onnx_path.with_suffix(".profile"))  # beside the model
    profiled = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        profiled.run(None, {"image": x})
    trace = Path(profiled.end_profiling())
    op_of_node: dict[str, str] = {}
    totals: dict[str, float] = defaultdict(float)
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op_of_node[event["name"]] = event["args"]["op_name"]
            totals[event["args"]["op_name"]] += event["dur"]
    trace.unlink()
    count = sum(op in CONVERSIONS for op in op_of_node.values())
    share = sum(totals[op] for op in CONVERSIONS) / max(sum(totals.values()), 1e-9)
    return count, share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds of 100 calls")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 5 calls: checks it works")
    parser.add_argument("--bundle", type=Path, default=BUNDLE_DIR)
    parser.add_argument("--model", type=Path, default=MODELS_DIR / "model.pt")
    parser.add_argument("--prepared", type=Path, default=PREPARED_DIR)
    args = parser.parse_args()
    rounds, calls = (2, 5) if args.quick else (args.rounds, 100)

    model, size = load_checkpoint(args.model)
    params = load_params().export
    manifest = {k: v for k, v in Bundle(args.bundle).manifest.items() if k != "quantization"}
    train = load_split("train", args.prepared)
    sample = calibration_sample(train.images, train.labels, params.calibration_images)
    with tempfile.TemporaryDirectory(prefix="quantization-bench-") as tmp:
        float_onnx = Path(tmp) / "float.onnx"
        export_onnx(model, size, float_onnx, params.opset)
        float_bundle = Bundle.from_parts(
            float_onnx, {**manifest, "onnx_sha256": sha256_file(float_onnx)}
        )
        bundles = {"float": float_bundle}
        for i, (name, ops) in enumerate(VARIANTS.items()):
            path = Path(tmp) / f"int8-{i}.onnx"
            quantize_model(float_bundle, path, sample, ops)
            bundles[name] = Bundle.from_parts(path, {**manifest, "onnx_sha256": sha256_file(path)})

        print(f"Decisions against the float model (threshold {float_bundle.threshold:.3f}):\n")
        print(
            "| model | split | decisions changed | accuracy | ROC AUC |\n|---|---|---:|---:|---:|"
        )
        for split in ("val", "test"):
            data = load_split(split, args.prepared)
            reference = batched_probabilities(float_bundle, data.images) >= float_bundle.threshold
            for name, bundle in bundles.items():
                p = batched_probabilities(bundle, data.images)
                m = classification_metrics(data.labels, p, bundle.threshold)
                changed = int(((p >= bundle.threshold) != reference).sum())
                print(
                    f"| {name} | {split} | {changed} of {len(p)} | {m['accuracy']:.4f} | "
                    f"{m['roc_auc']:.4f} |"
                )

        x = float_bundle.preprocess(data.images[:1])  # a test image
        sessions = {name: session(b.onnx_path, 1) for name, b in bundles.items()}
        medians: dict[str, list[float]] = defaultdict(list)
        for _ in range(rounds):
            for name, run in sessions.items():
                call = lambda run=run: run.run(None, {"image": x})  # noqa: E731
                medians[name].append(statistics.median(timed(call, calls, warmup=5)))
        print(
            f"\nOne {size} px image, 1 thread, {rounds} interleaved rounds of {calls} calls; "
            "ONNX Runtime's profiler over 20 calls:\n"
        )
        print(
            "| model | median of round medians (ms) | fastest round (ms) | rounds (ms) | "
            "Quantize/DequantizeLinear nodes run | their share of the time |\n"
            "|---|---:|---:|---|---:|---:|"
        )
        for name, bundle in bundles.items():
            count, share = conversions(bundle.onnx_path, x, 20)
            print(
                f"| {name} | {statistics.median(medians[name]):.2f} | {min(medians[name]):.2f} | "
                f"{' / '.join(f'{m:.1f}' for m in medians[name])} | {count} | {share:.1%} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
