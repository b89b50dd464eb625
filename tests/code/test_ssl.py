"""bench/ssl_pretrain.py's loss and views: SimCLR's NT-Xent rewards telling each view's pair."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from bench.ssl_pretrain import Views, learning_rate_factor, nt_xent
from pneumonia.params import load as load_params
from tests.conftest import REPO


def test_nt_xent_is_low_when_each_view_finds_its_pair():
    z = torch.nn.functional.normalize(torch.randn(32, 16, generator=torch.manual_seed(0)), dim=1)
    matched = nt_xent(z, z + 0.01 * torch.randn(32, 16), 0.2).item()
    shuffled = nt_xent(z, z[torch.randperm(32, generator=torch.manual_seed(1))], 0.2).item()
    assert matched < 1.0 < np.log(63) - 1 < shuffled  # chance: log(2N - 1) = 4.1


def test_views_are_two_different_augmentations_of_the_same_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 32, 32), np.uint8)
    augment = load_params(REPO / "params.yaml").train.augment
    views = Views(images, 4, seed=3, augment_params=augment)
    assert len(views) == 2  # equal batches only: 10 images, batches of 4
    first, second = views[(1, 0)]
    assert first.shape == second.shape == (4, 3, 32, 32) and not torch.equal(first, second)
    again, _ = views[(1, 0)]
    assert torch.equal(first, again)  # reproducible from (seed, epoch, batch)
    order = np.concatenate(views.order(1))
    assert len(set(order.tolist())) == 8  # no image twice in an epoch
    off = replace(augment, hflip=0, rotation_deg=0, brightness=0, contrast=0, crop_scale=1)
    plain = Views(images, 4, seed=3, augment_params=replace(off, gamma=0, noise=0))
    first, second = plain[(1, 0)]
    assert torch.equal(first, second)  # without augmentation the two views are the same images


def test_pretraining_warms_up_for_an_epoch_then_decays_to_zero():
    factors = [learning_rate_factor(step, 10, 5) for step in range(50)]
    assert factors[0] == 0.1 and factors[9] == 1.0  # the first epoch: linear warm-up
    assert factors[10] == 1.0 and all(np.diff(factors[10:]) < 0)
    assert 0 < factors[-1] < 0.01
