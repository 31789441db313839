"""Catalog stage: reads a source of photos; writes the catalog, rejects, duplicates, thumbnails."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipelines import artifacts, commands
from pipelines.config import Config
from pipelines.data.corrections import apply_corrections, corrections_hash
from pipelines.data.download import resolve_source
from pipelines.data.images import (
    BBox,
    ImageError,
    load_image,
    printable,
    read_image_file,
    thumbnail,
)
from pipelines.data.sources import BBOX_COLUMNS, read_source
from pipelines.errors import LookalikeError
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
    """Hash, fully decode (catching truncation) and thumbnail one file; never raises.

    Only regular files up to `images.MAX_FILE_BYTES` are read (a row pointing at /dev/zero or
    a FIFO is rejected, not read), and any failure becomes the row's reject reason: one odd
    file must never stop the stage.
    """
    path = row["path"]
    if not isinstance(path, str) or not path.strip():
        return _Inspected(
            "", reason="empty path — fill in the row's 'path' (relative to the CSV) or delete it"
        )
    try:
        data = read_image_file(path)
        item_id = hashlib.sha256(data).hexdigest()[:ID_DIGITS]
        img = load_image(data, bbox=bbox_of(row), max_pixels=config.max_pixels)
        thumb = config.thumb_path(item_id)
        if not thumb.exists():
            with artifacts.atomic_path(thumb) as tmp:
                thumbnail(img, config.thumb_size).save(tmp, format="JPEG", quality=85)
    except ImageError as err:
        return _Inspected(path, reason=err.reason)
    except Exception as err:  # noqa: BLE001 - reported as the row's reason, never a crash
        return _Inspected(path, reason=f"unexpected error ({type(err).__name__}: {err})")
    return _Inspected(path, item_id, img.width, img.height, len(data))


def _prune_thumbs(config: Config, keep: set[str]) -> int:
    """Delete thumbnails no catalog row refers to, and temporaries of killed writes (only those
    whose writer is gone: another process may be writing thumbnails now); returns how many
    files were removed."""
    if not config.thumbs_dir.is_dir():
        return 0
    removed = len(artifacts.sweep_stale_temporaries(config.thumbs_dir))
    for path in config.thumbs_dir.iterdir():
        hidden = path.name.startswith(".")  # temporaries end in .jpg too: the sweep decides
        if path.is_file() and not hidden and path.suffix == ".jpg" and path.stem not in keep:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _catalog_ids(config: Config) -> set[str]:
    """item_ids of the catalog on disk (empty when there is none or it cannot be read)."""
    try:
        return set(pd.read_parquet(config.catalog_path, columns=["item_id"])["item_id"])
    except Exception:  # noqa: BLE001 - a missing or broken catalog keeps no thumbnails
        return set()


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


# What the catalog stage learnt about each file, keyed by where it is in the source and what
# any rewrite changes: an update of a 1M-photo folder must not re-read 1M files to find 40.
FILES_MEMO = "catalog_files.parquet"
_MEMO_COLUMNS = ["key", "item_id", "width", "height", "bytes", "reason"]


class FileMemo:
    """Files the catalog stage already inspected: (place in the source, size, mtime, crop) ->
    item_id, size in pixels and bytes, or the reason it was rejected.

    The place is the path relative to the source's folder, so a catalog folder moved or copied
    elsewhere (mv and cp -p keep modification times) is recognised without reading it again.
    """

    def __init__(self, config: Config, root: Path | None) -> None:
        self.config = config
        self.root = root
        self.path = config.artifacts_dir / FILES_MEMO
        self.entries: dict[str, _Inspected] = {}
        self.read = self.reused = 0
        if root is None:
            return
        with contextlib.suppress(Exception):  # a missing or broken memo only costs re-reading
            table = pd.read_parquet(self.path)
            for row in table.itertuples(index=False):
                self.entries[row.key] = _Inspected(
                    "",
                    None if pd.isna(row.item_id) else str(row.item_id),
                    int(row.width),
                    int(row.height),
                    int(row.bytes),
                    None if pd.isna(row.reason) else str(row.reason),
                )

    def key(self, row: dict[str, Any]) -> str | None:
        """The file's memo key, or None when it cannot be stat'ed (it is inspected instead)."""
        path = row.get("path")
        if self.root is None or not isinstance(path, str) or not path:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        place = os.path.relpath(path, self.root)
        return f"{place}\0{stat.st_size}\0{stat.st_mtime_ns}\0{bbox_of(row)}"

    def get(self, row: dict[str, Any]) -> _Inspected | None:
        """The remembered inspection of this row's file, if it is unchanged (and its thumbnail
        is still there)."""
        key = self.key(row)
        found = self.entries.get(key) if key is not None else None
        if found is None:
            return None
        if found.item_id is not None and not self.config.thumb_path(found.item_id).exists():
            return None
        return dataclasses.replace(found, path=row["path"])

    def put(self, row: dict[str, Any], found: _Inspected) -> None:
        key = self.key(row)
        if key is not None and not (found.reason or "").startswith("unexpected error"):
            self.entries[key] = found

    def save(self, keep: set[str]) -> None:
        """Write the memo of the files seen in this run (`keep`: their keys)."""
        rows = [
            (k, e.item_id, e.width, e.height, e.size, e.reason)
            for k, e in self.entries.items()
            if k in keep
        ]
        artifacts.write_parquet(pd.DataFrame(rows, columns=_MEMO_COLUMNS), self.path)


def content_hash(catalog: pd.DataFrame) -> str:
    """What later stages depend on: every column but the file's path, row by row in catalog
    order. The same photos read from another place give the same hash, so nothing downstream
    is redone; a new, removed, replaced or relabelled photo changes it."""
    content = catalog.drop(columns=["path"], errors="ignore")
    digest = hashlib.sha256(",".join(map(str, content.columns)).encode())
    digest.update(pd.util.hash_pandas_object(content, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def build_catalog(
    table: pd.DataFrame,
    config: Config,
    progress: bool = True,
    known: FileMemo | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Inspect every file of a source table.

    Returns (catalog, rejects, duplicates): the catalog has one row per usable, distinct image
    (sorted by path) with item_id, width, height, bytes and thumb added; rejects has path and
    reason; duplicates has path, item_id and the kept path.

    `known` holds what earlier runs learnt about files (`FileMemo`): a file whose place in the
    source, size, modification time and crop are unchanged is not read again, so an update of a
    large folder reads only its new and changed files.
    """
    records = table.to_dict("records")
    memo = known if known is not None else FileMemo(config, None)
    results: list[_Inspected | None] = [memo.get(r) for r in records]
    todo = [i for i, r in enumerate(results) if r is None]
    with ThreadPoolExecutor(WORKERS) as pool:
        inspected = list(
            tqdm(
                pool.map(lambda i: _inspect(records[i], config), todo),
                total=len(todo),
                desc="catalog",
                unit="img",
                disable=not progress or not todo,
            )
        )
    for i, found in zip(todo, inspected, strict=True):
        results[i] = found
        memo.put(records[i], found)
    memo.read, memo.reused = len(todo), len(records) - len(todo)
    good = [i for i, r in enumerate(results) if r.reason is None]
    rejects = pd.DataFrame(
        [{"path": r.path, "reason": r.reason} for r in results if r.reason is not None],
        columns=["path", "reason"],
    )
    catalog = table.iloc[good].copy()
    catalog.attrs = {}
    catalog.insert(0, "item_id", [results[i].item_id for i in good])
    catalog["width"] = [results[i].width for i in good]
    catalog["height"] = [results[i].height for i in good]
    catalog["bytes"] = [results[i].size for i in good]
    thumbs = [config.thumb_path(i) for i in catalog["item_id"]]
    catalog["thumb"] = [t.relative_to(config.artifacts_dir).as_posix() for t in thumbs]
    catalog = catalog.sort_values("path", kind="stable").reset_index(drop=True)
    # Of files with the same bytes, keep a labelled one (the first by path); an unlabelled
    # copy must not erase a label, and a conflict between labels is written down.
    unlabelled = catalog["label"].isna().to_numpy()
    order = catalog.assign(_unlabelled=unlabelled).sort_values(
        ["_unlabelled", "path"], kind="stable"
    )
    repeated = order.duplicated("item_id", keep="first").reindex(catalog.index)
    kept = catalog.loc[~repeated].set_index("item_id")
    dupes = catalog.loc[repeated]
    kept_label = kept["label"].reindex(dupes["item_id"]).to_numpy()
    label = dupes["label"].to_numpy()
    conflict = np.array(
        [not (pd.isna(a) or pd.isna(b)) and a != b for a, b in zip(label, kept_label, strict=True)],
        dtype=bool,
    )
    duplicates = pd.DataFrame(
        {
            "path": dupes["path"].to_numpy(),
            "item_id": dupes["item_id"].to_numpy(),
            "kept_path": kept["path"].reindex(dupes["item_id"]).to_numpy(),
            "label": pd.array(label, dtype="string"),
            "kept_label": pd.array(kept_label, dtype="string"),
            "label_conflict": conflict,
        }
    )
    catalog = catalog.loc[~repeated].reset_index(drop=True)
    return catalog, rejects, duplicates


def run_catalog(
    config: Config, force: bool = False, progress: bool = True, prune: bool = True
) -> StageResult:
    """The catalog stage. Skips itself when the source, the corrections and the settings are
    unchanged.

    Writes catalog.parquet (with the active corrections applied: `corrections.apply_corrections`),
    rejects.parquet, duplicates.parquet and the thumbnails; the result's details hold the counts
    of rows, rejects, duplicates and corrections. With `prune=False` the thumbnails of removed
    items stay until `prune_thumbnails` (run_all calls it once every stage is written, so an app
    still showing the previous build keeps its photos meanwhile).
    """
    start = time.perf_counter()
    source = resolve_source(config)
    table, side_files, fmt = read_source(source, config.source_format)
    warnings = list(table.attrs.pop("warnings", []))
    params = {
        "source": str(source),
        "format": fmt,
        "max_pixels": config.max_pixels,
        "thumb_size": config.thumb_size,
    }
    inputs = {"source": _fingerprint(table, side_files), "corrections": corrections_hash(config)}
    if not force and artifacts.is_fresh(config.catalog_path, STAGE, params, inputs):
        manifest = artifacts.read_manifest(config.catalog_path) or {}
        catalog = pd.read_parquet(config.catalog_path, columns=["item_id"])
        if all(config.thumb_path(i).exists() for i in catalog["item_id"]):
            if prune:
                _prune_thumbs(config, set(catalog["item_id"]))
            seconds = time.perf_counter() - start
            print(
                f"catalog: up to date ({manifest.get('rows')} rows from {source}); "
                f"nothing to do ({seconds:.1f} s). Use --force to rebuild."
            )
            return StageResult(STAGE, rows=manifest.get("rows"), seconds=seconds, skipped=True)

    for warning in warnings:
        print(f"  warning: {warning}")
    root = source if source.is_dir() else source.parent
    memo = FileMemo(config, None if force else root)
    try:
        built, rejects, duplicates = build_catalog(table, config, progress=progress, known=memo)
        catalog, corrected = apply_corrections(built, config)
        if built.empty:
            first = rejects.iloc[0] if len(rejects) else None
            raise LookalikeError(
                f"none of the {len(table)} files under {printable(str(source))} is a usable "
                f"image (first: {printable(str(first['path'])) if first is not None else ''}: "
                f"{first['reason'] if first is not None else 'none'}) — check the path"
            )
        artifacts.write_parquet(rejects, config.rejects_path)
        artifacts.write_parquet(duplicates, config.duplicates_path)
        artifacts.write_parquet(catalog, config.catalog_path)
        memo.root = root
        memo.save({k for r in table.to_dict("records") if (k := memo.key(r)) is not None})
    except BaseException:
        # Thumbnails made for a catalog that was never written are orphans: keep only those
        # of the catalog on disk (a kill leaves them for the next run to prune).
        _prune_thumbs(config, _catalog_ids(config))
        raise
    seconds = time.perf_counter() - start
    summary = {
        "rows": len(catalog),
        "rejects": len(rejects),
        "duplicates": len(duplicates),
        "files_read": memo.read,
        "files_known": memo.reused,
        "relabelled": corrected["relabelled"],
        "dropped": corrected["dropped"],
        "seconds": round(seconds, 2),
    }
    artifacts.write_manifest(
        config.catalog_path,
        STAGE,
        params,
        inputs,
        extra={
            **summary,
            "content": content_hash(catalog),
            "labels": catalog["label"].value_counts().to_dict(),
            "splits": catalog["split"].value_counts().to_dict(),
            "warnings": warnings,
            "rejected": rejects.to_dict("records"),
            "duplicate_files": duplicates.to_dict("records"),
        },
    )
    if prune:
        _prune_thumbs(config, set(catalog["item_id"]))
    _print_summary(catalog, rejects, duplicates, seconds)
    _print_corrections(corrected)
    if memo.reused:
        print(f"  {memo.read} new or changed files read, {memo.reused} known files not re-read")
    return StageResult(
        STAGE,
        wrote=(config.catalog_path, config.rejects_path, config.duplicates_path),
        rows=len(catalog),
        seconds=seconds,
        note=f"{len(rejects)} rejected, {len(duplicates)} duplicates",
        details=summary,
    )


def prune_thumbnails(config: Config) -> int:
    """Delete the thumbnails of items no longer in the catalog on disk (and stale temporaries);
    returns how many files were removed."""
    return _prune_thumbs(config, _catalog_ids(config))


def _print_corrections(summary: dict[str, Any]) -> None:
    """One line when corrections changed the catalog, one when some name photos no longer there."""
    if summary["relabelled"] or summary["dropped"]:
        print(
            f"  corrections: {summary['relabelled']} relabelled, {summary['dropped']} dropped "
            f"(`{commands.CORRECTIONS}` lists them)"
        )
    if summary["unknown_items"]:
        print(
            f"  {summary['unknown_items']} correction(s) name items no longer in the source; "
            "they apply again if the photo comes back"
        )


def _print_summary(
    catalog: pd.DataFrame, rejects: pd.DataFrame, duplicates: pd.DataFrame, seconds: float
) -> None:
    for row in rejects.itertuples():
        print(f"  rejected {printable(str(row.path))}: {printable(str(row.reason))}")
    for row in duplicates.itertuples():
        conflict = (
            f"; its label {row.label!r} differs from the kept {row.kept_label!r}"
            if row.label_conflict
            else ""
        )
        print(
            f"  duplicate {printable(str(row.path))} (same bytes as "
            f"{printable(str(row.kept_path))}); kept once{printable(conflict)}"
        )
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
    """The catalog's content hash (`content_hash`: everything but the files' paths), the input
    key of every later stage; the file's sha256 for a catalog written before it was recorded."""
    file_sha = artifacts.artifact_hash(config.catalog_path, commands.CATALOG)
    manifest = artifacts.read_manifest(config.catalog_path) or {}
    return str(manifest.get("content") or file_sha)
