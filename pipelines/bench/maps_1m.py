"""Maps and clusters at 1M x 2048: the sampled map's build time and RSS at 1M, its
trustworthiness against a full UMAP fit on a 50k subset, and k-means at 1M. Reads
embeddings (to draw the vectors); writes the vectors in this run's folder under
`vectors_disk.scratch_dir` (`scratch.run_scratch`: removed afterwards).

Every measurement runs in a child process (its own peak RSS) on the memory-mapped float32
file, as the maps and clusters stages read a large catalog's embeddings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bench.common import peak_rss_mb, run_child
from pipelines.bench.report import loadavg
from pipelines.bench.scratch import run_scratch
from pipelines.bench.vectors import vector_spec
from pipelines.bench.vectors_disk import scratch_dir, write_vectors
from pipelines.config import Config

TARGET = {"map_1m_minutes": 15.0, "trust_gap_vs_full_fit_50k": 0.02}
# Trustworthiness is scored on this many random rows, with this many different samples.
TRUST_ROWS, TRUST_SEEDS = 2000, (0, 1, 2)


def bench_maps_1m(config: Config, quick: bool) -> dict[str, Any]:
    """Rows: 50k full fit vs sampled fit (trustworthiness), the 1M map, 1M k-means. Its
    vectors (8 GB at 1M) live in a scratch folder of this run, removed however it ends."""
    with run_scratch(scratch_dir(config), "bench maps_1m") as folder:
        return _bench_maps_1m(config, quick, folder)


def _bench_maps_1m(config: Config, quick: bool, folder: Path) -> dict[str, Any]:
    n, subset = (10_000, 3_000) if quick else (1_000_000, 50_000)
    spec = vector_spec(config, n, 2048, seed=7)
    path = folder / f"vectors_{spec['kind']}_{n}_s7_2048_f32.npy"
    write_vectors(spec, path, "float32")
    settings = {
        "pca_dims": config.map_pca_dims,
        "n_neighbors": config.map_neighbors,
        "min_dist": config.map_min_dist,
        "seed": config.seed,
        "full_fit_max_items": config.map_full_fit_max_items,
        "fit_sample": config.map_fit_sample,
    }
    if quick:  # the same paths at a size CI can afford
        settings.update(full_fit_max_items=5_000, fit_sample=1_000)
    # The subset's sampled map fits on fit_sample rows, as the 1M map does: the method is
    # tested at the sample size it is used with.
    compare = run_child(
        "maps_1m_compare",
        {"path": str(path), "subset": subset, "settings": settings},
        timeout=3600,
    )
    big = run_child("maps_1m_map", {"path": str(path), "settings": settings}, timeout=3600)
    kmeans = run_child(
        "maps_1m_kmeans",
        {
            "path": str(path),
            "n_clusters": config.n_clusters,
            "full_max_items": config.kmeans_full_max_items,
            "sample": config.kmeans_sample,
            "seed": config.seed,
        },
        timeout=3600,
    )
    rows = [
        {"case": f"{subset // 1000}k subset", **compare},
        {"case": f"{n // 1000}k map", **big},
        {"case": f"{n // 1000}k k-means", **kmeans},
    ]
    gap = None
    if "trust_full" in compare and "trust_sampled" in compare:
        gap = round(compare["trust_full"] - compare["trust_sampled"], 4)
    minutes = big.get("map_s", float("inf")) / 60
    return {
        "rows": rows,
        "n": n,
        "data": spec["kind"],
        "targets": TARGET,
        "trust_gap_full_minus_sampled": gap,
        "target_met": gap is not None
        and gap <= TARGET["trust_gap_vs_full_fit_50k"]
        and minutes <= TARGET["map_1m_minutes"],
        "notes": f"trustworthiness@10 on {TRUST_ROWS} random rows, mean of "
        f"{len(TRUST_SEEDS)} samples; map times include PCA, the UMAP fit and placing "
        "every row, not the trustworthiness nor numba's one-off compile (compile_warm_up_s, "
        "timed apart; a fresh `python -m pipelines maps` pays it once)",
    }


def _warm_up() -> float:
    """Seconds of one tiny map: numba compiles UMAP's functions on first use (a minute on
    the busy machine), which must not count against whichever map is timed first."""
    from pipelines.explore.maps import compute_map

    t0 = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    compute_map(x, pca_dims=8, n_neighbors=15, min_dist=0.1, seed=0)
    compute_map(
        x, pca_dims=8, n_neighbors=15, min_dist=0.1, seed=0, full_fit_max_items=0, fit_sample=100
    )
    return round(time.perf_counter() - t0, 1)


def _trust(vectors: np.ndarray, coords: np.ndarray) -> float:
    from pipelines.explore.maps import map_trustworthiness

    scores = [
        map_trustworthiness(vectors, coords, 10, max_items=TRUST_ROWS, seed=s) for s in TRUST_SEEDS
    ]
    return round(float(np.mean(scores)), 4)


def child_compare(path: str, subset: int, settings: dict[str, Any]) -> dict[str, Any]:
    """(child) A `subset`-row sample of the file mapped twice: a full UMAP fit, and the
    sampled fit (`settings`' fit_sample rows, the rest placed)."""
    from pipelines.explore.maps import compute_map
    from pipelines.search.approximate import take_rows

    vectors = np.load(path, mmap_mode="r")
    rows = np.sort(np.random.default_rng(1).choice(len(vectors), subset, replace=False))
    x = take_rows(vectors, rows)
    out: dict[str, Any] = {"compile_warm_up_s": _warm_up(), "loadavg_before": loadavg()}
    t0 = time.perf_counter()
    sampled = compute_map(x, **{**settings, "full_fit_max_items": 0})
    out["sampled_s"] = round(time.perf_counter() - t0, 1)
    out["loadavg_mid"] = loadavg()
    t0 = time.perf_counter()
    full = compute_map(x, **{**settings, "full_fit_max_items": None})
    out["full_fit_s"] = round(time.perf_counter() - t0, 1)
    out["loadavg_after"] = loadavg()
    out["trust_full"] = _trust(x, full)
    out["trust_sampled"] = _trust(x, sampled)
    out["time_ratio_full_over_sampled"] = round(out["full_fit_s"] / out["sampled_s"], 2)
    return out


def child_map(path: str, settings: dict[str, Any]) -> dict[str, Any]:
    """(child) The map of every row of the memory-mapped file, as the maps stage makes it."""
    from pipelines.explore.maps import compute_map

    vectors = np.load(path, mmap_mode="r")
    out: dict[str, Any] = {"compile_warm_up_s": _warm_up(), "loadavg_before": loadavg()}
    t0 = time.perf_counter()
    coords = compute_map(vectors, **settings)
    out["map_s"] = round(time.perf_counter() - t0, 1)
    out["loadavg_after"] = loadavg()
    out["peak_rss_map_mb"] = round(peak_rss_mb(), 1)
    out["trust_sampled"] = _trust(vectors, coords)
    out["finite"] = bool(np.isfinite(coords).all())
    return out


def child_kmeans(
    path: str, n_clusters: int, full_max_items: int, sample: int, seed: int
) -> dict[str, Any]:
    """(child) The clusters stage's k-means over every row of the memory-mapped file."""
    from pipelines.explore.clusters import kmeans

    vectors = np.load(path, mmap_mode="r")
    out: dict[str, Any] = {"loadavg_before": loadavg()}
    t0 = time.perf_counter()
    ids, _ = kmeans(vectors, n_clusters, seed, full_max_items=full_max_items, sample=sample)
    out["kmeans_s"] = round(time.perf_counter() - t0, 1)
    out["loadavg_after"] = loadavg()
    out["cluster_sizes"] = np.bincount(ids).tolist()
    out["peak_rss_kmeans_mb"] = round(peak_rss_mb(), 1)
    return out
