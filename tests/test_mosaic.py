"""The photo map: every item gets its own grid cell near its map position, and the mosaic
image puts each item's thumbnail in that cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.explore.mosaic import BACKGROUND, grid_shape, render_mosaic, snap_to_grid


def test_grid_has_room_for_every_point_and_the_maps_aspect() -> None:
    for n in (1, 2, 37, 3781):
        cols, rows = grid_shape(n, 2.0, 1.0)
        assert cols * rows >= n
    cols, rows = grid_shape(3781, 2.0, 1.0)
    assert 1.6 < cols / rows < 2.4


def test_each_point_gets_its_own_cell_near_its_position() -> None:
    rng = np.random.default_rng(0)
    # Two crowded blobs and a sparse spread: crowding must push points apart, not stack them.
    xy = np.vstack(
        [rng.normal(0, 0.3, (300, 2)), rng.normal(5, 0.3, (300, 2)), rng.uniform(-2, 7, (200, 2))]
    )
    cells, cols, rows = snap_to_grid(xy)
    assert len({tuple(c) for c in cells.tolist()}) == len(xy)  # one item per cell
    assert cells[:, 0].min() >= 0 and cells[:, 0].max() < cols
    assert cells[:, 1].min() >= 0 and cells[:, 1].max() < rows
    # Layout follows the map: left blob left of right blob, and y up is row down.
    assert cells[:300, 0].mean() < cells[300:600, 0].mean()
    assert cells[:300, 1].mean() > cells[300:600, 1].mean()
    # Neighbours on the map stay close on the grid (rank correlation of x with column).
    order_x = np.argsort(np.argsort(xy[:, 0]))
    order_col = np.argsort(np.argsort(cells[:, 0]))
    assert np.corrcoef(order_x, order_col)[0, 1] > 0.8


def test_the_mosaic_draws_each_thumbnail_in_its_cell(tmp_path: Path) -> None:
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    paths = []
    for i, colour in enumerate(colours):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (64, 32), colour).save(path, quality=95)
        paths.append(str(path))
    cells = np.array([[0, 0], [2, 1], [1, 0]])
    image = render_mosaic(paths, cells, cols=3, rows=2, tile=10)
    assert image.size == (30, 20)
    pixels = np.asarray(image).astype(int)
    for (col, row), colour in zip(cells, colours, strict=True):
        centre = pixels[row * 10 + 5, col * 10 + 5]
        assert np.abs(centre - colour).max() < 30, (col, row, centre)
    # An empty cell is the background colour.
    assert np.abs(pixels[15, 5] - BACKGROUND).max() < 10


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_maps(n: int) -> None:
    cells, cols, rows = snap_to_grid(np.zeros((n, 2)))
    assert len(cells) == n and cols * rows >= n
