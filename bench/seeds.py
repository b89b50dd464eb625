"""Seed study: how far test accuracy moves with the training seed, per precision (fp32, bf16
autocast) and per way of choosing the weights, all from the same runs.

    python bench/seeds.py --seeds 1 2 3 4 5 --precisions fp32 bf16 [--device cuda] [--jobs 4]
    python bench/seeds.py --quick        # tiny, to check the script runs (tests)

Trains the ``train`` section of params.yaml from random init (``train.weights=none``; or from
``--weights``, a backbone file such as bench/ssl_pretrain.py writes) on the prepared splits
(``data/prepared/``, or ``--data`` prepared here with the ``prepare`` params) and scores each
run's weights on the test split as the evaluate stage does (calibration and threshold fitted on
validation, test expected calibration error after calibration):

  best_val_loss  the epoch with the lowest validation loss
  last           the last epoch, the end of the schedule (the default, ``train.select``)
  last_flip      the last epoch, each image's logits averaged with its mirror image's
                 (test-time flip averaging)
  last_bn_target the last epoch with its BatchNorm statistics re-estimated on the test
                 images (their pixels, never their labels: AdaBN, "adapted to the target
                 images"); validation keeps the training statistics
  ema_DECAY      with ``--ema DECAY...``: the exponential moving average of the weights over
                 the optimiser steps (``bench.training.WeightAverage``), one per decay, from the
                 same run

and, per precision, the deep ensembles of all its seeds (averaged logits, with and without
flip averaging). ``--equalize``: every split's images histogram-equalised (``equalize``)
before training and scoring, as a serving path would equalise each upload. ``--distill``:
then one student per seed (seed + 100) trained the same way with the ensemble of that
precision's runs as its teacher (``bench.training.Distillation``: half the loss is the KL
divergence to the ensemble's averaged logits at temperature 2), scored alike: the ensemble's
accuracy at one model's serving cost? Writes every run to ``--out`` (JSON) and prints Markdown
tables: mean, standard deviation and range over the seeds. On a GPU, ``fp32``
turns TF32 off so that it means fp32 arithmetic.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from pneumonia.config import PREPARED_DIR, RAW_DIR
from pneumonia.evaluate import fit
from pneumonia.model import build_model, predict_logits, to_input
from pneumonia.params import Params, as_dict
from pneumonia.params import parse as parse_params
from pneumonia.prepare import prepare
from pneumonia.prepared import PreparedSplit, load_split, write_split
from pneumonia.train import Processes, train

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/seeds.py`: bench.training beside it
    sys.path.insert(0, str(ROOT))
from bench.training import Distillation, WeightAverage, update_all  # noqa: E402

CHOICES = ("best_val_loss", "last", "last_flip", "last_bn_target")
REPORTED = ("accuracy", "sensitivity", "specificity", "roc_auc", "ece")
QUICK = {"epochs": 2, "batch_size": 16}
STUDENT_SEED = 100  # a student's seed is its teacher run's plus this


def subset(split: PreparedSplit, per_class: int) -> PreparedSplit:
    """The first ``per_class`` images of each class (quick mode)."""
    idx = np.concatenate([np.flatnonzero(split.labels == c)[:per_class] for c in (0, 1)])
    return PreparedSplit(
        images=split.images[idx],
        labels=split.labels[idx],
        files=[split.files[i] for i in idx],
        patients=[split.patients[i] for i in idx],
    )


def equalize(images: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of each uint8 grayscale image (N x H x W): each grey level
    maps to its share of the image's pixels at or below it, so every image uses the whole range
    with a near-flat histogram (the textbook mapping: the lowest level present goes to 0)."""
    out = np.empty(images.shape, np.uint8)
    for i, image in enumerate(images):
        cdf = np.bincount(image.ravel(), minlength=256).cumsum()
        darkest = cdf[np.flatnonzero(cdf)[0]]  # pixels at the lowest level present
        span = max(int(cdf[-1] - darkest), 1)
        lut = np.clip(np.round((cdf - darkest) * 255.0 / span), 0, 255).astype(np.uint8)
        out[i] = lut[image]
    return out


def logits_of(model, split: PreparedSplit, device: str, flip: bool = False) -> np.ndarray:
    """The model's logits for a split; ``flip``: averaged with those of the mirrored images
    (test-time augmentation)."""
    logits = predict_logits(model.to(device), split.images, 64, device)
    if flip:
        mirrored = np.ascontiguousarray(split.images[:, :, ::-1])
        logits = (logits + predict_logits(model, mirrored, 64, device)) / 2
    return logits


@torch.no_grad()
def adapt_batchnorm(model, images: np.ndarray, device: str, batch_size: int = 64):
    """A copy of ``model`` whose BatchNorm running statistics are the averages over ``images``
    (unlabelled target images) instead of the training images'."""
    adapted = copy.deepcopy(model).to(device)
    norms = [m for m in adapted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
    adapted.train()
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start : start + batch_size]))
        adapted(to_input(batch).to(device))
    return adapted.eval()


def score(val_logits, test_logits, labels: dict, params) -> dict[str, float]:
    """Test metrics as the evaluate stage computes them: calibration and threshold fitted on
    validation, then the test split's metrics and its expected calibration error."""
    test = fit(val_logits, labels["val"], params).score(test_logits, labels["test"])
    return {k: test[k] for k in REPORTED}


def ensemble_teacher(paths: list[str], input_norm: str, device: str) -> Distillation:
    """Distillation from the models saved at ``paths``: their averaged logits, in eval mode."""
    models = []
    for path in paths:
        model = build_model("none", input_norm)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        models.append(model.to(device, memory_format=torch.channels_last).eval())

    def teacher(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([model(x).float() for model in models]).mean(dim=0)

    return Distillation(teacher)


def one_run(job: dict) -> dict:
    """Train one (seed, precision), from ``job["teachers"]`` when given (distillation); score
    each choice of weights on the test split; keep the last weights in ``job["save"]``."""
    torch.set_num_threads(job["threads"])
    device = job["device"]
    if device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    splits = {s: load_split(s, Path(job["prepared"])) for s in ("train", "val", "test")}
    if job.get("equalize"):
        splits = {s: replace(split, images=equalize(split.images)) for s, split in splits.items()}
    params = replace(job["train"], seed=job["seed"], precision=job["precision"], select="last")
    best: dict = {"val_loss": float("inf")}  # the lowest-validation-loss epoch and its weights

    def keep(record: dict, model: torch.nn.Module) -> None:
        if record["val_loss"] < best["val_loss"]:
            state = {k: v.cpu().clone() for k, v in model.state_dict().items()}
            best.update(record, state=state)

    torch.manual_seed(job["seed"])  # the head's init, as the train stage does
    model = build_model(params.weights, params.input_norm)
    started = time.perf_counter()
    processes = Processes(device=device)
    teachers = job.get("teachers")
    distillation = ensemble_teacher(teachers, params.input_norm, device) if teachers else None
    averages = tuple(WeightAverage(decay) for decay in job.get("ema", ()))
    last, history, _ = train(
        model,
        splits["train"],
        splits["val"],
        params,
        keep,
        processes,
        batch_loss=distillation.loss if distillation else None,
        after_step=update_all(averages),
    )
    seconds = time.perf_counter() - started
    if job.get("save"):
        torch.save(last.state_dict(), job["save"])
    # Steady state: the median epoch after the first (start-up, loader workers, kernel tuning).
    epoch_seconds = statistics.median(r["epoch_seconds"] for r in history[1:] or history)
    labels = {s: splits[s].labels for s in ("val", "test")}
    logits = {
        f"{s}{'_flip' if flip else ''}": logits_of(last, splits[s], device, flip)
        for s in ("val", "test")
        for flip in (False, True)
    }
    scores = {
        "last": score(logits["val"], logits["test"], labels, job["evaluate"]),
        "last_flip": score(logits["val_flip"], logits["test_flip"], labels, job["evaluate"]),
        "last_bn_target": score(
            logits["val"],
            logits_of(adapt_batchnorm(last, splits["test"].images, device), splits["test"], device),
            labels,
            job["evaluate"],
        ),
    }
    for average in averages:
        averaged = copy.deepcopy(last)
        averaged.load_state_dict(average.state_dict())
        choice = f"ema_{average.decay}"
        for s in ("val", "test"):
            logits[f"{s}_{choice}"] = logits_of(averaged, splits[s], device)
        scores[choice] = score(
            logits[f"val_{choice}"], logits[f"test_{choice}"], labels, job["evaluate"]
        )
    last.load_state_dict(best["state"])
    best_logits = [logits_of(last, splits[s], device) for s in ("val", "test")]
    scores["best_val_loss"] = score(*best_logits, labels, job["evaluate"])
    return {
        "seed": job["seed"],
        "precision": job["precision"],
        "best_epoch": best["epoch"],
        "train_seconds": round(seconds, 1),
        "images_per_second": round(len(splits["train"].labels) / epoch_seconds, 1),
        "test": scores,
        "logits": {k: v.round(5).tolist() for k, v in logits.items()},  # for the ensembles
    }


def prepared_dir(args, params: Params, scratch: Path) -> Path:
    """The folder of prepared splits the runs use: --prepared when it holds them, data/prepared
    as is, or --data prepared here (kept in --prepared when given, else in scratch; in quick
    mode the small subset is what is kept)."""
    if args.prepared and (args.prepared / "train.npz").is_file():
        return args.prepared
    if args.data is None and not args.quick and (PREPARED_DIR / "train.npz").is_file():
        return PREPARED_DIR
    prep = params.prepare
    size = 32 if args.quick else prep.image_size
    raw = args.data or RAW_DIR
    kept = args.prepared or scratch / "prepared"
    full = scratch / "full" if args.quick else kept
    splits, _ = prepare(raw, size, prep.val_fraction, prep.seed, full)
    if args.quick:
        kept.mkdir(parents=True, exist_ok=True)
        for name, split in splits.items():
            write_split(subset(split, 6), kept, name)
    return kept


def choices_of(runs: list[dict]) -> list[str]:
    """The ways of choosing weights the runs were scored with: ``CHOICES``, then any others."""
    return list(dict.fromkeys([*CHOICES, *runs[0]["test"]])) if runs else list(CHOICES)


def table(runs: list[dict], metric: str) -> list[str]:
    choices = choices_of(runs)
    lines = [
        f"**test {metric}** (mean ± sd, min-max over seeds)",
        "",
        "| precision | seeds | " + " | ".join(choices) + " |",
        "|---|---:|" + "---:|" * len(choices),
    ]
    for precision in dict.fromkeys(r["precision"] for r in runs):
        mine = [r for r in runs if r["precision"] == precision]
        cells = []
        for choice in choices:
            values = [r["test"][choice][metric] for r in mine]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(
                f"{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f}-{max(values):.3f})"
            )
        lines.append(f"| {precision} | {len(mine)} | " + " | ".join(cells) + " |")
    return lines + [""]


def run_all(jobs: list[dict], pool) -> list[dict]:
    """``one_run`` of each job, in ``pool`` when given; each printed as it ends."""
    runs = []
    for run in pool.imap_unordered(one_run, jobs) if pool else map(one_run, jobs):
        shown = {k: v for k, v in run.items() if k != "logits"}
        print(json.dumps(shown), flush=True)  # what is done, should the rest not finish
        runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    parser.add_argument("--data", type=Path, help="raw dataset to prepare (default: prepared)")
    parser.add_argument("--out", type=Path, default=Path("seeds.json"))
    parser.add_argument(
        "--prepared", type=Path, help="prepared splits to use, or where to keep --data prepared"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--distill", action="store_true", help="then a student per seed")
    parser.add_argument(
        "--equalize", action="store_true", help="histogram-equalise every image (all splits)"
    )
    parser.add_argument(
        "--ema",
        type=float,
        nargs="+",
        default=[],
        metavar="DECAY",
        help="also score the moving average of the weights with each decay (e.g. 0.99 0.995)",
    )
    parser.add_argument(
        "--weights", type=Path, help="a ResNet18 backbone state dict to start from (default: none)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="train.KEY override (augment.mixup=0.2 for a nested one), or prepare.KEY (with "
        "--data: prepare.image_size=128)",
    )
    args = parser.parse_args(argv)
    # Made now: a missing folder would otherwise fail only after every run has trained.
    args.out.parent.mkdir(parents=True, exist_ok=True)

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for override in args.set:
        key, value = override.split("=", 1)
        stage = "prepare" if key.startswith("prepare.") else "train"
        *path, name = key.removeprefix(f"{stage}.").split(".")
        section = raw[stage]
        for part in path:
            section = section[part]
        if name not in section:
            parser.error(f"--set {key}: {stage} has no such parameter")
        section[name] = yaml.safe_load(value)
    params = parse_params(raw)
    weights = str(args.weights) if args.weights else "none"
    train_params = replace(params.train, weights=weights, **(QUICK if args.quick else {}))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with tempfile.TemporaryDirectory() as scratch:
        folder = prepared_dir(args, params, Path(scratch))
        side = load_split("val", folder).images.shape[-1]
        if not args.quick and side != params.prepare.image_size:
            parser.error(
                f"{folder} holds {side} px images, not prepare.image_size "
                f"{params.prepare.image_size}: give --data to prepare them at that size"
            )
        jobs = [
            {
                "seed": seed,
                "precision": precision,
                "device": args.device,
                "threads": threads,
                "prepared": str(folder),
                "train": train_params,
                "evaluate": params.evaluate,
                "save": str(Path(scratch) / f"model-{precision}-{seed}.pt") if args.distill else "",
                "ema": args.ema,
                "equalize": args.equalize,
            }
            for seed in args.seeds
            for precision in args.precisions
        ]
        # In this process when one at a time: a pool's workers may not start loader workers.
        pool = multiprocessing.get_context("spawn").Pool(args.jobs) if args.jobs > 1 else None
        runs = run_all(jobs, pool)
        students = []
        if args.distill:
            saved = {p: [j["save"] for j in jobs if j["precision"] == p] for p in args.precisions}
            taught = [
                {**j, "seed": j["seed"] + STUDENT_SEED, "save": "", "teachers": saved[precision]}
                for j in jobs
                for precision in [j["precision"]]
            ]
            students = run_all(taught, pool)
        if pool:
            pool.close()
            pool.join()
        labels = {s: np.array(load_split(s, folder).labels) for s in ("val", "test")}
    for found in (runs, students):
        found.sort(key=lambda r: (args.precisions.index(r["precision"]), r["seed"]))
    ensembles = [
        {
            "precision": precision,
            "flip": flip,
            "seeds": len(mine),
            "test": score(
                *(
                    np.mean([r["logits"][f"{s}{suffix}"] for r in mine], axis=0)
                    for s in ("val", "test")
                ),
                labels,
                params.evaluate,
            ),
        }
        for precision in args.precisions
        if (mine := [r for r in runs if r["precision"] == precision])
        for flip, suffix in ((False, ""), (True, "_flip"))
    ]
    args.out.write_text(
        json.dumps(
            {
                "train": as_dict(train_params),
                "prepare": as_dict(params.prepare),
                "equalize": args.equalize,
                "device": args.device,
                "runs": runs,
                "ensembles": ensembles,
                "students": students,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"device: {args.device}; train params: {json.dumps(as_dict(train_params))}\n")
    for metric in REPORTED:
        print("\n".join(table(runs, metric)))
    print("Deep ensembles of the seeds (averaged logits), test split:\n")
    print("| precision | seeds | flip averaging | " + " | ".join(REPORTED) + " |")
    print("|---|---:|---|" + "---:|" * len(REPORTED))
    for e in ensembles:
        cells = " | ".join(f"{e['test'][m]:.3f}" for m in REPORTED)
        print(f"| {e['precision']} | {e['seeds']} | {'yes' if e['flip'] else 'no'} | {cells} |")
    if students:
        print("Students distilled from the ensemble of their precision's runs, test split:\n")
        for metric in REPORTED:
            print("\n".join(table(students, metric)))
    print("\nTest accuracy of each run:\n")
    choices = choices_of(runs)
    print("| precision | seed | best epoch | train s | images/s | " + " | ".join(choices) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(choices))
    for r in runs + students:
        accs = " | ".join(f"{r['test'][c]['accuracy']:.3f}" for c in choices)
        row = f"{r['precision']} | {r['seed']} | {r['best_epoch']} | {r['train_seconds']}"
        row += f" | {r['images_per_second']}"
        print(f"| {row} | {accs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
