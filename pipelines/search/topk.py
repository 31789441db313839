"""Top-k by cosine over unit rows: blocked matrix products, an O(n) best-first selection, and
BLAS thread control for single queries. Pure numpy; reads and writes nothing."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np

from pipelines.errors import LookalikeError

# Rows of the (queries x pool) similarity block computed at once: bounds memory to ~64 MB.
BLOCK_CELLS = 16_000_000
# A single query's matrix-vector product runs on one BLAS thread up to this matrix size
# (see `one_blas_thread`); above it the pass is long enough for a second thread to pay off.
# Measured by `python -m pipelines bench` on 2 cores: at 1.8 MB one thread cut gemv's p95 from
# 3.9 to 0.2 ms; at 30 MB and up two threads were faster at the median and p95.
ONE_THREAD_MAX_BYTES = 8 * 2**20
# From this many rows, a top-k first drops every similarity below a bound taken from a
# strided sample of PREFILTER_SAMPLE of them (see `best_first`); below, it partitions all.
PREFILTER_MIN_ITEMS = 16_384
PREFILTER_SAMPLE = 4096


def check_k(k: object, most: int | None = None) -> int:
    """`k` as an int, checked once for every caller: a whole number from 1 up to `most`
    (the catalog size) when given. Anything else is a `LookalikeError` naming the range."""
    whole = not isinstance(k, bool) and isinstance(k, int | np.integer)
    if not whole or k < 1 or (most is not None and k > most):  # type: ignore[operator]
        rule = f"between 1 and {most}" if most is not None else "a whole number >= 1"
        raise LookalikeError(f"k must be {rule}, got {k!r}")
    return int(k)  # type: ignore[arg-type]


def unit_queries(queries: np.ndarray, dim: int, name: str = "index") -> np.ndarray:
    """(m, d) or (d,) query vectors -> (m, d) float32 unit rows, checked.

    The one query normaliser: exact search, the approximate index and uploads all use it.
    A zero or non-finite vector, or a width other than `dim`, is a `LookalikeError`.
    """
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or len(q) == 0:
        raise LookalikeError(
            f"queries must be a (m, d) matrix or one (d,) vector, got shape {q.shape}"
        )
    if q.shape[1] != dim:
        raise LookalikeError(
            f"query vectors have {q.shape[1]} dims; the {name} index has {dim} — "
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
    return q / norms[:, None]


def top_k(
    q: np.ndarray, matrix: np.ndarray, k: int, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Best-first (rows, similarities) of each query among `matrix`'s rows, padded to k.

    One BLAS product per block of queries, then `best_first` on each row of similarities.
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
        with one_blas_thread() if matrix.nbytes <= ONE_THREAD_MAX_BYTES else nullcontext():
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
        tops = best_first_rows(sims, width)
        for i, top, row_sims in zip(range(block.start, block.stop), tops, sims, strict=True):
            values = row_sims[top]
            # The excluded item (similarity -inf) sorts last; drop it rather than return it.
            keep = ~np.isneginf(values)
            found = int(keep.sum())
            out_rows[i, :found] = top[keep]
            out_sims[i, :found] = values[keep]
    return out_rows, out_sims


def best_first_rows(sims: np.ndarray, width: int) -> np.ndarray:
    """`best_first` of every row of (b, n) `sims`: a (b, width) int64 array.

    Below PREFILTER_MIN_ITEMS columns one partition of the whole block replaces b Python-level
    calls (at 64 queries x 3.8k items the calls cost more than the matrix product). Rows where
    ties cross the width-th value, or with NaNs, go through `best_first` one by one.
    """
    b, n = sims.shape
    if b == 1 or n >= PREFILTER_MIN_ITEMS or width >= n:
        return np.stack([best_first(row, width) for row in sims])
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
        out[i] = best_first(sims[i], width)
    return out


def best_first(sims: np.ndarray, width: int) -> np.ndarray:
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
def one_blas_thread() -> Iterator[None]:
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
            controller = blas_controller()
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


def blas_controller() -> Any:
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
