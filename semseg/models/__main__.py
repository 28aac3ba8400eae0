"""``python -m semseg.models``: every registered model with its parameters and GFLOPs.

Counted on the meta device (shapes only), so the whole table takes seconds and
no memory, even for the 100M+ parameter models. ``--markdown`` prints the README's
model table (between ``<!-- models-table -->`` markers; a test keeps it current).
"""

from __future__ import annotations

import argparse
import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from semseg.precision import family
from semseg.registry import MODELS
import semseg.models  # noqa: F401 - registers the models


@functools.lru_cache(maxsize=None)  # pure; shared by the README and results tables
def measure(name: str, num_classes: int, height: int, width: int) -> tuple[int, float]:
    """(parameters, GFLOPs of one forward pass at height×width; one multiply-add = 2 FLOPs)."""
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=num_classes).eval()
        x = torch.empty(1, 3, height, width)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return params, counter.get_total_flops() / 1e9


def stride(meta: dict) -> str:
    if "output_stride" not in meta:
        return "–"
    evaluated = meta.get("eval_output_stride")
    return f"{meta['output_stride']}" + (f" (eval {evaluated})" if evaluated else "")


def markdown(names: list[str], num_classes: int = 11, size: tuple[int, int] = (360, 480)) -> str:
    """The README's model table: ours counted here, the paper's figure as registered."""
    h, w = size
    lines = [f"| model | family | params (M, {num_classes} classes) | paper params (M, paper's classes) | GFLOPs @ {h}×{w} | output stride |",
             "|---|---|--:|--:|--:|--:|"]
    for name in names:
        params, gflops = measure(name, num_classes, h, w)
        meta = MODELS.meta(name)
        paper = f"{meta['paper_params'] / 1e6:.2f}" if "paper_params" in meta else "–"
        fam = family(name)
        lines.append(f"| `{name}` | [{fam}](doc/{fam}.md) | {params / 1e6:.2f} | {paper} | {gflops:.1f} | {stride(meta)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("names", nargs="*", help="models to show (default: all)")
    parser.add_argument("--markdown", action="store_true", help="the README's model table")
    args = parser.parse_args()
    h, w = args.size
    if args.markdown:
        print(markdown(args.names or MODELS.names(), args.num_classes, (h, w)))
        return
    print(f"{'model':<22} {'params (M)':>11} {f'GFLOPs @{h}x{w}':>16} {'paper params':>13}  output stride")
    for name in args.names or MODELS.names():
        params, gflops = measure(name, args.num_classes, h, w)
        meta = MODELS.meta(name)
        paper = f"{meta['paper_params'] / 1e6:.2f}M" if "paper_params" in meta else "-"
        print(f"{name:<22} {params / 1e6:11.2f} {gflops:16.1f} {paper:>13}  {meta.get('output_stride', '-')}")


if __name__ == "__main__":
    main()
