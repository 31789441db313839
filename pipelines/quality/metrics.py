"""Retrieval metrics on arrays: precision, recall, average precision, per-class precision,
set overlap and latency percentiles. Pure numpy; the evaluate stage, the app and the bench use
these and no other copies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipelines.search.topk import top_k

# mAP is reported at 10, as is the per-class table (the app's default page of neighbours).
MAP_K = 10
PER_CLASS_K = 10


# --- metrics on a relevance matrix: relevant[i, j] = result j of query i has its label ---
def precision_at(relevant: np.ndarray, k: int) -> np.ndarray:
    """(m,) precision@k: share of the first k results that are relevant (missing = miss)."""
    return relevant[:, :k].sum(axis=1) / k


def recall_at(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """(m,) recall@k: relevant results in the first k over all relevant gallery items.

    `n_relevant` is (m,) the number of gallery items sharing each query's label (> 0).
    """
    return relevant[:, :k].sum(axis=1) / np.asarray(n_relevant, dtype=np.float64)


def average_precision(relevant: np.ndarray, n_relevant: np.ndarray, k: int = MAP_K) -> np.ndarray:
    """(m,) AP@k: mean of precision@i over the relevant ranks i <= k, over min(k, n_relevant).

    The denominator min(k, n_relevant) makes a perfect top-k score 1.0 even for classes with
    fewer than k gallery items. Its mean over queries is mAP@k.
    """
    top = relevant[:, :k].astype(np.float64)
    ranks = np.arange(1, top.shape[1] + 1)
    precision_at_rank = np.cumsum(top, axis=1) / ranks
    denominator = np.minimum(k, np.asarray(n_relevant, dtype=np.float64))
    return (precision_at_rank * top).sum(axis=1) / denominator


def per_class_precision(
    relevant: np.ndarray, query_labels: Sequence[str] | np.ndarray, k: int = PER_CLASS_K
) -> pd.DataFrame:
    """Precision@k averaged over the queries of each label: columns label, n_queries, p@k."""
    frame = pd.DataFrame(
        {"label": np.asarray(query_labels, dtype=object), f"p@{k}": precision_at(relevant, k)}
    )
    grouped = frame.groupby("label", sort=True)[f"p@{k}"]
    table = pd.DataFrame({"n_queries": grouped.size(), f"p@{k}": grouped.mean()})
    return table.reset_index()


def latency_stats(seconds: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Median and 95th percentile of per-query times, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if len(ms) == 0:
        return {"latency_ms_median": float("nan"), "latency_ms_p95": float("nan")}
    return {
        "latency_ms_median": float(np.median(ms)),
        "latency_ms_p95": float(np.percentile(ms, 95)),
    }


def precision_at_k(
    retrieved_labels: Sequence[object], query_label: object, k: int | None = None
) -> float:
    """Precision@k of one query from its neighbours' labels (`precision_at` on one row).

    Missing results (a pool smaller than k) count as misses; k defaults to the number
    retrieved. Returns NaN when the query has no label or k is 0.
    """
    k = len(retrieved_labels) if k is None else k
    if k == 0 or query_label is None or pd.isna(query_label):
        return float("nan")
    labels = list(retrieved_labels)[:k]
    relevant = np.zeros((1, k), dtype=bool)
    relevant[0, : len(labels)] = [label == query_label for label in labels]
    return float(precision_at(relevant, k)[0])


def gallery_precision(
    queries: np.ndarray,
    query_labels: Sequence[object] | np.ndarray,
    gallery: np.ndarray,
    gallery_labels: Sequence[object] | np.ndarray,
    k: int,
) -> float:
    """Mean precision@k of unit `queries` (m, d) searched by exact cosine
    (`pipelines.search.topk.top_k`) among unit `gallery` rows (n, d), none of them a query.
    A result is relevant when its label is the query's; a gallery smaller than k counts its
    missing results as misses."""
    rows, _ = top_k(np.asarray(queries, np.float32), np.asarray(gallery, np.float32), k, None)
    found = np.asarray(gallery_labels, dtype=object)[np.maximum(rows, 0)]
    relevant = (found == np.asarray(query_labels, dtype=object)[:, None]) & (rows >= 0)
    return float(precision_at(relevant, k).mean())


def jaccard_at_k(a_ids: Sequence[str], b_ids: Sequence[str]) -> float:
    """|A ∩ B| / |A ∪ B| of two neighbour lists (1.0 for two empty lists)."""
    a, b = set(a_ids), set(b_ids)
    union = a | b
    return len(a & b) / len(union) if union else 1.0
