"""The app at scale: a large map is drawn as an image (box and lasso still select exactly the
items inside), the Map page sends a bounded figure while the query and its neighbours are
drawn, and `bench --scale` builds and times a small synthetic catalog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pipelines.config import REPO_ROOT, Config
from pipelines.explore import raster

APP = str(REPO_ROOT / "app" / "streamlit_app.py")
TIMEOUT = 240
# Items of the synthetic build the page tests open: well above plots.RASTER_MIN_ITEMS.
N_SCALED = 60_000


# --------------------------------------------------------------------------- pure selection


def _triangle_contains(x: np.ndarray, y: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Inside a triangle by the signs of three cross products (independent of the even-odd
    ray casting under test)."""

    def side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])

    d1, d2, d3 = side(tri[0], tri[1]), side(tri[1], tri[2]), side(tri[2], tri[0])
    negative = (d1 < 0) | (d2 < 0) | (d3 < 0)
    positive = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(negative & positive)


def test_box_and_lasso_select_exactly_the_points_inside() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    xs = rng.uniform(-10, 10, n)
    ys = rng.uniform(-10, 10, n)
    # Planted: points just inside and just outside the box's edges.
    box = {"x": [1.0, 3.0], "y": [-2.0, 0.5]}
    inside = np.array([[1.001, -1.999], [2.999, 0.499], [2.0, -1.0]])
    outside = np.array([[0.999, -1.0], [3.001, 0.0], [2.0, 0.501], [2.0, -2.001]])
    xs = np.concatenate([xs, inside[:, 0], outside[:, 0]])
    ys = np.concatenate([ys, inside[:, 1], outside[:, 1]])
    rows = raster.selected_rows(xs, ys, {"box": [box], "lasso": []})
    expected = np.flatnonzero((xs >= 1) & (xs <= 3) & (ys >= -2) & (ys <= 0.5))
    assert np.array_equal(rows, expected)
    assert {n, n + 1, n + 2} <= set(rows.tolist())
    assert not {n + 3, n + 4, n + 5, n + 6} & set(rows.tolist())

    # A lasso (a triangle, as plotly reports it: vertex lists, not closed).
    tri = np.array([[-8.0, -8.0], [-2.0, -7.0], [-5.0, 1.0]])
    lasso = {"x": tri[:, 0].tolist(), "y": tri[:, 1].tolist()}
    rows = raster.selected_rows(xs, ys, {"box": [], "lasso": [lasso]})
    expected = np.flatnonzero(_triangle_contains(xs, ys, tri))
    assert len(expected) > 1000
    # Points exactly on an edge may fall either way; none of 200k random points is.
    assert np.array_equal(rows, expected)
    # Box and lasso together: their union.
    both = raster.selected_rows(xs, ys, {"box": [box], "lasso": [lasso]})
    assert set(both.tolist()) == set(rows.tolist()) | set(
        raster.selected_rows(xs, ys, {"box": [box]}).tolist()
    )
    # A click (no box, no lasso) is not a region.
    assert raster.selected_rows(xs, ys, {"points": [{"x": 0}], "box": [], "lasso": []}) is None


def test_raster_draws_each_group_in_its_colour() -> None:
    xs = np.array([0.0, 0.0, 10.0, 10.0])
    ys = np.array([0.0, 0.0, 10.0, 10.0])
    image = raster.rasterise(
        xs, ys, np.array([0, 0, 1, 1]), ["#ff0000", "#0000ff"], size=50, spread=1
    )
    from io import BytesIO

    from PIL import Image

    pixels = np.asarray(Image.open(BytesIO(image.png)).convert("RGBA"))
    painted = pixels[pixels[..., 3] > 0]
    assert len(painted) == 2  # two distinct pixels, each of two stacked points
    colours = {tuple(p[:3]) for p in painted}
    assert colours == {(255, 0, 0), (0, 0, 255)}
    # The bottom-left point (0, 0) is drawn at the image's bottom left, red.
    red = np.argwhere((pixels[..., 0] == 255) & (pixels[..., 3] > 0))[0]
    assert red[0] > pixels.shape[0] / 2 and red[1] < pixels.shape[1] / 2


# --------------------------------------------------------------------------- through the app


def _app(artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(artifacts))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    # These tests read InceptionV3's map; the app itself opens on the build's best extractor.
    at.session_state["extractor"] = "inception_v3"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _map_xy(config: Config, extractor: str = "inception_v3") -> pd.DataFrame:
    table = pd.read_parquet(config.map_path(extractor))
    table["item_id"] = table["item_id"].astype(str)
    return table


@pytest.mark.slow
def test_map_page_box_and_lasso_select_the_items_inside_on_the_raster_path(
    built: Config, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    from app.ui import plots

    monkeypatch.setattr(plots, "RASTER_MIN_ITEMS", 1)  # the 36-item build drawn as an image
    at = _app(built.artifacts_dir, monkeypatch)
    (spec,) = _specs(at)
    assert spec["layout"]["images"], "a map above the threshold is drawn as a layout image"
    xy = _map_xy(built)
    x, y = xy["x"].to_numpy(), xy["y"].to_numpy()
    # A box over the left half of the map, in map coordinates.
    x0, x1 = float(x.min()) - 0.01, float(np.median(x))
    y0, y1 = float(y.min()) - 0.01, float(y.max()) + 0.01
    expected = set(xy["item_id"][(x >= x0) & (x <= x1)])
    event = {"selection": {"points": [], "point_indices": [], "box": [], "lasso": []}}
    event["selection"]["box"] = [{"xref": "x", "yref": "y", "x": [x1, x0], "y": [y0, y1]}]
    at.session_state["map_chart_inception_v3"] = event
    at.run()
    assert not at.exception
    assert set(at.session_state["map_selection"]["ids"]) == expected
    assert any(h.value == f"Selection: {len(expected)} items" for h in at.subheader)

    # A lasso: a triangle around part of the map.
    cx, cy = float(np.median(x)), float(np.median(y))
    span = float(x.max() - x.min())
    tri = np.array([[cx - span, cy - span], [cx + span, cy - span / 2], [cx, cy + span / 3]])
    expected = set(xy["item_id"][_triangle_contains(x, y, tri)])
    assert 0 < len(expected) < len(xy)
    event = {"selection": {"points": [], "point_indices": [], "box": [], "lasso": []}}
    event["selection"]["lasso"] = [{"x": tri[:, 0].tolist(), "y": tri[:, 1].tolist()}]
    at.session_state["map_chart_inception_v3"] = event
    at.run()
    assert not at.exception
    assert set(at.session_state["map_selection"]["ids"]) == expected

    # A label filter: greyed-out items are not selected, as on a map of points.
    catalog = pd.read_parquet(built.catalog_path)
    hats = set(catalog["item_id"].astype(str)[catalog["label"] == "hat"])
    at.multiselect(key="map_labels").set_value(["hat"]).run()
    event = {"selection": {"points": [], "point_indices": [], "box": [], "lasso": []}}
    event["selection"]["box"] = [{"x": [x.min() - 1, x.max() + 1], "y": [y.min() - 1, y.max() + 1]}]
    at.session_state["map_chart_inception_v3"] = event
    at.run()
    assert set(at.session_state["map_selection"]["ids"]) == hats


@pytest.mark.slow
def test_clusters_of_a_large_catalog_order_a_sample_and_count_every_member(
    built: Config, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    from app.ui import loaders
    from pipelines.explore import browse

    # The large-catalog path on the 36-item build: 2 members per cluster sampled.
    monkeypatch.setattr(loaders, "OVERVIEW_SAMPLE_FROM", 1)
    monkeypatch.setattr(loaders, "OVERVIEW_SAMPLE", 2)
    monkeypatch.setattr(loaders, "MEMBERS_SAMPLE", 2)
    at = _app(built.artifacts_dir, monkeypatch)
    at.switch_page("app_pages/clusters.py").run()
    assert not at.exception, [e.message for e in at.exception]
    catalog = pd.read_parquet(built.catalog_path)
    clusters = pd.read_parquet(built.clusters_path("inception_v3"))
    labels = catalog.set_index("item_id")["label"]
    rows = [m.value for m in at.markdown if m.value.startswith("**Cluster ")]
    assert rows
    for cluster, members in clusters.groupby("cluster"):
        # The counts come from every member, not from the sample.
        expected = browse.label_counts_text(labels.loc[members["item_id"]].to_numpy())
        (row,) = [r for r in rows if r.startswith(f"**Cluster {cluster}**")]
        assert row.endswith(expected), (row, expected)
    biggest = int(clusters["cluster"].value_counts().idxmax())
    at.selectbox(key="clusters_pick_inception_v3").set_value(biggest).run()
    assert any("among a sample of 2 of its items" in c.value for c in at.caption)
    size = int((clusters["cluster"] == biggest).sum())
    assert any(h.value.endswith(browse.plural(size, "item")) for h in at.subheader)


@pytest.fixture(scope="module")
def scaled(built: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """60,000 synthetic items made from the 36-item build (above the raster threshold)."""
    from pipelines.bench.scale_build import build_scaled

    return build_scaled(built, tmp_path_factory.mktemp("scaled") / "n60000", N_SCALED, models=False)


def test_a_scaled_build_points_at_real_thumbnails(scaled: Config, built: Config) -> None:
    catalog = pd.read_parquet(scaled.catalog_path)
    assert len(catalog) == N_SCALED and catalog["item_id"].is_unique
    real = pd.read_parquet(built.catalog_path)
    assert set(catalog["thumb"]) <= set(real["thumb"])
    assert all((scaled.artifacts_dir / t).is_file() for t in catalog["thumb"].unique())
    vectors = np.load(scaled.embeddings_path("inception_v3"), mmap_mode="r")
    assert vectors.shape == (N_SCALED, np.load(built.embeddings_path("inception_v3")).shape[1])
    assert np.allclose(np.linalg.norm(vectors[:100], axis=1), 1, atol=1e-3)
    # Each synthetic item is nearest its own class's centroid far more often than chance.
    labels = catalog["label"].to_numpy()
    classes = sorted(set(labels))
    centroids = np.stack([np.asarray(vectors[:2000])[labels[:2000] == c].mean(0) for c in classes])
    nearest = np.array(classes)[np.argmax(np.asarray(vectors[:2000]) @ centroids.T, axis=1)]
    assert (nearest == labels[:2000]).mean() > 0.8


@pytest.mark.slow
def test_a_large_map_sends_an_image_and_a_sample_with_the_query_drawn(
    scaled: Config, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    from app.ui import plots
    from pipelines.explore import browse

    at = _app(scaled.artifacts_dir, monkeypatch)
    (spec,) = _specs(at)
    sent = len(json.dumps(spec))
    # What the same map costs point by point (the small-map path, forced).
    catalog = pd.read_parquet(scaled.catalog_path)
    points = browse.map_points(catalog, pd.read_parquet(scaled.map_path("inception_v3")))
    monkeypatch.setattr(plots, "RASTER_MIN_ITEMS", 10**9)
    full, _ = plots.map_figure(points, "label", dragmode=plots.SELECT_DRAG)
    full_size = len(full.to_json())
    # Bounded whatever the catalog's size: the image and the sample.
    assert sent < full_size / 4 and sent < 600_000, (sent, full_size)
    assert spec["layout"]["images"]
    drawn = sum(len(t.get("customdata") or []) for t in spec["data"])
    assert drawn <= plots.SAMPLE_POINTS + 20

    monkeypatch.setattr(plots, "RASTER_MIN_ITEMS", 20_000)
    at.switch_page("app_pages/search.py").run()
    assert not at.exception, [e.message for e in at.exception]
    (table,) = [d.value for d in at.dataframe if "item_id" in d.value.columns]
    (spec,) = _specs(at)
    assert spec["layout"]["images"]
    by_name = {t["name"]: t for t in spec["data"]}
    assert by_name["query"]["customdata"] == [at.session_state["query_id"]]
    assert by_name["neighbours"]["customdata"] == table["item_id"].tolist()
    # The star sits at the query's map position.
    xy = _map_xy(scaled).set_index("item_id")
    assert by_name["query"]["x"][0] == pytest.approx(xy.loc[at.session_state["query_id"], "x"])


# --------------------------------------------------------------------------- bench --scale


def test_bench_scale_builds_times_and_cleans_up(
    built: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.bench.scale import run_scale_bench, scale_results_path

    config = built.replace(artifacts_dir=tmp_path / "results")
    # The results go under the given artifacts dir's bench folder; the source build is read.
    results = run_scale_bench(
        built,
        2_000,
        scratch=tmp_path / "scratch",
        browser=False,
        raster_min_items=500,
        repeats=1,
        pages=("app_pages/map.py", "app_pages/clusters.py"),
        models=False,
        results_dir=config.bench_dir,
    )
    out = scale_results_path(built, 2_000, config.bench_dir)
    assert json.loads(out.read_text())["n"] == 2_000
    assert not (tmp_path / "scratch" / "n2000").exists()  # the scratch build is deleted
    for name in ("default", "scaled"):
        part = results[name]
        assert "error" not in part, part
        pages = {row["page"]: row for row in part["pages"]}
        assert set(pages) == {"app_pages/map.py", "app_pages/clusters.py"}
        for row in pages.values():
            assert not row["exceptions"], row
            assert row["k_rerender_ms"] > 0 and row["extractor_rerender_ms"] > 0
        assert part["peak_rss_mb"] > 0
    # 2,000 items are above the lowered threshold: the scaled map is an image, the default
    # 36-item map is not, and the scaled figure stays small.
    assert results["scaled"]["map_raster"] and not results["default"]["map_raster"]
    assert results["scaled"]["map_figure_json_bytes"] < 2_000 * 60
    assert results["scaled"]["search_exact_median_ms"] > 0
    assert set(results["ratios"]) >= {"app_pages/map.py:k_rerender_ms"}
