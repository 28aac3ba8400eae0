"""Draw a run's curves from its ``metrics.jsonl``: ``python -m semseg.replay runs/<name>``.

For a finished run, a run trained with visdom off, or a visdom server that lost its
environments: every curve the live view shows (loss, learning rate, val mIoU and
pixel accuracy, per-class IoU) is redrawn into the run's own environment (the name in
its ``config.yml``). ``--tensorboard`` writes the same points as TensorBoard event
files instead, into ``<run>/tensorboard`` (refused if that folder exists). The sample
images are not in the file: they appear in a live run only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from semseg.cli import run_script
from semseg.config import read_yaml
from semseg.errors import DataError
from semseg.runlog import read_metrics
from semseg.sinks import LiveLog


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder written by train.py (runs/<name>)")
    parser.add_argument("--env", help="visdom environment (default: the run's own, from its config.yml)")
    parser.add_argument("--server", help="visdom server (default: the run's log.visdom_server)")
    parser.add_argument("--port", type=int, help="visdom port (default: the run's log.visdom_port)")
    parser.add_argument("--tensorboard", action="store_true", help="write TensorBoard event files instead of drawing in visdom")
    return parser.parse_args(argv)


def replay(args: argparse.Namespace) -> int:
    records = read_metrics(args.run)  # one line naming what is wrong with the folder
    cfg: dict[str, Any] = read_yaml(args.run / "config.yml")
    log, peak_lr = cfg.get("log") or {}, (cfg.get("optim") or {}).get("lr")
    if args.tensorboard:
        from semseg.sinks.tensorboard import TensorBoardSink

        out = args.run / "tensorboard"
        if out.exists():
            raise DataError(f"{out}: exists (the run's own event files?); move it away to rebuild it from metrics.jsonl")
        live = LiveLog([TensorBoardSink(out)], peak_lr)
        for record in records:
            live.record(record)
        live.close()
        print(f"wrote {len(records)} records as TensorBoard events to {out}")
        return 0
    from semseg.sinks.visdom import VisdomSink, server_reachable

    server, port = args.server or log.get("visdom_server", "http://localhost"), args.port or log.get("visdom_port", 8097)
    env = args.env or log.get("visdom_env") or args.run.name
    if not server_reachable(server, port):
        raise DataError(f"visdom server not reachable at {server}:{port} (start one: python -m semseg.visdom_server -port {port})")
    sink = VisdomSink(server, port, env, args.run / "metrics.jsonl", peak_lr)
    sink.close(timeout=60.0)  # connecting redraws every curve from the file, then the sink stops
    if not sink.connected:
        raise DataError(f"visdom at {server}:{port} did not accept the curves (see the warning above)")
    print(f"replayed {args.run} ({len(records)} records) into {sink.url}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_script(replay, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
