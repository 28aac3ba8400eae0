"""Reading a run's files back, for the tools that report on runs (``tools/plot_run.py``,
``tools/record_result.py``, ``tools/results_table.py``): one reader each, so all see the same records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semseg.errors import DataError, os_reason


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


def read_json(path: Path) -> Any:
    """The JSON document in ``path`` (a results or bench file), or a one-line :class:`DataError` naming it."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {os_reason(exc)}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: {exc}") from None  # e.g. "Expecting property name … line 1 column 2"
