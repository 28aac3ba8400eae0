"""Every fault loses nothing: kill -9, non-finite loss, visdom absent/dying/slow, disk full, out of memory.

One test per fault, each on the synthetic scenes at tiny settings, asserting the
message the user reads and that no half-written file is left in the run folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from torch import nn

import semseg.checkpoint
import train
from semseg.checkpoint import load_checkpoint
from semseg.runlog import trim_metrics_log
from semseg.engine import evaluate
from semseg.errors import SemsegError
import semseg.sinks.visdom
from semseg.sinks import TRAIN_LOSS, Point
from semseg.sinks.visdom import VisdomSink
from tests.conftest import REPO
from tests.test_pipeline import TINY, records, run_train

CONFIG = str(REPO / "configs" / "synthetic_tiny.yml")
SMALL = ["data.params.num_images={train: 16, val: 4, test: 1}"]  # 4 steps per epoch


def temp_files(run: Path) -> list[Path]:
    return sorted(run.glob(".*.tmp"))


def all_records(run: Path) -> list[dict]:
    """Every metrics.jsonl record, wall-clock seconds aside."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def main_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", CONFIG, "--set", *TINY, f"log.run_dir={tmp_path}", *extra]


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ----------------------------------------------------------------------------- kill -9, even mid-save

# train.py with torch.save writing the very same bytes in 64 KiB pieces 10 ms apart, so a kill can land mid-write
SLOW_SAVE = f"""
import io, runpy, sys, time
import torch
real_save = torch.save
def slow_save(obj, f, *args, **kwargs):
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    for i in range(0, len(data), 1 << 15):  # ~150 chunks, 50 ms apart: a write window of seconds, so the
        f.write(data[i:i + (1 << 15)])        # kill lands mid-write even on a loaded machine
        f.flush()
        time.sleep(0.05)
torch.save = slow_save
sys.path.insert(0, {str(REPO)!r})
sys.argv = [{str(REPO / "train.py")!r}] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def spawn(cwd: Path, args: list[str], log: Path, slow_save: bool = False) -> subprocess.Popen:
    program = ["-c", SLOW_SAVE] if slow_save else [str(REPO / "train.py")]
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, *program, *args], cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip


def size(path: Path) -> int:
    """Bytes in ``path``; 0 once it is gone (a temporary file is renamed between glob and stat)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120, poll: float = 0.005) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"train.py exited early with {proc.returncode}"
        assert time.time() < deadline, "timed out"
        time.sleep(poll)


def test_kill_9_anywhere_even_mid_save_leaves_a_loadable_last_pt_and_resume_finishes(tmp_path: Path) -> None:
    rng = random.Random(20240607)  # fixed: the same kill times on every run
    run, epochs = tmp_path / "synthetic_tiny", 16
    last = run / "last.pt"
    mtime = lambda: last.stat().st_mtime_ns if last.is_file() else 0  # noqa: E731
    iterations = []
    for round_ in range(3):  # kill at pseudo-random times once a (new) last.pt exists: mid-step, mid-eval, mid-save, …
        before = mtime()
        args = main_args(tmp_path, *SMALL, f"train.epochs={epochs}") if round_ == 0 else ["--resume", str(last)]
        proc = spawn(tmp_path, args, tmp_path / f"kill{round_}.log")
        wait_for(lambda: mtime() != before, proc)
        time.sleep(rng.uniform(0.0, 1.2))
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.kill()
        assert proc.wait() == -signal.SIGKILL
        iterations.append(load_checkpoint(last)["state"]["iteration"])  # never a partial last.pt
    # now exactly while last.pt is being written: its temporary file exists and holds part of the bytes
    previous = last.read_bytes()
    earlier = set(temp_files(run))  # a random kill above may itself have hit a save; the resume sweeps those
    proc = spawn(tmp_path, ["--resume", str(last)], tmp_path / "kill_mid_save.log", slow_save=True)
    wait_for(lambda: any(size(p) > 0 for p in run.glob(".last.pt.*.tmp") if p not in earlier), proc)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    (stale,) = temp_files(run)  # the killed save could not clean up after itself
    assert stale.name.startswith(".last.pt.") and 0 < stale.stat().st_size < len(previous)
    assert last.read_bytes() == previous  # the target was never touched
    iterations.append(load_checkpoint(last)["state"]["iteration"])
    assert iterations == sorted(iterations) and iterations[0] > 0
    # the resume sweeps the stray temporary file and trains to the end
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "--resume", str(last)], cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"removed 1 stale temporary file(s) left by an interrupted save in {run}: {stale.name}" in done.stderr
    assert f"resumed {last} at epoch" in done.stderr
    assert load_checkpoint(last)["state"]["epoch"] == epochs
    assert temp_files(run) == []
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch_records = [r["epoch"] for r in records if r["type"] == "epoch"]
    assert epoch_records == list(range(1, epochs + 1))  # each epoch logged once, though some were run twice
    assert [r["iteration"] for r in records] == sorted(r["iteration"] for r in records)


def test_resume_drops_metrics_records_logged_after_the_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    records = [{"type": "train", "iteration": i} for i in (2, 4)] + [{"type": "epoch", "iteration": 4}, {"type": "val", "iteration": 4}]
    records += [{"type": "train", "iteration": 6}, {"type": "train", "iteration": 8}]  # logged, then killed before epoch 2's save
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert trim_metrics_log(log, 4) == 2
    assert [json.loads(line) for line in log.read_text().splitlines()] == records[:4]
    assert trim_metrics_log(log, 4) == 0 and trim_metrics_log(tmp_path / "absent.jsonl", 4) == 0


# ----------------------------------------------------------------------------- non-finite loss


class NaNAfter(nn.Module):
    """The real criterion for ``good`` calls, then NaN: a run that diverges mid-way."""

    def __init__(self, inner: nn.Module, good: int) -> None:
        super().__init__()
        self.inner, self.good, self.calls = inner, good, 0

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = self.inner(outputs, target)
        return loss * float("nan") if self.calls > self.good else loss


def test_nan_loss_stops_with_one_line_exit_2_and_finite_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    real = train.build_criterion
    monkeypatch.setattr(train, "build_criterion", lambda *a, **k: NaNAfter(real(*a, **k), good=12))  # epoch 1 = 12 steps
    with caplog.at_level(logging.WARNING):
        assert train.main(main_args(tmp_path, "train.epochs=3")) == 2
    assert one_line_error(capsys) == ("error: loss was non-finite for 10 steps in a row at iteration 12; "
                                      "lower optim.lr or check the data (last good checkpoint kept)")  # fmt: skip
    assert sum("non-finite loss at iteration 12; step skipped" in r.message for r in caplog.records) == 10
    run = tmp_path / "synthetic_tiny"
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert last["state"]["epoch"] == best["state"]["epoch"] == 1 and last["state"]["iteration"] == 12
    assert finite(last["model"]) and finite(best["model"])
    assert all(torch.equal(v, best["model"][k]) for k, v in last["model"].items())
    assert [r["epoch"] for r in records(run, "epoch")] == [1] and temp_files(run) == []


# ----------------------------------------------------------------------------- visdom absent, dying, slow


class FakeVisdom(ThreadingHTTPServer):
    """Answers visdom's POSTs with a window id; ``dies`` closes itself after a few, ``slow`` sleeps 2 s each."""

    daemon_threads = True
    block_on_close = False  # never wait for a sleeping handler

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), FakeVisdomHandler)
        self.mode, self.posts = mode, []

    def die(self) -> None:
        self.shutdown()
        self.server_close()  # the port now refuses connections


class FakeVisdomHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append(self.path)
        count = len(self.server.posts)  # now: the next request may be counted before this handler ends
        if self.server.mode == "slow":
            time.sleep(2.0)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"win")
        if self.server.mode == "dies" and count == 4:  # env + 3 plots, then gone mid-run
            threading.Thread(target=self.server.die).start()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_visdom(request: pytest.FixtureRequest) -> Iterator[tuple[FakeVisdom | None, int]]:
    if request.param == "absent":
        with FakeVisdom("absent") as probe:  # a port that was free a moment ago and now is closed
            port = probe.server_address[1]
        yield None, port
        return
    server = FakeVisdom(request.param)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server, server.server_address[1]
    server.die()  # a second shutdown() returns at once


class TimedVisdom(VisdomSink):
    """The real sink, recording how long each call kept the training loop waiting."""

    made: list["TimedVisdom"] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        start = time.perf_counter()
        super().__init__(*args, **kwargs)
        self.waits: dict[str, list[float]] = {"init": [time.perf_counter() - start], "line": [], "images": [], "close": []}
        TimedVisdom.made.append(self)

    def _timed(self, name: str, call: Callable[[], None]) -> None:
        start = time.perf_counter()
        call()
        self.waits[name].append(time.perf_counter() - start)

    def scalars(self, *args: object, **kwargs: object) -> None:
        self._timed("line", lambda: super(TimedVisdom, self).scalars(*args, **kwargs))

    def images(self, *args: object, **kwargs: object) -> None:
        self._timed("images", lambda: super(TimedVisdom, self).images(*args, **kwargs))

    def close(self, timeout: float = 5.0) -> None:
        self._timed("close", lambda: super(TimedVisdom, self).close(timeout))


@pytest.fixture(scope="module")
def run_without_visdom(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return all_records(run_train(tmp_path_factory.mktemp("novisdom"), *SMALL, "train.epochs=2"))


MESSAGES = {
    "absent": "visdom server not reachable at http://127.0.0.1:{port}; training goes on (curves are in metrics.jsonl)",
    "dies": "visdom server at http://127.0.0.1:{port} stopped answering (ConnectionError); training goes on",
    "slow": "visdom server is slower than training: dropping plots (redrawn from metrics.jsonl when it catches up)",
}


@pytest.mark.parametrize("fake_visdom", ["absent", "dies", "slow"], indirect=True)
def test_visdom_absent_dying_or_slow_never_blocks_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                           fake_visdom: tuple, run_without_visdom: list[dict]) -> None:  # fmt: skip
    server, port = fake_visdom
    mode = server.mode if server is not None else "absent"
    TimedVisdom.made = []
    monkeypatch.setattr(semseg.sinks.visdom, "VisdomSink", TimedVisdom)
    visdom_on = ["log.visdom=true", "log.visdom_server=http://127.0.0.1", f"log.visdom_port={port}"]
    with caplog.at_level(logging.INFO):
        run = run_train(tmp_path, *SMALL, "train.epochs=2", *visdom_on)
        # then a burst far beyond the queue: 1000 curve points and 20 image grids as fast as possible
        burst = TimedVisdom("http://127.0.0.1", port, "burst", queue_size=16)
        deadline = time.monotonic() + 10
        while mode == "slow" and not burst.connected and time.monotonic() < deadline:
            time.sleep(0.05)  # until connected, nothing is sent, so nothing can be too slow: points wait in the file
        for i in range(1000):
            burst.scalars(Point(TRAIN_LOSS, i, i, {"loss": 1.0}))
        for i in range(20):
            burst.images("grid", torch.zeros(3, 3, 32, 48, dtype=torch.uint8).numpy(), "grid", i)
        burst.close(timeout=1.0)
    during, _ = TimedVisdom.made
    # training never waited: each call only queues a job; close() gives up after its timeout
    for viz in TimedVisdom.made:
        assert viz.waits["init"][0] < 1.0  # the reachability probe's own timeout is 0.5 s
        waits = sorted(viz.waits["line"] + viz.waits["images"])  # ~0.01 ms; a request would take 2 s (slow) or fail
        assert waits[len(waits) // 2] < 0.001 and waits[-1] < 0.1, waits[-5:]  # the max allows for a GIL switch on a busy machine
    assert len(during.waits["line"]) == 2 * (2 + 2 + 2) and len(during.waits["images"]) == 2  # 2 epochs: train, val curves, grid
    assert during.waits["close"][0] < 5.0 + 0.5 and burst.waits["close"][0] < 1.0 + 0.5
    # and lost nothing: metrics.jsonl is the visdom-off run's, record for record (wall-clock seconds aside)
    assert all_records(run) == run_without_visdom
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith(MESSAGES[mode].format(port=port)) for m in messages) == (2 if mode == "absent" else 1), messages
    if mode == "dies":
        assert len(server.posts) >= 4 and server.posts[0].startswith("/env/synthetic_tiny_")  # some got through, then it was gone
    if mode == "slow":
        assert burst.dropped >= 1000 - 16 and any(m.startswith("visdom: ") and "plots were not sent" in m for m in messages)
    assert temp_files(run) == []


# ----------------------------------------------------------------------------- disk full


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "synthetic_tiny"
    real_save, seen = torch.save, {}

    def full_disk(obj: dict, f: object, *args: object, **kwargs: object) -> None:
        if obj["state"]["epoch"] < 2:
            return real_save(obj, f, *args, **kwargs)
        seen["previous"], seen["temp"] = (run / "last.pt").read_bytes(), temp_files(run)
        f.write(b"PK\x03\x04" + bytes(4096))  # part of a zip, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(semseg.checkpoint.torch, "save", full_disk)
    assert train.main(main_args(tmp_path, *SMALL, "train.epochs=3", "train.val_every=3")) == 2  # epoch 2 saves last.pt only
    assert one_line_error(capsys) == f"error: {run / 'last.pt'}: cannot save checkpoint: no space left on device (the previous last.pt is unchanged)"
    assert [p.name.split(".")[1:3] for p in seen["temp"]] == [["last", "pt"]]  # the write went to a temporary file …
    assert (run / "last.pt").read_bytes() == seen["previous"]  # … so last.pt is byte for byte epoch 1's
    assert load_checkpoint(run / "last.pt")["state"]["epoch"] == 1
    assert temp_files(run) == []  # and that temporary file is gone


class FullDiskFile:
    """A real text file whose writes fail with ENOSPC after ``room`` of them, its close too (data left in the buffer)."""

    def __init__(self, path: Path, room: int) -> None:
        self.file, self.room = open(path, "a"), room

    def write(self, text: str) -> int:
        self.room -= 1
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target", ["metrics.jsonl", "config.yml"])
def test_disk_full_while_logging_is_one_line_and_keeps_the_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture, target: str) -> None:  # fmt: skip
    run = tmp_path / "synthetic_tiny"
    if target == "metrics.jsonl":  # room for epoch 1's records (2 train, epoch, val), then the disk is full
        monkeypatch.setattr(train, "open", lambda path, mode="r": FullDiskFile(Path(path), room=4), raising=False)
    else:
        real_write_text = Path.write_text

        def write_text(self: Path, *args: object, **kwargs: object) -> int:
            if self.name == "config.yml":
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    assert train.main(main_args(tmp_path, *SMALL, "train.epochs=3", "log.print_every=2")) == 2
    assert one_line_error(capsys) == f"error: {run / target}: cannot write: no space left on device (checkpoints already saved are intact)"
    if target == "metrics.jsonl":
        assert load_checkpoint(run / "last.pt")["state"]["epoch"] == 1  # epoch 2 stopped at its first record
        assert [json.loads(line)["type"] for line in (run / "metrics.jsonl").read_text().splitlines()] == ["train", "train", "epoch", "val"]
    else:
        assert not (run / "last.pt").exists()


# ----------------------------------------------------------------------------- out of memory


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
                                                "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)")],
                         ids=["cuda", "cpu"])  # fmt: skip
def test_out_of_memory_names_the_batch_and_what_to_lower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                         error: RuntimeError) -> None:  # fmt: skip
    run, real_build, seen = tmp_path / "synthetic_tiny", train.build_model, {}

    def build_model(cfg: object, num_classes: int) -> nn.Module:
        model = real_build(cfg, num_classes)
        real_forward, calls = model.forward, []

        def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
            calls.append(model.training)
            if sum(calls) == 6:  # the 2nd training step of epoch 2
                seen["previous"] = (run / "last.pt").read_bytes()
                raise error
            return real_forward(x)

        model.forward = forward
        return model

    monkeypatch.setattr(train, "build_model", build_model)
    # fp32 pinned: the hint to try bf16 is given only where it is not already on (train.amp=auto picks it on bf16 CPUs)
    assert train.main(main_args(tmp_path, *SMALL, "train.epochs=3", "train.device=cpu", "train.amp=off")) == 2
    assert one_line_error(capsys) == (
        "error: out of memory at iteration 6 with batch 4 of 3×48×64 on cpu; lower data.batch_size or augment.crop "
        "(data.batch_size=2 train.accumulate=2 keeps the effective batch), or set train.amp=bf16"
    )
    assert (run / "last.pt").read_bytes() == seen["previous"] and load_checkpoint(run / "last.pt")["state"]["epoch"] == 1
    assert temp_files(run) == []


def test_out_of_memory_in_validation_says_what_to_lower() -> None:
    class Hungry(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    loader = [(torch.zeros(2, 3, 36, 48), torch.zeros(2, 36, 48, dtype=torch.long))]
    with pytest.raises(SemsegError) as info:
        evaluate(Hungry(), loader, 3, 255, torch.device("cpu"))
    assert str(info.value) == (
        "out of memory evaluating a batch of 2 × 3×36×48 on cpu; lower data.val_batch_size "
        "or predict in tiles (infer.mode=slide with infer.tile, or validate.py --mode slide --tile H W)"
    )
