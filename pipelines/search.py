"""Reads embeddings, clusters and predicted categories into an in-memory index; writes nothing."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import ann
from pipelines.artifacts import artifact_hash, read_manifest
from pipelines.catalog import catalog_hash, load_catalog
from pipelines.config import EXTRACTORS, STRATEGIES, Config
from pipelines.errors import LookalikeError

# The commands that make each input, quoted in error messages so the user can act on them.
CLUSTER_COMMAND = "python -m pipelines clusters"
# Predicted categories come from the trained custom CNN's classifier head.
CATEGORIES_COMMAND = "python -m pipelines train && python -m pipelines embed --extractor custom_cnn"
# Rows of the (queries x pool) similarity block computed at once: bounds memory to ~64 MB.
BLOCK_CELLS = 16_000_000
# A single query's matrix-vector product runs on one BLAS thread up to this matrix size
# (see `_one_blas_thread`); above it the pass is long enough for a second thread to pay off.
# Measured by `python -m pipelines bench` on 2 cores: at 1.8 MB one thread cut gemv's p95 from
# 3.9 to 0.2 ms; at 30 MB and up two threads were faster at the median and p95.
ONE_THREAD_MAX_BYTES = 8 * 2**20
# From this many rows, a top-k first drops every similarity below a bound taken from a
# strided sample of PREFILTER_SAMPLE of them (see `_best_first`); below, it partitions all.
PREFILTER_MIN_ITEMS = 16_384
PREFILTER_SAMPLE = 4096


def embed_command(extractor: str) -> str:
    """The command that writes `extractor`'s embeddings."""
    return f"python -m pipelines embed --extractor {extractor}"


def categories_path(config: Config) -> Path:
    """Predicted categories of the custom CNN's classifier head, row-aligned with the catalog."""
    return config.categories_path


def centroids_path(config: Config, extractor: str) -> Path:
    """Unit k-means centroids (n_clusters, d) float32, beside the cluster assignments."""
    return config.clusters_path(extractor).with_name(f"{extractor}_centroids.npy")


@dataclass(frozen=True)
class SearchResult:
    """The neighbours of one query, best first (possibly fewer than k; see `Index.search`)."""

    item_ids: np.ndarray  # (k',) str: catalog item ids
    similarities: np.ndarray  # (k',) float32: cosine similarity to the query
    rows: np.ndarray  # (k',) int64: catalog rows of the neighbours


class Index:
    """Cosine nearest-neighbour search over unit vectors, optionally within a pool.

    Strategies
    ----------
    exact : the whole catalog: one matrix product, or, from `ann_min_items` rows, an
        approximate `ann.AnnIndex` (it may miss a few true neighbours; the similarities it
        returns are exact cosines; `python -m pipelines bench` measures its recall@10).
    cluster : only items in the query's k-means cluster (the given one, or the nearest
        centroid).
    category : only items whose predicted category equals the query's.

    Everything a strategy needs (each pool's rows and its contiguous sub-matrix) is built
    once here, so a query only does matrix products and a partial sort. The one exception is
    the approximate index, built under a lock on the first "exact" search that needs it (a
    large catalog's app start does not wait for it). Nothing else changes after the build, so
    one instance can be shared across threads.

    Parameters
    ----------
    vectors : (n, d) float32, unit rows (rows that are not unit length are normalised once).
    item_ids : (n,) catalog item ids, row-aligned with `vectors`.
    name : shown in error messages (usually the extractor).
    clusters : (n,) int k-means cluster of each row; enables the "cluster" strategy.
    centroids : (c, d) unit centroids, to place queries that come without a cluster. When
        omitted, the normalised mean of each cluster's members is used.
    categories : (n,) predicted category of each row (None/NA for none); enables "category".
    unavailable : {strategy: reason} shown when a strategy is used without its data.
    ann_min_items : catalog size from which "exact" uses the approximate index; default
        `ann.ANN_MIN_ITEMS`. 0 always uses it; a value above the size never does.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        item_ids: Sequence[str] | np.ndarray,
        *,
        name: str = "index",
        clusters: np.ndarray | None = None,
        centroids: np.ndarray | None = None,
        categories: Sequence[str | None] | np.ndarray | None = None,
        unavailable: dict[str, str] | None = None,
        ann_min_items: int | None = None,
    ) -> None:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise LookalikeError(
                f"an index needs a non-empty (n, d) matrix of vectors, got shape {vectors.shape}"
            )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            # Once, at build time: queries then only need a dot product.
            vectors = vectors / np.where(norms > 0, norms, 1.0)[:, None].astype(np.float32)
        vectors.setflags(write=False)
        self.vectors = vectors
        self.name = name
        self.item_ids = np.asarray(item_ids, dtype=object)
        n, d = vectors.shape
        if self.item_ids.shape != (n,):
            raise LookalikeError(f"{name}: {len(self.item_ids)} item ids for {n} vectors")
        self._row_of = {item: row for row, item in enumerate(self.item_ids)}
        # Why a strategy lacks its data (for example "categories.parquet is missing").
        self.unavailable: dict[str, str] = dict(unavailable or {})
        self.ann_min_items = ann.ANN_MIN_ITEMS if ann_min_items is None else int(ann_min_items)
        if self.ann_min_items < 0:
            raise LookalikeError(f"ann_min_items must be >= 0, got {self.ann_min_items}")
        self._ann: ann.AnnIndex | None = None
        self._ann_lock = threading.Lock()

        self.clusters: np.ndarray | None = None
        self.centroids: np.ndarray | None = None
        self._cluster_pools: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if clusters is not None:
            clusters = np.asarray(clusters).astype(np.int64)
            if clusters.shape != (n,):
                raise LookalikeError(f"{name}: {len(clusters)} cluster ids for {n} vectors")
            if clusters.min() < 0:
                raise LookalikeError(f"{name}: cluster ids must be >= 0, got {clusters.min()}")
            self.clusters = clusters
            self._cluster_pools = self._pools(clusters)
            if centroids is None:
                ids = max(self._cluster_pools) + 1
                centroids = np.zeros((ids, d), dtype=np.float32)
                for cluster, (_rows, matrix) in self._cluster_pools.items():
                    centroids[cluster] = matrix.mean(axis=0)
            centroids = np.ascontiguousarray(centroids, dtype=np.float32)
            if centroids.ndim != 2 or centroids.shape[1] != d:
                raise LookalikeError(
                    f"{name}: centroids have shape {centroids.shape}; expected (clusters, {d})"
                )
            if clusters.max() >= len(centroids):
                raise LookalikeError(
                    f"{name}: cluster id {clusters.max()} but only {len(centroids)} centroids"
                )
            lengths = np.linalg.norm(centroids, axis=1, keepdims=True)
            self.centroids = centroids / np.where(lengths > 0, lengths, 1.0)
        elif centroids is not None:
            raise LookalikeError(f"{name}: centroids were given without cluster ids")

        self.categories: np.ndarray | None = None
        self._category_pools: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if categories is not None:
            categories = pd.Series(np.asarray(categories, dtype=object))
            if len(categories) != n:
                raise LookalikeError(f"{name}: {len(categories)} categories for {n} vectors")
            # Items without a prediction belong to no pool.
            self.categories = categories.where(categories.notna(), None).to_numpy(dtype=object)
            known = categories.notna().to_numpy()
            self._category_pools = self._pools(
                categories.astype(str).to_numpy(), rows=np.flatnonzero(known)
            )

    def _pools(
        self, keys: np.ndarray, rows: np.ndarray | None = None
    ) -> dict[object, tuple[np.ndarray, np.ndarray]]:
        """{key: (sorted rows, contiguous copy of their vectors)} for every key present."""
        rows = np.arange(len(keys)) if rows is None else rows
        pools = {}
        for key in pd.unique(keys[rows]):
            members = rows[keys[rows] == key].astype(np.int64)
            matrix = np.ascontiguousarray(self.vectors[members])
            matrix.setflags(write=False)
            pools[key.item() if isinstance(key, np.generic) else key] = (members, matrix)
        return pools

    # --- facts about the index ---
    @property
    def size(self) -> int:
        """Number of catalog items."""
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        return int(self.vectors.shape[1])

    @property
    def approximate(self) -> bool:
        """Whether the "exact" strategy goes through the approximate index (large catalogs)."""
        return self.size >= self.ann_min_items

    def ann_index(self) -> ann.AnnIndex:
        """The approximate index over every row, built on first use (seconds at 100k rows)."""
        with self._ann_lock:
            if self._ann is None:
                self._ann = ann.AnnIndex.build(self.vectors)
            return self._ann

    @property
    def strategies(self) -> tuple[str, ...]:
        """The strategies this index has the data for."""
        have = {
            "exact": True,
            "cluster": self.clusters is not None,
            "category": self.categories is not None,
        }
        return tuple(s for s in STRATEGIES if have[s])

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Catalog rows (int64) of `item_ids`; an unknown id is an error."""
        try:
            return np.array([self._row_of[item] for item in item_ids], dtype=np.int64)
        except KeyError as err:
            raise LookalikeError(
                f"item {err.args[0]!r} is not in the {self.name} index ({self.size} items)"
            ) from None

    def subset(self, rows: np.ndarray) -> Index:
        """A new index over catalog rows `rows` only (for example an evaluation gallery)."""
        rows = np.asarray(rows, dtype=np.int64)
        return Index(
            self.vectors[rows],
            self.item_ids[rows],
            name=self.name,
            clusters=None if self.clusters is None else self.clusters[rows],
            centroids=self.centroids,
            categories=None if self.categories is None else self.categories[rows],
            unavailable=self.unavailable,
            ann_min_items=self.ann_min_items,
        )

    # --- queries ---
    def search(
        self,
        queries: np.ndarray,
        k: int,
        strategy: str = "exact",
        exclude_rows: Sequence[int] | np.ndarray | None = None,
        query_clusters: Sequence[int] | np.ndarray | None = None,
        query_categories: Sequence[str] | np.ndarray | None = None,
    ) -> list[SearchResult]:
        """The k most similar catalog items of each query, best first.

        Parameters
        ----------
        queries : (m, d) or (d,) vectors from the same extractor; normalised here.
        k : neighbours per query, 1 <= k <= catalog size.
        strategy : "exact", "cluster" or "category" (see the class docstring; "exact" is
            approximate from `ann_min_items` catalog items).
        exclude_rows : (m,) catalog row of each query when the query is a catalog item (-1 when
            not), so an item never returns itself.
        query_clusters : (m,) k-means cluster of each query for "cluster"; default: the
            nearest centroid.
        query_categories : (m,) predicted category of each query for "category"; default: the
            category of the excluded catalog row (so it is needed only for outside queries).

        Returns
        -------
        One `SearchResult` per query. When the query's pool (its cluster or category, minus
        the query itself) holds fewer than k items, the result holds only those; a query
        whose pool is empty gets an empty result.
        """
        rows, sims = self.search_rows(
            queries, k, strategy, exclude_rows, query_clusters, query_categories
        )
        results = []
        for found, similarity in zip(rows, sims, strict=True):
            if found[-1] < 0:  # padding sits at the end; trim it
                keep = found >= 0
                found, similarity = found[keep], similarity[keep]
            results.append(SearchResult(self.item_ids[found], similarity, found))
        return results

    def search_rows(
        self,
        queries: np.ndarray,
        k: int,
        strategy: str = "exact",
        exclude_rows: Sequence[int] | np.ndarray | None = None,
        query_clusters: Sequence[int] | np.ndarray | None = None,
        query_categories: Sequence[str] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` as two (m, k) arrays: catalog rows (int64) and similarities (float32).

        Slots beyond a small pool hold row -1 and similarity NaN. Same arguments as `search`;
        this form suits batch evaluation (no per-query objects).
        """
        if strategy not in STRATEGIES:
            raise LookalikeError(
                f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
            )
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= self.size:
            raise LookalikeError(f"k must be between 1 and {self.size}, got {k}")
        k = int(k)
        q = self._prepare_queries(queries)
        m = len(q)
        exclude = self._prepare_exclude(exclude_rows, m)

        if strategy == "exact":
            if self.approximate:
                return self.ann_index().search(q, k, exclude_rows=exclude)
            return _top_k(q, self.vectors, k, exclude)

        keys = self._query_keys(strategy, q, exclude, query_clusters, query_categories)
        pools = self._cluster_pools if strategy == "cluster" else self._category_pools
        out_rows = np.full((m, k), -1, dtype=np.int64)
        out_sims = np.full((m, k), np.nan, dtype=np.float32)
        # One matrix product per pool that has queries: a loop over pools, never over items.
        for key in pd.unique(keys):
            if key not in pools:
                continue  # an unknown cluster/category has no items: empty results
            members, matrix = pools[key]
            which = np.flatnonzero(keys == key)
            local_exclude = None
            if exclude is not None:
                # Catalog row -> position within the pool (-1 when the row is not a member).
                pos = np.searchsorted(members, exclude[which])
                pos = np.minimum(pos, len(members) - 1)
                local_exclude = np.where(members[pos] == exclude[which], pos, -1)
            found, sims = _top_k(q[which], matrix, k, local_exclude)
            width = found.shape[1]
            out_rows[which, :width] = np.where(found >= 0, members[np.maximum(found, 0)], -1)
            out_sims[which, :width] = sims
        return out_rows, out_sims

    def _prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or len(q) == 0:
            raise LookalikeError(
                f"queries must be a (m, d) matrix or one (d,) vector, got shape {q.shape}"
            )
        if q.shape[1] != self.dim:
            raise LookalikeError(
                f"query vectors have {q.shape[1]} dims; the {self.name} index has {self.dim} — "
                f"embed queries with the same extractor as the index"
            )
        # A NaN or inf anywhere in a row makes its length non-finite, so one check covers both.
        if len(q) == 1:  # the app's case: skip the batch machinery, it costs microseconds
            norm = float(np.sqrt(q[0] @ q[0]))
            if math.isfinite(norm) and norm > 0:
                return q / norm
        norms = np.sqrt(np.einsum("ij,ij->i", q, q))
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
        if len(bad):
            raise LookalikeError(
                f"query {int(bad[0])} has zero or non-finite length; cosine search needs a "
                f"non-zero finite vector — check the image and its embedding"
            )
        # Only the queries are normalised; the catalog was normalised once at build time.
        return q / norms[:, None]

    def _prepare_exclude(self, exclude_rows: object, m: int) -> np.ndarray | None:
        if exclude_rows is None:
            return None
        exclude = np.asarray(exclude_rows, dtype=np.int64).reshape(-1)
        if len(exclude) != m:
            raise LookalikeError(
                f"exclude_rows needs one catalog row per query ({m}), got {len(exclude)}"
            )
        if exclude.max(initial=-1) >= self.size:
            raise LookalikeError(
                f"exclude_rows must be catalog rows below {self.size} (or -1), "
                f"got {int(exclude.max())}"
            )
        return exclude

    def _missing(self, strategy: str, what: str, fix: str) -> LookalikeError:
        reason = self.unavailable.get(strategy, f"none were given — {fix}")
        return LookalikeError(f"the {strategy} strategy needs {what} for {self.name}: {reason}")

    def _query_keys(
        self,
        strategy: str,
        q: np.ndarray,
        exclude: np.ndarray | None,
        query_clusters: object,
        query_categories: object,
    ) -> np.ndarray:
        """The pool of each query: a cluster id or a category name."""
        m = len(q)
        if strategy == "cluster":
            if self.centroids is None:
                raise self._missing("cluster", "k-means clusters", f"run `{CLUSTER_COMMAND}`")
            if query_clusters is None:
                return np.argmax(q @ self.centroids.T, axis=1).astype(np.int64)
            keys = np.asarray(query_clusters).astype(np.int64).reshape(-1)
            if len(keys) != m:
                raise LookalikeError(
                    f"query_clusters needs one cluster per query ({m}), got {len(keys)}"
                )
            return keys

        if self.categories is None:
            raise self._missing("category", "predicted categories", f"run `{CATEGORIES_COMMAND}`")
        if query_categories is not None:
            keys = np.asarray(query_categories, dtype=object).reshape(-1)
            if len(keys) != m:
                raise LookalikeError(
                    f"query_categories needs one category per query ({m}), got {len(keys)}"
                )
            return keys
        if exclude is None or (exclude < 0).any():
            raise LookalikeError(
                "the category strategy needs query_categories for queries that are not catalog "
                "items; pass the custom CNN's predicted category of each query"
            )
        return self.categories[exclude]


def _top_k(
    q: np.ndarray, matrix: np.ndarray, k: int, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Best-first (rows, similarities) of each query among `matrix`'s rows, padded to k.

    One BLAS product per block of queries, then `_best_first` on each row of similarities.
    Ties go to the lower row, so results do not depend on the partial sort's internals.
    Padding (row -1, similarity NaN) fills the slots a small pool cannot.
    """
    m, n = len(q), len(matrix)
    width = min(k, n)
    out_rows = np.full((m, k), -1, dtype=np.int64)
    out_sims = np.full((m, k), np.nan, dtype=np.float32)
    if width == 0:
        return out_rows, out_sims
    if m == 1:
        # The app's case: a matrix-vector product, on one BLAS thread while the matrix is
        # small enough (see ONE_THREAD_MAX_BYTES).
        with _one_blas_thread() if matrix.nbytes <= ONE_THREAD_MAX_BYTES else nullcontext():
            sims = (matrix @ q[0])[None]
        blocks = [(slice(0, 1), sims)]
    else:
        step = max(1, BLOCK_CELLS // n)
        blocks = (
            (block, q[block] @ matrix.T)
            for block in (slice(start, min(m, start + step)) for start in range(0, m, step))
        )
    for block, sims in blocks:  # sims: (b, n) float32
        if exclude is not None:
            ex = exclude[block]
            hit = np.flatnonzero(ex >= 0)
            sims[hit, ex[hit]] = -np.inf
        tops = _best_first_rows(sims, width)
        for i, top, row_sims in zip(range(block.start, block.stop), tops, sims, strict=True):
            values = row_sims[top]
            # The excluded item (similarity -inf) sorts last; drop it rather than return it.
            keep = ~np.isneginf(values)
            found = int(keep.sum())
            out_rows[i, :found] = top[keep]
            out_sims[i, :found] = values[keep]
    return out_rows, out_sims


def _best_first_rows(sims: np.ndarray, width: int) -> np.ndarray:
    """`_best_first` of every row of (b, n) `sims`: a (b, width) int64 array.

    Below PREFILTER_MIN_ITEMS columns one partition of the whole block replaces b Python-level
    calls (at 64 queries x 3.8k items the calls cost more than the matrix product). Rows where
    ties cross the width-th value, or with NaNs, go through `_best_first` one by one.
    """
    b, n = sims.shape
    if b == 1 or n >= PREFILTER_MIN_ITEMS or width >= n:
        return np.stack([_best_first(row, width) for row in sims])
    kth = np.partition(sims, n - width, axis=1)[:, n - width]
    above = sims >= kth[:, None]
    simple = above.sum(axis=1) == width
    out = np.empty((b, width), dtype=np.int64)
    if simple.any():
        # np.nonzero walks row by row in column order, so each row's candidates are ascending
        # and the stable sort hands ties to the lower row.
        cand = np.nonzero(above[simple])[1].reshape(-1, width)
        order = np.argsort(-np.take_along_axis(sims[simple], cand, axis=1), axis=1, kind="stable")
        out[simple] = np.take_along_axis(cand, order, axis=1)
    for i in np.flatnonzero(~simple):
        out[i] = _best_first(sims[i], width)
    return out


def _best_first(sims: np.ndarray, width: int) -> np.ndarray:
    """Indices (int64) of the `width` largest entries of 1-D `sims`, best first, ties to the
    lower index: what `np.argsort(-sims, kind="stable")[:width]` gives, in O(n).

    Above PREFILTER_MIN_ITEMS a strided sample's width-th largest value is a lower bound of
    the true width-th largest (a sample cannot hold more entries above a value than the whole),
    so one vectorised comparison keeps every true top entry (and every tie with it) while
    leaving about width * n / PREFILTER_SAMPLE candidates for the partial sort instead of n.
    """
    n = len(sims)
    candidates = None  # None: all of 0..n-1
    values = sims
    if n >= PREFILTER_MIN_ITEMS and width * 8 <= PREFILTER_SAMPLE:
        sample = sims[:: n // PREFILTER_SAMPLE]
        bound = np.partition(sample, len(sample) - width)[len(sample) - width]
        if bound == bound:  # a NaN bound (NaN similarities) bounds nothing: scan everything
            candidates = np.flatnonzero(sims >= bound)
            values = sims[candidates]
    if width < len(values):
        # Every entry tied with the width-th largest stays, so the stable sort below can
        # hand the ties to the lower rows.
        kth = np.partition(values, len(values) - width)[len(values) - width]
        keep = np.flatnonzero(values >= kth)
        candidates = keep if candidates is None else candidates[keep]
        values = values[keep]
    order = np.argsort(-values, kind="stable")[:width]
    return order.astype(np.int64, copy=False) if candidates is None else candidates[order]


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None
_blas_controller: Any = None


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread for the block (a no-op without threadpoolctl).

    Why: waking a second BLAS thread for one pass over a few tens of MB costs more than it
    saves, and on a shared machine a busy second core makes it far slower (tens of ms
    instead of one or two; `python -m pipelines bench`, section exact_search). BLAS's thread
    count is process-wide, so overlapping blocks from several threads share one limit: the
    first sets it, the last restores it (a product elsewhere may run on one thread meanwhile).
    """
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            controller = _blas()
            _blas_limiter = None if controller is None else controller.limit(limits=1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limiter is not None:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def _blas() -> Any:
    """threadpoolctl's handle on the loaded BLAS libraries, found once (a scan of the
    process's shared libraries takes about a millisecond); None without threadpoolctl."""
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            return None
        _blas_controller = ThreadpoolController().select(user_api="blas")
    return _blas_controller


def precision_at_k(
    retrieved_labels: Sequence[object], query_label: object, k: int | None = None
) -> float:
    """Share of the first k retrieved items whose label is the query's label.

    Missing results (a pool smaller than k) count as misses; k defaults to the number
    retrieved. Returns NaN when the query has no label or k is 0.
    """
    k = len(retrieved_labels) if k is None else k
    if k == 0 or query_label is None or pd.isna(query_label):
        return float("nan")
    hits = sum(1 for label in list(retrieved_labels)[:k] if label == query_label)
    return hits / k


# --- loading artifacts ---
def read_catalog(config: Config) -> tuple[pd.DataFrame, str]:
    """The catalog table (item_id as str) and its content hash; a clear error when missing."""
    digest = catalog_hash(config)
    catalog = load_catalog(config)
    catalog["item_id"] = catalog["item_id"].astype(str)
    return catalog, digest


def read_embeddings(
    config: Config, extractor: str, n_rows: int | None = None
) -> tuple[np.ndarray, str]:
    """`extractor`'s (n, d) float32 embeddings and their content hash, without TensorFlow.

    Parameters
    ----------
    n_rows : the catalog's row count; a different number of rows is an error (stale file).
    """
    if extractor not in EXTRACTORS:
        raise LookalikeError(
            f"unknown extractor {extractor!r}; valid extractors: {', '.join(EXTRACTORS)}"
        )
    path = config.embeddings_path(extractor)
    digest = artifact_hash(path, embed_command(extractor))
    vectors = np.load(path)
    if vectors.ndim != 2:
        raise LookalikeError(
            f"{path} should be an (n, d) matrix, got shape {vectors.shape} — "
            f"rebuild it with `{embed_command(extractor)} --force`"
        )
    if n_rows is not None and len(vectors) != n_rows:
        raise LookalikeError(
            f"{path} has {len(vectors)} rows but the catalog has {n_rows} — "
            f"rerun `{embed_command(extractor)}`"
        )
    return np.ascontiguousarray(vectors, dtype=np.float32), digest


def load_index(config: Config, extractor: str) -> Index:
    """Build the `extractor` index from the artifacts: embeddings, and clusters and predicted
    categories when they exist and match the catalog (otherwise the reason is kept and shown
    if that strategy is asked for)."""
    catalog, _ = read_catalog(config)
    item_ids = catalog["item_id"].to_numpy()
    vectors, vectors_hash = read_embeddings(config, extractor, n_rows=len(catalog))
    unavailable: dict[str, str] = {}

    clusters = centroids = None
    cluster_file, centroid_file = config.clusters_path(extractor), centroids_path(config, extractor)
    if not (cluster_file.exists() and centroid_file.exists()):
        unavailable["cluster"] = f"{cluster_file} is missing — run `{CLUSTER_COMMAND}`"
    else:
        table = pd.read_parquet(cluster_file)
        manifest = read_manifest(cluster_file) or {}
        made_from = manifest.get("inputs", {}).get(f"embeddings/{extractor}")
        if table["item_id"].astype(str).tolist() != item_ids.tolist():
            unavailable["cluster"] = (
                f"{cluster_file} does not match the catalog — rerun `{CLUSTER_COMMAND}`"
            )
        elif made_from != vectors_hash:
            unavailable["cluster"] = (
                f"{cluster_file} was built from other embeddings — rerun `{CLUSTER_COMMAND}`"
            )
        else:
            clusters = table["cluster"].to_numpy(np.int64)
            centroids = np.load(centroid_file)

    categories = None
    category_file = categories_path(config)
    if not category_file.exists():
        unavailable["category"] = (
            f"{category_file} is missing — it comes from the custom CNN, which needs a labelled "
            f"catalog: run `{CATEGORIES_COMMAND}`"
        )
    else:
        table = pd.read_parquet(category_file)
        if table["item_id"].astype(str).tolist() != item_ids.tolist():
            unavailable["category"] = (
                f"{category_file} does not match the catalog — rerun `{CATEGORIES_COMMAND}`"
            )
        else:
            categories = table["predicted"].to_numpy(dtype=object)

    return Index(
        vectors,
        item_ids,
        name=extractor,
        clusters=clusters,
        centroids=centroids,
        categories=categories,
        unavailable=unavailable,
    )
