"""INT8 variant of a serving bundle: onnxruntime static quantisation.

    python -m pneumonia.quantize [--bundle models/bundle] [--out models/bundle-int8]
                                 [--calibration-images N]  (default: params.yaml)

Weights are quantised per output channel (int8), activations per tensor (uint8) with ranges
measured on real training images (never validation or test ones, which judge the result), in
the QDQ format. From the first convolution to the last feature map everything runs in INT8 (the
convolutions, the residual additions, their ReLUs, the max pooling); the in-graph
standardisation before it, the average pooling and the 2-class head stay in float. The result
is a complete bundle (model.json updated with the new sha256 and a ``quantization`` entry) that
``pneumonia.serving.Bundle`` and the web app load unchanged. Its accuracy against the float
model: ``bench/inference.py``; against quantising the convolutions only:
``bench/quantization.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pneumonia import config
from pneumonia.files import atomic_directory
from pneumonia.serving import Bundle, BundleError, sha256_file

# Quantising the additions and ReLUs as well as the convolutions keeps activations in INT8
# between convolutions instead of dequantising them at each skip connection (docs/benchmarks.md).
QUANTIZED_OPS = ("Conv", "Add", "Relu", "MaxPool")


class QuantizeError(RuntimeError):
    """Bad input for quantisation; the message says what to do."""


def standardisation_nodes(graph) -> list[str]:
    """Names of the nodes that compute the first convolution's input: the in-graph
    standardisation (a variance, a square root), which must stay in float."""
    producers = {out: node for node in graph.node for out in node.output}
    first_conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if first_conv is None:
        raise QuantizeError("the model has no convolution: export it with pneumonia.export")
    names, pending = set(), [first_conv.input[0]]
    while pending:
        node = producers.get(pending.pop())
        if node is not None and node.name not in names:
            names.add(node.name)
            pending.extend(node.input)
    return sorted(names)


def calibration_sample(images: np.ndarray, labels: np.ndarray, count: int, seed: int = 0):
    """Up to ``count`` images (uint8 N x S x S), an equal share from each class, reproducibly."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if len(classes) == 0:
        raise QuantizeError("no calibration images: the training split is empty")
    shares = [count // len(classes) + (i < count % len(classes)) for i in range(len(classes))]
    picked = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == c))[:n]
            for c, n in zip(classes, shares, strict=True)
        ]
    )
    return images[np.sort(picked)]


def quantize_onnx(
    float_onnx: Path, out_onnx: Path, inputs: list[np.ndarray], ops: Sequence[str] = QUANTIZED_OPS
) -> None:
    """Write the INT8 (QDQ) version of ``float_onnx`` to ``out_onnx``; activation ranges are
    measured on ``inputs`` (model inputs ``image``, already preprocessed). ``ops``: the
    operator types to quantise (bench/quantization.py compares sets)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not inputs:
        raise QuantizeError("no calibration images: the training split is empty")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {"image": x}

    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_onnx), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_onnx),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ops),
            nodes_to_exclude=standardisation_nodes(onnx.load(str(prepared)).graph),
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def quantization_entry(calibration_images: int, float_sha256: str) -> dict:
    """What ``model.json`` says about an INT8 model."""
    return {
        "method": "onnxruntime static, QDQ: Conv weights int8 per channel in a 7-bit range "
        "(no saturation on CPUs without VNNI), activations uint8 from the first convolution "
        "to the last feature map (convolutions, residual additions, ReLUs, max pooling)",
        "calibration_images": int(calibration_images),
        "float_onnx_sha256": float_sha256,
    }


def quantize_model(
    bundle: Bundle, out_onnx: Path, calibration: np.ndarray, ops: Sequence[str] = QUANTIZED_OPS
) -> None:
    """Write the INT8 version of ``bundle``'s float model to ``out_onnx``, its activation ranges
    measured on ``calibration`` (uint8 N x S x S), preprocessed as the bundle says."""
    if calibration.ndim != 3 or calibration.shape[1:] != (bundle.size, bundle.size):
        raise QuantizeError(
            f"calibration images are {calibration.shape}, the bundle wants N x {bundle.size} x "
            f"{bundle.size}: prepare the data with the bundle's image size"
        )
    inputs = [bundle.preprocess(calibration[i : i + 1]) for i in range(len(calibration))]
    quantize_onnx(bundle.onnx_path, out_onnx, inputs, ops)


def quantized(bundle: Bundle, out_onnx: Path, calibration: np.ndarray) -> dict:
    """Write the INT8 version of ``bundle``'s float model to ``out_onnx``; return its manifest
    (the float one with the new sha256, version and a ``quantization`` entry). The one
    quantisation path: the export stage and ``quantize_bundle`` both use it."""
    quantize_model(bundle, out_onnx, calibration)
    manifest = dict(bundle.manifest)
    manifest["onnx_sha256"] = sha256_file(out_onnx)
    manifest["version"] = manifest["onnx_sha256"][:12]
    manifest["quantization"] = quantization_entry(len(calibration), bundle.manifest["onnx_sha256"])
    return manifest


def quantize_bundle(bundle_dir: Path, out_dir: Path, calibration: np.ndarray) -> dict:
    """Write an INT8 copy of the float bundle at ``bundle_dir`` to ``out_dir``, its activation
    ranges measured on ``calibration`` (uint8 N x S x S). Returns the new manifest. ``out_dir``
    is replaced only once the new bundle is complete and loads."""
    bundle = Bundle(bundle_dir)
    with atomic_directory(Path(out_dir)) as staged:
        manifest = quantized(bundle, staged / "model.onnx", calibration)
        (staged / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
        Bundle(staged)  # loads and checks the sha256, or raises before anything is replaced
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=config.BUNDLE_DIR)
    parser.add_argument("--out", type=Path, default=config.MODELS_DIR / "bundle-int8")
    parser.add_argument(
        "--calibration-images", type=int, help="default: export.calibration_images (params.yaml)"
    )
    args = parser.parse_args(argv)
    from pneumonia.params import load as load_params
    from pneumonia.prepared import load_split

    count = args.calibration_images or load_params().export.calibration_images
    try:
        train = load_split("train")
    except FileNotFoundError:
        print(
            "quantize: error: no prepared training split: run `dvc repro prepare`", file=sys.stderr
        )
        return 1
    try:
        sample = calibration_sample(train.images, train.labels, count)
        manifest = quantize_bundle(args.bundle, args.out, sample)
    except (QuantizeError, BundleError) as exc:
        print(f"quantize: error: {exc}", file=sys.stderr)
        return 1
    size = (args.out / "model.onnx").stat().st_size / 2**20
    print(
        f"quantize: wrote {args.out} (model.onnx {size:.1f} MiB, sha256 "
        f"{manifest['onnx_sha256'][:12]}...)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
