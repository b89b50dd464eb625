"""Stage ``export``: the serving bundle ``models/bundle/`` = ``model.onnx`` + ``model.json``.

``model.onnx`` takes ``image`` (N x 3 x S x S, normalised) and returns ``logits`` (N x 2) and
``features`` (the last convolutional feature map, N x 512 x s x s) so that the web app can draw a
class activation map with numpy. ``model.json`` holds every fact the app needs: labels, input size
and normalisation, threshold, test metrics, data version, git commit, the ONNX file's sha256.
The stage refuses to write a bundle whose ONNX outputs differ from torch's by more than
``export.parity_tolerance`` on real test images. The new version is registered in MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumonia import config, tracking
from pneumonia.files import atomic_directory
from pneumonia.model import load_checkpoint, to_input
from pneumonia.predict import Bundle, sha256_file
from pneumonia.prepare import load_split

BUNDLE_FORMAT = 1


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree: the exported graph is not the trained model."""


class WithFeatures(nn.Module):
    """ResNet returning (logits, last feature map): the two outputs the bundle serves."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(r.standardize(x)))))
        features = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        return r.fc(torch.flatten(r.avgpool(features), 1)), features


def export_onnx(model: nn.Module, image_size: int, path: Path, opset: int) -> None:
    """Write ``model`` as one self-contained ONNX file with a dynamic batch axis (torch.export
    based exporter; the TorchScript one is deprecated)."""
    wrapped = WithFeatures(model).eval()
    example = torch.zeros(2, 3, image_size, image_size)
    torch.onnx.export(
        wrapped,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["logits", "features"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def parity(model: nn.Module, bundle: Bundle, images: np.ndarray) -> dict[str, float]:
    """Largest |torch - ONNX Runtime| difference on ``images`` (uint8 N x S x S)."""
    with torch.no_grad():
        torch_logits, torch_features = WithFeatures(model).eval()(
            to_input(torch.from_numpy(images))
        )
    onnx_logits, onnx_features = bundle.run(images)
    torch_prob = torch.softmax(torch_logits, 1).numpy()
    onnx_prob = np.exp(onnx_logits) / np.exp(onnx_logits).sum(1, keepdims=True)
    return {
        "logits": float(np.abs(torch_logits.numpy() - onnx_logits).max()),
        "probability": float(np.abs(torch_prob - onnx_prob).max()),
        "features": float(np.abs(torch_features.numpy() - onnx_features).max()),
        "images": int(len(images)),
    }


def build_manifest(
    model: nn.Module,
    image_size: int,
    onnx_sha256: str,
    val_metrics: dict[str, Any],
    test_metrics: dict[str, Any],
    train_params: dict[str, Any],
) -> dict[str, Any]:
    """The contents of ``model.json``."""
    git = tracking.git_info()
    return {
        "format": BUNDLE_FORMAT,
        "name": tracking.REGISTERED_MODEL_NAME,
        "version": onnx_sha256[:12],
        "architecture": "resnet18",
        "init": str(train_params["weights"]),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "labels": list(config.LABELS),
        "positive_label": config.POSITIVE_LABEL,
        "input": {
            "name": "image",
            "size": image_size,
            "color": "grayscale, replicated to 3 channels",
            "resize": "bilinear, aspect ratio not kept (squashed to a square)",
            "scale": 1 / 255,
            "mean": list(config.NORM_MEAN),
            "std": list(config.NORM_STD),
            "layout": "NCHW",
        },
        "outputs": {"logits": "logits", "features": "features"},
        "cam": {
            "feature_output": "features",
            "head_weight": model.fc.weight.detach().numpy().round(7).tolist(),
            "head_bias": model.fc.bias.detach().numpy().round(7).tolist(),
        },
        # The served probability is sigmoid(scale * (PNEUMONIA logit - NORMAL logit) + bias),
        # fitted on validation by the evaluate stage; the threshold applies to it.
        "calibration": {
            "method": str(val_metrics.get("calibration", "none")),
            "scale": float(val_metrics.get("calibration_scale", 1.0)),
            "bias": float(val_metrics.get("calibration_bias", 0.0)),
            "fitted_on": "validation",
            "ece_validation": val_metrics.get("ece"),
        },
        "threshold": test_metrics["threshold"],
        "metrics": {"test": test_metrics, "validation": val_metrics},
        "data": tracking.data_version(),
        "git": git,
        "onnx_sha256": onnx_sha256,
    }


def export(
    model: nn.Module,
    image_size: int,
    check_images: np.ndarray,
    val_metrics: dict[str, Any],
    test_metrics: dict[str, Any],
    params: dict[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    """Export, check parity and write the bundle to ``out_dir`` atomically; return model.json."""
    with atomic_directory(out_dir) as staging:
        onnx_path = staging / "model.onnx"
        export_onnx(model, image_size, onnx_path, int(params["export"]["opset"]))
        manifest = build_manifest(
            model, image_size, sha256_file(onnx_path), val_metrics, test_metrics, params["train"]
        )
        (staging / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
        diff = parity(model, Bundle(staging), check_images)
        tolerance = float(params["export"]["parity_tolerance"])
        if max(diff["logits"], diff["probability"]) > tolerance:
            raise ParityError(
                f"ONNX Runtime differs from torch by {diff} (tolerance {tolerance}); not exporting"
            )
        manifest["parity"] = {**diff, "tolerance": tolerance}
        (staging / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def register(manifest: dict[str, Any], bundle_dir: Path) -> dict[str, Any]:
    """Log the bundle to the pipeline's MLflow run and register it as a new model version."""
    import onnx

    with tracking.resume_run() as mlflow:
        info = mlflow.onnx.log_model(
            onnx.load(str(bundle_dir / "model.onnx")),
            name="model",
            registered_model_name=tracking.REGISTERED_MODEL_NAME,
        )
        mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
        mlflow.set_tags(
            {"bundle.version": manifest["version"], "onnx.sha256": manifest["onnx_sha256"]}
        )
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(
            tracking.REGISTERED_MODEL_NAME, tracking.CANDIDATE_ALIAS, version
        )
        for key in ("onnx_sha256", "version"):
            client.set_model_version_tag(
                tracking.REGISTERED_MODEL_NAME, version, key, str(manifest[key])
            )
        test = manifest["metrics"]["test"]
        for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
            client.set_model_version_tag(
                tracking.REGISTERED_MODEL_NAME, version, f"test_{key}", f"{test[key]:.4f}"
            )
        return {
            "name": tracking.REGISTERED_MODEL_NAME,
            "version": version,
            "run_id": mlflow.active_run().info.run_id,
        }


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    params = config.load_params()
    model, image_size = load_checkpoint(config.MODEL_FILE)
    test = load_split("test")
    count = int(params["export"]["parity_images"])
    check = test.images[
        np.linspace(0, len(test.images) - 1, min(count, len(test.images))).astype(int)
    ]
    val_metrics = json.loads((config.METRICS_DIR / "val.json").read_text())
    test_metrics = json.loads((config.METRICS_DIR / "test.json").read_text())
    try:
        manifest = export(
            model, image_size, check, val_metrics, test_metrics, params, config.BUNDLE_DIR
        )
        registered = register(manifest, config.BUNDLE_DIR)
    except (ParityError, tracking.TrackingUnavailableError) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"export: {config.BUNDLE_DIR.relative_to(config.ROOT)} version {manifest['version']} "
        f"(parity max |diff| logits {manifest['parity']['logits']:.2e}); "
        f"MLflow model {registered['name']} v{registered['version']} "
        f"alias '{tracking.CANDIDATE_ALIAS}'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
