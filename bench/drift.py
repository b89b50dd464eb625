"""Drift monitoring measured (issue 30): false alarms, detection delay, estimated vs real accuracy.

    python -m bench.drift [--bundle models/bundle] [--days 30] [--per-day 40] [--seeds 5]
                          [--out drift.json] [--quick]

The served bundle answers every image of the shared data's test and val folders once, as an
upload is answered (``Bundle.predict_bytes``: decoding, the guard, the calibrated probability),
and each changed copy of them (the shifts below). A simulated clinic then sends a Poisson
number of uploads a day (``--per-day`` on average, in working hours), drawn with replacement
from those answers; a tenth get a clinician's verdict (the image's true label). The app's own
code judges them: ``diagnosis.drift.report`` on a fresh SQLite database, evaluated every hour
as Prometheus evaluates rules.yml (whose ``for: 30m`` an hourly alert state satisfies).

1. **False alarms**: ``--days`` of in-distribution traffic per seed: hourly evaluations with a
   signal in the alert (and warn) state, and the signals that were. Goal: 0 alerts.
2. **Detection delay**: 7 days in distribution, then one kind of shift at the same volume:
   shifted uploads until the first alert, and the signal that raised it (none within 14 days:
   "missed").
3. **Estimated vs real accuracy**: the bundle's reference (its test split) and each image set
   here: the accuracy estimated from the probabilities alone beside the real one.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from bench.in_process_app import setup_django
from pneumonia.config import BUNDLE_DIR, SHARED_DATA_DIR
from pneumonia.serving import Bundle, NotAChestXray, read_image

FEEDBACK_SHARE = 0.1
WARM_DAYS, DETECT_DAYS = 7, 14


def shifted(image: Image.Image, kind: str) -> Image.Image:
    """One decoded grayscale upload as another site (or another kind of file) might send it."""
    if kind == "inverted":
        return ImageOps.invert(image)
    if kind == "low contrast":
        return ImageEnhance.Contrast(image).enhance(0.5)
    if kind == "brighter":
        return ImageEnhance.Brightness(image).enhance(1.3)
    if kind == "equalised":
        return ImageOps.equalize(image)
    if kind == "blurred":
        return image.filter(ImageFilter.GaussianBlur(3))
    return image


SHIFTS = ("inverted", "low contrast", "brighter", "equalised", "blurred", "pneumonia ward")


def answer(bundle: Bundle, data: bytes) -> dict:
    try:
        p = bundle.predict_bytes(data)
    except NotAChestXray as exc:
        return {"refused": exc.reason}
    return {
        "label": p.label,
        "probability": p.probability,
        "guard_distance": p.guard_distance,
        "brightness": p.brightness,
        "contrast": p.contrast,
    }


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def answered_sets(bundle: Bundle, quick: bool) -> dict[str, list[dict]]:
    """Each set's answers, one per image, with the image's true label."""
    files = [
        (p, p.parent.name)
        for split in ("test", "val")
        for p in sorted((SHARED_DATA_DIR / "chest_xray" / split).rglob("*.jpeg"))
    ]
    if quick:
        files = files[::10]
    sets: dict[str, list[dict]] = {"in distribution": [], **{k: [] for k in SHIFTS}}
    for path, truth in files:
        data = path.read_bytes()
        sets["in distribution"].append({**answer(bundle, data), "truth": truth})
        image = read_image(data)
        for kind in SHIFTS:
            if kind == "pneumonia ward":
                continue
            sets[kind].append({**answer(bundle, png(shifted(image, kind))), "truth": truth})
    sets["pneumonia ward"] = [a for a in sets["in distribution"] if a["truth"] == "PNEUMONIA"]
    return sets


class Clinic:
    """Uploads recorded as the app records them, at simulated times."""

    def __init__(self, version: str, reference: dict, seed: int):
        from diagnosis.models import Feedback, Prediction, Refusal
        from django.contrib.auth.models import User

        self.Prediction, self.Refusal, self.Feedback = Prediction, Refusal, Feedback
        self.user, _ = User.objects.get_or_create(username="bench-clinician")
        self.version, self.reference = version, reference
        self.rng = np.random.default_rng(seed)
        self.now = datetime(2026, 1, 5, tzinfo=UTC)
        for model in (Feedback, Prediction, Refusal):
            model.objects.all().delete()

    def upload(self, a: dict, when: datetime) -> None:
        fields = {
            "user": self.user,
            "source": "api",
            "model_version": self.version,
            "image_sha256": "0" * 64,
            "image_width": 1024,
            "image_height": 1024,
            "created_at": when,
        }
        if "refused" in a:
            self.Refusal.objects.create(reason=a["refused"], **fields)
            return
        made = self.Prediction.objects.create(
            model_sha256="0" * 64,
            label=a["label"],
            probability=a["probability"],
            threshold=0.5,
            guard_distance=a["guard_distance"],
            brightness=a["brightness"],
            contrast=a["contrast"],
            **fields,
        )
        if self.rng.random() < FEEDBACK_SHARE:
            self.Feedback.objects.create(
                prediction=made, true_label=a["truth"], consent=False, created_at=when
            )

    def day(self, pool: list[dict], per_day: float, hourly=None) -> int:
        """One day's uploads from ``pool`` (8:00-18:00); ``hourly(count)`` is called every
        hour with the uploads of the day so far and may stop the day by returning True."""
        n = int(self.rng.poisson(per_day))
        times = np.sort(self.rng.uniform(8, 18, n))
        sent = 0
        for hour in range(24):
            for t in times[(times >= hour) & (times < hour + 1)]:
                self.upload(pool[self.rng.integers(len(pool))], self.now + timedelta(hours=t))
                sent += 1
            if hourly is not None and hourly(sent):
                return sent
        self.now += timedelta(days=1)
        return sent

    def states(self) -> dict[str, str | None]:
        from diagnosis import drift

        report = drift.report(self.version, self.reference)
        return {s.name: s.state for s in report.signals}


def false_alarms(sets, version, reference, days, per_day, seeds) -> list[dict]:
    runs = []
    for seed in range(seeds):
        clinic = Clinic(version, reference, seed)
        counts = {"evaluations": 0, "alert": 0, "warn": 0, "signals": {}}

        def evaluate(_sent: int, counts=counts, clinic=clinic) -> bool:
            states = clinic.states()
            counts["evaluations"] += 1
            for level in ("alert", "warn"):
                raised = [name for name, s in states.items() if s == level]
                counts[level] += bool(raised)
                for name in raised:
                    counts["signals"][f"{name} {level}"] = (
                        counts["signals"].get(f"{name} {level}", 0) + 1
                    )
            return False

        uploads = sum(clinic.day(sets["in distribution"], per_day, evaluate) for _ in range(days))
        runs.append({"seed": seed, "uploads": uploads, **counts})
    return runs


def detection(sets, version, reference, per_day, seeds) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for kind in SHIFTS:
        found[kind] = []
        for seed in range(seeds):
            clinic = Clinic(version, reference, 1000 + seed)
            for _ in range(WARM_DAYS):
                clinic.day(sets["in distribution"], per_day)
            result = {"seed": seed, "shifted_uploads": None, "signals": [], "before": 0}

            def evaluate(sent: int, clinic=clinic, result=result) -> bool:
                raised = [n for n, s in clinic.states().items() if s == "alert"]
                if raised:
                    result["shifted_uploads"] = result["before"] + sent
                    result["signals"] = raised
                return bool(raised)

            for _ in range(DETECT_DAYS):
                result["before"] += clinic.day(sets[kind], per_day, evaluate)
                if result["shifted_uploads"] is not None:
                    break
            del result["before"]
            found[kind].append(result)
    return found


def accuracies(sets: dict[str, list[dict]], reference: dict) -> dict[str, dict]:
    rows = {
        "test split (the reference)": {
            "images": reference["images"],
            "refused": reference["refused"],
            "estimated": reference["estimated_accuracy"],
            "real": reference["accuracy"],
        }
    }
    for name, answers in sets.items():
        given = [a for a in answers if "refused" not in a]
        if not given:
            rows[name] = {"images": len(answers), "refused": 1.0, "estimated": None, "real": None}
            continue
        p = np.array([a["probability"] for a in given])
        decided = np.array([a["label"] == "PNEUMONIA" for a in given])
        truth = np.array([a["truth"] == "PNEUMONIA" for a in given])
        rows[name] = {
            "images": len(answers),
            "refused": 1 - len(given) / len(answers),
            "estimated": float(np.where(decided, p, 1 - p).mean()),
            "real": float((decided == truth).mean()),
        }
    return rows


def report(results: dict, args) -> list[str]:
    lines = [
        f"**False alarms**: {args.days} days x {args.seeds} seeds, ~{args.per_day:g} uploads a "
        "day, hourly evaluations",
        "",
        "| seed | uploads | evaluations | with an alert | with a warning | signals |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["false_alarms"]:
        signals = ", ".join(f"{k} {v}" for k, v in sorted(r["signals"].items())) or "-"
        lines.append(
            f"| {r['seed']} | {r['uploads']} | {r['evaluations']} | {r['alert']} | {r['warn']} |"
            f" {signals} |"
        )
    lines += [
        "",
        f"**Detection delay**: shifted uploads until the first alert, after {WARM_DAYS} days "
        "in distribution",
        "",
        "| shift | per seed | median | first signals |",
        "|---|---|---:|---|",
    ]
    for kind, runs in results["detection"].items():
        delays = [r["shifted_uploads"] for r in runs]
        caught = [d for d in delays if d is not None]
        median = f"{np.median(caught):.0f}" if len(caught) == len(delays) else "missed"
        first = sorted({s for r in runs for s in r["signals"]})
        shown = ", ".join("missed" if d is None else str(d) for d in delays)
        lines.append(f"| {kind} | {shown} | {median} | {', '.join(first) or '-'} |")
    lines += [
        "",
        "**Estimated vs real accuracy** (answered images only)",
        "",
        "| images | n | refused | estimated | real |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results["accuracy"].items():
        est = "-" if row["estimated"] is None else f"{row['estimated']:.3f}"
        real = "-" if row["real"] is None else f"{row['real']:.3f}"
        lines.append(f"| {name} | {row['images']} | {row['refused']:.1%} | {est} | {real} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=BUNDLE_DIR)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-day", type=float, default=40)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="a few images, 3 days, 1 seed")
    args = parser.parse_args(argv)
    if args.quick:
        args.days, args.seeds = 3, 1
    bundle = Bundle(args.bundle, threads=1)
    reference = bundle.manifest.get("reference")
    if reference is None:
        print(f"bench.drift: {args.bundle} records no drift reference: export it again")
        return 1
    sets = answered_sets(bundle, args.quick)
    with tempfile.TemporaryDirectory() as folder:
        setup_django(Path(folder))
        results = {
            "bundle": bundle.version,
            "false_alarms": false_alarms(
                sets, bundle.version, reference, args.days, args.per_day, args.seeds
            ),
            "detection": detection(sets, bundle.version, reference, args.per_day, args.seeds),
            "accuracy": accuracies(sets, reference),
        }
    print("\n".join(report(results, args)))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
