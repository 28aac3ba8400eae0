"""Loader throughput: images/s of the full CamVid training pipeline vs what ENet consumes.

    python bench/loader_throughput.py --root ../shared/data/CamVid [--workers 0 1 2] [--crop 360 480]

Measures (1) the DataLoader (PNG decode + joint augmentations + batching) with
N workers and (2) ENet's training step on the same cores, both in images/s, and
prints their ratio: the loader must feed the model several times faster than
it consumes, or the GPU/CPU waits on data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/loader_throughput.py` from anywhere

from semseg.augmentations import train_transforms  # noqa: E402
from semseg.config import AugmentConfig, DataConfig  # noqa: E402
from semseg.loaders import build_dataset  # noqa: E402
from semseg.models import build  # noqa: E402


def loader_rate(root: str, cfg: AugmentConfig, workers: int, batch: int, images: int) -> float:
    ds = build_dataset(DataConfig(name="camvid", root=root), "train", train_transforms(cfg, 255))
    loader = DataLoader(ds, batch, shuffle=True, num_workers=workers, drop_last=True)
    seen, start = 0, None
    for i, (x, _) in enumerate(loader):
        if i == 1:  # the first batch pays for worker start-up
            start, seen = time.perf_counter(), 0
        seen += x.shape[0]
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def model_rate(crop: tuple[int, int], batch: int, steps: int) -> float:
    model = build("enet", num_classes=11).train()
    opt = torch.optim.Adam(model.parameters(), 5e-4)
    x, y = torch.randn(batch, 3, *crop), torch.randint(0, 11, (batch, *crop))
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x)["out"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--crop", type=int, nargs=2, default=(360, 480))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=160)
    args = parser.parse_args()
    crop = tuple(args.crop)
    cfg = AugmentConfig(scale=(0.75, 1.5), crop=crop, hflip=0.5, rotate=5.0, photometric=True, blur=0.2)
    print(f"threads: {torch.get_num_threads()}, crop {crop[0]}×{crop[1]}, batch {args.batch}")
    enet = model_rate(crop, args.batch, steps=5)
    print(f"ENet training step: {enet:.1f} images/s")
    for workers in args.workers:
        rate = loader_rate(args.root, cfg, workers, args.batch, args.images)
        print(f"loader, {workers} worker(s): {rate:.1f} images/s = {rate / enet:.1f}× what ENet consumes")


if __name__ == "__main__":
    main()
