"""Stage ``export``: the serving bundle ``models/bundle/`` = ``model.onnx`` + ``model.json``.

``model.onnx`` takes ``image`` (N x 3 x S x S, normalised) and returns ``logits`` (N x 2) and
``features`` (the last convolutional feature map, N x 512 x s x s) so that the web app can draw a
class activation map with numpy. ``model.json`` holds every fact the app needs: labels, input size
and normalisation, threshold, test metrics, data version, git commit, the ONNX file's sha256.
The stage refuses to write a bundle whose ONNX outputs differ from torch's by more than
``export.parity_tolerance`` on real test images. With ``export.quantize: int8`` the served
``model.onnx`` is then the INT8 version of that checked float graph (``pneumonia.quantize``,
activation ranges from training images), and the stage refuses it when its test accuracy falls
more than ``export.max_accuracy_drop`` below the torch model's (metrics/test.json). The new
version is registered in MLflow.
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
from PIL import Image
from torch import nn

from pneumonia import catalogue, config, served, tracking
from pneumonia.files import atomic_directory, atomic_write_text
from pneumonia.metrics import classification_metrics
from pneumonia.model import load_checkpoint, to_input
from pneumonia.params import ExportParams, GuardParams, ParamsError
from pneumonia.params import load as load_params
from pneumonia.prepared import PreparedSplit, load_split
from pneumonia.quantize import QuantizeError, calibration_sample, quantized
from pneumonia.serving import Bundle, Guard, image_statistics, sha256_file

BUNDLE_FORMAT = 1
SERVED_LOGGED = ("accuracy", "sensitivity", "specificity", "roc_auc")


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree: the exported graph is not the trained model."""


class NoReferenceError(RuntimeError):
    """The guard refuses every test image: drift monitoring would have nothing to compare."""


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
    init: str,
) -> dict[str, Any]:
    """The contents of ``model.json``."""
    git = tracking.git_info()
    return {
        "format": BUNDLE_FORMAT,
        "name": tracking.REGISTERED_MODEL_NAME,
        "version": onnx_sha256[:12],
        "architecture": "resnet18",
        "init": init,
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
            "method": str(val_metrics["calibration"]),
            "scale": float(val_metrics["calibration_scale"]),
            "bias": float(val_metrics["calibration_bias"]),
            "fitted_on": val_metrics.get("calibration_fitted_on", "validation"),
            "ece_validation": val_metrics.get("ece"),
        },
        "threshold": test_metrics["threshold"],
        "metrics": {"test": test_metrics, "validation": val_metrics},
        "data": tracking.data_version(),
        "git": git,
        "onnx_sha256": onnx_sha256,
    }


def pooled_features(bundle: Bundle, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The bundle's last feature map, averaged over space, for each uint8 image (N x K)."""
    return np.concatenate(
        [
            bundle.run(images[i : i + batch])[1].mean(axis=(2, 3))
            for i in range(0, len(images), batch)
        ]
    )


def _rounded(values: np.ndarray) -> list:
    return np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(values).tolist()


def fit_guard(
    train_features: np.ndarray, val_features: np.ndarray, params: GuardParams
) -> dict[str, Any]:
    """model.json's ``guard``: the training images' feature distribution (mean, the top
    ``params.components`` principal directions and variances, the mean variance of the rest)
    and the refusal threshold, the ``params.quantile`` of the validation images' distances."""
    mean = train_features.mean(axis=0)
    centred = train_features - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / max(1, len(centred) - 1))
    order = np.argsort(eigenvalues)[::-1]
    k = min(params.components, len(order) - 1)
    floor = max(float(eigenvalues[order[0]]), 1e-12) * 1e-6  # dead (always zero) features
    section: dict[str, Any] = {
        "method": "feature distance: Gaussian in the top principal components + residual",
        "min_side": params.min_side,
        "min_contrast": params.min_contrast,
        "max_colour": params.max_colour,
        "mean": _rounded(mean),
        "components": _rounded(eigenvectors[:, order[:k]].T),
        "variances": _rounded(np.maximum(eigenvalues[order[:k]], floor)),
        "residual_variance": float(f"{max(float(eigenvalues[order[k:]].mean()), floor):.6g}"),
        "threshold": 0.0,
    }
    distances = Guard.from_manifest(section).distance(val_features)
    section["threshold"] = float(np.quantile(distances, params.quantile))
    section["fitted_on"] = {
        "train_images": int(len(train_features)),
        "validation_images": int(len(val_features)),
        "validation_quantile": params.quantile,
    }
    return section


def guard_refused(guard: Guard, images: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Which of ``images`` (uint8, the model's input size; ``features`` pooled) the guard
    refuses as nearly uniform or by their features (size and colour need the original file)."""
    return guard.uniform(images) | (guard.distance(features) > guard.threshold)


def guard_refusals(guard: Guard, images: np.ndarray, features: np.ndarray) -> float:
    """The share of ``images`` the guard refuses (``guard_refused``)."""
    return float(guard_refused(guard, images, features).mean())


def drift_reference(
    split: PreparedSplit,
    probability: np.ndarray,
    threshold: float,
    guard: Guard | None,
    features: np.ndarray | None,
) -> dict[str, Any]:
    """model.json's ``reference``: what production traffic is compared with (the app's
    ``diagnosis.drift``), from the served bundle's answers on ``split`` (the test split):
    ``probability`` calibrated, ``features`` pooled (with a ``guard``). Measured exactly as
    uploads are decided: of the images the guard accepts, the calibrated probability, the guard
    distance, brightness and contrast of each (4 decimals, in the split's order), the share
    decided PNEUMONIA, the accuracy estimated from the probabilities alone (each decision is
    right with probability p, or 1 - p: confidence-based performance estimation) beside the
    real one, and the share refused. Nothing here is used to choose or fit anything."""
    brightness, contrast = image_statistics(split.images)
    accepted = np.ones(len(probability), bool)
    if guard is not None:
        accepted = ~guard_refused(guard, split.images, features)
    if not accepted.any():
        raise NoReferenceError(
            "the guard refuses every test image, so there is no reference for drift monitoring:"
            " check export.guard in params.yaml (its quantile, min_contrast) and the test split"
        )
    p = probability[accepted]
    decided = p >= threshold
    positive = config.LABELS.index(config.POSITIVE_LABEL)

    def values(a: np.ndarray) -> list[float]:
        return [round(float(v), 4) for v in a[accepted]]

    return {
        "split": "test",
        "images": int(accepted.sum()),
        "refused": round(float(1 - accepted.mean()), 6),
        "pneumonia_share": round(float(decided.mean()), 6),
        "estimated_accuracy": round(float(np.where(decided, p, 1 - p).mean()), 6),
        "accuracy": round(float((decided == (split.labels[accepted] == positive)).mean()), 6),
        "probability": values(probability),
        "guard_distance": values(guard.distance(features)) if guard is not None else None,
        "brightness": values(brightness),
        "contrast": values(contrast),
    }


def jpeg_files(images: np.ndarray, name: str) -> list[tuple[str, bytes]]:
    """Each uint8 grayscale image as a JPEG file (quality 95), named ``{name} {index}``."""
    files = []
    for i, image in enumerate(images):
        data = catalogue.encode(Image.fromarray(np.asarray(image)), "JPEG", quality=95)
        files.append((f"{name} {i}", data))
    return files


def batched_probabilities(bundle: Bundle, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The bundle's calibrated positive-class probability for each uint8 image."""
    return np.concatenate(
        [bundle.probabilities(images[i : i + batch]) for i in range(0, len(images), batch)]
    )


def served_accuracy(
    probability: np.ndarray,
    threshold: float,
    test: PreparedSplit,
    float_probability: np.ndarray,
    float_accuracy: float,
) -> dict[str, Any]:
    """The served model's test accuracy (``probability``: the bundle's calibrated output, its
    threshold) beside the trained model's, and how many decisions and how much probability
    quantisation changed."""
    predicted = probability >= threshold
    positive = config.LABELS.index(config.POSITIVE_LABEL)
    accuracy = float(np.mean(predicted == (test.labels == positive)))
    return {
        "test_accuracy": round(accuracy, 6),
        "test_accuracy_float": round(float_accuracy, 6),
        "test_accuracy_drop": round(float_accuracy - accuracy, 6),
        "test_decisions_changed": int(np.sum(predicted != (float_probability >= threshold))),
        "test_max_probability_change": round(
            float(np.abs(probability - float_probability).max()), 6
        ),
        "test_images": int(len(test.labels)),
    }


def export(
    model: nn.Module,
    image_size: int,
    check_images: np.ndarray,
    val_metrics: dict[str, Any],
    test_metrics: dict[str, Any],
    params: ExportParams,
    init: str,
    out_dir: Path,
    calibration: np.ndarray | None = None,
    test_split: PreparedSplit | None = None,
    guard_images: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Export, check parity and write the bundle to ``out_dir`` atomically; return model.json
    and the served model's calibrated probability for each image of ``test_split`` (None
    without it).

    With ``export.quantize: int8``, ``calibration`` (uint8 training images) sets the INT8
    activation ranges and ``test_split`` checks the served model's accuracy. ``guard_images``
    (training and validation images) fit the served model's guard (``fit_guard``); without
    them the bundle has none and answers every image. The bundle appears only when the
    served model has passed every check. With a guard, ``guard.refused`` holds the share of
    validation and test images it refuses and of ``pneumonia.catalogue``'s inputs that are not
    chest X-rays (``not_chest_xray``, of ``guard.catalogue_images``). With ``test_split``,
    ``reference`` is what drift monitoring compares production with (``drift_reference``)."""
    if params.quantize == "int8" and (calibration is None or test_split is None):
        raise QuantizeError("export.quantize int8 needs calibration images and the test split")
    with atomic_directory(out_dir) as staging:
        float_onnx = staging / "model.float.onnx"
        export_onnx(model, image_size, float_onnx, params.opset)
        manifest = build_manifest(
            model, image_size, sha256_file(float_onnx), val_metrics, test_metrics, init
        )
        float_bundle = Bundle.from_parts(float_onnx, manifest)
        diff = parity(model, float_bundle, check_images)
        if max(diff["logits"], diff["probability"]) > params.parity_tolerance:
            raise ParityError(
                f"ONNX Runtime differs from torch by {diff} (tolerance {params.parity_tolerance});"
                " not exporting"
            )
        manifest["parity"] = {**diff, "tolerance": params.parity_tolerance}
        served_probability = (
            None if test_split is None else batched_probabilities(float_bundle, test_split.images)
        )
        if params.quantize == "int8":
            float_probability = served_probability
            manifest = quantized(float_bundle, staging / "model.onnx", calibration)
            served_probability = batched_probabilities(
                Bundle.from_parts(staging / "model.onnx", manifest), test_split.images
            )
            check = served_accuracy(
                served_probability,
                float(manifest["threshold"]),
                test_split,
                float_probability,
                float(test_metrics["accuracy"]),
            )
            manifest["quantization"].update(check)
            if check["test_accuracy_drop"] > params.max_accuracy_drop:
                raise QuantizeError(
                    f"the INT8 model's test accuracy is {check['test_accuracy']:.4f}, "
                    f"{check['test_accuracy_drop']:.4f} below the trained model's "
                    f"{check['test_accuracy_float']:.4f} (allowed: export.max_accuracy_drop "
                    f"{params.max_accuracy_drop}); not exporting. Serve the float model with "
                    "export.quantize: none"
                )
            float_onnx.unlink()
        else:
            float_onnx.replace(staging / "model.onnx")
        guard, test_features = None, None
        if guard_images is not None:
            bundle = Bundle.from_parts(staging / "model.onnx", manifest)
            train_images, val_images = guard_images
            val_features = pooled_features(bundle, val_images)
            section = fit_guard(pooled_features(bundle, train_images), val_features, params.guard)
            guard = Guard.from_manifest(section)
            refused = {"validation": guard_refusals(guard, val_images, val_features), "test": None}
            if test_split is not None:  # measured, never used to choose anything
                test_features = pooled_features(bundle, test_split.images)
                refused["test"] = guard_refusals(guard, test_split.images, test_features)
            manifest["guard"] = {**section, "refused": refused}
            # Measured on the served bundle as uploads are decided, never used to fit anything.
            guarded = Bundle.from_parts(staging / "model.onnx", manifest)
            xrays = jpeg_files(val_images[: catalogue.XRAY_FILES], "validation image")
            others = catalogue.not_chest_xrays(xrays)
            refused["not_chest_xray"], manifest["guard"]["catalogue_images"] = (
                catalogue.refused_share(guarded, others)
            )
        if test_split is not None:  # the answers above, of the model.onnx that is served
            manifest["reference"] = drift_reference(
                test_split, served_probability, float(manifest["threshold"]), guard, test_features
            )
        (staging / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
        Bundle(staging)  # what is served loads and matches its manifest
    return manifest, served_probability


def write_served_record(
    manifest: dict[str, Any],
    test_split: PreparedSplit,
    probability: np.ndarray,
    test_fingerprint: str | None,
    root: Path,
) -> dict[str, Any]:
    """``metrics/served.json`` (the served model's identity and its test metrics) and
    ``metrics/served_test.csv`` (file name, true label and served probability per test image,
    names only): what the gate compares, champion and challenger as served, image by image."""
    metrics = classification_metrics(test_split.labels, probability, float(manifest["threshold"]))
    record = {
        "model": served.identity(manifest),
        "version": manifest["version"],
        "test": metrics,
        "test_data": test_fingerprint,
        # share of the validation and test images the guard refuses (not in the test metrics)
        "guard_refused": manifest["guard"]["refused"] if "guard" in manifest else None,
    }
    atomic_write_text(
        root / served.SERVED_TEST_CSV,
        served.predictions_csv(test_split.files, test_split.labels, probability),
    )
    atomic_write_text(root / served.SERVED_JSON, json.dumps(record, indent=2) + "\n")
    return record


def register(
    manifest: dict[str, Any], bundle_dir: Path, served_test: dict[str, Any]
) -> dict[str, Any]:
    """Log the bundle to the pipeline's MLflow run and register it as a new model version."""
    import onnx

    with tracking.resume_run() as mlflow:
        info = mlflow.onnx.log_model(
            onnx.load(str(bundle_dir / "model.onnx")),
            name="model",
            registered_model_name=tracking.REGISTERED_MODEL_NAME,
        )
        mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
        quantized = manifest.get("quantization")
        mlflow.set_tags(
            {
                "bundle.version": manifest["version"],
                "onnx.sha256": manifest["onnx_sha256"],
                "bundle.precision": "int8" if quantized else "float32",
            }
        )
        logged = {k: served_test[k] for k in SERVED_LOGGED if served_test[k] is not None}
        mlflow.log_metrics({f"served_test_{k}": v for k, v in logged.items()})
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(
            tracking.REGISTERED_MODEL_NAME, tracking.CANDIDATE_ALIAS, version
        )
        for key in ("onnx_sha256", "version"):
            client.set_model_version_tag(
                tracking.REGISTERED_MODEL_NAME, version, key, str(manifest[key])
            )
        client.set_model_version_tag(
            tracking.REGISTERED_MODEL_NAME,
            version,
            "served_identity",
            served.identity_digest(manifest),
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
    try:
        all_params = load_params()
    except ParamsError as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 1
    params = all_params.export
    model, image_size = load_checkpoint(config.MODEL_FILE)
    test = load_split("test")
    count = params.parity_images
    check = test.images[
        np.linspace(0, len(test.images) - 1, min(count, len(test.images))).astype(int)
    ]
    val_metrics = json.loads((config.METRICS_DIR / "val.json").read_text())
    test_metrics = json.loads((config.METRICS_DIR / "test.json").read_text())
    calibration = None
    try:
        train = load_split("train")
        if params.quantize == "int8":
            calibration = calibration_sample(train.images, train.labels, params.calibration_images)
        fit = calibration_sample(train.images, train.labels, params.guard.fit_images)
        manifest, probability = export(
            model,
            image_size,
            check,
            val_metrics,
            test_metrics,
            params,
            all_params.train.weights,
            config.BUNDLE_DIR,
            calibration=calibration,
            test_split=test,
            guard_images=(fit, load_split("val").images),
        )
        data = json.loads((config.METRICS_DIR / "data.json").read_text())
        record = write_served_record(
            manifest, test, probability, data["fingerprints"]["test"], config.ROOT
        )
        registered = register(manifest, config.BUNDLE_DIR, record["test"])
    except (ParityError, NoReferenceError, QuantizeError, tracking.TrackingUnavailableError) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 1
    quantized = manifest.get("quantization")
    precision = (
        f"INT8, test accuracy {quantized['test_accuracy']:.4f} vs "
        f"{quantized['test_accuracy_float']:.4f} float; "
        if quantized
        else "float; "
    )
    print(
        f"export: {config.BUNDLE_DIR.relative_to(config.ROOT)} version {manifest['version']} "
        f"({precision}parity of the float graph, max |diff| logits "
        f"{manifest['parity']['logits']:.2e}); "
        f"MLflow model {registered['name']} v{registered['version']} "
        f"alias '{tracking.CANDIDATE_ALIAS}'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
