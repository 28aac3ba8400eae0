"""Open a run's visdom tab in headless Chromium and save what a user would see.

    python tools/visdom_screenshot.py --env enet_camvid_20261201-101500 --out doc/visdom_camvid.png
    python tools/visdom_screenshot.py --run runs/enet_camvid          # the env named in the run's config.yml

The check behind "the page works": the page is loaded from the server at ``/env/<env>``
(which selects the environment), given ``--wait-ms`` of virtual time to run its scripts
and draw, and saved as PNG. It fails with one line when Chromium is missing, the server
does not answer, or the screenshot shows no pane (an empty blue page is what visdom shows
when its JavaScript did not load).

Chromium comes from the system's packages (Debian: ``apt-get install chromium``); no
browser is downloaded. It runs with a fresh profile and no background networking, so
the only address it contacts is the visdom server's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/...` from anywhere

from semseg.cli import run_script  # noqa: E402
from semseg.config import read_yaml  # noqa: E402
from semseg.errors import DataError  # noqa: E402
from semseg.sinks.visdom import env_url  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip
PANE_SHARE = 0.05  # of the page that must be white panes, not visdom's blue background


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--env", help="visdom environment to open")
    which.add_argument("--run", type=Path, help="a run folder: open the environment its config.yml names")
    parser.add_argument("--server", default="http://localhost")
    parser.add_argument("--port", type=int, default=8097)
    parser.add_argument("--out", type=Path, default=Path("visdom.png"))
    parser.add_argument("--size", default="1600x1000", help="window WIDTHxHEIGHT in pixels")
    parser.add_argument("--wait-ms", type=int, default=15000, help="virtual time the page gets to load and draw")
    return parser.parse_args(argv)


def pane_share(png: Path) -> float:
    """Share of near-white pixels: the panes (visdom's background is blue, its top bar light grey)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return float((rgb.min(axis=2) >= 250).mean())


def screenshot(args: argparse.Namespace) -> int:
    env = args.env or read_yaml(args.run / "config.yml").get("log", {}).get("visdom_env")
    if not env:
        raise DataError(f"{args.run}/config.yml names no log.visdom_env (a run from before envs were named per run: pass --env)")
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        raise DataError("no Chromium found (Debian/Ubuntu: apt-get install chromium)")
    url = env_url(args.server, args.port, env)
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except OSError as exc:
        raise DataError(f"{url}: no answer ({exc}); start the server: python -m semseg.visdom_server -port {args.port}") from None
    width, height = args.size.lower().split("x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   f"--virtual-time-budget={args.wait_ms}", f"--screenshot={args.out.resolve()}", url]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120 + args.wait_ms / 1000)
    if done.returncode != 0 or not args.out.is_file():
        raise DataError(f"{Path(browser).name} failed (exit {done.returncode}): {(done.stderr.strip().splitlines() or [''])[-1]}")
    share = pane_share(args.out)
    if share < PANE_SHARE:
        raise DataError(f"{args.out}: the page shows no window ({100 * share:.1f} % of it is panes); is '{env}' the run's env?")
    print(f"{url} → {args.out} ({100 * share:.0f} % of the page is panes)")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(screenshot, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
