"""The model gate: does this work tree serve a model that should replace the base branch's?

    python -m pneumonia.gate --base origin/main [--root pr] [--pull] [--json gate.json]

The gate judges models, not pull requests, and trusts none of a pull request's claims: run it
from the base branch's code (the pr-review workflow does) over the pull request's files in
``--root``. It first asks whether the served model changed: the identity in
``metrics/served.json`` (ONNX sha256, input, calibration, threshold, labels) here against the
base revision's, and the bundle ``dvc.lock`` names here against the base's. Unchanged (a fix to
the app, the docs or a template): it passes and says so, with nothing fetched.

Changed: the bundle is checked before anything it claims is believed. ``models/bundle`` must be
the one ``dvc.lock`` names (DVC's md5 of the folder), its ``model.onnx`` must have the sha256 and
its manifest the identity that ``served.json`` records, and the test split is rebuilt from
``data/chest_xray`` as the prepare stage builds it (its fingerprint must be the one recorded).
The bundle then answers every test image as served, and those answers, not the committed
``metrics/served_test.csv``, are what is judged; a committed answer that differs from the
bundle's (beyond ``ANSWER_TOLERANCE``), or a committed list of other images, fails the gate and
says which. The rules of ``params.yaml`` section ``gate`` (the base revision's: a pull request
cannot loosen the gate that judges it) then apply, to both models as they are served (INT8
where that is what the app runs) and on the same test images: the challenger's test sensitivity
must be at least ``min_sensitivity`` and its accuracy must beat the champion's by more than
``min_accuracy_gain``; with ``require_significant_gain`` the gain must also be significant
(exact McNemar test at ``significance_level``). Whatever the rules, the verdict gives what a
reviewer needs to judge a small gain: how many decisions flipped each way, the exact McNemar
p-value and a paired bootstrap 95% interval of the accuracy difference.

The champion's answers are the base revision's ``served_test.csv`` (judged when it merged) when
the test split is the same; otherwise its bundle is fetched through DVC at the base revision and
re-scored on this test split. With no served model on the base revision the challenger passes as
the first champion; so does it when ``--pull`` finds the base revision's bundle missing from the
DVC remote (a fork's first retrain: the upstream's champion can be neither served nor re-scored
there), and the verdict says so. ``--pull`` fetches what a changed model needs (``dvc pull`` of
the bundle and the test images) and nothing for an unchanged one. Exit status: 0 pass, 1 a rule
failed or the records do not match the bundle, 2 missing or malformed records (the message says
which file and what to do).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pneumonia import config
from pneumonia.metrics import classification_metrics
from pneumonia.params import BehaviourParams, GateParams, ParamsError, as_dict, from_mapping
from pneumonia.params import load as load_params
from pneumonia.served import (
    SERVED_JSON,
    SERVED_TEST_CSV,
    MetricsError,
    Predictions,
    identity,
    parse_predictions,
    parse_record,
    without_guard,
)

COMPARED = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc")
UNCHANGED = "model unchanged"
GUARD_ONLY = "guard changed, answers unchanged"
MISMATCH = "the records do not match the bundle"
FIRST_IN_REMOTE = "none in this DVC remote"
BUNDLE = "models/bundle"
# served_test.csv keeps 6 decimals; the same INT8 graph on another CPU moves a probability by
# far less than this. The verdict uses the bundle's own answers in any case.
ANSWER_TOLERANCE = 1e-3
__all__ = ["MetricsError", "Verdict", "run_gate", "judge", "paired_comparison"]


class Mismatch(Exception):
    """What a pull request commits does not match what its bundle is and answers."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass
class Verdict:
    passed: bool
    # "model unchanged" | "guard changed, answers unchanged" | "served metrics on <base>" |
    # "re-scored on this test split" | "none" | "none in this DVC remote" |
    # "the records do not match the bundle"
    baseline: str
    reasons: list[str] = field(default_factory=list)
    challenger: dict[str, Any] | None = None  # served test metrics of this work tree's model
    champion: dict[str, Any] | None = None  # the base revision's, on the same test images
    comparison: dict[str, Any] | None = None  # paired: flips, McNemar, bootstrap interval
    rules: dict[str, Any] = field(default_factory=dict)
    # pneumonia.behaviour's checks of a changed model: invariance, directional, easy cases
    behaviour: dict[str, Any] | None = None

    @property
    def model_changed(self) -> bool:
        return self.baseline != UNCHANGED

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_changed": self.model_changed}


def git_show(rev: str, path: str, root: Path) -> str | None:
    """A file's content at ``rev``, or None when it does not exist there."""
    result = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True
    )
    return result.stdout if result.returncode == 0 else None


def rev_exists(rev: str, root: Path) -> bool:
    result = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=root,
        capture_output=True,
    )
    return result.returncode == 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs against a fair coin."""
    n = fixed + broken
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(fixed, broken) + 1))
    return min(1.0, 2 * tail / 2**n)


def bootstrap_interval(
    challenger_correct: np.ndarray, champion_correct: np.ndarray, resamples: int, seed: int = 0
) -> tuple[float, float]:
    """Paired bootstrap 95% interval of the accuracy difference (images resampled together)."""
    difference = challenger_correct.astype(np.int8) - champion_correct.astype(np.int8)
    rng = np.random.default_rng(seed)
    n = len(difference)
    means = []
    chunk = max(1, 2_000_000 // n)  # resamples per batch, to bound memory on large test sets
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        means.append(difference[idx].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return float(low), float(high)


def paired_comparison(
    challenger_correct: np.ndarray, champion_correct: np.ndarray, resamples: int
) -> dict[str, Any]:
    """How the two models' decisions differ on the same images, and whether that is noise."""
    fixed = int(np.sum(challenger_correct & ~champion_correct))
    broken = int(np.sum(~challenger_correct & champion_correct))
    low, high = bootstrap_interval(challenger_correct, champion_correct, resamples)
    return {
        "n": int(len(challenger_correct)),
        "fixed": fixed,  # the champion was wrong, the challenger is right
        "broken": broken,  # the champion was right, the challenger is wrong
        "accuracy_difference": (fixed - broken) / len(challenger_correct),
        "mcnemar_p": mcnemar_exact(fixed, broken),
        "bootstrap_ci95": [low, high],
        "bootstrap_resamples": int(resamples),
    }


def locked_bundle_md5(lock_text: str | None) -> str | None:
    """The md5 that a ``dvc.lock`` records for the export stage's ``models/bundle``."""
    stages = (yaml.safe_load(lock_text) or {}).get("stages", {}) if lock_text else {}
    for out in (stages.get("export") or {}).get("outs", []):
        if out.get("path") == BUNDLE:
            return out.get("md5")
    return None


def dir_md5(folder: Path) -> str:
    """DVC's hash of a folder: the md5 of its ``.dir`` listing (files' md5s by relative path)."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        entries.append({"md5": digest.hexdigest(), "relpath": path.relative_to(folder).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"


def dvc_pull(root: Path, target: str) -> None:
    """``dvc pull target`` in ``root`` (the DVC beside this Python, else the PATH's)."""
    beside = Path(sys.executable).with_name("dvc")
    dvc = str(beside) if beside.exists() else shutil.which("dvc") or "dvc"
    result = subprocess.run([dvc, "pull", "-q", target], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip()[-400:] or f"exit {result.returncode}"
        raise MetricsError(
            f"`dvc pull {target}` failed ({said}): "
            "the gate needs it to check a changed model. Is the DVC remote reachable with the "
            "secrets of this job, and was the bundle pushed (`dvc push` after `dvc repro`)? A "
            "pull request from a fork cannot push to the project's remote: a maintainer must "
            "retrain or push its model before the gate can judge it."
        )


def verified_bundle(root: Path, record: dict[str, Any], pull: bool) -> Path:
    """The work tree's ``models/bundle``, checked to be what ``dvc.lock`` names and what
    ``served.json`` says it serves; Mismatch otherwise."""
    locked = locked_bundle_md5(_read(root / "dvc.lock"))
    if locked is None:
        raise MetricsError(f"dvc.lock names no {BUNDLE}: run `dvc repro` (the export stage)")
    folder = root / BUNDLE
    if pull and not (folder.is_dir() and dir_md5(folder) == locked):
        dvc_pull(root, BUNDLE)
    if not (folder / "model.json").is_file() or not (folder / "model.onnx").is_file():
        raise MetricsError(f"{BUNDLE} is missing: run `dvc pull {BUNDLE}` before the gate")
    reasons = []
    actual = dir_md5(folder)
    if actual != locked:
        reasons.append(f"{BUNDLE} has md5 {actual}, but dvc.lock names {locked}")
    from pneumonia.serving import sha256_file

    onnx_sha = sha256_file(folder / "model.onnx")
    claimed = record["model"].get("onnx_sha256")
    if onnx_sha != claimed:
        reasons.append(f"{BUNDLE}/model.onnx has sha256 {onnx_sha}, {SERVED_JSON} says {claimed}")
    try:
        manifest = json.loads((folder / "model.json").read_text())
        served = identity({**manifest, "onnx_sha256": onnx_sha})
    except (ValueError, KeyError, TypeError) as exc:
        raise Mismatch([f"{BUNDLE}/model.json cannot be read as a manifest ({exc})"]) from None
    differing = sorted(
        k
        for k in served.keys() | record["model"].keys()
        if served.get(k) != record["model"].get(k) and k != "onnx_sha256"
    )
    if differing:
        reasons.append(
            f"{SERVED_JSON} describes another model than {BUNDLE} serves "
            f"(differs in: {', '.join(differing)})"
        )
    if reasons:
        raise Mismatch(reasons)
    return folder


def remote_holds(root: Path, md5: str) -> bool:
    """Whether the DVC remote configured in ``root`` holds the object ``md5`` (a folder's
    ``.dir`` listing, which ``dvc push`` uploads with its files); MetricsError when the remote
    cannot be asked (credentials, network), so that an outage never reads as "absent"."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            odb = repo.cloud.get_remote_odb(command="gate")
            # info(), not exists(): fsspec's exists() answers False for any error at all
            odb.fs.info(odb.oid_to_path(md5))
            return True
    except FileNotFoundError:
        return False
    except Exception as exc:  # DVC, s3fs and botocore raise their own kinds
        raise MetricsError(
            f"cannot ask the DVC remote whether it holds the champion's {BUNDLE} "
            f"({exc.__class__.__name__}: {str(exc)[:300]}): is it reachable with this job's "
            "secrets (docs/operations.md, Secrets)?"
        ) from None


def champion_absent(base: str, root: Path, base_record: dict[str, Any]) -> str | None:
    """Why the base revision's champion cannot be the champion here: its bundle is not in the
    DVC remote (a fork's own remote starts without the upstream's models), or None."""
    locked = locked_bundle_md5(git_show(base, "dvc.lock", root))
    if locked is None or remote_holds(root, locked):
        return None
    return (
        f"the champion on {base} (version {base_record.get('version')}, {BUNDLE} {locked}) is "
        "not in this repository's DVC remote, so it can be neither served nor re-scored: a fork "
        "starts without the upstream's models (where it was trained, `dvc push` puts it back). "
        "This model is judged as the first champion of this remote, on the rules that need no "
        "champion"
    )


def rebuilt_test_split(root: Path, pull: bool) -> tuple[list[str], np.ndarray, str]:
    """The test split as the prepare stage makes it from ``data/chest_xray``: every test image
    that decodes, byte-identical copies kept once; (files, labels, fingerprint)."""
    from pneumonia.data import content_hash, list_images
    from pneumonia.prepare import split_fingerprint
    from pneumonia.serving import InvalidImage, read_image

    raw = root / "data" / "chest_xray"
    if pull:
        dvc_pull(root, "chest_xray.dvc")
    records = [r for r in list_images(raw) if r.split == "test"] if raw.is_dir() else []
    if not records:
        raise MetricsError(
            f"no test images under {raw}: run `dvc pull chest_xray.dvc` before the gate"
        )
    files, labels, items, seen = [], [], [], set()
    for record in records:
        data = record.path.read_bytes()
        try:
            read_image(data)
        except InvalidImage:
            continue  # prepare rejects it too
        digest = content_hash(data)
        if digest in seen:
            continue
        seen.add(digest)
        name = f"test/{record.label}/{record.path.name}"
        files.append(name)
        labels.append(config.LABELS.index(record.label))
        items.append((name, digest))
    return files, np.asarray(labels), split_fingerprint(items)


def bundle_answers(bundle_dir: Path, root: Path, files: list[str]) -> tuple[np.ndarray, float]:
    """The bundle's calibrated probabilities for ``files`` (under data/chest_xray), decoded and
    resized as served, in batches; and its threshold."""
    from pneumonia.data import load_image
    from pneumonia.serving import Bundle, resize

    bundle = Bundle(bundle_dir)
    missing = [f for f in files if not (root / "data" / "chest_xray" / f).is_file()]
    if missing:
        raise MetricsError(
            f"{len(missing)} test image(s) are not in data/chest_xray (e.g. {missing[0]}): "
            "run `dvc pull chest_xray.dvc` before the gate"
        )
    probabilities = []
    for start in range(0, len(files), 64):  # batches: memory stays flat on large test sets
        batch = files[start : start + 64]
        images = np.stack(
            [resize(load_image(root / "data" / "chest_xray" / f), bundle.size) for f in batch]
        )
        probabilities.append(bundle.probabilities(images))
    return np.concatenate(probabilities), bundle.threshold


def verified_answers(
    root: Path, record: dict[str, Any], committed: Predictions, bundle_dir: Path, pull: bool
) -> Predictions:
    """The bundle's own answers on the rebuilt test split, after checking that the committed
    record and per-image answers are the bundle's; Mismatch (naming what differs) otherwise."""
    files, labels, fingerprint = rebuilt_test_split(root, pull)
    reasons = []
    if record.get("test_data") != fingerprint:
        reasons.append(
            f"{SERVED_JSON} says the model was measured on test split {record.get('test_data')}, "
            f"but data/chest_xray's test split is {fingerprint}"
        )
    listed, expected = set(committed.files), set(files)
    if listed != expected:
        absent, extra = sorted(expected - listed), sorted(listed - expected)
        what = []
        if absent:
            what.append(f"leaves out {len(absent)} test image(s) (e.g. {absent[0]})")
        if extra:
            what.append(f"lists {len(extra)} image(s) not in the test split (e.g. {extra[0]})")
        reasons.append(f"{SERVED_TEST_CSV} {' and '.join(what)}")
    probabilities, _ = bundle_answers(bundle_dir, root, files)
    answers = Predictions(files, labels, probabilities)
    if not reasons:
        order = {name: i for i, name in enumerate(committed.files)}
        idx = np.array([order[name] for name in files])
        if not np.array_equal(committed.labels[idx], labels):
            reasons.append(f"{SERVED_TEST_CSV} gives other labels than data/chest_xray's folders")
        difference = np.abs(committed.probabilities[idx] - probabilities)
        off = np.flatnonzero(difference > ANSWER_TOLERANCE)
        if len(off):
            worst = int(off[np.argmax(difference[off])])
            reasons.append(
                f"{SERVED_TEST_CSV} differs from what the bundle answers on {len(off)} of "
                f"{len(files)} test images (e.g. {files[worst]}: committed "
                f"{committed.probabilities[idx][worst]:.6f}, the bundle says "
                f"{probabilities[worst]:.6f}); export again (`dvc repro export`) and commit "
                "its outputs as they are"
            )
    if reasons:
        raise Mismatch(reasons)
    return answers


def rescore_champion(
    base: str, root: Path, files: list[str], labels: np.ndarray
) -> tuple[Predictions, float]:
    """The base revision's bundle, fetched through DVC, scored on ``files`` (this work tree's
    test split, decoded from data/chest_xray at the champion's own input size), with the
    champion's own threshold."""
    from dvc.api import DVCFileSystem

    with tempfile.TemporaryDirectory() as tmp:
        fs = DVCFileSystem(str(root), rev=base)
        try:
            fs.get(BUNDLE, str(Path(tmp) / "bundle"), recursive=True)
        except Exception as exc:  # DVC raises a variety of errors for missing data
            raise MetricsError(
                f"cannot fetch the champion's {BUNDLE} at {base} to re-score it on the new "
                f"test data ({exc.__class__.__name__}: {exc}); is the DVC remote reachable, and "
                "does it hold main's model? (`dvc push` from the machine that trained it)"
            ) from exc
        probabilities, threshold = bundle_answers(Path(tmp) / "bundle", root, files)
        return Predictions(list(files), labels, probabilities), threshold


def aligned(champion: Predictions, challenger: Predictions, source: str) -> Predictions:
    """The champion's answers in the challenger's order; both must cover the same images."""
    order = {name: i for i, name in enumerate(champion.files)}
    if sorted(order) != sorted(challenger.files):
        raise MetricsError(
            f"{source} lists other test images than {SERVED_TEST_CSV} although the test data "
            "fingerprints match: export again (`dvc repro export`)"
        )
    idx = np.array([order[name] for name in challenger.files])
    if not np.array_equal(champion.labels[idx], challenger.labels):
        raise MetricsError(f"{source} gives other labels for the same test images")
    return Predictions(challenger.files, challenger.labels, champion.probabilities[idx])


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    comparison: dict[str, Any] | None,
    rules: dict[str, Any],
) -> tuple[bool, list[str]]:
    """Apply the gate's rules to a changed model; return (passed, reasons)."""
    reasons = []
    passed = True
    floor = float(rules["min_sensitivity"])
    if challenger["sensitivity"] < floor:
        passed = False
        reasons.append(
            f"sensitivity {challenger['sensitivity']:.4f} is below the floor {floor:.4f}"
        )
    else:
        reasons.append(f"sensitivity {challenger['sensitivity']:.4f} >= floor {floor:.4f}")
    if champion is None or comparison is None:
        reasons.append("no champion to compare with: this model becomes the first champion")
        return passed, reasons
    gain = challenger["accuracy"] - champion["accuracy"]
    needed = float(rules["min_accuracy_gain"])
    if gain > needed:
        reasons.append(
            f"accuracy {challenger['accuracy']:.4f} beats the champion's "
            f"{champion['accuracy']:.4f} ({gain:+.4f})"
        )
    else:
        passed = False
        reasons.append(
            f"accuracy {challenger['accuracy']:.4f} does not beat the champion's "
            f"{champion['accuracy']:.4f} ({gain:+.4f}; must be > {needed:+.4f})"
        )
    low, high = comparison["bootstrap_ci95"]
    p, alpha = comparison["mcnemar_p"], float(rules["significance_level"])
    reasons.append(
        f"on the same {comparison['n']} test images: {comparison['fixed']} decision(s) fixed, "
        f"{comparison['broken']} broken; exact McNemar p = {p:.3g}; paired bootstrap 95% "
        f"interval of the accuracy difference [{low:+.4f}, {high:+.4f}]"
    )
    significant = p < alpha and (low > 0 or high < 0)
    if not significant:
        reasons.append(
            f"the difference is within noise (p >= {alpha:g} or the interval includes 0): "
            "this test split cannot tell the two models apart"
        )
        if rules["require_significant_gain"] and passed:
            passed = False
            reasons.append("gate.require_significant_gain is set: a gain within noise fails")
    return passed, reasons


def gate_rules(base: str, root: Path) -> dict[str, Any]:
    """The rules the base branch enforces (its params.yaml), so that a pull request cannot
    loosen the gate it is judged by; the work tree's when the base has none."""
    raw = git_show(base, "params.yaml", root)
    section = (yaml.safe_load(raw) or {}).get("gate") if raw else None
    if section is None:
        return as_dict(load_params(root / "params.yaml").gate)
    if isinstance(section, dict) and "behaviour" not in section:
        # a base from before the behavioural checks: they apply as this work tree sets them
        section = {
            **section,
            "behaviour": as_dict(load_params(root / "params.yaml").gate)["behaviour"],
        }
    try:
        rules = from_mapping(GateParams, section, "gate")
        rules.check()
    except ParamsError as exc:
        raise ParamsError(f"{base}'s {exc}") from None
    return as_dict(rules)


def base_record_at(base: str, root: Path) -> dict[str, Any] | None:
    raw = git_show(base, SERVED_JSON, root)
    return None if raw is None else parse_record(raw, f"{SERVED_JSON} at {base}")


def run_gate(base: str, root: Path | None = None, pull: bool = False) -> Verdict:
    """Compare the model this work tree serves with the one ``base`` serves, judging the
    bundle's own answers (``pull``: fetch what that needs through DVC first)."""
    root = root or config.ROOT
    record = parse_record(_read(root / SERVED_JSON), SERVED_JSON)
    predictions = parse_predictions(_read(root / SERVED_TEST_CSV), SERVED_TEST_CSV)
    if not rev_exists(base, root):
        raise MetricsError(f"the base revision {base!r} does not exist (fetch it first)")
    rules = gate_rules(base, root)
    base_record = base_record_at(base, root)
    try:
        if base_record is not None and base_record["model"] == record["model"]:
            reasons = [
                f"the served model is the one on {base} (version {record.get('version')}: same "
                "ONNX file, calibration and threshold): nothing to judge, the champion stays"
            ]
            here = locked_bundle_md5(_read(root / "dvc.lock"))
            if here != locked_bundle_md5(git_show(base, "dvc.lock", root)):
                verified_bundle(root, record, pull)  # re-exported: it must still be that model
                reasons.append(f"{BUNDLE} was exported again; checked to serve that model")
            else:
                reasons.append("the DVC remote was not needed: the same bundle as on the base")
            return Verdict(
                True, UNCHANGED, reasons, record.get("test"), base_record.get("test"), None, rules
            )
        bundle_dir = verified_bundle(root, record, pull)
        if base_record is not None and without_guard(base_record["model"]) == without_guard(
            record["model"]
        ):
            refused = (record.get("guard_refused") or {}).get("validation")
            share = "" if refused is None else f"; it refuses {refused:.1%} of validation images"
            reasons = [
                f"only the input guard changed: every image it lets through gets the answer of "
                f"the model on {base} (same ONNX file, calibration and threshold){share}"
            ]
            return Verdict(
                True, GUARD_ONLY, reasons, record.get("test"), base_record.get("test"), None, rules
            )
        answers = verified_answers(root, record, predictions, bundle_dir, pull)
    except Mismatch as exc:
        reasons = [
            *exc.reasons,
            "the gate judges what the bundle is and answers, not what the pull request's files "
            "say about it: nothing else was compared",
        ]
        return Verdict(False, MISMATCH, reasons, None, None, None, rules)
    return judge(base, root, record, answers, check_remote=pull, bundle_dir=bundle_dir)


def behaviour_checked(
    verdict: Verdict,
    root: Path,
    answers: Predictions,
    threshold: float,
    bundle_dir: Path | None,
    champion: tuple[Predictions, float] | None,
) -> Verdict:
    """``verdict`` with ``pneumonia.behaviour``'s checks added to its reasons and its outcome:
    invariance and directional where the bundle is at hand (``bundle_dir``), the known easy
    cases where there is a champion."""
    from pneumonia import behaviour

    params = from_mapping(BehaviourParams, verdict.rules["behaviour"], "gate.behaviour")
    found: dict[str, Any] = {}
    if bundle_dir is not None:
        files = [root / "data" / "chest_xray" / name for name in answers.files]
        found.update(behaviour.bundle_checks(bundle_dir, files, params))
    if champion is not None:
        found["easy"] = behaviour.easy_cases(
            answers.labels,
            (champion[0].probabilities, champion[1]),
            (answers.probabilities, threshold),
            params,
        )
    ok, lines = behaviour.verdict_lines(found, params)
    if bundle_dir is None:
        lines.insert(0, "invariance and directional checks: not run (no bundle to check)")
    verdict.passed = verdict.passed and ok
    verdict.reasons.extend(lines)
    verdict.behaviour = found
    return verdict


def judge(
    base: str,
    root: Path,
    record: dict[str, Any],
    answers: Predictions,
    check_remote: bool = False,
    bundle_dir: Path | None = None,
) -> Verdict:
    """The rules of the base revision applied to a changed model whose answers on the test
    split (``answers``, in the order of the split) are known to be its own (``check_remote``:
    the champion counts only when the DVC remote holds its bundle; ``bundle_dir``: its bundle,
    for the behavioural checks)."""
    rules = gate_rules(base, root)
    base_record = base_record_at(base, root)
    threshold = record["model"]["threshold"]
    challenger = classification_metrics(answers.labels, answers.probabilities, threshold)

    def checked(verdict: Verdict, champion=None) -> Verdict:
        return behaviour_checked(verdict, root, answers, threshold, bundle_dir, champion)

    if base_record is None:
        passed, reasons = decide(challenger, None, None, rules)
        return checked(Verdict(passed, "none", reasons, challenger, None, None, rules))
    absent = champion_absent(base, root, base_record) if check_remote else None
    if absent:
        passed, reasons = decide(challenger, None, None, rules)
        first = Verdict(passed, FIRST_IN_REMOTE, [absent, *reasons], challenger, None, None, rules)
        return checked(first)
    if record.get("test_data") is not None and base_record.get("test_data") == record["test_data"]:
        source = f"{SERVED_TEST_CSV} at {base}"
        champion_predictions = aligned(
            parse_predictions(git_show(base, SERVED_TEST_CSV, root), source), answers, source
        )
        champion_threshold = base_record["model"]["threshold"]
        baseline = f"served metrics on {base}"
    else:
        champion_predictions, champion_threshold = rescore_champion(
            base, root, answers.files, answers.labels
        )
        baseline = "re-scored on this test split"
    champion = classification_metrics(
        champion_predictions.labels, champion_predictions.probabilities, champion_threshold
    )
    comparison = paired_comparison(
        answers.correct(threshold),
        champion_predictions.correct(champion_threshold),
        int(rules["bootstrap_resamples"]),
    )
    passed, reasons = decide(challenger, champion, comparison, rules)
    verdict = Verdict(passed, baseline, reasons, challenger, champion, comparison, rules)
    return checked(verdict, (champion_predictions, champion_threshold))


def add_judged_arguments(parser: argparse.ArgumentParser, default: str, what: str) -> None:
    """``--base``, ``--root`` (the work tree judged: a pull request's files, read as data) and
    ``--pull`` (fetch what a changed model needs through DVC)."""
    parser.add_argument("--base", default=default, help=what)
    parser.add_argument(
        "--root",
        type=Path,
        default=config.ROOT,
        help="the work tree to judge (default: this checkout); its code is never run",
    )
    parser.add_argument(
        "--pull",
        action="store_true",
        help="dvc pull the bundle and the test images when the model changed",
    )


def against_base(
    name: str, doc: str, default: str, what: str, argv: list[str] | None, json_out: bool = False
):
    """The arguments of a command that compares with a ``--base`` revision (``what`` it is;
    ``json_out``: and takes ``--json``), and a function that runs
    ``decide(base, root=..., pull=...)``: its result, or None after printing ``<name>: error:``
    for a served record or a params.yaml that cannot be trusted (the command then exits 2)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_judged_arguments(parser, default, what)
    if json_out:
        parser.add_argument("--json", type=Path, help="also write the verdict here")
    args = parser.parse_args(argv)

    def run(decide):
        try:
            return decide(args.base, root=args.root.resolve(), pull=args.pull)
        except (MetricsError, ParamsError) as exc:
            print(f"{name}: error: {exc}", file=sys.stderr)
            return None

    return args, run


def main(argv: list[str] | None = None) -> int:
    what = "the champion's git revision"
    args, run = against_base("gate", __doc__, "origin/main", what, argv, json_out=True)
    verdict = run(run_gate)
    if verdict is None:
        return 2
    if args.json:
        args.json.write_text(json.dumps(verdict.as_dict(), indent=2) + "\n")
    print(f"gate: {'PASS' if verdict.passed else 'FAIL'} (baseline: {verdict.baseline})")
    for reason in verdict.reasons:
        print(f"  - {reason}")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
