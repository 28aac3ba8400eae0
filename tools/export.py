"""Export a trained checkpoint to ONNX or TorchScript, then check it against PyTorch.

    python tools/export.py --checkpoint runs/enet_camvid/best.pt --format onnx --out enet.onnx
    python tools/export.py --checkpoint runs/enet_camvid/best.pt --format onnx --out enet.onnx --dynamic
    python tools/export.py --checkpoint runs/enet_camvid/best.pt --format torchscript --out enet.ts --height 360 --width 480

The exported graph maps a normalised N×3×H×W float image (``augment.mean/std``
already applied, as ``semseg.inference`` does) to the N×C×H×W logits,
``model(x)["out"]`` only: the auxiliary head is a training device. The size
defaults to the recipe's ``augment.eval_size`` or ``augment.crop``.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript),
the default in torch 2.14. The older TorchScript-based exporter (``dynamo=False``)
fails on ENet and, with ``dynamic_axes``, bakes the transposed convolutions'
output sizes into the graph: ERFNet then gives wrong logits at other sizes and
LinkNet fails there. ``--dynamic`` makes batch, height and width symbolic, with
H and W multiples of the model's output stride: that keeps every transposed
convolution's output padding a constant, which ONNX requires. Every registered
model exports this way except PSPNet, whose adaptive pyramid pooling exports but
gives wrong logits or fails at other sizes; the second-size check refuses it.

TorchScript (``torch.jit``, deprecated upstream) is traced from the
``torch.export`` graph, which also traces ENet; it is fixed-size.

Every export is run again (onnxruntime on CPU / ``torch.jit.load``) on a random
input and compared with PyTorch; a difference above ``--atol`` (scaled by the
logits' magnitude when they exceed 1) is an error and leaves no file behind.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/export.py` from anywhere

from semseg.build import restore  # noqa: E402
from semseg.cli import run_script  # noqa: E402
from semseg.config import Config  # noqa: E402
from semseg.errors import SemsegError  # noqa: E402
from semseg.registry import MODELS  # noqa: E402

DEFAULT_ATOL = 1e-4
DYNAMIC_MAX = 4096  # largest exported H, W (and batch); torch.export needs an upper bound to reason about strides


class ExportError(SemsegError):
    """The export, its runtime or its parity check failed."""


class LogitsOnly(nn.Module):
    """``model(x)["out"]`` as a plain tensor function: exporters want tensors, and no aux head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out["out"] if isinstance(out, dict) else out


def root_cause(exc: BaseException) -> str:
    """One line from the innermost cause: torch.onnx wraps the real error in pages of advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}"


def tolerance(reference: torch.Tensor, atol: float) -> float:
    """``atol``, relative once logits exceed 1: float32 error grows with magnitude (random-init deep nets reach 1e4)."""
    return atol * max(1.0, reference.abs().max().item())


def check_parity(what: str, run: Callable[[torch.Tensor], Any], model: nn.Module, inputs: list[torch.Tensor], atol: float) -> float:
    """Max abs difference between ``run(x)`` and the PyTorch logits over ``inputs``; raise above tolerance."""
    worst = 0.0
    for x in inputs:
        with torch.inference_mode():
            ref = model(x)
        try:
            got = torch.as_tensor(run(x))
        except Exception as exc:  # noqa: BLE001 - any runtime failure means the export is unusable at this size
            raise ExportError(f"{what}: does not run at {tuple(x.shape)}: {root_cause(exc)}") from None
        if got.shape != ref.shape:
            raise ExportError(f"{what}: output {tuple(got.shape)} at input {tuple(x.shape)}, PyTorch gives {tuple(ref.shape)}")
        diff = (got - ref).abs().max().item()
        if not diff <= tolerance(ref, atol):  # `not <=` also catches NaN
            raise ExportError(f"{what}: output differs from PyTorch by {diff:.2e} at {tuple(x.shape)} (tolerance {tolerance(ref, atol):.1e})")
        worst = max(worst, diff)
    return worst


def check_inputs(size: tuple[int, int], dynamic: bool, multiple: int) -> list[torch.Tensor]:
    """The export size, and for a dynamic graph a second batch and size (to prove nothing was baked in)."""
    h, w = size
    inputs = [torch.randn(1, 3, h, w)]
    if dynamic:
        inputs.append(torch.randn(2, 3, h + multiple, w + 2 * multiple))
    return inputs


def require(module: str, why: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f"{module} is not installed ({why}): pip install {module}") from None


def onnx_dynamic_shapes(size: tuple[int, int], multiple: int) -> dict[str, dict[int, Any]]:
    h, w = size
    if h % multiple or w % multiple:
        raise ExportError(f"--dynamic exports H and W as multiples of {multiple} (the model's output stride); {h}×{w} is not")
    Dim = torch.export.Dim
    return {"x": {0: Dim("batch", min=1, max=DYNAMIC_MAX),
                  2: multiple * Dim("h_blocks", min=1, max=DYNAMIC_MAX // multiple),
                  3: multiple * Dim("w_blocks", min=1, max=DYNAMIC_MAX // multiple)}}  # fmt: skip


def write_onnx(model: nn.Module, path: Path, size: tuple[int, int], dynamic: bool, opset: Optional[int], multiple: int) -> None:
    require("onnxscript", "torch.onnx.export(dynamo=True) translates with it")
    example = torch.randn(2 if dynamic else 1, 3, *size)  # batch 2: torch.export specialises a size-1 dim
    shapes = onnx_dynamic_shapes(size, multiple) if dynamic else None
    for name in ("onnxscript", "onnx_ir"):  # per-pass INFO lines and a harmless empty-attribute warning
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints a progress line per step
            torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                              input_names=["image"], output_names=["logits"], external_data=False)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - torch.export / onnxscript raise many types, all "cannot export"
        raise ExportError(f"{path}: ONNX export failed: {root_cause(exc)}") from None


def add_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    onnx = require("onnx", "to store the metadata")
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))


def export_onnx(model: nn.Module, path: str | Path, size: tuple[int, int], dynamic: bool = False, opset: Optional[int] = None,
                multiple: int = 32, atol: float = DEFAULT_ATOL, metadata: Optional[dict[str, str]] = None) -> float:  # fmt: skip
    """Export ``model`` (logits only) to ONNX at ``size`` = (H, W); return the max abs difference to PyTorch.

    ``dynamic`` makes batch, H and W symbolic (H and W multiples of ``multiple``).
    The file is written under a temporary name and only renamed to ``path``
    once onnxruntime reproduces PyTorch within ``atol``.
    """
    ort = require("onnxruntime", "to check the exported graph")
    path, model = Path(path), LogitsOnly(model).eval()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_onnx(model, tmp, size, dynamic, opset, multiple)
        if metadata:
            add_onnx_metadata(tmp, metadata)
        options = ort.SessionOptions()
        options.log_severity_level = 4  # a failing size is reported by check_parity, not as an ORT log line
        session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        try:
            diff = check_parity(f"{path} (onnxruntime)", lambda x: session.run(None, {"image": x.numpy()})[0], model,
                                check_inputs(size, dynamic, multiple), atol)  # fmt: skip
        except ExportError as exc:
            raise ExportError(f"{exc}; export at a fixed size instead (no --dynamic)" if dynamic else str(exc)) from None
        os.replace(tmp, path)
        return diff
    finally:
        tmp.unlink(missing_ok=True)


def export_torchscript(model: nn.Module, path: str | Path, size: tuple[int, int], atol: float = DEFAULT_ATOL,
                       metadata: Optional[dict[str, str]] = None) -> float:  # fmt: skip
    """Trace ``model`` (logits only) at ``size`` to TorchScript; return the max abs difference after ``torch.jit.load``.

    Traced through ``torch.export`` first: a direct ``torch.jit.trace`` trips
    over shape checks in max-unpooling (ENet). The result is fixed-size.
    """
    path, model = Path(path), LogitsOnly(model).eval()
    example = torch.randn(1, 3, *size)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        try:
            graph = torch.export.export(model, (example,)).module()
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": the docstring says so
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # fixed-size by design, and checked below
                traced = torch.jit.trace(graph, example, check_trace=False)
        except Exception as exc:  # noqa: BLE001 - torch.export / jit raise many types, all "cannot export"
            raise ExportError(f"{path}: TorchScript export failed: {root_cause(exc)}") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(traced, str(tmp), _extra_files={"semseg.json": json.dumps(metadata or {})})
            loaded = torch.jit.load(str(tmp))
        diff = check_parity(f"{path} (torch.jit.load)", loaded, model, [example], atol)
        os.replace(tmp, path)
        return diff
    finally:
        tmp.unlink(missing_ok=True)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by train.py")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument("--out", required=True, help="file to write (e.g. model.onnx)")
    parser.add_argument("--height", type=int, help="input height (default: augment.eval_size or augment.crop)")
    parser.add_argument("--width", type=int, help="input width (default: augment.eval_size or augment.crop)")
    parser.add_argument("--dynamic", action="store_true", help="ONNX only: symbolic batch, height and width")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's recommended one)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="parity tolerance (default: %(default)g)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    return parser.parse_args(argv)


def export_size(args: argparse.Namespace, cfg: Config) -> tuple[int, int]:
    if (args.height is None) != (args.width is None):
        raise ExportError("--height and --width go together")
    size = (args.height, args.width) if args.height else (cfg.augment.eval_size or cfg.augment.crop)
    if size is None:
        raise ExportError(f"{args.checkpoint}: the recipe has no augment.eval_size or augment.crop; pass --height and --width")
    if min(size) < 1:
        raise ExportError(f"--height/--width must be positive, got {size[0]}×{size[1]}")
    return int(size[0]), int(size[1])


def check_out(path: Path) -> None:
    """Fail before minutes of exporting, not after."""
    if path.is_dir():
        raise ExportError(f"{path}: is a folder; --out names the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{path.parent}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"{path.parent}: not writable")


def export(args: argparse.Namespace) -> int:
    if args.dynamic and args.format != "onnx":
        raise ExportError("--dynamic is ONNX only: a TorchScript trace is fixed-size")
    out = Path(args.out)
    check_out(out)
    if args.format == "onnx":  # before restoring: a missing runtime should not cost an export
        require("onnxruntime", "to check the exported graph")
    model, cfg, ckpt = restore(args.checkpoint, args.set)
    size = export_size(args, cfg)
    multiple = int(MODELS.meta(cfg.model.name).get("output_stride", 32))
    metadata = {"model": cfg.model.name, "classes": json.dumps(ckpt["classes"]), "mean": json.dumps(list(cfg.augment.mean)),
                "std": json.dumps(list(cfg.augment.std)), "input": "image N×3×H×W float32, normalised", "output": "logits N×C×H×W"}  # fmt: skip
    if args.dynamic:
        metadata["dynamic"] = f"batch, H, W; H and W multiples of {multiple}"
    if args.format == "onnx":
        diff = export_onnx(model, out, size, args.dynamic, args.opset, multiple, args.atol, metadata)
    else:
        diff = export_torchscript(model, out, size, args.atol, metadata)
    shape = f"N×3×H×W (H, W multiples of {multiple})" if args.dynamic else f"1×3×{size[0]}×{size[1]}"
    print(f"{out}: {cfg.model.name} {args.format}, input {shape}, {len(ckpt['classes'])} classes; "
          f"max abs diff to PyTorch {diff:.2e}")  # fmt: skip
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(export, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
