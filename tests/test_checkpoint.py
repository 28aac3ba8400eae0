from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from semseg.checkpoint import FORMAT_VERSION, load_checkpoint, load_model_state, save_atomic
from semseg.errors import CheckpointError


def test_atomic_save_roundtrip_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}, "format_version": FORMAT_VERSION}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(1)}}, path)

    class Unpicklable:
        def __reduce__(self):  # noqa: ANN204
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"model": {}, "bad": Unpicklable()}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_truncated_and_future_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    path = tmp_path / "c.pt"
    save_atomic({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="c.pt: cannot read checkpoint"):
        load_checkpoint(path)
    save_atomic({"model": {}, "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="is newer than this semseg supports"):
        load_checkpoint(path)


def test_shape_mismatch_names_the_key() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    other = nn.Sequential(nn.Conv2d(3, 5, 1)).state_dict()
    with pytest.raises(CheckpointError, match=r"x.pt: checkpoint does not fit the model \(shape mismatch: 0.weight \(5, 3, 1, 1\) vs model \(4, 3, 1, 1\)"):
        load_model_state(model, other, "x.pt")
    with pytest.raises(CheckpointError, match="missing keys: 0.bias"):
        load_model_state(model, {"0.weight": torch.zeros(4, 3, 1, 1)}, "x.pt")
