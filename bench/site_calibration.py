"""Would calibrating on a site's own labelled cases help? An honest measurement with the data
there is (issue 15): the visible test split stands in for "a new site".

    python -m bench.site_calibration [--model models/model.pt] [--prepared data/prepared]
                                     [--splits 50] [--out site.json]

The test split's patients are divided at random into two halves: the site's **calibration**
half (the labelled cases a hospital would export from the app's feedback) and its
**evaluation** half. On the evaluation half, two ways of fitting the served probability
(``evaluate.calibration``) and the decision threshold (``evaluate.threshold_method``) compare:

- **validation**: fitted on the validation split, as the pipeline does now;
- **site**: both fitted on the site's calibration half instead;
- **site probabilities**: the calibration fitted on the site's half, the decisions kept as
  validation chose them (the same logit margin, so the same labels as ``validation``).

Repeated over ``--splits`` random divisions (the halves are ~150 images, so one division is
noisy); prints mean ± standard deviation of the evaluation half's ECE, sensitivity,
specificity and accuracy. The model and its training are untouched: this measures only what
refitting two numbers and a threshold on local cases would change.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from pneumonia.config import MODEL_FILE, PREPARED_DIR
from pneumonia.evaluate import Fit, fit
from pneumonia.model import load_checkpoint, predict_logits
from pneumonia.params import load as load_params
from pneumonia.prepared import load_split

SHOWN = ("ece", "sensitivity", "specificity", "accuracy")


def same_decisions(decides: Fit, calibration: Fit) -> Fit:
    """``calibration``'s scale and bias with the threshold that decides as ``decides`` does:
    both map the logit margin monotonically, so the boundary margin gives the new threshold."""
    threshold = decides.threshold
    margin = (math.log(threshold / (1 - threshold)) - decides.bias) / decides.scale
    new = 1 / (1 + math.exp(-(calibration.scale * margin + calibration.bias)))
    return Fit(calibration.scale, calibration.bias, new)


def study(val, test, val_logits, test_logits, params, splits: int) -> dict[str, list[dict]]:
    patients = np.array(test.patients)
    unique = np.unique(patients)
    results: dict[str, list[dict]] = {"validation": [], "site": [], "site probabilities": []}
    validation_fit = fit(val_logits, val.labels, params)
    for seed in range(splits):
        rng = np.random.default_rng(seed)
        site_patients = set(rng.permutation(unique)[: len(unique) // 2].tolist())
        calibration = np.array([p in site_patients for p in patients])
        evaluation = ~calibration
        cal_labels, eval_labels = test.labels[calibration], test.labels[evaluation]
        if len(np.unique(cal_labels)) < 2 or len(np.unique(eval_labels)) < 2:
            continue
        site_fit = fit(test_logits[calibration], cal_labels, params)
        fits = {
            "validation": validation_fit,
            "site": site_fit,
            "site probabilities": same_decisions(validation_fit, site_fit),
        }
        for name, fitted in fits.items():
            scores = fitted.score(test_logits[evaluation], eval_labels)
            results[name].append({k: scores[k] for k in SHOWN})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_FILE)
    parser.add_argument("--prepared", type=Path, default=PREPARED_DIR)
    parser.add_argument("--splits", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    params = load_params().evaluate
    model, _ = load_checkpoint(args.model)
    val, test = load_split("val", args.prepared), load_split("test", args.prepared)
    val_logits, test_logits = predict_logits(model, val.images), predict_logits(model, test.images)
    results = study(val, test, val_logits, test_logits, params, args.splits)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"{len(results['site'])} random halvings of the test split's patients; "
        f"evaluation half ~{len(test.labels) // 2} images\n"
    )
    print("| fitted on | " + " | ".join(SHOWN) + " |")
    print("|---|" + "---:|" * len(SHOWN))
    for name, rows in results.items():
        values = {k: [r[k] for r in rows] for k in SHOWN}
        cells = [f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" for v in values.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
