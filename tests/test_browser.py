"""A user's path through the running app in a real browser (Debian's Chromium via Playwright).

Builds artifacts with the real pipeline on 36 real photos, starts `streamlit run` on them and
checks what the pages show: the Map's WebGL scatter, the Search grid following the extractor and
k, and the Upload page's neighbours and error messages. Screenshots go to test-output/browser/.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import pandas as pd
import pytest

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect
except ImportError:  # require_browser() fails each test with the fix
    expect = None
    PlaywrightTimeout = TimeoutError

from app.ui.names import display_name
from pipelines.config import Config
from pipelines.explore import browse
from tests.browser_helpers import (
    IMAGES_LOADED_JS,
    NEIGHBOUR_CAPTION,
    OUTPUT,
    PAINTED_PIXELS_JS,
    TRACES_JS,
    VIEWPORT,
    WEBGL_JS,
    clear_screenshots,
    require_browser,
    settle,
    step,
    streamlit_server,
    wait_until,
)
from tests.conftest import SMALL_LABELS

pytestmark = pytest.mark.slow

LABELS = SMALL_LABELS
# A script run that loads a model (InceptionV3 for an upload) can take a minute on 2 busy cores.
RUN_TIMEOUT_MS = 150_000
# Ordinary reruns (a widget change, a page switch) on cached data.
UI_TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")
def catalog(built: Config) -> pd.DataFrame:
    return pd.read_parquet(built.catalog_path)


@pytest.fixture(scope="session")
def app_url(built: Config) -> Iterator[str]:
    """The app served from the repository root on the built artifacts; stopped afterwards."""
    require_browser()
    clear_screenshots()
    with streamlit_server(built.artifacts_dir, OUTPUT / "streamlit.log") as url:
        yield url


@pytest.fixture
def page(browser, app_url: str, built: Config) -> Iterator[object]:
    """A page in its own browser context (own cookies, so its own Streamlit session), opened on
    the app's default page. The sidebar opens on the build's best extractor by its evaluation
    (checked here, caption included); the tests then pick InceptionV3, whose answers they
    read. Uncaught JavaScript errors fail the test."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    js_errors: list[str] = []
    page.on("pageerror", lambda error: js_errors.append(str(error)))
    try:
        page.goto(app_url, wait_until="domcontentloaded")
        metrics = json.loads(built.metrics_path.read_text())
        best = browse.best_extractor(metrics, built.extractors_built())
        assert best is not None, "the built catalog has no evaluation"
        expect(extractor_box(page)).to_have_value(display_name(best[0]))
        expect(sidebar(page).get_by_text(f"best P@10 ({best[1]:.2f})")).to_be_visible()
        if best[0] != "inception_v3":
            pick_extractor(page, "InceptionV3 (ImageNet)")
            settle(page)  # the rerun redraws the page's charts: let it finish first
        yield page
    finally:
        context.close()
    assert not js_errors, f"uncaught JavaScript errors on the page: {js_errors}"


# --------------------------------------------------------------------------- helpers


def sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def extractor_select(page):
    return sidebar(page).locator('[data-testid="stSelectbox"]').filter(has_text="Extractor")


def extractor_box(page):
    """The Extractor selectbox's input, whose value is the chosen extractor's display name."""
    return sidebar(page).get_by_role("combobox", name="Extractor")


def pick_extractor(page, name: str) -> None:
    """Choose an extractor in the sidebar by its display name and wait until it shows."""
    extractor_select(page).click()
    page.get_by_role("option", name=name).click()
    expect(extractor_box(page)).to_have_value(name)


def open_page(page, title: str, heading: str) -> None:
    """Click a page's link in the sidebar navigation and wait for its title."""
    page.locator('[data-testid="stSidebarNavLink"]').filter(has_text=title).click()
    expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible(timeout=UI_TIMEOUT_MS)


def neighbour_images(page):
    """The <img> of every visible neighbour thumbnail (captioned "#rank · label · similarity");
    thumbnails in a hidden tab do not count."""
    thumbnails = page.locator('[data-testid="stImage"]:visible').filter(
        has=page.locator('[data-testid="stImageCaption"]', has_text=NEIGHBOUR_CAPTION)
    )
    return thumbnails.locator("img")


def neighbour_captions(page) -> list[str]:
    return (
        page.locator('[data-testid="stImageCaption"]:visible')
        .filter(has_text=NEIGHBOUR_CAPTION)
        .all_inner_texts()
    )


def set_slider(page, thumb, value: int, rounds: int = 3) -> None:
    """Move a slider to `value` with the arrow keys, as a user would, reading it after each
    press: a rerun that lands between presses can swallow one, so count on the page's value,
    not on the number of presses. Repeats after the app settles if a rerun moved it back."""
    for _ in range(rounds):
        for _ in range(100):
            current = int(thumb.get_attribute("aria-valuetext"))
            if current == value:
                break
            thumb.focus()
            thumb.press("ArrowLeft" if current > value else "ArrowRight")
            # Wait for the slider to move, not for a fixed time; a swallowed press times out
            # quietly and the loop presses again.
            with contextlib.suppress(PlaywrightTimeout):
                page.wait_for_function(
                    "([el, before]) => el.getAttribute('aria-valuetext') !== before",
                    arg=[thumb.element_handle(), str(current)],
                    timeout=2000,
                )
        settle(page)
        if int(thumb.get_attribute("aria-valuetext")) == value:
            return


# The Search grid's "find lookalikes" buttons have keys search_pick_<item id>; Streamlit puts
# each key on its element as the class st-key-<key>.
NEIGHBOUR_IDS_JS = """() => Array.from(document.querySelectorAll('[class*="st-key-search_pick_"]'))
    .map((el) => (el.className.match(/st-key-search_pick_(\\S+)/) || [])[1])
    .filter(Boolean)"""


def neighbour_ids(page) -> list[str]:
    """Item ids of the Search grid, in rank order (from its "find lookalikes" buttons)."""
    ids = page.evaluate(NEIGHBOUR_IDS_JS)
    return list(dict.fromkeys(ids))


# The images whose request ended without a picture (complete, no width), by src.
FAILED_IMAGES_JS = "(imgs) => imgs.filter(i => i.complete && i.naturalWidth === 0).map(i => i.src)"


def reload_failed_images(page, images) -> None:
    """Ask again for the images whose request failed, after checking the server serves them now.

    Streamlit drops media files a rerun did not reach when a newer rerun interrupts it (its
    `remove_orphaned_files`); arrow-key presses on a slider interrupt each other, so an image
    the browser asked for in between can answer 404 and then keeps the same URL in the next
    run, which the browser does not ask for again. The app's part is that every image of the
    settled grid is served: that is asserted here, and then the <img> is pointed at it again.
    """
    for src in images.evaluate_all(FAILED_IMAGES_JS):
        response = page.request.get(src)
        assert response.ok, f"the grid shows {src}, which the server answers {response.status}"
        assert response.headers.get("content-type", "").startswith("image/"), response.headers
        print(f"reloaded an image dropped by an interrupted rerun: {src}")
    images.evaluate_all(
        "(imgs) => imgs.filter(i => i.complete && i.naturalWidth === 0)"
        ".forEach(i => { const s = i.src; i.src = ''; i.src = s; })"
    )


def expect_neighbours(page, k: int, timeout_ms: int = UI_TIMEOUT_MS) -> list[str]:
    """Wait until the visible grid shows exactly k loaded neighbour images ranked #1..#k, and
    the script run is over; return their captions."""
    images = neighbour_images(page)
    expect(images).to_have_count(k, timeout=timeout_ms)
    settle(page, timeout_ms)
    expect(images).to_have_count(k, timeout=timeout_ms)

    def loaded() -> bool:
        reload_failed_images(page, images)
        return images.evaluate_all(IMAGES_LOADED_JS)

    wait_until(
        loaded,
        bool,
        timeout_ms / 1000,
        f"the {k} neighbour images did not all load",
    )
    captions = neighbour_captions(page)
    assert [int(c.split(" · ")[0][1:]) for c in captions] == list(range(1, k + 1)), captions
    return captions


# --------------------------------------------------------------------------- the user's path


def test_map_draws_the_scatter(page, catalog: pd.DataFrame) -> None:
    assert page.evaluate(WEBGL_JS), (
        "this Chromium has no WebGL (not even SwiftShader's software GL), so plotly's "
        "Scattergl map cannot draw; check the chromium package (libGLESv2/SwiftShader)"
    )
    with step(page, "01-map-scatter"):
        expect(page.get_by_role("heading", name="Map", level=1)).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
        plot = page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first
        expect(plot.locator("canvas.gl-canvas-context")).to_be_attached(timeout=UI_TIMEOUT_MS)
        settle(page)
        # One WebGL trace per label, holding every catalog item between them.
        traces = wait_until(
            lambda: plot.evaluate(TRACES_JS),
            lambda t: sum(n for _, n in t) == len(catalog),
            60,
            f"the map did not get its {len(catalog)} points",
        )
        assert {kind for kind, _ in traces} == {"scattergl"}
        assert len(traces) == len(LABELS)
        # SVG <text> has no innerText: read textContent.
        legend = [t.strip() for t in plot.locator(".legendtext").all_text_contents()]
        assert sorted(legend) == LABELS, legend
        # The points are really drawn: a few hundred opaque pixels on a transparent canvas.
        canvas = wait_until(
            lambda: plot.evaluate(PAINTED_PIXELS_JS),
            lambda c: c["painted"] >= 20 * len(catalog),
            60,
            "the map's WebGL canvas stayed (nearly) empty",
        )
        assert canvas["width"] > 0 and canvas["height"] > 0
        assert canvas["painted"] < 0.5 * canvas["width"] * canvas["height"], canvas
        # The page around it: trustworthiness, item count, and the empty selection.
        trust = page.locator('[data-testid="stMetric"]').filter(has_text="Trustworthiness@10")
        value = float(trust.locator('[data-testid="stMetricValue"]').inner_text())
        assert 0 < value <= 1
        expect(page.get_by_text(f"{len(catalog)} items · InceptionV3")).to_be_visible()
        expect(page.get_by_role("heading", name="Selection: 0 items")).to_be_visible()


def test_search_grid_follows_extractor_and_k(page) -> None:
    with step(page, "02-search-default-inception-k10"):
        open_page(page, "Search", "Search")
        expect_neighbours(page, 10)
        inception_ids = neighbour_ids(page)
        assert len(inception_ids) == 10
        expect(
            page.get_by_role("heading", name="10 nearest items · InceptionV3 (ImageNet) · exact")
        ).to_be_visible()

    with step(page, "03-search-custom-cnn-k10"):
        sidebar(page).locator('[data-testid="stSelectbox"]').filter(has_text="Extractor").click()
        page.get_by_role("option", name="Custom CNN (trained)").click()
        expect(
            page.get_by_role("heading", name="10 nearest items · Custom CNN (trained) · exact")
        ).to_be_visible()
        custom = expect_neighbours(page, 10)
        custom_ids = neighbour_ids(page)
        # Same query, another embedding: other neighbours (ids, not captions, which also
        # carry similarities and would differ for the very same list).
        assert len(custom_ids) == 10 and custom_ids != inception_ids

    slider = sidebar(page).locator('[data-testid="stSlider"]').filter(has_text="Neighbours (k)")
    thumb = slider.locator('input[type="range"]')
    for k, name in ((5, "04"), (8, "05")):
        with step(page, f"{name}-search-custom-cnn-k{k}"):
            set_slider(page, thumb, k)
            expect(thumb).to_have_attribute("aria-valuetext", str(k))
            expect(
                page.get_by_role("heading", name=f"{k} nearest items · Custom CNN (trained)")
            ).to_be_visible()
            captions = expect_neighbours(page, k)
            assert captions == custom[:k]  # the same ranking, cut at k
            assert neighbour_ids(page) == custom_ids[:k]
            expect(page.get_by_text(f"Precision@{k}", exact=True)).to_be_visible()


def test_upload_a_photo_then_files_that_are_not_photos(
    page, catalog: pd.DataFrame, tmp_path: Path
) -> None:
    row = catalog[(catalog["label"] == "dress") & (catalog["split"] == "test")].iloc[0]
    uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')

    with step(page, "06-upload-empty"):
        open_page(page, "Upload", "Upload photos")
        expect(page.get_by_text("Upload one or several photos")).to_be_visible()

    with step(page, "07-upload-photo-inception-neighbours"):
        started = time.monotonic()
        uploader.set_input_files(row["path"])
        # A catalog photo finds itself first (similarity 1), in both extractors' tabs.
        captions = expect_neighbours(page, 10, RUN_TIMEOUT_MS)
        assert re.fullmatch(r"#1 · dress · (1\.000|0\.999)", captions[0]), captions
        print(f"upload to neighbours: {time.monotonic() - started:.1f} s")
        expect(page.get_by_text("Predicted category")).to_be_visible()
        expect(page.get_by_role("tab", name="InceptionV3 (ImageNet)")).to_have_attribute(
            "aria-selected", "true"
        )

    with step(page, "08-upload-photo-custom-cnn-neighbours"):
        page.get_by_role("tab", name="Custom CNN (trained)").click()
        captions = expect_neighbours(page, 10)
        assert re.fullmatch(r"#1 · dress · (1\.000|0\.999)", captions[0]), captions

    with step(page, "09-upload-text-file-rejected-by-browser"):
        notes = tmp_path / "notes.txt"
        notes.write_text("a shopping list, not a photo\n")
        uploader.set_input_files(notes)
        # The uploader refuses it by type before it reaches the app: a red chip whose message
        # shows on hover (and is read out as an alert).
        chip = page.locator('[data-testid="stFileChip"]').filter(has_text="notes.txt")
        expect(chip.locator('[data-testid="stFileChipIconError"]')).to_be_visible()
        expect(chip.get_by_role("alert")).to_have_text("Error: text/plain files are not allowed.")
        chip.hover()
        expect(page.get_by_text("text/plain files are not allowed.", exact=True)).to_be_visible()
        expect_neighbours(page, 10)  # the photo's results stay

    with step(page, "10-upload-text-named-jpg-error-message"):
        # Text sent as a JPEG passes the browser's type check; the app names it and the problem.
        uploader.set_input_files(
            {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"a shopping list"}
        )
        error = page.locator('[data-testid="stAlert"]')
        expect(error).to_have_text(
            "Could not use notes.jpg: not a recognised image "
            "(jpg, png, webp, heic or avif expected)",
            timeout=UI_TIMEOUT_MS,
        )
        expect_neighbours(page, 10)


def test_search_heatmap_toggle_draws_an_overlay_on_both_photos(page) -> None:
    from app.ui.heatmap import NEIGHBOUR_CAPTION as HEAT_NEIGHBOUR
    from app.ui.heatmap import QUERY_CAPTION as HEAT_QUERY
    from app.ui.heatmap import TOGGLE_LABEL

    overlays = page.locator('[data-testid="stImage"]').filter(
        has=page.locator('[data-testid="stImageCaption"]', has_text="Heatmap · ")
    )
    with step(page, "11-search-heatmap-off"):
        open_page(page, "Search", "Search")
        captions = expect_neighbours(page, 10)
        expect(overlays).to_have_count(0)  # off by default: nothing computed

    with step(page, "12-search-heatmap-on"):
        page.get_by_text(TOGGLE_LABEL).click()
        # The first heatmap loads InceptionV3 (up to a minute on 2 busy cores).
        expect(overlays).to_have_count(2, timeout=RUN_TIMEOUT_MS)
        settle(page, RUN_TIMEOUT_MS)
        texts = overlays.locator('[data-testid="stImageCaption"]').all_inner_texts()
        assert texts == [
            f"{HEAT_QUERY} · where it matches #1",
            f"{HEAT_NEIGHBOUR}1 · where it matches the query",
        ], texts
        images = overlays.locator("img")
        wait_until(
            lambda: images.evaluate_all(IMAGES_LOADED_JS), bool, 60, "the overlays did not load"
        )
        # Drawn at the model's input size (299 px), not the 128 px catalog thumbnails.
        widths = images.evaluate_all("(imgs) => imgs.map(i => i.naturalWidth)")
        assert widths == [299, 299], widths
        # The pair's similarity under the heatmap is the #1 neighbour's similarity in the grid.
        note = page.get_by_text(re.compile(r"^Similarity \d\.\d{3}: ")).inner_text()
        assert float(note.split()[1].rstrip(":")) == pytest.approx(
            float(captions[0].split(" · ")[-1]), abs=0.002
        ), (note, captions[0])
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page.locator('[data-testid="stHorizontalBlock"]').filter(
            has=overlays.first
        ).last.screenshot(path=str(OUTPUT / "search-heatmap-pair.png"))

    with step(page, "13-search-heatmap-second-neighbour"):
        # Type into the picker's search box and take the first match, as a keyboard user would
        # (its dropdown can open below the viewport at the bottom of the page).
        picker = page.locator('[data-testid="stSelectbox"]').filter(has_text="Neighbour to explain")
        picker.locator("input").click()
        page.keyboard.type("#2 ·")
        page.keyboard.press("Enter")
        expect(overlays.locator('[data-testid="stImageCaption"]').first).to_have_text(
            f"{HEAT_QUERY} · where it matches #2"
        )
        expect_neighbours(page, 10)  # the grid stays


# --------------------------------------------------------------------------- browsing (issue 14)

# Screen positions of a plot's item points: [{id, x, y}] in page pixels, from plotly's own
# axes (`l2p`) and the plot's place on the page. `names` limits the traces read (null: all
# traces that carry item ids).
POINTS_JS = """(plot, names) => {
    const box = plot.getBoundingClientRect();
    const fl = plot._fullLayout;
    if (!fl || !fl.xaxis || !plot._fullData) return [];  // not drawn yet (a rerun): ask again
    const xa = fl.xaxis, ya = fl.yaxis;
    const out = [];
    for (const t of plot._fullData) {
        if (!t.customdata || t.visible !== true) continue;
        if (names && !names.includes(t.name)) continue;
        for (let i = 0; i < t._length; i++) {
            out.push({id: String(t.customdata[i]), trace: t.name,
                      x: box.left + xa._offset + xa.l2p(t.x[i]),
                      y: box.top + ya._offset + ya.l2p(t.y[i])});
        }
    }
    return out;
}"""


# The photo map's mosaic is in the plot: an SVG <image> whose href is the app server's mosaic
# route (app/routes.py; app/server.py serves it, so nothing is inlined). Its href, or null.
MOSAIC_ROUTE = "/lookalike/mosaic/"
MOSAIC_DRAWN_JS = """(plot) => ([...plot.querySelectorAll('image')].map(
    (i) => i.getAttribute('href') || '').find((h) => h.includes('/lookalike/mosaic/')) || null)"""


def expect_mosaic_served(page, url: str) -> None:
    """The mosaic URL a page names answers with the JPEG, cacheable for good (its name changes
    with the image)."""
    response = page.request.get(urljoin(page.url, url))
    assert response.ok, f"{url} answered {response.status}"
    assert response.headers["content-type"] == "image/jpeg", response.headers
    assert "immutable" in response.headers.get("cache-control", ""), response.headers
    assert response.body()[:2] == b"\xff\xd8"  # a JPEG


def map_plot(page):
    plot = page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first
    expect(plot.locator("canvas.gl-canvas-context")).to_be_attached(timeout=UI_TIMEOUT_MS)
    return plot


def loneliest(points: list[dict], exclude: set[str] = frozenset()) -> dict:
    """The point farthest (on screen) from every other: a click there can only pick it."""

    def gap(p):
        return min(
            ((p["x"] - q["x"]) ** 2 + (p["y"] - q["y"]) ** 2 for q in points if q is not p),
            default=1e9,
        )

    return max((p for p in points if p["id"] not in exclude), key=gap)


def shown_query(page) -> str:
    """The query's item id under its card on Search ("`id`" caption)."""
    code = page.locator('[data-testid="stMain"] [data-testid="stCaptionContainer"] code').first
    expect(code).to_be_visible()
    return code.inner_text().strip()


def test_a_click_on_the_search_map_changes_the_query(page) -> None:
    with step(page, "20-search-map-click"):
        open_page(page, "Search", "Search")
        expect_neighbours(page, 10)
        before = shown_query(page)
        plot = map_plot(page)
        plot.scroll_into_view_if_needed()
        settle(page)
        points = wait_until(
            lambda: plot.evaluate(POINTS_JS, None),
            lambda p: len(p) > 10,
            60,
            "the Search map did not get its points",
        )
        height = page.viewport_size["height"]
        target = loneliest([p for p in points if 0 < p["y"] < height - 10], {before})
        page.mouse.click(target["x"], target["y"])
        query = page.locator('[data-testid="stMain"] [data-testid="stCaptionContainer"] code')
        expect(query.first).to_have_text(target["id"], timeout=UI_TIMEOUT_MS)
        expect_neighbours(page, 10)


def test_hovering_a_point_shows_its_photo(page) -> None:
    from app.ui.hover import PREVIEW_ID

    with step(page, "21-map-hover-photo"):
        expect(page.get_by_role("heading", name="Map", level=1)).to_be_visible()
        plot = map_plot(page)
        settle(page)
        points = wait_until(
            lambda: plot.evaluate(POINTS_JS, None),
            lambda p: len(p) > 10,
            60,
            "the map did not get its points",
        )
        target = loneliest(points)
        preview = page.locator(f"#{PREVIEW_ID}")

        # The hover script attaches within a moment of the chart drawing: move until it shows.
        # Positions are read again each time: a rerun or scroll may move the chart meanwhile.
        def hovered() -> bool:
            plot.scroll_into_view_if_needed()
            spot = next(
                (p for p in plot.evaluate(POINTS_JS, None) if p["id"] == target["id"]), target
            )
            page.mouse.move(spot["x"] + 30, spot["y"] + 30)
            page.mouse.move(spot["x"], spot["y"], steps=3)
            return preview.count() == 1 and preview.is_visible()

        wait_until(hovered, bool, 90, "no photo appeared on hover")
        expect(preview).to_have_attribute("data-item", target["id"])
        image = preview.evaluate("(el) => getComputedStyle(el).backgroundImage")
        assert image.startswith('url("') and MOSAIC_ROUTE in image, image[:80]
        expect_mosaic_served(page, image[5:-2])

    with step(page, "21b-hover-photo-goes-with-its-chart"):
        # A chart that leaves the page under the pointer (a rerun, another page) sends plotly
        # no unhover: the photo must not stay on screen over whatever comes next. The chart is
        # taken out of the page for a moment, the pointer not moved, then put back.
        expect(preview).to_be_visible()
        plot.evaluate(
            "(gd) => { window.__lookalikeChart = [gd, gd.parentNode, gd.nextSibling];"
            " gd.parentNode.removeChild(gd); }"
        )
        try:
            expect(page.locator(f"#{PREVIEW_ID}")).to_be_hidden(timeout=5000)
        finally:
            page.evaluate(
                "() => { const [gd, parent, next] = window.__lookalikeChart;"
                " parent.insertBefore(gd, next); }"
            )


def test_a_box_selection_counts_its_labels_and_downloads_its_ids(
    page, catalog: pd.DataFrame, tmp_path: Path
) -> None:
    labels = catalog.set_index("item_id")["label"]
    with step(page, "22-map-box-selection"):
        expect(page.get_by_role("heading", name="Map", level=1)).to_be_visible()
        # The map of the extractor the fixture picked (not the first one's, about to be redrawn
        # under the mouse: a drag over a chart being replaced selects nothing).
        expect(page.get_by_text(f"{len(catalog)} items · InceptionV3 (ImageNet)")).to_be_visible()
        plot = map_plot(page)
        settle(page)
        points = wait_until(
            lambda: plot.evaluate(POINTS_JS, None),
            lambda p: len(p) == len(catalog),
            60,
            "the map did not get its points",
        )
        xs = sorted(p["x"] for p in points)
        ys = sorted(p["y"] for p in points)
        # A box over the left part of the points, its right edge in the widest gap between
        # neighbouring points of the middle half: no point within a pixel or two of an edge,
        # where the mouse's whole-pixel position would decide.
        middle = range(len(xs) // 4, 3 * len(xs) // 4)
        cut = max(middle, key=lambda i: xs[i + 1] - xs[i])
        assert xs[cut + 1] - xs[cut] > 4, "the map has no gap to draw a box edge in"
        x0, x1 = xs[0] - 5, (xs[cut] + xs[cut + 1]) / 2
        y0, y1 = ys[0] - 5, ys[-1] + 5
        inside = {p["id"] for p in points if x0 < p["x"] < x1 and y0 < p["y"] < y1}
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x1, y1, steps=12)
        page.mouse.up()
        heading = f"Selection: {len(inside)} item" + ("" if len(inside) == 1 else "s")
        expect(page.get_by_role("heading", name=heading)).to_be_visible(timeout=UI_TIMEOUT_MS)
        settle(page)
        counts = labels.loc[sorted(inside)].value_counts()
        line = (
            page.locator('[data-testid="stMarkdownContainer"] p')
            .filter(has_text=re.compile(r"^Labels:"))
            .inner_text()
        )
        for label, n in counts.items():
            assert f"{n} {label}" in line, (line, counts.to_dict())
        assert sum(int(part.split()[0]) for part in line.removeprefix("Labels:").split("·")) == (
            len(inside)
        )

    with step(page, "23-map-selection-csv"):
        with page.expect_download() as download:
            page.get_by_role("button", name=re.compile(r"Download CSV")).click()
        path = tmp_path / "selection.csv"
        download.value.save_as(path)
        table = pd.read_csv(path, dtype=str)
        assert set(table["item_id"]) == inside
        assert table.columns.tolist()[:3] == ["item_id", "path", "label"]


def test_the_photo_map_opens_and_a_click_searches_from_that_photo(page) -> None:
    with step(page, "24-photo-map"):
        started = time.monotonic()
        open_page(page, "Photo map", "Photo map")
        plot = map_plot(page)
        # The mosaic is drawn as the plot's layout image.
        href = wait_until(
            lambda: plot.evaluate(MOSAIC_DRAWN_JS),
            bool,
            UI_TIMEOUT_MS / 1000,
            "the photo map's mosaic was not drawn",
            interval_s=0.05,
        )
        print(f"photo map first paint: {time.monotonic() - started:.2f} s")
        expect_mosaic_served(page, href)
        settle(page)

    with step(page, "25-photo-map-click-searches"):
        # Positions read right before the click: the step's screenshot resizes the page.
        points = wait_until(
            lambda: plot.evaluate(POINTS_JS, None),
            lambda p: len(p) > 10,
            60,
            "the photo map did not get its cells",
        )
        # A photo the viewport shows (the map is taller than the window).
        height = page.viewport_size["height"]
        visible = [p for p in points if 0 < p["y"] < height - 10]
        target = visible[len(visible) // 2]
        page.mouse.click(target["x"], target["y"])
        expect(page.get_by_role("heading", name="Search", level=1)).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
        assert shown_query(page) == target["id"]
        expect_neighbours(page, 10)
