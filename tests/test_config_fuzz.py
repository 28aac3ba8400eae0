"""Fuzz the config validator: any plain-data dict gives a Config or a one-line ConfigError, nothing else,
and any value the schema accepts builds pieces that run (issue 16, principle 1).

Keys are drawn from the real schema (every dataclass field name of :class:`Config`), misspellings
of them and arbitrary text; values are random YAML-like data (None, bools, numbers with NaN/inf and
huge integers, text with line breaks, lists, nested mappings), so every branch of ``_coerce`` meets
values of every type.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from semseg.augmentations import eval_transforms, train_transforms
from semseg.config import Config, config_from_dict, load_config
from semseg.errors import ConfigError
from semseg.inference import predict_scores
from semseg.optim import build_optimizer, lr_factor
from semseg.threads import resolve_budget


def schema_keys(cls: type = Config) -> list[str]:
    """Every field name of ``cls`` and of the dataclasses it nests (also inside tuples)."""
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        keys.append(f.name)
        hint = typing.get_type_hints(cls)[f.name]
        for tp in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(tp):
                keys += schema_keys(tp)
    return sorted(set(keys))


KEYS = schema_keys()


@st.composite
def misspelt(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from(KEYS))
    i = draw(st.integers(0, len(key)))
    edit = draw(st.sampled_from(["drop", "double", "insert", "case"]))
    if edit == "drop":
        return key[:i] + key[i + 1 :]
    if edit == "double":
        return key[:i] + key[i : i + 1] * 2 + key[i + 1 :]
    if edit == "insert":
        return key[:i] + draw(st.characters()) + key[i:]
    return key.upper()


keys = st.one_of(st.sampled_from(KEYS), misspelt(), st.text(max_size=8), st.integers(), st.none())
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["sgd", "poly", "enet", "camvid", "1e-3", "nan", "1e999", "true", "raise", "skip", "a\nb"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
SECTIONS = [f.name for f in dataclasses.fields(Config)]
FIELDS = {f.name: [g.name for g in dataclasses.fields(typing.get_type_hints(Config)[f.name])] for f in dataclasses.fields(Config)}


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid minimal recipe with a few random edits, so validation gets past model/data into every section."""
    data: dict[Any, Any] = {"model": {"name": "enet"}, "data": {"name": "camvid", "root": "/d"}}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(SECTIONS) if draw(st.integers(0, 9)) else misspelt())
        if draw(st.integers(0, 9)) == 0:
            data.pop(section, None) if draw(st.booleans()) else data.__setitem__(section, draw(values))
            continue
        node = data.setdefault(section, {})
        if isinstance(node, dict):
            own = FIELDS.get(section)
            key = draw(st.sampled_from(own) if own and draw(st.integers(0, 3)) else keys)  # mostly a real field
            node[key] = draw(values)
    return data


configs = st.integers(0, 9).flatmap(
    lambda pick: mutated() if pick < 8  # mostly: the right shape with wrong keys, types and values inside
    else st.dictionaries(st.sampled_from(SECTIONS) | keys, values, max_size=6) if pick == 8  # random sections
    else values  # anything at all
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])  # no .hypothesis/ in the repo
@given(configs)
@example({"model": {"name": "enet"}, "data": {"name": "camvid"}, "optim": {"lr": 10**400}})  # was an OverflowError
@example({"model": {"name": "enet"}, "data": {"name": "camvid"}, "train": {"ep\nochs": 1}})  # a key with a line break
def test_config_from_dict_returns_a_config_or_a_one_line_config_error(data: Any) -> None:
    try:
        cfg = config_from_dict(data, "fuzz.yml")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yml: ") and len(message.splitlines()) == 1, message
    else:
        assert isinstance(cfg, Config)


# ----------------------------------------------------------------------------- values


def numeric_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, int]]:
    """(dotted key, how many numbers it holds: 0 for a scalar, n for an n-tuple) of every numeric field."""
    found: list[tuple[str, int]] = []
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}{f.name}", typing.get_type_hints(cls)[f.name]
        args = [a for a in (hint, *typing.get_args(hint)) if a is not type(None)]
        if dataclasses.is_dataclass(hint):
            found += numeric_fields(hint, key + ".")
        elif int in args or float in args:
            found.append((key, 0))
        elif any(typing.get_origin(a) is tuple for a in args):
            inner = typing.get_args(next(a for a in args if typing.get_origin(a) is tuple))
            if inner and inner[0] in (int, float):
                found.append((key, 1 if inner[-1] is Ellipsis else len(inner)))
    return found


NUMERIC = numeric_fields()
numbers = st.one_of(
    st.integers(-3, 3), st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, 1e-9, -1e-3, 2**32, 2**63, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def value_edits(draw: st.DrawFn) -> tuple[str, Any]:
    """One numeric field of the schema and a value for it: mostly numbers at and around every bound."""
    key, size = draw(st.sampled_from(NUMERIC))
    value = draw(numbers) if size == 0 else draw(st.lists(numbers, min_size=size, max_size=size))
    return key, value


def with_value(key: str, value: Any) -> dict[str, Any]:
    section, name = key.split(".", 1)
    data: dict[str, Any] = {"model": {"name": "enet"}, "data": {"name": "camvid", "root": "/d"}}
    data.setdefault(section, {})[name] = value
    return data


def test_every_numeric_field_is_found() -> None:
    """The walk above sees the fields the sweep broke (so the fuzz below reaches them)."""
    keys = {k for k, _ in NUMERIC}
    assert {"data.batch_size", "data.num_workers", "train.val_every", "augment.crop", "augment.std", "optim.lr",
            "train.epochs", "augment.scale", "augment.eval_size", "infer.tile", "infer.scales"} <= keys  # fmt: skip


@settings(max_examples=400, deadline=None, database=None)
@given(value_edits())
@example(("data.batch_size", 0))
@example(("data.num_workers", -1))
@example(("train.val_every", 0))
@example(("augment.crop", [0, 0]))
@example(("augment.std", [0, 0, 0]))
@example(("optim.lr", -0.01))
@example(("train.epochs", 0))
@example(("augment.scale", [-0.5, 1.0]))
@example(("augment.eval_size", [0, 0]))
@example(("infer.tile", [0, 0]))
@example(("optim.lr", float("nan")))
def test_a_bad_value_is_one_line_naming_its_key(edit: tuple[str, Any]) -> None:
    """Any value: a Config, or one ConfigError line that names the field it was given to."""
    key, value = edit
    try:
        config_from_dict(with_value(key, value), "fuzz.yml")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yml: ") and len(message.splitlines()) == 1, message
        assert key in message, message


@pytest.mark.parametrize("key,value,message", [
    ("data.batch_size", 0, "data.batch_size: expected at least 1, got 0"),
    ("data.num_workers", -1, "data.num_workers: expected at least 0, got -1"),
    ("train.val_every", 0, "train.val_every: expected at least 1, got 0"),
    ("train.epochs", 0, "train.epochs: expected at least 1, got 0"),
    ("augment.crop", [0, 0], "augment.crop[0]: expected at least 1, got 0"),
    ("augment.std", [0, 0, 0], "augment.std[0]: expected more than 0 (images are divided by it), got 0"),
    ("augment.scale", [-0.5, 1.0], "augment.scale[0]: expected more than 0, got -0.5"),
    ("augment.eval_size", [0, 0], "augment.eval_size[0]: expected at least 1, got 0"),
    ("optim.lr", -0.01, "optim.lr: expected more than 0, got -0.01"),
    ("optim.lr", float("nan"), "optim.lr: expected a finite number, got nan"),
    ("infer.tile", [0, 0], "infer.tile: sizes must be at least 1, got [0, 0]"),
    ("augment.scale", [0.5, 2.0], "augment.scale: [0.5, 2.0] without augment.crop gives every image its own size, "
     "which cannot be batched (data.batch_size=8); set augment.crop or data.batch_size=1"),
])  # fmt: skip
def test_the_sweep_values_are_refused_by_set_yaml_and_stored_configs(key: str, value: Any, message: str, tmp_path: Path) -> None:
    """Each path into a Config (a recipe file, --set, a checkpoint's stored dict) gives the same line."""
    data = with_value(key, value)
    recipe = tmp_path / "bad.yml"
    recipe.write_text(yaml.safe_dump(data))
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump(with_value("train.epochs", 1)))
    for load, source in [(lambda: load_config(recipe), str(recipe)),
                         (lambda: load_config(good, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]), str(good)),
                         (lambda: config_from_dict(data, "x.pt (stored config)"), "x.pt (stored config)")]:  # fmt: skip
        with pytest.raises(ConfigError) as info:
            load()
        assert str(info.value) == f"{source}: {message}"


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 3, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.net(x)}


small_numbers = st.one_of(st.integers(-2, 40), st.floats(-2, 40, allow_nan=False), st.sampled_from([1e-9, 0.999, 1.0]))


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.sampled_from(NUMERIC).flatmap(
    lambda f: st.tuples(st.just(f[0]), small_numbers if f[1] == 0 else st.lists(small_numbers, min_size=f[1], max_size=f[1]))
), min_size=1, max_size=3))  # fmt: skip
def test_every_value_the_schema_accepts_builds_and_runs(edits: list[tuple[str, Any]]) -> None:
    """Accepted means usable: the transforms, optimiser, schedule, CPU budget and inference built from an
    accepted config run on a 20×24 image without an exception (the sweep found crop [0, 0] and std 0 here)."""
    data: dict[str, Any] = with_value("train.epochs", 1)
    for key, value in edits:
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    try:
        cfg = config_from_dict(data, "fuzz.yml")
    except ConfigError:
        return
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    mask = np.zeros((20, 24), np.uint8)
    for _ in range(3):
        x, y = train_transforms(cfg.augment, 255)(image, mask)
        assert torch.isfinite(x).all() and x.shape[-2:] == y.shape and min(y.shape) >= 1
    x, y = eval_transforms(cfg.augment)(image, mask)
    assert torch.isfinite(x).all() and x.shape[-2:] == y.shape
    model = Tiny()
    probs = predict_scores(model.eval(), x[None], cfg.infer)
    assert probs.shape[-2:] == x.shape[-2:] and torch.isfinite(probs).all()
    optimizer = build_optimizer(cfg.optim, model.train())
    for it in (0, 1, cfg.schedule.warmup_iters, 10 * cfg.schedule.step_size, 1000):
        factor = lr_factor(it, 1000, 10, cfg.schedule)
        assert math.isfinite(factor) and factor >= 0
    model(x[None])["out"].sum().backward()
    optimizer.step()
    resolve_budget(cfg.train.threads, cfg.data.num_workers, torch.device("cpu"))
