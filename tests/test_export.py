"""tools/export.py: ONNX (onnxruntime) and TorchScript parity with PyTorch, dynamic sizes, the CLI, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import train
from semseg.build import restore
from semseg.registry import MODELS
from tests.conftest import REPO, assert_onnx_matches, load_script
from tests.test_pipeline import TINY

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

export = load_script("tools/export")


class TinyNet(nn.Module):
    """Exports in about a second: for the error paths, where the model does not matter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x), "aux": self.conv(x) * 2}


def onnx_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real train.py checkpoint (ENet, 6 synthetic classes), one short epoch with the pipeline test's settings."""
    runs = tmp_path_factory.mktemp("runs")
    small = ["train.epochs=1", "data.params.num_images={train: 8, val: 4, test: 1}", f"log.run_dir={runs}"]
    assert train.main(["--config", str(REPO / "configs" / "synthetic_tiny.yml"), "--set", *TINY, *small]) == 0
    return runs / "synthetic_tiny" / "best.pt"


@pytest.mark.parametrize("name", ["erfnet", "linknet", "pspnet50"])  # ENet: the CLI tests below
def test_onnx_matches_pytorch(name: str, tmp_path: Path) -> None:
    assert_onnx_matches(MODELS.build(name, num_classes=5), tmp_path / f"{name}.onnx", (64, 64))


def test_dynamic_onnx_runs_at_another_batch_and_size(tmp_path: Path) -> None:
    model = MODELS.build("erfnet", num_classes=5).eval()  # transposed convs told their output size: the hard case
    path = tmp_path / "erfnet.onnx"
    assert export.export_onnx(model, path, (32, 48), dynamic=True, multiple=8) <= 1e-4
    x = torch.randn(3, 3, 56, 24)  # neither the export size nor the one export_onnx checked
    with torch.no_grad():
        ref = model(x)["out"]
    assert (onnx_logits(path, x) - ref).abs().max().item() <= 1e-4


def test_only_out_is_exported(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    export.export_onnx(TinyNet().eval(), path, (8, 8))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert session.get_outputs()[0].shape == [1, 4, 8, 8]


def test_cli_exports_a_checkpoint(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "enet.onnx"
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: enet onnx, input 1×3×48×64, 6 classes; max abs diff to PyTorch ")
    assert float(line.rsplit(" ", 1)[1]) <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["model"] == "enet" and len(json.loads(meta["classes"])) == 6 and len(json.loads(meta["mean"])) == 3
    assert [p.name for p in out.parent.iterdir()] == ["enet.onnx"]  # no temporary file left


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_cli_torchscript_at_an_odd_size_matches_pytorch(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "enet.ts"  # ENet: a plain torch.jit.trace fails on its max-unpooling
    argv = ["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out), "--height", "45", "--width", "61"]
    assert export.main(argv) == 0
    assert "enet torchscript, input 1×3×45×61" in capsys.readouterr().out
    model = restore(str(checkpoint), [])[0].eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(out))(x), model(x)["out"], rtol=0, atol=1e-5)


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_errors_are_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path / "m.onnx")
    assert export.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", out]) == 2
    assert one_line_error(capsys) == f"error: {tmp_path / 'missing.pt'}: checkpoint not found"
    (tmp_path / "file").write_text("")
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "file" / "m.onnx")]) == 2
    assert "cannot create the output folder" in one_line_error(capsys)
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 2
    assert "is a folder" in one_line_error(capsys)
    assert export.main(["--checkpoint", str(checkpoint), "--out", out, "--format", "torchscript", "--dynamic"]) == 2
    assert "--dynamic is ONNX only" in one_line_error(capsys)
    assert export.main(["--checkpoint", str(checkpoint), "--out", out, "--dynamic", "--height", "45", "--width", "64"]) == 2
    assert one_line_error(capsys) == "error: --dynamic exports H and W as multiples of 8 (the model's output stride); 45×64 is not"
    assert export.main(["--checkpoint", str(checkpoint), "--out", out, "--height", "45"]) == 2
    assert "--height and --width go together" in one_line_error(capsys)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    assert export.main(["--checkpoint", str(checkpoint), "--out", out]) == 2
    assert one_line_error(capsys) == "error: onnxruntime is not installed (to check the exported graph): pip install onnxruntime"
    assert not Path(out).exists()


def test_parity_failure_is_an_error_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = TinyNet().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(export.ExportError, match=r"^m: output differs from PyTorch by 1\.00e-03 at \(1, 3, 8, 8\) \(tolerance \d\.\de-04\)$"):
        export.check_parity("m", lambda t: export.LogitsOnly(model)(t) + 1e-3, export.LogitsOnly(model), [x], 1e-4)
    monkeypatch.setattr(export, "tolerance", lambda ref, atol: -1.0)  # any difference, even 0, now fails
    with pytest.raises(export.ExportError, match="differs from PyTorch"):
        export.export_onnx(model, tmp_path / "m.onnx", (8, 8))
    assert list(tmp_path.iterdir()) == []

