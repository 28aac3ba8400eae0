"""The download helper, offline: archives are served by a loopback HTTP server."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from semseg.errors import DataError
from semseg.loaders._download import Resource, fetch


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, str]:
    payload = tmp_path / "src" / "CamVid" / "train" / "a.png"
    payload.parent.mkdir(parents=True)
    payload.write_bytes(b"png bytes")
    path = tmp_path / "camvid.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tmp_path / "src" / "CamVid", arcname="CamVid")
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_fetch_verifies_and_extracts(archive: tuple[Path, str], serve: str, tmp_path: Path) -> None:
    path, md5 = archive
    root = fetch([Resource(f"{serve}/{path.name}", md5)], tmp_path / "data")
    assert (root / "CamVid" / "train" / "a.png").read_bytes() == b"png bytes"


def test_wrong_checksum_is_a_one_line_error(archive: tuple[Path, str], serve: str, tmp_path: Path) -> None:
    path, _ = archive
    with pytest.raises(DataError, match="camvid.tar.gz") as err:
        fetch([Resource(f"{serve}/{path.name}", "0" * 32)], tmp_path / "data")
    assert "\n" not in str(err.value)


def test_unreachable_url_says_to_fetch_by_hand(serve: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere.tar.gz: download failed .*fetch it by hand into"):
        fetch([Resource(f"{serve}/nowhere.tar.gz", "0" * 32)], tmp_path / "data")
