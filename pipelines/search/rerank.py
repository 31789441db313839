"""Re-ranking a query's nearest candidates: alpha-query-expansion (alpha-QE), optionally over
database-side augmented vectors (DBA). Pure numpy over an `Index`'s vectors; writes nothing.

alpha-QE (Radenovic et al., 2018): the query is replaced by the normalised sum of itself and
its m nearest candidates, each weighted by its similarity to the query raised to alpha, and
the candidates are scored again against that expanded query. Items that look like the
query's closest neighbours rise, isolated look-alikes of the query alone fall.

DBA: each catalog item is represented by the normalised weighted sum of itself and its own
m nearest catalog items (same weights). The neighbour graph it needs, (n, m) rows and
similarities, is built once per index and cached; the augmented vectors themselves are
computed only for the candidates of a query, so memory stays O(n * m), not another (n, d)
copy of the catalog.

`RerankedIndex` wraps an `Index` from the outside: its `search`/`search_rows` fetch a
shortlist of `SHORTLIST` candidates with the wrapped index's own search (so every strategy,
exact, cluster and category, and the approximate index work unchanged), re-order that
shortlist, and keep k. The similarity it returns stays the cosine of the original query to
each item; only the order changes.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.errors import LookalikeError
from pipelines.search.index import Index, SearchResult
from pipelines.search.topk import check_k, one_blas_thread, unit_queries

# Candidates re-ranked per query: far enough down the list for QE to pull in items that plain
# search ranks past k, few enough that re-scoring them costs well under a millisecond.
SHORTLIST = 100


@dataclass(frozen=True)
class RerankSettings:
    """How to re-rank.

    Attributes
    ----------
    qe_m : nearest candidates added to the query (alpha-QE); 0 = no expansion.
    alpha : weight exponent: a neighbour counts sim**alpha (0 = plain mean).
    dba_m : nearest catalog items averaged into each catalog vector (DBA); 0 = no DBA.
    shortlist : candidates re-ordered: the index is asked for max(k, shortlist), and only
        the first `shortlist` of them change places.
    """

    qe_m: int = 5
    alpha: float = 3.0
    dba_m: int = 0
    shortlist: int = SHORTLIST

    def __post_init__(self) -> None:
        for name in ("qe_m", "dba_m", "shortlist"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise LookalikeError(
                    f"re-ranking {name} must be a whole number >= 0, got {value!r}"
                )
        if self.shortlist < 1:
            raise LookalikeError(f"re-ranking shortlist must be >= 1, got {self.shortlist}")
        if not (np.isfinite(self.alpha) and self.alpha >= 0):
            raise LookalikeError(f"re-ranking alpha must be a number >= 0, got {self.alpha!r}")


# Chosen per extractor on the validation split only: 341 validation photos searched against
# the 3,068 train items (exact strategy), the best P@10 of a grid qe_m in {0,1,2,3,5,10,15,20}
# x alpha in {0,1,3} x dba_m in {0,1,2,3,5,8} (`pipelines.bench.rerank.validation_grid`).
# Gains over plain search there: +0.027, +0.017, +0.012. An extractor not listed (another
# catalog's head, say) uses DEFAULT_SETTINGS, plain alpha-QE.
DEFAULT_SETTINGS = RerankSettings()
TUNED: dict[str, RerankSettings] = {
    "inception_v3": RerankSettings(qe_m=3, alpha=1.0, dba_m=8),
    "custom_cnn": RerankSettings(qe_m=15, alpha=1.0, dba_m=0),
    "inception_head": RerankSettings(qe_m=3, alpha=1.0, dba_m=8),
}
# DBA's neighbour graph is one search per catalog item: 0.3-3 s at 3.8k items, but 20-182 s at
# 100k (through the ANN index, on 2 busy cores), paid again by every process that loads the
# index. Above this size, QE alone: the best setting without DBA of the same validation grid
# (+0.009 for both on validation; on test +0.001 for InceptionV3, whose gain is DBA's, and
# +0.009 for the head). Saving the graph as an artifact would lift this limit.
DBA_MAX_ITEMS = 20_000
TUNED_WITHOUT_DBA: dict[str, RerankSettings] = {
    "inception_v3": RerankSettings(qe_m=1, alpha=3.0, dba_m=0),
    "inception_head": RerankSettings(qe_m=20, alpha=0.0, dba_m=0),
}


def settings_for(name: str, size: int = 0) -> RerankSettings:
    """The re-ranking settings of extractor `name` for a catalog of `size` items: its tuned
    ones (without DBA above DBA_MAX_ITEMS items), else DEFAULT_SETTINGS."""
    settings = TUNED.get(name, DEFAULT_SETTINGS)
    if size > DBA_MAX_ITEMS and settings.dba_m > 0:
        fallback = RerankSettings(settings.qe_m, settings.alpha, 0, settings.shortlist)
        return TUNED_WITHOUT_DBA.get(name, fallback)
    return settings


def check_rerank(value: object) -> bool:
    """`value` as the on/off switch of re-ranking; anything but a bool is an error."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise LookalikeError(f"rerank must be true or false, got {value!r}")


# --- the pieces, on arrays ---
def neighbour_graph(index: Index, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each catalog item's m nearest other items, by the index's exact-strategy search (the
    approximate index from `ann_min_items` rows).

    Returns
    -------
    rows : (n, m) int64 catalog rows (-1 where the catalog has fewer than m other items).
    sims : (n, m) float32 cosines (0 in the padded slots).
    """
    n = index.size
    width = min(m, n - 1)
    rows = np.full((n, m), -1, dtype=np.int64)
    sims = np.zeros((n, m), dtype=np.float32)
    if width < 1:
        return rows, sims
    every = np.arange(n, dtype=np.int64)
    step = 4096  # bounds the (step, n) similarity block the exact search allocates
    for lo in range(0, n, step):
        part = every[lo : lo + step]
        found, values = index.search_rows(
            index.row_vectors(part), width, "exact", exclude_rows=part
        )
        rows[part, :width] = found
        sims[part, :width] = np.nan_to_num(values, nan=0.0)
    return rows, sims


def augment(
    vectors: np.ndarray,
    rows: np.ndarray,
    graph_rows: np.ndarray,
    graph_sims: np.ndarray,
    alpha: float,
) -> np.ndarray:
    """DBA vectors of catalog `rows`: each the unit-length sum of its own vector and its graph
    neighbours' vectors weighted by max(sim, 0)**alpha. (len(rows), d) float32."""
    rows = np.asarray(rows, dtype=np.int64)
    nbrs = graph_rows[rows]
    weights = np.where(nbrs >= 0, np.maximum(graph_sims[rows], 0.0) ** alpha, 0.0)
    out = vectors[rows] + np.einsum(
        "rm,rmd->rd", weights.astype(np.float32), vectors[np.maximum(nbrs, 0)]
    )
    return _unit(out)


def expand_query(
    query: np.ndarray, candidates: np.ndarray, scores: np.ndarray, m: int, alpha: float
) -> np.ndarray:
    """alpha-QE: the unit-length sum of `query` (d,) and its m best `candidates` (r, d), each
    weighted by max(score, 0)**alpha (`scores`: (r,) their similarity to the query)."""
    m = min(m, len(scores))
    if m == 0:
        return query
    top = np.argsort(-scores, kind="stable")[:m]
    weights = np.maximum(scores[top], 0.0) ** alpha
    expanded = query + weights.astype(np.float32) @ candidates[top]
    return _unit(expanded[None])[0]


def rerank_order(
    query: np.ndarray,
    rows: np.ndarray,
    vectors: np.ndarray,
    settings: RerankSettings,
    graph: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """New order of one query's candidates: positions into `rows`, best first.

    Parameters
    ----------
    query : (d,) unit query vector.
    rows : (r,) catalog rows of the candidates (no padding).
    vectors : (n, d) unit catalog vectors.
    settings : see `RerankSettings`.
    graph : `neighbour_graph` of the catalog, needed when settings.dba_m > 0.
    """
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    if settings.dba_m > 0:
        if graph is None:
            raise LookalikeError("DBA re-ranking needs the catalog's neighbour graph")
        graph_rows, graph_sims = graph
        candidates = augment(
            vectors,
            rows,
            graph_rows[:, : settings.dba_m],
            graph_sims[:, : settings.dba_m],
            settings.alpha,
        )
    else:
        candidates = vectors[rows]
    with one_blas_thread():  # (r, d) products: a thread pool costs more than it saves
        first = candidates @ query
        expanded = expand_query(query, candidates, first, settings.qe_m, settings.alpha)
        scores = candidates @ expanded
    return np.argsort(-scores, kind="stable").astype(np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --- the neighbour graph, once per index ---
_GRAPHS: weakref.WeakKeyDictionary[Index, tuple[int, np.ndarray, np.ndarray]] = (
    weakref.WeakKeyDictionary()
)
_GRAPH_LOCK = threading.Lock()


def cached_graph(index: Index, m: int) -> tuple[np.ndarray, np.ndarray]:
    """`neighbour_graph(index, m)`, built on first use and kept as long as the index lives
    (a graph built for a larger m serves any smaller one)."""
    with _GRAPH_LOCK:
        held = _GRAPHS.get(index)
        if held is None or held[0] < m:
            rows, sims = neighbour_graph(index, m)
            held = (m, rows, sims)
            _GRAPHS[index] = held
    return held[1][:, :m], held[2][:, :m]


# --- the wrapper the engine searches through ---
class RerankedIndex:
    """An `Index` whose searches re-rank a shortlist (see the module docstring).

    Every attribute other than `search`/`search_rows` (vectors, size, strategies, rows_of,
    clusters, ...) is the wrapped index's own, so it can stand wherever an `Index` is read.

    Parameters
    ----------
    index : the index to wrap (not copied, not changed).
    settings : default `settings_for(index.name, index.size)`.
    """

    def __init__(self, index: Index, settings: RerankSettings | None = None) -> None:
        self.index = index
        self.settings = settings_for(index.name, index.size) if settings is None else settings

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)

    def prepare(self) -> None:
        """Build the neighbour graph DBA needs now (it is otherwise built on first search)."""
        if self.settings.dba_m > 0:
            cached_graph(self.index, self.settings.dba_m)

    def search_rows(
        self,
        queries: np.ndarray,
        k: int,
        strategy: str = "exact",
        exclude_rows: Sequence[int] | np.ndarray | None = None,
        query_clusters: Sequence[int] | np.ndarray | None = None,
        query_categories: Sequence[str] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`Index.search_rows` with the shortlist re-ranked: (m, k) rows and cosines to the
        original query, in the re-ranked order (padding -1 / NaN at the end)."""
        index = self.index
        k = check_k(k, index.size)
        depth = min(max(k, self.settings.shortlist), index.size)
        found, sims = index.search_rows(
            queries, depth, strategy, exclude_rows, query_clusters, query_categories
        )
        q = unit_queries(queries, index.dim, index.name)
        graph = cached_graph(index, self.settings.dba_m) if self.settings.dba_m > 0 else None
        out_rows = np.full((len(q), k), -1, dtype=np.int64)
        out_sims = np.full((len(q), k), np.nan, dtype=np.float32)
        head = self.settings.shortlist
        for i, (query, rows, values) in enumerate(zip(q, found, sims, strict=True)):
            keep = rows >= 0
            rows, values = rows[keep], values[keep]
            # Only the first `shortlist` are re-ordered; a longer list (a colour filter asks
            # for the whole ranking) keeps plain order behind them, so the cost stays bounded.
            order = rerank_order(query, rows[:head], index.vectors, self.settings, graph)
            order = np.concatenate([order, np.arange(len(order), len(rows))])[:k]
            out_rows[i, : len(order)] = rows[order]
            out_sims[i, : len(order)] = values[order]
        return out_rows, out_sims

    def search(
        self,
        queries: np.ndarray,
        k: int,
        strategy: str = "exact",
        exclude_rows: Sequence[int] | np.ndarray | None = None,
        query_clusters: Sequence[int] | np.ndarray | None = None,
        query_categories: Sequence[str] | np.ndarray | None = None,
    ) -> list[SearchResult]:
        """`Index.search` with the shortlist re-ranked (see `search_rows`)."""
        rows, sims = self.search_rows(
            queries, k, strategy, exclude_rows, query_clusters, query_categories
        )
        return self.index.results(rows, sims)


def reranked(index: Index | RerankedIndex, rerank: bool) -> Index | RerankedIndex:
    """`index` wrapped in a `RerankedIndex` when `rerank` is true; `index` itself (the very
    same object, so plain search is untouched) when false."""
    if not check_rerank(rerank) or isinstance(index, RerankedIndex):
        return index
    return RerankedIndex(index)
