"""Photo map stage: reads each extractor's 2-D map and the thumbnails; writes a mosaic (every
photo snapped to a grid laid out by the map, one JPEG) and the cell of each item."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy.spatial import cKDTree

from pipelines.artifacts import (
    artifact_hash,
    atomic_path,
    is_fresh,
    read_manifest,
    write_manifest,
    write_parquet,
)
from pipelines.config import EXTRACTORS, Config
from pipelines.readers import read_catalog
from pipelines.stage import StageResult, per_extractor

STAGE = "mosaic"
# Cells per item: a little slack lets crowded regions spread without drifting far.
FILL = 1.2
BACKGROUND = (245, 245, 245)
JPEG_QUALITY = 80
CELL_COLUMNS = ["item_id", "col", "row"]


def grid_shape(n: int, width: float, height: float, fill: float = FILL) -> tuple[int, int]:
    """(columns, rows) of a grid with at least `n` cells (about n * fill) whose aspect is the
    map's width : height."""
    if n <= 0:
        return 1, 1
    aspect = width / height if width > 0 and height > 0 else 1.0
    aspect = min(max(aspect, 0.25), 4.0)
    cells = max(n, math.ceil(n * fill))
    cols = max(1, round(math.sqrt(cells * aspect)))
    rows = max(1, math.ceil(cells / cols))
    while cols * rows < n:
        rows += 1
    return cols, rows


def snap_to_grid(xy: np.ndarray, fill: float = FILL, seed: int = 0) -> tuple[np.ndarray, int, int]:
    """Give each 2-D point its own grid cell, as near its map position as free cells allow.

    Points are placed in random order (seeded), each in the nearest free cell: a greedy
    assignment whose mean displacement stays around a cell in crowded regions, and which
    never puts two points in one cell.

    Parameters
    ----------
    xy : (n, 2) map positions.
    fill : cells per point (>= 1).
    seed : order of placement.

    Returns
    -------
    (cells (n, 2) int64 as (col, row) — row 0 at the top, the map's highest y —, cols, rows).
    """
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    if n == 0:
        return np.zeros((0, 2), np.int64), 1, 1
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = np.where(high - low > 0, high - low, 1.0)
    cols, rows = grid_shape(n, float(span[0]), float(span[1]), fill)
    # Cell centres in the map's scale: x to columns, y (up) to rows (down).
    gx = (xy[:, 0] - low[0]) / span[0] * (cols - 1)
    gy = (high[1] - xy[:, 1]) / span[1] * (rows - 1)
    centres = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), axis=-1).reshape(-1, 2)
    tree = cKDTree(centres)
    free = np.ones(len(centres), bool)
    out = np.zeros((n, 2), np.int64)
    order = np.random.default_rng(seed).permutation(n)
    for i in order:
        point = (gx[i], gy[i])
        k = 8
        while True:
            _, found = tree.query(point, k=min(k, len(centres)))
            found = np.atleast_1d(found)
            open_ = found[free[found]]
            if len(open_):
                cell = int(open_[0])
                break
            if k >= len(centres):  # unreachable: there are more cells than points
                raise RuntimeError("no free cell left in the mosaic grid")
            k *= 4
        free[cell] = False
        out[i] = centres[cell]
    return out, cols, rows


def _tile(path: str, tile: int) -> Image.Image:
    """One thumbnail fitted into a tile x tile square on the background (aspect kept)."""
    with Image.open(path) as img:
        img.draft("RGB", (tile, tile))
        img = img.convert("RGB")
        img.thumbnail((tile, tile), Image.Resampling.BILINEAR)
    square = Image.new("RGB", (tile, tile), BACKGROUND)
    square.paste(img, ((tile - img.width) // 2, (tile - img.height) // 2))
    return square


def render_mosaic(
    thumb_files: Sequence[str], cells: np.ndarray, cols: int, rows: int, tile: int
) -> Image.Image:
    """The photo map: each thumbnail drawn in its cell (col, row) of a cols x rows grid of
    tile-pixel squares. An unreadable thumbnail leaves its cell grey."""
    canvas = Image.new("RGB", (cols * tile, rows * tile), BACKGROUND)
    for path, (col, row) in zip(thumb_files, cells, strict=True):
        try:
            canvas.paste(_tile(path, tile), (int(col) * tile, int(row) * tile))
        except OSError as err:
            print(f"mosaic: skipped an unreadable thumbnail ({path}: {err})")
    return canvas


def run_mosaic(
    config: Config, extractors: Sequence[str] = EXTRACTORS, force: bool = False
) -> StageResult:
    """Stage: one photo map per extractor map.

    Writes, each with a manifest: `config.mosaic_cells_path(name)` (item_id, col, row in
    catalog order; the manifest holds cols, rows and tile) and `config.mosaic_image_path(name)`
    (JPEG, cols*tile x rows*tile). Built once per map: skipped when the map, the catalog and
    the settings are unchanged, unless `force`. An extractor without a map is skipped.

    Returns
    -------
    StageResult; details are {extractor: {"skipped", "cols", "rows", "tile"}}.
    """
    began = time.perf_counter()
    catalog, catalog_hash = read_catalog(config)
    ids = catalog["item_id"].astype(str)
    thumbs = [str(config.artifacts_dir / t) for t in catalog["thumb"]]
    details: dict[str, dict[str, Any]] = {}
    wrote = []
    for name in dict.fromkeys(extractors):
        map_path = config.map_path(name)
        if not map_path.exists():
            print(f"mosaic {name}: no map, skipped ({map_path})")
            continue
        params = {"tile": config.mosaic_tile, "fill": FILL, "seed": config.seed}
        inputs = {"catalog": catalog_hash, f"maps/{name}": artifact_hash(map_path, "maps")}
        image_path, cells_path = config.mosaic_image_path(name), config.mosaic_cells_path(name)
        if not force and all(is_fresh(p, STAGE, params, inputs) for p in (image_path, cells_path)):
            manifest = read_manifest(cells_path) or {}
            details[name] = {"skipped": True, **{k: manifest.get(k) for k in ("cols", "rows")}}
            print(f"mosaic {name}: up to date, skipped")
            continue
        table = pd.read_parquet(map_path)
        coords = table.assign(item_id=table["item_id"].astype(str)).set_index("item_id")
        xy = coords.loc[ids, ["x", "y"]].to_numpy(np.float64)
        cells, cols, rows = snap_to_grid(xy, FILL, config.seed)
        image = render_mosaic(thumbs, cells, cols, rows, config.mosaic_tile)
        extra = {"cols": cols, "rows": rows, "tile": config.mosaic_tile, "items": len(ids)}
        with atomic_path(image_path) as tmp:
            image.save(tmp, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        write_manifest(image_path, STAGE, params, inputs, extra)
        frame = pd.DataFrame({"item_id": ids.to_numpy(), "col": cells[:, 0], "row": cells[:, 1]})
        write_parquet(frame.astype({"col": np.int32, "row": np.int32}), cells_path)
        write_manifest(cells_path, STAGE, params, inputs, extra)
        wrote += [image_path, cells_path]
        details[name] = {"skipped": False, "cols": cols, "rows": rows, "tile": config.mosaic_tile}
        print(f"mosaic {name}: {len(ids)} photos on a {cols} x {rows} grid -> {image_path}")
    note = ", ".join(f"{n} {d.get('cols')}x{d.get('rows')}" for n, d in details.items())
    return per_extractor(STAGE, details, len(ids), time.perf_counter() - began, wrote, note)
