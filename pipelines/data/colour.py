"""Dominant colour of each catalog item: reads the thumbnails, writes colours.parquet (item_id,
colour), a catalog-side column computed once per catalog.

The palette is the eleven basic colour terms of Berlin & Kay (black, white, grey, red, orange,
yellow, green, blue, purple, pink, brown): names a shopper filters by, few enough that a photo's
lighting rarely moves an item across a border. Each pixel of the garment's central region
(the middle half of the width, the middle 60 % of the height) goes to the nearest palette
colour in CIELAB, after pixels that look like the photo's background (close to the median
colour of its outer border) are set aside; the most frequent name wins.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipelines import artifacts, commands
from pipelines.config import Config
from pipelines.stage import StageResult

STAGE = "colours"
VERSION = "berlin-kay-11-lab-v1"
PALETTE = {
    "black": (25, 25, 25),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "red": (190, 30, 40),
    "orange": (235, 130, 40),
    "yellow": (235, 210, 60),
    "green": (50, 130, 60),
    "blue": (40, 70, 170),
    "purple": (110, 50, 140),
    "pink": (235, 140, 175),
    "brown": (115, 75, 45),
}
COLOURS = tuple(PALETTE)
# Pixels within this CIELAB distance of the border's median colour count as background.
BACKGROUND_DISTANCE = 12.0
# Side of the image the colour is read from (smaller is faster and loses nothing here).
WORK_SIZE = 64


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 or 0-255 sRGB -> (..., 3) CIELAB (D65)."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


_PALETTE_LAB = rgb_to_lab(np.array(list(PALETTE.values())))


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """(n, 3) sRGB pixels -> (n,) palette index of each."""
    lab = rgb_to_lab(rgb)
    return np.argmin(((lab[:, None, :] - _PALETTE_LAB[None]) ** 2).sum(axis=2), axis=1)


def dominant_colour(image: Image.Image) -> str:
    """The palette name of a photo's garment (see the module docstring)."""
    small = np.asarray(image.convert("RGB").resize((WORK_SIZE, WORK_SIZE)), np.float64)
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    background = rgb_to_lab(np.median(border, axis=0))
    h, w = small.shape[:2]
    centre = small[int(0.2 * h) : int(0.8 * h), int(0.25 * w) : int(0.75 * w)].reshape(-1, 3)
    lab = rgb_to_lab(centre)
    garment = np.linalg.norm(lab - background, axis=1) > BACKGROUND_DISTANCE
    # A garment the colour of its background (white shirt on white) keeps every pixel.
    pixels = centre[garment] if garment.mean() > 0.15 else centre
    counts = np.bincount(nearest_colour(pixels), minlength=len(COLOURS))
    return COLOURS[int(np.argmax(counts))]


def run_colours(config: Config, force: bool = False) -> StageResult:
    """Stage: the dominant colour of every catalog item from its thumbnail -> colours.parquet.

    An unreadable thumbnail gets no colour (None) and is counted in the note.
    """
    from pipelines.readers import read_catalog

    start = time.perf_counter()
    catalog, catalog_sha = read_catalog(config)
    out = config.colours_path
    params = {"version": VERSION, "palette": PALETTE}
    inputs = {"catalog": catalog_sha}
    if not force and artifacts.is_fresh(out, STAGE, params, inputs):
        print(f"colours: up to date ({out})")
        return StageResult(STAGE, rows=len(catalog), seconds=time.perf_counter() - start,
                           skipped=True)  # fmt: skip
    # An update reads only new items' thumbnails; the others keep the colour they have.
    known: dict[str, str | None] = {}
    previous = artifacts.read_manifest(out) or {}
    same = artifacts.sha256_json(previous.get("params")) == artifacts.sha256_json(params)
    if not force and same and artifacts.matches_manifest(out):
        old = pd.read_parquet(out)
        known = dict(zip(old["item_id"].astype(str), old["colour"], strict=True))
    names: list[str | None] = []
    for item, thumb in zip(catalog["item_id"], catalog["thumb"].astype(str), strict=True):
        if item in known and known[item] is not None:
            names.append(known[item])
            continue
        try:
            with Image.open(Path(config.artifacts_dir) / thumb) as image:
                names.append(dominant_colour(image))
        except OSError:
            names.append(None)
    table = pd.DataFrame({"item_id": catalog["item_id"].to_numpy(), "colour": names})
    artifacts.write_parquet(table, out)
    artifacts.write_manifest(out, STAGE, params, inputs)
    missing = sum(n is None for n in names)
    note = f"{len(COLOURS)} colours" + (f", {missing} unreadable thumbnails" if missing else "")
    print(f"colours: {len(catalog)} items, {note} -> {out}")
    return StageResult(
        STAGE, wrote=(out,), rows=len(catalog), seconds=time.perf_counter() - start, note=note
    )


def read_colours(config: Config, item_ids: np.ndarray) -> np.ndarray | None:
    """(n,) colour names aligned with `item_ids`, or None when colours.parquet is missing or
    was built for another catalog (rerun the colours stage: `python -m pipelines run`)."""
    path = config.colours_path
    if not path.exists():
        return None
    table = pd.read_parquet(path)
    if table["item_id"].astype(str).tolist() != [str(i) for i in item_ids]:
        return None
    return table["colour"].to_numpy(dtype=object)


MISSING_HINT = f"colours.parquet is missing or stale — run `{commands.RUN}`"
