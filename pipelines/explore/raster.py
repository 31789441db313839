"""Draws a large 2-D map as one image and finds the items inside a drawn box or lasso.

Pure numpy (and Pillow to encode the PNG); reads and writes nothing. A map of 100k-1M points
sent to the browser as JSON costs megabytes on every rerun; this bins the points into pixels
per colour group instead, so the browser gets one PNG whose size depends on the picture, not
on the number of items.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Pixels across the image's longer side: about a full-width map at 1x (the browser scales it).
IMAGE_SIZE = 1200
# Each point covers this many pixels each way (a dot of 2x2 px reads at a glance; 1 px
# vanishes where the map is sparse).
SPREAD = 2


@dataclass(frozen=True)
class Raster:
    """A map drawn as an image, and where it sits in map coordinates."""

    png: bytes  # RGBA PNG, row 0 at the top (largest y)
    x_range: tuple[float, float]  # map x of the image's left and right edges
    y_range: tuple[float, float]  # map y of its bottom and top edges
    width: int
    height: int

    def data_uri(self) -> str:
        """The PNG as a data: URI (what a plotly layout image takes)."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def map_extent(xs: np.ndarray, ys: np.ndarray, pad: float = 0.03) -> tuple[float, ...]:
    """(x0, x1, y0, y1): the points' bounding box, widened by `pad` of its size on each side
    (and never empty)."""
    x0, x1 = float(np.min(xs)), float(np.max(xs))
    y0, y1 = float(np.min(ys)), float(np.max(ys))
    dx, dy = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    return x0 - pad * dx, x1 + pad * dx, y0 - pad * dy, y1 + pad * dy


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    text = colour.lstrip("#")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def rasterise(
    xs: np.ndarray,
    ys: np.ndarray,
    groups: np.ndarray,
    colours: Sequence[str],
    *,
    weights: Sequence[float] | None = None,
    extent: tuple[float, ...] | None = None,
    size: int = IMAGE_SIZE,
    spread: int = SPREAD,
    opacity: float = 0.85,
) -> Raster:
    """Bin points into pixels, one count per colour group, and colour each pixel by the mix of
    its groups (so a pixel of mostly one label takes that label's colour) with an opacity that
    grows with the log of its count.

    Parameters
    ----------
    xs, ys : (n,) map coordinates.
    groups : (n,) int group of each point, 0 <= g < len(colours); a negative group is not drawn.
    colours : "#rrggbb" per group.
    weights : how much each group counts in a pixel's colour (default 1 each); a low weight
        keeps a background group (filtered-out points drawn grey) from tinting the others.
    extent : (x0, x1, y0, y1) the image covers (default `map_extent`).
    size : pixels across the longer side; the other side keeps the extent's aspect ratio.
    spread : each point covers spread x spread pixels.
    opacity : alpha of the densest pixel (0..1); a lone point gets about half of it.

    Returns
    -------
    Raster (PNG bytes and its extent).
    """
    from PIL import Image

    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    x0, x1, y0, y1 = extent if extent is not None else map_extent(xs, ys)
    aspect = (y1 - y0) / max(x1 - x0, 1e-12)
    width = size if aspect <= 1 else max(1, int(round(size / aspect)))
    height = max(1, int(round(width * aspect))) if aspect <= 1 else size
    n_groups = len(colours)
    keep = (groups >= 0) & (groups < n_groups) & np.isfinite(xs) & np.isfinite(ys)
    col = np.floor((xs[keep] - x0) / (x1 - x0) * width).astype(np.int64)
    row = np.floor((y1 - ys[keep]) / (y1 - y0) * height).astype(np.int64)  # row 0 = top
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    flat = groups[keep][inside] * (width * height) + row[inside] * width + col[inside]
    counts = np.bincount(flat, minlength=n_groups * width * height).astype(np.float32)
    counts = counts.reshape(n_groups, height, width)
    if spread > 1:  # a box filter: each point covers spread x spread pixels
        grown = np.zeros_like(counts)
        for dy in range(spread):
            for dx in range(spread):
                grown[:, dy:, dx:] += counts[:, : height - dy, : width - dx]
        counts = grown
    weight = np.ones(n_groups, np.float32) if weights is None else np.asarray(weights, np.float32)
    weighted = counts * weight[:, None, None]
    total = weighted.sum(axis=0)
    rgb_table = np.array([_hex_rgb(c) for c in colours], dtype=np.float32)  # (g, 3)
    mix = np.tensordot(rgb_table.T, weighted, axes=1)  # (3, h, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        mix = np.where(total > 0, mix / total, 0.0)
    density = counts.sum(axis=0)
    top = float(density.max()) if density.size else 0.0
    alpha = np.zeros_like(density)
    if top > 0:
        alpha = np.where(density > 0, 0.45 + 0.55 * np.log1p(density) / np.log1p(top), 0.0) * float(
            opacity
        )
    image = np.dstack([mix.transpose(1, 2, 0), alpha * 255.0])
    out = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGBA").save(
        out, format="PNG", optimize=False, compress_level=6
    )
    return Raster(out.getvalue(), (x0, x1), (y0, y1), width, height)


def sample_rows(groups: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most `n` row numbers drawn at random without replacement, sorted; every group with
    points keeps at least one (so each colour still appears in the legend and can be hovered).

    Parameters
    ----------
    groups : (N,) int group of each point.
    n : how many rows to keep.
    """
    groups = np.asarray(groups)
    total = len(groups)
    if total <= n:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    rows = rng.choice(total, size=n, replace=False)
    present = set(np.unique(groups[rows]).tolist())
    extra = [
        int(np.flatnonzero(groups == g)[0]) for g in np.unique(groups) if int(g) not in present
    ]
    return np.unique(np.concatenate([rows, np.asarray(extra, dtype=np.int64)]))


def points_in_box(
    xs: np.ndarray, ys: np.ndarray, x_range: Sequence[float], y_range: Sequence[float]
) -> np.ndarray:
    """(n,) bool: the points inside an axis-aligned box (edges included, either order)."""
    xa, xb = sorted(float(v) for v in x_range)
    ya, yb = sorted(float(v) for v in y_range)
    return (xs >= xa) & (xs <= xb) & (ys >= ya) & (ys <= yb)


def points_in_polygon(
    xs: np.ndarray, ys: np.ndarray, poly_x: Sequence[float], poly_y: Sequence[float]
) -> np.ndarray:
    """(n,) bool: the points inside a polygon (a lasso), by the even-odd rule, vectorised over
    points: one pass over the polygon's edges, each a few array operations on the points
    within the polygon's bounding box only.

    Parameters
    ----------
    xs, ys : (n,) point coordinates.
    poly_x, poly_y : the polygon's vertices in order (closed implicitly).
    """
    px = np.asarray(poly_x, dtype=np.float64)
    py = np.asarray(poly_y, dtype=np.float64)
    inside = np.zeros(len(xs), dtype=bool)
    if len(px) < 3:
        return inside
    near = np.flatnonzero((xs >= px.min()) & (xs <= px.max()) & (ys >= py.min()) & (ys <= py.max()))
    x = np.asarray(xs, dtype=np.float64)[near]
    y = np.asarray(ys, dtype=np.float64)[near]
    odd = np.zeros(len(near), dtype=bool)
    for xa, ya, xb, yb in zip(px, py, np.roll(px, -1), np.roll(py, -1), strict=True):
        if ya == yb:
            continue  # a horizontal edge never crosses the ray
        crosses = (ya > y) != (yb > y)
        at = xa + (y - ya) * (xb - xa) / (yb - ya)
        odd ^= crosses & (x < at)
    inside[near] = odd
    return inside


def selected_rows(
    xs: np.ndarray, ys: np.ndarray, selection: Mapping[str, Any] | None
) -> np.ndarray | None:
    """Rows of the points inside a plotly selection's boxes and lassos (their union), sorted;
    None when the selection has neither (a click, or nothing drawn).

    Parameters
    ----------
    xs, ys : (n,) map coordinates.
    selection : what `st.plotly_chart(on_select=...)` reports under "selection": "box" is a
        list of {"x": [x0, x1], "y": [y0, y1]}, "lasso" a list of {"x": [...], "y": [...]}.
    """
    if not selection:
        return None
    boxes = [b for b in selection.get("box") or [] if len(b.get("x") or []) >= 2]
    lassos = [s for s in selection.get("lasso") or [] if len(s.get("x") or []) >= 3]
    if not boxes and not lassos:
        return None
    xs = np.asarray(xs)
    ys = np.asarray(ys)
    mask = np.zeros(len(xs), dtype=bool)
    for box in boxes:
        mask |= points_in_box(xs, ys, box["x"], box["y"])
    for lasso in lassos:
        mask |= points_in_polygon(xs, ys, lasso["x"], lasso["y"])
    return np.flatnonzero(mask)
