"""Live curves end to end: the real visdom server on its offline assets, short trainings read back through
visdom's own API, TensorBoard event files read back, replay after a resume and after a server restart."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import stat
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import yaml

import train
from semseg import sinks
from semseg.sinks import Point, points
from tests.conftest import REPO
from tests.test_pipeline import records, run_train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VisdomServer:
    """``python -m semseg.visdom_server`` (the README's command) in a subprocess, on a free port."""

    def __init__(self, env_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = env_path / "server.log"
        env_path.mkdir(parents=True, exist_ok=True)
        # any attempt to reach the internet would go to a closed local port and fail at once
        blocked = {k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
        self.proc = subprocess.Popen([sys.executable, "-m", "semseg.visdom_server", "-port", str(self.port), "-env_path", str(env_path)],
                                     cwd=REPO, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **blocked})  # fmt: skip
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url("/"), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"visdom server did not start: {self.log.read_text()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def windows(self, env: str) -> dict[str, Any]:
        import visdom

        client = visdom.Visdom(server="http://127.0.0.1", port=self.port, env=env, use_incoming_socket=False)
        return json.loads(client.get_window_data(env=env))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def assets() -> None:
    pytest.importorskip("visdom")
    from semseg.visdom_server import AssetError, install_assets, missing_assets

    if missing_assets():
        try:
            install_assets()  # npm packages, checked against their SHA-256 (cached after the first time)
        except AssetError as exc:
            pytest.skip(f"visdom's browser files cannot be had on this machine: {exc}")


@pytest.fixture(scope="module")
def server(assets: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VisdomServer]:
    server = VisdomServer(tmp_path_factory.mktemp("visdom"))
    yield server
    server.stop()


def visdom_on(port: int) -> list[str]:
    return ["log.visdom=true", "log.visdom_server=http://127.0.0.1", f"log.visdom_port={port}"]


def series(window: dict[str, Any]) -> dict[str, dict[str, list]]:
    return {trace["name"]: trace for trace in window["content"]["data"]}


def visdom_values(ys: list) -> list[float]:
    return [math.nan if y is None else y for y in ys]


def env_of(run: Path) -> str:
    return yaml.safe_load((run / "config.yml").read_text())["log"]["visdom_env"]


def assert_curves_match_metrics(windows: dict[str, Any], run: Path) -> None:
    """Every curve holds exactly the numbers of metrics.jsonl (mIoU and IoU in %)."""
    train_records, val = records(run, "train"), records(run, "val")
    loss, lr = series(windows["train_loss"])["loss"], series(windows["lr"])["lr"]
    assert loss["x"] == [r["iteration"] for r in train_records] and lr["x"] == loss["x"]
    assert loss["y"] == pytest.approx([r["loss"] for r in train_records]) and lr["y"] == pytest.approx([r["lr"] for r in train_records])
    summary = series(windows["val_miou"])
    assert summary["mIoU"]["x"] == [r["epoch"] for r in val]
    assert summary["mIoU"]["y"] == pytest.approx([100 * r["miou"] for r in val])
    assert summary["pixel acc"]["y"] == pytest.approx([100 * r["pixel_acc"] for r in val])
    assert summary["mIoU"]["mode"] == "lines+markers"  # one validation point is visible
    per_class = series(windows["val_class_iou"])
    assert list(per_class) == list(val[0]["iou"])
    for name, trace in per_class.items():
        assert visdom_values(trace["y"]) == pytest.approx([100 * r["iou"][name] for r in val], nan_ok=True)


def test_training_draws_every_curve_and_grid_in_its_own_env_and_tensorboard(server: VisdomServer, tmp_path: Path) -> None:
    run = run_train(tmp_path, "train.epochs=2", *visdom_on(server.port), "log.tensorboard=true")
    env = env_of(run)
    assert env.startswith("synthetic_tiny_") and env != "synthetic_tiny"  # run folder + start time
    windows = server.windows(env)
    assert_curves_match_metrics(windows, run)
    assert windows["val_images"]["type"] == "image" and "epoch 2" in windows["val_images"]["title"]
    assert "run folder" in windows["run"]["content"]
    lr_axis = windows["lr"]["content"]["layout"]["yaxis"]["range"]
    assert lr_axis == pytest.approx([0.0, 1.05 * 5e-3])  # 0 … the peak rate: a constant rate is a flat line
    # the page, the env's own page and the bundles answer from this machine alone
    for path in ("/", f"/env/{env}", "/static/js/main.js", "/static/js/plotly-plotly.min.js", "/static/js/react-react.min.js"):
        with urllib.request.urlopen(server.url(path), timeout=10) as answer:
            assert answer.status == 200 and answer.read(), path
    log = server.log.read_text()
    assert "Checking for scripts" not in log and "Downloading" not in log  # visdom's CDN download never ran

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    train_records, val = records(run, "train"), records(run, "val")
    assert [(e.step, e.value) for e in events.Scalars("train_loss/loss")] == [(r["iteration"], pytest.approx(r["loss"])) for r in train_records]
    assert [e.value for e in events.Scalars("lr/lr")] == pytest.approx([r["lr"] for r in train_records])
    assert [e.value for e in events.Scalars("val_miou/mIoU")] == pytest.approx([100 * r["miou"] for r in val])
    assert [e.step for e in events.Images("val_images")] == [r["iteration"] for r in val]


def test_resume_into_a_restarted_server_redraws_the_whole_run(assets: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    with caplog.at_level(logging.INFO):
        run = run_train(tmp_path, "train.epochs=1", *visdom_on(port))  # no server yet: one warning, training unchanged
    assert sum("visdom server not reachable" in r.getMessage() for r in caplog.records) == 1
    server = VisdomServer(tmp_path / "visdom", port)
    try:
        assert train.main(["--resume", str(run / "last.pt"), "--set", "train.epochs=2"]) == 0
        windows = server.windows(env_of(run))  # the env survives the resume
        assert_curves_match_metrics(windows, run)  # epoch 1 (logged with no server) is there too: no hole
        assert len(records(run, "val")) == 2
    finally:
        server.stop()


def write_records(path: Path, items: list[dict]) -> None:
    with path.open("a") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")


def wait_for(condition: Any, seconds: float = 20.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            pytest.fail("timed out")
        time.sleep(0.1)


def test_server_absent_then_dying_then_back_gives_one_line_each_and_full_curves(assets: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from semseg.sinks.visdom import VisdomSink

    port, metrics = free_port(), tmp_path / "metrics.jsonl"
    train_record = lambda it: {"type": "train", "epoch": 1, "iteration": it, "loss": 1.0 / it, "lr": 0.01}  # noqa: E731

    def log(it: int) -> None:  # what train.py does: the file first, then the sinks
        write_records(metrics, [train_record(it)])
        for point in points(train_record(it)):
            sink.scalars(point)

    def drawn(server: VisdomServer, count: int) -> bool:
        with_window = server.windows("e").get("train_loss")
        return with_window is not None and len(series(with_window)["loss"]["y"]) == count

    with caplog.at_level(logging.INFO):
        sink = VisdomSink("http://127.0.0.1", port, "e", metrics, retry_seconds=0.2)
        for it in range(1, 4):
            log(it)
        server = VisdomServer(tmp_path / "a", port)
        log(4)
        wait_for(lambda: drawn(server, 4))
        server.stop()
        for it in range(5, 8):
            log(it)
            time.sleep(0.1)
        wait_for(lambda: not sink.connected)  # the sender has seen the outage (it may lag on a busy machine)
        server = VisdomServer(tmp_path / "b", port)  # a fresh server: its environments are empty
        try:
            log(8)
            wait_for(lambda: drawn(server, 8))
            assert series(server.windows("e")["train_loss"])["loss"]["y"] == pytest.approx([1.0 / it for it in range(1, 9)])
            for it in range(9, 40):
                log(it)
            sink.close()
        finally:
            server.stop()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("semseg")]
    assert sum("not reachable" in m for m in messages) == 1
    assert sum("stopped answering" in m for m in messages) == 1
    assert sum("visdom server back at" in m for m in messages) == 1
    assert sum("live curves at" in m for m in messages) == 1
    assert len(messages) == 4, messages  # nothing per plot


def test_a_server_restarted_between_two_plots_gets_the_whole_run_back(assets: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No request fails when a server restarts between two plots, but its environments are gone."""
    from semseg.sinks.visdom import VisdomSink

    port, metrics = free_port(), tmp_path / "metrics.jsonl"
    server = VisdomServer(tmp_path / "a", port)
    sink = VisdomSink("http://127.0.0.1", port, "e", metrics, retry_seconds=0.2)
    try:
        for it in range(1, 4):
            record = {"type": "train", "epoch": 1, "iteration": it, "loss": 1.0 / it, "lr": 0.01}
            write_records(metrics, [record])
            for point in points(record):
                sink.scalars(point)
        wait_for(lambda: "train_loss" in server.windows("e") and len(series(server.windows("e")["train_loss"])["loss"]["y"]) == 3)
        server.stop()
        server = VisdomServer(tmp_path / "b", port)
        record = {"type": "train", "epoch": 1, "iteration": 4, "loss": 0.25, "lr": 0.01}
        write_records(metrics, [record])
        with caplog.at_level(logging.INFO):
            for point in points(record):
                sink.scalars(point)
            sink.close()
        assert series(server.windows("e")["train_loss"])["loss"]["y"] == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
        assert any("lost the run's windows (restarted?)" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


def test_the_server_does_not_restart_when_a_source_file_changes(assets: None, tmp_path: Path) -> None:
    """visdom runs tornado in debug mode: its autoreload would restart (and empty) the server on any edit."""
    import visdom

    server = VisdomServer(tmp_path / "v")
    try:
        client = visdom.Visdom(server="http://127.0.0.1", port=server.port, env="keep", use_incoming_socket=False)
        client.text("still here", win="note")
        watched = REPO / "semseg" / "cli.py"  # imported by the server process
        time.sleep(1.5)  # autoreload notes each file's time at its first poll, 0.5 s after the start
        os.utime(watched)  # as a `git pull` or an editor would
        time.sleep(2.0)  # tornado's autoreload polls every 0.5 s
        assert server.proc.poll() is None and "note" in server.windows("keep")
        assert "restarting server" not in server.log.read_text()
    finally:
        server.stop()


def test_replay_draws_a_finished_run_into_visdom_and_tensorboard(server: VisdomServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from semseg import replay

    run = run_train(tmp_path, "train.epochs=2")  # visdom off
    assert replay.main([str(run), "--server", "http://127.0.0.1", "--port", str(server.port)]) == 0
    assert_curves_match_metrics(server.windows(env_of(run)), run)
    assert replay.main([str(run), "--tensorboard"]) == 0
    assert (run / "tensorboard").is_dir()
    capsys.readouterr()
    assert replay.main([str(run), "--tensorboard"]) == 2  # never over the run's own event files
    assert "exists" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the record → chart mapping


def test_points_show_iou_in_percent_with_gaps_for_undefined_classes() -> None:
    val = {"type": "val", "epoch": 3, "iteration": 30, "miou": 0.5, "pixel_acc": 0.875, "iou": {"road": 0.25, "car": math.nan}}
    summary, per_class = points(val)
    assert (summary.panel.key, summary.x, summary.values) == ("val_miou", 3.0, {"mIoU": 50.0, "pixel acc": 87.5})
    assert per_class.values["road"] == 25.0 and math.isnan(per_class.values["car"]) and per_class.panel.markers
    loss, lr = points({"type": "train", "epoch": 1, "iteration": 7, "loss": 0.5, "lr": 0.01}, peak_lr=0.02)
    assert loss == Point(sinks.TRAIN_LOSS, 7, 7, {"loss": 0.5}) and lr.panel.yrange == pytest.approx((0.0, 0.021))
    assert points({"type": "epoch", "epoch": 1, "iteration": 7, "loss": 0.5}) == []


# ----------------------------------------------------------------------------- the offline assets


def fake_npm(tmp_path: Path, content: bytes) -> str:
    """An ``npm`` whose ``pack`` writes a tarball holding ``content`` for every file asked for."""
    from semseg.visdom_server import ASSETS

    store = tmp_path / "store"
    for _, package, member, _ in ASSETS:
        name, version = package.rsplit("@", 1)
        tarball = store / f"{name}-{version}.tgz"
        tarball.parent.mkdir(exist_ok=True)
        members = {m for _, p, m, _ in ASSETS if p == package}
        if not tarball.exists():
            src = tmp_path / "src" / name / "package"
            for m in members:
                (src / m).parent.mkdir(parents=True, exist_ok=True)
                (src / m).write_bytes(content)
            with tarfile.open(tarball, "w:gz") as tar:
                tar.add(src, arcname="package")
    npm = tmp_path / "npm"
    npm.write_text(f'#!/bin/sh\nspec="$3"; name="${{spec%@*}}"; ver="${{spec##*@}}"; cp "{store}/$name-$ver.tgz" .\n')
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    return str(npm)


def test_install_refuses_a_file_whose_checksum_differs(tmp_path: Path) -> None:
    from semseg.visdom_server import AssetError, install_assets

    root = tmp_path / "visdom"
    with pytest.raises(AssetError, match="SHA-256 differs"):
        install_assets(root, tmp_path / "cache", npm=fake_npm(tmp_path, b"not jquery"))
    assert not (root / "static" / "js" / "jquery.min.js").exists()


def test_install_without_npm_is_one_line(tmp_path: Path) -> None:
    from semseg.visdom_server import AssetError, install_assets

    with pytest.raises(AssetError, match="npm is not installed"):
        install_assets(tmp_path / "visdom", tmp_path / "cache", npm=str(tmp_path / "no-npm"))


def test_assets_in_place_means_no_network(assets: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from semseg import visdom_server

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert visdom_server.prepare() is True and visdom_server.missing_assets() == []


def test_tornado_that_breaks_visdoms_page_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    tornado = pytest.importorskip("tornado")
    from semseg.visdom_server import AssetError, check_tornado

    monkeypatch.setattr(tornado, "version_info", (6, 6, 1, 0))
    monkeypatch.setattr(tornado, "version", "6.6.1")
    with pytest.raises(AssetError, match=r"tornado 6.6.1 answers visdom's page with HTTP 403; pip install 'tornado<6.6'"):
        check_tornado()


def test_image_grid_keeps_rows_of_three() -> None:
    from semseg.sinks.tensorboard import image_grid

    images = np.stack([np.full((3, 2, 2), i, np.uint8) for i in range(6)])
    grid = image_grid(images)
    assert grid.shape == (3, 4, 6) and grid[0, 0, ::2].tolist() == [0, 1, 2] and grid[0, 2, ::2].tolist() == [3, 4, 5]
