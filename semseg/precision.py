"""The numeric path for this hardware: autocast dtype and memory format, resolved once at start-up.

``train.amp: auto`` and ``train.channels_last: auto`` (the defaults) become a concrete setting
here, once, in train.py, validate.py and test.py alike, and the scripts log it in one line
(DESIGN.md §15, "speed is a default, not a flag"):

- CUDA: bf16 autocast where the GPU supports it (Ampere and newer), else fp16 with a gradient
  scaler; channels_last with either (the tensor-core convolutions of cuDNN are NHWC).
- CPU with native bf16 (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo): bf16 autocast +
  channels_last for the model families whose file records ``CPU_BF16_SPEEDUP`` ≥ FAST_ENOUGH, where
  ``bench/models.py`` measured the fast path faster than fp32/NCHW on this project's machines; fp32 for the others.
- Anything else: fp32, NCHW.

Only the forward runs under autocast: the weights stay fp32 (autocast casts per op), and the
loss, its softmax and the confusion matrix take float32 scores (``Stepper.backward``,
``semseg.inference``, ``semseg.metrics``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from semseg.config import Config
from semseg.registry import MODELS

logger = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")

# Each model family's file (semseg/models/<family>.py) holds its own measured train-step speed-up of
# bf16 autocast + channels_last over fp32/NCHW, ``CPU_BF16_SPEEDUP``, so a new family touches one file.
# The ratios come interleaved from one run (same weights, same input) of
#   python bench/models.py --models enet erfnet linknet fcn8s fcdensenet56 drn_d_22 --sizes 240x320 --batch 2 \
#       --threads 2 --repeat 3 --warmup 1 --fast-path-only
# on this project's 2-core AMD EPYC (avx512_bf16, no AMX), torch 2.14 (doc/benchmarks.md), one model per family.
# A family takes the fast path when it measured at least FAST_ENOUGH; None (or no constant) = not measured
# yet, so it stays fp32 until someone measures it.
FAST_ENOUGH = 1.10
SPEEDUP_ATTRIBUTE = "CPU_BF16_SPEEDUP"


def cpu_speedup(model_name: str) -> Optional[float]:
    """The family's measured CPU fast-path ratio (``CPU_BF16_SPEEDUP`` in its file), or None."""
    module = sys.modules[MODELS.get(model_name).__module__]
    return getattr(module, SPEEDUP_ATTRIBUTE, None)


@dataclass(frozen=True)
class Precision:
    """A concrete path: ``amp`` is ``"off"``, ``"bf16"`` or ``"fp16"``; ``why`` says how it was chosen."""

    amp: str
    channels_last: bool
    why: str

    def describe(self) -> str:
        parts = ["fp32" if self.amp == "off" else f"{self.amp} autocast (fp32 weights, loss and metrics)"]
        parts.append("channels_last" if self.channels_last else "NCHW")
        return f"numeric path: {' + '.join(parts)} ({self.why})"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX-BF16); without it bf16 is emulated and slower."""
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def family(model_name: str) -> str:
    """The model's family: the module it is registered in (``fcn8s`` → ``fcn``)."""
    return MODELS.get(model_name).__module__.rsplit(".", 1)[-1]


def _auto(device: torch.device, model_name: str) -> tuple[str, bool, str]:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", True, f"{torch.cuda.get_device_name(device)} supports bf16"
        return "fp16", True, f"{torch.cuda.get_device_name(device)} has no bf16: fp16 with a gradient scaler"
    if device.type != "cpu":
        return "off", False, f"no measured fast path on {device.type}"
    if not cpu_has_bf16():
        return "off", False, "this CPU has no native bf16 (avx512_bf16 / amx_bf16)"
    fam = family(model_name)
    speedup = cpu_speedup(model_name)
    if speedup is None:
        return "off", False, f"no CPU bf16 measurement for the {fam} family yet"
    if speedup < FAST_ENOUGH:
        return "off", False, f"CPU bf16 + channels_last measured {speedup:.2f}x for {fam}, not faster"
    return "bf16", True, f"CPU with native bf16; {fam} measured {speedup:.2f}x faster"


def resolve_precision(amp: str, channels_last: Union[bool, str], device: torch.device, model_name: str) -> Precision:
    """The concrete path for the config's ``train.amp`` / ``train.channels_last`` on ``device``."""
    if amp != "auto" and channels_last != "auto":
        return Precision(amp, bool(channels_last), "as configured")
    auto_amp, auto_cl, why = _auto(device, model_name)
    resolved_amp = auto_amp if amp == "auto" else amp
    resolved_cl = auto_cl if channels_last == "auto" else bool(channels_last)
    if amp != "auto" or channels_last != "auto":
        why = f"auto part: {why}"
    return Precision(resolved_amp, resolved_cl, why)


def with_precision(cfg: Config, precision: Precision) -> Config:
    """``cfg`` with ``train.amp`` / ``train.channels_last`` set to the resolved path (what the run then records)."""
    train = dataclasses.replace(cfg.train, amp=precision.amp, channels_last=precision.channels_last)
    return dataclasses.replace(cfg, train=train)


def ready_for_inference(model: nn.Module, cfg: Config, device: torch.device) -> tuple[nn.Module, Precision]:
    """validate.py's, test.py's and tools' one way to run a restored model: the path resolved as train.py
    resolves it, logged in one line, and the model moved to ``device`` in that path's memory format."""
    precision = resolve_precision(cfg.train.amp, cfg.train.channels_last, device, cfg.model.name)
    logger.info("%s", precision.describe())
    memory_format = torch.channels_last if precision.channels_last else torch.preserve_format
    return model.to(device, memory_format=memory_format), precision
