"""``params.yaml`` as typed, validated objects: one dataclass per section, no defaults here.

Every value comes from the file: a missing key, an unknown key or a value of the wrong type or
outside its allowed set fails at load time with a message that names the key. Stage code takes
these objects, never a dict, so a partial dict cannot silently select another model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml


class ParamsError(ValueError):
    """``params.yaml`` (or an override) does not match the schema; the message names the key."""


@dataclass(frozen=True)
class PrepareParams:
    image_size: int
    val_fraction: float
    seed: int

    def check(self) -> None:
        _require(self.image_size >= 32, "prepare.image_size", "at least 32")
        _require(0 < self.val_fraction < 1, "prepare.val_fraction", "between 0 and 1")


@dataclass(frozen=True)
class AugmentParams:
    hflip: float
    rotation_deg: float
    brightness: float
    contrast: float
    crop_scale: float
    gamma: float
    noise: float
    mixup: float
    cutmix: float

    def check(self) -> None:
        _require(0 <= self.hflip <= 1, "train.augment.hflip", "a probability in [0, 1]")
        _require(0 < self.crop_scale <= 1, "train.augment.crop_scale", "in (0, 1]")
        for name in ("rotation_deg", "brightness", "contrast", "gamma", "noise", "mixup", "cutmix"):
            _require(getattr(self, name) >= 0, f"train.augment.{name}", ">= 0")


@dataclass(frozen=True)
class TrainParams:
    weights: str  # imagenet | none | a path to a resnet18 state dict
    epochs: int
    batch_size: int
    lr: float
    class_weighting: Literal["balanced", "none"]
    select: Literal["last", "best_val_loss"]
    early_stopping_patience: int
    precision: Literal["auto", "fp32", "bf16"]
    input_norm: Literal["per_image", "fixed"]
    label_smoothing: float
    schedule: Literal["cosine", "constant"]
    low_res_epochs: int
    low_res_size: int
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    processes: int | Literal["auto"]
    loader_workers: int | Literal["auto"]
    augment: AugmentParams

    def check(self) -> None:
        _require(self.epochs >= 1, "train.epochs", "at least 1")
        _require(self.processes == "auto" or self.processes >= 1, "train.processes", ">= 1")
        _require(
            self.loader_workers == "auto" or self.loader_workers >= 0,
            "train.loader_workers",
            ">= 0",
        )
        _require(self.batch_size >= 2, "train.batch_size", "at least 2 (BatchNorm)")
        _require(self.lr > 0, "train.lr", "> 0")
        _require(self.early_stopping_patience >= 1, "train.early_stopping_patience", ">= 1")
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing", "in [0, 1)")
        _require(
            0 <= self.low_res_epochs < self.epochs,
            "train.low_res_epochs",
            f"in [0, train.epochs) (at least the last epoch at the served size), got "
            f"{self.low_res_epochs} with train.epochs {self.epochs}",
        )
        _require(self.low_res_size >= 32, "train.low_res_size", "at least 32")
        self.augment.check()


@dataclass(frozen=True)
class EvaluateParams:
    threshold_method: Literal["min_sensitivity", "youden"]
    calibration: Literal["platt", "temperature", "none"]
    calibrate_on: Literal["validation", "site"]
    min_sensitivity: float

    def check(self) -> None:
        _require(0 < self.min_sensitivity <= 1, "evaluate.min_sensitivity", "in (0, 1]")


@dataclass(frozen=True)
class GuardParams:
    components: int
    fit_images: int
    quantile: float
    min_side: int
    min_contrast: float
    max_colour: float

    def check(self) -> None:
        _require(self.components >= 1, "export.guard.components", "at least 1")
        _require(self.fit_images > self.components, "export.guard.fit_images", "> components")
        _require(0.5 < self.quantile <= 1, "export.guard.quantile", "in (0.5, 1]")
        _require(self.min_side >= 1, "export.guard.min_side", ">= 1")
        _require(0 <= self.min_contrast < 1, "export.guard.min_contrast", "in [0, 1)")
        _require(0 < self.max_colour <= 1, "export.guard.max_colour", "in (0, 1]")


@dataclass(frozen=True)
class ExportParams:
    opset: int
    parity_images: int
    parity_tolerance: float
    quantize: Literal["int8", "none"]
    calibration_images: int
    max_accuracy_drop: float
    guard: GuardParams

    def check(self) -> None:
        self.guard.check()
        _require(self.opset >= 18, "export.opset", ">= 18 (the torch.export-based exporter)")
        _require(self.parity_images >= 1, "export.parity_images", "at least 1")
        _require(self.parity_tolerance > 0, "export.parity_tolerance", "> 0")
        _require(self.calibration_images >= 1, "export.calibration_images", "at least 1")
        _require(self.max_accuracy_drop >= 0, "export.max_accuracy_drop", ">= 0")


@dataclass(frozen=True)
class BehaviourParams:
    max_flip_rate: float
    rotation_deg: float
    brightness: float
    jpeg_quality: int
    min_refused: float
    easy_confidence: float
    max_easy_errors: float

    def check(self) -> None:
        key = "gate.behaviour."
        _require(0 <= self.max_flip_rate <= 1, key + "max_flip_rate", "in [0, 1]")
        _require(0 < self.rotation_deg <= 45, key + "rotation_deg", "in (0, 45]")
        _require(0 < self.brightness < 1, key + "brightness", "in (0, 1)")
        _require(1 <= self.jpeg_quality <= 100, key + "jpeg_quality", "in [1, 100]")
        _require(0 <= self.min_refused <= 1, key + "min_refused", "in [0, 1]")
        _require(0.5 < self.easy_confidence < 1, key + "easy_confidence", "in (0.5, 1)")
        _require(0 <= self.max_easy_errors <= 1, key + "max_easy_errors", "in [0, 1]")


@dataclass(frozen=True)
class GateParams:
    min_sensitivity: float
    min_accuracy_gain: float
    require_significant_gain: bool
    significance_level: float
    bootstrap_resamples: int
    behaviour: BehaviourParams

    def check(self) -> None:
        _require(0 <= self.min_sensitivity <= 1, "gate.min_sensitivity", "in [0, 1]")
        _require(0 < self.significance_level < 1, "gate.significance_level", "in (0, 1)")
        _require(self.bootstrap_resamples >= 100, "gate.bootstrap_resamples", "at least 100")
        self.behaviour.check()


@dataclass(frozen=True)
class Params:
    prepare: PrepareParams
    train: TrainParams
    evaluate: EvaluateParams
    export: ExportParams
    gate: GateParams

    def check(self) -> None:
        for section in dataclasses.fields(self):
            getattr(self, section.name).check()
        _require(
            self.train.low_res_epochs == 0 or self.train.low_res_size < self.prepare.image_size,
            "train.low_res_size",
            f"smaller than prepare.image_size ({self.prepare.image_size}) when "
            "train.low_res_epochs > 0",
        )


def _require(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ParamsError(f"params.yaml: {key} must be {what}")


def _convert(value: Any, kind: Any, key: str) -> Any:
    """``value`` checked against the annotation ``kind`` (YAML ints pass as floats)."""
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, key)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            try:
                return _convert(value, option, key)
            except ParamsError:
                pass
        allowed = " | ".join(
            str(a) for o in typing.get_args(kind) for a in (typing.get_args(o) or [o.__name__])
        )
        raise ParamsError(f"params.yaml: {key} is {value!r}; allowed: {allowed}")
    if typing.get_origin(kind) is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            choices = " | ".join(str(a) for a in allowed)
            raise ParamsError(f"params.yaml: {key} is {value!r}; allowed: {choices}")
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ParamsError(f"params.yaml: {key} is {value!r}; expected a {kind.__name__}")


def from_mapping(cls: type, raw: Any, key: str) -> Any:
    """Build the dataclass ``cls`` from the mapping ``raw`` (the section ``key`` of the file)."""
    if not isinstance(raw, dict):
        where = key or "the file"
        raise ParamsError(f"params.yaml: {where} must be a mapping, not {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key {', '.join(_join(key, u) for u in unknown)}"
            f" (the section takes {', '.join(names)})"
        )
    missing = [n for n in names if n not in raw]
    if missing:
        raise ParamsError(
            f"params.yaml: missing {', '.join(_join(key, m) for m in missing)}: every parameter"
            " has its value in params.yaml, none in the code"
        )
    return cls(**{n: _convert(raw[n], hints[n], _join(key, n)) for n in names})


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def parse(raw: Any) -> Params:
    """Validated ``Params`` from the parsed YAML of a whole ``params.yaml``."""
    params = from_mapping(Params, raw, "")
    params.check()
    return params


def load(path: Path | None = None) -> Params:
    """Read and validate ``params.yaml`` (the project's, or ``path``)."""
    from pneumonia import config

    path = Path(path or config.PARAMS_FILE)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    try:
        return parse(raw)
    except ParamsError as exc:
        raise ParamsError(str(exc).replace("params.yaml", str(path), 1)) from None


def as_dict(params: Any) -> dict[str, Any]:
    """Plain nested dict (for MLflow's params and reports)."""
    return dataclasses.asdict(params)
