"""Reads the catalog and embeddings; writes one 2-D UMAP map per extractor (maps/<name>.parquet),
fitted anew or updated in place (new items placed, kept items where they were)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from pyarrow import ArrowException
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness

from pipelines.artifacts import (
    atomic_path,
    is_fresh,
    manifest_path,
    read_manifest,
    sha256_json,
    write_manifest,
    write_parquet,
)
from pipelines.config import EXTRACTORS, Config, embeddings_key
from pipelines.data.item_ids import match_rows
from pipelines.readers import model_id, read_catalog, read_embeddings
from pipelines.stage import StageResult, note_of, per_extractor, written

STAGE = "maps"
# Every other extractor's map is rotated onto this one so an item sits in a similar place on both.
REFERENCE = EXTRACTORS[0]
# Fitted rows whose places decide where a placed row goes (each row of a large catalog's map
# outside the fitted sample; each new item of an update).
PLACE_NEIGHBOURS = 15
# Placing new items multiplies each chunk of fitted rows (`ann.CHUNK_ROWS`) with blocks of new
# items of at most this many similarities (64 MB) at a time.
PLACE_BLOCK_CELLS = 16_000_000
# Trustworthiness needs two dense n x n distance matrices; a sample keeps it to ~100 MB.
TRUST_MAX_ITEMS = 2000
# A catalog update places its new items onto the existing map (`place_new_rows`) and refits
# UMAP only once the items placed since the last fit exceed this share of the map. Placed items
# never shape the layout: each lands at the weighted mean of its neighbours' places, inside the
# region they already hold, so the more of the map is placed the less it keeps neighbourhoods.
# Measured on clothing-small's InceptionV3 vectors (trustworthiness@10 over all 3,781 items;
# fitted on the rest, the held-out share placed): full fit 0.961; 10 % placed 0.955, 20 %
# 0.948, 30 % 0.941, 50 % 0.926: a fifth costs about 0.01, and past it the loss keeps
# growing. A shop that changes 1 % of its catalog a day then refits about every three weeks.
# (A whole new kind of item costs more for its share: hats held out, 3.9 % of the items, give
# 0.944; the share alone does not catch that.)
REFIT_PLACED_SHARE = 0.2
# Where a map file keeps the state of its fit (pandas stores DataFrame.attrs in the parquet
# file), so the state and the places are written in one atomic rename: a run killed after the
# rename, before the manifest, leaves a file the next update still reads right.
STATE_KEY = "lookalike_map"


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


class SampledFit(NamedTuple):
    """What a sampled map (`fit_sampled_map`) was fitted on: the sample's rows and the PCA
    learnt from them. An update places its new items with it exactly as the fit placed every
    row outside the sample (`place_by_sample`)."""

    rows: np.ndarray  # (s,) the fitted sample's rows, sorted
    mean: np.ndarray | None  # (d,) the PCA's mean; None without PCA
    components: np.ndarray | None  # (dims, d) the PCA's directions; None without PCA
    reduced: np.ndarray  # (s, dims) the sample's rows reduced (`reduce`), in `rows` order

    def reduce(self, block: np.ndarray) -> np.ndarray:
        """Rows as the placement compares them (`_reduce` with this fit's PCA)."""
        return _reduce(block, self.mean, self.components)


def _reduce(
    block: np.ndarray, mean: np.ndarray | None, components: np.ndarray | None
) -> np.ndarray:
    """Rows PCA-reduced (when there is a PCA) and normalised, float32."""
    out = np.asarray(block, dtype=np.float32)
    if components is not None:
        # In scikit-learn's PCA.transform order (project, then subtract the projected mean),
        # so the fit and an update reduce a row to the same bits.
        out = out @ components.T
        out -= mean.reshape(1, -1) @ components.T
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def sampled_map(vectors: np.ndarray, **settings: Any) -> np.ndarray:
    """A large catalog's map: `fit_sampled_map`'s places alone (same keyword arguments)."""
    return fit_sampled_map(vectors, **settings)[0]


def fit_sampled_map(
    vectors: np.ndarray,
    *,
    pca_dims: int,
    n_neighbors: int,
    min_dist: float,
    seed: int,
    fit_sample: int,
) -> tuple[np.ndarray, SampledFit]:
    """A large catalog's map: PCA and UMAP fitted on `fit_sample` random rows, which keep
    their fitted places; every other row goes to the similarity-weighted mean place of its
    PLACE_NEIGHBOURS most similar sample rows (cosine, after the PCA: `place_by_sample`).

    That mean is where `UMAP.transform` starts a new point; its optimisation epochs after it
    cost about 1.1 s per 1000 rows on this 2-core machine under load (18 min at 1M) and,
    on a 50k subset, raised trustworthiness@10 by 0.01 (0.926 against 0.916; a full fit
    scored 0.878). Same arguments as `compute_map`; `vectors` is read in chunks of
    `ann.CHUNK_ROWS` rows, so a memory-mapped 1M x 2048 matrix is never in memory whole.

    Returns
    -------
    (n, 2) float32 places, and the `SampledFit` that placed the rows outside the sample.
    """
    from pipelines.search.approximate import iter_chunks, take_rows

    n, d = vectors.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, fit_sample, replace=False))
    sample = take_rows(vectors, rows)
    dims = min(pca_dims, d, fit_sample - 1)
    pca = PCA(n_components=dims, random_state=seed).fit(sample) if dims < d else None
    mean = None if pca is None else pca.mean_.astype(np.float32)
    components = None if pca is None else pca.components_.astype(np.float32)
    reduced = _reduce(sample, mean, components)
    fit = SampledFit(rows=rows, mean=mean, components=components, reduced=reduced)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fitted = _umap(fit_sample, n_neighbors, min_dist, seed).fit_transform(reduced)
    fitted = np.asarray(fitted, dtype=np.float32)
    index = _sample_index(reduced)
    coords = np.empty((n, 2), dtype=np.float32)
    start = 0
    # Every row placed in file order (the sample's places are then put back): a memory-mapped
    # matrix is read once, in chunks, never row by row.
    for chunk in iter_chunks(vectors):
        coords[start : start + len(chunk)] = _place_block(index, fitted, fit, chunk)
        start += len(chunk)
    coords[rows] = fitted
    return coords, fit


def place_by_sample(
    vectors: np.ndarray, coords: np.ndarray, fit: SampledFit, new_rows: np.ndarray
) -> np.ndarray:
    """Places of an update's `new_rows` on a sampled map, as `fit_sampled_map` placed every
    row outside its sample: `weighted_place` of each one's PLACE_NEIGHBOURS most similar rows
    of `fit.rows` (cosine after `fit.reduce`; the sample's reduced rows are the fit's own),
    whose places `coords` holds. Reads only the new rows (`take_rows`), so it costs the same
    at any catalog size.

    Returns
    -------
    (m, 2) float32 places, in `new_rows` order.
    """
    from pipelines.search.approximate import CHUNK_ROWS, take_rows

    new_rows = np.asarray(new_rows, dtype=np.int64)
    index = _sample_index(fit.reduced)
    places = np.asarray(coords, dtype=np.float32)[fit.rows]
    out = np.empty((len(new_rows), 2), dtype=np.float32)
    for lo in range(0, len(new_rows), CHUNK_ROWS):
        rows = new_rows[lo : lo + CHUNK_ROWS]
        out[lo : lo + len(rows)] = _place_block(index, places, fit, take_rows(vectors, rows))
    return out


def _sample_index(reduced: np.ndarray) -> Any:
    """An exact inner-product faiss index over the sample's reduced rows."""
    from pipelines.search.approximate import _faiss

    index = _faiss().IndexFlatIP(reduced.shape[1])
    index.add(reduced)
    return index


def _place_block(index: Any, places: np.ndarray, fit: SampledFit, block: np.ndarray) -> np.ndarray:
    """Places of a block of rows from their most similar sample rows (`index`'s rows, whose
    places are `places`)."""
    sims, near = index.search(fit.reduce(block), min(PLACE_NEIGHBOURS, index.ntotal))
    return weighted_place(sims, places[near])


def weighted_place(sims: np.ndarray, places: np.ndarray) -> np.ndarray:
    """Where an item goes from its fitted neighbours: (m, k) similarities to them and their
    (m, k, 2) places -> (m, 2) float32 similarity-weighted mean places.

    The weights are sharpened (similarity^4, negatives count 0) so the nearest few decide, as
    UMAP's membership strengths do.
    """
    weights = np.maximum(sims, 0.0) ** 4 + 1e-9
    place = np.einsum("mk,mkc->mc", weights, places) / weights.sum(1, keepdims=True)
    return place.astype(np.float32, copy=False)


def place_new_rows(
    vectors: np.ndarray,
    coords: np.ndarray,
    new_rows: np.ndarray,
    fitted: np.ndarray,
    k: int = PLACE_NEIGHBOURS,
) -> np.ndarray:
    """Places of `new_rows` on a map whose `fitted` rows already have theirs (`weighted_place`
    of each new row's k most similar fitted rows, cosine in embedding space).

    Parameters
    ----------
    vectors : (n, d) unit rows (in memory or memory-mapped; read in chunks of
        `ann.CHUNK_ROWS`, so a large file is never in memory whole).
    coords : (n, 2) map; only its `fitted` rows are read.
    new_rows : (m,) rows to place.
    fitted : (n,) bool, the rows that keep their places and may be neighbours.
    k : neighbours per new row, clipped to the fitted rows' count.

    Returns
    -------
    (m, 2) float32 places, in `new_rows` order. Exact: one (m, d) x (d, n) product, in
    blocks, so the same inputs always give the same places.
    """
    from pipelines.search.approximate import CHUNK_ROWS, iter_chunks, take_rows

    new_rows = np.asarray(new_rows, dtype=np.int64)
    width = min(k, int(fitted.sum()))
    if len(new_rows) == 0 or width == 0:
        raise ValueError("placing needs new rows and at least one fitted row")
    queries = take_rows(vectors, new_rows)
    best_sims = np.full((len(new_rows), 0), -np.inf, dtype=np.float32)
    best_rows = np.empty((len(new_rows), 0), dtype=np.int64)
    step = max(1, PLACE_BLOCK_CELLS // CHUNK_ROWS)
    start = 0
    for chunk in iter_chunks(vectors, CHUNK_ROWS):
        others = ~fitted[start : start + len(chunk)]
        found_sims, found_rows = [], []
        for lo in range(0, len(queries), step):
            sims = queries[lo : lo + step] @ chunk.T
            if others.any():
                sims[:, others] = -np.inf
            top_sims, top_rows = _largest_per_row(sims, width)
            found_sims.append(top_sims)
            found_rows.append(top_rows + start)
        # Earlier chunks first and a stable sort: ties go to the lower row.
        merged_sims = np.concatenate([best_sims, np.concatenate(found_sims)], axis=1)
        merged_rows = np.concatenate([best_rows, np.concatenate(found_rows)], axis=1)
        order = np.argsort(-merged_sims, axis=1, kind="stable")[:, :width]
        best_sims = np.take_along_axis(merged_sims, order, axis=1)
        best_rows = np.take_along_axis(merged_rows, order, axis=1)
        start += len(chunk)
    return weighted_place(best_sims, np.asarray(coords, dtype=np.float32)[best_rows])


def _place_update(
    config: Config,
    vectors: np.ndarray,
    coords: np.ndarray,
    new_rows: np.ndarray,
    keep: np.ndarray,
    sample: SampledFit | None,
) -> np.ndarray:
    """Places of an update's `new_rows` among the `keep` rows. A map fitted on a sample (more
    than `map_full_fit_max_items` rows) placed every row outside the sample from the sample's
    rows, after its PCA; an update's new rows go the same way (`place_by_sample`), so its cost
    follows the new rows, not the catalog. Without the kept fit (a map written before it was
    kept) they go against `map_fit_sample` kept rows (a seeded choice), by the full vectors.
    Smaller maps place new rows among every kept row."""
    from pipelines.search.approximate import take_rows

    if sample is not None:
        return place_by_sample(vectors, coords, sample, new_rows)
    pool = np.flatnonzero(keep)
    if len(keep) <= config.map_full_fit_max_items or len(pool) <= config.map_fit_sample:
        return place_new_rows(vectors, coords, new_rows, keep)
    rng = np.random.default_rng(config.seed)
    pool = np.sort(rng.choice(pool, config.map_fit_sample, replace=False))
    rows = np.concatenate([pool, new_rows])
    fitted = np.zeros(len(rows), dtype=bool)
    fitted[: len(pool)] = True
    return place_new_rows(
        take_rows(vectors, rows), coords[rows], np.arange(len(pool), len(rows)), fitted
    )


def _largest_per_row(sims: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, columns) of the `width` largest entries of each row of (b, n) `sims`, best
    first, ties to the lower column; -inf entries may fill a row with fewer finite ones.

    Vectorised: the width-th largest of the rows' maxima over groups of 64 columns bounds the
    width-th largest entry from below (width groups each hold an entry at least that large), so
    one comparison leaves a few dozen candidates a row, sorted together. An argpartition of
    every row cost more than the (b, d) x (d, n) product itself at 1000 x 100k.
    """
    b, n = sims.shape
    width = min(width, n)
    group = 64
    if n >= group * width:
        cut = n // group * group
        maxima = sims[:, :cut].reshape(b, -1, group).max(axis=2)
        bound = np.partition(maxima, maxima.shape[1] - width, axis=1)[:, -width]
        rows, cols = np.nonzero(sims >= bound[:, None])
    else:
        rows, cols = np.divmod(np.arange(b * n), n)
    values = sims[rows, cols]
    # By row, then by value, largest first; lexsort is stable so ties keep column order.
    order = np.lexsort((-values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    first = np.searchsorted(rows, np.arange(b))
    take = first[:, None] + np.arange(width)
    return values[take], cols[take].astype(np.int64)


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
    """The map's settings as its manifest records them, for a catalog of `rows` items."""
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
    parameters and inputs are unchanged is skipped unless `force`. A stale map made by the
    same model with the same settings is updated in place: kept items keep their places bit
    for bit, removed ones leave, new ones are placed among the kept (`place_new_rows`),
    until more than REFIT_PLACED_SHARE of it was placed since the fit. Otherwise (or with
    `force`) UMAP is fitted anew.

    Returns
    -------
    StageResult; its details are {extractor: {"path", "skipped", "trustworthiness",
    "aligned_to", "seconds", "refit" (why UMAP was fitted, None for an update or a skip),
    "kept", "placed", "removed" (this run's rows)}}.
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


def read_previous(path: Path) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """(the fit state a map file carries, its table) — see `_one_map` — or None for a
    missing or unreadable file, one written before maps carried their state, or one whose
    item ids repeat."""
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError, ArrowException):
        return None
    state = table.attrs.get(STATE_KEY)
    if not isinstance(state, dict) or not isinstance(state.get("fit"), dict):
        return None
    if not table["item_id"].is_unique:
        return None
    return state, table


def _reference(config: Config, name: str, item_ids: np.ndarray) -> dict[str, Any] | None:
    """What `name`'s map is aligned onto: {"coords", "sha256", "fit"} of the reference map
    (its places, its file's hash, its fit's id), or None for the reference itself, a missing
    reference, or one of another catalog."""
    path = config.map_path(REFERENCE)
    manifest = read_manifest(path)
    if name == REFERENCE or not path.exists() or not manifest:
        return None
    table = pd.read_parquet(path)
    # A reference map of another catalog cannot be aligned row by row.
    if table["item_id"].astype(str).tolist() != item_ids.tolist():
        return None
    state = table.attrs.get(STATE_KEY) or {}
    return {
        "coords": table[["x", "y"]].to_numpy(np.float32),
        "sha256": str(manifest["sha256"]),
        "fit": (state.get("fit") or {}).get("id"),
    }


def _refit_reason(
    config: Config,
    previous: dict[str, Any] | None,
    model: str,
    aligned_to: str | None,
    reference_fit: str | None,
    placed_share: float,
    rows: int,
) -> str | None:
    """Why this map must be fitted anew rather than updated in place (None: update it)."""
    if previous is None:
        return "no previous map to update"
    fit = previous["fit"]
    if previous.get("model") != model:
        return "the embeddings come from another model"
    # Same settings, save the row count's part (a catalog that crosses
    # map_full_fit_max_items keeps its full fit and places its new items).
    if fit.get("params") != _params(config, aligned_to, int(fit.get("rows", 0))):
        return "the map's settings changed"
    moved = reference_fit is None or fit.get("reference_fit") != reference_fit
    if aligned_to is not None and moved:
        return f"the {aligned_to} map it is aligned onto was fitted anew"
    if fit.get("method") == "line" and rows >= 4:
        return "the fit was a placeholder for a catalog of fewer than 4 items"
    if placed_share > REFIT_PLACED_SHARE:
        return f"{placed_share:.0%} of the map placed since the fit (> {REFIT_PLACED_SHARE:.0%})"
    return None


def _fit_date(artifact: Path, fit_id: str | None) -> str | None:
    """When the fit `fit_id` was made, as the artifact's manifest recorded it; None when the
    manifest is gone or records another fit (a refit killed before its manifest: the update
    then dates the fit to itself, the nearest time known)."""
    fit = (read_manifest(artifact) or {}).get("fit") or {}
    return fit.get("date") if fit_id is not None and fit.get("id") == fit_id else None


def _fit_method(config: Config, rows: int) -> tuple[str, int]:
    """(how compute_map lays out `rows` items, how many of them UMAP is fitted on)."""
    if rows < 4:
        return "line", 0
    if rows > config.map_full_fit_max_items and config.map_fit_sample < rows:
        return "umap-sample", config.map_fit_sample
    return "umap", rows


def _save_sample(path: Path, fit_id: str, item_ids: np.ndarray, fit: SampledFit) -> None:
    """Keep a sampled fit beside its map: its id, its sample's item ids and reduced rows, and
    its PCA (20k rows x 50 dims: 4 MB at any catalog size). Written
    before the map file, so a map always finds the fit it names (a leftover of another fit
    is told apart by its id)."""
    arrays = {
        "fit_id": np.array(fit_id),
        "item_ids": np.asarray(item_ids[fit.rows], dtype=str),
        "reduced": fit.reduced,
    }
    if fit.components is not None:
        arrays.update(mean=fit.mean, components=fit.components)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    write_manifest(path, STAGE, {"fit_id": fit_id}, {})


def _read_sample(path: Path, fit_id: str, item_ids: np.ndarray) -> SampledFit | None:
    """The sampled fit `fit_id` kept beside its map, its sample as rows of `item_ids` (the
    removed items left out); None when there is none for this fit or none of it is left."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["fit_id"]) != fit_id:
                return None
            rows = match_rows(item_ids, saved["item_ids"])
            mean, components = saved.get("mean"), saved.get("components")
            reduced = saved["reduced"]
    except (OSError, ValueError, KeyError):
        return None
    if len(reduced) != len(rows):
        return None
    left = np.flatnonzero(rows >= 0)
    left = left[np.argsort(rows[left], kind="stable")]
    if len(left) == 0:
        return None
    return SampledFit(rows[left].astype(np.int64), mean, components, reduced[left])


def _one_map(
    config: Config, name: str, item_ids: np.ndarray, catalog_hash: str, force: bool
) -> dict[str, Any]:
    """Build, update or skip one extractor's map; returns its row of the stage's details.

    The map file carries its fit's state in its parquet metadata (STATE_KEY; the manifest
    repeats it): {"model", "fit": {"id", "method", "params", "rows", "umap_rows",
    "trustworthiness", "reference_fit"}, "placed_since_fit"}. An update reads the state from
    the previous map file itself, not its manifest, so a run killed between the two writes
    is finished by the next one exactly as it would have finished. The fit's date is in the
    manifest only (`_fit_date`): with it in the file a refit of unchanged inputs would change
    the file's bytes, and every stage keyed on them would redo its work.
    """
    start = time.perf_counter()
    path, sample_path = config.map_path(name), config.map_sample_path(name)
    n = len(item_ids)
    vectors, vectors_hash = read_embeddings(config, name, n_rows=n, map_large=True)
    model = model_id(config, name)
    inputs = {"catalog": catalog_hash, embeddings_key(name): vectors_hash}
    reference = _reference(config, name, item_ids)
    aligned_to = None if reference is None else REFERENCE
    if reference is not None:
        inputs[f"maps/{REFERENCE}"] = reference["sha256"]
    params = _params(config, aligned_to, n)
    row = {"path": str(path), "aligned_to": aligned_to}
    if not force and is_fresh(path, STAGE, params, inputs):
        manifest = read_manifest(path) or {}
        print(f"map {name}: up to date, skipped ({path})")
        return {
            **row,
            "skipped": True,
            "trustworthiness": manifest.get("trustworthiness"),
            "seconds": 0.0,
            "refit": None,
            "kept": n,
            "placed": 0,
            "removed": 0,
        }

    found = None if force else read_previous(path)
    previous = None if found is None else found[0]
    # Each current row's row in the previous map (-1: a new item).
    source = np.full(n, -1, dtype=np.int64)
    old_coords = np.empty((0, 2), dtype=np.float32)
    if found is not None:
        old = found[1]
        source = match_rows(old["item_id"], item_ids)
        old_coords = old[["x", "y"]].to_numpy(np.float32)
    keep = source >= 0
    kept = int(keep.sum())
    if kept == 0:
        previous = None  # nothing in common: nothing to keep in place
    removed = 0 if previous is None else len(old_coords) - kept
    placed_since = 0 if previous is None else int(previous.get("placed_since_fit", 0)) + n - kept
    reason = (
        "forced"
        if force
        else _refit_reason(
            config,
            previous,
            model,
            aligned_to,
            None if reference is None else reference["fit"],
            placed_since / max(n, 1),
            n,
        )
    )

    if reason is None:
        assert previous is not None
        coords = np.empty((n, 2), dtype=np.float32)
        coords[keep] = old_coords[source[keep]]
        new_rows = np.flatnonzero(~keep)
        if len(new_rows):
            sample = None
            if previous["fit"].get("method") == "umap-sample":
                sample = _read_sample(sample_path, previous["fit"]["id"], item_ids)
            coords[new_rows] = _place_update(config, vectors, coords, new_rows, keep, sample)
        fit = previous["fit"]
        placed = len(new_rows)
        date = _fit_date(path, fit.get("id"))
    else:
        method, umap_rows = _fit_method(config, n)
        settings = {
            "pca_dims": config.map_pca_dims,
            "n_neighbors": config.map_neighbors,
            "min_dist": config.map_min_dist,
            "seed": config.seed,
        }
        # The same inputs and settings give the same map, so they name the fit.
        fit_id = sha256_json({"stage": STAGE, "params": params, "inputs": inputs})[:16]
        if method == "umap-sample":
            coords, sample = fit_sampled_map(vectors, **settings, fit_sample=config.map_fit_sample)
            _save_sample(sample_path, fit_id, item_ids, sample)
        else:
            coords = compute_map(vectors, **settings, full_fit_max_items=None)
            sample_path.unlink(missing_ok=True)
            manifest_path(sample_path).unlink(missing_ok=True)
        if reference is not None:
            coords = align_procrustes(coords, reference["coords"])
        fit = {
            "id": fit_id,
            "method": method,
            "params": params,
            "rows": n,
            "umap_rows": umap_rows,
            "reference_fit": None if reference is None else reference["fit"],
        }
        kept = removed = placed = placed_since = 0
        date = None
    date = date or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # Recomputed on every write, update or fit: on a sample of TRUST_MAX_ITEMS rows at most,
    # so it costs the same at any catalog size, and it judges the map as it now is.
    trust = map_trustworthiness(vectors, coords, k=10, seed=config.seed)
    trust_value = None if np.isnan(trust) else round(float(trust), 4)
    if reason is not None:
        fit["trustworthiness"] = trust_value
    state = {"model": model, "fit": fit, "placed_since_fit": placed_since}
    table = pd.DataFrame({"item_id": item_ids, "x": coords[:, 0], "y": coords[:, 1]})
    table.attrs[STATE_KEY] = state
    write_parquet(table, path)
    extra = {
        "trustworthiness": trust_value,
        "trustworthiness_k": 10,
        "aligned_to": aligned_to,
        "rows": len(table),
        **state,
        "fit": {**fit, "date": date},
        "placed_share": round(placed_since / max(n, 1), 4),
        "refit_placed_share": REFIT_PLACED_SHARE,
        "made_by": "fit" if reason is not None else "update",
        "refit_reason": reason,
        "update": {"kept": kept, "placed": placed, "removed": removed},
    }
    write_manifest(path, STAGE, params, inputs, extra=extra)
    seconds = time.perf_counter() - start
    how = (
        f"fitted ({reason})"
        if reason is not None
        else f"updated in place: {kept} kept, {placed} placed, {removed} removed, "
        f"{placed_since} placed since the fit of {date}"
    )
    print(
        f"map {name}: {len(table)} items {how}, trustworthiness@10 {trust:.3f}, "
        f"aligned to {aligned_to or '-'}, {seconds:.1f}s -> {path}"
    )
    return {
        **row,
        "skipped": False,
        "trustworthiness": trust_value,
        "seconds": seconds,
        "refit": reason,
        "kept": kept,
        "placed": placed,
        "removed": removed,
    }
