"""A run's metrics log: read back by the tools that report on runs (``tools/plot_run.py``,
``tools/record_result.py``, ``tools/results_table.py``; one reader each, so all see the same records),
and trimmed by ``train.py`` when a resume redoes what was logged after its checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from semseg.errors import DataError, os_reason, writing

logger = logging.getLogger(__name__)


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


def trim_metrics_log(path: Path, iteration: int, revalidate: bool = False) -> int:
    """Drop the records logged after ``iteration`` (the checkpoint a resume starts from); returns how many.
    With ``revalidate`` (a checkpoint saved before its validation finished) the validation record at
    ``iteration`` goes too: the resume validates that epoch again.

    A run killed between a log write and its next checkpoint logged steps that the resume
    redoes; without this they would appear twice. Rewritten through a temporary file.
    """
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    def keep(record: dict[str, Any]) -> bool:
        at = record["iteration"]
        return at < iteration or (at == iteration and not (revalidate and record["type"] == "val"))

    kept = [line for line in lines if line.strip() and keep(json.loads(line))]
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        with writing(path):
            tmp.write_text("".join(kept))
            tmp.replace(path)
        logger.info("%s: dropped %d record(s) logged after iteration %d, which the resume redoes", path, len(lines) - len(kept), iteration)
    return len(lines) - len(kept)
