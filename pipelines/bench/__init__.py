"""Benchmarks every stage: reads artifacts (or makes vectors); writes bench/results.json.

One module per section, each returning a dict with "rows" of numbers or a "skipped" reason:
embedding (stream vs in-memory forward), exact_search (vs the fastest pass over the matrix
and scikit-learn), ann (recall and latency of the approximate index), maps (UMAP time and
memory), app (AppTest re-renders, upload round trip), memory (disk per item, peak RSS),
rerank (P@10 gain and latency of query expansion).
Opt-in sections run only when named (`--section ann_1m`): ann_1m and maps_1m (search, maps and
k-means at 1M x 2048 from memory-mapped files, in a scratch folder removed afterwards:
`scratch.run_scratch`), and update (the default catalog built, then 1 % added, 1 % removed and
10 photos replaced, each update timed against the first run and checked; a 100k synthetic
update), which builds a whole catalog twice (30-60 minutes); and cold_start (the service until
every model is loaded, the app until a first upload shows its neighbours; quiet and busy).
`bench --scale N` is not a section: `scale.run_scale_bench` builds a synthetic N-item catalog
from the build and times the app on it (every page, the Map's paint in Chromium) against the
build itself; it writes bench/scale-N.json.
Ratios are measured side by side in one run (interleaved repetitions), because other jobs
share the cores and absolute times drift. Peak memory is measured in child processes
(`common.run_child`), so one measurement never inherits another's peak.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.config import Config
from pipelines.errors import LookalikeError

SECTIONS = (
    "embedding",
    "exact_search",
    "ann",
    "maps",
    "app",
    "memory",
    "rerank",
)
# Valid for --section, left out of the default "every section" run (too long for it): the 1M
# sections (more than 20 minutes and 13 GB of scratch together: a default run with them went
# past 40 minutes), the update (30-60 minutes) and cold starts (quiet and busy, ~3 minutes:
# they start servers and spin the CPU, so they run alone).
OPT_IN_SECTIONS = ("ann_1m", "maps_1m", "update", "cold_start")


def results_path(config: Config, sections: Sequence[str] | None = None) -> Path:
    """Where `run_bench` writes: bench/results.json, or results.<a>+<b>.json for a subset of
    the sections (so running one section never overwrites a full run's numbers)."""
    if sections is None or tuple(sections) == SECTIONS:
        return config.bench_dir / "results.json"
    return config.bench_dir / f"results.{'+'.join(sections)}.json"


def check_sections(sections: Sequence[str] | None) -> tuple[str, ...]:
    """The sections to run, in SECTIONS + OPT_IN_SECTIONS order; every one of SECTIONS when
    None or empty."""
    if not sections:
        return SECTIONS
    valid = SECTIONS + OPT_IN_SECTIONS
    unknown = [s for s in sections if s not in valid]
    if unknown:
        raise LookalikeError(
            f"unknown bench section {unknown[0]!r}; valid sections: {', '.join(valid)}"
        )
    return tuple(s for s in valid if s in sections)


def _runners(config: Config, quick: bool) -> dict[str, Callable[[], dict[str, Any]]]:
    from pipelines.bench.ann import bench_ann
    from pipelines.bench.ann_1m import bench_ann_1m
    from pipelines.bench.app import bench_app
    from pipelines.bench.cold_start import bench_cold_start
    from pipelines.bench.embedding import bench_embedding
    from pipelines.bench.exact_search import bench_exact
    from pipelines.bench.maps import bench_maps
    from pipelines.bench.maps_1m import bench_maps_1m
    from pipelines.bench.memory import bench_memory
    from pipelines.bench.rerank import bench_rerank
    from pipelines.bench.update import bench_update

    shared: dict[str, Any] = {}  # numbers one section hands to another (e.g. the 100k child)
    return {
        "embedding": lambda: bench_embedding(config, quick),
        "exact_search": lambda: bench_exact(config, quick),
        "ann": lambda: bench_ann(config, quick),
        "maps": lambda: bench_maps(config, quick, shared),
        "app": lambda: bench_app(config, quick, shared),
        "memory": lambda: bench_memory(config, quick, shared),
        "ann_1m": lambda: bench_ann_1m(config, quick),
        "maps_1m": lambda: bench_maps_1m(config, quick),
        "rerank": lambda: bench_rerank(config, quick),
        "update": lambda: bench_update(config, quick),
        "cold_start": lambda: bench_cold_start(config, quick),
    }


def run_bench(
    config: Config, quick: bool = False, sections: Sequence[str] | None = None
) -> dict[str, Any]:
    """Run the benchmark sections, write `results_path(config, sections)` atomically, print
    a table.

    Parameters
    ----------
    config : whose artifacts are measured (catalog, embeddings, models); synthetic vectors
        stand in for whatever is missing.
    quick : small sizes and few repetitions (a few minutes; what the tests run). The full
        run measures up to 100k items (about 18 minutes on 2 cores); the 1M sections run when
        named.
    sections : names from SECTIONS or OPT_IN_SECTIONS to run (default: all of SECTIONS).
        The memory section reports the maps and app children's peaks only when those
        sections ran too.

    Returns
    -------
    {"machine": {...}, "quick", "seconds", "sections": {name: {"rows": [...], ...} or
    {"skipped": reason} or {"error": message}}}
    """
    from pipelines import artifacts
    from pipelines.bench.common import TARGETS, jsonable
    from pipelines.bench.report import format_table, loadavg, machine_info
    from pipelines.bench.scratch import sweep_scratch
    from pipelines.bench.vectors_disk import scratch_dir

    names = check_sections(sections)
    sweep_scratch(scratch_dir(config))  # what a killed run left (its own run's goes with it)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "quick": quick,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "artifacts_dir": str(config.artifacts_dir),
        "machine": machine_info(),
        "targets": TARGETS,
        "sections": {},
    }
    runners = _runners(config, quick)
    for name in names:
        print(f"bench: {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            section = runners[name]()
        except Exception as err:  # a failed section is recorded, the others still run
            section = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
        section["seconds"] = round(time.perf_counter() - t0, 1)
        results["sections"][name] = section
    results["machine"]["loadavg_end"] = loadavg()
    results["seconds"] = round(time.perf_counter() - start, 1)
    out = results_path(config, None if names == SECTIONS else names)
    artifacts.write_json(jsonable(results), out)
    print(format_table(results))
    print(f"bench: {results['seconds']} s -> {out}")
    return results
