"""Self-supervised pre-training of the ResNet18 backbone on the training images (SimCLR), for
issue 15's "a self-supervised chest-X-ray backbone": no labels, no validation or test image.

    python bench/ssl_pretrain.py --prepared DIR [--data RAW] --out backbone.pth [--device cuda]
                                 [--minutes 3 | --epochs N]
    python bench/ssl_pretrain.py --prepared DIR --out backbone.pth --quick    # tiny (tests)

Each training image is augmented twice, more strongly than the supervised training does
(random resized crop down to ``CROP_SCALE`` of the area, rotation, brightness, contrast, gamma,
noise: ``train.augment`` with these settings); the network (``train.input_norm`` as in
params.yaml) and a projection head learn to tell each image's pair among the batch's 2N views
(NT-Xent loss, temperature ``TEMPERATURE``). Trains for ``--epochs``, or as many epochs as fit
in ``--minutes``, at least 2 (the second epoch times the rest; session 9's measurement, before that
fix, timed from the first and used 104 s of 3 min), with a cosine schedule. Writes the backbone's
state dict (no head): a file ``train.weights`` accepts (``bench/seeds.py --weights``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumonia.model import resnet18, to_input
from pneumonia.params import load as load_params
from pneumonia.prepare import prepare
from pneumonia.prepared import load_split
from pneumonia.train import EpochSampler, _mix, augment, resolve_loader_workers

CROP_SCALE = 0.3
TEMPERATURE = 0.2
PROJECTION = 128


class Views(torch.utils.data.Dataset):
    """Batch ``b`` of epoch ``e``: two augmented views of the same training images."""

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, augment_params):
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.augment = augment_params

    def order(self, epoch: int) -> list[np.ndarray]:
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(len(self.images), generator=generator).numpy()
        full = len(order) // self.batch_size * self.batch_size  # equal batches for NT-Xent
        return [order[i : i + self.batch_size] for i in range(0, full, self.batch_size)]

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, b = key
        idx = np.sort(self.order(epoch)[b])
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).float().div(255.0)
        views = [
            augment(x.unsqueeze(1), self.augment, torch.Generator().manual_seed(_mix(s, epoch, b)))
            for s in (self.seed, self.seed + 1)
        ]
        return to_input(views[0]), to_input(views[1])


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its pair out of the other 2N - 1 views (cosine
    similarity / temperature, cross-entropy)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    pairs = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, pairs)


def learning_rate_factor(step: int, steps_per_epoch: int, epochs: int) -> float:
    """A linear warm-up over the first epoch, then a cosine decay to 0 over the other
    ``epochs - 1``."""
    if step < steps_per_epoch:
        return (step + 1) / steps_per_epoch
    progress = (step - steps_per_epoch) / max(1, (epochs - 1) * steps_per_epoch)
    return 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(
    images: np.ndarray,
    input_norm: str,
    augment_params,
    device: str = "cpu",
    batch_size: int = 256,
    epochs: int | None = None,
    minutes: float | None = None,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[nn.Module, list[dict]]:
    """The SimCLR-trained backbone (eval mode, on the CPU, ``fc`` the identity) and the loss of
    each epoch; ``epochs``, or as many as fit in ``minutes``."""
    torch.manual_seed(seed)
    backbone = resnet18(input_norm)
    backbone.fc = nn.Identity()
    head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Linear(512, PROJECTION))
    model = nn.Sequential(backbone, head).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    views = Views(images, batch_size, seed, augment_params)
    device_type = torch.device(device).type
    workers = resolve_loader_workers("auto", device_type, 1)
    sampler = EpochSampler(len(views))
    loader = torch.utils.data.DataLoader(
        views,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device_type == "cuda",
        persistent_workers=workers > 0,
    )
    history: list[dict] = []
    planned = epochs or 1
    step, steps_per_epoch = 0, len(views)
    epoch = 0
    while epoch < planned:
        epoch += 1
        started = time.perf_counter()
        model.train()
        total = 0.0
        sampler.epoch = epoch
        for x1, x2 in loader:
            for group in optimizer.param_groups:
                group["lr"] = lr * learning_rate_factor(step, steps_per_epoch, planned)
            x1, x2 = (
                v.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                for v in (x1, x2)
            )
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
                loss = nt_xent(model(x1), model(x2), TEMPERATURE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            step += 1
        seconds = time.perf_counter() - started
        if minutes is not None and epochs is None and epoch <= 2:
            # The first epoch includes the loader's start: the second one times the rest.
            left = minutes * 60 - sum(h["seconds"] for h in history) - seconds
            if epoch == 1:  # provisional, for the schedule of the second epoch
                planned = max(2, int(minutes * 60 / seconds))
            else:
                planned = max(2, 2 + int(left / seconds))
        history.append({"epoch": epoch, "loss": total / steps_per_epoch, "seconds": seconds})
        print(
            f"epoch {epoch}/{planned}: loss {history[-1]['loss']:.4f} | {seconds:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return backbone.to("cpu").eval(), history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, required=True, help="prepared splits (train)")
    parser.add_argument("--data", type=Path, help="raw dataset to prepare into --prepared first")
    parser.add_argument("--out", type=Path, required=True, help="the backbone's state dict")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--minutes", type=float, default=3.0, help="when --epochs is not given")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="2 epochs of 8 images (tests)")
    args = parser.parse_args(argv)
    all_params = load_params()
    params = all_params.train
    if args.data and not (args.prepared / "train.npz").is_file():
        prep = all_params.prepare
        prepare(args.data, prep.image_size, prep.val_fraction, prep.seed, args.prepared)
    images = load_split("train", args.prepared).images
    batch_size = 4 if args.quick else args.batch_size
    if len(images) < 2 * batch_size:
        parser.error(f"{args.prepared}: {len(images)} training images are too few to pre-train")
    strong = replace(params.augment, crop_scale=CROP_SCALE, brightness=0.4, contrast=0.4)
    images = images[:8] if args.quick else images
    backbone, history = pretrain(
        images,
        params.input_norm,
        strong,
        args.device,
        batch_size=batch_size,
        epochs=2 if args.quick else args.epochs,
        minutes=None if args.quick else args.minutes,
    )
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    summary = {"images": len(images), "epochs": len(history), "history": history}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"ssl: {len(history)} epochs, loss {history[0]['loss']:.4f} -> "
        f"{history[-1]['loss']:.4f}; backbone in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
