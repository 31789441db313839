"""Approximate cosine nearest-neighbour index (faiss) over unit vectors; reads and writes nothing.

Exact search (`pipelines.search.index`) streams the whole (n, d) matrix once per query, so its
latency grows with n * d. Above `ANN_MIN_ITEMS` items an inverted-file index (faiss `IndexIVFFlat`)
scans only the few lists nearest the query instead, and returns the same result convention:
(rows, cosine similarities), best first.

Why IVF-Flat rather than a graph (HNSW): on this 2-core machine both meet the latency and
recall targets at 1M x 128-d, but HNSW takes ~7 minutes to build at 1M while IVF builds in
well under a minute, and the style rule is to rebuild neighbour indexes at load time
(`python -m pipelines bench` measures both). Wide vectors (2048-d InceptionV3) are reduced by
PCA before indexing; the candidates are then re-ranked with the full vectors, so similarities
are exact and the PCA only affects which candidates are found.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import LookalikeError
from pipelines.search.topk import check_k, unit_queries

# Below this many items exact search is fast enough and ANN would only lose recall; see
# `python -m pipelines bench` (results.json, section "ann") for the numbers behind it.
ANN_MIN_ITEMS = 100_000
# Vectors wider than this are PCA-reduced to it before indexing (candidates are re-ranked with
# the full vectors): at 100k x 2048-d, 128 dims keep recall@10 >= 0.95 after re-ranking.
ANN_PCA_DIMS = 128
# Candidates per requested neighbour that are re-ranked exactly when PCA is used.
RERANK_FACTOR = 10
# Points per k-means centroid sampled to train the coarse quantiser (faiss wants >= 39).
TRAIN_POINTS_PER_LIST = 50
# IVF lists per sqrt(n): more lists make each probe cheaper but training slower.
LISTS_PER_SQRT_N = 2
# The share of the lists one query scans by default (nprobe = share * nlist).
DEFAULT_SCAN_SHARE = 0.02
METHODS = ("ivf", "hnsw")
# Rows read, projected and added per step when building: 50k x 2048 float32 is 400 MB.
CHUNK_ROWS = 50_000


# The stage that saves large catalogs' indexes (pipelines/search/ann.py), in their manifests.
SAVED_STAGE = "ann"
# An update's delta beside a saved index: the array of each current row's row in the saved
# file (-1: new), and the input naming the saved file (its sha256) the delta applies to.
DELTA_KEY = "source"
DELTA_BASE_INPUT = "base"
# The saved index's faiss part is a file of its own beside it (memory-mapped when read); the
# index's manifest records that file's sha256 under this key, so the two are read as a pair.
LISTS_SHA_KEY = "lists_sha256"


def saved_params() -> dict[str, Any]:
    """The settings a saved index (`pipelines.search.ann`) is built with: its manifest's
    parameters, so changing one of them makes the saved index stale."""
    return {
        "method": "ivf",
        "pca_dims": ANN_PCA_DIMS,
        "lists_per_sqrt_n": LISTS_PER_SQRT_N,
        "scan_share": DEFAULT_SCAN_SHARE,
        "rerank": RERANK_FACTOR,
        "train_points_per_list": TRAIN_POINTS_PER_LIST,
    }


def _faiss():  # noqa: ANN202 - the faiss module
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise LookalikeError(
            "approximate search needs faiss — install it with `pip install faiss-cpu==1.15.1` "
            "(it is in requirements.txt)"
        ) from err
    return faiss


class AnnIndex:
    """Approximate top-k cosine search over (n, d) unit rows.

    Build with `AnnIndex.build`; query with `search`. The index is not changed by queries
    (search-time settings are arguments), so one instance can be shared across threads.

    Attributes
    ----------
    size, dim : rows and width of the indexed vectors (dim before any PCA).
    method : "ivf" (inverted lists; default) or "hnsw" (graph).
    reduced_dim : width inside the index (dim, or the PCA width).
    build_seconds : wall time of `build`.
    """

    def __init__(
        self,
        index: object,
        *,
        method: str,
        vectors: np.ndarray | None,
        projection: np.ndarray | None,
        size: int,
        dim: int,
        nprobe: int,
        ef_search: int,
        rerank: int,
        build_seconds: float,
    ) -> None:
        self._index = index
        self.method = method
        # Full vectors, kept (not copied) only when PCA is used, to re-rank candidates exactly.
        self._vectors = vectors
        self._projection = projection
        self.size = size
        self.dim = dim
        self.reduced_dim = dim if projection is None else int(projection.shape[1])
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.rerank = rerank
        self.build_seconds = build_seconds

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        method: str = "ivf",
        pca_dims: int | None = ANN_PCA_DIMS,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 16,
        ef_construction: int = 100,
        ef_search: int = 128,
        rerank: int = RERANK_FACTOR,
        seed: int = 0,
        threads: int | None = None,
    ) -> AnnIndex:
        """Index (n, d) unit rows (row i is returned as row i).

        Parameters
        ----------
        vectors : (n, d) unit rows, float32 or float16, in memory or memory-mapped
            (`np.load(path, mmap_mode="r")`). Never copied whole: read in CHUNK_ROWS blocks to
            build, and kept (when PCA is used) to re-rank candidates, reading only their rows.
            Do not modify them afterwards.
        method : "ivf" (default; fast to build) or "hnsw" (slow to build, fast to query).
        pca_dims : reduce wider vectors to this many dims before indexing (only when there are
            more rows than that); None never reduces.
        nlist : IVF lists; default 2 * sqrt(n) (2000 at 1M), a balance of scan and training.
        nprobe : IVF lists scanned per query; default 2% of the lists (40 at 1M).
        hnsw_m, ef_construction, ef_search : HNSW graph degree, build beam and query beam.
        rerank : with PCA, fetch rerank * k candidates and re-rank them with the full vectors.
        seed : fixes the training sample and k-means.
        threads : OpenMP threads for building (default: all cores).
        """
        faiss = _faiss()
        if method not in METHODS:
            raise LookalikeError(f"unknown ANN method {method!r}; valid: {', '.join(METHODS)}")
        vectors = _as_rows(vectors)
        start = time.perf_counter()
        n, d = vectors.shape
        if threads is not None:
            faiss.omp_set_num_threads(threads)
        rng = np.random.default_rng(seed)

        projection = None
        # Too few rows to pin down pca_dims directions: index the full vectors.
        if pca_dims is not None and pca_dims < min(d, n):
            projection = _pca_projection(vectors, pca_dims, rng)
        width = d if projection is None else int(projection.shape[1])

        if method == "hnsw":
            index, lists = _hnsw(faiss, width, hnsw_m, ef_construction), 0
        else:
            lists = nlist or round(LISTS_PER_SQRT_N * math.sqrt(n))
            lists = max(1, min(lists, n // TRAIN_POINTS_PER_LIST or 1))
            index = _ivf(faiss, vectors, projection, lists, seed, rng)
        # Added chunk by chunk: a memory-mapped matrix is read once, in order, never whole.
        for chunk in iter_chunks(vectors):
            index.add(_prepare(chunk, projection))
        # nprobe only means something for IVF; HNSW keeps 0.
        default_probes = max(1, math.ceil(DEFAULT_SCAN_SHARE * lists))
        probes = min(lists, nprobe or default_probes) if lists else 0
        return cls(
            index,
            method=method,
            vectors=vectors if projection is not None else None,
            projection=projection,
            size=n,
            dim=d,
            nprobe=probes,
            ef_search=ef_search,
            rerank=max(1, int(rerank)),
            build_seconds=time.perf_counter() - start,
        )

    @classmethod
    def updated(
        cls,
        arrays: Mapping[str, np.ndarray],
        vectors: np.ndarray,
        source: np.ndarray | None = None,
        lists_file: Path | None = None,
    ) -> AnnIndex:
        """A saved IVF index's trained parts (its PCA and its lists' centroids) kept for a
        catalog update whose vectors come from the same model: what `build` gives without
        training. Costs what changed, not the catalog.

        Parameters
        ----------
        arrays : the saved index (`to_arrays`).
        lists_file : its lists, when saved on their own (`write_lists`); read into memory,
            since an update changes them.
        vectors : (n, d) the updated catalog's unit rows (memory-mapped is fine: only the new
            rows are read, and candidates when re-ranking).
        source : (n,) each row's row in the saved index, -1 for a new one; the saved rows no
            row names are removed and the kept ones renumbered in place (their stored codes
            are not recomputed), then only the new rows are projected and added. None (or
            nothing kept) empties the lists and adds every row: a refill.
        """
        faiss = _faiss()
        if str(arrays["method"]) != "ivf":
            raise LookalikeError("only an IVF index can be updated — rebuild it")
        saved_size, dim, nprobe, ef_search, rerank = (int(v) for v in arrays["settings"])
        vectors = _as_rows(vectors)
        if vectors.shape[1] != dim:
            raise LookalikeError(
                f"the saved approximate index is {dim}-d, the vectors {vectors.shape[1]}-d "
                "— rebuild it"
            )
        n = len(vectors)
        source = np.full(n, -1, np.int64) if source is None else np.asarray(source, np.int64)
        if source.shape != (n,) or source.max(initial=-1) >= saved_size:
            raise LookalikeError(
                f"an update needs each of the {n} rows' row in the saved index of "
                f"{saved_size} (or -1), got {source.shape[0]} entries — rebuild it"
            )
        start = time.perf_counter()
        index = _read_faiss(arrays, lists_file, mapped=False)
        projection = arrays.get("projection")
        projection = None if projection is None else np.asarray(projection, np.float32)
        keep = source >= 0
        if not keep.any():
            index.reset()  # empties the lists; the trained quantizer stays
        else:
            new_row = np.full(saved_size, -1, np.int64)
            new_row[source[keep]] = np.flatnonzero(keep)
            gone = np.flatnonzero(new_row < 0)
            if len(gone):
                index.remove_ids(faiss.IDSelectorBatch(gone))
            if not np.array_equal(new_row[new_row >= 0], np.arange(int(keep.sum()))):
                _renumber(index, new_row)
        added = np.flatnonzero(~keep)
        for lo in range(0, len(added), CHUNK_ROWS):
            rows = added[lo : lo + CHUNK_ROWS]
            index.add_with_ids(_prepare(take_rows(vectors, rows), projection), rows)
        if index.ntotal != n:  # pragma: no cover - a faiss invariant
            raise LookalikeError(f"the updated index holds {index.ntotal} rows, not {n}")
        return cls(
            index,
            method="ivf",
            vectors=vectors if projection is not None else None,
            projection=projection,
            size=n,
            dim=dim,
            nprobe=nprobe,
            ef_search=ef_search,
            rerank=rerank,
            build_seconds=time.perf_counter() - start,
        )

    def to_arrays(self, with_lists: bool = True) -> dict[str, np.ndarray]:
        """The index as plain arrays (faiss's own serialised bytes, the PCA matrix and the
        search settings), for `np.savez`; `from_arrays` reads them back. `with_lists=False`
        leaves faiss's part out: it is then saved on its own with `write_lists`."""
        faiss = _faiss()
        settings = [self.size, self.dim, self.nprobe, self.ef_search, self.rerank]
        arrays = {
            **({"faiss": faiss.serialize_index(self._index)} if with_lists else {}),
            "method": np.array(self.method),
            "settings": np.array(settings, dtype=np.int64),
            "build_seconds": np.array(self.build_seconds),
        }
        if self._projection is not None:
            arrays["projection"] = self._projection
        return arrays

    def write_lists(self, path: Path) -> None:
        """Write faiss's part of the index (quantiser and inverted lists) to its own file, in
        faiss's format, which `from_arrays(..., lists_file=path)` memory-maps."""
        _faiss().write_index(self._index, str(path))

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        vectors: np.ndarray,
        lists_file: Path | None = None,
    ) -> AnnIndex:
        """An index saved with `to_arrays`, re-attached to the `vectors` it was built from
        (memory-mapped is fine: only candidate rows are read, to re-rank).

        When `arrays` were saved without their lists, `lists_file` (written by `write_lists`)
        is memory-mapped read-only: the lists cost no anonymous memory, processes serving the
        same file share its pages, and only the lists queries touch are read from disk."""
        size, dim, nprobe, ef_search, rerank = (int(v) for v in arrays["settings"])
        vectors = _as_rows(vectors)
        if vectors.shape != (size, dim):
            raise LookalikeError(
                f"the saved approximate index covers {size} x {dim} vectors, not "
                f"{vectors.shape[0]} x {vectors.shape[1]} — rebuild it"
            )
        projection = arrays.get("projection")
        return cls(
            _read_faiss(arrays, lists_file, mapped=True),
            method=str(arrays["method"]),
            vectors=vectors if projection is not None else None,
            projection=None if projection is None else np.asarray(projection, np.float32),
            size=size,
            dim=dim,
            nprobe=nprobe,
            ef_search=ef_search,
            rerank=rerank,
            build_seconds=float(arrays["build_seconds"]),
        )

    def inverted_lists(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each inverted list of an IVF index: (its rows (m,) int64, their indexed vectors
        (m, reduced_dim) float32, as the index holds them: PCA-reduced for wide vectors).
        Lists with fewer than two rows are skipped. Raises for an HNSW index (no lists)."""
        if self.method != "ivf":
            raise LookalikeError(f"a {self.method} index has no inverted lists")
        faiss = _faiss()
        ivf = faiss.extract_index_ivf(self._index)
        lists = ivf.invlists
        for number in range(ivf.nlist):
            size = lists.list_size(number)
            if size < 2:
                continue
            rows = faiss.rev_swig_ptr(lists.get_ids(number), size).astype(np.int64)
            codes = faiss.rev_swig_ptr(lists.get_codes(number), size * ivf.code_size)
            yield rows, np.frombuffer(codes, np.float32).reshape(size, self.reduced_dim).copy()

    @property
    def nbytes(self) -> int:
        """Bytes the faiss index holds (its serialised size), plus the PCA matrix."""
        faiss = _faiss()
        extra = 0 if self._projection is None else self._projection.nbytes
        return int(faiss.serialize_index(self._index).nbytes) + extra

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude_rows: np.ndarray | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k nearest rows of each query by cosine similarity, best first.

        Parameters
        ----------
        queries : (m, d) or (d,) float vectors; normalised here.
        k : neighbours per query, 1 <= k <= size.
        exclude_rows : (m,) row to leave out of each query's result (-1: none), as in
            `search.Index.search_rows`.
        nprobe, ef_search, rerank : override the build-time search effort for this call.
        allowed : only rows whose bit is set in this bitmap may be returned (uint8, n / 8
            bytes, `np.packbits(mask, bitorder="little")`): a search within a pool.

        Returns
        -------
        rows : (m, k) int64, -1 where fewer than k were found.
        sims : (m, k) float32 cosine similarities (exact when PCA is used: re-ranked with the
            full vectors), NaN where rows is -1.
        """
        faiss = _faiss()
        k = check_k(k, self.size)
        q = unit_queries(queries, self.dim, "approximate")
        m = len(q)
        exclude = None
        if exclude_rows is not None:
            exclude = np.asarray(exclude_rows, dtype=np.int64).reshape(-1)
            if len(exclude) != m:
                raise LookalikeError(
                    f"exclude_rows needs one row per query ({m}), got {len(exclude)}"
                )

        # One extra candidate covers the excluded row; re-ranking widens the net under PCA.
        want = k + (exclude is not None)
        factor = max(1, int(rerank or self.rerank)) if self._projection is not None else 1
        fetch = min(self.size, want * factor)
        selector = None
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.uint8)
            if len(allowed) != (self.size + 7) // 8:
                raise LookalikeError(
                    f"allowed must be a bitmap of {(self.size + 7) // 8} bytes for "
                    f"{self.size} rows, got {len(allowed)}"
                )
            # faiss reads the bitmap in place: `allowed` outlives the search below.
            selector = faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(allowed))
        if self.method == "hnsw":
            params = faiss.SearchParametersHNSW(
                efSearch=max(ef_search or self.ef_search, fetch), sel=selector
            )
        else:
            probes = min(int(self._index.nlist), nprobe or self.nprobe)
            params = faiss.SearchParametersIVF(nprobe=probes, sel=selector)
        searched = q if self._projection is None else _project(q, self._projection)
        sims, rows = self._index.search(searched, fetch, params=params)
        rows = rows.astype(np.int64, copy=False)
        if exclude is not None:
            rows[rows == exclude[:, None]] = -1
        if self._projection is not None:
            sims = _exact_sims(q, self._vectors, rows)
        sims = np.where(rows >= 0, sims, -np.inf).astype(np.float32)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        rows = np.take_along_axis(rows, order, axis=1)
        sims = np.take_along_axis(sims, order, axis=1)
        missing = np.isneginf(sims) | (rows < 0)
        rows[missing] = -1
        sims[missing] = np.nan
        return rows, sims


def _as_rows(vectors: np.ndarray) -> np.ndarray:
    """`vectors` as a 2-D matrix, not copied: a memory-mapped or float16 matrix stays one
    (it is read in chunks when indexing and row by row when re-ranking)."""
    if not isinstance(vectors, np.ndarray) or vectors.dtype not in (np.float16, np.float32):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise LookalikeError(
            f"an ANN index needs a non-empty (n, d) matrix, got shape {vectors.shape}"
        )
    return vectors


def iter_chunks(vectors: np.ndarray, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """Consecutive float32 blocks of at most `rows` rows of `vectors`.

    A memory-mapped .npy is read with plain file reads, not through the mapping, so building
    over a 1M-row file does not leave the whole file mapped into this process (its RSS).
    """
    n = len(vectors)
    if _is_whole_mapping(vectors):
        with open(vectors.filename, "rb") as handle:
            width, dtype = vectors.shape[1], vectors.dtype
            for lo in range(0, n, rows):
                count = (min(n, lo + rows) - lo) * width
                handle.seek(vectors.offset + lo * width * dtype.itemsize)
                block = np.fromfile(handle, dtype=dtype, count=count).reshape(-1, width)
                yield block.astype(np.float32, copy=False)
        return
    for lo in range(0, n, rows):
        yield np.ascontiguousarray(vectors[lo : lo + rows], dtype=np.float32)


def _prepare(chunk: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    """A block of rows as the index stores them: projected (and re-normalised) under PCA."""
    return chunk if projection is None else _project(chunk, projection)


def _is_whole_mapping(vectors: np.ndarray) -> bool:
    """Whether `vectors` is a whole memory-mapped file (np.load(mmap_mode="r") or np.memmap
    itself). A slice of one keeps its parent's offset attribute, so it does not count."""
    return (
        isinstance(vectors, np.memmap)
        and isinstance(vectors.base, mmap.mmap)
        and getattr(vectors, "filename", None) is not None
        and vectors.flags.c_contiguous
    )


def take_rows(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), d) float32 copy of `vectors[rows]` (rows: 1-D int, any order).

    A memory-mapped file is read with one pread per distinct row instead of through the
    mapping: touching a mapped page can map a whole large folio (up to 2 MB) into this
    process, so 10k scattered rows of a 4 GB file showed the whole file in RSS. pread copies
    just the row and leaves the file to the shared page cache.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if not _is_whole_mapping(vectors):
        return np.asarray(vectors[rows], dtype=np.float32)
    width, dtype = vectors.shape[1], vectors.dtype
    size = width * dtype.itemsize
    wanted, where = np.unique(rows, return_inverse=True)
    out = np.empty((len(wanted), width), dtype=dtype)
    fd = os.open(vectors.filename, os.O_RDONLY)
    try:
        for i, row in enumerate(wanted.tolist()):
            out[i] = np.frombuffer(os.pread(fd, size, vectors.offset + row * size), dtype=dtype)
    finally:
        os.close(fd)
    return out.astype(np.float32, copy=False)[where]


def _sample_rows(vectors: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` random rows, float32 (all of them when there are no more)."""
    n = len(vectors)
    if size >= n:
        return np.concatenate(list(iter_chunks(vectors)))
    return take_rows(vectors, rng.choice(n, size, replace=False))


def _renumber(index: Any, new_row: np.ndarray) -> None:
    """Rename every id stored in an IVF index's lists by `new_row` (old id -> new id), list by
    list through faiss's `update_entries`; the stored codes are written back unchanged."""
    faiss = _faiss()
    lists = index.invlists
    width = lists.code_size
    for number in range(index.nlist):
        size = lists.list_size(number)
        if size == 0:
            continue
        ids = faiss.rev_swig_ptr(lists.get_ids(number), size).copy()
        codes = faiss.rev_swig_ptr(lists.get_codes(number), size * width).copy()
        renamed = np.ascontiguousarray(new_row[ids])
        lists.update_entries(number, 0, size, faiss.swig_ptr(renamed), faiss.swig_ptr(codes))


def _read_faiss(arrays: Mapping[str, np.ndarray], lists_file: Path | None, mapped: bool) -> Any:
    """The faiss index of a saved index: from its serialised bytes in `arrays`, else from
    `lists_file`, memory-mapped read-only when `mapped` (an IVF index's lists) or read whole."""
    faiss = _faiss()
    if "faiss" in arrays:
        return faiss.deserialize_index(np.asarray(arrays["faiss"], dtype=np.uint8))
    if lists_file is None:
        raise LookalikeError("the saved approximate index has no lists beside it — rebuild it")
    if not mapped or str(arrays["method"]) != "ivf":
        return faiss.read_index(str(lists_file))
    index = faiss.read_index(str(lists_file), faiss.IO_FLAG_MMAP)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    # faiss pages a mapped list in with up to 32 new threads per search by default: ~3 ms a
    # query on 2 cores, where reading the few probed lists through the mapping takes ~0.4 ms.
    if hasattr(lists, "prefetch_nthread"):
        lists.prefetch_nthread = 0
    return index


def _hnsw(faiss: Any, dim: int, m: int, ef_construction: int) -> Any:
    """An empty faiss HNSW graph of width `dim` (inner product)."""
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    return index


def _ivf(
    faiss: Any,
    vectors: np.ndarray,
    projection: np.ndarray | None,
    lists: int,
    seed: int,
    rng: np.random.Generator,
) -> Any:
    """An empty, trained faiss IVF-Flat index (inner product), its k-means trained on a sample
    of TRAIN_POINTS_PER_LIST rows per list."""
    n = len(vectors)
    dim = vectors.shape[1] if projection is None else projection.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    size = min(n, lists * TRAIN_POINTS_PER_LIST)
    if size == n:
        sample = np.concatenate([_prepare(c, projection) for c in iter_chunks(vectors)])
    else:
        # Read and projected in blocks: 100k rows x 2048 float32 at once would be 800 MB.
        rows = rng.choice(n, size, replace=False)
        blocks = [rows[i : i + CHUNK_ROWS // 4] for i in range(0, size, CHUNK_ROWS // 4)]
        sample = np.concatenate([_prepare(take_rows(vectors, b), projection) for b in blocks])
    index.train(sample)
    return index


def _pca_projection(vectors: np.ndarray, dims: int, rng: np.random.Generator) -> np.ndarray:
    """(d, dims) top right singular vectors of an (uncentred) sample of the rows.

    Uncentred, so x @ P @ P.T @ y is the best rank-`dims` approximation of the inner product
    x @ y that cosine search ranks by. A 10k-row sample and a randomised SVD pin the
    directions down in about a second, where an exact eigendecomposition takes tens.
    """
    from sklearn.utils.extmath import randomized_svd

    sample = _sample_rows(vectors, 10_000, rng)
    _, _, vt = randomized_svd(sample, dims, n_iter=3, random_state=int(rng.integers(2**31)))
    return np.ascontiguousarray(vt.T, dtype=np.float32)


def _project(x: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """Project onto the PCA directions and re-normalise (the index ranks by inner product)."""
    out = np.ascontiguousarray(x @ projection, dtype=np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def _exact_sims(q: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(m, c) exact cosine of each query with its candidate rows (-1 -> -inf).

    Only the candidate rows are read (`take_rows`); float16 rows are widened to float32
    before the product.
    """
    safe = np.maximum(rows, 0)
    gathered = take_rows(vectors, safe).reshape(*safe.shape, -1)
    sims = np.einsum("md,mcd->mc", q, gathered, optimize=False).astype(np.float32)
    sims[rows < 0] = -np.inf
    return sims
