"""Benchmark vectors: resampled from the real embeddings when there are some, else a
clustered Gaussian mixture. Reads embeddings/*.npy; writes nothing.

A resampled row is a real row plus Gaussian noise with half the real spread along the top
principal directions, so large catalogs keep the real spectrum and cluster structure.
Uniform random unit vectors are avoided: in 128 dims they have no neighbourhood structure,
which no real embedding looks like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bench.common import npy_shape, real_embeddings
from pipelines.config import Config

# Noise of a resampled row, as a share of the real per-direction standard deviation.
RESAMPLE_NOISE = 0.5
# Principal directions the resampling noise follows (the rest gets isotropic noise).
RESAMPLE_DIRECTIONS = 256

_BASES: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def vector_spec(config: Config, n: int, d: int, seed: int = 0) -> dict[str, Any]:
    """How to make n x d benchmark vectors: resampled from real embeddings when there are
    some (the extractor of that width first), else clustered synthetic."""
    real = real_embeddings(config)
    same_width = [p for p in real.values() if npy_shape(p)[1] == d]
    base = same_width[0] if same_width else next(iter(real.values()), None)
    if base is None:
        return {"kind": "clustered", "n": n, "d": d, "seed": seed}
    return {"kind": "resampled", "n": n, "d": d, "seed": seed, "base": str(base)}


def make_vectors(spec: dict[str, Any]) -> np.ndarray:
    """(n, d) float32 unit rows described by `spec` (see `vector_spec`); deterministic.

    kind "real" is the first n rows of the array at spec["base"].
    """
    n, d, seed = int(spec["n"]), int(spec["d"]), int(spec.get("seed", 0))
    if spec["kind"] == "real":
        return normalize(np.load(spec["base"])[:n])
    if spec["kind"] == "resampled":
        return _resample(Path(spec["base"]), n, d, seed)
    return clustered(n, d, seed)


def with_queries(spec: dict[str, Any], queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(catalog rows, held-out queries from the same distribution)."""
    data = make_vectors({**spec, "n": spec["n"] + queries})
    return data[: spec["n"]], np.ascontiguousarray(data[spec["n"] :])


def _base_model(path: Path, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(base rows at width d, top principal directions, their std, residual std), cached."""
    key = (str(path), d)
    if key not in _BASES:
        base = normalize(np.load(path))
        if base.shape[1] != d:
            # A narrower width from a wider extractor: its top-d principal coordinates.
            centred = base - base.mean(axis=0)
            base = normalize(centred @ _top_directions(centred, d)[1].T)
        centred = base - base.mean(axis=0)
        r = min(RESAMPLE_DIRECTIONS, d, len(base) - 1)
        s, vt = _top_directions(centred, r)
        std = s / np.sqrt(len(base))
        total = float((centred.astype(np.float64) ** 2).sum() / len(base))
        residual = float(np.sqrt(max(total - float((std.astype(np.float64) ** 2).sum()), 0.0) / d))
        _BASES[key] = (base, vt.astype(np.float32), std.astype(np.float32), residual)
    return _BASES[key]


def _top_directions(centred: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-r singular values and right singular vectors (randomised: seconds, not minutes)."""
    from sklearn.utils.extmath import randomized_svd

    _, s, vt = randomized_svd(centred, r, n_iter=4, random_state=0)
    return s, vt


def _resample(path: Path, n: int, d: int, seed: int) -> np.ndarray:
    base, directions, std, residual = _base_model(path, d)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for lo in range(0, n, 50_000):
        hi = min(n, lo + 50_000)
        anchors = rng.integers(0, len(base), hi - lo)
        z = rng.standard_normal((hi - lo, len(std)), dtype=np.float32) * (RESAMPLE_NOISE * std)
        block = base[anchors] + z @ directions
        block += rng.standard_normal((hi - lo, d), dtype=np.float32) * (RESAMPLE_NOISE * residual)
        out[lo:hi] = normalize(block)
    return out


def clustered(n: int, d: int, seed: int, clusters: int = 1000, spread: float = 1.0) -> np.ndarray:
    """A Gaussian mixture on the sphere with a power-law spectrum (few strong directions)."""
    rng = np.random.default_rng(seed)
    scales = np.arange(1, d + 1, dtype=np.float32) ** -0.5
    centres = normalize(rng.standard_normal((clusters, d), dtype=np.float32) * scales)
    out = np.empty((n, d), np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        noise = normalize(rng.standard_normal((hi - lo, d), dtype=np.float32) * scales)
        out[lo:hi] = normalize(centres[rng.integers(0, clusters, hi - lo)] + spread * noise)
    return out
