"""Training options: precision, accumulation, clipping, EMA, param groups, checkpoints kept, Ctrl-C and mid-epoch resume."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import train
from semseg.config import OptimConfig, TrainConfig
from semseg.distributed import DistContext, check_sync_bn
from semseg.engine import Stepper, TrainState, build_ema, train_one_epoch
from semseg.errors import ConfigError, SemsegError
from semseg.optim import build_optimizer, param_groups, set_lr
from tests.conftest import REPO
from tests.test_pipeline import TINY, records, run_train


class Pointwise(nn.Module):
    """A BatchNorm-free model: per-pixel linear, so accumulation must equal one big batch exactly."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.head(torch.relu(self.backbone(x)))}


class CE(nn.Module):
    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs["out"], target)


def stepper(model: nn.Module, lr: float = 0.1, **train_kw: object) -> Stepper:
    cfg = TrainConfig(**{"amp": "off", "channels_last": False, **train_kw})  # the stepper takes a resolved path
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu") if cfg.amp == "fp16" else None
    return Stepper(model, model, CE(), optimizer, torch.device("cpu"), cfg, DistContext(), scaler, build_ema(model, cfg.ema))


def batches(n: int, size: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 5, generator=g), torch.randint(0, 3, (size, 6, 5), generator=g)) for _ in range(n)]


def run_epoch(s: Stepper, data: list, steps: int, state: TrainState | None = None) -> TrainState:
    state = state or TrainState()
    train_one_epoch(s, data, steps, lambda it: s.optimizer.defaults["lr"], state, lambda r: None)
    return state


def test_gradient_accumulation_equals_one_big_batch() -> None:
    torch.manual_seed(0)
    a, b = Pointwise(), Pointwise()
    b.load_state_dict(a.state_dict())
    data = batches(4, size=2)
    run_epoch(stepper(a, accumulate=2), data, steps=2)
    big = [(torch.cat([data[i][0], data[i + 1][0]]), torch.cat([data[i][1], data[i + 1][1]])) for i in (0, 2)]
    run_epoch(stepper(b), big, steps=2)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_accumulation_counts_optimiser_steps_and_drops_the_incomplete_tail() -> None:
    s = stepper(Pointwise(), accumulate=2)
    state = run_epoch(s, batches(5), steps=2)  # 5 micro-batches → 2 steps, the 5th is left out
    assert (state.iteration, state.step_in_epoch) == (2, 2)


def test_gradient_clipping_bounds_the_update() -> None:
    torch.manual_seed(0)
    model = Pointwise()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    run_epoch(stepper(model, lr=1.0, clip_grad=0.01), batches(1), steps=1)  # plain SGD, lr 1: update = −clipped grad
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-4)


def test_ema_follows_the_weights_with_its_decay() -> None:
    torch.manual_seed(0)
    model = Pointwise()
    s = stepper(model, ema=0.5)
    history = []
    for data in batches(3):
        run_epoch(s, [data], steps=1)
        history.append(model.head.weight.detach().clone())
    expected = history[0]  # the first update copies the weights
    for w in history[1:]:
        expected = 0.5 * expected + 0.5 * w
    torch.testing.assert_close(s.ema.module.head.weight, expected)
    with pytest.raises(SemsegError, match="train.ema"):
        build_ema(model, 1.0)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_like_full_precision_on_cpu(amp: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    data = [(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())]  # a rule a pointwise model can learn
    low, full = Pointwise(), Pointwise()
    full.load_state_dict(low.state_dict())
    s_low, s_full = stepper(low, lr=0.5, amp=amp), stepper(full, lr=0.5)
    start = CE()(full(x), data[0][1]).item()
    for _ in range(30):
        run_epoch(s_low, data, steps=1)
        run_epoch(s_full, data, steps=1)
    end_low, end_full = CE()(low(x), data[0][1]).item(), CE()(full(x), data[0][1]).item()
    assert end_full < 0.8 * start
    assert end_low == pytest.approx(end_full, abs=0.03)
    assert (s_low.scaler is not None) == (amp == "fp16")


def test_non_finite_losses_skip_the_step_then_stop_with_a_clear_error() -> None:
    model = Pointwise()
    s = stepper(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = [(torch.full((1, 3, 4, 4), float("nan")), torch.zeros(1, 4, 4, dtype=torch.long))] * 12
    state = TrainState()
    with pytest.raises(SemsegError, match="non-finite for 10 steps in a row"):
        run_epoch(s, bad, steps=12, state=state)
    assert state.non_finite_steps == 10 and state.iteration == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_param_groups_split_backbone_and_head_and_spare_norms_and_biases() -> None:
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    model.add_module("head", nn.Conv2d(4, 2, 1))
    cfg = OptimConfig(lr=0.1, weight_decay=1e-4, backbone_lr_mult=0.1, backbone_weight_decay=5e-4)
    groups = {(g["lr_mult"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in param_groups(model, cfg)}
    assert groups == {(0.1, 5e-4): 3 * 4 * 9, (0.1, 0.0): 4 + 4 + 4, (1.0, 1e-4): 4 * 2, (1.0, 0.0): 2}
    optimizer = build_optimizer(cfg, model)
    set_lr(optimizer, 0.02)
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([0.002, 0.002, 0.02, 0.02])


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_each_optimiser_name_builds_its_torch_class_with_the_config_values(name: str, cls: type) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = build_optimizer(OptimConfig(name=name, lr=0.25, momentum=0.5, alpha=0.9, weight_decay=1e-3), model)
    assert type(optimizer) is cls and {g["lr"] for g in optimizer.param_groups} == {0.25}
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 1e-3]
    if name == "rmsprop":  # FC-DenseNet's rho 0.9 must reach torch, not its 0.99 default
        assert {g["alpha"] for g in optimizer.param_groups} == {0.9}
    if name == "sgd":
        assert {g["momentum"] for g in optimizer.param_groups} == {0.5}


def test_sync_bn_is_refused_on_cpu_processes_and_ignored_in_one() -> None:
    assert check_sync_bn(DistContext(), torch.device("cpu"), True) is False
    assert check_sync_bn(DistContext(0, 2, 0), torch.device("cuda"), True) is True
    with pytest.raises(ConfigError, match="train.sync_bn"):
        check_sync_bn(DistContext(0, 2, 0), torch.device("cpu"), True)


def test_keep_last_n_epoch_checkpoints(tmp_path: Path) -> None:
    run = run_train(tmp_path, "train.epochs=3", "train.keep_last=2", "data.params.num_images={train: 8, val: 2, test: 1}")
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "epoch_0002.pt", "epoch_0003.pt", "last.pt"]
    assert torch.load(run / "epoch_0003.pt", weights_only=False)["state"]["epoch"] == 3


def test_ema_run_validates_and_restores_the_ema_weights(tmp_path: Path) -> None:
    run = run_train(tmp_path, "train.epochs=2", "train.ema=0.9", "data.params.num_images={train: 8, val: 2, test: 1}",
                    "train.amp=bf16", "train.channels_last=true", "optim.backbone_lr_mult=0.5")  # fmt: skip
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["ema"] is not None and ckpt["ema"]["n_averaged"].item() == 2 * 2
    from semseg.build import restore

    model, _, _ = restore(str(run / "last.pt"), [])
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["ema"][f"module.{key}"]), key
    assert any(not torch.equal(ckpt["model"][k], v) for k, v in model.state_dict().items() if v.is_floating_point())


class StopAfter:
    """Stands in for the Ctrl-C handler: asks to stop after the n-th optimiser step."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __enter__(self) -> "StopAfter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls == self.n


@pytest.mark.parametrize("options", [[], ["train.accumulate=2", "train.ema=0.9", "train.amp=fp16"]], ids=["plain", "accumulate-ema-fp16"])
def test_stop_mid_epoch_and_resume_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: list[str]) -> None:
    small = ["train.epochs=2", "train.val_every=1", "data.params.num_images={train: 24, val: 4, test: 1}", *options]
    straight = run_train(tmp_path / "a", *small)
    monkeypatch.setattr(train, "StopRequest", lambda: StopAfter(4))  # 4th step: in the middle of epoch 1 (6 or 3 steps)
    rc = train.main(["--config", str(REPO / "configs" / "synthetic_tiny.yml"), "--set", *TINY, f"log.run_dir={tmp_path / 'b'}", *small])
    assert rc == 130
    stopped = tmp_path / "b" / "synthetic_tiny"
    ckpt = torch.load(stopped / "last.pt", weights_only=False)
    assert ckpt["state"]["iteration"] == 4 and ckpt["state"]["step_in_epoch"] in (4, 1)
    before_stop = ckpt["state"]["epoch_seconds"]
    assert before_stop > 0
    monkeypatch.undo()
    assert train.main(["--resume", str(stopped / "last.pt")]) == 0
    assert records(stopped, "epoch")[0]["seconds"] > before_stop  # the epoch's wall time includes the part before the stop
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(stopped / "last.pt", weights_only=False)
    assert a["state"] == b["state"]
    for part in ("model", "ema"):
        for key, value in (a[part] or {}).items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    assert records(straight, "val") == records(stopped, "val")
    assert [r["loss"] for r in records(straight, "epoch")] == [r["loss"] for r in records(stopped, "epoch")]


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "train.py"), "--set", *TINY, f"log.run_dir={tmp_path}", "train.epochs=50", "data.num_workers=2"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = tmp_path / "synthetic_tiny" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (log.is_file() and '"train"' in log.read_text()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the loader's workers get it too
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.count("SIGINT received: stopping after this step") == 1, err[-2000:]  # the main process's, not the workers'
    assert "resume with: python train.py --resume" in err
    ckpt = torch.load(tmp_path / "synthetic_tiny" / "last.pt", weights_only=False)
    assert 0 < ckpt["state"]["iteration"] < 50 * 12
    assert not list((tmp_path / "synthetic_tiny").glob(".*.tmp"))  # no half-written checkpoint left behind
    assert math.isfinite(json.loads(log.read_text().splitlines()[-1])["loss"])


def test_compiled_model_trains_and_saves_plain_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = []
    real_compile = torch.compile

    def eager_compile(model: nn.Module) -> nn.Module:  # inductor needs minutes on CPU; the wiring is what is tested
        compiled.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(train.torch, "compile", eager_compile)
    run = run_train(tmp_path, "train.epochs=1", "train.compile=true", "data.params.num_images={train: 8, val: 2, test: 1}")
    assert len(compiled) == 1
    keys = torch.load(run / "last.pt", weights_only=False)["model"].keys()
    assert keys and not any(k.startswith("_orig_mod") for k in keys)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


PROGRESS = re.compile(r"epoch 1: step (\d+)/6, loss \d+\.\d{4}, lr 1\.0e-01, \d+\.\d{2} s/step")


@pytest.mark.parametrize("tty", [False, True], ids=["redirected", "terminal"])
def test_progress_lines_every_print_every_steps_only_off_a_terminal(tty: bool, caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(sys, "stderr", Terminal() if tty else io.StringIO())  # where tqdm draws its bar
    s = stepper(Pointwise())
    caplog.set_level(logging.INFO, logger="semseg.engine")
    train_one_epoch(s, batches(6), 6, lambda it: 0.1, TrainState(), lambda r: None, print_every=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "semseg.engine"]
    if tty:  # the bar shows the progress
        assert lines == []
    else:
        assert [int(PROGRESS.fullmatch(line).group(1)) for line in lines] == [2, 4, 6], lines
