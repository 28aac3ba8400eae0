"""Scripted download of dataset archives, checksum-verified, with one-line errors.

torchvision's ``download_and_extract_archive`` does the fetching, md5 check and
extraction (a well-kept implementation we would otherwise rewrite); this module
adds the dataset-side description (:class:`Resource`) and turns network, checksum
and archive failures into a :class:`DataError` that says what to do instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence
from urllib.error import URLError

from semseg.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    """One archive of a dataset: where it lives, its md5, and where it unpacks under the root."""

    url: str
    md5: Optional[str]  # None only where no stable checksum exists (say why next to the Resource)
    filename: Optional[str] = None  # default: the URL's last component
    extract_to: str = "."  # relative to the download root


def fetch(resources: Sequence[Resource], root: str | Path) -> Path:
    """Download, verify and extract every resource into ``root``; returns ``root``."""
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for res in resources:
        filename = res.filename or res.url.rstrip("/").rsplit("/", 1)[-1]
        archive = root / filename
        if archive.is_file() and res.md5 is not None and not check_integrity(str(archive), res.md5):
            raise DataError(f"{archive}: exists but its md5 is not {res.md5}; delete it and download again")
        if res.md5 is None:
            logger.warning("%s has no published checksum; it is not verified", filename)
        try:
            download_and_extract_archive(
                res.url, str(root), extract_root=str(root / res.extract_to), filename=filename, md5=res.md5
            )
        except (URLError, OSError) as exc:
            raise DataError(f"{res.url}: download failed ({exc}); fetch it by hand into {root}") from None
        except RuntimeError as exc:  # torchvision raises RuntimeError on a checksum mismatch
            raise DataError(f"{archive}: {str(exc).splitlines()[0]}") from None
    return root
