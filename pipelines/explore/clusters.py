"""Reads the catalog and embeddings; writes k-means clusters, centroids and summaries."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans, MiniBatchKMeans

from pipelines.artifacts import (
    is_fresh,
    read_manifest,
    write_manifest,
    write_npy,
    write_parquet,
)
from pipelines.config import Config, embeddings_key
from pipelines.readers import read_catalog, read_embeddings
from pipelines.search import approximate
from pipelines.stage import StageResult, note_of, per_extractor, written

STAGE = "clusters"
# k-means restarts: a few suffice on unit vectors and keep 2 cores busy for seconds, not minutes.
N_INIT = 3
# Rows per mini-batch above `Config.kmeans_full_max_items` (sklearn's default is 1024; larger
# batches steady the centroids of 2048-d vectors at little cost).
MINIBATCH_ROWS = 4096
SUMMARY_COLUMNS = ["cluster", "size", "n_labelled", "top_label", "purity", "composition"]


def summary_path(config: Config, extractor: str) -> Path:
    """The per-cluster summary table beside the assignments (its own manifest, so no dots)."""
    return config.clusters_path(extractor).with_name(f"{extractor}_summary.parquet")


def kmeans(
    vectors: np.ndarray,
    n_clusters: int,
    seed: int,
    *,
    full_max_items: int | None = None,
    sample: int = 100_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical-style k-means: sklearn k-means on unit rows, then cosine assignment.

    Parameters
    ----------
    vectors : (n, d) unit rows (float32 or float16, in memory or memory-mapped); on unit
        vectors Euclidean k-means approximates cosine k-means.
    n_clusters : wanted clusters, clipped to n.
    seed : fixes the initialisation, so the same inputs give the same clusters.
    full_max_items : up to this many rows (default: any number), full-batch `KMeans` with
        N_INIT restarts, as on the default catalog. Above it, `MiniBatchKMeans` on a random
        sample of `sample` rows: Lloyd's k-means reads every row every iteration, which at
        1M x 2048 is 8 GB a pass.
    sample : rows the mini-batch k-means learns from above `full_max_items`.

    Returns
    -------
    labels : (n,) int32 cluster of each row, each row assigned to its most similar unit
        centroid — the same rule the search applies to a new query, so a catalog item and a
        query identical to it land in the same cluster. Clusters are numbered by size,
        largest first.
    centroids : (c, d) float32 unit-length centroids, c = min(n_clusters, n).
    """
    n = len(vectors)
    if n == 0:
        raise ValueError("k-means needs at least one vector")
    clusters = max(1, min(int(n_clusters), n))
    if full_max_items is None or n <= full_max_items:
        data = np.asarray(vectors, dtype=np.float32)
        model = KMeans(n_clusters=clusters, n_init=N_INIT, random_state=seed).fit(data)
    else:
        data = _sample(vectors, sample, seed)
        model = MiniBatchKMeans(
            n_clusters=clusters,
            n_init=N_INIT,
            random_state=seed,
            batch_size=MINIBATCH_ROWS,
        ).fit(data)
    centroids = model.cluster_centers_.astype(np.float32)
    lengths = np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids /= np.where(lengths > 0, lengths, 1.0)
    labels = assign(vectors, centroids)
    # Largest cluster first makes the app's cluster list read naturally.
    order = np.argsort(-np.bincount(labels, minlength=clusters), kind="stable")
    rank = np.empty(clusters, dtype=np.int32)
    rank[order] = np.arange(clusters, dtype=np.int32)
    return rank[labels].astype(np.int32), np.ascontiguousarray(centroids[order])


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n,) index of each row's most similar centroid, computed in chunks of rows."""
    parts = [np.argmax(chunk @ centroids.T, axis=1) for chunk in approximate.iter_chunks(vectors)]
    return np.concatenate(parts).astype(np.int64)


def _sample(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` random rows of `vectors` (all when there are no more), float32."""
    n = len(vectors)
    if size >= n:
        return np.concatenate(list(approximate.iter_chunks(vectors)))
    rows = np.random.default_rng(seed).choice(n, size, replace=False)
    return approximate.take_rows(vectors, rows)


def cluster_summary(
    cluster_ids: np.ndarray, labels: Sequence[object] | np.ndarray | None = None
) -> pd.DataFrame:
    """One row per non-empty cluster: size and, where labels exist, how pure it is.

    Parameters
    ----------
    cluster_ids : (n,) int cluster of each item.
    labels : (n,) true label of each item (None/NA when unknown), or None for an unlabelled
        catalog.

    Returns
    -------
    DataFrame with columns cluster, size, n_labelled, top_label (most common label, None
    without labels), purity (top label's share of the labelled members, NaN without labels),
    composition (JSON object {label: count}, most common first; "{}" without labels).
    """
    cluster_ids = np.asarray(cluster_ids)
    frame = pd.DataFrame(
        {
            "cluster": cluster_ids.astype(np.int64),
            "label": pd.Series(
                [None] * len(cluster_ids) if labels is None else list(labels), dtype=object
            ),
        }
    )
    rows = []
    for cluster, members in frame.groupby("cluster", sort=True):
        counts = members["label"].dropna().astype(str).value_counts(sort=True)
        counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
        labelled = int(counts.sum())
        rows.append(
            {
                "cluster": int(cluster),
                "size": len(members),
                "n_labelled": labelled,
                "top_label": str(counts.index[0]) if labelled else None,
                "purity": float(counts.iloc[0] / labelled) if labelled else float("nan"),
                "composition": json.dumps({str(k): int(v) for k, v in counts.items()}),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def overall_purity(summary: pd.DataFrame) -> float | None:
    """Share of labelled items that carry their cluster's top label (None without labels)."""
    labelled = summary["n_labelled"].sum()
    if labelled == 0:
        return None
    return float((summary["purity"].fillna(0) * summary["n_labelled"]).sum() / labelled)


def run_clusters(
    config: Config, extractors: Sequence[str] | None = None, force: bool = False
) -> StageResult:
    """Stage: k-means per extractor.

    Writes, each with a manifest: `config.clusters_path(name)` (item_id, cluster int32, in
    catalog order), `clusters/<name>_summary.parquet` (see `cluster_summary`) and
    `clusters/<name>_centroids.npy` ((c, d) float32 unit rows, read by the search index).
    Skipped when parameters and inputs are unchanged, unless `force`.

    Returns
    -------
    StageResult; its details are {extractor: {"path", "summary_path", "centroids_path",
    "skipped", "n_clusters", "purity"}}.
    """
    began = time.perf_counter()
    # Default: every extractor this catalog has (the head only where it was trained).
    extractors = config.extractors_built() if extractors is None else extractors
    catalog, catalog_hash = read_catalog(config)
    labels = catalog["label"] if "label" in catalog.columns else None
    if labels is not None and labels.isna().all():
        labels = None
    item_ids = catalog["item_id"].to_numpy()
    results = {
        name: _cluster_one(config, name, item_ids, labels, catalog_hash, force)
        for name in dict.fromkeys(extractors)
    }
    wrote, note = written(results, _PATHS), note_of(results, "purity")
    seconds = time.perf_counter() - began
    return per_extractor(STAGE, results, len(item_ids), seconds, wrote, note)


_PATHS = ("path", "summary_path", "centroids_path")


def _cluster_one(
    config: Config,
    name: str,
    item_ids: np.ndarray,
    labels: pd.Series | None,
    catalog_hash: str,
    force: bool,
) -> dict[str, Any]:
    """k-means for one extractor (or a skip when fresh); its row of the stage's details."""
    start = time.perf_counter()
    vectors, vectors_hash = read_embeddings(config, name, n_rows=len(item_ids), map_large=True)
    n_clusters = min(config.n_clusters, len(vectors))
    params = {"n_clusters": n_clusters, "n_init": N_INIT, "seed": config.seed, "assign": "cosine"}
    if len(vectors) > config.kmeans_full_max_items:
        # Only large catalogs record these, so a small catalog's clusters stay fresh.
        params.update(method="minibatch", sample=config.kmeans_sample, batch=MINIBATCH_ROWS)
    inputs = {"catalog": catalog_hash, embeddings_key(name): vectors_hash}
    paths = dict(
        zip(
            _PATHS,
            (
                config.clusters_path(name),
                config.cluster_summary_path(name),
                config.centroids_path(name),
            ),
            strict=True,
        )
    )
    row = {**{key: str(p) for key, p in paths.items()}, "n_clusters": n_clusters}
    if not force and all(is_fresh(p, STAGE, params, inputs) for p in paths.values()):
        manifest = read_manifest(paths["path"]) or {}
        print(f"cluster {name}: up to date, skipped ({paths['path']})")
        return {**row, "skipped": True, "purity": manifest.get("purity")}

    cluster_ids, centroids = kmeans(
        vectors,
        n_clusters,
        config.seed,
        full_max_items=config.kmeans_full_max_items,
        sample=config.kmeans_sample,
    )
    summary = cluster_summary(cluster_ids, None if labels is None else labels.to_numpy())
    purity = overall_purity(summary)
    extra = {"n_clusters": n_clusters, "purity": purity, "rows": len(item_ids)}
    # Centroids and summary first: the assignments' manifest, written last, marks the set
    # as complete for readers that check it.
    write_npy(centroids, paths["centroids_path"])
    write_manifest(paths["centroids_path"], STAGE, params, inputs, extra)
    write_parquet(summary, paths["summary_path"])
    write_manifest(paths["summary_path"], STAGE, params, inputs, extra)
    write_parquet(pd.DataFrame({"item_id": item_ids, "cluster": cluster_ids}), paths["path"])
    write_manifest(paths["path"], STAGE, params, inputs, extra)
    seconds = time.perf_counter() - start
    purity_text = "n/a (no labels)" if purity is None else f"{purity:.3f}"
    print(
        f"cluster {name}: {n_clusters} clusters over {len(item_ids)} items, "
        f"purity {purity_text}, {seconds:.1f}s -> {paths['path']}"
    )
    return {**row, "skipped": False, "purity": purity}
