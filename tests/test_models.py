"""Tests generated from the model registry: every registered model gets them for free.

- output is N×C×H×W at the input size, for an even and an odd size;
- a backward pass gives every parameter a gradient;
- the parameter count at the paper's configuration matches the registered paper figure.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import semseg.models
from semseg.registry import MODELS

NAMES = MODELS.names()
NUM_CLASSES = 5


def _small(name: str) -> torch.nn.Module:
    return MODELS.build(name, num_classes=NUM_CLASSES, **MODELS.meta(name).get("test_kwargs", {}))


def test_every_module_registers_something() -> None:
    for module in pkgutil.iter_modules(semseg.models.__path__):
        if module.name.startswith("_") or module.name == "__main__":
            continue
        mod = importlib.import_module(f"semseg.models.{module.name}")
        registered = [n for n in NAMES if MODELS.get(n).__module__ == mod.__name__]
        assert registered, f"semseg/models/{module.name}.py registers no model"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(64, 64), (45, 61)])
def test_output_shape_any_size(name: str, size: tuple[int, int]) -> None:
    model = _small(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out["out"].shape == (1, NUM_CLASSES, *size)
    assert set(out) == {"out"}, "eval mode returns only 'out': 'aux' is a training-only output"


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = _small(name).train()
    out = model(torch.randn(2, 3, 48, 48))
    loss = sum(o.float().square().mean() for o in out.values())
    loss.backward()
    without = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not without, f"{name}: no gradient for {without[:5]}"


@pytest.mark.parametrize("name", [n for n in NAMES if "paper_params" in MODELS.meta(n)])
def test_param_count_matches_paper(name: str) -> None:
    meta = MODELS.meta(name)
    with torch.device("meta"):  # counts shapes only: no memory, no init time
        model = MODELS.build(name, **meta["paper_kwargs"])
    count = sum(p.numel() for p in model.parameters())
    tolerance = meta.get("params_tolerance", 0.01)
    assert abs(count - meta["paper_params"]) <= tolerance * meta["paper_params"], (
        f"{name}: {count} parameters, paper says {meta['paper_params']:.0f} ({meta['source']})"
    )


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_at_full_sizes_on_meta(name: str) -> None:
    """360×480 (CamVid), 361×479 (odd) and 512×1024 (Cityscapes half): shapes only, no compute."""
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=11).eval()
        for size in [(360, 480), (361, 479), (512, 1024)]:
            assert model(torch.empty(1, 3, *size))["out"].shape == (1, 11, *size)


@pytest.mark.parametrize("name", ["enet", "fcn8s"])
def test_real_forward_at_camvid_and_odd_size(name: str) -> None:
    model = MODELS.build(name, num_classes=11).eval()
    with torch.no_grad():
        for size in [(360, 480), (361, 479)]:
            out = model(torch.randn(1, 3, *size))["out"]
            assert out.shape == (1, 11, *size) and torch.isfinite(out).all()
