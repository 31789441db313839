"""The three catalog-health lists computed exactly from one extractor's vectors:
near-duplicate pairs (without an n x n matrix), likely mislabelled items (their neighbours
vote for another label) and outliers (nothing looks like them). The health stage
(`health.py`) writes them; `health_large.py` builds the same lists through the approximate
index for a large catalog, from the pieces here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.config import Config
from pipelines.search.topk import top_k

# Rows of the similarity matrix computed at once: 1,024 x 3,781 float32 is 15 MB.
BLOCK_ROWS = 1024
DUPLICATE_COLUMNS = ["item_a", "item_b", "similarity"]
MISLABELLED_COLUMNS = [
    "item_id",
    "label",
    "suggested",
    "evidence",
    "own_share",
    "suggested_share",
    "mean_similarity",
]
OUTLIER_COLUMNS = ["item_id", "label", "mean_similarity", "rank"]


@dataclass(frozen=True)
class DuplicatePairs:
    """Every pair of rows whose cosine similarity is at least `floor`, most similar first.

    Attributes
    ----------
    rows : (m, 2) int64 row pairs, a < b.
    similarities : (m,) float32 cosine similarities.
    floor : the threshold the list is complete above: `min_similarity`, raised to the
        `max_pairs`-th similarity when more pairs than that pass it.
    """

    rows: np.ndarray
    similarities: np.ndarray
    floor: float


def near_duplicate_pairs(
    vectors: np.ndarray,
    min_similarity: float,
    max_pairs: int,
    block_rows: int = BLOCK_ROWS,
) -> DuplicatePairs:
    """All pairs of unit rows with cosine similarity >= a floor, without an n x n matrix.

    Parameters
    ----------
    vectors : (n, d) unit rows (an extractor's embeddings).
    min_similarity : the lowest similarity kept.
    max_pairs : keep at most about this many pairs: when more pass `min_similarity`, the
        floor rises to the `max_pairs`-th highest similarity (ties at the floor all kept), so
        the list stays *complete* above its floor.
    block_rows : rows of the similarity matrix computed at once.

    Returns
    -------
    DuplicatePairs, most similar first.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x)
    floor = float(min_similarity)
    found_rows: list[np.ndarray] = []
    found_sims: list[np.ndarray] = []
    count = 0
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        sims = x[start:stop] @ x.T
        # Only pairs a < b: each pair once, never an item with itself.
        sims[np.tril_indices(stop - start, k=start, m=n)] = -np.inf
        a, b = np.nonzero(sims >= floor)
        if len(a):
            found_rows.append(np.stack([a + start, b], axis=1).astype(np.int64))
            found_sims.append(sims[a, b].astype(np.float32))
            count += len(a)
        if count > 2 * max_pairs:
            rows, values, floor = prune_pairs(found_rows, found_sims, max_pairs, floor)
            found_rows, found_sims, count = [rows], [values], len(values)
    rows, values, floor = prune_pairs(found_rows, found_sims, max_pairs, floor)
    order = np.lexsort((rows[:, 1], rows[:, 0], -values))
    return DuplicatePairs(rows[order], values[order], floor)


def prune_pairs(
    rows: list[np.ndarray], sims: list[np.ndarray], max_pairs: int, floor: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Pairs at or above the max_pairs-th similarity (and the floor); the new floor."""
    all_rows = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
    all_sims = np.concatenate(sims) if sims else np.zeros(0, np.float32)
    if len(all_sims) > max_pairs:
        floor = max(floor, float(np.partition(all_sims, -max_pairs)[-max_pairs]))
        keep = all_sims >= floor
        all_rows, all_sims = all_rows[keep], all_sims[keep]
    return all_rows, all_sims, floor


def knn(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows by cosine (`pipelines.search.topk.top_k`, each row
    excluded from its own list): (rows (n, k) int64, similarities (n, k)), best first, ties
    to the lower row. k is clipped to n - 1."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    k = max(0, min(int(k), len(x) - 1))
    return top_k(x, x, k, exclude=np.arange(len(x)))


def likely_mislabelled(
    labels: Sequence[object],
    neighbour_rows: np.ndarray,
    neighbour_sims: np.ndarray,
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """Items whose nearest neighbours mostly carry another label, strongest evidence first.

    Each neighbour votes for its label with its similarity (clipped at 0). An item is listed
    when the most-voted *other* label gets more than its own label does; `evidence` is that
    label's share of the votes minus its own label's share (0..1], ties broken by the mean
    similarity to the neighbours (closer neighbours, surer evidence).

    Parameters
    ----------
    labels : one label per row (None or NaN: unlabelled, never listed, never a vote).
    neighbour_rows, neighbour_sims : from `knn`.
    rows : the row each line of `neighbour_rows` belongs to (default: line i is row i; a
        large catalog's health passes the rows of its sample).

    Returns
    -------
    DataFrame with row, label, suggested, evidence, own_share, suggested_share,
    mean_similarity.
    """
    values = np.array(["" if _missing(v) else str(v) for v in labels], dtype=object)
    records = []
    owners = np.arange(len(neighbour_rows)) if rows is None else np.asarray(rows, np.int64)
    for row, near, sims in zip(owners.tolist(), neighbour_rows, neighbour_sims, strict=True):
        found = near >= 0  # an approximate search may find fewer than k
        near, sims = near[found], sims[found]
        own = values[row]
        if not own or len(near) == 0:
            continue
        weights = np.clip(sims.astype(np.float64), 0.0, None)
        votes: dict[str, float] = {}
        for label, weight in zip(values[near], weights, strict=True):
            if label:
                votes[label] = votes.get(label, 0.0) + weight
        total = sum(votes.values())
        if total <= 0:
            continue
        others = {label: v for label, v in votes.items() if label != own}
        if not others:
            continue
        suggested = max(sorted(others), key=lambda label: others[label])
        own_share = votes.get(own, 0.0) / total
        suggested_share = others[suggested] / total
        if suggested_share <= own_share:
            continue
        records.append(
            (
                row,
                own,
                suggested,
                suggested_share - own_share,
                own_share,
                suggested_share,
                float(np.mean(sims)),
            )
        )
    table = pd.DataFrame(
        records,
        columns=["row", *MISLABELLED_COLUMNS[1:]],
    )
    return table.sort_values(
        ["evidence", "mean_similarity", "row"], ascending=[False, False, True], kind="stable"
    ).reset_index(drop=True)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def outlier_scores(neighbour_sims: np.ndarray) -> np.ndarray:
    """Each item's mean similarity to its nearest neighbours: low means nothing in the catalog
    looks like it (an outlier)."""
    if neighbour_sims.shape[1] == 0:
        return np.ones(len(neighbour_sims), np.float32)
    return neighbour_sims.mean(axis=1).astype(np.float32)


def health_tables(
    vectors: np.ndarray,
    item_ids: Sequence[str],
    labels: Sequence[object] | None,
    config: Config,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, float]:
    """The three health lists of one extractor's embeddings.

    Returns
    -------
    (duplicates: item_a, item_b, similarity — most similar first;
    mislabelled: MISLABELLED_COLUMNS — strongest evidence first (empty without labels);
    outliers: OUTLIER_COLUMNS — every item, most isolated first;
    the duplicates' floor (see `near_duplicate_pairs`)).
    """
    ids = np.asarray(item_ids, dtype=object).astype(str)
    label_values = [None] * len(ids) if labels is None else list(labels)
    pairs = near_duplicate_pairs(vectors, config.health_min_similarity, config.health_max_pairs)
    duplicates = pd.DataFrame(
        {
            "item_a": ids[pairs.rows[:, 0]] if len(pairs.rows) else [],
            "item_b": ids[pairs.rows[:, 1]] if len(pairs.rows) else [],
            "similarity": pairs.similarities.astype(np.float32),
        },
        columns=DUPLICATE_COLUMNS,
    )
    near_rows, near_sims = knn(vectors, config.health_neighbors)
    wrong = likely_mislabelled(label_values, near_rows, near_sims)
    mislabelled = pd.DataFrame(
        {
            "item_id": ids[wrong["row"].to_numpy(np.int64)],
            **{c: wrong[c].to_numpy() for c in MISLABELLED_COLUMNS[1:]},
        },
        columns=MISLABELLED_COLUMNS,
    )
    scores = outlier_scores(near_sims)
    order = np.argsort(scores, kind="stable")
    outliers = pd.DataFrame(
        {
            "item_id": ids[order],
            "label": np.asarray(label_values, dtype=object)[order],
            "mean_similarity": scores[order],
            "rank": np.arange(1, len(order) + 1),
        },
        columns=OUTLIER_COLUMNS,
    )
    return duplicates, mislabelled, outliers, pairs.floor
