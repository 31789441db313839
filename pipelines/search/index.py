"""The in-memory cosine index of one extractor: exact, cluster and category strategies."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines import commands
from pipelines.config import STRATEGIES
from pipelines.errors import LookalikeError
from pipelines.search import approximate
from pipelines.search.topk import check_k, top_k, unit_queries


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
        approximate `approximate.AnnIndex` (it may miss a few true neighbours; the similarities it
        returns are exact cosines; `python -m pipelines bench` measures its recall@10).
    cluster : only items in the query's k-means clusters: the given one and the
        `cluster_width` clusters with the nearest centroids (1 = the nearest only). Widening
        keeps a query that sits between clusters, or comes from another kind of photo, from
        being shut out of its own kind.
    category : only items whose predicted category is one of the query's categories. A
        query's categories are one name, several joined by "|" (the classifier was unsure
        between them), or "*" (too unsure: the whole catalog, as exact search). With
        `category_queries`, an unsure catalog item likewise belongs to each of its categories.

    Everything a strategy needs (each pool's rows and its contiguous sub-matrix) is built
    once here, so a query only does matrix products and a partial sort. The one exception is
    the approximate index, built under a lock on the first "exact" search that needs it (a
    large catalog's app start does not wait for it). Nothing else changes after the build, so
    one instance can be shared across threads.

    Parameters
    ----------
    vectors : (n, d) float32, unit rows (rows that are not unit length are normalised once;
        see below for a memory-mapped matrix).
    item_ids : (n,) catalog item ids, row-aligned with `vectors`.
    name : shown in error messages (usually the extractor).
    clusters : (n,) int k-means cluster of each row; enables the "cluster" strategy.
    centroids : (c, d) unit centroids, to place queries that come without a cluster. When
        omitted, the normalised mean of each cluster's members is used.
    categories : (n,) predicted category of each row (None/NA for none); enables "category".
    category_queries : (n,) categories each row searches when it is the query ("a", "a|b" or
        "*"); default its own category.
    cluster_width : nearest clusters a query searches (default 1).
    unavailable : {strategy: reason} shown when a strategy is used without its data.
    ann_min_items : catalog size from which "exact" uses the approximate index; default
        `approximate.ANN_MIN_ITEMS`. 0 always uses it; a value above the size never does. From this
        size pools hold no copies of their vectors: they are searched through the
        approximate index restricted to their members.
    ann_index : an approximate index already built over `vectors` (a saved one, see
        `pipelines.search.ann`); default: built on first use.

    `vectors` may be memory-mapped (`np.load(path, mmap_mode="r")`, as `readers.load_index`
    does from `ann_min_items` rows): it is then used in place, never copied whole, and its
    rows must already be unit length (checked on a sample).
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
        category_queries: Sequence[str | None] | np.ndarray | None = None,
        cluster_width: int = 1,
        ann_index: approximate.AnnIndex | None = None,
    ) -> None:
        if not isinstance(vectors, np.memmap):
            vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise LookalikeError(
                f"an index needs a non-empty (n, d) matrix of vectors, got shape {vectors.shape}"
            )
        if isinstance(vectors, np.memmap):
            # A memory-mapped matrix (a large catalog) is used in place, never copied whole.
            vectors = _checked_mapping(vectors, name)
        else:
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
        self.ann_min_items = (
            approximate.ANN_MIN_ITEMS if ann_min_items is None else int(ann_min_items)
        )
        if self.ann_min_items < 0:
            raise LookalikeError(f"ann_min_items must be >= 0, got {self.ann_min_items}")
        if ann_index is not None and (ann_index.size, ann_index.dim) != vectors.shape:
            raise LookalikeError(
                f"{name}: the approximate index covers {ann_index.size} x {ann_index.dim} "
                f"vectors, not {n} x {d}"
            )
        self._ann: approximate.AnnIndex | None = ann_index
        self._ann_lock = threading.Lock()
        if isinstance(cluster_width, bool) or not isinstance(cluster_width, int | np.integer):
            raise LookalikeError(f"cluster_width must be a whole number >= 1, got {cluster_width}")
        if cluster_width < 1:
            raise LookalikeError(f"cluster_width must be a whole number >= 1, got {cluster_width}")
        self.cluster_width = int(cluster_width)
        # Pools that are unions of several clusters or categories, built on first use.
        self._union_pools: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] = {}
        # Pool membership bitmaps for the approximate index (large catalogs), on first use.
        self._bitmaps: dict[tuple[str, object], np.ndarray] = {}

        self.clusters: np.ndarray | None = None
        self.centroids: np.ndarray | None = None
        self._cluster_pools: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        if clusters is not None:
            clusters = np.asarray(clusters).astype(np.int64)
            if clusters.shape != (n,):
                raise LookalikeError(f"{name}: {len(clusters)} cluster ids for {n} vectors")
            if clusters.min() < 0:
                raise LookalikeError(f"{name}: cluster ids must be >= 0, got {clusters.min()}")
            self.clusters = clusters
            self._cluster_pools = self._pools(clusters)
            if centroids is None:
                centroids = _cluster_means(self.vectors, clusters)
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
        self._category_pools: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
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
        self.category_queries: np.ndarray | None = None
        if category_queries is not None:
            if self.categories is None:
                raise LookalikeError(f"{name}: category_queries were given without categories")
            queries = pd.Series(np.asarray(category_queries, dtype=object))
            if len(queries) != n:
                raise LookalikeError(f"{name}: {len(queries)} category queries for {n} vectors")
            own = pd.Series(self.categories, dtype=object)
            self.category_queries = queries.where(queries.notna(), own).to_numpy(dtype=object)
            self._widen_category_pools()

    def _widen_category_pools(self) -> None:
        """An item the classifier is unsure about belongs to each category it might be (its
        `category_queries`; "*" = every category), so a query finds it in any of them."""
        names = list(self._category_pools)
        extra: dict[object, list[int]] = {name: [] for name in names}
        for row, wanted in enumerate(self.category_queries):
            if wanted is None or wanted == self.categories[row]:
                continue
            cats = names if wanted == WHOLE_CATALOG else str(wanted).split(SEPARATOR)
            for cat in cats:
                if cat in extra:
                    extra[cat].append(row)
        for name, rows in extra.items():
            if rows:
                members = np.union1d(self._category_pools[name][0], rows).astype(np.int64)
                self._category_pools[name] = (members, self._pool_matrix(members))

    def _pools(
        self, keys: np.ndarray, rows: np.ndarray | None = None
    ) -> dict[object, tuple[np.ndarray, np.ndarray | None]]:
        """{key: (sorted rows, contiguous copy of their vectors or None)} for every key
        present (see `_pool_matrix`)."""
        rows = np.arange(len(keys)) if rows is None else rows
        pools = {}
        for key in pd.unique(keys[rows]):
            members = rows[keys[rows] == key].astype(np.int64)
            pools[key.item() if isinstance(key, np.generic) else key] = (
                members,
                self._pool_matrix(members),
            )
        return pools

    def _pool_matrix(self, members: np.ndarray) -> np.ndarray | None:
        """A pool's contiguous copy of its vectors; None from `ann_min_items` rows, where the
        copies would add up to the whole matrix again (8 GB at 1M x 2048) and the pool is
        searched through the approximate index, restricted to its members."""
        if self.approximate:
            return None
        matrix = np.ascontiguousarray(self.vectors[members], dtype=np.float32)
        matrix.setflags(write=False)
        return matrix

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

    def ann_index(self) -> approximate.AnnIndex:
        """The approximate index over every row, built on first use (seconds at 100k rows)."""
        with self._ann_lock:
            if self._ann is None:
                self._ann = approximate.AnnIndex.build(self.vectors)
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

    def row_vectors(self, rows: Sequence[int] | np.ndarray | int) -> np.ndarray:
        """(m, d) float32 copy of the vectors of catalog `rows` (one row: (d,)).

        Prefer it to `vectors[rows]` for a large catalog's query: on a memory-mapped matrix it
        reads just those rows (`approximate.take_rows`), where indexing the mapping maps whole file
        folios into the process (about 0.3 MB of RSS a query at 1M x 2048) and, with a cold
        page cache, waits on readahead (p95 23 ms against 6 ms read this way).
        """
        single = np.ndim(rows) == 0
        found = approximate.take_rows(self.vectors, np.atleast_1d(np.asarray(rows, dtype=np.int64)))
        return found[0] if single else found

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
            category_queries=(
                None if self.category_queries is None else self.category_queries[rows]
            ),
            cluster_width=self.cluster_width,
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
        query_clusters : (m,) k-means cluster of each query for "cluster", searched together
            with the `cluster_width` nearest clusters; default: the nearest ones only.
        query_categories : (m,) categories of each query for "category" ("a", "a|b" or "*",
            see the class docstring); default: the excluded catalog row's `category_queries`
            (so it is needed only for outside queries).

        Returns
        -------
        One `SearchResult` per query. When the query's pool (its cluster or category, minus
        the query itself) holds fewer than k items, the result holds only those; a query
        whose pool is empty gets an empty result.
        """
        rows, sims = self.search_rows(
            queries, k, strategy, exclude_rows, query_clusters, query_categories
        )
        return self.results(rows, sims)

    def results(self, rows: np.ndarray, sims: np.ndarray) -> list[SearchResult]:
        """(m, k) rows and similarities from `search_rows` as one `SearchResult` per query,
        the padding (row -1) trimmed."""
        out = []
        for found, similarity in zip(rows, sims, strict=True):
            if len(found) and found[-1] < 0:  # padding sits at the end; trim it
                keep = found >= 0
                found, similarity = found[keep], similarity[keep]
            out.append(SearchResult(self.item_ids[found], similarity, found))
        return out

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
        k = check_k(k, self.size)
        q = unit_queries(queries, self.dim, self.name)
        m = len(q)
        exclude = self._prepare_exclude(exclude_rows, m)

        if strategy == "exact":
            if self.approximate:
                return self.ann_index().search(q, k, exclude_rows=exclude)
            return top_k(q, self.vectors, k, exclude)

        keys = self._query_keys(strategy, q, exclude, query_clusters, query_categories)
        out_rows = np.full((m, k), -1, dtype=np.int64)
        out_sims = np.full((m, k), np.nan, dtype=np.float32)
        # One matrix product per pool that has queries: a loop over pools, never over items.
        for key in pd.unique(keys):
            which = np.flatnonzero(keys == key)
            if key == WHOLE_CATALOG:
                found, sims = top_k(
                    q[which], self.vectors, k, None if exclude is None else exclude[which]
                )
                out_rows[which], out_sims[which] = found, sims
                continue
            pool = self._pool(strategy, key)
            if pool is None:
                continue  # an unknown cluster/category has no items: empty results
            members, matrix = pool
            if matrix is None:  # a large catalog: the approximate index, within the pool
                approximate = self.ann_index()
                # A pool holding a share s of the catalog fills a probed list only to s:
                # probing 1/s times the lists keeps the candidates as many as for "exact".
                share = len(members) / self.size
                probes = min(approximate.nprobe * 64, math.ceil(approximate.nprobe / share))
                found, sims = approximate.search(
                    q[which],
                    k,
                    exclude_rows=None if exclude is None else exclude[which],
                    allowed=self._allowed(strategy, key, members),
                    nprobe=max(1, probes),
                )
                out_rows[which], out_sims[which] = found, sims
                continue
            local_exclude = None
            if exclude is not None:
                # Catalog row -> position within the pool (-1 when the row is not a member).
                pos = np.searchsorted(members, exclude[which])
                pos = np.minimum(pos, len(members) - 1)
                local_exclude = np.where(members[pos] == exclude[which], pos, -1)
            found, sims = top_k(q[which], matrix, k, local_exclude)
            width = found.shape[1]
            out_rows[which, :width] = np.where(found >= 0, members[np.maximum(found, 0)], -1)
            out_sims[which, :width] = sims
        return out_rows, out_sims

    def _pool(self, strategy: str, key: object) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(rows, matrix) of one pool key: a cluster id, a category, or several joined by "|"."""
        pools: dict = self._cluster_pools if strategy == "cluster" else self._category_pools
        if key in pools:
            return pools[key]
        if not (isinstance(key, str) and SEPARATOR in key):
            return None
        cached = self._union_pools.get((strategy, key))
        if cached is None:
            parts = [int(p) if strategy == "cluster" else p for p in key.split(SEPARATOR)]
            found = [pools[p][0] for p in parts if p in pools]
            if not found:
                return None
            members = np.unique(np.concatenate(found))  # unsure items sit in several
            cached = (members, self._pool_matrix(members))
            self._union_pools[(strategy, key)] = cached  # same value from any thread
        return cached

    def _allowed(self, strategy: str, key: object, members: np.ndarray) -> np.ndarray:
        """The pool's members as a bitmap over the catalog rows (n / 8 bytes, cached)."""
        cached = self._bitmaps.get((strategy, key))
        if cached is None:
            mask = np.zeros(self.size, dtype=bool)
            mask[members] = True
            cached = np.packbits(mask, bitorder="little")
            self._bitmaps[(strategy, key)] = cached  # same value from any thread
        return cached

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
                raise self._missing("cluster", "k-means clusters", f"run `{commands.CLUSTERS}`")
            width = min(self.cluster_width, len(self.centroids))
            nearest = np.argsort(-(q @ self.centroids.T), axis=1, kind="stable")[:, :width]
            if query_clusters is not None:
                given = np.asarray(query_clusters).astype(np.int64).reshape(-1)
                if len(given) != m:
                    raise LookalikeError(
                        f"query_clusters needs one cluster per query ({m}), got {len(given)}"
                    )
                nearest = np.hstack([given[:, None], nearest[:, : width - 1]])
            if nearest.shape[1] == 1:
                return nearest[:, 0]
            return np.array([cluster_key(row) for row in nearest], dtype=object)

        if self.categories is None:
            raise self._missing("category", "predicted categories", f"run `{commands.CLASSIFY}`")
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
        if self.category_queries is not None:
            return self.category_queries[exclude]
        return self.categories[exclude]


# A query's categories or clusters are joined by this; WHOLE_CATALOG means "search everything".
SEPARATOR = "|"
WHOLE_CATALOG = "*"


def cluster_key(clusters: Sequence[int] | np.ndarray) -> object:
    """The pool key of several clusters: one id alone, else the sorted distinct ids joined."""
    ids = sorted({int(c) for c in clusters})
    return ids[0] if len(ids) == 1 else SEPARATOR.join(str(c) for c in ids)


# Rows whose lengths are checked when a memory-mapped matrix is indexed (all would read it all).
NORM_CHECK_ROWS = 1000


def _checked_mapping(vectors: np.memmap, name: str) -> np.ndarray:
    """A memory-mapped matrix, checked on a sample of rows: it cannot be normalised in place
    (read-only) nor copied (that is what mapping it avoids), so rows must be unit already."""
    if vectors.dtype not in (np.float16, np.float32):
        raise LookalikeError(
            f"{name}: memory-mapped vectors must be float32 or float16, got {vectors.dtype}"
        )
    n = len(vectors)
    sample = np.linspace(0, n - 1, min(n, NORM_CHECK_ROWS)).astype(np.int64)
    norms = np.linalg.norm(approximate.take_rows(vectors, sample), axis=1)
    # float16 keeps ~3 significant digits, so its lengths are looser than float32's.
    tolerance = 1e-3 if vectors.dtype == np.float32 else 5e-3
    if not np.allclose(norms, 1.0, atol=tolerance):
        raise LookalikeError(
            f"{name}: memory-mapped vectors must be unit length (rows checked have lengths "
            f"{norms.min():.3f} to {norms.max():.3f}) — rebuild the embeddings with "
            f"`{commands.embed(name, force=True)}`"
        )
    return vectors


def _cluster_means(vectors: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """(c, d) float32 mean vector of each cluster, in one pass of chunks over the rows."""
    sums = np.zeros((int(clusters.max()) + 1, vectors.shape[1]), dtype=np.float64)
    start = 0
    for chunk in approximate.iter_chunks(vectors):
        ids = clusters[start : start + len(chunk)]
        for cluster in np.unique(ids):
            sums[cluster] += chunk[ids == cluster].sum(axis=0, dtype=np.float64)
        start += len(chunk)
    counts = np.bincount(clusters, minlength=len(sums))[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32)
