"""Stage ``train``: fit ResNet18 on the prepared train split.

Writes ``models/model.pt`` (``train.select``: the last epoch's weights, or the epoch with the
lowest validation loss), ``metrics/train.json`` (summary) and
``metrics/train_history.csv`` (per-epoch curves, a DVC plot); logs the same to MLflow.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import random
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pneumonia import config, tracking
from pneumonia.model import (
    WeightsUnavailableError,
    build_model,
    predict_logits,
    save_checkpoint,
    to_input,
)
from pneumonia.params import AugmentParams, ParamsError, TrainParams, as_dict
from pneumonia.params import load as load_params
from pneumonia.prepared import PreparedSplit, load_split


def augment(x: torch.Tensor, aug: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch N x 1 x H x W of floats in [0, 1]; returns a new tensor in [0, 1].

    ``hflip``: probability of a horizontal flip; ``rotation_deg``: uniform in [-deg, +deg];
    ``brightness``: multiply by uniform in [1-b, 1+b]; ``contrast``: scale around the image mean
    by uniform in [1-c, 1+c]; ``crop_scale``: random resized crop, area uniform in [s, 1] (1 =
    off); ``gamma``: x ** g, log g uniform in [-log(1+gamma), log(1+gamma)]; ``noise``: Gaussian,
    std uniform in [0, noise].
    """
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    flip = torch.rand(n, generator=generator) < aug.hflip
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if aug.rotation_deg > 0 or aug.crop_scale < 1:
        angle = uniform(-aug.rotation_deg, aug.rotation_deg) * math.pi / 180
        # Crop width and height as fractions of the image (aspect ratio in [3/4, 4/3]) and a
        # random centre that keeps the crop inside; the grid maps output to input coordinates.
        area = uniform(aug.crop_scale, 1.0)
        log_ratio = uniform(math.log(3 / 4), math.log(4 / 3)) if aug.crop_scale < 1 else 0 * area
        ratio = torch.exp(log_ratio)
        width = torch.sqrt(area * ratio).clamp(max=1.0)
        height = torch.sqrt(area / ratio).clamp(max=1.0)
        shift_x = uniform(-1.0, 1.0) * (1 - width)
        shift_y = uniform(-1.0, 1.0) * (1 - height)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([cos * width, -sin * height, shift_x], 1),
                torch.stack([sin * width, cos * height, shift_y], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = uniform(1 - aug.brightness, 1 + aug.brightness).view(n, 1, 1, 1)
    contrast = uniform(1 - aug.contrast, 1 + aug.contrast).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).mul(brightness).clamp(0, 1)
    if aug.gamma > 0:
        limit = math.log(1 + aug.gamma)
        x = x.clamp_min(1e-6).pow(torch.exp(uniform(-limit, limit)).view(n, 1, 1, 1))
    if aug.noise > 0:
        sigma = uniform(0.0, aug.noise).view(n, 1, 1, 1)
        x = (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    return x


def class_weights(labels: np.ndarray, mode: str) -> torch.Tensor | None:
    """``balanced``: n / (classes * n_c) per class, so both classes weigh the same; ``none``."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"train.class_weighting must be 'balanced' or 'none', got {mode!r}")
    counts = np.bincount(labels, minlength=len(config.LABELS)).astype(np.float64)
    return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)


def lr_schedule(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``constant``, or ``cosine``: a linear warm-up over the first 5% of the planned steps, then
    cosine decay to zero at the last planned step (stepped once per batch)."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if kind != "cosine":
        raise ValueError(f"train.schedule must be 'constant' or 'cosine', got {kind!r}")
    warmup = max(1, int(0.05 * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast
    is emulated and slower than fp32 (docs/benchmarks.md)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``fp32``, ``bf16``, or ``auto``: bf16 where the CPU has native bf16 (or on a GPU), else
    fp32."""
    if precision == "auto":
        return "bf16" if device_type != "cpu" or native_bf16() else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision must be 'fp32', 'bf16' or 'auto', got {precision!r}")
    return precision


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train(
    model: nn.Module,
    train_split: PreparedSplit,
    val_split: PreparedSplit,
    params: TrainParams,
    on_epoch: Callable[[dict[str, float], nn.Module], None] = lambda record, model: None,
    device: str = "cpu",
) -> tuple[nn.Module, list[dict[str, float]], dict[str, float]]:
    """Train ``model`` (from ``build_model``); return it (eval mode, on the CPU), the per-epoch
    history, and a record of the epoch whose weights are returned.

    ``params.select``: ``last`` runs every planned epoch and returns the last one (the end
    of the schedule; docs/model-quality.md); ``best_val_loss`` returns the epoch with the
    lowest validation loss and stops early after ``early_stopping_patience`` epochs without
    improvement. ``on_epoch(record, model)`` runs after each epoch. Seeds every generator from
    ``params.seed``. ``device``: where to train (the pipeline uses the CPU; bench/seeds.py
    can use a GPU).
    """
    generator = seed_everything(params.seed)
    device_type = torch.device(device).type
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    weight = class_weights(train_split.labels, params.class_weighting)
    criterion = nn.CrossEntropyLoss(
        weight=None if weight is None else weight.to(device),
        label_smoothing=params.label_smoothing,
    )
    aug = params.augment
    precision = resolve_precision(params.precision, device_type)
    batch_size = params.batch_size
    images = torch.from_numpy(train_split.images)
    labels = torch.from_numpy(train_split.labels)
    epochs = params.epochs
    selection = params.select
    steps_per_epoch = math.ceil(len(images) / batch_size)
    scheduler = lr_schedule(optimizer, params.schedule, epochs * steps_per_epoch)

    history: list[dict[str, float]] = []
    best_loss, best_state, stale = math.inf, None, 0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(images), generator=generator)
        if len(order) % batch_size == 1:  # a batch of one breaks BatchNorm
            order = order[:-1]
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(
            range(0, len(order), batch_size),
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            file=sys.stderr,
            disable=None,  # no bar where stderr is not a terminal: the epoch line below says it
        )
        for start in bar:
            idx = order[start : start + batch_size]
            x = augment(images[idx].float().div(255.0).unsqueeze(1), aug, generator)
            x = to_input(x).to(device).contiguous(memory_format=torch.channels_last)
            y = labels[idx].to(device)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")

        val_logits = torch.from_numpy(predict_logits(model, val_split.images, batch_size, device))
        val_y = torch.from_numpy(val_split.labels)
        record = {
            "epoch": epoch,
            "train_loss": total_loss / seen,
            "train_accuracy": correct / seen,
            "val_loss": F.cross_entropy(val_logits, val_y, weight=weight).item(),
            "val_accuracy": (val_logits.argmax(1) == val_y).float().mean().item(),
            "epoch_seconds": time.perf_counter() - started,
        }
        history.append(record)
        on_epoch(record, model)
        print(
            f"epoch {epoch}: train loss {record['train_loss']:.4f} acc "
            f"{record['train_accuracy']:.3f} | val loss {record['val_loss']:.4f} acc "
            f"{record['val_accuracy']:.3f} | {record['epoch_seconds']:.0f}s",
            file=sys.stderr,
        )
        if selection == "last":
            continue
        if record["val_loss"] < best_loss:
            best_loss, best_state, stale = record["val_loss"], copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= params.early_stopping_patience:
                print(f"early stopping: no val loss improvement in {stale} epochs", file=sys.stderr)
                break
    if selection == "last":
        kept = history[-1]
    else:
        assert best_state is not None
        model.load_state_dict(best_state)
        kept = min(history, key=lambda r: r["val_loss"])  # the first of equals, as above
    return model.to("cpu", memory_format=torch.contiguous_format).eval(), history, kept


def summarize(history: list[dict[str, float]], kept: dict[str, float]) -> dict[str, float]:
    """metrics/train.json: the epochs run, the epoch kept, and the one with the lowest val loss."""
    best = min(history, key=lambda r: r["val_loss"])
    return {
        "epochs_run": len(history),
        "kept_epoch": kept["epoch"],
        "val_loss": kept["val_loss"],
        "val_accuracy": kept["val_accuracy"],
        "best_epoch": best["epoch"],
        "best_val_loss": best["val_loss"],
        "train_seconds": sum(r["epoch_seconds"] for r in history),
    }


def write_history(history: list[dict[str, float]], path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        for row in history:
            writer.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    try:
        all_params = load_params()
    except ParamsError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    params = all_params.train
    train_split, val_split = load_split("train"), load_split("val")
    try:
        torch.manual_seed(params.seed)  # the head's init, before train() reseeds
        # before MLflow opens a run for nothing
        model = build_model(params.weights, params.input_norm)
    except WeightsUnavailableError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    try:
        tracking.start_run(as_dict(all_params))
    except tracking.TrackingUnavailableError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    with tracking.resume_run() as mlflow:

        def log_epoch(record: dict[str, float], _model: nn.Module) -> None:
            step = int(record["epoch"])
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=step)

        model, history, kept = train(model, train_split, val_split, params, log_epoch)
        summary = summarize(history, kept)
        mlflow.log_metrics({f"train_{k}": float(v) for k, v in summary.items()})
        mlflow.set_tag("train.precision_used", resolve_precision(params.precision))

    save_checkpoint(model, config.MODEL_FILE, train_split.images.shape[-1], params.weights)
    (config.METRICS_DIR / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_history(history, config.METRICS_DIR / "train_history.csv")
    print(f"train: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
