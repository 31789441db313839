"""Regenerate the README's screenshots from the real app on built artifacts (not a test).

    python -m tests.make_screenshots [--artifacts artifacts] [--upload PHOTO] [--pages NAME...]

Starts the app on a free localhost port against the artifacts folder, opens each page in
Debian's Chromium, and writes app/screenshots/<page>.png, downscaled to 1000 px wide and
palette-quantised so each stays at a few hundred KB.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image

from pipelines.config import DEFAULT_SOURCE, REPO_ROOT
from tests.browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    IMAGES_LOADED_JS,
    OUTPUT,
    require_browser,
    settle,
    streamlit_server,
    wait_until,
)

SCREENSHOTS = REPO_ROOT / "app" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1200}
WIDTH = 1000
COLOURS = 128
# (nav title, h1 heading, file name)
PAGES = [
    ("Map", "Map", "map"),
    ("Photo map", "Photo map", "photo_map"),
    ("Search", "Search", "search"),
    ("Compare", "Compare extractors", "compare"),
    ("Clusters", "Clusters", "clusters"),
    ("Catalog health", "Catalog health", "health"),
    ("Upload", "Upload photos", "upload"),
]
RUN_TIMEOUT_MS = 180_000


def _save(png: bytes, name: str) -> Path:
    """Downscale and quantise a screenshot; returns the written path."""
    import io

    image = Image.open(io.BytesIO(png)).convert("RGB")
    height = round(image.height * WIDTH / image.width)
    image = image.resize((WIDTH, height), Image.Resampling.LANCZOS)
    image = image.quantize(COLOURS, method=Image.Quantize.MEDIANCUT)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    image.save(path, optimize=True)
    return path


def _wait_for_images(page) -> None:
    images = page.locator('[data-testid="stImage"] img:visible')
    wait_until(
        lambda: images.count() == 0 or images.evaluate_all(IMAGES_LOADED_JS),
        bool,
        RUN_TIMEOUT_MS / 1000,
        "the page's images did not load",
    )


def _select_a_box(page) -> None:
    """Drag a box over the middle of the map, so the screenshot shows a selection."""
    plot = page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first
    plot.locator("canvas.gl-canvas-context").wait_for(state="attached")
    settle(page, RUN_TIMEOUT_MS)
    box = plot.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.40, box["y"] + box["height"] * 0.35
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + box["width"] * 0.15, y0 + box["height"] * 0.2, steps=10)
    page.mouse.up()
    page.get_by_role("heading", name=re.compile(r"^Selection: [1-9]")).wait_for()


def colour_grid(artifacts: Path, per_colour: int = 8, tile: int = 96) -> Path:
    """A sample of each dominant colour the colours stage assigned, as app/screenshots/colours.png:
    one row per palette colour, `per_colour` random items (seeded) whose colour it is."""
    import numpy as np
    import pandas as pd
    from PIL import ImageDraw

    from pipelines.config import Config
    from pipelines.data.colour import COLOURS as NAMES

    config = Config(artifacts_dir=artifacts)
    colours = pd.read_parquet(config.colours_path)
    rng = np.random.default_rng(0)
    label_width = 90
    grid = Image.new("RGB", (label_width + per_colour * tile, len(NAMES) * tile), "white")
    draw = ImageDraw.Draw(grid)
    for row, colour in enumerate(NAMES):
        draw.text((8, row * tile + tile // 2 - 6), colour, fill="black")
        ids = colours.loc[colours["colour"] == colour, "item_id"].to_numpy()
        pick = rng.choice(ids, size=min(per_colour, len(ids)), replace=False) if len(ids) else []
        for col, item_id in enumerate(pick):
            with Image.open(config.thumb_path(item_id)) as thumb:
                thumb = thumb.convert("RGB")
                thumb.thumbnail((tile - 4, tile - 4))
                grid.paste(thumb, (label_width + col * tile + 2, row * tile + 2))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / "colours.png"
    grid.quantize(COLOURS * 2, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=REPO_ROOT / "artifacts")
    parser.add_argument(
        "--upload",
        type=Path,
        default=sorted((DEFAULT_SOURCE / "test" / "dress").glob("*.jpg"))[0],
        help="photo to upload on the Upload page",
    )
    parser.add_argument(
        "--pages",
        nargs="+",
        choices=[name for _, _, name in PAGES],
        default=[name for _, _, name in PAGES],
        help="only these pages (default: all)",
    )
    parser.add_argument(
        "--colour-grid",
        action="store_true",
        help="only write colours.png: a sample of the items of each dominant colour",
    )
    args = parser.parse_args()
    if args.colour_grid:
        print(colour_grid(args.artifacts))
        return
    require_browser()
    from playwright.sync_api import sync_playwright

    with (
        streamlit_server(args.artifacts.resolve(), OUTPUT / "screenshots.log") as url,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(RUN_TIMEOUT_MS)
        page.goto(url, wait_until="domcontentloaded")
        for title, heading, name in PAGES:
            if name not in args.pages:
                continue
            # Exact text: "Map" is also part of "Photo map".
            page.locator('[data-testid="stSidebarNavLink"]').filter(
                has=page.get_by_text(title, exact=True)
            ).click()
            page.get_by_role("heading", name=heading, level=1).wait_for()
            if name == "map":
                _select_a_box(page)
            if name == "upload":
                page.locator('input[type="file"]').set_input_files(str(args.upload))
                page.locator('[data-testid="stImageCaption"]').filter(
                    has_text="#1 · "
                ).first.wait_for(timeout=RUN_TIMEOUT_MS)
            settle(page, RUN_TIMEOUT_MS)
            _wait_for_images(page)
            page.wait_for_timeout(1500)  # plotly's WebGL paint after the run ends
            path = _save(page.screenshot(), name)
            print(f"{path}: {path.stat().st_size // 1024} KB")
        browser.close()


if __name__ == "__main__":
    main()
