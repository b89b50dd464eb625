"""Training options that only the benchmarks use (bench/seeds.py): knowledge distillation and
moving averages of the weights. They plug into ``pneumonia.train.train`` through its
``batch_loss`` and ``after_step`` hooks and live here, not in the train stage, so that changing
them does not change the stage's dependencies (and retrain every scheduled run)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation (Hinton et al. 2015): the loss of a batch becomes
    ``(1 - weight) * loss + weight * temperature**2 * KL(teacher || student)`` on the logits
    softened by ``temperature``; ``teacher`` maps the batch the student sees (augmented, mixed)
    to logits, for example a deep ensemble's averaged ones."""

    teacher: Callable[[torch.Tensor], torch.Tensor]
    weight: float = 0.5
    temperature: float = 2.0

    def loss(self, x: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.log_softmax(self.teacher(x).float() / self.temperature, dim=1)
        student = F.log_softmax(logits.float() / self.temperature, dim=1)
        kl = F.kl_div(student, target, log_target=True, reduction="batchmean")
        return (1 - self.weight) * loss + self.weight * self.temperature**2 * kl


class WeightAverage:
    """Exponential moving average of a model's weights and BatchNorm statistics over the
    optimiser steps (Polyak averaging, as timm's ModelEmaV2 keeps it), with the start-up bias
    corrected as Adam does: step ``i`` of ``n`` weighs ``(1 - decay) * decay**(n - i)``, the
    weights summing to one. Integer buffers are copied."""

    def __init__(self, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"a weight average's decay must lie in (0, 1), not {decay}")
        self.decay, self.steps = decay, 0
        self.sums: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Add the model's current state (after an optimiser step)."""
        self.steps += 1
        for name, value in model.state_dict().items():
            if not value.dtype.is_floating_point:
                self.sums[name] = value.detach().clone()
            elif name not in self.sums:
                self.sums[name] = value.detach().float() * (1 - self.decay)
            else:
                self.sums[name].mul_(self.decay).add_(value.detach().float(), alpha=1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged state, on the CPU, for ``load_state_dict``."""
        if not self.steps:
            raise ValueError("no step has been averaged")
        correction = 1 - self.decay**self.steps
        return {
            name: (value / correction if value.dtype.is_floating_point else value).cpu()
            for name, value in self.sums.items()
        }


def update_all(averages: Sequence[WeightAverage]) -> Callable[[nn.Module], None] | None:
    """An ``after_step`` hook that adds the model's state to each average (None for none)."""
    if not averages:
        return None

    def after_step(model: nn.Module) -> None:
        for average in averages:
            average.update(model)

    return after_step
