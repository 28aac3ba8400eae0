"""train.amp / train.channels_last = auto: resolved once per device and model family (semseg/precision.py)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest
import torch

import semseg.models  # noqa: F401  (registers every family)
from semseg import precision
from semseg.config import TrainConfig, load_config
from semseg.errors import ConfigError
from semseg.engine import autocast
from semseg.precision import FAST_ENOUGH, SPEEDUP_ATTRIBUTE, Precision, cpu_speedup, family, resolve_precision
from semseg.registry import MODELS
from tests.conftest import REPO

CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


def test_defaults_are_auto() -> None:
    assert TrainConfig().amp == "auto" and TrainConfig().channels_last == "auto"


def test_channels_last_takes_a_bool_or_auto_and_nothing_else(tmp_path: Path) -> None:
    recipe = REPO / "configs" / "synthetic_tiny.yml"
    for value, expected in (("true", True), ("false", False), ("auto", "auto")):
        assert load_config(str(recipe), [f"train.channels_last={value}"]).train.channels_last == expected
    with pytest.raises(ConfigError, match="train.channels_last"):
        load_config(str(recipe), ["train.channels_last=yes please"])
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(str(recipe), ["train.amp=bf32"])


def test_every_family_file_records_its_cpu_choice() -> None:
    """Each family's file states its measured ratio, or None for "not measured": never left out by accident."""
    missing = sorted({family(n) for n in MODELS.names()
                      if not hasattr(importlib.import_module(MODELS.get(n).__module__), SPEEDUP_ATTRIBUTE)})
    assert not missing, f"semseg/models/<family>.py without {SPEEDUP_ATTRIBUTE}: {missing}"
    assert family("fcn8s") == "fcn" and family("drn_d_22") == "drn"
    assert cpu_speedup("fcn8s") == cpu_speedup("fcn32s") > FAST_ENOUGH  # one value per family file


def test_explicit_settings_pass_through() -> None:
    assert resolve_precision("off", False, CPU, "enet") == Precision("off", False, "as configured")
    assert resolve_precision("bf16", True, CPU, "enet").amp == "bf16"


def test_cpu_with_native_bf16_takes_the_fast_path_where_it_measured_faster(bf16_cpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.import_module("semseg.models.enet"), SPEEDUP_ATTRIBUTE, FAST_ENOUGH + 0.2)
    monkeypatch.setattr(importlib.import_module("semseg.models.fcn"), SPEEDUP_ATTRIBUTE, FAST_ENOUGH - 0.2)
    fast = resolve_precision("auto", "auto", CPU, "enet")
    assert (fast.amp, fast.channels_last) == ("bf16", True) and "enet" in fast.why
    slow = resolve_precision("auto", "auto", CPU, "fcn8s")
    assert (slow.amp, slow.channels_last) == ("off", False) and "not faster" in slow.why
    half = resolve_precision("off", "auto", CPU, "enet")  # an explicit half stays as given
    assert (half.amp, half.channels_last) == ("off", True)
    monkeypatch.setattr(importlib.import_module("semseg.models.enet"), SPEEDUP_ATTRIBUTE, None)
    unmeasured = resolve_precision("auto", "auto", CPU, "enet")
    assert (unmeasured.amp, unmeasured.channels_last) == ("off", False) and "no CPU bf16 measurement" in unmeasured.why


def test_cpu_without_native_bf16_stays_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    p = resolve_precision("auto", "auto", CPU, "linknet")
    assert (p.amp, p.channels_last) == ("off", False) and "no native bf16" in p.why


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_cuda_takes_bf16_on_ampere_and_fp16_below(monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "a GPU")
    p = resolve_precision("auto", "auto", torch.device("cuda", 0), "enet")
    assert (p.amp, p.channels_last) == (expected, True)


def test_cpu_flags_are_read_from_proc_cpuinfo() -> None:
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo")
    precision.cpu_flags.cache_clear()
    assert precision.cpu_flags()  # some flags on any Linux machine


def test_describe_names_the_path() -> None:
    text = Precision("bf16", True, "why").describe()
    assert text.startswith("numeric path: bf16 autocast") and "channels_last" in text and "(why)" in text
    assert Precision("off", False, "x").describe().startswith("numeric path: fp32 + NCHW")


def test_autocast_refuses_an_unresolved_auto() -> None:
    with pytest.raises(ValueError, match="resolve"):
        autocast(CPU, "auto")


def test_train_validate_and_test_log_the_same_resolved_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import validate
    from tests.test_pipeline import run_train, test_script

    caplog.set_level(logging.INFO)
    run = run_train(tmp_path, "train.epochs=1")
    expected = resolve_precision("auto", "auto", CPU, "enet").describe()  # synthetic_tiny.yml trains ENet
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("numeric path")]
    assert lines == [expected]
    stored = load_config(str(run / "config.yml"), []).train
    assert stored.amp in ("off", "bf16", "fp16") and isinstance(stored.channels_last, bool)  # the run records what ran
    caplog.clear()
    assert validate.main(["--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "m.json")]) == 0
    assert test_script.main(["--checkpoint", str(run / "last.pt"), "--split", "test", "--out", str(tmp_path / "pred")]) == 0
    again = [r.getMessage() for r in caplog.records if r.getMessage().startswith("numeric path")]
    assert len(again) == 2 and all(line.rsplit(" (", 1)[0] == expected.rsplit(" (", 1)[0] for line in again)
