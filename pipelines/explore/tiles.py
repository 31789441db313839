"""The photo map of a large catalog as deep-zoom tiles: every photo on the mosaic's grid, drawn
as a pyramid of 256-px JPEG tiles (level 0 is the whole map in one tile, each level doubles
the resolution, the last draws each photo at `cell` pixels), so a viewer fetches only the
tiles in view at the resolution it shows.

One JPEG of the whole grid (`mosaic.render_mosaic`) is fine for the default catalog; at 1M
items it would be ~35,000 px square at 32 px a photo, far beyond what a browser decodes.

Layout on disk, under `config.mosaic_tiles_dir(extractor)`:
    {key}/{level}/{x}_{y}.jpg   a tile; tiles without a photo are not written
and `config.mosaic_tiles_path(extractor)` (JSON with a manifest) names the `key` folder and
the pyramid's shape. A build writes a new `key` folder beside the old one, renames it into
place when complete, then writes the index and removes the old folder: a reader sees the old
pyramid or the new one, never a half-written one, and a tile's URL changes with its content.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipelines.artifacts import owner_is_gone, owner_tag, read_manifest

TILE = 256
JPEG_QUALITY = 80
BACKGROUND = (245, 245, 245)
# Decoded photos kept in memory while the finest level is drawn (a catalog whose items share
# photos, like the scale bench's, decodes each once); ~3 KB each at 32 px.
PHOTO_CACHE_MAX = 200_000
_PARTIAL = ".partial"


@dataclass(frozen=True)
class Pyramid:
    """The shape of a tile pyramid over a cols x rows grid of cell-pixel photos.

    Level `levels - 1` is the full resolution (cols * cell x rows * cell pixels); each level
    above halves it; level 0 fits in one tile. Tile (x, y) of level L covers the full
    resolution's pixels [x, x + 1) * tile * 2 ** (levels - 1 - L) (and the same in y).
    """

    cols: int
    rows: int
    cell: int
    tile: int
    levels: int

    @property
    def width(self) -> int:
        return self.cols * self.cell

    @property
    def height(self) -> int:
        return self.rows * self.cell

    def tiles_at(self, level: int) -> tuple[int, int]:
        """(tiles across, tiles down) at `level`."""
        scale = 2 ** (self.levels - 1 - level)
        return (
            max(1, math.ceil(self.width / scale / self.tile)),
            max(1, math.ceil(self.height / scale / self.tile)),
        )


def pyramid_shape(cols: int, rows: int, cell: int, tile: int = TILE) -> Pyramid:
    """The pyramid of a cols x rows grid: as many levels as halve the full resolution into
    one tile. `tile` must be a multiple of `cell`."""
    if cell <= 0 or tile % cell:
        raise ValueError(f"the tile ({tile} px) must be a multiple of the photo cell ({cell} px)")
    side = max(cols * cell, rows * cell, 1)
    levels = 1 + max(0, math.ceil(math.log2(side / tile)))
    return Pyramid(cols=cols, rows=rows, cell=cell, tile=tile, levels=levels)


def tile_file(folder: Path, level: int, x: int, y: int) -> Path:
    """Where tile (x, y) of `level` lies under a pyramid's folder."""
    return folder / str(level) / f"{x}_{y}.jpg"


def bisect_to_grid(gx: np.ndarray, gy: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """Give each point its own cell of a cols x rows grid by recursive bisection.

    Every rectangle of cells (at first the whole grid) is halved along its longer side; the
    points left of (above) the cut go to that half, as many as it holds, the rest to the other.
    Empty regions of the map stay empty, crowded ones spread into their neighbours, and the
    work is a few sorts per level of halving (O(n log^2 n), vectorised): 1M points take
    seconds where the nearest-free-cell greedy takes minutes.

    Parameters
    ----------
    gx, gy : (n,) positions in cell units (column, row; row 0 at the top).
    cols, rows : the grid; cols * rows >= n.

    Returns
    -------
    (n, 2) int64 cells as (col, row), no two alike.
    """
    n = len(gx)
    if cols * rows < n:
        raise ValueError(f"{n} points do not fit a {cols} x {rows} grid")
    x0 = np.zeros(n, np.int64)
    y0 = np.zeros(n, np.int64)
    w = np.full(n, cols, np.int64)
    h = np.full(n, rows, np.int64)
    gx = np.asarray(gx, np.float64)
    gy = np.asarray(gy, np.float64)
    while True:
        active = np.flatnonzero(w * h > 1)
        if len(active) == 0:
            break
        aw, ah = w[active], h[active]
        across = aw >= ah  # cut the longer side
        size = np.where(across, aw, ah)
        other = np.where(across, ah, aw)
        start = np.where(across, x0[active], y0[active])
        coord = np.where(across, gx[active], gy[active])
        half = size // 2
        # Rectangles of one level are disjoint: the top-left corner names each one.
        key = y0[active] * cols + x0[active]
        order = np.lexsort((coord, key))
        _, first, inverse, counts = np.unique(
            key[order], return_index=True, return_inverse=True, return_counts=True
        )
        rank = np.arange(len(order)) - first[inverse]
        sorted_at = active[order]
        cut = (start + half)[order]
        before = np.bincount(inverse, weights=coord[order] < cut, minlength=len(counts))
        cap_first = (half * other)[order][first]
        cap_second = ((size - half) * other)[order][first]
        take = np.clip(before.astype(np.int64), counts - cap_second, cap_first)
        goes_first = rank < take[inverse]
        horizontal = across[order]
        h_sorted, w_sorted = half[order], (size - half)[order]
        # First half: the rectangle's first `half` cells; second half: the rest.
        grow = np.where(goes_first, h_sorted, w_sorted)
        shift = np.where(goes_first, 0, h_sorted)
        x0[sorted_at] += np.where(horizontal, shift, 0)
        y0[sorted_at] += np.where(horizontal, 0, shift)
        w[sorted_at] = np.where(horizontal, grow, w[sorted_at])
        h[sorted_at] = np.where(horizontal, h[sorted_at], grow)
    return np.stack([x0, y0], axis=1)


def _photo(path: str, cell: int, cache: dict[str, np.ndarray | None]) -> np.ndarray | None:
    """One photo fitted into a cell x cell square on the background, as an array; None when
    unreadable. Cached by path."""
    if path in cache:
        return cache[path]
    try:
        with Image.open(path) as img:
            img.draft("RGB", (cell, cell))
            img = img.convert("RGB")
            img.thumbnail((cell, cell), Image.Resampling.BILINEAR)
        square = np.empty((cell, cell, 3), np.uint8)
        square[:] = BACKGROUND
        top, left = (cell - img.height) // 2, (cell - img.width) // 2
        square[top : top + img.height, left : left + img.width] = np.asarray(img)
    except OSError:
        square = None
    if len(cache) >= PHOTO_CACHE_MAX:
        cache.clear()
    cache[path] = square
    return square


def _save(image: Image.Image, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=JPEG_QUALITY)
    return path.stat().st_size


def _finest_level(
    photos: Sequence[str],
    cells: np.ndarray,
    shape: Pyramid,
    folder: Path,
    tick: Callable[[int], None],
) -> tuple[set[tuple[int, int]], int, int]:
    """Draw the full-resolution level one band of tiles at a time (a band is one tile high
    and the grid's width: ~27 MB at 1M items). Returns (tiles written, bytes, photos
    unreadable)."""
    level = shape.levels - 1
    across, down = shape.tiles_at(level)
    per_band = shape.tile // shape.cell  # grid rows in one band
    order = np.lexsort((cells[:, 0], cells[:, 1]))
    band_of = cells[order, 1] // per_band
    bounds = np.searchsorted(band_of, np.arange(down + 1))
    cache: dict[str, np.ndarray | None] = {}
    written: set[tuple[int, int]] = set()
    size = unreadable = 0
    cell, tile = shape.cell, shape.tile
    for band in range(down):
        members = order[bounds[band] : bounds[band + 1]]
        if len(members) == 0:
            continue
        canvas = np.empty((tile, across * tile, 3), np.uint8)
        canvas[:] = BACKGROUND
        used = np.zeros(across, bool)
        for i in members.tolist():
            square = _photo(photos[i], cell, cache)
            if square is None:
                unreadable += 1
                continue
            col, row = int(cells[i, 0]), int(cells[i, 1])
            top, left = (row - band * per_band) * cell, col * cell
            canvas[top : top + cell, left : left + cell] = square
            used[left // tile] = True
        for x in np.flatnonzero(used).tolist():
            part = Image.fromarray(canvas[:, x * tile : (x + 1) * tile])
            size += _save(part, tile_file(folder, level, x, band))
            written.add((x, band))
        tick(len(members))
    return written, size, unreadable


def _coarser_level(
    level: int, below: set[tuple[int, int]], shape: Pyramid, folder: Path
) -> tuple[set[tuple[int, int]], int]:
    """Draw `level` from the four tiles under each of its tiles (box-filtered to half)."""
    tile = shape.tile
    parents = sorted({(x // 2, y // 2) for x, y in below})
    size = 0
    for px, py in parents:
        canvas = Image.new("RGB", (2 * tile, 2 * tile), BACKGROUND)
        for dx in (0, 1):
            for dy in (0, 1):
                child = (2 * px + dx, 2 * py + dy)
                if child in below:
                    with Image.open(tile_file(folder, level + 1, *child)) as img:
                        canvas.paste(img.convert("RGB"), (dx * tile, dy * tile))
        size += _save(canvas.reduce(2), tile_file(folder, level, px, py))
    return set(parents), size


def render_tiles(
    photos: Sequence[str],
    cells: np.ndarray,
    shape: Pyramid,
    folder: Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Draw the whole pyramid into `folder` (which must not exist yet).

    Parameters
    ----------
    photos : each item's photo file (a thumbnail); an unreadable one leaves its cell empty.
    cells : (n, 2) (col, row) of each item, no two alike.
    shape : the pyramid (see `pyramid_shape`).
    folder : where the levels go.
    progress : called with the number of photos drawn so far, after each band.

    Returns
    -------
    {"tiles": tiles written, "bytes": their size, "unreadable": photos that could not be read,
     "seconds": wall time}.
    """
    began = time.perf_counter()
    done = 0

    def tick(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done)

    folder.mkdir(parents=True)
    below, size, unreadable = _finest_level(photos, cells, shape, folder, tick)
    tiles = len(below)
    for level in range(shape.levels - 2, -1, -1):
        below, level_size = _coarser_level(level, below, shape, folder)
        tiles += len(below)
        size += level_size
    return {
        "tiles": tiles,
        "bytes": size,
        "unreadable": unreadable,
        "seconds": round(time.perf_counter() - began, 2),
    }


def partial_folder(root: Path, key: str) -> Path:
    """The folder a build of pyramid `key` draws into before it is renamed to `root / key`;
    its name records the owner, so a build killed half-way is swept by the next one."""
    return root / f".{key}.{owner_tag()}{_PARTIAL}"


def sweep(root: Path, keep: str | None) -> int:
    """Remove every pyramid under `root` but `keep`, and the partial folders of builds whose
    process is gone (a live build's are left alone). Returns the folders removed."""
    removed = 0
    if not root.is_dir():
        return 0
    for entry in os.scandir(root):
        if not entry.is_dir(follow_symlinks=False) or entry.name == keep:
            continue
        if entry.name.endswith(_PARTIAL):
            owner = entry.name[: -len(_PARTIAL)].rsplit(".", 1)[-1]
            pid, _, host = owner.removeprefix("pid").partition("@")
            if not pid.isdigit() or not owner_is_gone(int(pid), host, entry.stat()):
                continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    return removed


def publish(partial: Path, root: Path, key: str) -> Path:
    """Rename a finished build's folder to `root / key` (replacing a pyramid of that key)."""
    final = root / key
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def shape_dict(shape: Pyramid) -> dict[str, int]:
    """The pyramid's shape as the index file records it."""
    return asdict(shape)


@dataclass(frozen=True)
class TiledMap:
    """A built tile pyramid and which item each grid cell holds (what the app's viewer, its
    tile route and a click on the map read).

    Attributes
    ----------
    folder : the pyramid's folder (its key's).
    key : the build's key (part of every tile's URL, so a rebuilt map is never cached stale).
    shape : the pyramid.
    grid : (rows, cols) int32, the catalog row of the item in each cell, -1 for none.
    item_ids, thumbs : each catalog row's item id and thumbnail (relative to artifacts_dir).
    labels : each catalog row's label.
    artifacts_dir : the build's folder.
    """

    folder: Path
    key: str
    shape: Pyramid
    grid: np.ndarray
    item_ids: np.ndarray
    thumbs: np.ndarray
    labels: np.ndarray
    artifacts_dir: Path

    def thumb(self, catalog_row: int) -> Path:
        """The thumbnail file of one catalog row."""
        return self.artifacts_dir / str(self.thumbs[catalog_row])

    def tile(self, level: int, x: int, y: int) -> Path | None:
        """Tile (x, y) of `level`, None when outside the pyramid or without photos."""
        if not 0 <= level < self.shape.levels:
            return None
        across, down = self.shape.tiles_at(level)
        if not (0 <= x < across and 0 <= y < down):
            return None
        path = tile_file(self.folder, level, x, y)
        return path if path.is_file() else None

    def row_at(self, col: int, row: int) -> int | None:
        """The catalog row of the item in cell (col, row), None for an empty or outside cell."""
        if not (0 <= row < self.grid.shape[0] and 0 <= col < self.grid.shape[1]):
            return None
        found = int(self.grid[row, col])
        return found if found >= 0 else None


@dataclass(frozen=True)
class TilesIndex:
    """What a viewer needs to draw a tiled photo map, read from its small index file alone
    (no cells table): the build's key, the pyramid and the number of photos."""

    key: str
    shape: Pyramid
    items: int


def read_tiles_index(index_path: Path) -> TilesIndex | None:
    """The index of a tiled photo map (see `TilesIndex`); None when it is missing or
    unreadable (the mosaic stage has not run)."""
    try:
        index = json.loads(Path(index_path).read_text())
        shape = Pyramid(**{k: int(index[k]) for k in ("cols", "rows", "cell", "tile", "levels")})
        return TilesIndex(str(index["key"]), shape, int(index.get("items", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_tiled_map(
    index_path: Path, tiles_dir: Path, cells_path: Path, catalog: Any, artifacts_dir: Path
) -> TiledMap | None:
    """Read a tiled photo map: its index, its cells table (item_id, col, row in catalog order)
    and the catalog's thumbnails and labels. None when the map is not built (or its folder is
    gone, or its cells come from another run of the stage); the cells must be the catalog's,
    row for row."""
    index = read_tiles_index(index_path)
    if index is None:
        return None
    folder = Path(tiles_dir) / index.key
    if not folder.is_dir() or not Path(cells_path).is_file():
        return None
    # The cells and the tiles of one stage run (a run killed between writing the two leaves
    # them apart until the next run: no map rather than clicks on the wrong photo).
    written = [read_manifest(p) or {} for p in (index_path, cells_path)]
    if written[0].get("key") is None or written[0].get("key") != written[1].get("key"):
        return None
    shape = index.shape
    cells = pd.read_parquet(cells_path, columns=["item_id", "col", "row"])
    ids = catalog["item_id"].astype(str).to_numpy()
    if len(cells) != len(ids) or not np.array_equal(cells["item_id"].astype(str).to_numpy(), ids):
        return None  # another catalog's map: the page asks for the mosaic stage
    grid = np.full((shape.rows, shape.cols), -1, np.int32)
    grid[cells["row"].to_numpy(), cells["col"].to_numpy()] = np.arange(len(cells), dtype=np.int32)
    thumbs = catalog["thumb"].astype(str).to_numpy()
    labels = catalog["label"].astype(str).to_numpy()
    return TiledMap(folder, index.key, shape, grid, ids, thumbs, labels, Path(artifacts_dir))
