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

import numpy as np

from pipelines.artifacts import atomic_path, is_fresh, write_manifest
from pipelines.config import Config, embeddings_key
from pipelines.readers import read_catalog, read_embeddings
from pipelines.search import approximate
from pipelines.stage import StageResult, per_extractor, written

STAGE = approximate.SAVED_STAGE


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
        index = approximate.AnnIndex.build(vectors, seed=config.seed)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **index.to_arrays())
        write_manifest(path, STAGE, approximate.saved_params(), inputs, extra={"rows": index.size})
        print(f"ann {name}: {index.size} items, built in {index.build_seconds:.1f}s -> {path}")
        results[name] = {
            "path": str(path),
            "skipped": False,
            "build_seconds": round(index.build_seconds, 1),
        }
    wrote = written(results, ("path",))
    return per_extractor(STAGE, results, len(catalog), time.perf_counter() - began, wrote, "")
