"""Reads embeddings; writes the approximate index of each large catalog's extractor
(ann/<extractor>.npz with a manifest); `readers.load_index` reads it back.

Building the index over 1M x 2048 vectors takes over a minute on 2 cores (PCA, k-means
training, adding every row); reading the saved one takes about a second. So from
`approximate.ANN_MIN_ITEMS` items it is saved once, keyed by the embeddings' sha256, and
`readers.load_index` attaches it; a missing or stale file only means the index is built in
memory on the first search, as below the threshold it always is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.artifacts import (
    atomic_path,
    is_fresh,
    matches_manifest,
    read_manifest,
    write_manifest,
)
from pipelines.config import Config, embeddings_key
from pipelines.data.item_ids import match_rows
from pipelines.readers import model_id, read_catalog, read_embeddings
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
    StageResult; its details are {extractor: {"path", "skipped", "build_seconds"}}.
    """
    began = time.perf_counter()
    catalog, _ = read_catalog(config)
    # Fixed-width text, so the saved file needs no pickle to be read back.
    item_ids = np.asarray(catalog["item_id"].astype(str).tolist(), dtype=str)
    extractors = config.extractors_built() if extractors is None else extractors
    results = {}
    for name in dict.fromkeys(extractors):
        path = config.ann_index_path(name)
        if len(catalog) < approximate.ANN_MIN_ITEMS:
            print(
                f"ann {name}: {len(catalog):,} items, below {approximate.ANN_MIN_ITEMS:,}: "
                f"searched exactly, nothing to build"
            )
            results[name] = {"path": str(path), "skipped": True, "build_seconds": None}
            continue
        vectors, digest = read_embeddings(config, name, n_rows=len(catalog), map_large=True)
        inputs = {embeddings_key(name): digest}
        if not force and is_fresh(path, STAGE, approximate.saved_params(), inputs):
            print(f"ann {name}: up to date, skipped ({path})")
            results[name] = {"path": str(path), "skipped": True, "build_seconds": None}
            continue
        model = model_id(config, name)
        trained = None if force else _trained_rows(path, model, len(catalog))
        if trained is None:
            index = approximate.AnnIndex.build(vectors, seed=config.seed)
            trained, how = index.size, "built"
        else:
            with np.load(path, allow_pickle=False) as saved:
                arrays = dict(saved)
            source = _previous_rows(arrays.pop(IDS_KEY, None), item_ids)
            index = approximate.AnnIndex.updated(arrays, vectors, source)
            if source is None:
                how = "refilled (trained parts kept)"
            else:
                added = int((source < 0).sum())
                removed = int(arrays["settings"][0]) - (len(source) - added)
                how = f"updated ({added} added, {removed} removed; trained parts kept)"
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **index.to_arrays(), **{IDS_KEY: item_ids})
        extra = {"rows": index.size, "model": model, "trained_rows": trained}
        write_manifest(path, STAGE, approximate.saved_params(), inputs, extra=extra)
        print(f"ann {name}: {index.size} items, {how} in {index.build_seconds:.1f}s -> {path}")
        results[name] = {
            "path": str(path),
            "skipped": False,
            "build_seconds": round(index.build_seconds, 1),
            "refilled": how != "built",
        }
    wrote = written(results, ("path",))
    return per_extractor(STAGE, results, len(catalog), time.perf_counter() - began, wrote, "")
