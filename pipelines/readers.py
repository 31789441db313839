"""Reads the stages' artifacts back for search, maps, clusters, the app and the service:
the catalog, embeddings and the index built from them. Writes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import commands
from pipelines.artifacts import (
    artifact_hash,
    is_fresh,
    matches_manifest,
    read_manifest,
    sha256_json,
)
from pipelines.config import EXTRACTORS, Config, embeddings_key
from pipelines.data.catalog import catalog_hash, load_catalog
from pipelines.errors import LookalikeError
from pipelines.search import approximate
from pipelines.search.index import Index


def read_catalog(config: Config) -> tuple[pd.DataFrame, str]:
    """The catalog table (item_id as str) and its content hash; a clear error when missing."""
    digest = catalog_hash(config)
    catalog = load_catalog(config)
    catalog["item_id"] = catalog["item_id"].astype(str)
    return catalog, digest


def read_embeddings(
    config: Config, extractor: str, n_rows: int | None = None, map_large: bool = False
) -> tuple[np.ndarray, str]:
    """`extractor`'s (n, d) float32 embeddings and their content hash, without TensorFlow.

    Parameters
    ----------
    n_rows : the catalog's row count; a different number of rows is an error (stale file).
    map_large : from `approximate.ANN_MIN_ITEMS` rows, return the file memory-mapped read-only
        (`np.load(mmap_mode="r")`) instead of loading it: 1M x 2048 float32 is 8 GB. Only
        for callers that read it in chunks or by row (maps, clusters, the search index).
    """
    if extractor not in EXTRACTORS:
        raise LookalikeError(
            f"unknown extractor {extractor!r}; valid extractors: {', '.join(EXTRACTORS)}"
        )
    path = config.embeddings_path(extractor)
    digest = artifact_hash(path, commands.embed(extractor))
    vectors = np.load(path, mmap_mode="r")
    if vectors.ndim != 2:
        raise LookalikeError(
            f"{path} should be an (n, d) matrix, got shape {vectors.shape} — "
            f"rebuild it with `{commands.embed(extractor, force=True)}`"
        )
    if n_rows is not None and len(vectors) != n_rows:
        raise LookalikeError(
            f"{path} has {len(vectors)} rows but the catalog has {n_rows} — "
            f"rerun `{commands.embed(extractor)}`"
        )
    if map_large and len(vectors) >= approximate.ANN_MIN_ITEMS and vectors.dtype == np.float32:
        return vectors, digest
    return np.array(vectors, dtype=np.float32, order="C"), digest


def model_id(config: Config, extractor: str) -> str:
    """Which model made `extractor`'s embeddings: a hash of the embed stage's settings and the
    model's weights id from the embeddings' manifest. It changes when the model is retrained or
    its settings change, never when catalog rows are added or removed, so trained parts built
    on these vectors (the head, the classifier, maps, clusters) key on it."""
    path = config.embeddings_path(extractor)
    artifact_hash(path, commands.embed(extractor))  # present and matching its manifest
    manifest = read_manifest(path) or {}
    return sha256_json(
        {"params": manifest.get("params"), "weights": manifest.get("inputs", {}).get("weights")}
    )


def load_saved_ann(
    config: Config, extractor: str, vectors: np.ndarray, vectors_hash: str
) -> approximate.AnnIndex | None:
    """The saved approximate index of `extractor` (`pipelines.search.ann`), attached to
    `vectors`, when it was built from these embeddings (sha256 `vectors_hash`) with today's
    settings, or when an update's delta beside it brings it to these embeddings (applied here:
    `AnnIndex.updated`); else None (the index is then built in memory on first use)."""
    path = config.ann_index_path(extractor)
    inputs = {embeddings_key(extractor): vectors_hash}
    if is_fresh(path, approximate.SAVED_STAGE, approximate.saved_params(), inputs):
        source = None
    else:
        source = saved_ann_delta(config, extractor, inputs)
        if source is None:
            return None
    lists = saved_ann_lists(config, extractor)
    with np.load(path, allow_pickle=False) as arrays:
        if "faiss" not in arrays.files and lists is None:
            return None  # its lists file is missing or of another write: built in memory
        if source is None:
            return approximate.AnnIndex.from_arrays(arrays, vectors, lists)
        return approximate.AnnIndex.updated(arrays, vectors, source, lists)


def saved_ann_lists(config: Config, extractor: str) -> Path | None:
    """The faiss file of `extractor`'s saved approximate index (its quantiser and lists, saved
    beside it to be memory-mapped), when it is the one that index was written with: it matches
    its own manifest, whose sha256 the index's manifest recorded. Else None."""
    lists = config.ann_lists_path(extractor)
    saved = read_manifest(config.ann_index_path(extractor)) or {}
    expected = saved.get(approximate.LISTS_SHA_KEY)
    manifest = read_manifest(lists)
    if not expected or not manifest or manifest.get("sha256") != expected:
        return None
    return lists if matches_manifest(lists, manifest) else None


def saved_ann_delta(config: Config, extractor: str, inputs: Mapping[str, str]) -> np.ndarray | None:
    """Each catalog row's row in `extractor`'s saved approximate index (-1: added since), from
    the update delta beside it, when that delta was made for these `inputs` (the embeddings'
    hash) against the saved file as it is; else None."""
    path, delta = config.ann_index_path(extractor), config.ann_delta_path(extractor)
    base = read_manifest(path)
    if not base or not base.get("sha256") or not matches_manifest(path, base):
        return None
    keyed = {**inputs, approximate.DELTA_BASE_INPUT: str(base["sha256"])}
    if not is_fresh(delta, approximate.SAVED_STAGE, approximate.saved_params(), keyed):
        return None
    with np.load(delta, allow_pickle=False) as saved:
        return np.asarray(saved[approximate.DELTA_KEY], dtype=np.int64)


def load_index(config: Config, extractor: str) -> Index:
    """Build the `extractor` index from the artifacts: embeddings, and clusters and predicted
    categories when they exist and match the catalog (otherwise the reason is kept and shown
    if that strategy is asked for)."""
    catalog, _ = read_catalog(config)
    item_ids = catalog["item_id"].to_numpy()
    vectors, vectors_hash = read_embeddings(config, extractor, n_rows=len(catalog), map_large=True)
    unavailable: dict[str, str] = {}

    clusters = centroids = None
    cluster_file, centroid_file = config.clusters_path(extractor), config.centroids_path(extractor)
    if not (cluster_file.exists() and centroid_file.exists()):
        unavailable["cluster"] = f"{cluster_file} is missing — run `{commands.CLUSTERS}`"
    else:
        table = pd.read_parquet(cluster_file)
        manifest = read_manifest(cluster_file) or {}
        made_from = manifest.get("inputs", {}).get(embeddings_key(extractor))
        if table["item_id"].astype(str).tolist() != item_ids.tolist():
            unavailable["cluster"] = (
                f"{cluster_file} does not match the catalog — rerun `{commands.CLUSTERS}`"
            )
        elif made_from != vectors_hash:
            unavailable["cluster"] = (
                f"{cluster_file} was built from other embeddings — rerun `{commands.CLUSTERS}`"
            )
        else:
            clusters = table["cluster"].to_numpy(np.int64)
            centroids = np.load(centroid_file)

    categories = category_queries = None
    category_file = config.categories_path
    if not category_file.exists():
        unavailable["category"] = (
            f"{category_file} is missing — the classify stage writes it from the embedded "
            f"vectors of a labelled catalog: run `{commands.CLASSIFY}`"
        )
    else:
        table = pd.read_parquet(category_file)
        if table["item_id"].astype(str).tolist() != item_ids.tolist():
            unavailable["category"] = (
                f"{category_file} does not match the catalog — rerun `{commands.CLASSIFY}`"
            )
        else:
            categories = table["predicted"].to_numpy(dtype=object)
            if "search" in table.columns:  # widened by the classify stage when unsure
                category_queries = table["search"].to_numpy(dtype=object)

    saved = None
    if len(vectors) >= approximate.ANN_MIN_ITEMS:
        saved = load_saved_ann(config, extractor, vectors, vectors_hash)
    return Index(
        vectors,
        item_ids,
        name=extractor,
        ann_index=saved,
        clusters=clusters,
        centroids=centroids,
        categories=categories,
        unavailable=unavailable,
        category_queries=category_queries,
        cluster_width=config.cluster_search_width,
    )
