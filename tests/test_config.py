from __future__ import annotations

from pathlib import Path

import pytest

from semseg.config import Config, config_from_dict, config_to_dict, dump_config, load_config
from semseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yml"
    path.write_text(text)
    return path


def test_defaults_fill_what_the_recipe_omits(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "model: {name: enet}\ndata: {name: camvid, root: /d}\n"))
    assert cfg.model.name == "enet" and cfg.data.root == "/d"
    assert cfg.optim.name == "sgd" and cfg.schedule.name == "poly" and cfg.augment.crop is None


def test_unknown_key_names_file_and_dotted_key_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {name: enet}\ndata: {name: camvid}\ntrain: {epoch: 5}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: unknown key 'train.epoch' (did you mean 'epochs'?)"


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer' \(did you mean 'optim'\?\)"):
        load_config(write(tmp_path, "model: {name: enet}\ndata: {name: camvid}\noptimizer: {lr: 1}\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: {epochs: five}", "train.epochs: expected an integer, got 'five'"),
        ("optim: {name: lbfgs}", "optim.name: expected one of sgd, adam, adamw, rmsprop, got 'lbfgs'"),
        ("augment: {crop: [360]}", "augment.crop: expected a list of 2 values, got 1"),
        ("log: {visdom: maybe}", "log.visdom: expected true or false, got 'maybe'"),
    ],
)
def test_wrong_types_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(write(tmp_path, f"model: {{name: enet}}\ndata: {{name: camvid}}\n{text}\n"))


def test_missing_required_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required value 'data'"):
        load_config(write(tmp_path, "model: {name: enet}\n"))


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {name: enet}\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{path}: line \d+ YAML syntax error"):
        load_config(path)


def test_overrides_are_applied_then_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {name: enet}\ndata: {name: camvid, root: /a}\n")
    cfg = load_config(path, ["train.epochs=3", "data.root=/x", "augment.crop=[8, 16]", "optim.lr=1e-3"])
    assert (cfg.train.epochs, cfg.data.root, cfg.augment.crop, cfg.optim.lr) == (3, "/x", (8, 16), 1e-3)
    with pytest.raises(ConfigError, match="unknown key 'train.epochz'"):
        load_config(path, ["train.epochz=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["train.epochs"])


def test_config_is_frozen_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "model: {name: enet, params: {dropout: 0.2}}\ndata: {name: camvid}\naugment: {crop: [4, 8]}\n"))
    with pytest.raises(AttributeError):
        cfg.train.epochs = 3  # type: ignore[misc]
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert "dropout: 0.2" in dump_config(cfg)
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_names_registered_parts(path: Path) -> None:
    import semseg.loaders
    import semseg.models
    from semseg.registry import DATASETS, MODELS

    cfg = load_config(path)
    assert cfg.model.name in MODELS, f"{path.name}: model '{cfg.model.name}' is not registered"
    assert cfg.data.name in DATASETS
    accepted = MODELS.accepted_params(cfg.model.name)
    assert set(cfg.model.params) <= set(accepted), f"{path.name}: params {set(cfg.model.params) - set(accepted)} unknown"


def test_a_bare_off_is_the_string_off_where_a_choice_has_it(tmp_path: Path) -> None:
    """YAML 1.1 reads `off` as false: `--set train.amp=off` and `amp: off` must still mean "off"."""
    recipe = tmp_path / "r.yml"
    recipe.write_text("model: {name: enet}\ndata: {name: synthetic}\ntrain: {amp: off}\n")
    assert load_config(str(recipe)).train.amp == "off"
    assert load_config(str(recipe), ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="data.on_error: expected one of raise, skip, got False"):
        load_config(str(recipe), ["data.on_error=off"])  # no "off" among its choices: still an error
