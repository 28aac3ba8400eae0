"""A Lua Torch release (``torch.save`` of an ``nn`` module tree, ``.t7`` / ``.net``) as a flat state dict.

Torch7 saves a model as nested containers (``nn.Sequential``, ``nn.ConcatTable``: a
``modules`` list) of layers whose parameters are plain fields (``weight``, ``bias``,
``running_mean``, ``running_var``). Each tensor here is named by its container index
path, 0-based, then the field: ``4.0.0.2.1.running_var`` is the running variance of
child 1 of child 2 of … of the model's child 4. That is what a layout's rules match,
as they match a PyTorch file's keys.

The file format is read by ``torchfile`` (an independent, format-complete reader; the
format has been frozen since Torch7 ended), imported only here: nothing else needs it.
Two historical layouts are normalised so that rules see one form: BatchNorm saved by
``nn`` before mid-2016 holds ``running_std`` = 1/sqrt(var + eps) instead of the
variance, and ``SpatialConvolutionMM`` keeps its weight as a 2-D (out, in·kH·kW) matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from semseg.errors import CheckpointError

FIELDS = ("weight", "bias", "running_mean", "running_var")


def _typename(obj: Any) -> str:
    name = obj.torch_typename() if hasattr(obj, "torch_typename") else b""
    return name.decode() if isinstance(name, bytes) else str(name)


def _field(obj: Any, name: str) -> Any:
    return obj._obj.get(name) if isinstance(getattr(obj, "_obj", None), dict) else None


def _tensor(value: Any) -> torch.Tensor | None:
    if not isinstance(value, np.ndarray) or value.size == 0:  # nil, or emptied by clearState()
        return None
    return torch.from_numpy(np.array(value, dtype=np.float32))  # one copy, off the shared storage


def _layer_tensors(module: Any) -> dict[str, torch.Tensor]:
    out = {f: t for f in FIELDS if (t := _tensor(_field(module, f))) is not None}
    std = _tensor(_field(module, "running_std"))
    if "running_var" not in out and std is not None:
        eps = float(_field(module, "eps") or 1e-5)
        out["running_var"] = 1.0 / std.square() - eps
    weight = out.get("weight")
    if weight is not None and weight.dim() == 2 and "Convolution" in _typename(module):
        sizes = [_field(module, k) for k in ("nOutputPlane", "nInputPlane", "kH", "kW")]
        if all(isinstance(s, int) for s in sizes) and int(np.prod(sizes)) == weight.numel():
            out["weight"] = weight.reshape(sizes)
    return out


def _flatten(module: Any, prefix: str, state: dict[str, torch.Tensor]) -> None:
    children = _field(module, "modules")
    if isinstance(children, dict):  # a table with holes: keep Lua's order, 1-based keys
        children = [children[k] for k in sorted(children)]
    for name, tensor in _layer_tensors(module).items():
        state[f"{prefix}{name}"] = tensor
    for i, child in enumerate(children or ()):
        _flatten(child, f"{prefix}{i}.", state)


def read_torch7(path: str) -> dict[str, torch.Tensor]:
    """Every parameter and BN statistic of the saved module tree, keyed by index path (see the module doc)."""
    try:
        import torchfile
    except ImportError:
        raise CheckpointError(f"{path}: a Torch7 file; reading it needs torchfile (pip install torchfile)") from None
    try:
        root = torchfile.load(path, utf8_decode_strings=True)
    except Exception as exc:  # noqa: BLE001 - truncated, ascii-mode, not Torch7 at all: one line
        raise CheckpointError(f"{path}: cannot read as a Torch7 binary file ({type(exc).__name__})") from None
    if _typename(root) == "nn.DataParallelTable":  # saved without :get(1): the model is its first child
        root = (_field(root, "modules") or [root])[0]
    state: dict[str, torch.Tensor] = {}
    _flatten(root, "", state)
    if not state:
        raise CheckpointError(f"{path}: a Torch7 file holding no nn module with parameters")
    return state
