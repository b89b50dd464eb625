"""Stage ``train``: fit ResNet18 on the prepared train split.

Writes ``models/model.pt`` (``train.select``: the last epoch's weights, or the epoch with the
lowest validation loss), ``metrics/train.json`` (summary) and
``metrics/train_history.csv`` (per-epoch curves, a DVC plot); logs the same to MLflow.

Trains where ``train.device`` says (CUDA when present), in ``train.processes`` data-parallel
processes: with more than one, ``python -m pneumonia.train`` starts itself again under
``torchrun`` (DistributedDataParallel, NCCL on GPUs, gloo on the CPU) and only the main process
tracks and writes.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

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
from pneumonia.params import AugmentParams, Params, ParamsError, TrainParams, as_dict
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


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, aug: AugmentParams, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup or CutMix within a batch: ``(images, partner labels, lam)``; the loss of a batch is
    ``lam * loss(labels) + (1 - lam) * loss(partner labels)``.

    ``mixup``: blend each image with a partner image, weight ``lam`` ~ Beta(a, a); ``cutmix``:
    paste a box of area about ``1 - lam`` from the partner (lam is then the kept area). With
    both on, each batch takes one of the two at random; with both off, nothing changes
    (``lam`` = 1, partner = itself).
    """
    kinds = [k for k in ("mixup", "cutmix") if getattr(aug, k) > 0]
    if not kinds or len(y) < 2:
        return x, y, 1.0
    kind = kinds[int(rng.integers(len(kinds)))]
    lam = float(rng.beta(getattr(aug, kind), getattr(aug, kind)))
    partner = torch.from_numpy(rng.permutation(len(y)))
    if kind == "mixup":
        return lam * x + (1 - lam) * x[partner], y[partner], lam
    height, width = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    h, w = round(height * cut), round(width * cut)
    top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
    x = x.clone()
    x[..., top : top + h, left : left + w] = x[partner][..., top : top + h, left : left + w]
    return x, y[partner], 1 - h * w / (height * width)


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Processes:
    """Where this process trains: its rank among ``world`` data-parallel processes, and device."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda`` (which must be present), or ``auto``: CUDA when present."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but PyTorch sees no CUDA device here")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_processes(processes: int | str, device: str) -> int:
    """``auto``: one process per GPU on CUDA, else one."""
    if processes == "auto":
        return max(1, torch.cuda.device_count()) if device == "cuda" else 1
    return int(processes)


def resolve_loader_workers(workers: int | str, device_type: str, world: int) -> int:
    """``auto``: none on the CPU (its cores run the model; a worker would take one), else up to
    8 per process from the cores there are."""
    if workers != "auto":
        return int(workers)
    if device_type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // world - 1))


def train_size(params: TrainParams, epoch: int, full_size: int) -> int:
    """The side of epoch ``epoch``'s training images: ``low_res_size`` for the first
    ``low_res_epochs`` epochs (progressive resizing: a third of the work per image at 128 px
    against 224), ``full_size`` (the prepared, served size) after; validation is always at the
    full size."""
    return params.low_res_size if epoch <= params.low_res_epochs else full_size


class AugmentedBatches(torch.utils.data.Dataset):
    """Item ``(epoch, b)``: this process's share of the b-th global batch of ``epoch``, augmented.

    The epoch's order comes from ``(seed, epoch)`` (the same in every process) and each batch's
    augmentation from ``(seed, epoch, b, rank)``, so a run gives the same result with any number
    of loader workers (which keep their own copy of this object: the epoch travels in the key).
    A trailing global batch too small for every process to get two images (BatchNorm needs two)
    is dropped.
    """

    def __init__(self, split: PreparedSplit, params: TrainParams, processes: Processes):
        self.images, self.labels = split.images, split.labels
        self.params, self.processes = params, processes
        self._cached: tuple[int, list[np.ndarray]] = (0, [])

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This process's image indices, batch by batch, in ``epoch``."""
        if self._cached[0] != epoch:
            size, world = self.params.batch_size, self.processes.world
            generator = torch.Generator().manual_seed(_mix(self.params.seed, epoch))
            order = torch.randperm(len(self.labels), generator=generator).numpy()
            batches = [order[start : start + size] for start in range(0, len(order), size)]
            if batches and len(batches[-1]) < 2 * world:
                batches.pop()
            self._cached = (epoch, [batch[self.processes.rank :: world] for batch in batches])
        return self._cached[1]

    def steps(self) -> int:
        """Batches per epoch (the same in every epoch and process)."""
        return len(self.batches(1))

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, ...]:
        """Images, labels, partner labels and ``lam`` (see ``mix_batch``; 1 when mixing is off)."""
        epoch, b = key
        idx = self.batches(epoch)[b]
        seed = _mix(self.params.seed, epoch, b, self.processes.rank)
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).float().div(255.0)
        x = augment(x.unsqueeze(1), self.params.augment, torch.Generator().manual_seed(seed))
        side = train_size(self.params, epoch, x.shape[-1])
        if side != x.shape[-1]:
            # Antialiased, so that a low-resolution epoch sees what a downscaled X-ray shows.
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        y = torch.from_numpy(self.labels[idx])
        # Its own stream, so that turning mixing on leaves the other augmentations as they were.
        rng = np.random.default_rng(_mix(seed, 1))
        x, partner, lam = mix_batch(x, y, self.params.augment, rng)
        return to_input(x), y, partner, torch.tensor(lam)


class EpochSampler(torch.utils.data.Sampler):
    """The keys ``(epoch, b)`` of one epoch of ``AugmentedBatches`` (set ``epoch`` before each)."""

    def __init__(self, steps: int):
        self.steps, self.epoch = steps, 1

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter([(self.epoch, b) for b in range(self.steps)])


def _mix(*numbers: int) -> int:
    """One 63-bit seed from several integers (stable across processes and runs)."""
    digest = hashlib.sha256(",".join(map(str, numbers)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _all_sum(values: list[float], processes: Processes) -> list[float]:
    """Element-wise sum over all processes."""
    if processes.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=processes.device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _from_main(flag: bool, processes: Processes) -> bool:
    """The main process's ``flag``, in every process."""
    if processes.world == 1:
        return flag
    tensor = torch.tensor([int(flag)], device=processes.device)
    torch.distributed.broadcast(tensor, src=0)
    return bool(tensor.item())


def train(
    model: nn.Module,
    train_split: PreparedSplit,
    val_split: PreparedSplit,
    params: TrainParams,
    on_epoch: Callable[[dict[str, float], nn.Module], None] = lambda record, model: None,
    processes: Processes | None = None,
    batch_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, list[dict[str, float]], dict[str, float]]:
    """Train ``model`` (from ``build_model``); return it (eval mode, on the CPU), the per-epoch
    history, and a record of the epoch whose weights are returned.

    ``params.select``: ``last`` runs every planned epoch and returns the last one (the end
    of the schedule; docs/model-quality.md); ``best_val_loss`` returns the epoch with the
    lowest validation loss and stops early after ``early_stopping_patience`` epochs without
    improvement. ``on_epoch(record, model)`` runs after each epoch, in the main process.
    ``processes``: this process's place among data-parallel processes (an initialised
    ``torch.distributed`` group when there are several) and its device; by default one process
    on the CPU. Each process trains on its share of every batch of ``params.batch_size``; the
    main process validates and decides, and its returned model is the one to keep.
    ``batch_loss(x, logits, loss)``: replaces a batch's loss (bench/training.py's distillation);
    ``after_step(model)``: runs after every optimiser step (its weight averages). Hooks for the
    benchmarks, which keep their code out of this stage's dependencies.
    """
    processes = processes or Processes()
    device = processes.device
    device_type = torch.device(device).type
    seed_everything(params.seed)
    model = model.to(device, memory_format=torch.channels_last)
    net = model
    if processes.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if device_type == "cuda" else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    weight = class_weights(train_split.labels, params.class_weighting)
    criterion = nn.CrossEntropyLoss(
        weight=None if weight is None else weight.to(device),
        label_smoothing=params.label_smoothing,
    )
    precision = resolve_precision(params.precision, device_type)
    batches = AugmentedBatches(train_split, params, processes)
    sampler = EpochSampler(batches.steps())
    workers = resolve_loader_workers(params.loader_workers, device_type, processes.world)
    loader = torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device_type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    epochs = params.epochs
    scheduler = lr_schedule(optimizer, params.schedule, epochs * sampler.steps)

    history: list[dict[str, float]] = []
    best_loss, best_state, stale = math.inf, None, 0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        net.train()
        sampler.epoch = epoch
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            file=sys.stderr,
            disable=None if processes.is_main else True,  # a bar on a terminal only
        )
        for x, y, partner, lam in bar:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = net(x)
                loss = criterion(logits.float(), y)
                if lam < 1:
                    partner = partner.to(device, non_blocking=True)
                    loss = lam * loss + (1 - lam) * criterion(logits.float(), partner)
                if batch_loss is not None:
                    loss = batch_loss(x, logits, loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step(model)
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
        total_loss, correct, seen = _all_sum([total_loss, correct, seen], processes)

        record: dict[str, float] = {"epoch": epoch}
        stop = False
        if processes.is_main:
            val_logits = torch.from_numpy(
                predict_logits(model, val_split.images, params.batch_size, device)
            )
            val_y = torch.from_numpy(val_split.labels)
            record |= {
                "train_loss": total_loss / seen,
                "train_accuracy": correct / seen,
                "val_loss": F.cross_entropy(val_logits, val_y, weight=weight).item(),
                "val_accuracy": (val_logits.argmax(1) == val_y).float().mean().item(),
                "epoch_seconds": time.perf_counter() - started,
                "train_image_size": train_size(params, epoch, train_split.images.shape[-1]),
            }
            on_epoch(record, model)
            print(
                f"epoch {epoch}: train loss {record['train_loss']:.4f} acc "
                f"{record['train_accuracy']:.3f} | val loss {record['val_loss']:.4f} acc "
                f"{record['val_accuracy']:.3f} | {record['epoch_seconds']:.0f}s",
                file=sys.stderr,
            )
            if params.select == "best_val_loss":
                if record["val_loss"] < best_loss:
                    best_loss, stale = record["val_loss"], 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
                    stop = stale >= params.early_stopping_patience
        history.append(record)
        if _from_main(stop, processes):
            if processes.is_main:
                print(f"early stopping: no val loss improvement in {stale} epochs", file=sys.stderr)
            break
    if params.select == "last" or not processes.is_main:
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
        device = resolve_device(all_params.train.device)
        world = resolve_processes(all_params.train.processes, device)
    except (ParamsError, ValueError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    if world > 1 and "LOCAL_RANK" not in os.environ:
        # One process per device: this same entry point, started by torchrun.
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        os.execv(sys.executable, [*launch, f"--nproc-per-node={world}", "-m", "pneumonia.train"])
    processes = start_processes(device)
    try:
        return train_and_save(all_params, processes)
    finally:
        if processes.world > 1:
            torch.distributed.destroy_process_group()


def start_processes(device: str) -> Processes:
    """This process's place: alone, or one of torchrun's (``WORLD_SIZE``, ``LOCAL_RANK``...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(device=device)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    else:
        # torchrun gives each process one thread; share the cores instead.
        local_world = int(os.environ["LOCAL_WORLD_SIZE"])
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Processes(rank=torch.distributed.get_rank(), world=world, device=device)


def train_and_save(all_params: Params, processes: Processes) -> int:
    """The stage in this process: train; the main process also tracks and writes the outputs."""
    params = all_params.train
    train_split, val_split = load_split("train"), load_split("val")
    try:
        torch.manual_seed(params.seed)  # the head's init, before train() reseeds
        # before MLflow opens a run for nothing
        model = build_model(params.weights, params.input_norm)
    except WeightsUnavailableError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    if not processes.is_main:
        train(model, train_split, val_split, params, processes=processes)
        return 0
    try:
        tracking.start_run(as_dict(all_params))
    except tracking.TrackingUnavailableError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    with tracking.resume_run() as mlflow:

        def log_epoch(record: dict[str, float], _model: nn.Module) -> None:
            step = int(record["epoch"])
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=step)

        model, history, kept = train(model, train_split, val_split, params, log_epoch, processes)
        summary = summarize(history, kept)
        mlflow.log_metrics({f"train_{k}": float(v) for k, v in summary.items()})
        device_type = torch.device(processes.device).type
        mlflow.set_tags(
            {
                "train.precision_used": resolve_precision(params.precision, device_type),
                "train.device_used": device_type,
                "train.processes_used": str(processes.world),
            }
        )

    save_checkpoint(model, config.MODEL_FILE, train_split.images.shape[-1], params.weights)
    (config.METRICS_DIR / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_history(history, config.METRICS_DIR / "train_history.csv")
    print(f"train: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
