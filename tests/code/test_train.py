"""Training pieces: augmentation, class weights, and where the initial weights come from."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from pneumonia.model import WeightsUnavailableError, build_model, to_input
from pneumonia.params import AugmentParams
from pneumonia.params import load as load_params
from pneumonia.train import augment, class_weights, lr_schedule
from tests.conftest import REPO

PARAMS = load_params(REPO / "params.yaml").train


def Augment(hflip=0.0, rotation_deg=0.0, brightness=0.0, contrast=0.0, **more) -> AugmentParams:
    """Augmentation with everything off except what is given."""
    off = {"crop_scale": 1.0, "gamma": 0.0, "noise": 0.0, "mixup": 0.0, "cutmix": 0.0}
    return AugmentParams(hflip, rotation_deg, brightness, contrast, **{**off, **more})


def test_augment_keeps_shape_and_range_and_changes_pixels():
    x = torch.rand(8, 1, 32, 32)
    y = augment(x, PARAMS.augment, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert not torch.allclose(x, y)


def test_augment_is_reproducible_from_the_seed():
    x = torch.rand(4, 1, 32, 32)
    a = augment(x, PARAMS.augment, torch.Generator().manual_seed(3))
    b = augment(x, PARAMS.augment, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_augment_with_everything_off_is_the_identity():
    x = torch.rand(4, 1, 16, 16)
    off = Augment(hflip=0.0, rotation_deg=0.0, brightness=0.0, contrast=0.0)
    assert torch.allclose(augment(x, off, torch.Generator().manual_seed(0)), x, atol=1e-6)


def test_always_flip_mirrors_the_image():
    x = torch.rand(2, 1, 8, 8)
    flip = Augment(hflip=1.0, rotation_deg=0.0, brightness=0.0, contrast=0.0)
    assert torch.allclose(augment(x, flip, torch.Generator()), x.flip(-1), atol=1e-6)


def test_crop_with_full_scale_and_no_rotation_changes_nothing_geometric():
    x = torch.rand(3, 1, 16, 16)
    off = Augment(hflip=0.0, rotation_deg=0.0, brightness=0.0, contrast=0.0, crop_scale=1.0)
    assert torch.allclose(augment(x, off, torch.Generator().manual_seed(1)), x, atol=1e-6)


def test_random_resized_crop_zooms_in():
    # A bright frame around a dark centre: crops keep the centre's share or more and lose frame,
    # so the mean intensity drops.
    x = torch.ones(16, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 0.0
    crop = Augment(hflip=0.0, rotation_deg=0.0, brightness=0.0, contrast=0.0, crop_scale=0.25)
    zoomed = augment(x, crop, torch.Generator().manual_seed(0))
    assert zoomed.shape == x.shape
    assert float(zoomed.mean()) < float(x.mean()) - 0.1


def test_gamma_and_noise_change_pixels_within_range():
    x = torch.full((8, 1, 16, 16), 0.5)
    gamma = Augment(hflip=0, rotation_deg=0, brightness=0, contrast=0, gamma=0.5)
    y = augment(x, gamma, torch.Generator().manual_seed(0))
    per_image = y.view(8, -1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image))  # uniform per image
    assert float(per_image[:, 0].std()) > 0.01  # but a different gamma per image
    noisy = augment(x, Augment(0, 0, 0, 0, noise=0.1), torch.Generator().manual_seed(0))
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    assert float((noisy - x).std()) > 0.01


def test_cosine_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = lr_schedule(optimizer, "cosine", total_steps=100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] < rates[4] == pytest.approx(1.0)  # 5 warm-up steps
    assert all(a >= b for a, b in zip(rates[5:], rates[6:], strict=False))
    assert rates[-1] < 0.01
    with pytest.raises(ValueError, match="train.schedule"):
        lr_schedule(optimizer, "step", 10)


def test_auto_precision_follows_the_cpu():
    from pneumonia.train import native_bf16, resolve_precision

    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="'auto'"):
        resolve_precision("fp16")


def test_per_image_input_norm_ignores_exposure():
    torch.manual_seed(0)
    model = build_model("none", "per_image").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        same = model(x), model(x * 0.5 + 0.2)  # darker, lower contrast: same after standardising
        plain = build_model("none", "fixed").eval()
        plain.load_state_dict(model.state_dict())  # same weights, no standardisation
        differs = plain(x), plain(x * 0.5 + 0.2)
    assert torch.allclose(same[0], same[1], atol=1e-4)
    assert not torch.allclose(differs[0], differs[1], atol=1e-3)
    with pytest.raises(ValueError, match="input_norm"):
        build_model("none", "clahe")


def test_checkpoint_keeps_the_input_norm(tmp_path):
    from pneumonia.model import load_checkpoint, save_checkpoint

    save_checkpoint(build_model("none", "per_image"), tmp_path / "m.pt", 64, "none")
    model, size = load_checkpoint(tmp_path / "m.pt")
    assert model.input_norm == "per_image" and size == 64


def test_balanced_class_weights_equalise_the_classes():
    labels = np.array([0] * 25 + [1] * 75)
    w = class_weights(labels, "balanced")
    assert w.tolist() == pytest.approx([2.0, 2 / 3])
    assert float(w[0] * 25) == pytest.approx(float(w[1] * 75))
    assert class_weights(labels, "none") is None
    with pytest.raises(ValueError, match="balanced"):
        class_weights(labels, "inverse")


def test_to_input_replicates_gray_and_normalises():
    x = to_input(torch.full((1, 4, 4), 255, dtype=torch.uint8))
    assert x.shape == (1, 3, 4, 4)
    assert x[0, :, 0, 0].tolist() == pytest.approx(
        [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], rel=1e-5
    )


def test_random_init_has_a_two_class_head():
    model = build_model("none")
    assert model.fc.out_features == 2 and model.fc.in_features == 512


def test_imagenet_offline_stops_with_both_ways_out(tmp_path, monkeypatch):
    # A real download attempt with an empty weight cache and a proxy that refuses connections:
    # what a machine without internet access sees.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("imagenet")
    message = str(info.value)
    assert "train.weights=none" in message and "path/to/resnet18.pth" in message


def test_weights_from_a_file_load_the_backbone(tmp_path):
    source = resnet18(weights=None)
    torch.nn.init.constant_(source.conv1.weight, 0.125)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)  # includes a 1000-class fc, which is replaced
    model = build_model(str(path))
    assert torch.all(model.conv1.weight == 0.125)
    assert model.fc.out_features == 2


def test_weights_file_errors_are_explicit(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not a file"):
        build_model(str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"layer.weight": torch.zeros(2)}, wrong)
    with pytest.raises(WeightsUnavailableError, match="not a ResNet18 state dict"):
        build_model(str(wrong))


def val_loss_of(model, splits) -> float:
    """The validation loss the train loop records, recomputed for ``model``."""
    from pneumonia.model import predict_logits

    logits = torch.from_numpy(predict_logits(model, splits["val"].images))
    weight = class_weights(splits["train"].labels, "balanced")
    labels = torch.from_numpy(splits["val"].labels)
    return torch.nn.functional.cross_entropy(logits, labels, weight=weight).item()


TRAIN_PARAMS = replace(
    PARAMS, seed=0, batch_size=8, epochs=2, early_stopping_patience=3, precision="fp32"
)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_runs_in_both_precisions_and_restores_the_best_epoch(precision, small_dataset):
    from pneumonia.prepare import prepare
    from pneumonia.train import train

    splits, _ = prepare(small_dataset, 32, 0.2, seed=1, out_dir=small_dataset.parent / "p")
    params = replace(TRAIN_PARAMS, precision=precision, select="best_val_loss")
    model, history, kept = train(build_model("none"), splits["train"], splits["val"], params)
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in history)
    assert not model.training
    # The returned weights are the best epoch's: recomputing its validation loss agrees.
    best = min(history, key=lambda r: r["val_loss"])
    assert kept == best
    assert val_loss_of(model, splits) == pytest.approx(best["val_loss"], rel=1e-4)


def test_select_last_returns_the_last_epoch_and_never_stops_early(small_dataset):
    from pneumonia.prepare import prepare
    from pneumonia.train import summarize, train

    splits, _ = prepare(small_dataset, 32, 0.2, seed=1, out_dir=small_dataset.parent / "p")
    params = replace(TRAIN_PARAMS, epochs=3, early_stopping_patience=1, select="last")
    seen = []

    def on_epoch(record, model):
        seen.append((record["epoch"], val_loss_of(model, splits)))

    model, history, kept = train(
        build_model("none"), splits["train"], splits["val"], params, on_epoch
    )
    assert [r["epoch"] for r in history] == [1, 2, 3] and kept == history[-1]
    # on_epoch saw the model of each epoch (its recorded validation loss), the last is returned
    assert [e for e, _ in seen] == [1, 2, 3]
    for (_, loss), record in zip(seen, history, strict=True):
        assert loss == pytest.approx(record["val_loss"], rel=1e-4)
    assert val_loss_of(model, splits) == pytest.approx(history[-1]["val_loss"], rel=1e-4)
    summary = summarize(history, kept)
    assert summary["kept_epoch"] == 3 and summary["epochs_run"] == 3
    assert summary["best_epoch"] == min(history, key=lambda r: r["val_loss"])["epoch"]


def test_loader_workers_change_nothing_but_speed(small_dataset):
    """Each batch's augmentation is seeded by (seed, epoch, batch, rank), not by which worker
    makes it: two workers give the same run as none."""
    from pneumonia.prepare import prepare
    from pneumonia.train import train

    splits, _ = prepare(small_dataset, 32, 0.2, seed=1, out_dir=small_dataset.parent / "p")
    runs = [
        train(
            torch.manual_seed(0) and build_model("none"),
            splits["train"],
            splits["val"],
            replace(TRAIN_PARAMS, epochs=2, loader_workers=workers, select="last"),
        )
        for workers in (0, 2)
    ]
    (model_a, history_a, _), (model_b, history_b, _) = runs
    for a, b in zip(history_a, history_b, strict=True):
        assert {k: v for k, v in a.items() if k != "epoch_seconds"} == {
            k: v for k, v in b.items() if k != "epoch_seconds"
        }
    for (name, a), b in zip(
        model_a.state_dict().items(), model_b.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_process_gets_a_disjoint_share_of_every_batch(world):
    from pneumonia.prepared import PreparedSplit
    from pneumonia.train import AugmentedBatches, Processes

    n = 45  # 5 full batches of 8, then 5 images: dropped when a process would get fewer than 2
    split = PreparedSplit(np.zeros((n, 8, 8), np.uint8), np.arange(n) % 2, [""] * n, [""] * n)
    params = replace(TRAIN_PARAMS, batch_size=8)
    shares = [AugmentedBatches(split, params, Processes(rank, world)) for rank in range(world)]
    for epoch in (1, 2):
        assert len({len(share.batches(epoch)) for share in shares}) == 1  # same steps everywhere
        seen = np.concatenate([b for share in shares for b in share.batches(epoch)])
        assert len(seen) == len(set(seen.tolist()))  # no image twice in an epoch
        full_batches = 5 + (world <= 2)  # 5 left over: two each for 1 or 2 processes, not 3
        assert len(seen) == min(n, 8 * full_batches)
        for b in range(shares[0].steps()):
            assert all(len(share.batches(epoch)[b]) >= 2 for share in shares)
    orders = [np.concatenate(shares[0].batches(epoch)) for epoch in (1, 2)]
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch


def test_low_resolution_epochs_downscale_the_batches_then_return_to_the_full_size():
    from pneumonia.prepared import PreparedSplit
    from pneumonia.train import AugmentedBatches, Processes

    n = 16
    rows = np.linspace(0, 255, 64).astype(np.uint8)
    images = np.broadcast_to(rows[None, :, None], (n, 64, 64)).copy()  # a vertical gradient
    split = PreparedSplit(images, np.arange(n) % 2, [""] * n, [""] * n)
    params = replace(TRAIN_PARAMS, batch_size=8, low_res_epochs=2, low_res_size=32)
    batches = AugmentedBatches(split, replace(params, augment=Augment()), Processes())
    sides = [batches[(epoch, 0)][0].shape[-2:] for epoch in (1, 2, 3)]
    assert sides == [(32, 32), (32, 32), (64, 64)]
    # Downscaled, not cropped: the low-resolution batch still spans the whole gradient.
    low, full = batches[(1, 0)][0], batches[(3, 0)][0]
    for row in (0, -1):
        assert low[:, 0, row].mean().item() == pytest.approx(full[:, 0, row].mean().item(), abs=0.1)
    assert low.min() >= full.min() - 1e-5 and low.max() <= full.max() + 1e-5


def test_progressive_resizing_trains_at_low_resolution_first_and_validates_at_full(
    small_dataset,
):
    from pneumonia.prepare import prepare
    from pneumonia.train import train

    splits, _ = prepare(small_dataset, 64, 0.2, seed=1, out_dir=small_dataset.parent / "p")
    params = replace(TRAIN_PARAMS, epochs=3, low_res_epochs=2, low_res_size=32, select="last")
    model, history, kept = train(build_model("none"), splits["train"], splits["val"], params)
    assert [r["train_image_size"] for r in history] == [32, 32, 64]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in history)
    # validation (and so the kept model) is scored at the prepared, served size
    assert val_loss_of(model, splits) == pytest.approx(kept["val_loss"], rel=1e-4)


def test_mixing_off_changes_nothing():
    from pneumonia.train import mix_batch

    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 0, 1, 1, 0])
    mixed, partner, lam = mix_batch(x, y, Augment(), np.random.default_rng(0))
    assert mixed is x and torch.equal(partner, y) and lam == 1.0


def test_mixup_blends_each_image_with_its_partner_by_lam():
    from pneumonia.train import mix_batch

    # Image i is uniformly i/10: a blend is lam * own + (1 - lam) * partner's value everywhere.
    n = 8
    x = (torch.arange(n, dtype=torch.float32) / 10).view(n, 1, 1, 1).expand(n, 1, 4, 4)
    y = torch.arange(n) % 2
    mixed, partner, lam = mix_batch(x, y, Augment(mixup=0.4), np.random.default_rng(3))
    assert 0 < lam < 1
    partner_index = ((mixed[:, 0, 0, 0] - lam * x[:, 0, 0, 0]) / (1 - lam) * 10).round().long()
    assert sorted(partner_index.tolist()) == list(range(n))  # a permutation of the batch
    assert torch.equal(partner, y[partner_index])
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner_index], atol=1e-6)


def test_cutmix_pastes_a_box_whose_share_is_one_minus_lam():
    from pneumonia.train import mix_batch

    n = 8
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 20, 20).contiguous()
    y = torch.arange(n) % 2
    for seed in range(5):
        mixed, partner, lam = mix_batch(x, y, Augment(cutmix=1.0), np.random.default_rng(seed))
        own = (mixed == x).float().mean(dim=(1, 2, 3))
        moved = own < 1  # images whose partner is another image
        assert moved.any()
        assert torch.allclose(own[moved], torch.full_like(own[moved], lam), atol=1e-6)
        assert float(mixed.min()) >= 0 and float(mixed.max()) <= n - 1


def test_training_with_mixup_and_cutmix_runs_and_differs(small_dataset):
    """Mixing reaches the loss: the same seed with mixing on trains a different model."""
    from pneumonia.prepare import prepare
    from pneumonia.train import AugmentedBatches, Processes, train

    splits, _ = prepare(small_dataset, 32, 0.2, seed=1, out_dir=small_dataset.parent / "p")
    mixing = replace(TRAIN_PARAMS.augment, mixup=0.2, cutmix=1.0)
    params = replace(TRAIN_PARAMS, epochs=1, select="last", augment=mixing)
    batches = AugmentedBatches(splits["train"], params, Processes())
    lams = [float(batches[(1, b)][3]) for b in (0, 1)]
    assert all(0 < lam < 1 for lam in lams)
    runs = [
        train(torch.manual_seed(0) and build_model("none"), splits["train"], splits["val"], p)
        for p in (replace(params, augment=TRAIN_PARAMS.augment), params)
    ]
    (_, plain, _), (_, mixed, _) = runs
    assert plain[0]["train_loss"] != pytest.approx(mixed[0]["train_loss"], rel=1e-6)
