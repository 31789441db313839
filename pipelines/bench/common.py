"""Shared by every benchmark section: timing, RSS, JSON cleaning, and child processes.

Reads nothing itself; a child process reads {task, params} on stdin and prints its result.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import EXTRACTORS, REPO_ROOT, Config

K = 10
BATCH = 64
TARGETS = {
    "embedding_ratio": 0.9,  # stream images/s >= 0.9 x in-memory forward images/s
    "exact_p95_over_floor": 1.5,  # single-query p95 <= 1.5 x the fastest pass over the matrix
    "exact_vs_sklearn": 10.0,  # ours >= 10x faster than sklearn brute cosine
    "ann_recall": 0.95,  # recall@10 at 1M x 128-d ...
    "ann_p95_ms": 5.0,  # ... at p95 <= 5 ms
}
RESULT_PREFIX = "BENCH_RESULT "
# Child tasks by name -> "module:function"; resolved in the child, so no section imports
# another and the engine never imports the app.
CHILD_TASKS = {
    "map": "pipelines.bench.maps:child_map",
    "vector_stages": "pipelines.bench.maps:child_vector_stages",
    "stage": "pipelines.bench.memory:child_stage",
    # The app's own timing harness: named here, imported only in the child.
    "app": "app.timing:child_app",
    "scale_app": "app.timing:child_scale_app",
    "scale_search": "pipelines.bench.scale:child_search",
    "ann_1m_build": "pipelines.bench.ann_1m:child_build",
    "ann_1m_serve": "pipelines.bench.ann_1m:child_serve",
    "ann_1m_load_index": "pipelines.bench.ann_1m:child_load_index",
    "maps_1m_compare": "pipelines.bench.maps_1m:child_compare",
    "maps_1m_map": "pipelines.bench.maps_1m:child_map",
    "maps_1m_kmeans": "pipelines.bench.maps_1m:child_kmeans",
    "update_run": "pipelines.bench.update_runs:child_run",
    "update_checks": "pipelines.bench.update_checks:child_checks",
    "update_synthetic_prepare": "pipelines.bench.update_synthetic:child_synthetic_prepare",
    "update_synthetic_stages": "pipelines.bench.update_synthetic:child_synthetic_stages",
}


def ms(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """Median and p95 of a list of seconds, in milliseconds."""
    arr = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "median_ms": round(float(np.median(arr)), 4),
        "p95_ms": round(float(np.percentile(arr, 95)), 4),
    }


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each function, run round-robin so drifting load hits them all alike.

    `warmup` rounds (untimed) first: caches, thread pools, lazy allocations, page faults.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def cycler(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> Callable[[], Any]:
    """A no-argument function that calls `fn` on the next query, cycling through them."""
    counter = iter(range(10**9))
    return lambda: fn(queries[next(counter) % len(queries)])


def rss_mb() -> float:
    """Current resident memory of this process (MB)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB).

    VmHWM, the high-water mark of this process's own address space: Linux carries ru_maxrss
    across fork+exec, so a child started by a 1.6 GB parent (TensorFlow loaded) would report
    at least 1.6 GB whatever it did. ru_maxrss is the fallback where /proc is missing.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def jsonable(obj: Any) -> Any:
    """`obj` with numpy scalars, paths and non-finite floats made JSON-safe (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        value = float(obj)
        return value if np.isfinite(value) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def real_embeddings(config: Config) -> dict[str, Path]:
    """{extractor: path} of the embeddings that exist in `config.artifacts_dir`."""
    return {
        name: config.embeddings_path(name)
        for name in EXTRACTORS
        if config.embeddings_path(name).exists()
    }


def npy_shape(path: Path) -> tuple[int, ...]:
    """Shape of a .npy file, read from its header (memory-mapped, nothing loaded)."""
    return tuple(np.load(path, mmap_mode="r").shape)


def run_child(task: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run `task` (a key of CHILD_TASKS) in a fresh Python process; its result dict includes
    its own peak RSS, or {"error": ...} when it failed or timed out."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    code = "from pipelines.bench.common import child_main; child_main()"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps({"task": task, "params": params}),
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"child {task} exited {proc.returncode}: {' | '.join(tail)}"}


def child_main() -> None:
    """Entry point of a child process: read {task, params} from stdin, print the result."""
    request = json.loads(sys.stdin.read())
    module, name = CHILD_TASKS[request["task"]].split(":")
    task = getattr(importlib.import_module(module), name)
    start = time.perf_counter()
    result = task(**request["params"])
    result["child_seconds"] = round(time.perf_counter() - start, 2)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(RESULT_PREFIX + json.dumps(jsonable(result)), flush=True)
