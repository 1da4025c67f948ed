"""Download the official ISIC 2018 Task 3 files: progress, resume, size and checksum checks, official layout."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# The ISIC challenge's public S3 bucket; LESION_ISIC2018_URL points elsewhere (a mirror, or a test server).
ISIC2018_URL = "https://isic-challenge-data.s3.amazonaws.com/2018/"
ISIC2018_FILES = (
    "ISIC2018_Task3_Training_Input.zip",
    "ISIC2018_Task3_Training_GroundTruth.zip",
    "ISIC2018_Task3_Training_LesionGroupings.csv",
    "ISIC2018_Task3_Validation_Input.zip",
    "ISIC2018_Task3_Validation_GroundTruth.zip",
    "ISIC2018_Task3_Test_Input.zip",
    "ISIC2018_Task3_Test_GroundTruth.zip",
)
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file that could not be fetched or did not verify; names the URL and the file."""


def fetch(url: str, dest: Path, md5: str | None = None, timeout: float = 60) -> Path:
    """Fetch `url` to `dest`, resuming `dest.part`; check the size, and the MD5 (given, or S3's plain ETag)."""
    with _open(urllib.request.Request(url, method="HEAD"), timeout) as head:
        size = int(head.headers.get("Content-Length", -1))
        etag = head.headers.get("ETag", "").strip('"')
    md5 = md5 or (etag if re.fullmatch(r"[0-9a-f]{32}", etag) else None)  # multipart ETags are not MD5s
    if dest.is_file() and dest.stat().st_size == size and (md5 is None or _md5(dest) == md5):
        return dest
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    if size >= 0 and start > size:
        part.unlink()
        start = 0
    if size < 0 or start < size:  # a complete .part (killed before its rename) is only verified: S3 answers
        _get(url, part, start, size, timeout)  # `Range: bytes=<size>-` with 416
    got = part.stat().st_size
    if size >= 0 and got != size:
        raise DownloadError(f"{url}: got {got} bytes of {size}; run again to resume from {part}")
    if md5 is not None and (digest := _md5(part)) != md5:
        part.unlink()
        raise DownloadError(f"{url}: MD5 {digest} does not match the expected {md5}; the partial file was removed")
    part.replace(dest)
    return dest


def _get(url: str, part: Path, start: int, size: int, timeout: float) -> None:
    """Append `url` from byte `start` to `part` (from 0 when the server ignores or refuses the range)."""
    try:
        response = _open(urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {}), timeout)
    except DownloadError as err:
        if not (start and isinstance(err.__cause__, urllib.error.HTTPError) and err.__cause__.code == 416):
            raise
        log.warning("%s: the server refused to resume %s at byte %d (416); fetching it again", url, part, start)
        start, response = 0, _open(urllib.request.Request(url), timeout)
    if start and response.status != 206:  # the server ignored the range: start again
        start = 0
    with (
        response,
        open(part, "ab" if start else "wb") as out,
        tqdm(total=size if size >= 0 else None, initial=start, unit="B", unit_scale=True, desc=part.name) as bar,
    ):
        while chunk := response.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def download_isic2018(root: str | Path, base_url: str | None = None) -> Path:
    """Fetch every official Task 3 file into root/downloads and unpack it into root's official layout."""
    root = Path(root)
    base_url = base_url or os.environ.get("LESION_ISIC2018_URL", ISIC2018_URL)
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    for name in ISIC2018_FILES:
        path = fetch(base_url.rstrip("/") + "/" + name, downloads / name)
        if name.endswith(".csv"):
            (root / name).write_bytes(path.read_bytes())
        elif not (root / Path(name).stem).is_dir():
            _unpack(path, root)
    log.info("ISIC 2018 Task 3 ready in %s", root)
    return root


def _unpack(archive: Path, root: Path) -> None:
    """Extract into a temporary dir beside the layout, then rename into place, the archive's own folder last: that
    folder exists only when the extraction finished, so an interrupted one is redone on the next run."""
    temp = root / f".extracting-{archive.stem}"
    shutil.rmtree(temp, ignore_errors=True)  # left by an interrupted run
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (temp / member).resolve()
            if not target.is_relative_to(temp.resolve()):
                raise DownloadError(f"{archive}: member {member} would unpack outside {root}")
        zf.extractall(temp)
    for entry in sorted(temp.iterdir(), key=lambda p: p.name == archive.stem):
        if (root / entry.name).exists():  # the archive is the source of its own members
            shutil.rmtree(root / entry.name) if (root / entry.name).is_dir() else (root / entry.name).unlink()
        entry.rename(root / entry.name)
    temp.rmdir()


def _open(request: urllib.request.Request, timeout: float):
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except OSError as err:
        raise DownloadError(f"could not fetch {request.full_url}: {err}") from err


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
