"""The authors' released checkpoints, mapped onto our models: one table per family.

A converter is data, not a second model definition (DESIGN §13): an ordered list of
``(official key regex, our key template)`` rules, the official keys that have no
counterpart (an ImageNet ``fc``, a fixed bilinear upsampler, an encoder-only
classifier), and the few tensor folds our layers need: a bias that sits right before
a BatchNorm (we leave it out, since BN cancels it) goes into that BN's running mean,
which is exact in eval mode; extra outputs (a void class the dataset ignores) are
dropped from the classifier. ``model_params`` / ``augment`` are what the weights
need to reproduce the official logits (BN epsilon, input normalisation), written
into the converted checkpoint's config; ``reader`` reads a release that is not a
PyTorch file (``_torch7.read_torch7`` for Lua Torch ``.t7``/``.net``) into the same
flat ``{key: tensor}`` form. Each family module registers its tables
in ``OFFICIAL``; ``tools/convert_weights.py`` is the command line.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from semseg.errors import CheckpointError
from semseg.registry import Registry

OFFICIAL = Registry("official weights")

Rule = tuple[str, str]  # (regex on the official key, replacement giving our key)


@dataclass(frozen=True)
class Converter:
    """How one official checkpoint layout maps onto one of our model families."""

    models: tuple[str, ...]  # our registered model names this layout fits
    rules: tuple[Rule, ...]  # first full match wins; the replacement uses \\1, \\2 …
    drop: tuple[str, ...] = ()  # official keys (regexes) with no counterpart in our model
    folds: tuple[Rule, ...] = ()  # (our bias key regex, our BN prefix): a pre-BN bias we do not have
    class_dims: Mapping[str, int] = field(default_factory=dict)  # our key → its class dimension
    checks: tuple[Callable[[dict[str, torch.Tensor]], None], ...] = ()  # on the official tensors
    fix: Callable[[dict[str, torch.Tensor]], None] | None = None  # in-place tensor folds on our keys
    model_params: Mapping[str, Any] = field(default_factory=dict)
    augment: Mapping[str, Any] = field(default_factory=dict)
    reader: Callable[[str], dict[str, torch.Tensor]] | None = None  # a non-PyTorch file (Torch7); None = torch.load


def unwrap(ckpt: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a saved state dict: ``{'state_dict': …}`` / ``{'model': …}`` and ``module.`` removed."""
    for key in ("state_dict", "model"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{source}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def rename(conv: Converter, official: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Apply the rules; an official key that no rule or drop pattern covers is an error."""
    out: dict[str, torch.Tensor] = {}
    rules = [(re.compile(pattern), repl) for pattern, repl in conv.rules]
    drops = [re.compile(p) for p in conv.drop]
    unknown = []
    for key, value in official.items():
        if key.endswith("num_batches_tracked") or any(d.fullmatch(key) for d in drops):
            continue
        ours = next((rx.sub(repl, key) for rx, repl in rules if rx.fullmatch(key)), None)
        if ours is None:
            unknown.append(key)
        else:
            out[ours] = value
    if unknown:
        raise CheckpointError(f"{source}: keys this layout does not know: {', '.join(unknown[:3])}"
                              f"{' …' if len(unknown) > 3 else ''} (is it the right --layout?)")
    return out


def fold_biases(conv: Converter, state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> None:
    """BN(conv(x) + b) = BN'(conv(x)) with running_mean' = running_mean − b (on the first len(b) channels)."""
    folds = [(re.compile(pattern), repl) for pattern, repl in conv.folds]
    for key in [k for k in state if k not in own]:
        target = next((rx.sub(repl, key) for rx, repl in folds if rx.fullmatch(key)), None)
        if target is None:
            continue
        bias, mean = state.pop(key), state[f"{target}.running_mean"].clone()
        mean[: bias.numel()] -= bias
        state[f"{target}.running_mean"] = mean


def convert_state(conv: Converter, official: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                  source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Official tensors → a state dict that loads into ``own``'s model with nothing missing or left over."""
    for check in conv.checks:
        check(official)
    state = rename(conv, official, source)
    fold_biases(conv, state, own)
    if conv.fix is not None:
        conv.fix(state)
    for key, dim in conv.class_dims.items():  # drop trailing (void) outputs the dataset does not score
        if key in state and key in own and state[key].shape[dim] > own[key].shape[dim]:
            state[key] = state[key].narrow(dim, 0, own[key].shape[dim])
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:  # older PyTorch did not save them
            state[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or extra or shapes:
        what = (f"missing {missing[:3]}" if missing else f"left over {extra[:3]}" if extra
                else f"shape mismatch {'; '.join(shapes[:2])}")
        raise CheckpointError(f"{source}: converted weights do not fit the model ({what})")
    return {k: state[k].detach().clone().to(own[k].dtype) for k in own}


def bilinear_check(*keys: str) -> Callable[[dict[str, torch.Tensor]], None]:
    """The official file's fixed upsamplers we drop must be the bilinear filter we build ourselves."""
    from semseg.models._blocks import bilinear_kernel

    def check(official: dict[str, torch.Tensor]) -> None:
        for key in keys:
            weight = official.get(key)
            if weight is None:
                continue
            k = weight.shape[-1]
            if weight.shape[1] == 1:  # grouped (DRN): one filter per class
                expected = bilinear_kernel(1, 1, k).expand_as(weight)
            else:
                expected = bilinear_kernel(weight.shape[0], weight.shape[1], k)
            if not torch.allclose(weight.float(), expected, atol=1e-6):
                raise CheckpointError(f"{key}: not the fixed bilinear upsampler our model builds; cannot convert")

    return check


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OFFICIAL", "Converter", "bilinear_check", "convert_state", "unwrap"]
