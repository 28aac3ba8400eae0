"""semseg.engine.evaluate: which sample images it keeps (spread over the split, also when sharded) and its progress lines."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from semseg import engine
from semseg.data import ShardSampler
from semseg.distributed import DistContext
from semseg.engine import evaluate, images_in, spread

CPU = torch.device("cpu")


class Zeros(nn.Module):
    """Scores for 2 classes, class 0 everywhere."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": torch.stack([x[:, 0] * 0 + 1, x[:, 0] * 0], 1)}


def numbered(n: int) -> TensorDataset:
    """Image ``i`` is filled with the value ``i``, so a kept image tells its index."""
    images = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 4, 5).contiguous()
    return TensorDataset(images, torch.zeros(n, 4, 5, dtype=torch.long))


def kept_indices(loader: object, keep: int) -> list[int]:
    _, kept = evaluate(Zeros(), loader, 2, 255, CPU, keep)
    for image, truth, pred in kept:
        assert image.device == truth.device == pred.device == CPU and image.shape == (3, 4, 5) and pred.shape == (4, 5)
    return [int(image[0, 0, 0]) for image, _, _ in kept]


def test_spread_is_round_linspace() -> None:
    assert spread(10, 4) == [0, 3, 6, 9]
    assert spread(101, 4) == [0, 33, 67, 100]
    assert spread(5, 1) == [0]
    assert spread(3, 5) == [0, 1, 2]  # fewer images than asked: all of them
    assert spread(0, 4) == spread(7, 0) == []


def test_kept_images_spread_over_the_split_and_repeat_every_epoch() -> None:
    loader = DataLoader(numbered(10), batch_size=3)
    assert kept_indices(loader, 4) == [0, 3, 6, 9]  # not the first 4 consecutive frames
    assert kept_indices(loader, 4) == [0, 3, 6, 9]  # the same ones the next epoch
    batches = [(images, masks) for images, masks in loader]  # a list of batches counts its images too
    assert kept_indices(batches, 4) == [0, 3, 6, 9]
    assert kept_indices(loader, 0) == []
    assert kept_indices(iter(batches), 2) == [0, 1]  # length unknown up front: the first ones


def test_kept_images_under_ddp_are_this_ranks_spread_of_the_whole_split() -> None:
    data = numbered(11)
    shards = [DataLoader(data, batch_size=2, sampler=ShardSampler(len(data), DistContext(rank=r, world_size=2))) for r in (0, 1)]
    assert [images_in(s) for s in shards] == [6, 5]  # this rank's share, not len(dataset)
    assert kept_indices(shards[0], 4) == [0, 4, 6, 10]  # rank 0 scores 0, 2, …, 10: its spread, first and last included
    assert kept_indices(shards[1], 3) == [1, 5, 9]
    assert kept_indices(shards[0], 4) == [0, 4, 6, 10]


def test_progress_lines_off_a_terminal(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # no terminal: tqdm draws nothing
    monkeypatch.setattr(engine, "EVAL_PROGRESS_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="semseg.engine")
    evaluate(Zeros(), DataLoader(numbered(20), batch_size=1), 2, 255, CPU)
    lines = [r.getMessage() for r in caplog.records if r.name == "semseg.engine"]
    assert [int(re.fullmatch(r"eval: batch (\d+)/20, \d+\.\d{2} s/batch", line).group(1)) for line in lines] == list(range(2, 20, 2))
    caplog.clear()
    monkeypatch.setattr(engine, "EVAL_PROGRESS_SECONDS", 3600.0)  # a quick evaluation stays quiet
    evaluate(Zeros(), DataLoader(numbered(20), batch_size=1), 2, 255, CPU)
    assert [r for r in caplog.records if r.name == "semseg.engine"] == []
