"""The app at scale (`python -m pipelines bench --scale N`): reads a real build, writes a
synthetic N-item build into a scratch folder (`scale_build`, deleted afterwards), times every
page with AppTest on both builds in one run, the Map's first paint in Chromium
(`scale_browser`), search and the map layer, and peak RSS; writes bench/scale-<N>.json.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import artifacts
from pipelines.bench.common import jsonable, ms, run_child
from pipelines.bench.scale_browser import browser_paint, photo_map_paint
from pipelines.bench.scale_build import build_scaled
from pipelines.config import EXTRACTORS, Config
from pipelines.explore.mosaic import run_mosaic
from pipelines.quality.health import run_health
from pipelines.search.ann import run_ann

PAGES = (
    "app_pages/map.py",
    "app_pages/search.py",
    "app_pages/compare.py",
    "app_pages/clusters.py",
    "app_pages/upload.py",
    "app_pages/photo_map.py",
    "app_pages/health.py",
)
# Server-side targets of issue 15 (ms) at 100k and 1M items, and the Chromium paint ratio.
TARGETS = {
    "map_rerender_ms": {"100000": 300, "1000000": 1000},
    "page_render_ms_1m": 1000,
    "map_paint_ratio": 1.5,
    # Issue 26: the tiled photo map.
    "photo_map_paint_ratio": 1.5,
    "zoom_step_ms": 1000,
    "tiles_build_s_1m": 900,
}


# What `child_search` reports (its child's own RSS and seconds are left out).
SEARCH_KEYS = ("index_load_s", "search_")


def scale_results_path(config: Config, n: int, results_dir: Path | None = None) -> Path:
    """Where `run_scale_bench` writes: bench/scale-<n>.json (or `results_dir`/scale-<n>.json)."""
    return Path(results_dir or config.bench_dir) / f"scale-{n}.json"


# --------------------------------------------------------------------------- measuring


def child_search(artifacts_dir: str, queries: int = 30) -> dict[str, Any]:
    """(child) Single-query latency of each strategy on the first extractor (catalog items as
    queries; the first query, which builds any approximate index, is reported apart)."""
    from pipelines.readers import load_index

    cfg = Config(artifacts_dir=Path(artifacts_dir))
    t0 = time.perf_counter()
    index = load_index(cfg, EXTRACTORS[0])
    out: dict[str, Any] = {"index_load_s": round(time.perf_counter() - t0, 2)}
    rng = np.random.default_rng(1)
    rows = rng.integers(index.size, size=queries + 1)
    for strategy in index.strategies:
        times = []
        for row in rows:
            vector = np.asarray(index.vectors[row], dtype=np.float32)
            t0 = time.perf_counter()
            index.search(vector, 10, strategy, exclude_rows=[int(row)])
            times.append(time.perf_counter() - t0)
        out[f"search_{strategy}_first_ms"] = round(times[0] * 1e3, 1)
        out[f"search_{strategy}_median_ms"] = ms(times[1:])["median_ms"]
        out[f"search_{strategy}_p95_ms"] = ms(times[1:])["p95_ms"]
    return out


def run_scale_bench(
    config: Config,
    n: int,
    scratch: Path | None = None,
    browser: bool = True,
    raster_min_items: int | None = None,
    dtype: str = "float32",
    keep: bool = False,
    repeats: int = 3,
    pages: tuple[str, ...] = PAGES,
    models: bool = True,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """`python -m pipelines bench --scale N`: build N synthetic items from the build in
    `config.artifacts_dir`, time the app on it and on the real build (same run), write
    `scale_results_path(config, n)` and print a table.

    Parameters
    ----------
    config : the real build (its artifacts dir) and where the results go (its bench dir).
    n : synthetic catalog size.
    scratch : folder for the synthetic build (default: bench/scale-build); deleted after
        unless `keep`.
    browser : also time the Map's first paint in Chromium.
    raster_min_items : the Map's raster threshold for this run (default: the app's own).
    dtype : vector precision of the synthetic build ("float32" or "float16").
    repeats : timed repetitions of each measure (medians are reported).
    pages : the pages to time (default: every page).
    models : load the upload models (False: the Upload page is timed without them).
    results_dir : where the JSON goes (default: `config.bench_dir`).
    """
    from pipelines.bench.report import loadavg, machine_info
    from pipelines.bench.scratch import sigterm_as_exit

    scratch = Path(scratch) if scratch is not None else config.bench_dir / "scale-build"
    build_dir = scratch / f"n{n}"
    results: dict[str, Any] = {
        "n": n,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(config.artifacts_dir),
        "machine": machine_info(),
        "targets": TARGETS,
        "dtype": dtype,
    }
    # SIGTERM (a timeout) ends the run as an exception does: the synthetic build is removed.
    with sigterm_as_exit(f"bench --scale {n}"):
        try:
            print(f"bench --scale {n}: building {build_dir} ...", flush=True)
            t0 = time.perf_counter()
            scaled = build_scaled(config, build_dir, n, dtype=dtype, models=models)
            results["build_s"] = round(time.perf_counter() - t0, 1)
            # The saved approximate index, as `run` leaves it for a large catalog
            # (pipelines/search/ann.py): without it the first search of each extractor builds
            # it (over a minute at 1M x 2048).
            t0 = time.perf_counter()
            results["ann"] = _jsonable_stage(run_ann(scaled))
            results["ann_build_s"] = round(time.perf_counter() - t0, 1)
            # The photo map, as `run` leaves it: from 20k items a deep-zoom tile pyramid per
            # extractor (pipelines/explore/tiles.py).
            t0 = time.perf_counter()
            results["mosaic"] = _jsonable_stage(run_mosaic(scaled))
            results["mosaic_build_s"] = round(time.perf_counter() - t0, 1)
            results["mosaic_disk_mb"] = _disk_mb(scaled.artifacts_dir / "mosaic")
            # Catalog health, as `run` leaves it: from ANN_MIN_ITEMS through the approximate
            # index (pipelines/quality/health_large.py), so the Health page has its lists.
            t0 = time.perf_counter()
            results["health"] = _jsonable_stage(run_health(scaled))
            results["health_build_s"] = round(time.perf_counter() - t0, 1)
            params = {
                "pages": list(pages),
                "raster_min_items": raster_min_items,
                "repeats": repeats,
                "models": models,
            }
            for name, path in (("default", config.artifacts_dir), ("scaled", build_dir)):
                print(f"bench --scale {n}: pages on the {name} build ...", flush=True)
                load = loadavg()
                # The pages are timed by the app's own harness (app/timing.py), search apart.
                result = run_child("scale_app", {"artifacts_dir": str(path), **params}, 3600)
                search = run_child("scale_search", {"artifacts_dir": str(path)}, 3600)
                result.update({k: v for k, v in search.items() if k.startswith(SEARCH_KEYS)})
                if "error" in search:
                    result["search_error"] = search["error"]
                result["loadavg_before"] = load
                results[name] = result
            if browser:
                print(f"bench --scale {n}: the Map's first paint in Chromium ...", flush=True)
                load = loadavg()
                paint = browser_paint(
                    {"default": str(config.artifacts_dir), "scaled": str(build_dir)}, repeats
                )
                paint["loadavg_before"] = load
                results["browser"] = paint
                print(f"bench --scale {n}: the Photo map in Chromium ...", flush=True)
                load = loadavg()
                photos = photo_map_paint(
                    {"default": str(config.artifacts_dir), "scaled": str(build_dir)}, repeats
                )
                photos["loadavg_before"] = load
                results["photo_map"] = photos
            results["ratios"] = _ratios(results)
        finally:
            if not keep:
                shutil.rmtree(build_dir, ignore_errors=True)
    results["machine"]["loadavg_end"] = loadavg()
    out = scale_results_path(config, n, results_dir)
    artifacts.write_json(jsonable(results), out)
    print(format_scale(results))
    print(f"bench --scale {n}: -> {out}")
    return results


def _disk_mb(folder: Path) -> float:
    """The bytes of every file under `folder`, in MB."""
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1)


def _jsonable_stage(result: Any) -> Any:
    details = getattr(result, "details", None)
    return details if details is not None else str(result)


def _ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Scaled / default of every page's times and of the Map's paint."""
    out: dict[str, Any] = {}
    default = {r["page"]: r for r in results.get("default", {}).get("pages", [])}
    for row in results.get("scaled", {}).get("pages", []):
        base = default.get(row["page"], {})
        for key in ("first_render_ms", "k_rerender_ms", "extractor_rerender_ms"):
            if row.get(key) and base.get(key):
                out[f"{row['page']}:{key}"] = round(row[key] / base[key], 2)
    for key, name in (("browser", "map_paint"), ("photo_map", "photo_map_paint")):
        paint = results.get(key, {})
        if "paint_median_s" in paint.get("default", {}) and "scaled" in paint:
            out[name] = round(
                paint["scaled"]["paint_median_s"] / paint["default"]["paint_median_s"], 2
            )
    return out


def format_scale(results: dict[str, Any]) -> str:
    """A plain-text table of one scale run: each page's times on both builds."""
    lines = [f"scale {results['n']:,} items vs the default build (ms, medians: default / scaled)"]
    lines.append(f"{'page':<16}{'first render':>20}{'k change':>20}{'extractor':>20}")
    default = {r["page"]: r for r in results.get("default", {}).get("pages", [])}

    def cell(value: Any) -> str:
        return "-" if value is None else f"{float(value):,.0f}"

    for row in results.get("scaled", {}).get("pages", []):
        base = default.get(row["page"], {})
        cells = [
            f"{cell(base.get(key))} / {cell(row.get(key))}"
            for key in ("first_render_ms", "k_rerender_ms", "extractor_rerender_ms")
        ]
        name = row["page"].split("/")[-1].removesuffix(".py")
        lines.append(f"{name:<16}" + "".join(f"{c:>20}" for c in cells))
    for name in ("default", "scaled"):
        part = results.get(name, {})
        lines.append(
            f"{name}: peak RSS {part.get('peak_rss_mb')} MB; map figure "
            f"{part.get('map_figure_json_bytes')} B in {part.get('map_figure_build_ms')} ms"
            f" (layer {part.get('map_layer_build_ms', '-')} ms); exact search "
            f"{part.get('search_exact_median_ms')} ms"
        )
    paint = results.get("browser", {})
    if "scaled" in paint:
        lines.append(
            f"Map first paint: default {paint['default']['paint_median_s']} s, scaled "
            f"{paint['scaled']['paint_median_s']} s (x{results['ratios'].get('map_paint')})"
        )
    if "health_build_s" in results:
        lines.append(f"Catalog health: built in {results['health_build_s']} s (every extractor)")
    if "mosaic_build_s" in results:
        lines.append(
            f"Photo map tiles: built in {results['mosaic_build_s']} s (every extractor), "
            f"{results['mosaic_disk_mb']} MB on disk"
        )
    photos = results.get("photo_map", {})
    if "paint_median_s" in photos.get("scaled", {}):
        scaled = photos["scaled"]
        lines.append(
            f"Photo map first paint: default {photos['default']['paint_median_s']} s, scaled "
            f"{scaled['paint_median_s']} s (x{results['ratios'].get('photo_map_paint')}); "
            f"zoom step median {scaled.get('zoom_step_median_ms')} ms, max "
            f"{scaled.get('zoom_step_max_ms')} ms"
        )
    return "\n".join(lines)


def read_results(path: Path) -> dict[str, Any]:
    """A scale run's JSON."""
    return json.loads(Path(path).read_text())


def add_arguments(parser: Any) -> None:
    """`bench`'s scale options (`python -m pipelines bench --scale N ...`)."""
    parser.add_argument(
        "--scale",
        type=int,
        default=None,
        metavar="N",
        help="the app at N items: a synthetic catalog made from this build, every page timed "
        "against this build (pipelines/bench/scale.py; writes bench/scale-N.json)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="with --scale: folder for the synthetic build, deleted afterwards "
        "(default: bench/scale-build under the artifacts)",
    )
    parser.add_argument(
        "--no-browser",
        action="store_true",
        help="with --scale: skip the Map's first paint in Chromium",
    )
