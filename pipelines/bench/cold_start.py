"""Cold starts, as a user meets them: `python -m pipelines serve` until /health lists every
built extractor's model as loaded, and the app (`streamlit run`) until a photo uploaded on the
Upload page as soon as it opened shows its neighbours (Debian's Chromium, driven by
Playwright). Each start is a fresh process; the quiet starts run first, then the busy ones
(BUSY_PROCESSES busy loops sharing the cores), in one run, with the load average before each.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.bench.report import loadavg
from pipelines.config import REPO_ROOT, Config

# Issue 26's targets on a quiet machine.
SERVE_TARGET_S = 10.0
UPLOAD_TARGET_S = 5.0
# "Busy": this many processes spinning on the CPU (a 2-core machine shared with two jobs).
BUSY_PROCESSES = 2
START_TIMEOUT_S = 300


def bench_cold_start(config: Config, quick: bool = False) -> dict[str, Any]:
    """Serve and app cold starts on the build in `config.artifacts_dir`, quiet and busy.

    Returns
    -------
    {"serve": {"quiet": [s, ...], "busy": [...], "quiet_median_s", "busy_median_s",
    "target_s"}, "app": the same for the first upload (page opened -> neighbours shown), with
    "server_ready_s" (process start -> /_stcore/health) beside it, "app_next_visitor": the
    same for a second session once the first upload is over, "loadavg"}; "skipped" when there
    is no build.
    """
    if not config.catalog_path.exists():
        return {"skipped": f"no build in {config.artifacts_dir} — run `python -m pipelines run`"}
    repeats = 1 if quick else 2
    photo = _catalog_photo(config)
    serve: dict[str, list[float]] = {"quiet": [], "busy": []}
    app: dict[str, list[float]] = {"quiet": [], "busy": []}
    later: dict[str, list[float]] = {"quiet": [], "busy": []}
    ready: dict[str, list[float]] = {"quiet": [], "busy": []}
    load: dict[str, list[list[float]]] = {"quiet": [], "busy": []}
    # Every quiet start first: the load average lags a minute behind, so a quiet start right
    # after a busy one would be recorded under the busy one's load.
    for kind in ("quiet", "busy"):
        with _busy(BUSY_PROCESSES if kind == "busy" else 0):
            for _ in range(repeats):
                load[kind].append(loadavg())
                serve[kind].append(serve_start(config))
                seconds, next_visitor, server = app_first_upload(config, photo)
                app[kind].append(seconds)
                later[kind].append(next_visitor)
                ready[kind].append(round(server, 1))
    out = {
        "serve": _summary(serve, SERVE_TARGET_S),
        "app": {**_summary(app, UPLOAD_TARGET_S), "server_ready_s": ready},
        "app_next_visitor": _summary(later, UPLOAD_TARGET_S),
        "busy_processes": BUSY_PROCESSES,
        "loadavg": load,
    }
    what = {
        "serve": "serve: start -> /health lists every model loaded",
        "app": "app: Upload page opened at start -> first upload's neighbours",
        "app_next_visitor": "app: the next visitor, Upload opened -> neighbours",
    }
    out["rows"] = [
        {
            "what": what[name],
            "quiet_s": " / ".join(str(t) for t in out[name]["quiet"]),
            "busy_s": " / ".join(str(t) for t in out[name]["busy"]),
            "target_quiet_s": out[name]["target_s"],
        }
        for name in ("serve", "app", "app_next_visitor")
    ]
    return out


def _summary(times: dict[str, list[float]], target: float) -> dict[str, Any]:
    out: dict[str, Any] = {kind: [round(t, 1) for t in values] for kind, values in times.items()}
    for kind, values in times.items():
        out[f"{kind}_median_s"] = round(statistics.median(values), 1)
    out["target_s"] = target
    return out


def serve_start(config: Config) -> float:
    """Seconds from starting `python -m pipelines serve` to /health listing every built
    extractor among its loaded models."""
    from tests.browser_helpers import free_port

    port = free_port()
    wanted = set(config.extractors_built())
    command = [sys.executable, "-m", "pipelines", "serve", "--artifacts", str(config.artifacts_dir)]
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while time.perf_counter() - t0 < START_TIMEOUT_S:
            if process.poll() is not None:
                raise RuntimeError(f"`{' '.join(command)}` exited with {process.returncode}")
            with contextlib.suppress(OSError, ValueError):
                url = f"http://127.0.0.1:{port}/health"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if wanted <= set(json.load(response).get("extractors_loaded") or []):
                        return time.perf_counter() - t0
            time.sleep(0.05)
        raise RuntimeError(f"the service was not ready within {START_TIMEOUT_S} s")
    finally:
        _stop(process)


def app_first_upload(config: Config, photo: Path) -> tuple[float, float, float]:
    """On a fresh server (`streamlit run app/server.py`): (seconds from opening the Upload page
    as soon as the server answers to `photo`'s ten neighbours shown; the same for the next
    visitor, a new session once that upload is over; seconds from starting the server to its
    health check answering)."""
    from playwright.sync_api import sync_playwright

    from pipelines.bench.scale_browser import start_server
    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            t_server = time.perf_counter()
            url, process = start_server(config.artifacts_dir, log_name="streamlit-cold.log")
            server = time.perf_counter() - t_server
            try:
                first = _upload_once(browser, url, photo)
                later = _upload_once(browser, url, photo)
                return first, later, server
            finally:
                _stop(process)
        finally:
            browser.close()


def _upload_once(browser: Any, url: str, photo: Path) -> float:
    """Seconds from opening the Upload page in a new session to `photo`'s ten neighbours
    shown."""
    from tests.browser_helpers import VIEWPORT

    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(START_TIMEOUT_S * 1000)
        t0 = time.perf_counter()
        page.goto(f"{url}/upload", wait_until="domcontentloaded")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo))
        captions = page.locator('[data-testid="stImageCaption"]:visible')
        captions.filter(has_text="#10 · ").first.wait_for(state="visible")
        return time.perf_counter() - t0
    finally:
        context.close()


def _catalog_photo(config: Config) -> Path:
    import pandas as pd

    catalog = pd.read_parquet(config.catalog_path, columns=["path", "split"])
    test = catalog[catalog["split"] == "test"]
    return Path(str((test if len(test) else catalog)["path"].iloc[0]))


@contextlib.contextmanager
def _busy(processes: int) -> Iterator[None]:
    """`processes` busy loops for the duration of the block."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def _stop(process: subprocess.Popen) -> None:
    from tests.browser_helpers import _stop as stop

    stop(process)
