"""The Map page's first paint in Debian's Chromium, for `bench --scale`: starts one Streamlit
server per build, opens the Map in fresh browser contexts and times it; writes each server's
log to its build's bench/streamlit-scale.log.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.config import REPO_ROOT


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
    servers = {name: start_server(Path(path)) for name, path in builds.items()}
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


def photo_map_paint(builds: dict[str, str], repeats: int = 3, zoom_steps: int = 5) -> dict:
    """The Photo map page in Debian's Chromium on each build, interleaved: seconds from opening
    the page to its photos drawn (the default catalog's one mosaic image loaded into its
    plot; a tiled map's viewer with every tile in view arrived), then, on a tiled map,
    `zoom_steps` clicks on its + button (each doubles the zoom at the centre), each timed until
    every tile in view has arrived (the viewer's own data-zoom-ms, and wall time seen here);
    each server warmed by one load. A build without a photo map is reported as skipped."""
    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, VIEWPORT

    if not CHROMIUM.exists():
        return {"skipped": f"{CHROMIUM} is missing (apt-get install chromium)"}
    from playwright.sync_api import sync_playwright

    servers = {
        name: start_server(Path(path), "streamlit-photo-map.log") for name, path in builds.items()
    }
    try:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in builds}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                for round_ in range(repeats + 1):  # round 0 warms each server
                    for name, (url, _) in servers.items():
                        run = _photo_map_once(browser, url, VIEWPORT, zoom_steps)
                        if round_ > 0:
                            runs[name].append(run)
            finally:
                browser.close()
        out: dict[str, Any] = {"repeats": repeats, "zoom_steps": zoom_steps}
        for name, found in runs.items():
            paints = [r["paint_s"] for r in found]
            zooms = [ms for r in found for ms in r.get("zoom_ms", [])]
            walls = [s for r in found for s in r.get("zoom_wall_s", [])]
            out[name] = {
                "form": found[0]["form"],
                "paint_median_s": round(statistics.median(paints), 3),
                "paint_all_s": [round(t, 3) for t in paints],
                "tiles_fetched_median": statistics.median(r.get("tiles", 0) for r in found),
                "server_peak_rss_mb": _peak_rss_mb(servers[name][1].pid),
            }
            if zooms:
                out[name].update(
                    zoom_step_median_ms=statistics.median(zooms),
                    zoom_step_max_ms=max(zooms),
                    zoom_step_wall_median_s=round(statistics.median(walls), 3),
                    zoom_step_wall_max_s=round(max(walls), 3),
                    zoom_levels=found[0].get("levels"),
                )
        return out
    finally:
        for _, process in servers.values():
            _stop(process)


def _photo_map_once(browser: Any, url: str, viewport: dict, zoom_steps: int) -> dict[str, Any]:
    """One fresh page (own session) on the Photo map: its first paint, then the zoom steps of
    a tiled map."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(300_000)
    tiles_fetched = [0]
    page.on(
        "response",
        lambda r: tiles_fetched.__setitem__(0, tiles_fetched[0] + ("/lookalike/tiles/" in r.url)),
    )
    try:
        t0 = time.perf_counter()
        page.goto(f"{url}/photo_map", wait_until="domcontentloaded")
        viewer = page.locator(".lk-deepzoom")
        plot = page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot')
        page.wait_for_function(_PHOTOS_JS, timeout=300_000)
        # Which form did the page draw? The tiled viewer, or the one image in a plot.
        if viewer.count():
            page.wait_for_function(_VIEWER_DONE_JS, timeout=300_000)
            result: dict[str, Any] = {"form": "tiles", "paint_s": time.perf_counter() - t0}
            levels, zoom_ms, walls = [int(viewer.get_attribute("data-level"))], [], []
            for _ in range(zoom_steps):
                viewer.evaluate("(el) => el.removeAttribute('data-zoom-ms')")
                t1 = time.perf_counter()
                viewer.locator('button[data-zoom="in"]').click()
                page.wait_for_function(_VIEWER_DONE_JS, timeout=60_000)
                walls.append(time.perf_counter() - t1)
                zoom_ms.append(int(viewer.get_attribute("data-zoom-ms")))
                levels.append(int(viewer.get_attribute("data-level")))
            result.update(zoom_ms=zoom_ms, zoom_wall_s=walls, levels=levels)
        else:
            plot.first.wait_for()
            result = {"form": "image", "paint_s": time.perf_counter() - t0}
        result["tiles"] = tiles_fetched[0]
        return result
    finally:
        context.close()


# The Photo map has drawn its photos: a viewer exists (tiles), or a plot holds the mosaic
# image (a data: URI, or the app server's mosaic route) and the image has a size. Shadow
# roots are searched (the viewer lives in one).
_PHOTOS_JS = r"""() => {
    const roots = [document];
    for (const el of document.querySelectorAll('*')) if (el.shadowRoot) roots.push(el.shadowRoot);
    if (roots.some((r) => r.querySelector('.lk-deepzoom'))) return true;
    return [...document.querySelectorAll('.js-plotly-plot image')].some((i) =>
        /^data:image\/jpeg|\/lookalike\/mosaic\//.test(i.getAttribute('href') || '')
        && i.getBBox().width > 0);
}"""
_VIEWER_DONE_JS = """() => {
    for (const el of document.querySelectorAll('*')) {
        const found = el.shadowRoot && el.shadowRoot.querySelector('.lk-deepzoom');
        if (found) return found.hasAttribute('data-zoom-ms');
    }
    const plain = document.querySelector('.lk-deepzoom');
    return !!plain && plain.hasAttribute('data-zoom-ms');
}"""


def start_server(
    artifacts_dir: Path, log_name: str = "streamlit-scale.log"
) -> tuple[str, subprocess.Popen]:
    """The app on a free localhost port against `artifacts_dir`, once its health check
    answers: (base URL, the server process); its log goes to the build's bench/`log_name`."""
    from tests.browser_helpers import _healthy, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "streamlit", "run", "app/server.py",
        "--server.headless", "true", "--server.port", str(port),
        "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]  # fmt: skip
    env = {**os.environ, "LOOKALIKE_ARTIFACTS": str(artifacts_dir)}
    # The log goes to the build's bench folder (where the results go), not beside its artifacts.
    (artifacts_dir / "bench").mkdir(parents=True, exist_ok=True)
    log = open(artifacts_dir / "bench" / log_name, "wb")  # noqa: SIM115
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not _healthy(url):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(
                f"the app on {artifacts_dir} did not start; see {artifacts_dir}/bench/{log_name}"
            )
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
