"""How well the served bundle's guard tells chest X-rays from everything else (issue 15).

    python -m bench.guard [--bundle models/bundle] [--out guard.json] [--quick]

Every input goes through ``Bundle.predict_bytes`` as an upload does (decode, cheap checks, the
feature distance). Two sets:

- **real chest X-rays**: every image of the shared data's train, val and test folders and the
  full-size originals in ``samples/``; the share refused should be <= 1 %;
- **a catalogue of what is not one** (``pneumonia.catalogue``, the one the export stage measures
  into ``model.json``; here its truncated and tiny X-ray copies are made from the shared test
  folder's originals): the share refused should be >= 99 %.

Prints one table per set, by group; ``--out`` keeps every decision as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from pneumonia.catalogue import decide, not_chest_xrays
from pneumonia.config import BUNDLE_DIR, SHARED_DATA_DIR
from pneumonia.serving import Bundle


def real_xrays(quick: bool) -> dict[str, list[Path]]:
    dataset, samples = SHARED_DATA_DIR / "chest_xray", SHARED_DATA_DIR / "samples"
    groups = {
        f"shared data, {split}": sorted((dataset / split).rglob("*.jpeg"))
        for split in ("train", "val", "test")
    }
    groups["full-size originals (samples/)"] = sorted(samples.rglob("*.jpeg"))
    if quick:
        groups = {name: paths[:6] for name, paths in groups.items()}
    return groups


def table(title: str, rows: dict[str, Counter], wanted: str) -> list[str]:
    lines = [f"**{title}**", "", "| group | images | refused | reasons |", "|---|---:|---:|---|"]
    total, refused = 0, 0
    for group, counts in rows.items():
        n = sum(counts.values())
        no = n - counts["answered"]
        total, refused = total + n, refused + no
        reasons = ", ".join(f"{r} {c}" for r, c in counts.most_common() if r != "answered")
        lines.append(f"| {group} | {n} | {no} ({no / n:.1%}) | {reasons or '-'} |")
    lines.append(
        f"| **all** | **{total}** | **{refused} ({refused / max(total, 1):.2%})** | {wanted} |"
    )
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=BUNDLE_DIR)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="a few inputs per group (tests)")
    args = parser.parse_args(argv)
    bundle = Bundle(args.bundle)
    if bundle.guard is None:
        print(f"guard: {args.bundle} has no guard (exported before it existed)", file=sys.stderr)
        return 1
    decisions: dict[str, dict[str, list]] = {"xrays": {}, "catalogue": {}}
    xrays = real_xrays(args.quick)
    for group, paths in xrays.items():
        decisions["xrays"][group] = [(p.name, decide(bundle, p.read_bytes())) for p in paths]
    test_files = [(p.name, p.read_bytes()) for p in xrays["shared data, test"]]
    for group, items in not_chest_xrays(test_files, args.quick).items():
        decisions["catalogue"][group] = [(name, decide(bundle, data)) for name, data in items]
    if args.out:
        args.out.write_text(json.dumps({"bundle": bundle.version, **decisions}, indent=1) + "\n")
    counted = {
        kind: {group: Counter(d for _, d in rows) for group, rows in groups.items()}
        for kind, groups in decisions.items()
    }
    print(f"bundle {bundle.version}, guard threshold {bundle.guard.threshold:.3f}\n")
    print("\n".join(table("Real chest X-rays", counted["xrays"], "target <= 1 %")))
    print("\n".join(table("Not chest X-rays", counted["catalogue"], "target >= 99 %")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
