"""Maps benchmark: UMAP wall time and peak memory in child processes, PCA-first vs raw
2048-d, plus the vector stages (maps, index, k-means) at 100k items. Writes nothing."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipelines.bench.common import K, npy_shape, peak_rss_mb, real_embeddings, run_child
from pipelines.bench.vectors import make_vectors, vector_spec
from pipelines.config import Config
from pipelines.search.index import Index


def bench_maps(config: Config, quick: bool, shared: dict[str, Any]) -> dict[str, Any]:
    """UMAP rows; leaves the vector-stages child's numbers in shared["vector_stages"]."""
    rows = [] if quick else _catalog_size_rows(config)
    # The largest size runs as the vector-stages child, shared with the memory section; in
    # quick mode it is the only child and also times the raw map.
    n_big = 500 if quick else 100_000
    spec = vector_spec(config, n_big, 2048)
    params = {
        "spec": spec,
        "pca_dims": config.map_pca_dims,
        "n_clusters": config.n_clusters,
        "raw_map": quick,
    }
    big = run_child("vector_stages", params, timeout=3600)
    shared["vector_stages"] = {"n": n_big, "data": spec["kind"], **big}
    label = f"{n_big // 1000}k" if n_big >= 1000 else f"{n_big} (quick)"
    rows.append(
        {
            "n": label,
            "data": spec["kind"],
            "input": f"PCA {config.map_pca_dims}",
            **{k: v for k, v in big.items() if k in ("map_s", "rss_before_map_mb", "error")},
            "peak_rss_after_map_mb": big.get("peak_rss_after_map_mb"),
        }
    )
    if quick and "raw_map_s" in big:
        rows.append(
            {
                "n": label,
                "data": spec["kind"],
                "input": "raw 2048",
                "map_s": big["raw_map_s"],
                "peak_rss_after_map_mb": big["peak_rss_after_raw_map_mb"],
                "note": "same child, after the PCA map: its peak includes the PCA map's",
            }
        )
    notes = "raw 2048-d only at the catalog size: UMAP's neighbour search on raw 2048-d "
    notes += "vectors grows with d and is not the shipped path (maps.compute_map uses PCA first)"
    return {"rows": rows, "notes": notes}


def _catalog_size_rows(config: Config) -> list[dict[str, Any]]:
    """Full run: the catalog's own 2048-d rows with and without PCA, and 50k resampled."""
    wide = next((p for p in real_embeddings(config).values() if npy_shape(p)[1] == 2048), None)
    small = (
        {"kind": "real", "base": str(wide), "n": npy_shape(wide)[0], "d": 2048}
        if wide
        else {"kind": "clustered", "n": 3800, "d": 2048, "seed": 0}
    )
    plans = [
        (f"{small['n']} ({small['kind']})", small, config.map_pca_dims),
        (f"{small['n']} ({small['kind']})", small, None),
        ("50k", vector_spec(config, 50_000, 2048), config.map_pca_dims),
    ]
    rows = []
    for label, spec, pca in plans:
        result = run_child("map", {"spec": spec, "pca_dims": pca}, timeout=1800)
        source = f"PCA {pca}" if pca else "raw 2048"
        rows.append({"n": label, "data": spec["kind"], "input": source, **result})
    return rows


def child_map(spec: dict[str, Any], pca_dims: int | None, seed: int = 0) -> dict[str, Any]:
    """(child) One UMAP map of the vectors `spec` describes: seconds and peak RSS."""
    from pipelines.explore.maps import compute_map

    x = make_vectors(spec)
    before = peak_rss_mb()
    t0 = time.perf_counter()
    compute_map(x, pca_dims=pca_dims or x.shape[1], n_neighbors=15, min_dist=0.1, seed=seed)
    return {
        "map_s": round(time.perf_counter() - t0, 2),
        "rss_before_map_mb": round(before, 1),
        "peak_rss_after_map_mb": round(peak_rss_mb(), 1),
    }


def child_vector_stages(
    spec: dict[str, Any], pca_dims: int, n_clusters: int, raw_map: bool = False
) -> dict[str, Any]:
    """(child) Maps, then the search index and k-means on the same vectors, peak RSS after
    each. `raw_map` also times a map of the raw vectors (quick mode: saves a second child)."""
    from pipelines.explore.clusters import kmeans

    out = child_map(spec, pca_dims)
    if raw_map:
        raw = child_map(spec, None)
        out["raw_map_s"] = raw["map_s"]
        out["peak_rss_after_raw_map_mb"] = raw["peak_rss_after_map_mb"]
    x = make_vectors(spec)
    t0 = time.perf_counter()
    index = Index(x, np.arange(len(x)).astype(str))
    for row in range(0, len(x), max(1, len(x) // 20)):
        index.search_rows(x[row], K)
    # From ann.ANN_MIN_ITEMS rows this includes building the approximate index, as in the app.
    out["index_approximate"] = index.approximate
    out["index_and_20_queries_s"] = round(time.perf_counter() - t0, 2)
    out["peak_rss_after_index_mb"] = round(peak_rss_mb(), 1)
    t0 = time.perf_counter()
    kmeans(x, n_clusters, seed=0)
    out["kmeans_s"] = round(time.perf_counter() - t0, 2)
    out["peak_rss_after_kmeans_mb"] = round(peak_rss_mb(), 1)
    return out
