"""The app's own timing harness: every page under AppTest (first render, re-renders after the
sidebar's k and extractor change), the Upload page's server-side round trip and the Map
figure's cost. Reads a build's artifacts; writes nothing.

`python -m pipelines bench` (section "app") and `bench --scale N` run these functions in a
child process by their module path (`pipelines/bench/common.py` CHILD_TASKS), so the engine
never imports the app; what a run changes (the raster threshold, whether the upload models
load) comes in as arguments and reaches the app through its session state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from app.ui import loaders, plots, warmup
from app.ui.widgets import EXTRACTOR_LABEL, K_LABEL
from pipelines import commands
from pipelines.bench.common import ms
from pipelines.config import EXTRACTORS, REPO_ROOT, Config

APP = REPO_ROOT / "app" / "streamlit_app.py"


def _app_test(  # noqa: ANN202 - an AppTest
    artifacts_dir: str, timeout: float, raster_min_items: int | None = None, models: bool = True
):
    """An AppTest of the router on `artifacts_dir`, with this run's settings in its session."""
    os.environ["LOOKALIKE_ARTIFACTS"] = artifacts_dir
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    if raster_min_items is not None:
        at.session_state[loaders.RASTER_MIN_KEY] = int(raster_min_items)
    at.session_state[warmup.WARM_KEY] = bool(models)
    return at


def _run_s(at: Any) -> float:
    """Seconds of one rerun of the app."""
    t0 = time.perf_counter()
    at.run()
    return time.perf_counter() - t0


def _open_page(at: Any, page: str) -> float:
    """Switch to `page` and render it; its render time in ms."""
    at.switch_page(page)
    return round(_run_s(at) * 1e3, 1)


def _sidebar(at: Any) -> tuple[Any, Any] | None:
    """The sidebar's k slider and extractor selectbox (found by their labels), or None."""
    sliders = [w for w in at.slider if getattr(w, "label", "") == K_LABEL]
    boxes = [w for w in at.selectbox if getattr(w, "label", "") == EXTRACTOR_LABEL]
    return (sliders[0], boxes[0]) if sliders and boxes else None


def _next_extractor(at: Any, key: str) -> None:
    # select_index, not set_value: options are display names, values are registry names.
    box = at.selectbox(key=key)
    box.select_index((box.index + 1) % len(box.options))


def child_app(artifacts_dir: str, pages: list[str]) -> dict[str, Any]:
    """(child of the bench's "app" section) Render each page with AppTest, change its sidebar
    widgets, time re-renders; then the Upload page's round trip."""
    at = _app_test(artifacts_dir, 300)
    out: dict[str, Any] = {"first_render_s": round(_run_s(at), 3)}
    rows = []
    for page in pages:
        row: dict[str, Any] = {
            "page": page,
            "render_ms": _open_page(at, page),
            "exceptions": len(at.exception),
            "errors_shown": len(at.error),
        }
        row.update(widget_change(at))
        rows.append(row)
    out["pages"] = rows
    out["upload"] = upload_round_trip(artifacts_dir, 3 if len(pages) == 1 else 10)
    return out


def widget_change(at: Any) -> dict[str, Any]:
    """Change the sidebar's k slider and extractor selectbox (every page has both), 3 times
    each, re-rendering after each change; returns the re-render times."""
    found = _sidebar(at)
    if found is None:
        return {"widget": f"no {K_LABEL!r} slider or {EXTRACTOR_LABEL!r} selectbox on this page"}
    slider, box = found
    times: dict[str, list[float]] = {"k": [], "extractor": []}
    for value in (5, 20, 10):
        at.slider(key=slider.key).set_value(value)
        times["k"].append(_run_s(at))
    for _ in range(3):
        _next_extractor(at, box.key)
        times["extractor"].append(_run_s(at))
    out: dict[str, Any] = {"widget": "sidebar k slider, extractor selectbox"}
    for name, values in times.items():
        out[f"{name}_rerender_median_ms"] = ms(values)["median_ms"]
        out[f"{name}_rerender_max_ms"] = round(max(values) * 1e3, 1)
    out["exceptions_after"] = len(at.exception)
    return out


def upload_round_trip(artifacts_dir: str, photos: int) -> dict[str, Any]:
    """What the Upload page does per photo, server side: the engine's one photo search
    (`pipelines.search.photos.search_photos`: decode, embed, category, search every built
    extractor's index, place on the maps), uncached. The first photo also builds the models."""
    import pandas as pd

    from pipelines import status
    from pipelines.explore import browse
    from pipelines.models.classify import load_category_model
    from pipelines.models.extractors import get_extractor
    from pipelines.readers import load_index
    from pipelines.search import novelty
    from pipelines.search import photos as upload

    config = status.app_config(Config(artifacts_dir=Path(artifacts_dir)))
    missing = status.missing_artifacts(config, ("catalog", "embeddings", "maps", "models"))
    if missing:
        return {"skipped": f"{missing[0]} is missing — run `{commands.RUN}` first"}
    catalog = browse.with_thumb_files(pd.read_parquet(config.catalog_path), config.artifacts_dir)
    names = config.extractors_built()
    indexes = {name: load_index(config, name) for name in names}
    reference = indexes.get(novelty.REFERENCE)
    sources = upload.PhotoSources(
        catalog=catalog,
        indexes=indexes,
        models={name: get_extractor(name, config, live=True) for name in names},
        config=config,
        maps={name: pd.read_parquet(config.map_path(name)) for name in names},
        category_model=load_category_model(config),
        far=None if reference is None else novelty.far_check(reference),
    )
    times = []
    for path in catalog["path"].head(photos + 1):
        data = Path(path).read_bytes()
        t0 = time.perf_counter()
        (result,) = upload.search_photos([(Path(path).name, data)], sources, 10, names)
        times.append(time.perf_counter() - t0)
        if result.error:
            raise RuntimeError(f"upload of {path} failed: {result.error}")
    warm = ms(times[1:])
    return {
        "photos": photos,
        "first_upload_s": round(times[0], 2),
        "warm_median_ms": warm["median_ms"],
        "warm_p95_ms": warm["p95_ms"],
        "warm_max_ms": round(max(times[1:]) * 1e3, 1),
    }


def child_scale_app(
    artifacts_dir: str,
    pages: list[str],
    raster_min_items: int | None = None,
    repeats: int = 3,
    models: bool = True,
) -> dict[str, Any]:
    """(child of `bench --scale`) Every page under AppTest on one build: the first render on
    a warm process (after the app's first run and `warmup.warm_pages`, as the app's server
    leaves it; the time that took is reported), then re-renders after changing k and the extractor
    (medians of `repeats`, after one untimed pass over every extractor so each one's index
    is loaded); then the Map figure's cost.

    Parameters
    ----------
    artifacts_dir : the build the app shows.
    pages : page paths under app/ to time.
    raster_min_items : the Map's raster threshold for this run (default: the app's own,
        `plots.RASTER_MIN_ITEMS`).
    repeats : timed changes of each widget.
    models : build the upload models in the background as the app does (they are awaited
        before any page is timed, since they would share the cores with it); False leaves
        them unbuilt.
    """
    at = _app_test(artifacts_dir, 900, raster_min_items, models)
    out: dict[str, Any] = {"app_first_render_s": round(_run_s(at), 3)}
    build = warmup.started(loaders.config()) if models else None
    t0 = time.perf_counter()
    while build is not None and not build.finished:
        time.sleep(0.25)
    out["models_wait_s"] = round(time.perf_counter() - t0, 1)
    # A warm server process, as the app's server leaves it: the pages' shared data read.
    t0 = time.perf_counter()
    pages_warm = warmup.warm_pages(loaders.config())
    if pages_warm is not None:
        pages_warm.join()
    out["pages_warm_s"] = round(time.perf_counter() - t0, 1)
    rows = []
    for page in pages:
        row: dict[str, Any] = {"page": page, "first_render_ms": _open_page(at, page)}
        row["rerun_ms"] = round(_run_s(at) * 1e3, 1)
        found = _sidebar(at)
        if found is not None:
            slider, box = found
            for _ in range(len(box.options)):  # load every extractor once, untimed
                _next_extractor(at, box.key)
                at.run()
            k_times, e_times = [], []
            for value in [5, 20, 10, 15, 7][:repeats]:
                at.slider(key=slider.key).set_value(value)
                k_times.append(_run_s(at))
            for _ in range(repeats):
                _next_extractor(at, box.key)
                e_times.append(_run_s(at))
            row["k_rerender_ms"] = ms(k_times)["median_ms"]
            row["extractor_rerender_ms"] = ms(e_times)["median_ms"]
        row.update(_rss_split())
        row["exceptions"] = [str(e.value)[:300] for e in at.exception]
        row["errors_shown"] = [str(e.value)[:200] for e in at.error]
        rows.append(row)
    out["pages"] = rows
    out.update(map_figure_numbers(artifacts_dir, raster_min_items))
    return out


def _rss_split() -> dict[str, float]:
    """This process's resident memory now, split: anonymous (its own heap) and file-backed
    (pages of memory-mapped files such as the embeddings: the shared page cache, which the
    kernel can drop), MB."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:")):
                name = "rss_anon_mb" if line.startswith("RssAnon") else "rss_file_mb"
                out[name] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def map_figure_numbers(artifacts_dir: str, raster_min_items: int | None = None) -> dict[str, Any]:
    """Server-side cost and size of the Map page's figure: drawing a large map's layer (once
    per map, colouring and filter; cached by the app), then the figure a rerun builds from it
    and the JSON the browser receives. A map of `raster_min_items` items or more (default
    `plots.RASTER_MIN_ITEMS`) is drawn as an image, as the app does."""
    import pandas as pd

    from pipelines.explore import browse
    from pipelines.readers import read_catalog

    threshold = plots.RASTER_MIN_ITEMS if raster_min_items is None else int(raster_min_items)
    cfg = Config(artifacts_dir=Path(artifacts_dir))
    catalog, _ = read_catalog(cfg)
    name = EXTRACTORS[0]
    points = browse.map_points(catalog, pd.read_parquet(cfg.map_path(name)))
    out: dict[str, Any] = {"map_raster": len(points) >= threshold}
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
