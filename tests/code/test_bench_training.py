"""Benchmark-only training options (bench/training.py) through the train stage's hooks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bench.training import Distillation, WeightAverage, update_all
from pneumonia.model import build_model
from tests.code.test_train import TRAIN_PARAMS


def test_distillation_pulls_the_student_to_its_teacher(small_dataset):
    """With all the weight on the teacher, a student learns the teacher's answers, not the
    labels: here a teacher that calls every image NORMAL, seeing each batch the student sees."""
    from pneumonia.model import predict_logits
    from pneumonia.prepare import prepare
    from pneumonia.train import train

    splits, _ = prepare(small_dataset, 32, 0.2, seed=1, out_dir=small_dataset.parent / "p")
    params = replace(TRAIN_PARAMS, epochs=2, select="last")
    seen = []

    def teacher(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return torch.tensor([[4.0, -4.0]]).expand(len(x), 2)

    distilled = Distillation(teacher, weight=1.0, temperature=1.0)
    normal = []
    for batch_loss in (None, distilled.loss):
        model, _, _ = train(
            torch.manual_seed(0) and build_model("none"),
            splits["train"],
            splits["val"],
            params,
            batch_loss=batch_loss,
        )
        logits = torch.from_numpy(predict_logits(model, splits["val"].images))
        normal.append(torch.softmax(logits, 1)[:, 0].mean().item())
    assert normal[1] > 0.8 and normal[1] > normal[0] + 0.3, normal  # seen: 0.33 -> 0.88
    steps = -(-len(splits["train"].labels) // params.batch_size)  # the last batch is smaller
    assert len(seen) == params.epochs * steps and all(s[1:] == (3, 32, 32) for s in seen)


def test_weight_average_is_the_bias_corrected_moving_average_of_the_steps():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).train()
    average, seen = WeightAverage(0.5), []
    for _ in range(3):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        model(torch.randn(4, 2))  # moves the BatchNorm statistics and its step count
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        average.update(model)
    state = average.state_dict()
    weights = [0.5 * 0.5**2, 0.5 * 0.5, 0.5]  # (1 - d) d^(n - i), then / (1 - d^n) = 0.875
    for name, value in state.items():
        if name.endswith("num_batches_tracked"):
            assert int(value) == 3  # integers are copied, not averaged
        else:
            expected = sum(w * s[name] for w, s in zip(weights, seen, strict=True)) / 0.875
            torch.testing.assert_close(value, expected)
    assert not torch.allclose(state["0.weight"], seen[-1]["0.weight"])
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(1.0)
    with pytest.raises(ValueError, match="no step"):
        WeightAverage(0.9).state_dict()


def test_training_updates_each_weight_average_once_per_optimiser_step(small_dataset):
    from pneumonia.prepare import prepare
    from pneumonia.train import train

    splits, _ = prepare(small_dataset, 32, 0.2, seed=1, out_dir=small_dataset.parent / "p")
    params = replace(TRAIN_PARAMS, epochs=2, select="last")
    averages = (WeightAverage(0.5), WeightAverage(0.99))
    model, _, _ = train(
        torch.manual_seed(0) and build_model("none"),
        splits["train"],
        splits["val"],
        params,
        after_step=update_all(averages),
    )
    steps = -(-len(splits["train"].labels) // params.batch_size)
    assert [a.steps for a in averages] == [params.epochs * steps] * 2
    averaged = build_model("none")
    averaged.load_state_dict(averages[1].state_dict())  # a full ResNet18 state, strict
    last = model.state_dict()["fc.weight"]
    assert not torch.allclose(averaged.state_dict()["fc.weight"], last)
