from __future__ import annotations

import pytest

from semseg.errors import ConfigError
from semseg.registry import Registry


def make() -> Registry:
    reg = Registry("model")

    @reg.register("enet", paper_params=0.37e6)
    def enet(*, num_classes: int, dropout: float = 0.1) -> tuple[int, float]:
        return num_classes, dropout

    return reg


def test_build_passes_kwargs_and_keeps_meta() -> None:
    reg = make()
    assert reg.build("enet", num_classes=3, dropout=0.2) == (3, 0.2)
    assert reg.meta("enet") == {"paper_params": 0.37e6} and reg.names() == ["enet"]


def test_unknown_name_suggests_and_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"^unknown model 'enet2' \(did you mean 'enet'\?\); choices: enet$"):
        make().get("enet2")


def test_unknown_and_missing_params_are_caught_before_the_call() -> None:
    reg = make()
    with pytest.raises(ConfigError, match=r"^model.params.dropuot: not a parameter of model 'enet' \(did you mean 'dropout'\?\); accepted: num_classes, dropout$"):
        reg.build("enet", num_classes=3, dropuot=0.1)
    with pytest.raises(ConfigError, match=r"^model.params.num_classes: required by model 'enet' but not given$"):
        reg.build("enet")


def test_duplicate_registration_is_an_error() -> None:
    reg = make()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("enet")(lambda: None)
