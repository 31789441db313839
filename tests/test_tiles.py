"""The deep-zoom photo map of a large catalog (`pipelines.explore.tiles`, the mosaic stage's
tiled form, and the app server's tile routes): grid layout by bisection, the pyramid's
pixels, its atomic publication and sweeping, and what the routes serve."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.artifacts import read_manifest
from pipelines.config import Config
from pipelines.explore import tiles
from pipelines.explore.mosaic import run_mosaic, snap_to_grid
from tests.conftest import copy_build


def test_bisection_gives_every_point_its_own_cell_near_its_place() -> None:
    rng = np.random.default_rng(0)
    # Two dense blobs far apart and a sparse spread: crowding spreads, the gap stays.
    xy = np.vstack(
        [rng.normal(0, 0.3, (1500, 2)), rng.normal(8, 0.3, (1500, 2)), rng.uniform(0, 8, (150, 2))]
    )
    greedy, cols, rows = snap_to_grid(xy)  # below GREEDY_MAX_ITEMS: the nearest free cell
    low, high = xy.min(0), xy.max(0)
    gx = (xy[:, 0] - low[0]) / (high - low)[0] * (cols - 1)
    gy = (high[1] - xy[:, 1]) / (high - low)[1] * (rows - 1)
    cells = tiles.bisect_to_grid(gx, gy, cols, rows)
    assert len(np.unique(cells[:, 1] * cols + cells[:, 0])) == len(xy)
    assert cells[:, 0].min() >= 0 and cells[:, 0].max() < cols
    assert cells[:, 1].min() >= 0 and cells[:, 1].max() < rows
    # The left-low blob is left of and below (higher row than) the right-high one.
    assert cells[:1500, 0].mean() < cells[1500:3000, 0].mean()
    assert cells[:1500, 1].mean() > cells[1500:3000, 1].mean()
    # Order along x is kept as well as the greedy keeps it (rank correlation with column).
    rank = np.argsort(np.argsort(xy[:, 0]))

    def kept(grid: np.ndarray) -> float:
        return float(np.corrcoef(rank, np.argsort(np.argsort(grid[:, 0])))[0, 1])

    assert kept(cells) > 0.6 and kept(cells) > kept(greedy) - 0.1
    # Points move about as far from their place as the greedy moves them (crowded blobs
    # must spread over many cells either way).
    moved = np.hypot(cells[:, 0] - gx, cells[:, 1] - gy).mean()
    assert moved < 1.3 * np.hypot(greedy[:, 0] - gx, greedy[:, 1] - gy).mean()


def test_bisection_fills_an_exact_grid_and_refuses_too_many_points() -> None:
    rng = np.random.default_rng(1)
    gx, gy = rng.uniform(0, 6, 42), rng.uniform(0, 5, 42)
    cells = tiles.bisect_to_grid(gx, gy, 7, 6)
    assert sorted(map(tuple, cells.tolist())) == [(c, r) for c in range(7) for r in range(6)]
    with pytest.raises(ValueError, match="do not fit"):
        tiles.bisect_to_grid(gx, gy, 6, 6)


def test_large_maps_are_snapped_by_bisection_in_seconds() -> None:
    rng = np.random.default_rng(2)
    xy = rng.normal(size=(60_000, 2))
    cells, cols, rows = snap_to_grid(xy)
    assert len(np.unique(cells[:, 1] * cols + cells[:, 0])) == len(xy)
    assert cols * rows >= len(xy)


def _photos(folder: Path, colours: list[tuple[int, int, int]]) -> list[str]:
    paths = []
    for i, colour in enumerate(colours):
        path = folder / f"{i}.jpg"
        Image.new("RGB", (40, 40), colour).save(path, quality=95)
        paths.append(str(path))
    return paths


def test_the_pyramid_draws_each_photo_in_its_cell_at_every_level(tmp_path: Path) -> None:
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    photos = _photos(tmp_path, colours) + [str(tmp_path / "missing.jpg")]
    # A 40 x 6 grid of 8-px cells in 16-px tiles: 320 x 48 px, 20 x 3 tiles, 6 levels.
    cells = np.array([[0, 0], [39, 5], [20, 2], [5, 5]])
    shape = tiles.pyramid_shape(40, 6, cell=8, tile=16)
    assert shape.levels == 6 and shape.tiles_at(5) == (20, 3) and shape.tiles_at(0) == (1, 1)
    out = tmp_path / "pyramid"
    built = tiles.render_tiles(photos, cells, shape, out)
    assert built["unreadable"] == 1
    finest = shape.levels - 1
    for (col, row), colour in zip(cells[:3], colours, strict=True):
        x, y = col * 8 // 16, row * 8 // 16
        pixels = np.asarray(Image.open(tiles.tile_file(out, finest, x, y))).astype(int)
        centre = pixels[(row * 8) % 16 + 4, (col * 8) % 16 + 4]
        assert np.abs(centre - colour).max() < 40, (col, row, centre)
    # Only tiles with a photo are written; each coarser level covers its children.
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.jpg")}
    assert f"{finest}/0_0.jpg" in written and f"{finest}/1_0.jpg" not in written
    assert "0/0_0.jpg" in written and built["tiles"] == len(written)
    # One level up, each photo is half the size in the same place.
    for (col, row), colour in zip(cells[:3], colours, strict=True):
        x, y = col * 4 // 16, row * 4 // 16
        pixels = np.asarray(Image.open(tiles.tile_file(out, finest - 1, x, y))).astype(int)
        centre = pixels[(row * 4) % 16 + 2, (col * 4) % 16 + 2]
        assert np.abs(centre - colour).max() < 60, (col, row, centre)
    # The whole map in level 0: one full tile, the map (10 x 2 px) at its top left.
    assert Image.open(tiles.tile_file(out, 0, 0, 0)).size == (16, 16)
    with pytest.raises(ValueError, match="multiple"):
        tiles.pyramid_shape(4, 4, cell=24, tile=256)


@pytest.fixture(scope="module")
def tiled_build(built: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A copy of the 36-item build whose photo map is tiled (the threshold set below it)."""
    config = copy_build(built, tmp_path_factory.mktemp("tiled"))
    config = config.replace(mosaic_tiled_min_items=10, mosaic_deep_cell=16)
    run_mosaic(config, ["inception_v3"])
    return config


def test_the_mosaic_stage_tiles_a_large_catalog_once(tiled_build: Config) -> None:
    config = tiled_build
    index = json.loads(config.mosaic_tiles_path("inception_v3").read_text())
    manifest = read_manifest(config.mosaic_tiles_path("inception_v3"))
    assert manifest is not None and manifest["tiles"] > 0 and manifest["tiles_bytes"] > 0
    assert not config.mosaic_image_path("inception_v3").exists()  # no single JPEG
    folder = config.mosaic_tiles_dir("inception_v3") / index["key"]
    assert tiles.tile_file(folder, 0, 0, 0).is_file()
    cells = pd.read_parquet(config.mosaic_cells_path("inception_v3"))
    catalog = pd.read_parquet(config.catalog_path)
    assert cells["item_id"].astype(str).tolist() == catalog["item_id"].astype(str).tolist()
    # Up to date: skipped, nothing redrawn.
    stamp = os.stat(tiles.tile_file(folder, 0, 0, 0)).st_mtime_ns
    again = run_mosaic(config, ["inception_v3"])
    assert again.details["inception_v3"]["skipped"]
    assert os.stat(tiles.tile_file(folder, 0, 0, 0)).st_mtime_ns == stamp
    # Another cell size is another pyramid: the old folder is removed once the new is in place.
    redrawn = config.replace(mosaic_deep_cell=8)
    run_mosaic(redrawn, ["inception_v3"])
    new_key = json.loads(config.mosaic_tiles_path("inception_v3").read_text())["key"]
    assert new_key != index["key"]
    assert [p.name for p in config.mosaic_tiles_dir("inception_v3").iterdir()] == [new_key]
    run_mosaic(config, ["inception_v3"])  # back as the module's other tests expect


def test_a_killed_build_is_swept_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "x_tiles"
    (root / "keep" / "0").mkdir(parents=True)
    (root / "old").mkdir()
    host = tiles.owner_tag().split("@", 1)[1]
    dead = root / f".abc.pid999999999@{host}.partial"  # no such process: its build was killed
    (dead / "3").mkdir(parents=True)
    mine = tiles.partial_folder(root, "new")  # this process's build, still drawing
    mine.mkdir()
    assert tiles.sweep(root, keep="keep") == 2  # the killed build's folder and "old"
    assert sorted(p.name for p in root.iterdir()) == sorted(["keep", mine.name])


def test_a_catalog_below_the_threshold_gets_back_one_image(built: Config, tmp_path: Path) -> None:
    config = copy_build(built, tmp_path).replace(mosaic_tiled_min_items=10, mosaic_deep_cell=16)
    run_mosaic(config, ["inception_v3"])
    assert config.mosaic_tiles_path("inception_v3").exists()
    small = config.replace(mosaic_tiled_min_items=100_000)
    run_mosaic(small, ["inception_v3"])
    assert small.mosaic_image_path("inception_v3").is_file()
    assert not small.mosaic_tiles_path("inception_v3").exists()
    assert not small.mosaic_tiles_dir("inception_v3").exists()


def test_the_routes_serve_tiles_and_cell_photos_of_the_current_build(
    tiled_build: Config, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from app.routes import PREFIX, ROUTES
    from app.ui import loaders

    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(tiled_build.artifacts_dir))
    found = loaders.tiled_map(tiled_build, "inception_v3")
    assert found is not None
    client = TestClient(Starlette(routes=ROUTES))
    base = f"{PREFIX}/tiles/inception_v3/{found.key}"
    reply = client.get(f"{base}/0/0_0.jpg")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg"
    assert "immutable" in reply.headers["cache-control"]
    assert Image.open(tiles.tile_file(found.folder, 0, 0, 0)).size == (256, 256)
    assert client.get(f"{PREFIX}/tiles/inception_v3/oldkey/0/0_0.jpg").status_code == 404
    assert client.get(f"{base}/0/5_5.jpg").status_code == 404  # outside the pyramid
    assert client.get(f"{base}/99/0_0.jpg").status_code == 404
    assert client.get(f"{PREFIX}/tiles/nonsense/{found.key}/0/0_0.jpg").status_code == 404
    # A cell's photo is its item's thumbnail, named in the headers.
    cells = pd.read_parquet(tiled_build.mosaic_cells_path("inception_v3"))
    first = cells.iloc[0]
    photo = client.get(f"{PREFIX}/cell/inception_v3/{found.key}/{first['col']}/{first['row']}.jpg")
    assert photo.status_code == 200 and photo.headers["x-item-id"] == str(first["item_id"])
    catalog = pd.read_parquet(tiled_build.catalog_path)
    thumb = catalog.loc[catalog["item_id"].astype(str) == str(first["item_id"]), "thumb"].iloc[0]
    assert photo.content == (tiled_build.artifacts_dir / thumb).read_bytes()
    taken = set(zip(cells["col"], cells["row"], strict=True))
    empty = next(
        (c, r)
        for r in range(found.shape.rows)
        for c in range(found.shape.cols)
        if (c, r) not in taken
    )
    empty_url = f"{PREFIX}/cell/inception_v3/{found.key}/{empty[0]}/{empty[1]}.jpg"
    assert client.get(empty_url).status_code == 404


def test_a_large_catalogs_maps_hover_photos_come_from_the_photo_route(
    tiled_build: Config, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    """No single mosaic to cut hover photos from: the hover script asks the photo route for
    each item's thumbnail, under a URL that names the catalog's version."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from app import routes
    from app.ui import hover

    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(tiled_build.artifacts_dir))
    base = routes.photo_base(tiled_build)
    html = hover._photo_route_html(base)
    assert json.dumps(base) in html and "encodeURIComponent(item)" in html
    client = TestClient(Starlette(routes=routes.ROUTES))
    catalog = pd.read_parquet(tiled_build.catalog_path)
    item, thumb = str(catalog["item_id"].iloc[3]), catalog["thumb"].iloc[3]
    reply = client.get(f"{base}{item}.jpg")
    assert reply.status_code == 200
    assert reply.content == (tiled_build.artifacts_dir / thumb).read_bytes()
    assert client.get(f"{base}no-such-item.jpg").status_code == 404
    assert client.get(f"{routes.PREFIX}/photo/0000000000000000/{item}.jpg").status_code == 404


def test_cells_of_another_stage_run_are_not_read_with_the_tiles(
    tiled_build: Config, tmp_path, clear_caches: None
) -> None:
    """A run killed between the tiles and the cells: the app shows no tiled map (the page
    says to run the mosaic stage) rather than resolving clicks with another layout."""
    from pipelines.artifacts import write_manifest

    config = copy_build(tiled_build, tmp_path)
    cells = config.mosaic_cells_path("inception_v3")
    args = (config.mosaic_tiles_path("inception_v3"), config.mosaic_tiles_dir("inception_v3"))
    catalog = pd.read_parquet(config.catalog_path).astype({"item_id": str})
    assert tiles.open_tiled_map(*args, cells, catalog, config.artifacts_dir) is not None
    manifest = read_manifest(cells)
    write_manifest(cells, "mosaic", {**manifest["params"], "seed": 99}, manifest["inputs"])
    assert tiles.open_tiled_map(*args, cells, catalog, config.artifacts_dir) is None


def test_a_rebuilt_map_is_not_served_under_its_old_key(built: Config, tmp_path: Path) -> None:
    config = copy_build(built, tmp_path).replace(mosaic_tiled_min_items=10, mosaic_deep_cell=16)
    run_mosaic(config, ["inception_v3"])
    first = json.loads(config.mosaic_tiles_path("inception_v3").read_text())["key"]
    shutil.rmtree(config.mosaic_tiles_dir("inception_v3") / first)  # the folder lost
    again = run_mosaic(config, ["inception_v3"])
    assert not again.details["inception_v3"]["skipped"]
    assert (config.mosaic_tiles_dir("inception_v3") / first / "0" / "0_0.jpg").is_file()


def test_a_small_catalogs_photo_map_image_is_linked_when_the_routes_answer(
    built: Config, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    """Under app/server.py the pages name the photo map image by its route (the browser keeps
    it across reruns) instead of inlining it; without the routes they inline it."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from app import routes
    from app.ui import loaders

    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(built.artifacts_dir))
    mosaic = loaders.mosaic(built, "inception_v3")
    assert mosaic is not None
    monkeypatch.setitem(routes._SERVING, "routes", False)
    assert routes.mosaic_source("inception_v3", mosaic).startswith("data:image/jpeg;base64,")
    monkeypatch.setitem(routes._SERVING, "routes", True)
    url = routes.mosaic_source("inception_v3", mosaic)
    assert url == f"{routes.PREFIX}/mosaic/inception_v3/{mosaic['sha'][:16]}.jpg"
    client = TestClient(Starlette(routes=routes.ROUTES))
    reply = client.get(url)
    assert reply.status_code == 200 and "immutable" in reply.headers["cache-control"]
    assert reply.content == built.mosaic_image_path("inception_v3").read_bytes()
    # Another image's name (a rebuilt map), or no such extractor: not served.
    base = f"{routes.PREFIX}/mosaic"
    assert client.get(f"{base}/inception_v3/{'0' * 16}.jpg").status_code == 404
    assert client.get(f"{base}/nonsense/{mosaic['sha'][:16]}.jpg").status_code == 404
