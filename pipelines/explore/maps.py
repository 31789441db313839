"""Reads the catalog and embeddings; writes one 2-D UMAP map per extractor (maps/<name>.parquet)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness

from pipelines.artifacts import is_fresh, read_manifest, write_manifest, write_parquet
from pipelines.config import EXTRACTORS, Config, embeddings_key
from pipelines.readers import read_catalog, read_embeddings
from pipelines.stage import StageResult, note_of, per_extractor, written

STAGE = "maps"
# Every other extractor's map is rotated onto this one so an item sits in a similar place on both.
REFERENCE = EXTRACTORS[0]
# Sample rows whose places decide where each other row of a large catalog's map goes.
PLACE_NEIGHBOURS = 15
# Trustworthiness needs two dense n x n distance matrices; a sample keeps it to ~100 MB.
TRUST_MAX_ITEMS = 2000


def compute_map(
    vectors: np.ndarray,
    *,
    pca_dims: int,
    n_neighbors: int,
    min_dist: float,
    seed: int,
    full_fit_max_items: int | None = None,
    fit_sample: int = 20_000,
) -> np.ndarray:
    """Project vectors to 2-D: PCA, then UMAP with the cosine metric.

    Parameters
    ----------
    vectors : (n, d) float array, one row per catalog item (unit length); may be
        memory-mapped (a large catalog's, read in chunks).
    pca_dims : PCA width before UMAP, clipped to min(pca_dims, d, n - 1). PCA makes UMAP's
        neighbour search fast on 2048-d vectors and removes noise dimensions.
    n_neighbors : UMAP neighbourhood size, clipped to n - 1 for tiny catalogs.
    min_dist : UMAP's minimum distance between points on the map.
    seed : fixes PCA and UMAP, so the same inputs give the same map (UMAP then runs on one
        thread).
    full_fit_max_items : up to this many rows (default: any number) PCA and UMAP are fitted
        on every row. Above it both are fitted on `fit_sample` random rows, and every other
        row is placed by its most similar sample rows, in chunks: a full fit at 1M rows
        would take hours on 2 cores (see `sampled_map`).
    fit_sample : rows the sampled fit learns from.

    Returns
    -------
    (n, 2) float32 coordinates, row i = vectors row i. Catalogs of fewer than 4 items cannot
    be laid out by UMAP; they get fixed positions on a line.
    """
    if not isinstance(vectors, np.ndarray):
        vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, d), got shape {vectors.shape}")
    n, d = vectors.shape
    if full_fit_max_items is not None and n > full_fit_max_items and fit_sample < n:
        return sampled_map(
            vectors,
            pca_dims=pca_dims,
            n_neighbors=n_neighbors,
            min_dist=min_dist,
            seed=seed,
            fit_sample=fit_sample,
        )
    vectors = np.asarray(vectors, dtype=np.float32)
    if n < 4:
        # UMAP's spectral layout needs a few points; this is a placeholder map, not an embedding.
        return np.column_stack([np.arange(n) - (n - 1) / 2, np.zeros(n)]).astype(np.float32)

    dims = min(pca_dims, d, n - 1)
    data = vectors
    if dims < d:
        data = PCA(n_components=dims, random_state=seed).fit_transform(vectors)
    with warnings.catch_warnings():
        # Tiny catalogs trigger "spectral initialisation failed, using random" style warnings.
        warnings.simplefilter("ignore", UserWarning)
        coords = _umap(n, n_neighbors, min_dist, seed).fit_transform(data)
    return np.asarray(coords, dtype=np.float32)


def sampled_map(
    vectors: np.ndarray,
    *,
    pca_dims: int,
    n_neighbors: int,
    min_dist: float,
    seed: int,
    fit_sample: int,
) -> np.ndarray:
    """A large catalog's map: PCA and UMAP fitted on `fit_sample` random rows, which keep
    their fitted places; every other row goes to the similarity-weighted mean place of its
    PLACE_NEIGHBOURS most similar sample rows (cosine, after the PCA).

    That mean is where `UMAP.transform` starts a new point; its optimisation epochs after it
    cost about 1.1 s per 1000 rows on this 2-core machine under load (18 min at 1M) and,
    on a 50k subset, raised trustworthiness@10 by 0.01 (0.926 against 0.916; a full fit
    scored 0.878). Same arguments and result as `compute_map`; `vectors` is read in chunks of
    `ann.CHUNK_ROWS` rows, so a memory-mapped 1M x 2048 matrix is never in memory whole.
    """
    from pipelines.search.approximate import _faiss, iter_chunks, take_rows

    n, d = vectors.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, fit_sample, replace=False))
    sample = take_rows(vectors, rows)
    dims = min(pca_dims, d, fit_sample - 1)
    pca = PCA(n_components=dims, random_state=seed).fit(sample) if dims < d else None

    def reduce(block: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(block if pca is None else pca.transform(block), np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    reduced = reduce(sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fitted = _umap(fit_sample, n_neighbors, min_dist, seed).fit_transform(reduced)
    fitted = np.asarray(fitted, dtype=np.float32)
    index = _faiss().IndexFlatIP(reduced.shape[1])
    index.add(reduced)
    coords = np.empty((n, 2), dtype=np.float32)
    start = 0
    for chunk in iter_chunks(vectors):
        sims, near = index.search(reduce(chunk), PLACE_NEIGHBOURS)
        # Sharpened weights: the nearest few decide, as UMAP's membership strengths do.
        weights = np.maximum(sims, 0.0) ** 4 + 1e-9
        place = np.einsum("mk,mkc->mc", weights, fitted[near]) / weights.sum(1, keepdims=True)
        coords[start : start + len(chunk)] = place
        start += len(chunk)
    coords[rows] = fitted
    return coords


def _umap(n: int, n_neighbors: int, min_dist: float, seed: int) -> Any:
    """The UMAP reducer of every map (cosine metric, fixed seed)."""
    # Imported here: umap pulls in numba (and tensorflow when installed) which costs seconds,
    # and only the map functions need it.
    import umap

    return umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(n_neighbors, n - 1)),
        min_dist=min_dist,
        metric="cosine",
        random_state=seed,
        # A fixed random_state forces one thread anyway; saying so silences UMAP's warning.
        n_jobs=1,
    )


def map_trustworthiness(
    vectors: np.ndarray,
    coords: np.ndarray,
    k: int = 10,
    *,
    max_items: int | None = TRUST_MAX_ITEMS,
    seed: int = 0,
) -> float:
    """How well the map keeps each item's k nearest neighbours (1.0 = all kept).

    Parameters
    ----------
    vectors : (n, d) original vectors; neighbours are measured with the cosine metric.
    coords : (n, 2) map coordinates, row-aligned with `vectors`.
    k : neighbourhood size, clipped below n / 2 (sklearn's limit).
    max_items : evaluate on a random sample of this many rows when n is larger (the score
        needs two n x n distance matrices); None uses every row.
    seed : picks the sample.

    Returns
    -------
    float in [0, 1]; NaN when n < 3 (no neighbourhood to judge).
    """
    coords = np.asarray(coords, dtype=np.float32)
    n = len(vectors)
    if max_items is not None and n > max_items:
        from pipelines.search.approximate import (
            take_rows,  # reads only the sampled rows of a mapped file
        )

        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))
        vectors, coords, n = take_rows(vectors, rows), coords[rows], max_items
    vectors = np.asarray(vectors, dtype=np.float32)
    k = min(k, (n - 1) // 2)
    if k < 1:
        return float("nan")
    return float(trustworthiness(vectors, coords, n_neighbors=k, metric="cosine"))


def align_procrustes(coords: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rotate (or reflect), scale and shift `coords` to best match `reference`, row by row.

    UMAP maps are only defined up to such a similarity transform, so aligning two maps of the
    same items lets the app show an item in a similar place on both without changing any
    distances within a map (up to one global scale).

    Parameters
    ----------
    coords : (n, 2) map to move.
    reference : (n, 2) map to match; row i is the same item as `coords` row i.

    Returns
    -------
    (n, 2) float32: s * (coords - mean) @ R + reference mean, with R orthogonal and s > 0
    minimising the squared distance to `reference`.
    """
    coords = np.asarray(coords, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if coords.shape != reference.shape:
        raise ValueError(f"maps differ in shape: {coords.shape} vs {reference.shape}")
    a = coords - coords.mean(axis=0)
    b = reference - reference.mean(axis=0)
    norm = float((a**2).sum())
    if norm == 0.0:
        return np.broadcast_to(reference.mean(axis=0), coords.shape).astype(np.float32)
    rotation, singular_sum = orthogonal_procrustes(a, b)
    # singular_sum = trace(R^T A^T B); dividing by |A|^2 gives the least-squares scale.
    scale = singular_sum / norm
    return (scale * a @ rotation + reference.mean(axis=0)).astype(np.float32)


def _params(config: Config, aligned_to: str | None, rows: int) -> dict[str, Any]:
    params = {
        "pca_dims": config.map_pca_dims,
        "n_neighbors": config.map_neighbors,
        "min_dist": config.map_min_dist,
        "metric": "cosine",
        "seed": config.seed,
        "aligned_to": aligned_to,
    }
    if rows > config.map_full_fit_max_items:
        # Only large catalogs record these, so a small catalog's map stays fresh.
        params.update(fit="sample+transform", fit_sample=config.map_fit_sample)
    return params


def run_maps(
    config: Config, extractors: Sequence[str] | None = None, force: bool = False
) -> StageResult:
    """Stage: write `config.map_path(name)` (item_id, x, y) for each extractor, with a manifest.

    The reference extractor ("inception_v3") is mapped first; every other map is aligned onto
    the reference map when it exists (in this run or from an earlier one). A map whose
    parameters and inputs are unchanged is skipped unless `force`.

    Returns
    -------
    StageResult; its details are {extractor: {"path", "skipped", "trustworthiness",
    "aligned_to", "seconds"}}.
    """
    catalog, catalog_hash = read_catalog(config)
    # Default: every extractor this catalog has (the head only where it was trained).
    extractors = config.extractors_built() if extractors is None else extractors
    item_ids = catalog["item_id"].astype(str).to_numpy()
    # The reference goes first so the others can be aligned onto its fresh map.
    ordered = sorted(dict.fromkeys(extractors), key=lambda name: name != REFERENCE)
    began = time.perf_counter()
    results = {name: _one_map(config, name, item_ids, catalog_hash, force) for name in ordered}
    wrote, note = written(results, ("path",)), note_of(results, "trustworthiness")
    seconds = time.perf_counter() - began
    return per_extractor(STAGE, results, len(catalog), seconds, wrote, note)


def _reference(
    config: Config, name: str, item_ids: np.ndarray
) -> tuple[np.ndarray | None, str | None, str | None]:
    """(reference coords, reference name, its sha256) to align `name`'s map onto, or Nones
    for the reference itself, a missing reference, or one of another catalog."""
    path = config.map_path(REFERENCE)
    manifest = read_manifest(path)
    if name == REFERENCE or not path.exists() or not manifest:
        return None, None, None
    table = pd.read_parquet(path)
    # A reference map of another catalog cannot be aligned row by row.
    if table["item_id"].astype(str).tolist() != item_ids.tolist():
        return None, None, None
    return table[["x", "y"]].to_numpy(np.float32), REFERENCE, str(manifest["sha256"])


def _one_map(
    config: Config, name: str, item_ids: np.ndarray, catalog_hash: str, force: bool
) -> dict[str, Any]:
    """Build (or skip) one extractor's map; returns its row of the stage's details."""
    start = time.perf_counter()
    path = config.map_path(name)
    vectors, vectors_hash = read_embeddings(config, name, n_rows=len(item_ids), map_large=True)
    inputs = {"catalog": catalog_hash, embeddings_key(name): vectors_hash}
    reference_coords, aligned_to, reference_sha = _reference(config, name, item_ids)
    if reference_sha is not None:
        inputs[f"maps/{REFERENCE}"] = reference_sha
    params = _params(config, aligned_to, len(item_ids))
    row = {"path": str(path), "aligned_to": aligned_to}
    if not force and is_fresh(path, STAGE, params, inputs):
        manifest = read_manifest(path) or {}
        print(f"map {name}: up to date, skipped ({path})")
        return {
            **row,
            "skipped": True,
            "trustworthiness": manifest.get("trustworthiness"),
            "seconds": 0.0,
        }

    coords = compute_map(
        vectors,
        pca_dims=config.map_pca_dims,
        n_neighbors=config.map_neighbors,
        min_dist=config.map_min_dist,
        seed=config.seed,
        full_fit_max_items=config.map_full_fit_max_items,
        fit_sample=config.map_fit_sample,
    )
    if reference_coords is not None:
        coords = align_procrustes(coords, reference_coords)
    trust = map_trustworthiness(vectors, coords, k=10, seed=config.seed)
    table = pd.DataFrame({"item_id": item_ids, "x": coords[:, 0], "y": coords[:, 1]})
    write_parquet(table, path)
    trust_value = None if np.isnan(trust) else round(float(trust), 4)
    extra = {
        "trustworthiness": trust_value,
        "trustworthiness_k": 10,
        "aligned_to": aligned_to,
        "rows": len(table),
    }
    write_manifest(path, STAGE, params, inputs, extra=extra)
    seconds = time.perf_counter() - start
    print(
        f"map {name}: {len(table)} items, trustworthiness@10 {trust:.3f}, "
        f"aligned to {aligned_to or '-'}, {seconds:.1f}s -> {path}"
    )
    return {**row, "skipped": False, "trustworthiness": trust_value, "seconds": seconds}
