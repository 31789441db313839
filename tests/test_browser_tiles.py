"""The deep-zoom photo map of a large catalog in a real browser (Debian's Chromium via
Playwright): a synthetic build above the tiling threshold (`mosaic_tiled_min_items`, 20,000)
made from the 36-item build, its tiles drawn by the mosaic stage, served by `streamlit run
app/server.py`. Zooming in brings finer tiles, hovering a photo shows it, clicking it opens
Search on that item. Screenshots go to test-output/browser/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # require_browser() fails each test with the fix
    expect = None

from pipelines.config import Config
from tests.browser_helpers import (
    OUTPUT,
    VIEWPORT,
    require_browser,
    settle,
    step,
    streamlit_server,
    wait_until,
)

pytestmark = pytest.mark.slow

N_ITEMS = 25_000
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def tiled(built: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """25,000 synthetic items (above the default tiling threshold) with a tiled photo map."""
    from pipelines.bench.scale_build import build_scaled
    from pipelines.explore.mosaic import run_mosaic

    config = build_scaled(built, tmp_path_factory.mktemp("tiled") / "n25000", N_ITEMS)
    assert config.mosaic_tiled_min_items <= N_ITEMS
    run_mosaic(config)
    return config


@pytest.fixture(scope="module")
def page(tiled: Config, browser) -> Iterator[object]:
    """A page of the session's Chromium (conftest.browser) on the tiled build's app."""
    require_browser()
    with streamlit_server(tiled.artifacts_dir, OUTPUT / "streamlit-tiles.log") as url:
        context = browser.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{url}/photo_map", wait_until="domcontentloaded")
            yield page
            assert not errors, f"uncaught JavaScript errors on the page: {errors}"
        finally:
            context.close()


def _level(viewer) -> int:
    return int(viewer.get_attribute("data-level") or -1)


def test_zoom_brings_finer_tiles_hover_shows_a_photo_and_a_click_searches(page) -> None:
    viewer = page.locator(".lk-deepzoom")
    with step(page, "40-tiled-photo-map"):
        expect(page.get_by_role("heading", name="Photo map", level=1)).to_be_visible()
        expect(page.get_by_text(f"{N_ITEMS:,} photos placed by")).to_be_visible()
        # The first paint: every tile in view has arrived (data-zoom-ms is set then).
        expect(viewer).to_have_attribute("data-zoom-ms", timeout=TIMEOUT_MS)
        first = _level(viewer)
        assert page.locator(f'.lk-tile.lk-loaded[data-level="{first}"]').count() > 0
        settle(page)

    with step(page, "41-tiled-photo-map-zoomed"):
        box = viewer.bounding_box()
        centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.move(*centre)
        for _ in range(3):  # three wheel steps in
            page.mouse.wheel(0, -600)
            time.sleep(0.3)
        finer = wait_until(lambda: _level(viewer), lambda v: v > first, 30, "no finer level")
        # A finer tile arrives from the server and is drawn.
        expect(page.locator(f'.lk-tile.lk-loaded[data-level="{finer}"]').first).to_be_attached()
        wait_until(
            lambda: viewer.get_attribute("data-zoom-ms"),
            bool,
            30,
            "the zoomed view's tiles did not all arrive",
        )
        # Only the tiles in view were fetched, not the level's whole grid.
        drawn = page.locator(f'.lk-tile[data-level="{finer}"]').count()
        assert 0 < drawn < 4**finer

    preview = page.locator(".lk-preview")
    with step(page, "42-tiled-photo-map-hover-click-searches"):
        # Scan the view until the pointer is over a photo (the map has empty cells too).
        spot = None
        for fy in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
            for fx in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
                x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
                page.mouse.move(x, y)
                try:
                    expect(preview).to_be_visible(timeout=1_500)
                except AssertionError:
                    continue
                spot = (x, y)
                break
            if spot:
                break
        assert spot is not None, "no photo under the pointer anywhere in the zoomed view"
        item = preview.get_attribute("data-item")
        assert item
        size = preview.locator("img").evaluate("(img) => [img.naturalWidth, img.naturalHeight]")
        assert min(size) > 0  # the photo itself arrived, not an empty frame
        # This step's screenshot would resize the page: the hover is shot here, the viewport
        # unchanged, and the click follows at the same spot.
        page.screenshot(path=str(OUTPUT / "42a-tiled-photo-map-hover.png"))
        page.mouse.click(*spot)
        expect(page.get_by_role("heading", name="Search", level=1)).to_be_visible(
            timeout=TIMEOUT_MS
        )
        code = page.locator('[data-testid="stMain"] [data-testid="stCaptionContainer"] code').first
        expect(code).to_have_text(item, timeout=TIMEOUT_MS)


def test_the_map_of_a_large_catalog_shows_hover_photos_from_the_photo_route(page) -> None:
    """No single mosaic at this size: a hovered point's photo comes from the app server."""
    from app.ui.hover import PREVIEW_ID
    from tests.test_browser import POINTS_JS, map_plot

    with step(page, "44-large-map-hover-photo"):
        page.goto(page.url.split("/search")[0], wait_until="domcontentloaded")  # the Map
        expect(page.get_by_role("heading", name="Map", level=1)).to_be_visible()
        plot = map_plot(page)
        settle(page)
        points = wait_until(
            lambda: plot.evaluate(POINTS_JS, None),
            lambda p: len(p) > 10,
            60,
            "the map did not get its points",
        )
        preview = page.locator(f"#{PREVIEW_ID}")

        def hovered() -> bool:
            for spot in points[:: max(1, len(points) // 20)]:
                page.mouse.move(spot["x"] + 30, spot["y"] + 30)
                page.mouse.move(spot["x"], spot["y"], steps=3)
                if preview.count() == 1 and preview.is_visible():
                    return True
            return False

        wait_until(hovered, bool, 90, "no photo appeared on hover")
        item = preview.get_attribute("data-item")
        image = preview.evaluate("(el) => getComputedStyle(el).backgroundImage")
        assert "/lookalike/photo/" in image and f"/{item}.jpg" in image, image[:120]
        url = image.split('url("', 1)[1].split('")', 1)[0]
        reply = page.evaluate(
            "(u) => fetch(u).then(async (r) => [r.status, (await r.arrayBuffer()).byteLength])",
            url,
        )
        assert reply[0] == 200 and reply[1] > 500  # the item's thumbnail itself
