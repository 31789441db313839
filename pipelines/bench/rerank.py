"""Re-ranking benchmark: P@10 (and colour agreement@10) with and without re-ranking on the
validation and test splits, single-query latency with and without it at the real catalog's
size and at 100k items, and the DBA neighbour graph's build time. Reads the catalog,
embeddings and colours; writes nothing.

Protocols (never tuned on test):
- validation: validation photos searched against the train split (the split the settings in
  `pipelines.search.rerank.TUNED` were chosen on; `validation_grid` repeats that choice);
- test: test photos against train + validation, as `pipelines.quality.evaluate` measures P@10.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import numpy as np
import pandas as pd

from pipelines.bench.common import K, interleaved, ms
from pipelines.config import EXTRACTORS, Config
from pipelines.search.index import Index
from pipelines.search.rerank import (
    DBA_MAX_ITEMS,
    RerankedIndex,
    RerankSettings,
    cached_graph,
    settings_for,
)

# The grid `TUNED` was chosen from (validation P@10).
GRID_QE_M = (0, 1, 2, 3, 5, 10, 15, 20)
GRID_ALPHA = (0.0, 1.0, 3.0)
GRID_DBA_M = (0, 1, 2, 3, 5, 8)
# Noise added to tiled real vectors for the large catalog: small against the ~0.2-0.5 cosine
# distance between neighbours, so each copy stays near its original but no two rows tie.
TILE_NOISE = 0.02


def bench_rerank(config: Config, quick: bool) -> dict[str, Any]:
    """P@10 gain and latency of re-ranking per extractor (see the module docstring)."""
    from pipelines.readers import read_catalog, read_embeddings

    try:
        catalog, _ = read_catalog(config)
    except Exception as err:  # no built catalog: nothing real to measure
        return {"skipped": f"no catalog to measure on ({err})"}
    have = [e for e in EXTRACTORS if config.embeddings_path(e).exists()]
    if not have:
        return {"skipped": f"no embeddings in {config.artifacts_dir} — run the pipeline first"}
    from pipelines.data.colour import read_colours

    colours = read_colours(config, catalog["item_id"].to_numpy())
    splits = catalog["split"].astype(str).to_numpy() if "split" in catalog.columns else None
    labels = catalog["label"] if "label" in catalog.columns else None
    rows: list[dict[str, Any]] = []
    grids: dict[str, list[dict[str, Any]]] = {}
    repeats = 30 if quick else 200
    for extractor in have:
        vectors, _ = read_embeddings(config, extractor, n_rows=len(catalog))
        settings = settings_for(extractor)
        row: dict[str, Any] = {"extractor": extractor, **_settings_row(settings)}
        if splits is not None and labels is not None and labels.notna().any():
            codes = pd.factorize(labels)[0]
            # What a catalog above DBA_MAX_ITEMS gets: the same extractor without DBA.
            large_settings = settings_for(extractor, DBA_MAX_ITEMS + 1)
            for name, (queries, gallery) in _protocols(splits).items():
                plain, ranked = p_at_k(vectors, codes, queries, gallery, settings)
                row[f"{name}_p@10"] = round(plain, 4)
                row[f"{name}_p@10_rerank"] = round(ranked, 4)
                row[f"{name}_gain"] = round(ranked - plain, 4)
                if large_settings != settings:
                    _, qe_only = p_at_k(vectors, codes, queries, gallery, large_settings)
                    row[f"{name}_gain_without_dba"] = round(qe_only - plain, 4)
                if colours is not None:
                    # Likeness beside category: the share of the 10 whose colour is the query's.
                    known = np.array([isinstance(c, str) for c in colours])
                    colour_codes = np.where(known, pd.factorize(colours)[0], -1)
                    same = p_at_k(vectors, colour_codes, queries, gallery, settings)
                    row[f"{name}_colour@10"] = round(same[0], 4)
                    row[f"{name}_colour@10_rerank"] = round(same[1], 4)
            if not quick:
                val_queries, val_gallery = _protocols(splits)["validation"]
                grids[extractor] = validation_grid(vectors, codes, val_queries, val_gallery)
        row.update(latency(vectors, repeats, settings, "real"))
        rows.append(row)
        print(f"bench rerank: {extractor} {row}", flush=True)
    large = 10_000 if quick else 100_000
    for extractor in have:
        vectors, _ = read_embeddings(config, extractor, n_rows=len(catalog))
        tiled = tile(vectors, large, seed=0)
        settings = settings_for(extractor, large)
        row = {"extractor": extractor, **_settings_row(settings)}
        row.update(latency(tiled, repeats, settings, f"{large // 1000}k"))
        if not quick and settings_for(extractor).dba_m > 0:
            # What DBA would cost here (why catalogs this large re-rank without it).
            row.update(latency(tiled, repeats, settings_for(extractor), "100k with DBA", "dba_"))
        rows.append(row)
        print(f"bench rerank: {extractor} {row}", flush=True)
    return {
        "rows": rows,
        "validation_grid": grids,
        "protocols": "validation: validation photos vs the train split (settings chosen here); "
        "test: test photos vs train + validation (as evaluate), measured once",
        "large_catalog": f"{large} rows: the real vectors tiled with Gaussian noise "
        f"{TILE_NOISE}/sqrt(d) per coordinate, renormalised; 'exact' uses the ANN index from "
        "its ann_min_items",
        "loadavg": list(os.getloadavg()),
    }


def _settings_row(settings: RerankSettings) -> dict[str, Any]:
    return {"qe_m": settings.qe_m, "alpha": settings.alpha, "dba_m": settings.dba_m}


def _protocols(splits: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    train = np.flatnonzero(splits == "train")
    validation = np.flatnonzero(splits == "validation")
    test = np.flatnonzero(splits == "test")
    out = {}
    if len(validation) and len(train):
        out["validation"] = (validation, train)
    if len(test) and len(train):
        out["test"] = (test, np.flatnonzero(splits != "test"))
    return out


def p_at_k(
    vectors: np.ndarray,
    codes: np.ndarray,
    queries: np.ndarray,
    gallery: np.ndarray,
    settings: RerankSettings,
    k: int = K,
) -> tuple[float, float]:
    """(plain, re-ranked) mean precision@k of `queries` rows searched among `gallery` rows
    (exact strategy; a hit = same code, a label or a colour; queries without one (-1) left
    out)."""
    index = Index(vectors[gallery], np.arange(len(gallery)).astype(str), name="gallery")
    queries = queries[codes[queries] >= 0]
    q, want, have = vectors[queries], codes[queries], codes[gallery]
    out = []
    for searcher in (index, RerankedIndex(index, settings)):
        found, _ = searcher.search_rows(q, k)
        out.append(float(((found >= 0) & (have[found] == want[:, None])).mean()))
    return out[0], out[1]


def validation_grid(
    vectors: np.ndarray, codes: np.ndarray, queries: np.ndarray, gallery: np.ndarray
) -> list[dict[str, Any]]:
    """Validation P@10 gain of every setting in GRID_QE_M x GRID_ALPHA x GRID_DBA_M, best
    first (how `pipelines.search.rerank.TUNED` was chosen)."""
    index = Index(vectors[gallery], np.arange(len(gallery)).astype(str), name="gallery")
    q, want, have = vectors[queries], codes[queries], codes[gallery]

    def precision(searcher: Any) -> float:
        found, _ = searcher.search_rows(q, K)
        return float(((found >= 0) & (have[found] == want[:, None])).mean())

    base = precision(index)
    out = []
    for qe_m, alpha, dba_m in itertools.product(GRID_QE_M, GRID_ALPHA, GRID_DBA_M):
        if qe_m == 0 and dba_m == 0:
            continue
        settings = RerankSettings(qe_m=qe_m, alpha=alpha, dba_m=dba_m)
        gain = precision(RerankedIndex(index, settings)) - base
        out.append({"qe_m": qe_m, "alpha": alpha, "dba_m": dba_m, "gain": round(gain, 4)})
    return sorted(out, key=lambda r: -r["gain"])


def tile(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, d) unit rows: `vectors` repeated to n rows, each copy moved by Gaussian noise of
    TILE_NOISE / sqrt(d) per coordinate (so ~TILE_NOISE in length) and renormalised."""
    rng = np.random.default_rng(seed)
    d = vectors.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 20_000):
        hi = min(n, lo + 20_000)
        block = vectors[np.arange(lo, hi) % len(vectors)].astype(np.float32)
        block += rng.standard_normal(block.shape, dtype=np.float32) * (TILE_NOISE / np.sqrt(d))
        out[lo:hi] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def latency(
    vectors: np.ndarray, repeats: int, settings: RerankSettings, label: str, prefix: str = ""
) -> dict[str, Any]:
    """Single-query latency (k=10, catalog items as queries, each excluded from its own
    results) of plain and re-ranked exact search, interleaved; the DBA graph's build time.
    Keys start with `prefix`."""
    n = len(vectors)
    index = Index(vectors, np.arange(n).astype(str), name="bench")
    ranked = RerankedIndex(index, settings)
    out: dict[str, Any] = {"catalog": label, "n": n, "approximate": index.approximate}
    if index.approximate:
        t0 = time.perf_counter()
        index.ann_index()
        out["ann_build_s"] = round(time.perf_counter() - t0, 2)
    if settings.dba_m > 0:
        t0 = time.perf_counter()
        cached_graph(index, settings.dba_m)
        out["dba_graph_s"] = round(time.perf_counter() - t0, 2)
    rows = np.random.default_rng(1).choice(n, size=min(repeats, n), replace=False)

    def cycling(searcher: Any) -> Any:
        counter = itertools.count()  # each searcher sees the same queries in the same order

        def one() -> Any:
            row = rows[next(counter) % len(rows)]
            return searcher.search(vectors[row], K, exclude_rows=[row])

        return one

    times = interleaved({"plain": cycling(index), "rerank": cycling(ranked)}, repeats)
    plain, rerank = ms(times["plain"]), ms(times["rerank"])
    out.update(
        plain_median_ms=plain["median_ms"],
        plain_p95_ms=plain["p95_ms"],
        rerank_median_ms=rerank["median_ms"],
        rerank_p95_ms=rerank["p95_ms"],
        added_median_ms=round(rerank["median_ms"] - plain["median_ms"], 4),
        loadavg_1m=round(os.getloadavg()[0], 2),
    )
    return {f"{prefix}{key}": value for key, value in out.items()}
