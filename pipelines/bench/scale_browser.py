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
