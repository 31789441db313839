"""App benchmark: AppTest render and re-render times of every page, and the Upload page's
server-side round trip. Reads the artifacts through the app; writes nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pipelines import commands
from pipelines.bench.common import ms, run_child
from pipelines.config import EXTRACTORS, REPO_ROOT, Config

APP = REPO_ROOT / "app" / "streamlit_app.py"


def bench_app(config: Config, quick: bool, shared: dict[str, Any]) -> dict[str, Any]:
    """AppTest render times of the Streamlit app (in a child); its peak RSS goes to
    shared["app"] for the memory section."""
    if not APP.exists():
        return {"skipped": f"{APP.relative_to(REPO_ROOT)} does not exist yet"}
    if not config.catalog_path.exists():
        return {"skipped": f"no catalog at {config.catalog_path} for the app to show"}
    pages = sorted(
        f"app_pages/{p.name}"
        for p in (APP.parent / "app_pages").glob("*.py")
        if not p.name.startswith("_")
    )
    if quick:
        pages = pages[:1]
    params = {"app_path": str(APP), "artifacts_dir": str(config.artifacts_dir), "pages": pages}
    result = run_child("app", params, 900)
    shared["app"] = {k: v for k, v in result.items() if k in ("peak_rss_mb", "error")}
    if "error" in result:
        return {"error": f"the app did not render under AppTest: {result['error']}"}
    summary = {k: v for k, v in result.items() if k != "pages"}
    return {"rows": result["pages"], **summary}


def child_app(app_path: str, artifacts_dir: str, pages: list[str]) -> dict[str, Any]:
    """(child) Render each page with AppTest, change its sidebar widgets, time re-renders."""
    os.environ["LOOKALIKE_ARTIFACTS"] = artifacts_dir
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(app_path, default_timeout=300)
    t0 = time.perf_counter()
    at.run()
    out: dict[str, Any] = {"first_render_s": round(time.perf_counter() - t0, 3)}
    rows = []
    for page in pages:
        at.switch_page(page)
        t0 = time.perf_counter()
        at.run()
        row: dict[str, Any] = {
            "page": page,
            "render_ms": round((time.perf_counter() - t0) * 1e3, 1),
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
    from app.ui.widgets import EXTRACTOR_LABEL, K_LABEL

    sliders = [w for w in at.slider if getattr(w, "label", "") == K_LABEL]
    boxes = [w for w in at.selectbox if getattr(w, "label", "") == EXTRACTOR_LABEL]
    if not sliders or not boxes:
        return {"widget": f"no {K_LABEL!r} slider or {EXTRACTOR_LABEL!r} selectbox on this page"}
    times: dict[str, list[float]] = {"k": [], "extractor": []}
    for value in (5, 20, 10):
        at.slider(key=sliders[0].key).set_value(value)
        t0 = time.perf_counter()
        at.run()
        times["k"].append(time.perf_counter() - t0)
    for _ in range(3):
        # select_index, not set_value: options are display names, values are registry names.
        box = at.selectbox(key=boxes[0].key)
        box.select_index((box.index + 1) % len(box.options))
        t0 = time.perf_counter()
        at.run()
        times["extractor"].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"widget": "sidebar k slider, extractor selectbox"}
    for name, values in times.items():
        out[f"{name}_rerender_median_ms"] = ms(values)["median_ms"]
        out[f"{name}_rerender_max_ms"] = round(max(values) * 1e3, 1)
    out["exceptions_after"] = len(at.exception)
    return out


def upload_round_trip(artifacts_dir: str, photos: int) -> dict[str, Any]:
    """What the Upload page does per photo, server side: decode, embed with both extractors,
    search both indexes, place on both maps. The first photo also builds the models."""
    import pandas as pd

    from pipelines import status
    from pipelines.explore import browse
    from pipelines.models.extractors import get_extractor
    from pipelines.readers import load_index
    from pipelines.search import photos

    config = status.app_config(Config(artifacts_dir=Path(artifacts_dir)))
    missing = status.missing_artifacts(config, ("catalog", "embeddings", "maps", "models"))
    if missing:
        return {"skipped": f"{missing[0]} is missing — run `{commands.RUN}` first"}
    catalog = browse.with_thumb_files(pd.read_parquet(config.catalog_path), config.artifacts_dir)
    extractors = {name: get_extractor(name, config) for name in EXTRACTORS}
    indexes = {name: load_index(config, name) for name in EXTRACTORS}
    maps = {name: pd.read_parquet(config.map_path(name)) for name in EXTRACTORS}
    times = []
    for path in catalog["path"].head(photos + 1):
        data = Path(path).read_bytes()
        t0 = time.perf_counter()
        (result,) = photos.analyse_uploads(
            [(Path(path).name, data)], extractors, indexes, catalog, maps, k=10
        )
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
