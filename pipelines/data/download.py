"""Finds the default catalog (clothing-small) in place, or downloads and verifies it for users."""

from __future__ import annotations

import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from pipelines import artifacts
from pipelines.config import DEFAULT_SOURCE, Config
from pipelines.data.sources import is_image_name
from pipelines.errors import LookalikeError

# clothing-small at a fixed commit (CC0); the public archive named in its README.md.
DEFAULT_URL = (
    "https://github.com/alexeygrigorev/clothing-dataset-small/archive/"
    "11961516512414bf9f6c150a832cfd21b54a6b54.zip"
)
# What a complete copy holds: images per class, as its README.md lists them.
DEFAULT_COUNTS = {
    "t-shirt": 928,
    "longsleeve": 576,
    "pants": 559,
    "shirt": 345,
    "shoes": 297,
    "dress": 288,
    "shorts": 257,
    "outwear": 246,
    "hat": 149,
    "skirt": 136,
}
# A download's work folder, `.download-pid{pid}@{host}-{random}`: it holds the archive and,
# while it is checked, the whole unpacked catalog.
_WORK_DIR = re.compile(r"\.download-pid(?P<pid>[1-9][0-9]{0,9})@(?P<host>[A-Za-z0-9-]+)-.+")


def resolve_source(config: Config) -> Path:
    """The catalog to read: `config.source`, else the default catalog (found or downloaded)."""
    if config.source is not None:
        return Path(config.source)
    if DEFAULT_SOURCE.is_dir():
        return DEFAULT_SOURCE
    downloaded = config.artifacts_dir / "datasets" / "clothing-small"
    if downloaded.is_dir():
        return downloaded
    print(f"The default catalog is not at {DEFAULT_SOURCE}; downloading it from {DEFAULT_URL}")
    return download_catalog(DEFAULT_URL, downloaded, DEFAULT_COUNTS)


def count_labels(root: Path) -> Counter[str]:
    """Images per label folder under `root` (the folder just above each image)."""
    return Counter(p.parent.name for p in root.rglob("*") if p.is_file() and is_image_name(p))


def download_catalog(url: str, dest: Path, expected: dict[str, int]) -> Path:
    """Download a zip of a folder catalog, verify its per-label counts and unpack it at `dest`.

    Nothing appears at `dest` unless the archive is complete and verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in sweep_stale_downloads(dest.parent):
        print(f"removed {stale}, left by a download that was killed")
    prefix = f".download-{artifacts.owner_tag()}-"
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=prefix) as work:
        archive = Path(work) / "catalog.zip"
        _fetch(url, archive)
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(Path(work) / "unpacked")
        except zipfile.BadZipFile as err:
            raise LookalikeError(
                f"the download from {url} is not a valid zip ({err}); try again or pass --source"
            ) from err
        entries = list((Path(work) / "unpacked").iterdir())
        # GitHub archives wrap everything in one top folder named after the repo and commit.
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(work) / "unpacked"
        counts = count_labels(root)
        if dict(counts) != expected:
            raise LookalikeError(
                f"the download from {url} does not match the expected catalog "
                f"(expected {sum(expected.values())} images in {len(expected)} labels, got "
                f"{sum(counts.values())} in {len(counts)}); try again or pass --source"
            )
        shutil.move(str(root), str(dest))
    print(f"Verified {sum(expected.values())} images; saved to {dest}")
    return dest


def sweep_stale_downloads(folder: Path) -> list[Path]:
    """Remove the work folders in `folder` of downloads whose process is gone.

    A download killed by SIGKILL or a power cut never runs its clean-up, and its work folder
    can hold the whole unpacked catalog. A folder of a live download, of another host, or with
    any other name is left alone. Returns the folders removed.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _WORK_DIR.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            stat = entry.stat()
        except OSError:
            continue
        if artifacts.owner_is_gone(int(match["pid"]), match["host"], stat):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _fetch(url: str, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                artifacts.atomic_path(target) as tmp,
                open(tmp, "wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar,
            ):
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise LookalikeError(
            f"could not download the default catalog from {url} ({err}); check the internet "
            f"connection, or pass --source PATH to use a local folder of photos"
        ) from err
