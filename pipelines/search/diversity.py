"""Diverse results: maximal-marginal-relevance re-ranking of a query's nearest candidates, and
how diverse and precise a result list is. Pure functions on unit vectors; writes nothing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipelines.errors import LookalikeError
from pipelines.search.index import Index, SearchResult
from pipelines.search.topk import one_blas_thread

# Candidates re-ranked per query: a few times k, so MMR can reach past a run of near-duplicates,
# but few enough that every result stays close to the query.
POOL_FACTOR = 4
POOL_MIN = 30


def check_diversity(diversity: object) -> float:
    """`diversity` as a float in [0, 1]; anything else is an error naming the rule."""
    rule = f"diversity must be between 0 (plain nearest neighbours) and 1, got {diversity!r}"
    try:
        value = float(diversity)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LookalikeError(rule) from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise LookalikeError(rule)
    return value


def pool_size(k: int, diversity: float, most: int) -> int:
    """How many nearest candidates to fetch for a list of k: k itself when diversity is 0,
    else max(POOL_FACTOR * k, POOL_MIN), never more than `most` (the items available)."""
    if check_diversity(diversity) == 0.0:
        return min(k, most)
    return min(max(POOL_FACTOR * k, POOL_MIN, k), most)


def mmr_order(
    query_similarity: np.ndarray, candidates: np.ndarray, k: int, diversity: float
) -> np.ndarray:
    """Maximal marginal relevance: pick k of the candidates, one at a time.

    Each step takes the candidate maximising
        (1 - diversity) * sim(query, c) - diversity * max over picked p of sim(c, p).

    Parameters
    ----------
    query_similarity : (n,) cosine of each candidate to the query (best first is not needed).
    candidates : (n, d) unit vectors of the candidates.
    k : how many to pick (at most n).
    diversity : 0 returns the candidates by similarity alone (the plain search order, ties kept
        in input order); 1 ignores the query after the first pick.

    Returns
    -------
    (min(k, n),) int64 positions into the candidates, in picking order.
    """
    diversity = check_diversity(diversity)
    relevance = np.asarray(query_similarity, dtype=np.float64)
    n = len(relevance)
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if diversity == 0.0:
        return np.argsort(-relevance, kind="stable")[:k].astype(np.int64)
    vectors = np.asarray(candidates, dtype=np.float64)
    if vectors.shape[0] != n:
        raise LookalikeError(f"{n} similarities for {vectors.shape[0]} candidate vectors")
    # A small (n, n) product: one BLAS thread is ~50x faster than waking a thread pool for it
    # on a busy machine (8.5 ms -> 0.16 ms for 40 x 2048 under load).
    with one_blas_thread():
        pair = vectors @ vectors.T
    picked: list[int] = []
    # Largest similarity of each candidate to anything picked so far.
    redundancy = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for step in range(k):
        penalty = np.zeros(n) if step == 0 else redundancy
        score = (1.0 - diversity) * relevance - diversity * penalty
        score[~available] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, pair[best])
    return np.asarray(picked, dtype=np.int64)


def _mmr_positions(
    similarities: np.ndarray, rows: np.ndarray, index: Index, k: int, diversity: float
) -> np.ndarray:
    """Positions of the k candidates (best first, catalog `rows`) MMR keeps, in its order; the
    first k unchanged at diversity 0."""
    diversity = check_diversity(diversity)
    if diversity == 0.0 or len(rows) == 0:
        return np.arange(min(k, len(rows)))
    sims = np.asarray(similarities, dtype=np.float64)
    return np.asarray(mmr_order(sims, index.row_vectors(rows), k, diversity), dtype=np.int64)


def diversify_result(result: SearchResult, index: Index, k: int, diversity: float) -> SearchResult:
    """Re-rank a search result (best first) by MMR and keep k of it: `diversify_table` on the
    arrays, for doors that need no table (the HTTP service)."""
    rows = np.asarray(result.rows, dtype=np.int64)
    order = _mmr_positions(result.similarities, rows, index, k, diversity)
    return SearchResult(
        item_ids=np.asarray(result.item_ids)[order],
        similarities=np.asarray(result.similarities)[order],
        rows=rows[order],
    )


def diversify_table(table: pd.DataFrame, index: Index, k: int, diversity: float) -> pd.DataFrame:
    """Re-rank a neighbours table (`pipelines.search.similar.neighbours_table`, best first) by MMR
    and keep k rows, ranks renumbered 1..k; similarity stays the cosine to the query.

    Parameters
    ----------
    table : candidates of one query (usually `pool_size(k, diversity, ...)` rows).
    index : the index the table came from (its vectors give candidate-to-candidate cosines).
    k : rows to keep.
    diversity : see `mmr_order`; 0 keeps the table's first k rows unchanged.
    """
    if check_diversity(diversity) == 0.0 or table.empty:
        return table.head(k).reset_index(drop=True)
    rows = index.rows_of(table["item_id"].astype(str).tolist())
    order = _mmr_positions(table["similarity"].to_numpy(np.float64), rows, index, k, diversity)
    out = table.iloc[order].reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out


def intra_list_similarity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine of a result list's (m, d) unit vectors (NaN for fewer than 2)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    m = len(vectors)
    if m < 2:
        return float("nan")
    gram = vectors @ vectors.T
    return float((gram.sum() - np.trace(gram)) / (m * (m - 1)))


def diversity_table(
    index: Index,
    labels: Sequence[object],
    settings: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5),
    k: int = 10,
    queries: Sequence[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Intra-list similarity and precision@k of the top k at several diversity settings.

    Every query is a catalog row searched against the rest of the catalog (exact cosine, itself
    excluded), its nearest `pool_size` candidates re-ranked by `mmr_order`.

    Parameters
    ----------
    index : an extractor's index.
    labels : (n,) label of each catalog row (a neighbour with the query's label is a hit).
    settings : diversity values to measure.
    k : list length.
    queries : catalog rows to query; default every row.

    Returns
    -------
    DataFrame: diversity, ils@k (mean pairwise cosine of the top k, averaged over queries),
    p@k (mean share of the top k with the query's label), mean_similarity (mean cosine of the
    top k to their query), queries.
    """
    from pipelines.search.topk import top_k

    labels = np.asarray(labels, dtype=object)
    rows = np.arange(index.size) if queries is None else np.asarray(queries, dtype=np.int64)
    most = index.size - 1
    width = max(pool_size(k, d, most) for d in settings)
    found, sims = top_k(index.vectors[rows], index.vectors, width, rows)
    out = []
    for diversity in settings:
        pool = pool_size(k, diversity, most)
        ils, precision, closeness = [], [], []
        for query, cand, sim in zip(rows, found, sims, strict=True):
            cand, sim = cand[:pool], sim[:pool]
            order = mmr_order(sim, index.row_vectors(cand), k, diversity)
            chosen = cand[order]
            with one_blas_thread():
                ils.append(intra_list_similarity(index.row_vectors(chosen)))
            precision.append(float(np.mean(labels[chosen] == labels[query])))
            closeness.append(float(np.mean(sim[order])))
        out.append(
            {
                "diversity": float(diversity),
                f"ils@{k}": float(np.mean(ils)),
                f"p@{k}": float(np.mean(precision)),
                "mean_similarity": float(np.mean(closeness)),
                "queries": len(rows),
            }
        )
    return pd.DataFrame(out)
