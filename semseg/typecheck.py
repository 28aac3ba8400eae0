"""Check a config value against a builder's type hint, so ``model.params.aux=maybe`` is an error, not ``True``.

Builders are typed (DESIGN.md §10.3), and their hints are the schema of ``model.params``: YAML gives
``int``/``float``/``str``/``bool``/lists/``None``, and a wrong one would otherwise fail deep inside the
model (a traceback) or, worse, be truthy and train the wrong thing. Only the forms builders use are
understood (scalars, ``Optional``/``Union``, ``Literal``, ``Sequence``/``list``/``tuple`` of one type);
any other hint is accepted unchecked rather than guessed at.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any, Callable, Optional


def describe(hint: Any) -> str:
    """``Optional[int]`` → ``"int or null"``: the hint in YAML terms, for the error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {_PLURAL.get(args[0], describe(args[0]))}" if args else "a list"
    return _SINGULAR.get(hint, str(hint))


_SINGULAR = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def matches(hint: Any, value: Any) -> bool:
    """Whether ``value`` fits ``hint``; a hint of a form not understood here matches anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches(a, value) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(a, v) for a, v in zip(args, value))
        return not args or all(matches(args[0], v) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def parameter_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """``fn``'s resolved parameter hints; empty where they cannot be resolved (then nothing is checked)."""
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):
        return {}
    hints.pop("return", None)
    return hints


def mismatch(fn: Callable[..., Any], name: str, value: Any) -> Optional[str]:
    """What ``fn``'s parameter ``name`` expects, when ``value`` does not fit its hint; else None."""
    hint = parameter_hints(fn).get(name)
    if hint is None or matches(hint, value):
        return None
    return describe(hint)
