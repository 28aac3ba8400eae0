"""Typed, strict configuration: YAML recipe → frozen dataclasses.

Defaults live here, next to their meaning; a recipe file lists only what differs
(minGPT's ``get_default_config`` idea, typed like nanoGPT's ``GPTConfig``).
Unknown keys, wrong types and missing values are one-line :class:`ConfigError`
messages naming the file and dotted key, and ``--set a.b=value`` overrides are
applied *before* validation so they are checked the same way.

Values are checked here too, by the rules written next to each default: ``_num(8, ge=1)``
is a default of 8 that must be at least 1 (``gt``/``le``/``lt`` likewise; every float must be
finite), and a section's ``check`` method holds the rules that tie its fields together.
YAML, ``--set`` and the configs stored in checkpoints all pass through them, so a value that
would crash, or silently train on nonsense, stops the run before any work with one line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from semseg.errors import ConfigError
from semseg.registry import did_you_mean

_REQUIRED: Any = dataclasses.MISSING


def _num(default: Any, *, ge: Any = None, gt: Any = None, le: Any = None, lt: Any = None, why: str = "") -> Any:
    """A field whose number (or each number of its tuple) must satisfy the bounds; ``why`` ends the message."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"bounds": bounds, "why": why})


def _ordered(value: Optional[tuple[float, float]], key: str) -> None:
    if value is not None and value[0] > value[1]:
        raise ConfigError(f"{key}: expected [low, high] with low <= high, got {list(value)}")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    params: dict[str, Any] = field(default_factory=dict)  # builder kwargs; num_classes comes from the dataset


@dataclass(frozen=True)
class DataConfig:
    name: str
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = _num(8, ge=1)
    val_batch_size: int = _num(1, ge=1)
    num_workers: Union[int, Literal["auto"]] = _num("auto", ge=0, le=256)  # auto: the cores train.threads leaves free (semseg/threads.py)
    on_error: Literal["raise", "skip"] = "raise"
    params: dict[str, Any] = field(default_factory=dict)  # dataset-specific kwargs (e.g. synthetic size)


@dataclass(frozen=True)
class AugmentConfig:
    scale: tuple[float, float] = _num((1.0, 1.0), gt=0)  # [low, high] resize factors
    crop: Optional[tuple[int, int]] = _num(None, ge=1, le=16384)  # (H, W); None trains on whole images
    resized_crop: Optional[tuple[float, float]] = _num(None, gt=0, le=1)  # area share range; replaces scale + crop when set
    rotate: float = _num(0.0, ge=0, le=180)  # max degrees either way; uncovered mask pixels are ignored
    hflip: float = _num(0.0, ge=0, le=1, why=" (a probability)")
    jitter: float = _num(0.0, ge=0, le=1)  # brightness/contrast/saturation strength, 0 = off
    photometric: bool = False  # mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue)
    blur: float = _num(0.0, ge=0, le=1, why=" (a probability)")  # probability of a Gaussian blur
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet, what torchvision backbones expect
    std: tuple[float, float, float] = _num((0.229, 0.224, 0.225), gt=0, why=" (images are divided by it)")
    eval_size: Optional[tuple[int, int]] = _num(None, ge=1, le=16384)  # resize for validation; None = native size

    def check(self, key: str) -> None:
        _ordered(self.scale, f"{key}.scale")
        _ordered(self.resized_crop, f"{key}.resized_crop")
        if self.resized_crop is not None and self.crop is None:
            raise ConfigError(f"{key}.resized_crop: needs {key}.crop (the output size)")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    lr: float = _num(0.01, gt=0)
    momentum: float = _num(0.9, ge=0, lt=1)
    weight_decay: float = _num(1e-4, ge=0)
    nesterov: bool = False
    alpha: float = _num(0.99, ge=0, lt=1)  # RMSprop's running-average constant (Lasagne's rho; FC-DenseNet used 0.9)
    backbone_lr_mult: float = _num(1.0, ge=0)  # LR of the pretrained trunk (`backbone.*`/`encoder.*` parameters) × this
    backbone_weight_decay: Optional[float] = _num(None, ge=0)  # None: same as weight_decay

    def check(self, key: str) -> None:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ConfigError(f"{key}.nesterov: needs {key}.name=sgd with a momentum above 0 "
                              f"(got {self.name}, momentum {self.momentum})")  # fmt: skip


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["poly", "cosine", "step", "constant"] = "poly"
    power: float = _num(0.9, ge=0)  # poly exponent (ParseNet / DeepLab)
    warmup_iters: int = _num(0, ge=0)
    warmup_factor: float = _num(0.1, ge=0, le=1)  # LR multiplier at iteration 0 of the warmup
    step_size: int = _num(30, ge=1)  # epochs between decays, for "step"
    gamma: float = _num(0.1, gt=0, le=1, why=" (the LR is multiplied by it every step_size epochs)")


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: float = _num(1.0, ge=0)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    name: str = "cross_entropy"  # a single loss; `terms` replaces it with a weighted sum
    params: dict[str, Any] = field(default_factory=dict)
    terms: tuple[LossTerm, ...] = ()  # e.g. [{name: cross_entropy}, {name: lovasz, weight: 0.5}]
    class_weights: Literal["none", "enet", "median_freq"] = "none"
    aux_weight: float = _num(0.4, ge=0)  # PSPNet's auxiliary-loss weight


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _num(10, ge=1)
    val_every: int = _num(1, ge=1)  # epochs between validations (the last epoch always validates)
    seed: int = _num(0, ge=0, lt=2**32 - 1024, why=" (numpy's seed range, less one per process)")
    device: str = "auto"  # auto = cuda when available, else cpu
    threads: Optional[int] = _num(None, ge=1, le=4096)  # torch intra-op threads; None: the cores this process may use (semseg/threads.py)
    resume: Optional[str] = None
    init_from: Optional[str] = None  # a checkpoint whose weights (only) start this new run: fine-tuning stages
    deterministic: bool = False
    # auto: the fastest measured path for this device and model family, resolved once at start-up
    # (semseg/precision.py: bf16 on Ampere+ GPUs, fp16 + scaler below, bf16 on CPUs with native bf16
    # for the families where it measured faster, else fp32). fp16 adds a gradient scaler.
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: Union[bool, Literal["auto"]] = "auto"
    compile: bool = False  # torch.compile the model (train and eval)
    accumulate: int = _num(1, ge=1)  # micro-batches per optimiser step
    clip_grad: Optional[float] = _num(None, gt=0)  # max total gradient norm
    ema: float = _num(0.0, ge=0, lt=1)  # decay of an exponential moving average of the weights (0 = off); validated with it
    keep_last: int = _num(0, ge=0)  # also keep the N most recent end-of-epoch checkpoints (epoch_0012.pt, …) besides last/best
    sync_bn: bool = False  # SyncBatchNorm under torchrun (several processes)


@dataclass(frozen=True)
class InferConfig:
    """How validate.py / test.py (and validation during training) turn an image into class scores."""

    mode: Literal["whole", "slide"] = "whole"
    tile: tuple[int, int] = (512, 512)  # (H, W) window for mode=slide
    stride: Optional[tuple[int, int]] = None  # None: two thirds of the tile
    scales: tuple[float, ...] = (1.0,)  # multi-scale TTA: image scale factors, scores averaged
    flip: bool = False  # horizontal-flip TTA

    def check(self, key: str) -> None:
        """Also run by semseg.inference.check_infer on an InferConfig built in code."""
        if any(t < 1 for t in self.tile):
            raise ConfigError(f"{key}.tile: sizes must be at least 1, got {list(self.tile)}")
        if self.stride is not None:
            if any(s < 1 for s in self.stride):
                raise ConfigError(f"{key}.stride: steps must be at least 1, got {list(self.stride)}")
            if any(s > t for s, t in zip(self.stride, self.tile)):
                raise ConfigError(f"{key}.stride: {list(self.stride)} is larger than {key}.tile {list(self.tile)} "
                                  "and would leave pixels unseen")  # fmt: skip
        if not self.scales:
            raise ConfigError(f"{key}.scales: give at least one scale, e.g. [1.0]")
        if any(not (math.isfinite(s) and 0 < s <= 16) for s in self.scales):
            raise ConfigError(f"{key}.scales: scales must be positive numbers up to 16, got {list(self.scales)}")


@dataclass(frozen=True)
class LogConfig:
    run_dir: str = "runs"
    name: Optional[str] = None  # default: the config file's stem
    print_every: int = _num(20, ge=1)
    visdom: bool = True  # on when a server answers; training never waits for it
    visdom_server: str = "http://localhost"
    visdom_port: int = _num(8097, ge=1, le=65535)
    visdom_env: Optional[str] = None  # default: <run folder>_<start time>, unique per run, kept by a resume
    tensorboard: bool = False  # also write TensorBoard event files to <run>/tensorboard (pip install tensorboard)
    num_val_images: int = _num(4, ge=0)


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    data: DataConfig
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def check(self, key: str) -> None:
        """Rules across sections: what one batch of training needs."""
        aug = self.augment
        if aug.crop is None and aug.scale != (1.0, 1.0) and self.data.batch_size > 1:
            raise ConfigError(f"augment.scale: {list(aug.scale)} without augment.crop gives every image its own size, "
                              f"which cannot be batched (data.batch_size={self.data.batch_size}); set augment.crop "
                              "or data.batch_size=1")  # fmt: skip


# ----------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted (lists → tuples, int → float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:
            return "on" if value else "off"  # YAML 1.1 reads a bare `off` / `on` as a boolean: `--set train.amp=off`
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, args))}, got {value!r}{did_you_mean(str(value), [str(a) for a in args])}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads `1e-3` as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range (~1.8e308)
            raise ConfigError(f"{key}: expected a number, got an integer of {len(str(abs(value)))} digits") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {number}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config type {tp} of {key} is not supported")  # a bug in this file, not user input


def _check_bounds(value: Any, meta: Any, key: str) -> None:
    """The ``_num`` bounds of a field: on a number, or on each number of a tuple (strings such as auto pass)."""
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            _check_bounds(v, meta, f"{key}[{i}]")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for name, limit in meta.get("bounds", {}).items():
        ok = {"ge": value >= limit, "gt": value > limit, "le": value <= limit, "lt": value < limit}[name]
        if not ok:
            raise ConfigError(f"{key}: expected {_BOUND_WORDS[name]} {_number(limit)}{meta.get('why', '')}, got {_number(value)}")


_BOUND_WORDS = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}


def _number(value: float) -> str:
    """``0.5``, ``-0.001``, ``4294966272``: a number as a user would write it (ints never as floats)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def check_values(obj: Any, prefix: str) -> None:
    """The value rules of one built section: each field's ``_num`` bounds, then the section's ``check``.

    Public for sections built in code (``InferConfig(tile=(0, 8))``), which skip :func:`_build`.
    """
    for f in dataclasses.fields(obj):
        if f.metadata:
            _check_bounds(getattr(obj, f.name), f.metadata, f"{prefix}.{f.name}" if prefix else f.name)
    if hasattr(obj, "check"):
        obj.check(prefix)


def _printable(key: Any) -> str:
    """A user's key for a message: line breaks and other control characters escaped, so it stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(key))


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from mapping ``data``; keys are checked strictly."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{prefix}.{_printable(key)}" if prefix else _printable(key)
            raise ConfigError(f"unknown key '{where}'{did_you_mean(str(key), names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
        elif f.default is _REQUIRED and f.default_factory is _REQUIRED:
            raise ConfigError(f"missing required value '{key}'")
    obj = cls(**kwargs)
    check_values(obj, prefix)
    return obj


# ----------------------------------------------------------------------------- loading


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file or a syntax error is one ConfigError line naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:  # a PNG, a checkpoint, any binary file given as --config
        raise ConfigError(f"{path}: not a YAML text file (it holds binary data); --config takes a recipe .yml") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({(exc.strerror or type(exc).__name__).lower()})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line} YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, …) at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML) onto a nested dict copy."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value, e.g. train.epochs=5")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: value is not valid YAML") from None
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict (e.g. from a checkpoint) into a :class:`Config`."""
    try:
        return _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a recipe file, apply ``--set`` overrides, validate, return a frozen Config."""
    data = read_yaml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "--set"
    if overrides:
        data = apply_overrides(data, overrides)
    return config_from_dict(data, source)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-data form (tuples → lists) for YAML files and checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
