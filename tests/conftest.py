"""Shared test settings: deterministic seeds, few threads, and the real-CamVid skip marker."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CAMVID_ROOT = Path(os.environ.get("SEMSEG_CAMVID", REPO.parent / "shared" / "data" / "CamVid"))

needs_camvid = pytest.mark.skipif(
    not (CAMVID_ROOT / "train").is_dir(), reason=f"real CamVid not found at {CAMVID_ROOT}"
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def load_script(name: str) -> ModuleType:
    """Import a top-level script (train.py, test.py, …) by path."""
    spec = importlib.util.spec_from_file_location(f"semseg_script_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
