"""The app at scale: builds a synthetic catalog of N items from a real build (scratch folder),
times every page (AppTest), the Map's first paint in Chromium, search and the map layer, and
peak RSS, against the real build in the same run; writes bench/scale-<N>.json.

The synthetic items are real items of the source build, jittered: item i copies a random
real item j (its label, split, photo and thumbnail), its vector is drawn around j's class
centroid (the centroid plus j's own offset from it, scaled by a random factor, plus noise, then
normalised), its map position is j's plus a small jitter, and its cluster, predicted category
and colour are j's. So the pages see N distinct items with the real catalog's classes, map
shape and photos, and every id points at a real thumbnail.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import artifacts
from pipelines.ann_store import run_ann
from pipelines.bench.common import RESULT_PREFIX, jsonable, ms, peak_rss_mb
from pipelines.config import EXTRACTORS, REPO_ROOT, Config
from pipelines.errors import LookalikeError

APP = REPO_ROOT / "app" / "streamlit_app.py"
# Rows written per chunk: 50k x 2048 float32 is 400 MB, so a 1M-item build never holds its
# vectors in memory.
CHUNK = 50_000
# Map jitter, as a share of the map's spread: enough to separate copies of one item, small
# enough to keep the map's shape.
MAP_JITTER = 0.01
# Vector noise per dimension, before normalising (the real vectors' per-dimension spread
# around a class centroid is ~0.01-0.02 for 2048-d unit vectors).
VECTOR_NOISE = 0.004
# Pages timed, in this order (the router's paths).
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
}


def scale_results_path(config: Config, n: int, results_dir: Path | None = None) -> Path:
    """Where `run_scale_bench` writes: bench/scale-<n>.json (or `results_dir`/scale-<n>.json)."""
    return Path(results_dir or config.bench_dir) / f"scale-{n}.json"


def build_scaled(
    source: Config,
    out_dir: Path,
    n: int,
    seed: int = 0,
    dtype: str = "float32",
    extractors: list[str] | None = None,
    models: bool = True,
) -> Config:
    """Write a synthetic N-item build into `out_dir` from the real build `source`.

    Parameters
    ----------
    source : a finished build (catalog, embeddings, maps, clusters; categories, colours,
        metrics and models when it has them).
    out_dir : the scratch artifacts folder (created; what was there is replaced).
    n : number of synthetic items.
    seed : the draw of items and noise.
    dtype : "float32" or "float16" vectors (float16 halves the file; the engine must read it).
    extractors : which extractors to write (default: every one `source` has).
    models : link the source's models (the Upload page needs them; False keeps a test from
        loading InceptionV3).

    Returns
    -------
    The Config of the new build (artifacts_dir = out_dir).
    """
    if n < 1:
        raise LookalikeError(f"--scale must be at least 1 item, got {n}")
    if dtype not in ("float32", "float16"):
        raise LookalikeError(f"dtype must be float32 or float16, got {dtype!r}")
    if not source.catalog_path.exists():
        raise LookalikeError(
            f"no catalog at {source.catalog_path} to scale from — pass --artifacts of a finished "
            f"build (python -m pipelines run)"
        )
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cfg = Config(artifacts_dir=out_dir)
    rng = np.random.default_rng(seed)
    real = pd.read_parquet(source.catalog_path)
    real["item_id"] = real["item_id"].astype(str)
    pick = rng.integers(len(real), size=n)
    ids = np.array([f"{i:016x}" for i in range(n)], dtype=object)

    # Thumbnails and models are the real ones (links, nothing copied).
    (out_dir / "thumbs").symlink_to(source.thumbs_dir.resolve(), target_is_directory=True)
    if models and source.models_dir.exists():
        (out_dir / "models").symlink_to(source.models_dir.resolve(), target_is_directory=True)
    catalog = real.iloc[pick].reset_index(drop=True)
    catalog["item_id"] = ids
    artifacts.write_parquet(catalog, cfg.catalog_path)
    cat_manifest = artifacts.write_manifest(
        cfg.catalog_path, "catalog", {"synthetic_from": str(source.artifacts_dir), "n": n}, {}
    )
    _copy_manifest_params(source.catalog_path, cfg.catalog_path)
    inputs = {"catalog": cat_manifest["sha256"]}

    for path in (source.metrics_path, source.per_class_path):
        if path.exists():
            shutil.copy(path, out_dir / path.name)
            shutil.copy(artifacts.manifest_path(path), artifacts.manifest_path(out_dir / path.name))
    if source.categories_path.exists():
        table = pd.read_parquet(source.categories_path).iloc[pick].reset_index(drop=True)
        table["item_id"] = ids
        artifacts.write_parquet(table, cfg.categories_path)
        artifacts.write_manifest(cfg.categories_path, "classify", {}, inputs)
    if source.colours_path.exists():
        table = pd.read_parquet(source.colours_path)
        by_id = dict(zip(table["item_id"].astype(str), table["colour"], strict=True))
        colours = pd.Series(real["item_id"].map(by_id).fillna("none").to_numpy()[pick])
        artifacts.write_parquet(pd.DataFrame({"item_id": ids, "colour": colours}), cfg.colours_path)
        artifacts.write_manifest(cfg.colours_path, "colours", {}, inputs)

    names = extractors or [e for e in EXTRACTORS if source.embeddings_path(e).exists()]
    labels = real["label"].fillna("(none)").astype(str).to_numpy()
    for name in names:
        _scaled_extractor(source, cfg, name, pick, ids, labels, rng, dtype, inputs)
    return cfg


def _copy_manifest_params(src: Path, dest: Path) -> None:
    """Keep the source manifest's params and extra keys (image size, weights) on `dest`'s."""
    old = artifacts.read_manifest(src) or {}
    new = artifacts.read_manifest(dest) or {}
    keep = {k: v for k, v in old.items() if k not in new or k == "params"}
    artifacts.write_json({**new, **keep}, artifacts.manifest_path(dest))


def _scaled_extractor(
    source: Config,
    cfg: Config,
    name: str,
    pick: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    dtype: str,
    inputs: dict[str, str],
) -> None:
    """Vectors, map, clusters and centroids of one extractor for the synthetic items."""
    real = np.load(source.embeddings_path(name), mmap_mode="r")
    real = np.asarray(real, dtype=np.float32)
    n, d = len(pick), real.shape[1]
    classes, codes = np.unique(labels, return_inverse=True)
    centroids = np.stack([real[codes == c].mean(axis=0) for c in range(len(classes))])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    offsets = real - centroids[codes]
    path = cfg.embeddings_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=(n, d))
    for start in range(0, n, CHUNK):
        rows = pick[start : start + CHUNK]
        scale = rng.uniform(0.8, 1.2, size=(len(rows), 1)).astype(np.float32)
        noise = rng.standard_normal((len(rows), d), dtype=np.float32) * VECTOR_NOISE
        block = centroids[codes[rows]] + scale * offsets[rows] + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(rows)] = block
    out.flush()
    del out
    vec_manifest = artifacts.write_manifest(path, "embed", {"synthetic": True}, inputs)
    _copy_manifest_params(source.embeddings_path(name), path)
    vec_inputs = {**inputs, f"embeddings/{name}": vec_manifest["sha256"]}

    points = pd.read_parquet(source.map_path(name))
    points["item_id"] = points["item_id"].astype(str)
    real_ids = pd.read_parquet(source.catalog_path)["item_id"].astype(str)
    xy = points.set_index("item_id").loc[real_ids, ["x", "y"]].to_numpy(np.float32)
    spread = float(np.std(xy)) or 1.0
    jitter = rng.normal(scale=MAP_JITTER * spread, size=(n, 2)).astype(np.float32)
    coords = xy[pick] + jitter
    table = pd.DataFrame({"item_id": ids, "x": coords[:, 0], "y": coords[:, 1]})
    artifacts.write_parquet(table, cfg.map_path(name))
    trust = (artifacts.read_manifest(source.map_path(name)) or {}).get("trustworthiness")
    artifacts.write_manifest(cfg.map_path(name), "maps", {}, vec_inputs, {"trustworthiness": trust})

    if source.clusters_path(name).exists():
        from pipelines.clusters import cluster_summary

        clusters = pd.read_parquet(source.clusters_path(name))["cluster"].to_numpy()[pick]
        table = pd.DataFrame({"item_id": ids, "cluster": clusters.astype(np.int32)})
        artifacts.write_parquet(table, cfg.clusters_path(name))
        shutil.copy(source.centroids_path(name), cfg.centroids_path(name))
        catalog_labels = labels[pick]
        summary = cluster_summary(clusters, catalog_labels)
        artifacts.write_parquet(summary, cfg.cluster_summary_path(name))
        for artifact in (cfg.clusters_path(name), cfg.centroids_path(name)):
            artifacts.write_manifest(artifact, "clusters", {}, vec_inputs)
        artifacts.write_manifest(cfg.cluster_summary_path(name), "clusters", {}, vec_inputs)


# --------------------------------------------------------------------------- measuring


def child_scale_app(
    artifacts_dir: str,
    pages: list[str],
    raster_min_items: int | None = None,
    repeats: int = 3,
    models: bool = True,
) -> dict[str, Any]:
    """(child) Every page under AppTest on one build: the first render (cold caches for the
    first page), then re-renders after changing k and the extractor (medians of `repeats`,
    after one untimed pass over every extractor so each one's index is loaded).

    The upload models the app loads in the background are awaited before any page is timed
    (they would share the cores with it); `models=False` does not load them at all.
    """
    os.environ["LOOKALIKE_ARTIFACTS"] = artifacts_dir
    from streamlit.testing.v1 import AppTest

    from app.ui import loaders, plots, warmup

    if raster_min_items is not None:
        plots.RASTER_MIN_ITEMS = int(raster_min_items)
    if not models:
        warmup.start = lambda cfg: None
    from app.ui.widgets import EXTRACTOR_LABEL, K_LABEL

    at = AppTest.from_file(str(APP), default_timeout=900)
    t0 = time.perf_counter()
    at.run()
    out: dict[str, Any] = {"app_first_render_s": round(time.perf_counter() - t0, 3)}
    build = warmup.start(loaders.config()) if models else None
    t0 = time.perf_counter()
    while build is not None and not build.finished:
        time.sleep(0.25)
    out["models_wait_s"] = round(time.perf_counter() - t0, 1)
    rows = []
    for page in pages:
        at.switch_page(page)
        t0 = time.perf_counter()
        at.run()
        row: dict[str, Any] = {
            "page": page,
            "first_render_ms": round((time.perf_counter() - t0) * 1e3, 1),
        }
        t0 = time.perf_counter()
        at.run()
        row["rerun_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        sliders = [w for w in at.slider if getattr(w, "label", "") == K_LABEL]
        boxes = [w for w in at.selectbox if getattr(w, "label", "") == EXTRACTOR_LABEL]
        if sliders and boxes:
            box = at.selectbox(key=boxes[0].key)
            for _ in range(len(box.options)):  # load every extractor once, untimed
                box = at.selectbox(key=boxes[0].key)
                box.select_index((box.index + 1) % len(box.options))
                at.run()
            k_times, e_times = [], []
            for value in [5, 20, 10, 15, 7][:repeats]:
                at.slider(key=sliders[0].key).set_value(value)
                t0 = time.perf_counter()
                at.run()
                k_times.append(time.perf_counter() - t0)
            for _ in range(repeats):
                box = at.selectbox(key=boxes[0].key)
                box.select_index((box.index + 1) % len(box.options))
                t0 = time.perf_counter()
                at.run()
                e_times.append(time.perf_counter() - t0)
            row["k_rerender_ms"] = ms(k_times)["median_ms"]
            row["extractor_rerender_ms"] = ms(e_times)["median_ms"]
        row["exceptions"] = [str(e.value)[:300] for e in at.exception]
        row["errors_shown"] = [str(e.value)[:200] for e in at.error]
        rows.append(row)
    out["pages"] = rows
    out.update(_map_figure_numbers(artifacts_dir))
    out.update(_search_numbers(artifacts_dir))
    return out


def _run_child(params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """`child_scale_app(**params)` in a fresh Python process (its own peak RSS)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    code = "from pipelines.bench.scale import child_main; child_main()"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(params),
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
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
    return {"error": f"the app child exited {proc.returncode}: {' | '.join(tail)}"}


def child_main() -> None:
    """Entry point of the child: read the parameters on stdin, print the result."""
    params = json.loads(sys.stdin.read())
    start = time.perf_counter()
    result = child_scale_app(**params)
    result["child_seconds"] = round(time.perf_counter() - start, 2)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(RESULT_PREFIX + json.dumps(jsonable(result)), flush=True)


def _map_figure_numbers(artifacts_dir: str) -> dict[str, Any]:
    """Server-side cost and size of the Map page's figure: drawing a large map's layer (once
    per map, colouring and filter; cached by the app), then the figure a rerun builds from it
    and the JSON the browser receives."""
    from app.ui import plots
    from pipelines import browse
    from pipelines.readers import read_catalog

    cfg = Config(artifacts_dir=Path(artifacts_dir))
    catalog, _ = read_catalog(cfg)
    name = EXTRACTORS[0]
    points = browse.map_points(catalog, pd.read_parquet(cfg.map_path(name)))
    out: dict[str, Any] = {"map_raster": len(points) >= plots.RASTER_MIN_ITEMS}
    layer = None
    if out["map_raster"]:
        t0 = time.perf_counter()
        layer = plots.map_layer(points, "label")
        out["map_layer_build_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        out["map_png_bytes"] = len(layer.raster.png)
    times, size = [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        figure, _ = plots.map_figure(points, "label", dragmode=plots.SELECT_DRAG, layer=layer)
        size = len(figure.to_json())
        times.append(time.perf_counter() - t0)
    out["map_figure_build_ms"] = ms(times)["median_ms"]
    out["map_figure_json_bytes"] = size
    return out


def _search_numbers(artifacts_dir: str, queries: int = 30) -> dict[str, Any]:
    """Single-query latency of each strategy on the first extractor (catalog items as
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


def browser_paint(builds: dict[str, str], repeats: int = 3) -> dict[str, Any]:
    """The Map page's first paint in Debian's Chromium on each build, interleaved: seconds from
    opening the page to the map drawn (its canvas painted, the raster image loaded, the script
    run over), and the websocket bytes the page received; each server warmed by one load.

    Parameters
    ----------
    builds : {name: artifacts dir}; one Streamlit server per build, all up together.
    """
    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, VIEWPORT

    if not CHROMIUM.exists():
        return {"skipped": f"{CHROMIUM} is missing (apt-get install chromium)"}
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "the Python package playwright is missing"}
    servers = {name: _start_server(Path(path)) for name, path in builds.items()}
    try:
        times: dict[str, list[float]] = {name: [] for name in builds}
        received: dict[str, list[int]] = {name: [] for name in builds}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                for round_ in range(repeats + 1):  # round 0 warms each server
                    for name, (url, _) in servers.items():
                        seconds, size = _paint_once(browser, url, VIEWPORT)
                        if round_ > 0:
                            times[name].append(seconds)
                            received[name].append(size)
            finally:
                browser.close()
        out: dict[str, Any] = {"repeats": repeats}
        for name in builds:
            out[name] = {
                "paint_median_s": round(statistics.median(times[name]), 3),
                "paint_all_s": [round(t, 3) for t in times[name]],
                "ws_bytes_median": int(statistics.median(received[name])),
                "server_peak_rss_mb": _peak_rss_mb(servers[name][1].pid),
            }
        return out
    finally:
        for _, process in servers.values():
            _stop(process)


def _paint_once(browser: Any, url: str, viewport: dict) -> tuple[float, int]:
    """One fresh page (own session) on the Map: seconds to painted and idle, bytes received."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(300_000)
    size = [0]

    def on_socket(ws: Any) -> None:
        ws.on("framereceived", lambda payload: size.__setitem__(0, size[0] + len(payload)))

    page.on("websocket", on_socket)
    try:
        t0 = time.perf_counter()
        page.goto(url, wait_until="domcontentloaded")
        plot = page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first
        plot.locator("canvas.gl-canvas-context").wait_for(state="attached")
        page.wait_for_function(_PAINTED_JS, arg=plot.element_handle(), timeout=300_000)
        page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=300_000)
        return time.perf_counter() - t0, size[0]
    finally:
        context.close()


# The map is drawn when its WebGL canvas has painted pixels and every layout image (the raster
# of a large map) has loaded.
_PAINTED_JS = """(plot) => {
    const gl = plot.querySelector('canvas.gl-canvas-context');
    if (!gl || !gl.width) return false;
    const copy = document.createElement('canvas');
    copy.width = gl.width; copy.height = gl.height;
    const ctx = copy.getContext('2d');
    ctx.drawImage(gl, 0, 0);
    const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
    let painted = 0;
    for (let i = 3; i < data.length && painted <= 20; i += 64) if (data[i] > 0) painted++;
    if (painted <= 20) return false;
    const images = Array.from(plot.querySelectorAll('.layer-below image, .imagelayer image'));
    return images.every((img) => img.getBBox().width > 0);
}"""


def _start_server(artifacts_dir: Path) -> tuple[str, subprocess.Popen]:
    from tests.browser_helpers import _healthy, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "streamlit", "run", "app/streamlit_app.py",
        "--server.headless", "true", "--server.port", str(port),
        "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]  # fmt: skip
    env = {**os.environ, "LOOKALIKE_ARTIFACTS": str(artifacts_dir)}
    log = open(artifacts_dir / "streamlit.log", "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not _healthy(url):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(f"the app on {artifacts_dir} did not start; see its streamlit.log")
        time.sleep(0.5)
    return url, process


def _stop(process: subprocess.Popen) -> None:
    from tests.browser_helpers import _stop as stop

    stop(process)


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


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
    print(f"bench --scale {n}: building {build_dir} ...", flush=True)
    t0 = time.perf_counter()
    scaled = build_scaled(config, build_dir, n, dtype=dtype, models=models)
    results["build_s"] = round(time.perf_counter() - t0, 1)
    # The saved approximate index, as `run` leaves it for a large catalog (pipelines/ann_store):
    # without it the first search of each extractor builds it (over a minute at 1M x 2048).
    t0 = time.perf_counter()
    results["ann"] = _jsonable_stage(run_ann(scaled))
    results["ann_build_s"] = round(time.perf_counter() - t0, 1)
    try:
        params = {
            "pages": list(pages),
            "raster_min_items": raster_min_items,
            "repeats": repeats,
            "models": models,
        }
        for name, path in (("default", config.artifacts_dir), ("scaled", build_dir)):
            print(f"bench --scale {n}: pages on the {name} build ...", flush=True)
            load = loadavg()
            result = _run_child({"artifacts_dir": str(path), **params}, 3600)
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
    paint = results.get("browser", {})
    if "default" in paint and "scaled" in paint:
        out["map_paint"] = round(
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
