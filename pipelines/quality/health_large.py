"""Catalog health of a large catalog (from `ANN_MIN_ITEMS` items), through the approximate
index instead of every pair or every item's exact neighbours, which at 1M x 2048 would be
~10^15 multiply-adds.

- Near-duplicates: pairs of items in the same inverted list of the IVF index (the items
  whose reduced vectors lie nearest the same centroid), scored first in the index's reduced
  space and then exactly with the full vectors. A pair split across two lists is missed,
  the same approximation an IVF search makes; the list stays complete above its floor among
  the pairs it looks at.
- Likely mislabelled and outliers: on a seeded sample of `SAMPLE` items, each searched
  against the whole catalog through the index (the neighbours every door would find).

The tables have the same columns as the exact ones (`health_lists.health_tables`); the manifests
record the sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Config
from pipelines.quality.health_lists import (
    DUPLICATE_COLUMNS,
    MISLABELLED_COLUMNS,
    OUTLIER_COLUMNS,
    DuplicatePairs,
    likely_mislabelled,
    outlier_scores,
    prune_pairs,
)
from pipelines.search.approximate import AnnIndex, take_rows

# Items whose neighbours are searched for the mislabelled and outlier lists.
SAMPLE = 20_000
# Pairs are kept for exact scoring from this far below the floor in the reduced space (the
# PCA keeps most, not all, of a pair's similarity).
REDUCED_MARGIN = 0.05
# Rows of one inverted list scored at once against the rest of it.
BLOCK_ROWS = 1024
# Candidates (by similarity in the reduced space) scored exactly per pair kept, per block.
CANDIDATES_PER_PAIR = 4
# Queries searched at once.
QUERY_CHUNK = 2_000


def list_pairs(
    ann: AnnIndex, vectors: np.ndarray, min_similarity: float, max_pairs: int
) -> DuplicatePairs:
    """Near-duplicate pairs within each inverted list of an IVF index (see the module).

    A list is scored a block of `BLOCK_ROWS` rows at a time against the rest of the list
    (a catalog of near-copies can put tens of thousands of items in one list: its whole
    similarity matrix would not fit in memory), and at most `CANDIDATES_PER_PAIR *
    max_pairs` of a block's most similar pairs go on to exact scoring."""
    floor = float(min_similarity)
    found_rows: list[np.ndarray] = []
    found_sims: list[np.ndarray] = []
    count = 0
    cap = CANDIDATES_PER_PAIR * max_pairs
    for ids, reduced in ann.inverted_lists():
        reduced /= np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)
        size = len(ids)
        for start in range(0, size, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, size)
            sims = reduced[start:stop] @ reduced[start:].T  # this block against the rest
            sims[np.tril_indices(stop - start, k=0, m=size - start)] = -np.inf  # a < b only
            cut = floor - REDUCED_MARGIN
            if np.count_nonzero(sims >= cut) > cap:
                cut = max(cut, float(np.partition(sims, -cap, axis=None)[-cap]))
            a, b = np.nonzero(sims >= cut)
            if len(a) == 0:
                continue
            rows = np.stack([ids[a + start], ids[b + start]], axis=1)
            rows.sort(axis=1)
            exact = _pair_sims(vectors, rows)
            keep = exact >= floor
            if keep.any():
                found_rows.append(rows[keep])
                found_sims.append(exact[keep])
                count += int(keep.sum())
            if count > 2 * max_pairs:
                kept, values, floor = prune_pairs(found_rows, found_sims, max_pairs, floor)
                found_rows, found_sims, count = [kept], [values], len(values)
    rows, values, floor = prune_pairs(found_rows, found_sims, max_pairs, floor)
    order = np.lexsort((rows[:, 1], rows[:, 0], -values))
    return DuplicatePairs(rows[order], values[order], floor)


def _pair_sims(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Exact cosine of each pair of (unit) rows, reading each row once."""
    rows, where = np.unique(pairs, return_inverse=True)
    full = np.asarray(take_rows(vectors, rows), dtype=np.float32)
    where = where.reshape(pairs.shape)
    return np.einsum("ij,ij->i", full[where[:, 0]], full[where[:, 1]]).astype(np.float32)


def sampled_neighbours(
    ann: AnnIndex, vectors: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other items of each of `rows`, through the index, chunk by chunk."""
    out_rows, out_sims = [], []
    for start in range(0, len(rows), QUERY_CHUNK):
        part = rows[start : start + QUERY_CHUNK]
        queries = np.asarray(take_rows(vectors, part), dtype=np.float32)
        near, sims = ann.search(queries, k, exclude_rows=part)
        out_rows.append(near)
        out_sims.append(sims)
    return np.concatenate(out_rows), np.concatenate(out_sims)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of `size` of n rows, sorted (all of them when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def health_tables_large(
    vectors: np.ndarray,
    ann: AnnIndex,
    item_ids: Sequence[str],
    labels: Sequence[object] | None,
    config: Config,
    sample: int = SAMPLE,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The three health lists of a large catalog (see the module), and what the manifests
    record: {"floor", "sampled", "method"}."""
    ids = np.asarray(item_ids, dtype=object).astype(str)
    label_values = [None] * len(ids) if labels is None else list(labels)
    if ann.method != "ivf":
        raise ValueError(f"a large catalog's health needs an IVF index, not {ann.method}")
    pairs = list_pairs(ann, vectors, config.health_min_similarity, config.health_max_pairs)
    duplicates = pd.DataFrame(
        {
            "item_a": ids[pairs.rows[:, 0]] if len(pairs.rows) else [],
            "item_b": ids[pairs.rows[:, 1]] if len(pairs.rows) else [],
            "similarity": pairs.similarities.astype(np.float32),
        },
        columns=DUPLICATE_COLUMNS,
    )
    rows = sample_rows(len(ids), sample, config.seed)
    near_rows, near_sims = sampled_neighbours(ann, vectors, rows, config.health_neighbors)
    wrong = likely_mislabelled(label_values, near_rows, near_sims, rows=rows)
    mislabelled = pd.DataFrame(
        {
            "item_id": ids[wrong["row"].to_numpy(np.int64)],
            **{c: wrong[c].to_numpy() for c in MISLABELLED_COLUMNS[1:]},
        },
        columns=MISLABELLED_COLUMNS,
    )
    scores = outlier_scores(np.nan_to_num(near_sims, nan=0.0))
    order = np.argsort(scores, kind="stable")
    outliers = pd.DataFrame(
        {
            "item_id": ids[rows[order]],
            "label": np.asarray(label_values, dtype=object)[rows[order]],
            "mean_similarity": scores[order],
            "rank": np.arange(1, len(order) + 1),
        },
        columns=OUTLIER_COLUMNS,
    )
    record = {"floor": pairs.floor, "sampled": int(len(rows)), "method": "approximate"}
    return duplicates, mislabelled, outliers, record
