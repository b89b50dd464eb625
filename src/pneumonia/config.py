"""Paths and fixed facts of the project, in one place.

Everything that can change between experiments lives in ``params.yaml``; everything here is
structure (where files go) or a fact about the dataset (its labels).
"""

from __future__ import annotations

import os
from pathlib import Path


def _find_root() -> Path:
    """The project the stages work on: PNEUMONIA_ROOT, else the nearest directory (from the
    current one up) holding ``dvc.yaml`` -- DVC runs stage commands there, so a copy of the repo
    (as in the end-to-end tests) works on its own files -- else this checkout."""
    if os.environ.get("PNEUMONIA_ROOT"):
        return Path(os.environ["PNEUMONIA_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "params.yaml").is_file():
            return folder
    return Path(__file__).resolve().parents[2]


ROOT = _find_root()

PARAMS_FILE = ROOT / "params.yaml"
DATA_DVC_FILE = ROOT / "chest_xray.dvc"

DATA_DIR = ROOT / "data"
RAW_DIR = DATA_DIR / "chest_xray"  # {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg, tracked by DVC
PREPARED_DIR = DATA_DIR / "prepared"  # decoded, resized arrays per split (prepare stage)

MODELS_DIR = ROOT / "models"
MODEL_FILE = MODELS_DIR / "model.pt"  # trained weights (train stage)
RUN_FILE = MODELS_DIR / "mlflow_run.json"  # the MLflow run the later stages log into
BUNDLE_DIR = MODELS_DIR / "bundle"  # model.onnx + model.json: what the web app serves

METRICS_DIR = ROOT / "metrics"
PLOTS_DIR = METRICS_DIR / "plots"  # CSV data for `dvc plots`
FIGURES_DIR = METRICS_DIR / "figures"  # the same plots as PNG images

MLFLOW_DIR = ROOT / ".mlflow"  # default local tracking store (ignored by git)

# Real images for tests and benchmarks (chest_xray/ and samples/): a copy beside the checkout,
# or PNEUMONIA_SHARED_DATA (CI on GitHub points it at data/, filled by `dvc pull`).
SHARED_DATA_DIR = Path(
    os.environ.get("PNEUMONIA_SHARED_DATA")
    or Path(__file__).resolve().parents[3] / "shared" / "data"
)
SAMPLES_DIR = SHARED_DATA_DIR / "samples"

# Dataset facts. Index = class id used by the model; PNEUMONIA is the positive class.
LABELS: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
POSITIVE_LABEL = "PNEUMONIA"
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Optional: a hospital's own labelled cases (its feedback export), used only to calibrate the
# served probabilities (evaluate.calibrate_on: site); never trained or tested on.
SITE_SPLIT = "site"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

# Input normalisation of torchvision's ImageNet-pretrained models; used for every init so that a
# bundle trained from random init and one fine-tuned from ImageNet are served the same way.
NORM_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
NORM_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
