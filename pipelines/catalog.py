"""Catalog stage: reads a source of photos; writes the catalog, rejects, duplicates, thumbnails."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pipelines import artifacts, commands
from pipelines.config import Config
from pipelines.download import resolve_source
from pipelines.errors import LookalikeError
from pipelines.images import BBox, ImageError, load_image, thumbnail
from pipelines.sources import BBOX_COLUMNS, read_source
from pipelines.stage import StageResult

STAGE = "catalog"
# Hex digits of the content hash kept as item_id: 64 bits, collision-free at catalog scale.
ID_DIGITS = 16
# Decoding releases the GIL, so a few threads keep 2 cores busy while others wait on disk.
WORKERS = 4


@dataclass(frozen=True)
class _Inspected:
    path: str
    item_id: str | None = None
    width: int = 0
    height: int = 0
    size: int = 0
    reason: str | None = None


def bbox_of(row: pd.Series | dict[str, Any]) -> BBox | None:
    """The row's (x1, y1, x2, y2) crop, or None where the catalog has no box for it."""
    values = [row.get(c) for c in BBOX_COLUMNS]
    if any(v is None or pd.isna(v) for v in values):
        return None
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _inspect(row: dict[str, Any], config: Config) -> _Inspected:
    """Hash, fully decode (catching truncation) and thumbnail one file."""
    path = row["path"]
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return _Inspected(path, reason="file not found")
    except OSError as err:
        return _Inspected(path, reason=f"cannot read file ({err.strerror or err})")
    if not data:
        return _Inspected(path, reason="empty file (0 bytes)")
    item_id = hashlib.sha256(data).hexdigest()[:ID_DIGITS]
    try:
        img = load_image(data, bbox=bbox_of(row), max_pixels=config.max_pixels)
    except ImageError as err:
        return _Inspected(path, reason=err.reason)
    thumb = config.thumb_path(item_id)
    if not thumb.exists():
        with artifacts.atomic_path(thumb) as tmp:
            thumbnail(img, config.thumb_size).save(tmp, format="JPEG", quality=85)
    return _Inspected(path, item_id, img.width, img.height, len(data))


def _fingerprint(table: pd.DataFrame, side_files: list[Path]) -> str:
    """What the source is, cheaply: every file's path, size and mtime, and the side files' bytes."""
    digest = hashlib.sha256()
    for path in table["path"]:
        try:
            stat = Path(path).stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    for side in side_files:
        digest.update(artifacts.sha256_file(side).encode())
    return digest.hexdigest()


def build_catalog(
    table: pd.DataFrame, config: Config, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Inspect every file of a source table.

    Returns (catalog, rejects, duplicates): the catalog has one row per usable, distinct image
    (sorted by path) with item_id, width, height, bytes and thumb added; rejects has path and
    reason; duplicates has path, item_id and the kept path.
    """
    records = table.to_dict("records")
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(
            tqdm(
                pool.map(lambda r: _inspect(r, config), records),
                total=len(records),
                desc="catalog",
                unit="img",
                disable=not progress,
            )
        )
    good = [i for i, r in enumerate(results) if r.reason is None]
    rejects = pd.DataFrame(
        [{"path": r.path, "reason": r.reason} for r in results if r.reason is not None],
        columns=["path", "reason"],
    )
    catalog = table.iloc[good].copy()
    catalog.insert(0, "item_id", [results[i].item_id for i in good])
    catalog["width"] = [results[i].width for i in good]
    catalog["height"] = [results[i].height for i in good]
    catalog["bytes"] = [results[i].size for i in good]
    thumbs = [config.thumb_path(i) for i in catalog["item_id"]]
    catalog["thumb"] = [t.relative_to(config.artifacts_dir).as_posix() for t in thumbs]
    catalog = catalog.sort_values("path", kind="stable").reset_index(drop=True)
    repeated = catalog.duplicated("item_id", keep="first")
    kept = catalog.loc[~repeated].set_index("item_id")["path"]
    duplicates = pd.DataFrame(
        {
            "path": catalog.loc[repeated, "path"].to_numpy(),
            "item_id": catalog.loc[repeated, "item_id"].to_numpy(),
            "kept_path": kept.reindex(catalog.loc[repeated, "item_id"]).to_numpy(),
        }
    )
    catalog = catalog.loc[~repeated].reset_index(drop=True)
    return catalog, rejects, duplicates


def run_catalog(config: Config, force: bool = False, progress: bool = True) -> StageResult:
    """The catalog stage. Skips itself when the source and settings are unchanged.

    Writes catalog.parquet, rejects.parquet, duplicates.parquet and the thumbnails; the
    result's details hold the counts of rows, rejects and duplicates.
    """
    start = time.perf_counter()
    source = resolve_source(config)
    table, side_files, fmt = read_source(source, config.source_format)
    params = {
        "source": str(source),
        "format": fmt,
        "max_pixels": config.max_pixels,
        "thumb_size": config.thumb_size,
    }
    inputs = {"source": _fingerprint(table, side_files)}
    if not force and artifacts.is_fresh(config.catalog_path, STAGE, params, inputs):
        manifest = artifacts.read_manifest(config.catalog_path) or {}
        catalog = pd.read_parquet(config.catalog_path, columns=["item_id"])
        if all(config.thumb_path(i).exists() for i in catalog["item_id"]):
            seconds = time.perf_counter() - start
            print(
                f"catalog: up to date ({manifest.get('rows')} rows from {source}); "
                f"nothing to do ({seconds:.1f} s). Use --force to rebuild."
            )
            return StageResult(STAGE, rows=manifest.get("rows"), seconds=seconds, skipped=True)

    catalog, rejects, duplicates = build_catalog(table, config, progress=progress)
    if catalog.empty:
        raise LookalikeError(
            f"none of the {len(table)} files under {source} is a usable image "
            f"(first reason: {rejects['reason'].iloc[0] if len(rejects) else 'none'}) — "
            f"check the path"
        )
    artifacts.write_parquet(rejects, config.rejects_path)
    artifacts.write_parquet(duplicates, config.duplicates_path)
    artifacts.write_parquet(catalog, config.catalog_path)
    seconds = time.perf_counter() - start
    summary = {
        "rows": len(catalog),
        "rejects": len(rejects),
        "duplicates": len(duplicates),
        "seconds": round(seconds, 2),
    }
    artifacts.write_manifest(
        config.catalog_path,
        STAGE,
        params,
        inputs,
        extra={
            **summary,
            "labels": catalog["label"].value_counts().to_dict(),
            "splits": catalog["split"].value_counts().to_dict(),
            "rejected": rejects.to_dict("records"),
            "duplicate_files": duplicates.to_dict("records"),
        },
    )
    _print_summary(catalog, rejects, duplicates, seconds)
    return StageResult(
        STAGE,
        wrote=(config.catalog_path, config.rejects_path, config.duplicates_path),
        rows=len(catalog),
        seconds=seconds,
        note=f"{len(rejects)} rejected, {len(duplicates)} duplicates",
        details=summary,
    )


def _print_summary(
    catalog: pd.DataFrame, rejects: pd.DataFrame, duplicates: pd.DataFrame, seconds: float
) -> None:
    for row in rejects.itertuples():
        print(f"  rejected {row.path}: {row.reason}")
    for row in duplicates.itertuples():
        print(f"  duplicate {row.path} (same bytes as {row.kept_path}); kept once")
    labels = catalog["label"].nunique()
    print(
        f"catalog: {len(catalog)} rows, {labels} labels, {len(rejects)} rejected, "
        f"{len(duplicates)} duplicates, {seconds:.1f} s"
    )


def load_catalog(config: Config) -> pd.DataFrame:
    """The catalog table, or a clear error saying which command makes it."""
    if not config.catalog_path.exists():
        raise LookalikeError(f"{config.catalog_path} is missing — run `{commands.CATALOG}` first")
    return pd.read_parquet(config.catalog_path)


def catalog_hash(config: Config) -> str:
    """The catalog's content hash, the input key of every later stage."""
    return artifacts.artifact_hash(config.catalog_path, commands.CATALOG)
