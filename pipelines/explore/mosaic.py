"""Photo map stage: reads each extractor's 2-D map and the thumbnails; writes a mosaic (every
photo snapped to a grid laid out by the map, one JPEG) and the cell of each item."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from pipelines.artifacts import (
    artifact_hash,
    atomic_path,
    is_fresh,
    manifest_path,
    read_manifest,
    stage_key,
    write_json,
    write_manifest,
    write_parquet,
)
from pipelines.config import EXTRACTORS, Config
from pipelines.explore import tiles
from pipelines.readers import read_catalog
from pipelines.stage import StageResult, per_extractor

STAGE = "mosaic"
# Cells per item: a little slack lets crowded regions spread without drifting far.
FILL = 1.2
BACKGROUND = (245, 245, 245)
JPEG_QUALITY = 80
CELL_COLUMNS = ["item_id", "col", "row"]
# Above this many points the grid is laid out by recursive bisection (`tiles.bisect_to_grid`,
# seconds at 1M) instead of the nearest-free-cell greedy (~20 s at 20k, minutes beyond).
GREEDY_MAX_ITEMS = 20_000
# Recorded in a tiled map's manifest: a new layout rule redraws the tiles.
LAYOUT_VERSION = "bisect-1"


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
    never puts two points in one cell. Above `GREEDY_MAX_ITEMS` points, recursive bisection
    (`tiles.bisect_to_grid`) instead: the same guarantees, seconds at 1M.

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
    if n > GREEDY_MAX_ITEMS:
        return tiles.bisect_to_grid(gx, gy, cols, rows), cols, rows
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
    catalog order; the manifest holds cols, rows and tile) and the photos: below
    `config.mosaic_tiled_min_items` items one JPEG, `config.mosaic_image_path(name)` (cols*tile
    x rows*tile); from there a pyramid of deep-zoom tiles under `config.mosaic_tiles_dir(name)`
    indexed by `config.mosaic_tiles_path(name)` (see `pipelines.explore.tiles`). Built once per
    map: skipped when the map, the catalog and the settings are unchanged, unless `force`. An
    extractor without a map is skipped.

    Returns
    -------
    StageResult; details are {extractor: {"skipped", "cols", "rows", "tile"}} (and "tiles",
    "tiles_bytes", "levels" for a tiled map).
    """
    began = time.perf_counter()
    catalog, catalog_hash = read_catalog(config)
    ids = catalog["item_id"].astype(str)
    thumbs = [str(config.artifacts_dir / t) for t in catalog["thumb"]]
    tiled = len(ids) >= config.mosaic_tiled_min_items
    details: dict[str, dict[str, Any]] = {}
    wrote = []
    for name in dict.fromkeys(extractors):
        map_path = config.map_path(name)
        if not map_path.exists():
            print(f"mosaic {name}: no map, skipped ({map_path})")
            continue
        params: dict[str, Any] = {"tile": config.mosaic_tile, "fill": FILL, "seed": config.seed}
        if tiled:
            params.update(tiled=True, cell=config.mosaic_deep_cell, layout=LAYOUT_VERSION)
        inputs = {"catalog": catalog_hash, f"maps/{name}": artifact_hash(map_path, "maps")}
        photos_path = config.mosaic_tiles_path(name) if tiled else config.mosaic_image_path(name)
        cells_path = config.mosaic_cells_path(name)
        if (
            not force
            and all(is_fresh(p, STAGE, params, inputs) for p in (photos_path, cells_path))
            and (not tiled or _tiles_folder(config, name) is not None)
        ):
            manifest = read_manifest(cells_path) or {}
            details[name] = {"skipped": True, **{k: manifest.get(k) for k in ("cols", "rows")}}
            print(f"mosaic {name}: up to date, skipped")
            continue
        table = pd.read_parquet(map_path)
        coords = table.assign(item_id=table["item_id"].astype(str)).set_index("item_id")
        xy = coords.loc[ids, ["x", "y"]].to_numpy(np.float64)
        cells, cols, rows = snap_to_grid(xy, FILL, config.seed)
        extra: dict[str, Any] = {"cols": cols, "rows": rows, "tile": config.mosaic_tile}
        extra["items"] = len(ids)
        if tiled:
            extra.update(_write_tiles(config, name, thumbs, cells, cols, rows, params, inputs))
        else:
            image = render_mosaic(thumbs, cells, cols, rows, config.mosaic_tile)
            with atomic_path(photos_path) as tmp:
                image.save(tmp, format="JPEG", quality=JPEG_QUALITY, optimize=True)
            write_manifest(photos_path, STAGE, params, inputs, extra)
        frame = pd.DataFrame({"item_id": ids.to_numpy(), "col": cells[:, 0], "row": cells[:, 1]})
        write_parquet(frame.astype({"col": np.int32, "row": np.int32}), cells_path)
        write_manifest(cells_path, STAGE, params, inputs, extra)
        _remove_other_form(config, name, tiled)
        wrote += [photos_path, cells_path]
        details[name] = {"skipped": False, **extra}
        form = f"{extra['tiles']:,} tiles in {extra['levels']} levels" if tiled else "one image"
        print(f"mosaic {name}: {len(ids)} photos on a {cols} x {rows} grid, {form}")
    note = ", ".join(f"{n} {d.get('cols')}x{d.get('rows')}" for n, d in details.items())
    return per_extractor(STAGE, details, len(ids), time.perf_counter() - began, wrote, note)


def _tiles_folder(config: Config, name: str) -> Path | None:
    """The folder of the tiles the index of `name` names, None when either is missing."""
    index = tiles.read_tiles_index(config.mosaic_tiles_path(name))
    if index is None:
        return None
    folder = config.mosaic_tiles_dir(name) / index.key
    return folder if folder.is_dir() else None


def _write_tiles(
    config: Config,
    name: str,
    thumbs: Sequence[str],
    cells: np.ndarray,
    cols: int,
    rows: int,
    params: dict[str, Any],
    inputs: dict[str, str],
) -> dict[str, Any]:
    """Draw the pyramid into a partial folder, rename it into place, then write the index
    (with its manifest) and remove older pyramids; returns the index's shape and sizes."""
    shape = tiles.pyramid_shape(cols, rows, config.mosaic_deep_cell)
    root = config.mosaic_tiles_dir(name)
    key = stage_key(STAGE, params, inputs)[:16]
    tiles.sweep(root, keep=None if not (root / key).is_dir() else key)
    partial = tiles.partial_folder(root, key)
    bar = tqdm(total=len(cells), desc=f"mosaic {name} tiles", unit="photo", mininterval=2)
    last = 0

    def progress(done: int) -> None:
        nonlocal last
        bar.update(done - last)
        last = done

    try:
        built = tiles.render_tiles(thumbs, cells, shape, partial, progress)
    except BaseException:  # stopped or failed (SIGTERM too): leave no partial folder
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        bar.close()
    tiles.publish(partial, root, key)
    if built["unreadable"]:
        print(f"mosaic {name}: {built['unreadable']} unreadable thumbnails left their cells empty")
    index = {"key": key, **tiles.shape_dict(shape), "items": len(cells)}
    sizes = {"tiles": built["tiles"], "tiles_bytes": built["bytes"], "levels": shape.levels}
    write_json(index, config.mosaic_tiles_path(name))
    # The manifest's own "key" is the stage key: the pyramid's folder goes in as "tiles_key".
    shape_extra = {**tiles.shape_dict(shape), "tiles_key": key, **sizes}
    write_manifest(config.mosaic_tiles_path(name), STAGE, params, inputs, shape_extra)
    tiles.sweep(root, keep=key)
    return {**sizes, "cell": shape.cell, "tiles_seconds": built["seconds"]}


def _remove_other_form(config: Config, name: str, tiled: bool) -> None:
    """A catalog that crossed the tiling threshold leaves no photo map of the other form."""
    stale = [config.mosaic_image_path(name)] if tiled else [config.mosaic_tiles_path(name)]
    for path in stale:
        for file in (path, manifest_path(path)):
            file.unlink(missing_ok=True)
    if not tiled and config.mosaic_tiles_dir(name).is_dir():
        shutil.rmtree(config.mosaic_tiles_dir(name), ignore_errors=True)
