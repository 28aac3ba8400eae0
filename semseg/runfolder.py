"""What train.py may write where: a new run folder that a failed start-up leaves no trace of, and a
resumed checkpoint's folder whose files are never overwritten unless an earlier run of it wrote them.

A run that stops during setup (a bad mask while counting class pixels, a full disk writing
``config.yml``) used to leave ``runs/<name>/`` behind, and the next run became ``<name>-2``.
Resuming from ``best.pt`` or ``epoch_0010.pt`` overwrote a ``last.pt`` that was further on and cut
``metrics.jsonl`` back; resuming a ``.pt`` lying among other files wrote over them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from semseg.build import new_run_dir, next_run_dir
from semseg.checkpoint import load_checkpoint
from semseg.config import Config
from semseg.errors import CheckpointError

RUN_FILES = ("config.yml", "metrics.jsonl", "class_stats.json", "last.pt", "best.pt")  # what train.py writes


class NewRunFolder:
    """The run folder made for a new run, removed again (with what setup wrote in it) unless training started."""

    def __init__(self) -> None:
        self.path: Optional[Path] = None
        self.existed = False
        self.started = False

    def make(self, cfg: Config, config_path: Optional[str]) -> Path:
        """``new_run_dir`` (a missing or empty folder, so everything in it afterwards is this run's)."""
        self.existed = next_run_dir(cfg, config_path).is_dir()
        self.path = new_run_dir(cfg, config_path)
        return self.path

    def discard_unless_started(self) -> None:
        """After a failed setup: the folder goes, so the next run gets its name and number."""
        if self.path is None or self.started or not self.path.is_dir():
            return
        if not self.existed:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for child in self.path.iterdir():  # an empty folder that was there before: empty it again
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def check_resume_folder(checkpoint: str | Path, iteration: int) -> None:
    """Refuse a resume that would overwrite files no earlier run of this folder wrote, or a later ``last.pt``."""
    checkpoint = Path(checkpoint)
    folder, own = checkpoint.resolve().parent, checkpoint.resolve()
    if not ((folder / "config.yml").is_file() and (folder / "metrics.jsonl").is_file()):  # not a run folder
        clash = [name for name in RUN_FILES if (folder / name).exists() and (folder / name).resolve() != own]
        if clash:
            raise CheckpointError(
                f"{checkpoint}: resuming writes {', '.join(RUN_FILES)} beside it, but {folder} is not a run folder "
                f"and already holds {', '.join(clash)}; copy the checkpoint into an empty folder and resume there"
            )
        return
    last = folder / "last.pt"
    if last.is_file() and last.resolve() != own:
        later = (load_checkpoint(last).get("state") or {}).get("iteration", -1)
        if later > iteration:
            raise CheckpointError(
                f"{checkpoint}: {last} is further on (iteration {later} > {iteration}); resuming from here would "
                f"overwrite it and drop the metrics.jsonl records after iteration {iteration}; resume {last}, "
                "or copy this checkpoint into an empty folder to branch from it"
            )
