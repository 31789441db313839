"""The catalog decoded once: reads catalog photos; writes cache/pixels_<size>.npy (uint8).

Row i of the cache is catalog row i through `images.load_array` at one size (cropped to its
bbox), the exact model input of every path. The train stage fills it while decoding for
training; the embed stage streams the custom CNN's batches from it (memory-mapped) instead
of decoding JPEGs again, which on 2 cores took a third of the CNN's embedding time.

A manifest (via pipelines.artifacts) keys it on the catalog's hash, the catalog rows' paths
and boxes, the size and `max_pixels`; any change makes it stale and it is never read.
Rows that failed to decode are zeros in the array and listed in the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import artifacts, commands
from pipelines.config import Config
from pipelines.data.sources import BBOX_COLUMNS
from pipelines.errors import LookalikeError

STAGE = "pixel_cache"
# Bumped when the cache's layout or the decoding it stores changes.
CACHE_VERSION = 2


@dataclass(frozen=True)
class PixelCache:
    """Decoded catalog pixels at one size.

    pixels : (n, size, size, 3) uint8, row i = catalog row i (a read-only memmap when read
        from disk); rows that failed to decode are zeros.
    ok : (n,) bool, which rows decoded.
    skipped : (path, reason) of each row that did not.
    path : the cache file, or None when it was not written (no catalog manifest).
    """

    pixels: np.ndarray
    ok: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    path: Path | None = None


def bytes_per_item(size: int) -> int:
    """Disk bytes one catalog item costs in the cache at `size` px (the .npy header aside)."""
    return size * size * 3


def _rows_digest(catalog: pd.DataFrame) -> str:
    """Hash of what decoding reads per row: its path and its crop box, in order."""
    boxes = [c for c in BBOX_COLUMNS if c in catalog.columns]
    table = catalog[["path", *boxes]].astype("string").fillna("")
    return artifacts.sha256_json(table.to_numpy().tolist())


def _key(config: Config, catalog: pd.DataFrame, size: int) -> tuple[dict, dict] | None:
    """(params, inputs) of the cache of `catalog` at `size`, or None without a catalog hash."""
    manifest = artifacts.read_manifest(config.catalog_path)
    if not manifest or not manifest.get("sha256"):
        return None
    params = {"size": int(size), "max_pixels": int(config.max_pixels), "version": CACHE_VERSION}
    inputs = {"catalog": str(manifest["sha256"]), "rows": _rows_digest(catalog)}
    return params, inputs


def open_cache(config: Config, catalog: pd.DataFrame, size: int) -> PixelCache | None:
    """The cache of `catalog` at `size`, memory-mapped, when one matches; else None."""
    key = _key(config, catalog, size)
    path = config.pixel_cache_path(size)
    manifest = artifacts.read_manifest(path)
    # Key and byte count, not artifacts.is_fresh's sha256: hashing gigabytes of pixels on every
    # read would cost more than decoding small batches saves. Decoding is deterministic, so
    # a file written for the same key holds the same bytes whatever happened to its manifest.
    if key is None or not manifest or not path.exists():
        return None
    if manifest.get("key") != artifacts.stage_key(STAGE, *key):
        return None
    if manifest.get("bytes") != path.stat().st_size:
        return None
    pixels = np.load(path, mmap_mode="r")
    if pixels.shape != (len(catalog), size, size, 3) or pixels.dtype != np.uint8:
        return None
    ok = np.ones(len(catalog), dtype=bool)
    ok[np.asarray(manifest.get("failed_rows", []), dtype=np.int64)] = False
    skipped = [(str(p), str(r)) for p, r in manifest.get("skipped", [])]
    return PixelCache(pixels, ok, skipped, path)


def build_cache(config: Config, catalog: pd.DataFrame, size: int) -> PixelCache:
    """Decode every catalog row at `size` (threads) and write the cache atomically.

    Returns the decoded pixels in memory. Without a catalog manifest (a table that is not
    `config.catalog_path`'s) nothing is written: there is no hash to key the cache on.
    """
    from pipelines.models.train_data import decode_catalog

    decoded, ok, skipped = decode_catalog(
        catalog, size, config.max_pixels, desc=f"decoding at {size}px"
    )
    pixels = decoded
    if not ok.all():  # keep row i = catalog row i: failed rows become zeros
        pixels = np.zeros((len(catalog), size, size, 3), np.uint8)
        pixels[ok] = decoded
    key = _key(config, catalog, size)
    if key is None:
        return PixelCache(pixels, ok, skipped, None)
    path = config.pixel_cache_path(size)
    artifacts.write_npy(pixels, path)
    extra = {"rows": len(catalog), "failed_rows": np.flatnonzero(~ok).tolist()}
    artifacts.write_manifest(path, STAGE, *key, extra={**extra, "skipped": skipped})
    return PixelCache(pixels, ok, skipped, path)


def catalog_pixels(config: Config, catalog: pd.DataFrame, size: int) -> PixelCache:
    """The catalog's pixels at `size`: from the cache when it matches, else decoded (and
    cached)."""
    return open_cache(config, catalog, size) or build_cache(config, catalog, size)


def stream(
    cache: PixelCache, rows: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row indices, (b, S, S, 3) uint8 copy) batches of `rows`, in order, from the cache.

    A row that failed to decode when the cache was built is a `LookalikeError`, as a photo
    that fails while streaming is.
    """
    rows = np.asarray(rows, dtype=np.int64)
    for lo in range(0, len(rows), batch_size):
        index = rows[lo : lo + batch_size]
        bad = index[~cache.ok[index]]
        if len(bad):
            failed = dict(zip(np.flatnonzero(~cache.ok).tolist(), cache.skipped, strict=False))
            path, reason = failed.get(int(bad[0]), ("?", "unreadable"))
            raise LookalikeError(
                f"{len(bad)} catalog file(s) could not be decoded (first: {path}: {reason}) "
                f"— run `{commands.CATALOG}` again, then embed"
            )
        contiguous = index[-1] - index[0] == len(index) - 1
        batch = cache.pixels[index[0] : index[-1] + 1] if contiguous else cache.pixels[index]
        yield index, np.array(batch)
