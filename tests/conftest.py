"""Shared test settings and helpers: deterministic seeds, the real-CamVid skip marker, script loading, one-line errors."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Iterator

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
    """Import a script by its path without ``.py`` ("test", "tools/plot_run", "bench/models"): they
    are not a package, and ``import test`` would find the standard library's. The module is put in
    ``sys.modules`` first, where dataclasses look their defining module up."""
    spec = importlib.util.spec_from_file_location(f"semseg_script_{name.replace('/', '_')}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def assert_onnx_matches(model: torch.nn.Module, path: Path, size: tuple[int, int], **export_kwargs: object) -> None:
    """tools/export.py's ONNX file, run in onnxruntime, gives the eval-mode logits within 1e-4 (relative beyond 1,
    as ``export.tolerance``: random-init logits can reach ~1e3). Skips without onnxruntime / onnxscript."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    export = load_script("tools/export")
    was_training = model.training
    model.eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ref = model(x)["out"]
    bound = 1e-4 * max(1.0, ref.abs().max().item())
    assert export.export_onnx(model, path, size, **export_kwargs) <= bound
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    assert got.shape == ref.shape and (got - ref).abs().max().item() <= bound
    model.train(was_training)


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    """What a script printed to stderr, asserted to be the one line the house rules promise."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    """Base URL of an HTTP server on 127.0.0.1 serving ``tmp_path``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
