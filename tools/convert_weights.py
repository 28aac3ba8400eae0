"""Turn an author's released checkpoint into a semseg checkpoint that validate.py and test.py read.

    python tools/convert_weights.py --layout hszhao_pspnet --model pspnet50_deepstem --dataset ade20k \\
        --root data/ADEChallengeData2016 train_epoch_100.pth pspnet50_ade20k.pt
    python validate.py --checkpoint pspnet50_ade20k.pt

A release saved as several files (an encoder and a decoder) is given part by part,
PART=FILE for each part the layout names (--list shows them), in any order:

    python tools/convert_weights.py --layout csail_upernet --model upernet_resnet50_deepstem \\
        --dataset ade20k encoder=encoder_epoch_30.pth decoder=decoder_epoch_30.pth upernet50_ade20k.pt

Each file's keys are read under its part's name (``encoder.conv1.weight``), which is
what that layout's rules match; a part missing, repeated or unknown is a one-line error.

The layouts (``--list``) are the tables in ``semseg/official/``: one per official
repository, each naming the models it fits. The output holds our model's state dict
(nothing missing, nothing left over: any mismatch is a one-line error), the config
the weights need (model name and parameters such as BN epsilon or ``align_corners``,
the official input normalisation, the dataset) and the dataset's class list and
palette, so ``validate.py`` needs no other file. ``--set`` adds or changes config keys
(e.g. ``augment.eval_size=[473,473]``, ``infer.mode=slide``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/convert_weights.py` from anywhere

import torch  # noqa: E402

from semseg.build import build_model  # noqa: E402
from semseg.checkpoint import FORMAT_VERSION, save_atomic  # noqa: E402
from semseg.cli import run_script  # noqa: E402
from semseg.config import apply_overrides, config_from_dict, config_to_dict  # noqa: E402
from semseg.errors import CheckpointError, ConfigError  # noqa: E402
from semseg.loaders import dataset_class  # noqa: E402
from semseg.official import OFFICIAL, convert_state, unwrap  # noqa: E402


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="%(prog)s --layout L --model M --dataset D [options] "
                                           "(SOURCE | PART=FILE ...) OUT\n       %(prog)s --list")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="the official checkpoint file (PART=FILE for each part of a multi-file layout), "
                             "then the semseg checkpoint to write (.pt)")
    parser.add_argument("--layout", help="official layout (see --list)")
    parser.add_argument("--model", help="our model name, one of the layout's models")
    parser.add_argument("--dataset", help="dataset the weights were trained on (its class list is stored)")
    parser.add_argument("--root", default="", help="that dataset's root, stored as data.root")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config values")
    parser.add_argument("--list", action="store_true", help="list the layouts and the files they read")
    return parser.parse_args(argv)


def config_for(args: argparse.Namespace, meta_models: tuple[str, ...], conv: Any) -> dict[str, Any]:
    """The checkpoint's config: the layout's model parameters and normalisation, then --set."""
    if args.model not in meta_models:
        raise ConfigError(f"--model {args.model}: layout '{args.layout}' fits {', '.join(meta_models)}")
    data = {"model": {"name": args.model, "params": dict(conv.model_params)},
            "data": {"name": args.dataset, "root": args.root}}
    if conv.augment:
        data["augment"] = dict(conv.augment)
    cfg = config_from_dict(apply_overrides(data, args.set), "--set")
    return config_to_dict(cfg)


def _numpy_scalars() -> list[Any]:
    """Numpy scalars that training scripts store next to the weights (a best mIoU as ``np.float64``), under numpy 2's
    and numpy 1's names: the only globals ``weights_only`` loading allows beyond tensors and containers."""
    import numpy as np

    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar  # numpy 2 / numpy 1
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def read_official(path: str, reader: Optional[Callable[[str], dict[str, torch.Tensor]]] = None
                  ) -> dict[str, torch.Tensor]:
    """The file's tensors: with the layout's own ``reader`` (a Torch7 file), else ``torch.load``."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: official checkpoint not found")
    if reader is not None:
        return reader(path)
    try:
        with torch.serialization.safe_globals(_numpy_scalars()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable in any way: one line
        raise CheckpointError(f"{path}: cannot read ({type(exc).__name__}); is it a PyTorch file?") from None
    return unwrap(ckpt, path)


def read_sources(sources: list[str], layout: str, parts: tuple[str, ...],
                 reader: Optional[Callable[[str], dict[str, torch.Tensor]]] = None) -> tuple[dict[str, torch.Tensor], Any]:
    """The official tensors of one file, or of ``PART=FILE`` for every part (keys prefixed ``PART.``);
    and what the output records as their origin (the file, or {part: file})."""
    if not parts:
        if len(sources) != 1:
            raise ConfigError(f"layout '{layout}' reads one official file, got {len(sources)}: {' '.join(sources)}")
        return read_official(sources[0], reader), sources[0]
    wanted = " ".join(f"{p}=FILE" for p in parts)
    given: dict[str, str] = {}
    for source in sources:
        part, sep, path = source.partition("=")
        if not sep or part not in parts or not path:
            raise ConfigError(f"{source}: layout '{layout}' reads {wanted}")
        if part in given:
            raise ConfigError(f"{part}= given twice (layout '{layout}' reads {wanted})")
        given[part] = path
    missing = [p for p in parts if p not in given]
    if missing:
        raise ConfigError(f"no {'=, '.join(missing)}= file (layout '{layout}' reads {wanted})")
    state: dict[str, torch.Tensor] = {}
    for part in parts:
        state.update({f"{part}.{k}": v for k, v in read_official(given[part], reader).items()})
    return state, {p: given[p] for p in parts}


def convert(args: argparse.Namespace) -> int:
    if args.list:
        for name in OFFICIAL.names():
            meta = OFFICIAL.meta(name)
            parts = " + ".join(f"{p}=FILE" for p in meta.get("parts", ()))
            print(f"{name:24s} {', '.join(meta['models'])}{f'  (reads {parts})' if parts else ''}\n"
                  f"{'':24s} {meta['files']}")
        return 0
    if not (len(args.paths) >= 2 and args.layout and args.model and args.dataset):
        raise ConfigError("give SOURCE OUT --layout --model --dataset (or --list)")
    *sources, out = args.paths
    conv = OFFICIAL.get(args.layout)()
    layout_meta = OFFICIAL.meta(args.layout)
    cfg = config_for(args, tuple(layout_meta["models"]), conv)
    official, origin = read_sources(sources, args.layout, tuple(layout_meta.get("parts", ())), conv.reader)
    meta = dataset_class(args.dataset)
    model = build_model(config_from_dict(cfg).model, len(meta.CLASSES))
    state = convert_state(conv, official, model.state_dict(), " + ".join(sources))
    model.load_state_dict(state)  # strict: convert_state already guaranteed the fit
    save_atomic({"format_version": FORMAT_VERSION, "model": state, "config": cfg,
                 "classes": list(meta.CLASSES), "palette": [list(c) for c in meta.PALETTE],
                 "converted_from": {"file": origin, "layout": args.layout}}, out)
    print(f"{' + '.join(sources)} ({args.layout}) -> {out}: {args.model}, {len(state)} tensors, "
          f"{len(meta.CLASSES)} classes of {args.dataset}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(convert, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
