"""``python -m semseg.models``: every registered model with its parameters and GFLOPs.

Counted on the meta device (shapes only), so the whole table takes seconds and
no memory, even for the 100M+ parameter models.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from semseg.registry import MODELS
import semseg.models  # noqa: F401 - registers the models


def measure(name: str, num_classes: int, height: int, width: int) -> tuple[int, float]:
    """(parameters, GFLOPs of one forward pass at height×width; one multiply-add = 2 FLOPs)."""
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=num_classes).eval()
        x = torch.empty(1, 3, height, width)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return params, counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("names", nargs="*", help="models to show (default: all)")
    args = parser.parse_args()
    h, w = args.size
    print(f"{'model':<22} {'params (M)':>11} {f'GFLOPs @{h}x{w}':>16} {'paper params':>13}  output stride")
    for name in args.names or MODELS.names():
        params, gflops = measure(name, args.num_classes, h, w)
        meta = MODELS.meta(name)
        paper = f"{meta['paper_params'] / 1e6:.2f}M" if "paper_params" in meta else "-"
        print(f"{name:<22} {params / 1e6:11.2f} {gflops:16.1f} {paper:>13}  {meta.get('output_stride', '-')}")


if __name__ == "__main__":
    main()
