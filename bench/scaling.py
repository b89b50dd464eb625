"""How each pipeline stage's time and memory grow with the data: 1x, 4x and 10x the dataset.

    python -m bench.scaling [--scales 1 4 10] [--data ../shared/data/chest_xray] [--quick]

The larger sets are synthesised from the real images in a scratch folder (never committed):
copy k of an image is re-encoded after a small random rotation, shift, brightness and contrast
change, under new patient ids (``person12_...`` -> ``person3012_...`` for copy 3), so that the
patient split, the duplicate check and every stage see realistic, distinct images. Each scale
runs the four stage commands (``python -m pneumonia.<stage>``) one after the other in a copy of
the project, with small training settings so that 10x fits a CPU runner's hour (they do not
change how the cost grows): ``prepare.image_size`` 64, one epoch. The export stage still builds
and checks the INT8 model, but its accuracy check may not refuse it: a one-epoch model's
decisions on a few test images are noise, and this measures cost, not accuracy.

Memory is sampled every 20 ms from /proc: peak RSS, and peak anonymous RSS (the process's own
memory; the rest of RSS is file pages of the memory-mapped arrays, which the kernel can drop
whenever it needs the room). Prints a Markdown table; ``--out`` keeps the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from PIL import Image, ImageEnhance

from pneumonia.config import SHARED_DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "evaluate", "export")
SETTINGS = {
    "prepare": {"image_size": 64},
    "train": {"weights": "none", "epochs": 1},
    "export": {"calibration_images": 64, "max_accuracy_drop": 1.0},
}
QUICK = {"train": 6, "val": 2, "test": 4}  # images per class and split of the real data
PATIENT = re.compile(r"^(person|NORMAL2-IM-|IM-)(\d+)")


def renamed(name: str, copy: int) -> str:
    """The file name of copy ``copy`` under a patient id no real image has."""
    match = PATIENT.match(name)
    if not match:
        return f"copy{copy}-{name}"
    return f"{match[1]}{copy}{int(match[2]):06d}{name[match.end() :]}"


def variant(path: Path, dest: Path, rng: random.Random) -> None:
    """A lightly transformed, re-encoded copy of a real image."""
    with Image.open(path) as image:
        image = image.convert("L")
        image = image.rotate(
            rng.uniform(-4, 4), translate=(rng.randint(-4, 4), rng.randint(-4, 4)), fillcolor=0
        )
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.92, 1.08))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.92, 1.08))
        image.save(dest, "JPEG", quality=rng.randint(85, 95))


def synthesise(source: Path, dest: Path, scale: int, quick: bool) -> int:
    """``dest`` holds the real images (or the quick subset) and ``scale - 1`` variants of each."""
    rng = random.Random(scale)
    count = 0
    for folder in sorted(p for p in source.glob("*/*") if p.is_dir()):
        files = sorted(folder.glob("*.jpeg"))
        if quick:
            files = files[: QUICK[folder.parent.name]]
        out = dest / folder.relative_to(source)
        out.mkdir(parents=True)
        for path in files:
            shutil.copy(path, out / path.name)
            for copy in range(1, scale):
                variant(path, out / renamed(path.name, copy), rng)
            count += scale
    return count


def project(root: Path, dataset: Path) -> None:
    """A copy of the pipeline at ``root`` working on ``dataset`` with the benchmark settings."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", "chest_xray.dvc"):
        shutil.copy(ROOT / name, root / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in SETTINGS.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data").mkdir()
    (root / "data" / "chest_xray").symlink_to(dataset)


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) of one process in KiB; (0, 0) once it is gone."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0, 0
    return tuple(int(fields.get(k, "0 kB").split()[0]) for k in ("VmRSS", "RssAnon"))


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (loader workers, torchrun's processes)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        queue.extend(int(c) for c in children)
    return found


def run_stage(stage: str, root: Path, log: Path) -> dict[str, float]:
    """Run one stage command; its wall time and the peaks of its process tree's memory."""
    env = {**os.environ, "PNEUMONIA_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own local store
    peak = {"rss": 0, "anon": 0}
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"pneumonia.{stage}"], cwd=root, env=env, stdout=out, stderr=out
        )

        def sample() -> None:
            while proc.poll() is None:
                totals = [memory_kib(p) for p in tree(proc.pid)]
                peak["rss"] = max(peak["rss"], sum(t[0] for t in totals))
                peak["anon"] = max(peak["anon"], sum(t[1] for t in totals))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        sampler.join()
    seconds = time.perf_counter() - started
    if code != 0:
        # The log lies in the scratch folder, which is removed on the way out: show its end.
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{stage} exited {code}; the end of its output:\n{tail}")
    return {
        "seconds": round(seconds, 1),
        "rss_mib": peak["rss"] // 1024,
        "anon_mib": peak["anon"] // 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--data", type=Path, default=SHARED_DATA_DIR / "chest_xray")
    parser.add_argument("--out", type=Path, help="write the numbers here as JSON")
    parser.add_argument("--quick", action="store_true", help="a few images per class (tests)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as scratch:
        for scale in args.scales:
            dataset = Path(scratch) / f"data-{scale}x"
            images = synthesise(args.data.resolve(), dataset, scale, args.quick)
            root = Path(scratch) / f"project-{scale}x"
            project(root, dataset)
            row = {"scale": scale, "images": images}
            for stage in STAGES:
                row[stage] = run_stage(stage, root, Path(scratch) / f"{scale}x-{stage}.log")
                print(f"{scale}x {stage}: {json.dumps(row[stage])}", file=sys.stderr, flush=True)
            results.append(row)
            shutil.rmtree(dataset)
            shutil.rmtree(root)
    if args.out:
        args.out.write_text(json.dumps({"settings": SETTINGS, "runs": results}, indent=2) + "\n")
    print("| data | images | " + " | ".join(f"{s} s / RSS / anon MiB" for s in STAGES) + " |")
    print("|---|---:|" + "---:|" * len(STAGES))
    for row in results:
        cells = [
            f"{row[s]['seconds']} / {row[s]['rss_mib']} / {row[s]['anon_mib']}" for s in STAGES
        ]
        print(f"| {row['scale']}x | {row['images']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
