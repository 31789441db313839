"""Reads the stages' artifacts back for search, maps, clusters, the app and the service:
the catalog, embeddings and the index built from them. Writes nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines import commands
from pipelines.artifacts import artifact_hash, read_manifest
from pipelines.catalog import catalog_hash, load_catalog
from pipelines.config import EXTRACTORS, Config
from pipelines.errors import LookalikeError
from pipelines.index import Index


def read_catalog(config: Config) -> tuple[pd.DataFrame, str]:
    """The catalog table (item_id as str) and its content hash; a clear error when missing."""
    digest = catalog_hash(config)
    catalog = load_catalog(config)
    catalog["item_id"] = catalog["item_id"].astype(str)
    return catalog, digest


def read_embeddings(
    config: Config, extractor: str, n_rows: int | None = None
) -> tuple[np.ndarray, str]:
    """`extractor`'s (n, d) float32 embeddings and their content hash, without TensorFlow.

    Parameters
    ----------
    n_rows : the catalog's row count; a different number of rows is an error (stale file).
    """
    if extractor not in EXTRACTORS:
        raise LookalikeError(
            f"unknown extractor {extractor!r}; valid extractors: {', '.join(EXTRACTORS)}"
        )
    path = config.embeddings_path(extractor)
    digest = artifact_hash(path, commands.embed(extractor))
    vectors = np.load(path)
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
    return np.ascontiguousarray(vectors, dtype=np.float32), digest


def load_index(config: Config, extractor: str) -> Index:
    """Build the `extractor` index from the artifacts: embeddings, and clusters and predicted
    categories when they exist and match the catalog (otherwise the reason is kept and shown
    if that strategy is asked for)."""
    catalog, _ = read_catalog(config)
    item_ids = catalog["item_id"].to_numpy()
    vectors, vectors_hash = read_embeddings(config, extractor, n_rows=len(catalog))
    unavailable: dict[str, str] = {}

    clusters = centroids = None
    cluster_file, centroid_file = config.clusters_path(extractor), config.centroids_path(extractor)
    if not (cluster_file.exists() and centroid_file.exists()):
        unavailable["cluster"] = f"{cluster_file} is missing — run `{commands.CLUSTERS}`"
    else:
        table = pd.read_parquet(cluster_file)
        manifest = read_manifest(cluster_file) or {}
        made_from = manifest.get("inputs", {}).get(f"embeddings/{extractor}")
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
            f"{category_file} is missing — it comes from the custom CNN, which needs a labelled "
            f"catalog: run `{commands.CATEGORIES}`"
        )
    else:
        table = pd.read_parquet(category_file)
        if table["item_id"].astype(str).tolist() != item_ids.tolist():
            unavailable["category"] = (
                f"{category_file} does not match the catalog — rerun `{commands.CATEGORIES}`"
            )
        else:
            categories = table["predicted"].to_numpy(dtype=object)
            if "search" in table.columns:  # widened by the classify stage when unsure
                category_queries = table["search"].to_numpy(dtype=object)

    return Index(
        vectors,
        item_ids,
        name=extractor,
        clusters=clusters,
        centroids=centroids,
        categories=categories,
        unavailable=unavailable,
        category_queries=category_queries,
        cluster_width=config.cluster_search_width,
    )
