"""Shifted views of the training photos, for training against the shift from a catalog's studio
shots to a shopper's phone photo (issue 25): the view itself, which photos get one, and the
saved vectors' reader. The `views` stage (`pipelines/embedding/embed_views.py`) writes
models/views_inception_v3.npz (InceptionV3 vectors of one view per chosen photo) with a manifest.

A view is the photo as a phone might show it: cropped a little, maybe mirrored, shrunk to a
small garment (48-160 px on its long side), turned by a few degrees, placed at a random spot of
a larger frame with a plain or blotchy background, colour-cast and saved as a low-quality JPEG.
It is a family of shifts, drawn at random per photo, wider than the shifted check's one fixed
transform (`pipelines/quality/shifted.py`), so the check measures how far training carries to a
shift it did not copy.

The views are embedded once, keyed on the training set and InceptionV3's model: adding photos to
the catalog does not rebuild them, retraining does. The metric head and the category classifier
learn from them; the custom CNN makes its own views on the fly (`train_data.augment_batch`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from pipelines import commands
from pipelines.config import Config
from pipelines.errors import LookalikeError

STAGE = "views"
BASE = "inception_v3"
VERSION = "views-1"
# Share of the fit photos that get a view (every validation photo gets one, to choose on):
# half keeps the stage near a minute on 2 cores (InceptionV3 at ~28 photos/s).
FIT_SHARE = 0.5
# The view's garment: its long side in pixels, and its share of the frame's long side.
GARMENT_SIDE = (48, 160)
GARMENT_SHARE = (0.35, 0.9)
CROP_MIN = 0.8
ROTATE_DEGREES = 8.0
CAST = 0.1
JPEG_QUALITY = (35, 85)


def _background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A light (70 %) or dark flat colour; half of them with smooth blotches, like a floor."""
    base = rng.uniform(20, 90) if rng.random() < 0.3 else rng.uniform(160, 240)
    flat = np.clip(base + rng.uniform(-20, 20, size=3), 0, 255)
    if rng.random() < 0.5:
        grid = np.clip(flat + rng.uniform(-40, 40, size=(4, 4, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)
    return Image.new("RGB", size, tuple(int(v) for v in flat))


def shifted_view(image: Image.Image, rng: np.random.Generator) -> bytes:
    """One random view of an RGB photo (see the module's docstring), as JPEG bytes."""
    w, h = image.size
    cw, ch = max(1, int(w * rng.uniform(CROP_MIN, 1))), max(1, int(h * rng.uniform(CROP_MIN, 1)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    garment = image.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        garment = garment.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    side = rng.uniform(*GARMENT_SIDE)
    garment.thumbnail((side, side), Image.Resampling.BILINEAR)
    mask = Image.new("L", garment.size, 255)
    angle = rng.uniform(-ROTATE_DEGREES, ROTATE_DEGREES)
    garment = garment.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    mask = mask.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    frame_side = max(garment.size) / rng.uniform(*GARMENT_SHARE)
    aspect = np.exp(rng.uniform(-0.2, 0.2))
    frame = (
        max(garment.width, int(frame_side * aspect)),
        max(garment.height, int(frame_side / aspect)),
    )
    canvas = _background(frame, rng)
    x = int(rng.integers(0, frame[0] - garment.width + 1))
    y = int(rng.integers(0, frame[1] - garment.height + 1))
    canvas.paste(garment, (x, y), mask)
    cast = np.clip(np.asarray(canvas, np.float32) * rng.uniform(1 - CAST, 1 + CAST, 3), 0, 255)
    canvas = ImageEnhance.Contrast(Image.fromarray(cast.astype(np.uint8))).enhance(
        rng.uniform(0.85, 1.15)
    )
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=int(rng.integers(*JPEG_QUALITY)))
    return out.getvalue()


def view_rows(fit: np.ndarray, val: np.ndarray, seed: int) -> np.ndarray:
    """Sorted catalog rows that get a view: every validation row and a seeded FIT_SHARE of
    the fit rows."""
    rng = np.random.default_rng([seed, 25])
    fit_idx = np.flatnonzero(fit)
    chosen = fit_idx[rng.random(len(fit_idx)) < FIT_SHARE]
    return np.sort(np.concatenate([chosen, np.flatnonzero(val)]))


def views_path(config: Config) -> Path:
    """models/views_inception_v3.npz: item ids and InceptionV3 vectors of their views."""
    return config.models_dir / f"views_{BASE}.npz"


@dataclass(frozen=True)
class Views:
    """Vectors of shifted views and the catalog rows they were made from."""

    rows: np.ndarray  # (n,) catalog rows
    vectors: np.ndarray  # (n, 2048) unit rows

    def of(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, vectors) of the views whose row is in boolean `mask`."""
        keep = mask[self.rows]
        return self.rows[keep], self.vectors[keep]


def load_views(config: Config, catalog: pd.DataFrame) -> Views:
    """The saved views matched to `catalog`'s rows (views of items no longer there dropped)."""
    from pipelines.data.item_ids import match_rows

    path = views_path(config)
    if not path.is_file():
        raise LookalikeError(f"{path} is missing — run `{commands.RUN}` (stage views)")
    with np.load(path, allow_pickle=False) as data:
        ids, vectors = data["item_id"], data["vectors"]
    rows = match_rows(catalog["item_id"], ids)
    keep = rows >= 0
    return Views(rows[keep], vectors[keep])
