"""The network: ResNet18 with a 2-class head, its input transform, and batch inference."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models import ResNet, ResNet18_Weights
from torchvision.models.resnet import BasicBlock

from pneumonia.config import LABELS, NORM_MEAN, NORM_STD

INPUT_NORMS = ("fixed", "per_image")


class WeightsUnavailableError(RuntimeError):
    """The requested initial weights cannot be had; the message names the ways out."""


class XrayResNet(ResNet):
    """torchvision's ResNet18, optionally standardising each image inside the network.

    ``input_norm="per_image"`` rescales every input channel to zero mean and unit variance per
    image, so exposure and contrast differences between hospitals and devices do not reach the
    first convolution. Being part of the graph, it is exported to ONNX with the weights and the
    serving code does not change. It has no parameters: state dicts are plain ResNet18 ones.
    """

    def __init__(self, input_norm: str = "fixed"):
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"train.input_norm must be one of {INPUT_NORMS}, not {input_norm!r}")
        super().__init__(BasicBlock, [2, 2, 2, 2])
        self.input_norm = input_norm

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "fixed":
            return x
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True)
        return (x - mean) / (std + 1e-5)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        return super()._forward_impl(self.standardize(x))


def resnet18(input_norm: str = "fixed") -> XrayResNet:
    return XrayResNet(input_norm)


def build_model(weights: str, input_norm: str = "fixed") -> nn.Module:
    """ResNet18 with a new ``len(LABELS)``-class head.

    ``weights``: ``imagenet`` (torchvision's ImageNet-1k weights, downloaded on first use),
    ``none`` (random init) or the path of a ResNet18 state dict (its ``fc`` layer is replaced).
    Never falls back from one to another. ``input_norm``: see ``XrayResNet``.
    """
    model = resnet18(input_norm)
    if weights == "imagenet":
        try:
            model.load_state_dict(ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False))
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise WeightsUnavailableError(
                f"train.weights is 'imagenet' but torchvision could not load the ImageNet "
                f"weights ({exc.__class__.__name__}: {exc}). Either allow the download "
                "(or put resnet18-f37072fd.pth into $TORCH_HOME/hub/checkpoints/), or train "
                "from random init or a local file: `dvc exp run -S train.weights=none` or "
                "`dvc exp run -S train.weights=path/to/resnet18.pth`."
            ) from exc
    elif weights != "none":
        model.load_state_dict(_load_backbone_state(Path(weights)), strict=False)
    model.fc = nn.Linear(model.fc.in_features, len(LABELS))
    return model


def _load_backbone_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"train.weights is '{path}', which is not a file. Use 'imagenet', 'none' or the "
            "path of a ResNet18 state dict (.pth)."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k for k in resnet18().state_dict() if not k.startswith("fc.")}
    missing, unexpected = expected - backbone.keys(), backbone.keys() - expected
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"{path} is not a ResNet18 state dict: {len(missing)} missing keys "
            f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {sorted(unexpected)[:3]})."
        )
    return backbone


def to_input(images: torch.Tensor) -> torch.Tensor:
    """Grayscale batch (N x H x W uint8, or N x 1 x H x W float in [0, 1]) -> normalised N x 3."""
    x = images.float().div(255.0).unsqueeze(1) if images.dtype == torch.uint8 else images
    mean = torch.tensor(NORM_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(NORM_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: np.ndarray, batch_size: int = 64, device: str = "cpu"
) -> np.ndarray:
    """Logits (N x classes) for a uint8 grayscale batch, in eval mode (``model`` on ``device``)."""
    model.eval()
    out = [
        model(to_input(torch.from_numpy(np.array(images[i : i + batch_size]))).to(device))
        .float()
        .cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), np.float32)


def save_checkpoint(model: nn.Module, path: Path, image_size: int, weights: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "image_size": image_size,
            "labels": list(LABELS),
            "init": weights,
            "input_norm": getattr(model, "input_norm", "fixed"),
        },
        path,
    )


def load_checkpoint(path: Path) -> tuple[nn.Module, int]:
    """Model (eval mode) and its input size from a checkpoint written by ``save_checkpoint``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model("none", checkpoint.get("input_norm", "fixed"))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, int(checkpoint["image_size"])
