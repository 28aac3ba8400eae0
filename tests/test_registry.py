from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

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


def typed() -> Registry:
    reg = Registry("model")

    @reg.register("net")
    def net(*, num_classes: int, dropout: float = 0.1, aux: bool = True, pretrained: Union[bool, str] = False,
            rates: Sequence[int] = (6, 12), stride: Optional[int] = None,
            mode: Literal["collect", "distribute"] = "collect") -> dict[str, object]:
        return dict(num_classes=num_classes, dropout=dropout, aux=aux, pretrained=pretrained, rates=rates,
                    stride=stride, mode=mode)

    return reg


@pytest.mark.parametrize("key, value, expected", [
    ("aux", "maybe", "expects true/false, got 'maybe'"),  # a truthy string would silently mean True
    ("dropout", "abc", "expects a number, got 'abc'"),
    ("dropout", True, "expects a number, got True"),  # YAML's `yes` is not 1.0
    ("num_classes", 2.5, "expects an integer, got 2.5"),
    ("pretrained", 3, "expects true/false or a string, got 3"),
    ("rates", [6, "x"], "expects a list of integers, got \\[6, 'x'\\]"),
    ("rates", 6, "expects a list of integers, got 6"),
    ("stride", "8", "expects an integer or null, got '8'"),
    ("mode", "both", "expects one of 'collect', 'distribute', got 'both'"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(key: str, value: object, expected: str) -> None:
    kwargs = {"num_classes": 3, key: value}
    with pytest.raises(ConfigError, match=rf"^model\.params\.{key}: model 'net' {expected}$"):
        typed().build("net", **kwargs)


def test_values_of_the_right_type_pass_through() -> None:
    built = typed().build("net", num_classes=3, dropout=1, aux=False, pretrained="w.pth", rates=[1, 2], stride=None,
                          mode="distribute")
    assert built == dict(num_classes=3, dropout=1, aux=False, pretrained="w.pth", rates=[1, 2], stride=None,
                         mode="distribute")


def test_every_registered_builder_has_hints_the_check_understands() -> None:
    """A builder whose hints cannot be resolved would silently skip the check: none may."""
    import semseg.models  # noqa: F401  (registers every family)
    from semseg.registry import MODELS
    from semseg.typecheck import parameter_hints

    unresolved = [n for n in MODELS.names() if not parameter_hints(MODELS.get(n))]
    assert not unresolved
