"""Typed, strict configuration: YAML recipe → frozen dataclasses.

Defaults live here, next to their meaning; a recipe file lists only what differs
(minGPT's ``get_default_config`` idea, typed like nanoGPT's ``GPTConfig``).
Unknown keys, wrong types and missing values are one-line :class:`ConfigError`
messages naming the file and dotted key, and ``--set a.b=value`` overrides are
applied *before* validation so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from semseg.errors import ConfigError
from semseg.registry import did_you_mean

_REQUIRED: Any = dataclasses.MISSING


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
    batch_size: int = 8
    val_batch_size: int = 1
    num_workers: Union[int, Literal["auto"]] = "auto"  # auto: the cores train.threads leaves free (semseg/threads.py)
    on_error: Literal["raise", "skip"] = "raise"
    params: dict[str, Any] = field(default_factory=dict)  # dataset-specific kwargs (e.g. synthetic size)


@dataclass(frozen=True)
class AugmentConfig:
    scale: tuple[float, float] = (1.0, 1.0)
    crop: Optional[tuple[int, int]] = None  # (H, W); None trains on whole images
    resized_crop: Optional[tuple[float, float]] = None  # area share range; replaces scale + crop when set
    rotate: float = 0.0  # max degrees either way; uncovered mask pixels are ignored
    hflip: float = 0.0  # probability
    jitter: float = 0.0  # brightness/contrast/saturation strength, 0 = off
    photometric: bool = False  # mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue)
    blur: float = 0.0  # probability of a Gaussian blur
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet, what torchvision backbones expect
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    eval_size: Optional[tuple[int, int]] = None  # resize for validation; None = native size


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    alpha: float = 0.99  # RMSprop's running-average constant (Lasagne's rho; FC-DenseNet used 0.9)
    backbone_lr_mult: float = 1.0  # LR of the pretrained trunk (`backbone.*`/`encoder.*` parameters) × this
    backbone_weight_decay: Optional[float] = None  # None: same as weight_decay


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["poly", "cosine", "step", "constant"] = "poly"
    power: float = 0.9  # poly exponent (ParseNet / DeepLab)
    warmup_iters: int = 0
    warmup_factor: float = 0.1  # LR multiplier at iteration 0 of the warmup
    step_size: int = 30  # epochs between decays, for "step"
    gamma: float = 0.1


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    name: str = "cross_entropy"  # a single loss; `terms` replaces it with a weighted sum
    params: dict[str, Any] = field(default_factory=dict)
    terms: tuple[LossTerm, ...] = ()  # e.g. [{name: cross_entropy}, {name: lovasz, weight: 0.5}]
    class_weights: Literal["none", "enet", "median_freq"] = "none"
    aux_weight: float = 0.4  # PSPNet's auxiliary-loss weight


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    val_every: int = 1
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    threads: Optional[int] = None  # torch intra-op threads; None: the cores this process may use (semseg/threads.py)
    resume: Optional[str] = None
    init_from: Optional[str] = None  # a checkpoint whose weights (only) start this new run: fine-tuning stages
    deterministic: bool = False
    # auto: the fastest measured path for this device and model family, resolved once at start-up
    # (semseg/precision.py: bf16 on Ampere+ GPUs, fp16 + scaler below, bf16 on CPUs with native bf16
    # for the families where it measured faster, else fp32). fp16 adds a gradient scaler.
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: Union[bool, Literal["auto"]] = "auto"
    compile: bool = False  # torch.compile the model (train and eval)
    accumulate: int = 1  # micro-batches per optimiser step
    clip_grad: Optional[float] = None  # max total gradient norm
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off); validated with it
    keep_last: int = 0  # also keep the N most recent end-of-epoch checkpoints (epoch_0012.pt, …) besides last/best
    sync_bn: bool = False  # SyncBatchNorm under torchrun (several processes)


@dataclass(frozen=True)
class InferConfig:
    """How validate.py / test.py (and validation during training) turn an image into class scores."""

    mode: Literal["whole", "slide"] = "whole"
    tile: tuple[int, int] = (512, 512)  # (H, W) window for mode=slide
    stride: Optional[tuple[int, int]] = None  # None: two thirds of the tile
    scales: tuple[float, ...] = (1.0,)  # multi-scale TTA: image scale factors, scores averaged
    flip: bool = False  # horizontal-flip TTA


@dataclass(frozen=True)
class LogConfig:
    run_dir: str = "runs"
    name: Optional[str] = None  # default: the config file's stem
    print_every: int = 20
    visdom: bool = True  # on when a server answers; training never waits for it
    visdom_server: str = "http://localhost"
    visdom_port: int = 8097
    visdom_env: Optional[str] = None  # default: <run folder>_<start time>, unique per run, kept by a resume
    tensorboard: bool = False  # also write TensorBoard event files to <run>/tensorboard (pip install tensorboard)
    num_val_images: int = 4


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
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range (~1.8e308)
            raise ConfigError(f"{key}: expected a number, got an integer of {len(str(abs(value)))} digits") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config type {tp} of {key} is not supported")  # a bug in this file, not user input


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
    return cls(**kwargs)


# ----------------------------------------------------------------------------- loading


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file or a syntax error is one ConfigError line naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
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
