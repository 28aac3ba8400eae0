from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from semseg.visualize import VisdomLogger, colorize, denormalize, overlay


def test_colorize_maps_ids_to_palette_and_ignore_to_black() -> None:
    ids = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    rgb = colorize(ids, [(10, 20, 30), (40, 50, 60)])
    assert rgb.tolist() == [[[10, 20, 30], [40, 50, 60]], [[0, 0, 0], [40, 50, 60]]]


def test_overlay_blends_half_and_half() -> None:
    image = Image.new("RGB", (2, 1), (100, 100, 100))
    out = np.asarray(overlay(image, np.full((1, 2, 3), 200, np.uint8)))
    assert (out == 150).all()


def test_denormalize_inverts_normalisation() -> None:
    rgb = np.array([[[0.0, 1.0]], [[0.5, 0.5]], [[1.0, 0.0]]])  # 3×1×2
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    assert denormalize((rgb - 0.5) / 0.5, mean, std)[0, 0].tolist() == [0, 128, 255]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_warns_once_and_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        viz = VisdomLogger("http://127.0.0.1", free_port(), "env")
    assert not viz.active
    assert sum("not reachable" in r.message for r in caplog.records) == 1
    start = time.perf_counter()
    for i in range(1000):
        viz.line("loss", i, {"loss": 1.0}, "loss")
    assert time.perf_counter() - start < 0.5


def test_curves_and_images_reach_a_live_server(tmp_path) -> None:  # noqa: ANN001
    visdom = pytest.importorskip("visdom")
    port = free_port()
    # run_server.main() skips download_scripts(): no internet needed for the API
    code = f"import sys; sys.argv=['v','-port','{port}','-env_path','{tmp_path}']; from visdom.server.run_server import main; main()"
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        viz = VisdomLogger("http://127.0.0.1", port, "semseg_test")
        assert viz.active
        for i in range(3):
            viz.line("train_loss", i, {"loss": 1.0 / (i + 1)}, "training loss")
        viz.images("val_images", np.zeros((3, 3, 8, 8), np.uint8), "grid")
        viz.close()
        client = visdom.Visdom(server="http://127.0.0.1", port=port, env="semseg_test", use_incoming_socket=False)
        windows = json.loads(client.get_window_data(env="semseg_test"))
        assert windows["train_loss"]["content"]["data"][0]["y"] == pytest.approx([1.0, 0.5, 1 / 3])
        assert windows["val_images"]["type"] == "image"
    finally:
        server.terminate()
        server.wait(10)
