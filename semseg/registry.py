"""A small name → builder registry, instantiated once per open set.

Models, datasets and losses register where they are defined
(``@MODELS.register("enet", paper_params=0.37e6)``), so adding one never edits
a central list. Unknown names get a did-you-mean error and builder keyword
arguments are checked against the builder's signature *before* it is called,
so a misspelt config parameter is a one-line error instead of a TypeError deep
inside a constructor. Modelled on ``torchvision/models/_api.py``.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Mapping, TypeVar

from semseg.errors import ConfigError
from semseg.typecheck import mismatch

T = TypeVar("T", bound=Callable[..., Any])


def did_you_mean(word: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry:
    """Maps names to builders (functions or classes) plus free-form metadata."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: register ``fn`` under ``name``; a duplicate name is an error."""

        def decorator(fn: T) -> T:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._builders[name] = fn
            self._meta[name] = dict(meta)
            return fn

        return decorator

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._builders:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; "
                f"choices: {', '.join(self.names())}"
            )
        return self._builders[name]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def accepted_params(self, name: str) -> list[str]:
        return list(inspect.signature(self.get(name)).parameters)

    def build_checked(self, name: str, kwargs: Mapping[str, Any], where: str) -> Any:
        """Build ``name`` with ``kwargs``; errors name the config key ``where.<param>``."""
        builder = self.get(name)
        signature = inspect.signature(builder)
        params = signature.parameters
        takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        accepted = [n for n, p in params.items() if p.kind is not p.VAR_KEYWORD]
        if not takes_var_kw:
            for key in kwargs:
                if key not in params:
                    raise ConfigError(
                        f"{where}.{key}: not a parameter of {self.kind} '{name}'"
                        f"{did_you_mean(key, accepted)}; accepted: {', '.join(accepted)}"
                    )
        missing = [
            n
            for n, p in params.items()
            if p.default is p.empty
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            and n not in kwargs
        ]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}: required by {self.kind} '{name}' but not given")
        for key, value in kwargs.items():
            expected = mismatch(builder, key, value)
            if expected is not None:
                raise ConfigError(f"{where}.{key}: {self.kind} '{name}' expects {expected}, got {value!r}")
        return builder(**kwargs)

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Build ``name``; e.g. ``MODELS.build("enet", num_classes=11)``."""
        return self.build_checked(name, kwargs, where=f"{self.kind}.params")


MODELS = Registry("model")
DATASETS = Registry("dataset")
LOSSES = Registry("loss")
