"""Large benchmark vectors written to disk in chunks (1M x 2048 is 8 GB as float32, more than a
benchmark may hold in RAM). Reads embeddings/*.npy; writes one .npy under `scratch_dir`.

The rows are drawn as `bench.vectors` draws them (a real row plus noise along the real
principal directions, or a clustered Gaussian mixture without real embeddings), one chunk at a
time with its own seed, so the file is the same whatever the chunk a reader uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bench.vectors import RESAMPLE_NOISE, _base_model, clustered, normalize
from pipelines.config import Config

# Rows generated per step: 50k x 2048 float32 is 400 MB of working memory.
CHUNK = 50_000


def scratch_dir(config: Config) -> Path:
    """Where big benchmark files go: $LOOKALIKE_SCRATCH (a disk with room: 1M x 2048 is
    8 GB as float32), else bench/scratch in the artifacts folder."""
    return Path(os.environ.get("LOOKALIKE_SCRATCH", config.bench_dir / "scratch"))


def chunk_rows(spec: dict[str, Any], lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi of the vectors `spec` describes, float32 unit rows (deterministic)."""
    d, seed = int(spec["d"]), int(spec.get("seed", 0))
    out = np.empty((hi - lo, d), np.float32)
    for start in range(lo - lo % CHUNK, hi, CHUNK):
        block = _chunk(spec, start // CHUNK, d, seed)
        a, b = max(lo, start), min(hi, start + CHUNK)
        out[a - lo : b - lo] = block[a - start : b - start]
    return out


def _chunk(spec: dict[str, Any], number: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, number])
    if spec["kind"] != "resampled":
        # The mixture's centres come from `seed` alone, so every chunk shares them.
        scales = np.arange(1, d + 1, dtype=np.float32) ** -0.5
        centres = clustered(1000, d, seed)
        noise = normalize(rng.standard_normal((CHUNK, d), dtype=np.float32) * scales)
        return normalize(centres[rng.integers(0, len(centres), CHUNK)] + noise)
    base, directions, std, residual = _base_model(Path(spec["base"]), d)
    anchors = rng.integers(0, len(base), CHUNK)
    z = rng.standard_normal((CHUNK, len(std)), dtype=np.float32) * (RESAMPLE_NOISE * std)
    block = base[anchors] + z @ directions
    block += rng.standard_normal((CHUNK, d), dtype=np.float32) * (RESAMPLE_NOISE * residual)
    return normalize(block)


def write_vectors(spec: dict[str, Any], path: Path, dtype: str = "float32") -> Path:
    """Write spec["n"] rows of `spec` to the .npy `path` (dtype float32 or float16), chunk by
    chunk, and return it; an existing file of the right shape and dtype is kept."""
    n, d = int(spec["n"]), int(spec["d"])
    if path.exists():
        existing = np.load(path, mmap_mode="r")
        if existing.shape == (n, d) and existing.dtype == np.dtype(dtype):
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as handle:
        header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n, d)}
        np.lib.format.write_array_header_1_0(handle, header)
        for lo in range(0, n, CHUNK):
            chunk_rows(spec, lo, min(n, lo + CHUNK)).astype(dtype).tofile(handle)
    os.replace(tmp, path)
    return path
