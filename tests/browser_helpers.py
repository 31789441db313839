"""Plumbing for real-browser tests: start the app as a server, drive Debian's Chromium, screenshot.

Reads nothing but the artifacts folder it is given; writes the server's log and screenshots under
test-output/browser/ (ignored by git).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.config import REPO_ROOT

# Debian's Chromium, not Playwright's own browser download (which needs the internet).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",  # WebGL still works: Chromium falls back to SwiftShader (software GL)
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
OUTPUT = REPO_ROOT / "test-output" / "browser"
VIEWPORT = {"width": 1400, "height": 1000}
# Full-page screenshots grow the viewport to the page's height, up to this.
MAX_SHOT_HEIGHT = 5000
# Chromium + Streamlit + TensorFlow on 2 busy cores: generous, but every wait is bounded.
SERVER_START_TIMEOUT = 90
# Thumbnail captions of a neighbour grid: "#rank · label · similarity".
NEIGHBOUR_CAPTION = re.compile(r"^#\d+ · ")


def require_browser() -> None:
    """Fail (not skip) with the fix when Chromium or Playwright is missing: CI installs both."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium. Install it with "
            "`sudo apt-get install chromium` (Playwright's own browser download is not used)."
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(
            "the Python package playwright is missing: `pip install playwright==1.65.2` "
            "(no `playwright install` needed; the tests use /usr/bin/chromium)"
        )


def clear_screenshots() -> None:
    """Remove the previous run's screenshots, so the folder shows this run only."""
    for old in OUTPUT.glob("*.png"):
        old.unlink(missing_ok=True)


def free_port() -> int:
    """A localhost TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group, then SIGKILL what is left after 10 s."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def streamlit_server(artifacts_dir: Path, log_path: Path) -> Iterator[str]:
    """Run the app on a free localhost port against `artifacts_dir`; yield its base URL.

    The server runs in its own process group, which is always stopped on exit, whatever
    happened; its output goes to `log_path`.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app/server.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
        # Other engineers edit this tree while tests run: a changed source file must not
        # trigger a "rerun?" prompt mid-test, and watching costs CPU.
        "--server.fileWatcherType",
        "none",
    ]
    env = {**os.environ, "LOOKALIKE_ARTIFACTS": str(artifacts_dir)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while not _healthy(url):
                if process.poll() is not None:
                    pytest.fail(
                        f"the app exited with code {process.returncode} before answering "
                        f"/_stcore/health; its log:\n{_tail(log_path)}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"the app did not answer {url}/_stcore/health within "
                        f"{SERVER_START_TIMEOUT} s; its log:\n{_tail(log_path)}"
                    )
                time.sleep(0.5)
            yield url
        finally:
            _stop(process)


def settle(page, timeout_ms: int = 60_000, quiet_ms: int = 1_500) -> None:
    """Wait until Streamlit shows no "running" status widget for `quiet_ms` in a row (the script
    run has finished). The widget appears a moment after a rerun starts, so one look right
    after a click can see the page before the rerun and return while it is about to redraw."""
    widget = page.locator('[data-testid="stStatusWidget"]')
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_ms / 1000:
        if widget.count():
            left = max(1, int((deadline - time.monotonic()) * 1000))
            widget.wait_for(state="detached", timeout=left)
            quiet_since = time.monotonic()
        page.wait_for_timeout(100)


def screenshot(page, name: str) -> Path:
    """Save the whole page (the viewport grown to the page's height) as OUTPUT/<name>.png.

    Streamlit scrolls inside its main container, so Playwright's full_page would stop at the
    viewport; growing the viewport (its width unchanged) keeps the layout the same.
    """
    OUTPUT.mkdir(parents=True, exist_ok=True)
    height = page.evaluate(
        "() => document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight ?? 0"
    )
    size = page.viewport_size or VIEWPORT
    page.set_viewport_size(
        {"width": size["width"], "height": min(max(height, size["height"]), MAX_SHOT_HEIGHT)}
    )
    path = OUTPUT / f"{name}.png"
    try:
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
    return path


@contextlib.contextmanager
def step(page, name: str) -> Iterator[None]:
    """One step of a user's path: screenshot OUTPUT/<name>.png after it, or <name>-FAILED.png
    (then re-raise) when it fails, so a failure shows what the page looked like."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(page, f"{name}-FAILED")
        raise
    screenshot(page, name)


# Pixels the plot has painted on its WebGL canvas: copied onto a 2-D canvas and counted by
# alpha (plotly keeps the drawing buffer, and its GL background is transparent).
PAINTED_PIXELS_JS = """(plot) => {
    const gl = plot.querySelector('canvas.gl-canvas-context');
    if (!gl || !gl.width || !gl.height) return {width: 0, height: 0, painted: 0};
    const copy = document.createElement('canvas');
    copy.width = gl.width;
    copy.height = gl.height;
    const ctx = copy.getContext('2d');
    ctx.drawImage(gl, 0, 0);
    const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
    let painted = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
    return {width: gl.width, height: gl.height, painted: painted};
}"""

# The plot's traces as plotly.js holds them after drawing: [type, number of points].
TRACES_JS = "(plot) => (plot._fullData || []).map(t => [t.type, t._length || 0])"

WEBGL_JS = """() => {
    const gl = document.createElement('canvas').getContext('webgl');
    return gl ? gl.getParameter(gl.VERSION) : null;
}"""

# Whether every <img> of a locator has loaded real pixels.
IMAGES_LOADED_JS = "(imgs) => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"


def wait_until(probe, ok, timeout_s: float, what: str, interval_s: float = 0.5):
    """Call probe() until ok(result) or timeout_s passes; fail with `what` and the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if ok(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s:.0f} s; last seen: {result!r}")
        time.sleep(interval_s)
