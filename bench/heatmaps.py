"""Where the served model looks: how often the heat map's peak falls outside the chest.

    python -m bench.heatmaps [--bundle models/bundle] [--prepared data/prepared] [--split test]

For every image of the split, the class activation map the app draws (``Prediction.heat_map``:
the positive class's CAM on the last feature map) at the model's input size; its peak is
counted as outside the chest when it lies outside a central box: the middle 70% of the width
and the rows from 10% to 90% of the height (the published images are framed on the chest;
the box leaves out the corners, the neck and the abdomen, where labels, markers and electrodes
sit). Prints the share outside, by true class and by decision.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pneumonia.config import BUNDLE_DIR, LABELS, PREPARED_DIR
from pneumonia.prepared import load_split
from pneumonia.serving import Bundle, class_activation_map

BOX_X = (0.15, 0.85)
BOX_Y = (0.10, 0.90)


def peak_outside(cam: np.ndarray) -> bool:
    """Whether the map's highest point lies outside the central chest box."""
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    y, x = (row + 0.5) / cam.shape[0], (col + 0.5) / cam.shape[1]
    return not (BOX_X[0] <= x <= BOX_X[1] and BOX_Y[0] <= y <= BOX_Y[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=BUNDLE_DIR)
    parser.add_argument("--prepared", type=Path, default=PREPARED_DIR)
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    bundle = Bundle(args.bundle)
    split = load_split(args.split, args.prepared)
    outside, positive = [], []
    for start in range(0, len(split.labels), 64):
        logits, features = bundle.run(np.asarray(split.images[start : start + 64]))
        positive += list(bundle.calibrated(logits) >= bundle.threshold)
        for maps in features:
            cam = class_activation_map(maps, bundle.class_weight, bundle.size)
            outside.append(peak_outside(cam))
    outside_, positive_ = np.array(outside), np.array(positive)
    print(f"bundle {bundle.version}, {args.split} split, {len(outside_)} images\n")
    print("| images | heat-map peak outside the chest box |")
    print("|---|---:|")
    groups = {"all": np.ones_like(outside_)}
    for index, label in enumerate(LABELS):
        groups[f"true {label}"] = split.labels == index
    groups["called PNEUMONIA"], groups["called NORMAL"] = positive_, ~positive_
    for name, mask in groups.items():
        share = outside_[mask].mean() if mask.any() else float("nan")
        print(f"| {name} ({int(mask.sum())}) | {share:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
