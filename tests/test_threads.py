"""train.threads / data.num_workers: compute threads and loader workers sized to the usable cores (semseg/threads.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from semseg import threads
from semseg.config import load_config
from semseg.errors import ConfigError
from semseg.threads import apply_budget, cgroup_cpu_limit, resolve_budget, usable_cores

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def cores(monkeypatch: pytest.MonkeyPatch):
    """Pretend this process may use ``n`` cores."""

    def set_cores(n: int) -> None:
        monkeypatch.setattr(threads, "usable_cores", lambda: n)

    return set_cores


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("text, expected", [
    ("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", None), ("", None), ("x y", None),
])  # fmt: skip
def test_cgroup_quota_is_read_as_whole_cores_rounded_up(tmp_path: Path, text: str, expected: int | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert cgroup_cpu_limit(path) == expected
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_usable_cores_is_the_affinity_capped_by_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2)  # docker --cpus=2 on a 64-core host
    assert usable_cores() == 2
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert usable_cores() == 64
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {3, 5}, raising=False)
    assert usable_cores() == 2


def test_cpu_auto_computes_on_every_core_and_loads_in_the_main_process(cores) -> None:
    cores(2)
    budget = resolve_budget(None, "auto", CPU)
    assert (budget.threads, budget.workers, budget.oversubscribed) == (2, 0, False)
    budget = resolve_budget(1, "auto", CPU)  # one core left over: one worker gets it
    assert (budget.threads, budget.workers) == (1, 1)
    cores(16)
    assert (resolve_budget(12, "auto", CPU).threads, resolve_budget(12, "auto", CPU).workers) == (12, 4)


def test_processes_of_one_job_share_the_cores(cores) -> None:
    cores(8)
    budget = resolve_budget(None, "auto", CPU, processes=4)
    assert (budget.threads, budget.workers) == (2, 0) and "per process (4 processes)" in budget.why
    cores(2)
    assert resolve_budget(None, "auto", CPU, processes=4).threads == 1  # never zero


def test_gpu_auto_keeps_a_core_to_feed_the_gpu_and_caps_the_workers(cores) -> None:
    cores(4)
    assert resolve_budget(None, "auto", CUDA).workers == 3
    cores(64)
    assert resolve_budget(None, "auto", CUDA).workers == threads.MAX_GPU_WORKERS
    cores(1)
    assert resolve_budget(None, "auto", CUDA).workers == 1


def test_an_explicit_worker_count_is_honoured_and_oversubscription_flagged(cores) -> None:
    cores(2)
    budget = resolve_budget(None, 2, CPU)
    assert (budget.threads, budget.workers, budget.oversubscribed) == (2, 2, True)
    assert "oversubscribe" in budget.describe()
    assert not resolve_budget(1, 1, CPU).oversubscribed
    assert not resolve_budget(None, 6, CUDA).oversubscribed  # GPU runs: the workers are the point


@pytest.mark.parametrize("threads_, workers, key", [(0, "auto", "train.threads"), (None, -1, "data.num_workers")])
def test_nonsense_values_are_one_line_config_errors(threads_: int | None, workers: object, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        resolve_budget(threads_, workers, CPU)


def test_apply_sets_torch_threads_and_logs_one_line(cores, keep_threads, caplog: pytest.LogCaptureFixture) -> None:
    cores(2)
    caplog.set_level(logging.INFO, logger="semseg.threads")
    assert apply_budget(1, "auto", CPU).workers == 1
    assert torch.get_num_threads() == 1
    apply_budget(None, 3, CPU)
    assert torch.get_num_threads() == 2
    assert [(r.levelno, r.getMessage().split(" (")[0]) for r in caplog.records] == [
        (logging.INFO, "cpu: 1 compute thread(s), 1 data-loader worker(s)"),
        (logging.WARNING, "cpu: 2 compute thread(s), 3 data-loader worker(s)"),
    ]


def test_config_defaults_and_types() -> None:
    cfg = load_config(None, ["model.name=enet", "data.name=synthetic"])
    assert cfg.train.threads is None and cfg.data.num_workers == "auto"
    assert load_config(None, ["model.name=enet", "data.name=synthetic", "data.num_workers=3", "train.threads=2"]).data.num_workers == 3
    with pytest.raises(ConfigError, match="data.num_workers"):
        load_config(None, ["model.name=enet", "data.name=synthetic", "data.num_workers=many"])
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(None, ["model.name=enet", "data.name=synthetic", "train.threads=two"])


def test_training_uses_the_budget(tmp_path: Path, keep_threads, caplog: pytest.LogCaptureFixture) -> None:
    from tests.test_pipeline import run_train

    caplog.set_level(logging.INFO)
    run_train(tmp_path, "train.epochs=1", "train.threads=1", "data.num_workers=auto")
    assert torch.get_num_threads() == 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cpu: ")]
    assert len(lines) == 1 and lines[0].startswith(f"cpu: 1 compute thread(s), {max(0, usable_cores() - 1)} data-loader")
