"""Fuzz the config validator: any plain-data dict gives a Config or a one-line ConfigError, nothing else.

Keys are drawn from the real schema (every dataclass field name of :class:`Config`), misspellings
of them and arbitrary text; values are random YAML-like data (None, bools, numbers with NaN/inf and
huge integers, text with line breaks, lists, nested mappings), so every branch of ``_coerce`` meets
values of every type.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from semseg.config import Config, config_from_dict
from semseg.errors import ConfigError


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
