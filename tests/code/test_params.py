"""params.yaml <-> the typed config: every key is consumed, every field has its value in the
file, and a drift (a stray key, a missing one, a bad value) fails at load time, naming the key."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from pneumonia import params as params_module
from pneumonia.params import Params, ParamsError, load, parse
from tests.conftest import REPO

RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def yaml_keys(node, prefix="") -> set[str]:
    if not isinstance(node, dict):
        return {prefix}
    return set().union(*(yaml_keys(v, f"{prefix}.{k}" if prefix else k) for k, v in node.items()))


def field_keys(cls, prefix="") -> set[str]:
    keys = set()
    for field in dataclasses.fields(cls):
        name = f"{prefix}.{field.name}" if prefix else field.name
        kind = cls.__annotations__[field.name]
        nested = getattr(params_module, kind, None) if isinstance(kind, str) else kind
        if dataclasses.is_dataclass(nested):
            keys |= field_keys(nested, name)
        else:
            keys.add(name)
    return keys


def test_every_key_of_params_yaml_is_a_field_and_every_field_a_key():
    assert yaml_keys(RAW) == field_keys(Params)
    load(REPO / "params.yaml")  # and it validates


def test_no_field_has_a_default_in_the_code():
    def defaults(cls):
        for field in dataclasses.fields(cls):
            has = field.default is not dataclasses.MISSING
            has |= field.default_factory is not dataclasses.MISSING
            if has:
                yield f"{cls.__name__}.{field.name}"
            kind = cls.__annotations__[field.name]
            nested = getattr(params_module, kind, None) if isinstance(kind, str) else None
            if dataclasses.is_dataclass(nested):
                yield from defaults(nested)

    assert list(defaults(Params)) == []


def test_stage_code_reads_no_parameter_from_a_dict():
    """No ``params["x"]`` or ``params.get("x", default)`` left in the package: stage code takes
    the typed sections (params.py itself parses the file)."""
    pattern = re.compile(r"params\w*(\[\"|\.get\()")
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted((REPO / "src" / "pneumonia").glob("*.py"))
        if path.name != "params.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def drifted(change) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    change(raw)
    return raw


def test_a_stray_key_fails_naming_it():
    raw = drifted(lambda r: r["train"].update(warmup_epochs=2))
    with pytest.raises(ParamsError, match=r"unknown key train\.warmup_epochs"):
        parse(raw)


def test_a_stray_section_fails_naming_it():
    with pytest.raises(ParamsError, match="unknown key serve"):
        parse(drifted(lambda r: r.update(serve={"port": 80})))


def test_a_missing_key_fails_naming_it():
    raw = drifted(lambda r: r["train"]["augment"].pop("gamma"))
    with pytest.raises(ParamsError, match=r"missing train\.augment\.gamma"):
        parse(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "select", "swa", r"train\.select is 'swa'; allowed: last \| best_val_loss"),
        ("train", "precision", "fp16", r"train\.precision is 'fp16'; allowed: auto \| fp32"),
        ("export", "quantize", "fp16", r"export\.quantize is 'fp16'; allowed: int8 \| none"),
        ("evaluate", "calibration", "isotonic", r"evaluate\.calibration is 'isotonic'"),
        ("train", "epochs", "eight", r"train\.epochs is 'eight'; expected a int"),
        ("train", "epochs", 0, r"train\.epochs must be at least 1"),
        ("train", "batch_size", True, r"train\.batch_size is True; expected a int"),
        ("prepare", "val_fraction", 1.5, r"prepare\.val_fraction must be between 0 and 1"),
        ("gate", "require_significant_gain", "yes", r"gate\.require_significant_gain is 'yes'"),
        ("train", "low_res_epochs", 10, r"train\.low_res_epochs must be in \[0, train\.epochs\)"),
        ("train", "low_res_size", 16, r"train\.low_res_size must be at least 32"),
    ],
)
def test_a_bad_value_fails_naming_the_key_and_what_is_allowed(section, key, value, message):
    with pytest.raises(ParamsError, match=message):
        parse(drifted(lambda r: r[section].update({key: value})))


def test_a_low_resolution_no_smaller_than_the_served_one_is_refused():
    def low_res(size):
        return drifted(lambda r: r["train"].update(low_res_epochs=2, low_res_size=size))

    with pytest.raises(ParamsError, match=r"low_res_size must be smaller than prepare\.image_size"):
        parse(low_res(224))
    assert parse(low_res(128)).train.low_res_size == 128
    # Off, the size is not checked against the served one.
    parse(drifted(lambda r: r["train"].update(low_res_epochs=0, low_res_size=512)))


def test_integers_are_accepted_where_floats_are_expected():
    params = parse(drifted(lambda r: r["train"].update(lr=1)))
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)


def test_the_file_is_named_in_load_errors(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(drifted(lambda r: r["export"].pop("opset"))))
    with pytest.raises(ParamsError, match=rf"{re.escape(str(bad))}: missing export\.opset"):
        load(bad)
    bad.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load(bad)
