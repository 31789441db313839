"""Reads embeddings; writes the approximate index of each large catalog's extractor
(ann/<extractor>.npz and its faiss part ann/<extractor>_lists.faiss, each with a manifest);
`readers.load_index` reads them back, memory-mapping the faiss file.

Building the index over 1M x 2048 vectors takes over a minute on 2 cores (PCA, k-means
training, adding every row); reading the saved one takes about a second. So from
`approximate.ANN_MIN_ITEMS` items it is saved once, keyed by the embeddings' sha256, and
`readers.load_index` attaches it; a missing or stale file only means the index is built in
memory on the first search, as below the threshold it always is.

A catalog update does not rewrite the saved file. It writes a delta beside it
(ann/<extractor>_delta.npz: each current row's row in the saved file, -1 for a new one), and
the reader applies it (`AnnIndex.updated`: the gone rows removed, the kept ones renumbered,
the new ones projected and added; 0.1 s at 100k items for 1,000 new). Rewriting the file cost
~0.5 s per extractor at 100k items whatever changed (read, deserialise, serialise, write and
hash 53 MB): a third of a 1 % update. Once the rows changed since the saved file pass
DELTA_MAX_SHARE of it, the file is rewritten with the update applied and the delta dropped, so
a reader never applies more than that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts import (
    atomic_path,
    is_fresh,
    manifest_path,
    matches_manifest,
    read_manifest,
    write_manifest,
)
from pipelines.config import Config, embeddings_key
from pipelines.data.item_ids import match_rows
from pipelines.readers import (
    model_id,
    read_catalog,
    read_embeddings,
    saved_ann_delta,
    saved_ann_lists,
)
from pipelines.search import approximate
from pipelines.stage import StageResult, per_extractor, written

STAGE = approximate.SAVED_STAGE
# An update keeps the saved index's PCA and list centroids (removing the gone rows and adding
# only the new ones) while the catalog is within this share of the size it was trained at: the
# lists are 2 * sqrt(n), so 20 % more rows leave them 10 % too few, and an item's list is its
# nearest centroid's.
REFILL_MAX_CHANGE = 0.2
# The saved file's array of its rows' item ids, which tells an update what each row was.
IDS_KEY = "item_ids"
# An update leaves the saved file as it is and writes a delta while the rows added and removed
# since it was written are at most this share of its rows (each reader applies the delta:
# ~0.1 s per 1,000 rows at 100k items); past it, the file is rewritten with the update applied.
DELTA_MAX_SHARE = 0.05


def _trained_rows(path: Path, model: str, rows: int) -> int | None:
    """The row count the saved index was trained at, when an update may keep its trained parts
    (same settings and model, the catalog within REFILL_MAX_CHANGE of that count); else None."""
    manifest = read_manifest(path)
    if not manifest or manifest.get("params") != approximate.saved_params():
        return None
    trained = manifest.get("trained_rows")
    if manifest.get("model") != model or not trained or not matches_manifest(path, manifest):
        return None
    return int(trained) if abs(rows - trained) <= REFILL_MAX_CHANGE * trained else None


def _previous_rows(saved_ids: np.ndarray | None, item_ids: np.ndarray) -> np.ndarray | None:
    """Each item's row in the saved index (-1: new), from the ids saved beside it; None when
    the file has none (written before they were kept) or holds an id twice."""
    if saved_ids is None:
        return None
    try:
        return match_rows(saved_ids, item_ids)
    except ValueError:
        return None


def run_ann(
    config: Config, extractors: Sequence[str] | None = None, force: bool = False
) -> StageResult:
    """Stage: save the approximate index of each extractor whose catalog has at least
    `approximate.ANN_MIN_ITEMS` items (smaller catalogs are searched exactly; nothing is written).

    Returns
    -------
    StageResult; its details are {extractor: {"path", "skipped", "build_seconds", "delta"}}.
    """
    began = time.perf_counter()
    catalog, _ = read_catalog(config)
    # Fixed-width text, so the saved file needs no pickle to be read back.
    item_ids = np.asarray(catalog["item_id"].astype(str).tolist(), dtype=str)
    extractors = config.extractors_built() if extractors is None else extractors
    results = {}
    for name in dict.fromkeys(extractors):
        path, delta = config.ann_index_path(name), config.ann_delta_path(name)
        lists = config.ann_lists_path(name)
        if len(catalog) < approximate.ANN_MIN_ITEMS:
            print(
                f"ann {name}: {len(catalog):,} items, below {approximate.ANN_MIN_ITEMS:,}: "
                f"searched exactly, nothing to build"
            )
            results[name] = {"path": str(path), "skipped": True, "build_seconds": None}
            continue
        vectors, digest = read_embeddings(config, name, n_rows=len(catalog), map_large=True)
        inputs = {embeddings_key(name): digest}
        fresh = not force and is_fresh(path, STAGE, approximate.saved_params(), inputs)
        fresh = fresh and _has_lists(config, name, path)
        if fresh or (not force and saved_ann_delta(config, name, inputs) is not None):
            if fresh:
                _drop(delta)  # the saved file is current again: a delta is of no use
            kind = "" if fresh else f" (with the update delta {delta.name})"
            print(f"ann {name}: up to date{kind}, skipped ({path})")
            results[name] = {"path": str(path), "skipped": True, "build_seconds": None}
            continue
        model = model_id(config, name)
        trained = None if force else _trained_rows(path, model, len(catalog))
        if trained is not None and not _has_lists(config, name, path):
            trained = None
        source = None if trained is None else _previous_rows(_saved_ids(path), item_ids)
        if source is not None:
            added, removed = _difference(source, path)
            if added + removed <= DELTA_MAX_SHARE * (len(source) - added + removed):
                changed = (added, removed)
                results[name] = _write_delta(path, delta, source, changed, inputs, model, trained)
                continue
        if trained is None:
            index = approximate.AnnIndex.build(vectors, seed=config.seed)
            trained, how = index.size, "built"
        else:
            with np.load(path, allow_pickle=False) as saved:
                lists_file = saved_ann_lists(config, name)
                index = approximate.AnnIndex.updated(dict(saved), vectors, source, lists_file)
            how = "refilled (trained parts kept)"
            if source is not None:
                how = f"rewritten ({added} added, {removed} removed; trained parts kept)"
        # The lists first: a kill before the index's manifest leaves a pair that does not
        # match (`saved_ann_lists`), which readers treat as no saved index.
        with atomic_path(lists) as tmp:
            index.write_lists(tmp)
        lists_sha = write_manifest(lists, STAGE, approximate.saved_params(), inputs)["sha256"]
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **index.to_arrays(with_lists=False), **{IDS_KEY: item_ids})
        extra = {
            "rows": index.size,
            "model": model,
            "trained_rows": trained,
            approximate.LISTS_SHA_KEY: lists_sha,
        }
        write_manifest(path, STAGE, approximate.saved_params(), inputs, extra=extra)
        _drop(delta)
        print(f"ann {name}: {index.size} items, {how} in {index.build_seconds:.1f}s -> {path}")
        results[name] = {
            "path": str(path),
            "skipped": False,
            "build_seconds": round(index.build_seconds, 1),
            "refilled": how != "built",
            "delta": False,
        }
    wrote = written(results, ("path",))
    return per_extractor(STAGE, results, len(catalog), time.perf_counter() - began, wrote, "")


def _has_lists(config: Config, extractor: str, path: Path) -> bool:
    """Whether the saved index at `path` can be read: its lists are inside it (written before
    they had a file of their own) or in the file beside it that it was written with."""
    if saved_ann_lists(config, extractor) is not None:
        return True
    with np.load(path, allow_pickle=False) as saved:
        return "faiss" in saved.files


def _saved_ids(path: Path) -> np.ndarray | None:
    """The saved file's rows' item ids, read alone (None when it has none)."""
    with np.load(path, allow_pickle=False) as saved:
        return saved[IDS_KEY] if IDS_KEY in saved.files else None


def _difference(source: np.ndarray, path: Path) -> tuple[int, int]:
    """(rows added, rows removed) since the saved file at `path` was written, from each
    current row's row in it (`source`)."""
    with np.load(path, allow_pickle=False) as saved:
        rows = int(saved["settings"][0])
    added = int((source < 0).sum())
    return added, rows - (len(source) - added)


def _write_delta(
    path: Path,
    delta: Path,
    source: np.ndarray,
    changed: tuple[int, int],
    inputs: dict[str, str],
    model: str,
    trained: int,
) -> dict[str, Any]:
    """Save `source` (each row's row in the saved file at `path`) as the update delta beside
    it, keyed by the embeddings' hash and the saved file's; the saved file is left as it is."""
    start = time.perf_counter()
    added, removed = changed
    with atomic_path(delta) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{approximate.DELTA_KEY: source.astype(np.int64)})
    base = read_manifest(path) or {}
    keyed = {**inputs, approximate.DELTA_BASE_INPUT: str(base.get("sha256"))}
    extra = {"rows": len(source), "model": model, "trained_rows": trained}
    write_manifest(delta, STAGE, approximate.saved_params(), keyed, extra=extra)
    seconds = time.perf_counter() - start
    print(
        f"ann {path.stem}: {len(source)} items, updated ({added} added, {removed} removed since "
        f"the saved index, which is kept; delta {delta.name}) in {seconds:.1f}s -> {delta}"
    )
    return {
        "path": str(delta),
        "skipped": False,
        "build_seconds": round(seconds, 1),
        "refilled": True,
        "delta": True,
    }


def _drop(path: Path) -> None:
    """Remove an artifact, its manifest first (a kill between leaves a file without one:
    stale, never read)."""
    manifest_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
