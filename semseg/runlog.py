"""Reading a run folder's ``metrics.jsonl`` back, for the tools that report on a run
(``tools/plot_run.py``, ``tools/record_result.py``): one reader, so both see the same records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semseg.errors import DataError


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The records of ``<run>/metrics.jsonl``, one per (type, iteration), in iteration order.

    A run resumed after a crash logs the iterations after its checkpoint twice: the later
    record is the one the weights descend from, so it wins. A last line without its newline
    is a write in progress (training still running) and is left out.
    """
    if not run.exists():
        raise DataError(f"{run}: run folder not found")
    if not run.is_dir():
        raise DataError(f"{run}: not a folder; pass the run folder train.py wrote (e.g. runs/<name>)")
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found; is {run} a run folder written by train.py?")
    lines = path.read_text().split("\n")[:-1]  # drops the unterminated tail, if any
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[(record["type"], int(record["iteration"]))] = record
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{number}: not a metrics record (JSON with 'type' and 'iteration')") from None
    if not records:
        raise DataError(f"{path}: empty; no iteration has been logged yet")
    return sorted(records.values(), key=lambda r: r["iteration"])
