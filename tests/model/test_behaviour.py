"""The gate's behavioural checks (pneumonia.behaviour) on real bundles exported by the pipeline's
code: a model whose decisions sit on a knife edge fails invariance, a bundle without a guard
fails the directional check, and the easy cases count the champion's sure right answers."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from pneumonia import behaviour
from pneumonia.params import load as load_params
from pneumonia.serving import Bundle, read_image
from tests.bundles import BUNDLE_METRICS, calibrated_model, make_bundle
from tests.conftest import DATASET, REPO, require_data

SIZE = 64
PARAMS = load_params(REPO / "params.yaml").gate.behaviour


def xray_files(n: int = 12) -> list:
    require_data()
    return [
        path
        for label in ("NORMAL", "PNEUMONIA")
        for path in sorted((DATASET / "test" / label).iterdir())[:n]
    ]


@pytest.fixture(scope="module")
def steady(tmp_path_factory):
    """A bundle with a guard whose threshold is far from its answers: nothing flips."""
    out = tmp_path_factory.mktemp("steady") / "bundle"
    return make_bundle(calibrated_model(SIZE, "per_image"), SIZE, out, BUNDLE_METRICS, guard=True)


@pytest.fixture(scope="module")
def knife_edge(steady, tmp_path_factory):
    """The same network, its logit margin scaled 10,000 times and its threshold at the median
    answer of the test images: every small change of an image moves a decision."""
    out = tmp_path_factory.mktemp("knife_edge") / "bundle"
    shutil.copytree(steady, out)
    manifest = json.loads((out / "model.json").read_text())
    bundle = Bundle(steady)
    margin = np.log(1 / bundle.probabilities(behaviour_inputs(bundle)) - 1) * -1
    manifest["calibration"] = {"method": "platt", "scale": 1e4, "bias": -1e4 * np.median(margin)}
    manifest["threshold"] = 0.5
    (out / "model.json").write_text(json.dumps(manifest))
    return out


def behaviour_inputs(bundle: Bundle) -> np.ndarray:
    from pneumonia.serving import resize

    return np.stack([resize(read_image(p.read_bytes()), bundle.size) for p in xray_files()])


def test_each_change_gives_a_readable_file_of_the_same_size():
    image = read_image(xray_files(1)[0].read_bytes())
    for name, change in behaviour.changes(PARAMS).items():
        changed = read_image(change(image))
        assert changed.size == image.size, name
        assert changed.info["format"] in ("PNG", "JPEG", "DICOM"), name


def test_16_bit_png_and_dicom_copies_decode_to_the_same_pixels():
    image = read_image(xray_files(1)[0].read_bytes())
    png16 = np.asarray(read_image(behaviour.png16_file(image)))
    dicom = np.asarray(read_image(behaviour.dicom_file(image)))
    assert np.array_equal(png16, dicom)
    # both are stretched to their full range, as the app decodes any 16-bit image
    original = np.asarray(image).astype(float)
    stretched = (original - original.min()) / (original.max() - original.min()) * 255
    assert np.abs(png16 - stretched).max() <= 0.5 + 1e-9


def test_a_steady_model_passes_invariance_and_a_knife_edge_one_fails(steady, knife_edge):
    data = [p.read_bytes() for p in xray_files()]
    calm = behaviour.invariance(Bundle(steady), data, PARAMS)
    assert set(calm) == set(behaviour.changes(PARAMS))
    assert all(r["flipped"] == 0 and r["passed"] and r["n"] == 24 for r in calm.values())
    edgy = behaviour.invariance(Bundle(knife_edge), data, PARAMS)
    rotated = edgy[f"rotated +{PARAMS.rotation_deg:g} degrees"]
    assert rotated["rate"] > PARAMS.max_flip_rate and not rotated["passed"]
    assert rotated["flipped"] == round(rotated["rate"] * 24)
    # a lossless copy changes nothing, so nothing flips even on the knife edge
    assert edgy["as a 16-bit PNG"]["flipped"] == edgy["as a DICOM file"]["flipped"]
    passed, lines = behaviour.verdict_lines({"invariance": edgy}, PARAMS)
    assert not passed
    assert any("rotated" in line and "above the limit 5.0%" in line for line in lines)


def test_the_directional_check_measures_the_guard_on_the_catalogue(steady, tmp_path):
    files = xray_files()
    found = behaviour.bundle_checks(steady, files, PARAMS)["directional"]
    assert found["guard"] and found["n"] > 250
    assert found["passed"] == (found["refused"] >= PARAMS.min_refused)
    strict = replace(PARAMS, min_refused=1.0)
    assert behaviour.directional(Bundle(steady), [], strict)["passed"] is (found["refused"] == 1)
    unguarded = tmp_path / "bundle"
    shutil.copytree(steady, unguarded)
    manifest = json.loads((unguarded / "model.json").read_text())
    del manifest["guard"]
    (unguarded / "model.json").write_text(json.dumps(manifest))
    none = behaviour.directional(Bundle(unguarded), [], PARAMS)
    assert none == {"refused": 0.0, "n": 0, "passed": False, "guard": False}
    passed, lines = behaviour.verdict_lines({"directional": none}, PARAMS)
    assert not passed and "no input guard" in lines[0]


def test_easy_cases_are_the_champions_sure_right_answers():
    labels = np.array([1, 1, 1, 0, 0, 0])
    champion = np.array([0.99, 0.97, 0.60, 0.01, 0.04, 0.99])  # 4 sure and right, 1 sure wrong
    challenger = np.array([0.99, 0.20, 0.99, 0.80, 0.30, 0.01])
    found = behaviour.easy_cases(labels, (champion, 0.5), (challenger, 0.5), PARAMS)
    assert found == {"n": 4, "wrong": 2, "rate": 0.5, "passed": False}
    # the champion's own threshold decides what it got right
    found = behaviour.easy_cases(labels, (champion, 0.98), (champion, 0.98), PARAMS)
    assert found["n"] == 3 and found["wrong"] == 0 and found["passed"]
    lenient = replace(PARAMS, max_easy_errors=0.5)
    assert behaviour.easy_cases(labels, (champion, 0.5), (challenger, 0.5), lenient)["passed"]
    _, lines = behaviour.verdict_lines({}, PARAMS)
    assert lines == ["minimum functionality: no champion, so no known easy cases yet"]
