"""Every page of the app through the router with AppTest, on artifacts the real pipeline builds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pipelines.config import REPO_ROOT, Config
from pipelines.quality.metrics import jaccard_at_k
from tests.strategy_pools import narrow_query

APP = str(REPO_ROOT / "app" / "streamlit_app.py")
PAGES = ["map", "search", "compare", "clusters", "upload", "photo_map", "health"]
# Model loading (InceptionV3 weights) on a busy 2-core machine takes tens of seconds.
TIMEOUT = 240

pytestmark = pytest.mark.slow


@pytest.fixture
def app(built: Config, monkeypatch: pytest.MonkeyPatch, clear_caches: None) -> AppTest:
    """The app pointed at the built artifacts, run once (on its default page, Map)."""
    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(built.artifacts_dir))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    # The app opens on the build's best extractor; these tests are written for InceptionV3.
    at.session_state["extractor"] = "inception_v3"
    at.run()
    assert not at.exception
    return at


@pytest.fixture
def catalog(built: Config) -> pd.DataFrame:
    return pd.read_parquet(built.catalog_path)


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def neighbour_captions(at: AppTest) -> list[str]:
    """Captions of the neighbour thumbnails ("#rank · label · similarity")."""
    return [c for image in at.image for c in image.captions if c.startswith("#")]


def shown_tables(at: AppTest) -> list[pd.DataFrame]:
    """The neighbour tables under each grid (rank, item_id, label, similarity)."""
    return [d.value for d in at.dataframe if "item_id" in d.value.columns]


def metric(at: AppTest, label_start: str) -> str:
    (value,) = [m.value for m in at.metric if m.label.startswith(label_start)]
    return value


def shown_precision(at: AppTest, catalog: pd.DataFrame) -> str:
    """Precision@k recomputed from the neighbour table on screen and the query's label, in
    the metric's format: what the Precision metric must say."""
    query_label = catalog.set_index("item_id").loc[at.session_state["query_id"], "label"]
    (table,) = shown_tables(at)
    return f"{(table['label'] == query_label).mean():.2f}"


# --------------------------------------------------------------------------- every page


def test_every_page_renders_concrete_values(app: AppTest, catalog: pd.DataFrame) -> None:
    at = app
    # Map (the default page): the trustworthiness metric and the selection prompt.
    assert 0 < float(metric(at, "Trustworthiness")) <= 1
    assert any("Selection: 0 items" in h.value for h in at.subheader)
    assert f"**{len(catalog):,}** items" in " ".join(c.value for c in at.sidebar.caption)

    open_page(at, "search")
    assert len(neighbour_captions(at)) == 10  # the default k
    assert metric(at, "Precision@10") == shown_precision(at, catalog)

    open_page(at, "compare")
    assert 0 <= float(metric(at, "Jaccard@10")) <= 1
    assert len(neighbour_captions(at)) == 30  # three extractors (issue 12's metric head)

    open_page(at, "clusters")
    overview = [m.value for m in at.markdown if m.value.startswith("**Cluster ")]
    assert len(overview) == 4
    assert any(h.value.startswith("Cluster 0: ") for h in at.subheader)

    open_page(at, "upload")
    assert len(at.file_uploader) == 1
    assert "Upload one or several photos" in at.info[0].value


def test_map_page_colours_and_filters(app: AppTest) -> None:
    at = app
    at.radio(key="map_color").set_value("cluster").run()
    assert not at.exception
    at.multiselect(key="map_labels").set_value(["hat"]).run()
    assert not at.exception
    # The sidebar's extractor applies here too (and its map has its own trustworthiness).
    at.selectbox(key="sidebar_extractor").set_value("custom_cnn").run()
    assert not at.exception and 0 < float(metric(at, "Trustworthiness")) <= 1


def selection_event(item_ids: list[str]) -> dict:
    """What st.plotly_chart(on_select="rerun") holds after a box selection of these items.

    AppTest cannot drag a box on a chart, but it can set the chart's state by its key, which
    the page reads on the next run exactly as after a real selection.
    """
    points = [
        {"curve_number": 0, "point_index": i, "point_number": i, "customdata": item, "x": 0.0}
        for i, item in enumerate(item_ids)
    ]
    return {
        "selection": {
            "points": points,
            "point_indices": list(range(len(points))),
            "box": [{"x": [0, 1], "y": [0, 1]}],
            "lasso": [],
        }
    }


def test_a_map_selection_fills_the_thumbnail_grid(app: AppTest, catalog: pd.DataFrame) -> None:
    at = app
    picked = catalog["item_id"].iloc[[1, 4, 9]].tolist()
    at.session_state["map_chart_inception_v3"] = selection_event(picked)
    at.run()
    assert not at.exception
    assert any(h.value == "Selection: 3 items" for h in at.subheader)
    labels = catalog.set_index("item_id").loc[picked, "label"].tolist()
    captions = [c for image in at.image for c in image.captions]
    assert sorted(captions) == sorted(labels)


# --------------------------------------------------------------------------- search


def test_search_shows_exactly_k_neighbours(app: AppTest, catalog: pd.DataFrame) -> None:
    at = open_page(app, "search")
    at.slider(key="sidebar_k").set_value(5).run()
    assert len(neighbour_captions(at)) == 5
    assert len(shown_tables(at)[0]) == 5
    assert metric(at, "Precision@5") == shown_precision(at, catalog)
    at.slider(key="sidebar_k").set_value(8).run()
    assert len(neighbour_captions(at)) == 8
    # The setting persists across pages (session state, not the widget's own state).
    open_page(at, "compare")
    assert len(neighbour_captions(at)) == 24  # three extractors


def test_switching_extractor_changes_the_neighbours(app: AppTest) -> None:
    at = open_page(app, "search")
    query = at.session_state["query_id"]
    inception = shown_tables(at)[0]["item_id"].tolist()
    at.selectbox(key="sidebar_extractor").set_value("custom_cnn").run()
    assert not at.exception
    custom = shown_tables(at)[0]["item_id"].tolist()
    assert at.session_state["query_id"] == query
    assert len(custom) == len(inception) == 10
    assert custom != inception
    assert query not in custom and query not in inception


def test_search_query_by_item_id_and_strategies(
    app: AppTest, built: Config, catalog: pd.DataFrame
) -> None:
    at = open_page(app, "search")
    at.selectbox(key="sidebar_extractor").set_value("inception_v3").run()
    # k past every pool: the page shows the whole pool of the query, in order of similarity.
    at.slider(key="sidebar_k").set_value(len(catalog) - 1).run()
    at.radio(key="search_mode").set_value("Item id").run()
    for strategy in ("cluster", "category"):
        # A query whose pool (read from the artifact files) leaves out part of the catalog.
        target, pool = narrow_query(built, "inception_v3", strategy)
        at.text_input(key="query_id_text").set_value(target).run()
        assert at.session_state["query_id"] == target
        assert any(target in c.value for c in at.caption)
        at.selectbox(key="sidebar_strategy").set_value(strategy).run()
        assert not at.exception
        assert shown_tables(at)[0]["item_id"].tolist() == pool, strategy
    at.text_input(key="query_id_text").set_value("not-an-item").run()
    assert not at.exception
    assert "'not-an-item' is not in the catalog" in at.error[0].value
    assert at.session_state["query_id"] == target


def test_search_query_from_a_click_on_the_map(app: AppTest, catalog: pd.DataFrame) -> None:
    at = open_page(app, "search")
    # A new session opens on a random item: click another one.
    target = next(i for i in catalog["item_id"].iloc[11:] if i != at.session_state["query_id"])
    at.session_state["search_map_inception_v3"] = selection_event([target])
    at.run()
    assert not at.exception
    assert at.session_state["query_id"] == target
    assert target not in shown_tables(at)[0]["item_id"].tolist()
    # The chart keeps its selection; a later pick is not overridden by it.
    other = catalog["item_id"].iloc[3]
    at.radio(key="search_mode").set_value("Item id").run()
    at.text_input(key="query_id_text").set_value(other).run()
    assert at.session_state["query_id"] == other
    at.run()
    assert at.session_state["query_id"] == other


def test_search_browse_picks_a_query(app: AppTest, catalog: pd.DataFrame) -> None:
    at = open_page(app, "search")
    at.radio(key="search_mode").set_value("Browse").run()
    at.multiselect(key="search_browse_labels").set_value(["shoes"]).run()
    buttons = [b for b in at.button if b.key and b.key.startswith("search_browse_pick_")]
    assert buttons
    picked = buttons[-1].key.removeprefix("search_browse_pick_")
    buttons[-1].click().run()
    assert at.session_state["query_id"] == picked
    assert catalog.set_index("item_id").loc[picked, "label"] == "shoes"


# --------------------------------------------------------------------------- compare


def test_compare_jaccard_matches_the_sets_shown(app: AppTest) -> None:
    at = open_page(app, "compare")
    for k in (3, 10):
        at.slider(key="sidebar_k").set_value(k).run()
        tables = shown_tables(at)
        assert len(tables) == 3 and all(len(t) == k for t in tables)
        assert len(neighbour_captions(at)) == 3 * k
        expected = jaccard_at_k(tables[0]["item_id"], tables[1]["item_id"])
        assert metric(at, f"Jaccard@{k}") == f"{expected:.3f}"
    # Evaluation results are charted (P@k, mAP, per-class P@10).
    assert "Protocol:" in " ".join(c.value for c in at.caption)


def test_compare_pick_buttons_fit_their_narrow_columns_and_open_search(app: AppTest) -> None:
    """Three panels of four thumbnails left "Find lookalikes" cut to "Fi…"; there the button
    is a magnifier icon, its words the tooltip, and it still opens Search on that item."""
    at = open_page(app, "compare")
    query = at.session_state["query_id"]
    buttons = [b for b in at.button if b.key and "_pick_" in b.key]
    assert len(buttons) == 3 * at.session_state["sidebar_k"]
    assert {(b.label, b.icon, b.help) for b in buttons} == {
        ("", ":material/search:", "Find lookalikes of this item")
    }
    picked = next(b for b in buttons if not b.key.endswith(f"_pick_{query}"))
    picked.click().run()
    assert not at.exception
    assert at.session_state["query_id"] == picked.key.rsplit("_pick_", 1)[1]
    assert [t.value for t in at.title] == ["Search"]


# --------------------------------------------------------------------------- upload


def test_uploading_a_catalog_photo_returns_that_item_first(
    app: AppTest, catalog: pd.DataFrame
) -> None:
    at = open_page(app, "upload")
    row = catalog.iloc[5]
    data = Path(row["path"]).read_bytes()
    at.file_uploader(key="uploads").set_value(("mine.jpg", data, "image/jpeg")).run()
    assert not at.exception and not at.error
    tables = shown_tables(at)
    assert len(tables) == 3  # one per extractor
    for table in tables:
        assert table["item_id"].iloc[0] == row["item_id"]
        # The metric head's CNN part sees the photo resized from 299 px: a hair below 1.
        assert table["similarity"].iloc[0] >= 0.99
        assert len(table) == 10
    assert metric(at, "Predicted category") in {"dress", "hat", "pants", "shoes"}


def test_bad_uploads_show_an_error_and_the_page_keeps_working(
    app: AppTest, catalog: pd.DataFrame
) -> None:
    at = open_page(app, "upload")
    photos = [Path(p).read_bytes() for p in catalog["path"].iloc[[2, 20]]]
    at.file_uploader(key="uploads").set_value(
        [
            ("notes.txt", b"a shopping list, not a photo", "text/plain"),
            ("a.jpg", photos[0], "image/jpeg"),
            ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png"),
            ("b.jpg", photos[1], "image/jpeg"),
            ("huge.jpg", photos[1] + b"\0" * (20 * 2**20), "image/jpeg"),
        ]
    ).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 3
    assert "notes.txt" in errors[0] and "not a recognised image" in errors[0]
    assert "broken.png" in errors[1]
    assert "huge.jpg" in errors[2] and "over the 20.0 MB upload limit" in errors[2]
    # The two good photos still get their neighbours and a category summary.
    assert len(shown_tables(at)) == 6  # 2 photos x 3 extractors
    assert any(h.value == "Top categories across 2 photos" for h in at.subheader)
    assert (
        sum(int(m.value.split()[0]) for m in at.metric if m.value.endswith(("photo", "photos")))
        == 2
    )


def test_upload_works_with_keras_inception_weights(
    built: Config,
    catalog: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clear_caches: None,
) -> None:
    """A catalog embedded with `--set inception_weights=keras` keeps its weights in another
    file; the Upload page must find that file (it once looked for the default one only)."""
    import keras

    from pipelines.artifacts import write_manifest
    from pipelines.run import run_all

    artifacts = tmp_path / "artifacts"
    shutil.copytree(built.artifacts_dir, artifacts)
    config = built.replace(artifacts_dir=artifacts, inception_weights="keras")
    # Keras's ImageNet download needs the internet; random weights in Keras's own layout
    # stand in for it, written where the keras setting keeps them.
    model = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg")
    model.save_weights(config.inception_weights_path)
    write_manifest(config.inception_weights_path, "weights", {"source": "keras-imagenet"}, {})
    # Everything made from the InceptionV3 vectors follows (the metric head, the classifier,
    # maps, ...): the app shows only a whole build, never these vectors beside the old maps.
    run_all(config)

    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(artifacts))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at = open_page(at, "upload")
    # No "is missing — run ..." guidance: the page found the keras weights file.
    assert not any("has not built" in i.value for i in at.info), [i.value for i in at.info]
    row = catalog.iloc[7]
    data = Path(row["path"]).read_bytes()
    at.file_uploader(key="uploads").set_value(("mine.jpg", data, "image/jpeg")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    tables = shown_tables(at)
    assert len(tables) == 3
    for table in tables:
        assert table["item_id"].iloc[0] == row["item_id"]
        # The metric head's CNN part sees the photo resized from 299 px: a hair below 1.
        assert table["similarity"].iloc[0] >= 0.99


# --------------------------------------------------------------------------- no artifacts


@pytest.mark.parametrize("page", PAGES)
def test_each_page_without_artifacts_shows_guidance(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(tmp_path / "nothing-yet"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page != "map":
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    (info,) = at.info
    assert "python -m pipelines run" in info.value
    assert str(tmp_path / "nothing-yet") in info.value
    assert "Not built yet" in " ".join(c.value for c in at.sidebar.caption)
    assert os.environ["LOOKALIKE_ARTIFACTS"].endswith("nothing-yet")


# --------------------------------------------------------------------------- browsing (issue 14)


def chart_specs(at: AppTest) -> list[dict]:
    """The plotly figures on the page, as the browser receives them."""
    import json

    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def trace_length(trace: dict, key: str = "x") -> int:
    """Points in a trace: plotly sends numpy arrays as {"dtype", "bdata"} (base64)."""
    import base64

    import numpy as np

    values = trace[key]
    if isinstance(values, dict):
        return len(np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]))
    return len(values)


def trace_colours(spec: dict) -> dict[str, str]:
    return {t["name"]: t["marker"]["color"] for t in spec["data"] if "marker" in t}


def test_map_selection_survives_recolouring_and_counts_its_labels(
    app: AppTest, catalog: pd.DataFrame
) -> None:
    at = app
    picked = catalog["item_id"].iloc[[0, 5, 13, 30]].tolist()
    at.session_state["map_chart_inception_v3"] = selection_event(picked)
    at.run()
    assert any(h.value == "Selection: 4 items" for h in at.subheader)
    # The label counts shown are the picked items' labels.
    counts = catalog.set_index("item_id").loc[picked, "label"].value_counts()
    (line,) = [m.value for m in at.markdown if m.value.startswith("**Labels:**")]
    for label, n in counts.items():
        assert f"{n} {label}" in line
    at.radio(key="map_color").set_value("cluster").run()
    assert not at.exception
    assert any(h.value == "Selection: 4 items" for h in at.subheader)
    # The kept selection is drawn on the recoloured map.
    (spec,) = chart_specs(at)
    (rings,) = [t for t in spec["data"] if t["name"] == "selected"]
    assert trace_length(rings) == 4
    # Only the Map page drags a selection box; a CSV of the selection is offered.
    assert spec["layout"]["dragmode"] == "select"
    assert any(
        b.proto.label.startswith("⬇ Download CSV (4 rows)") for b in at.get("download_button")
    )


def test_label_filter_greys_out_and_keeps_each_labels_colour(app: AppTest) -> None:
    at = app
    before = trace_colours(chart_specs(at)[0])
    at.multiselect(key="map_labels").set_value(["hat"]).run()
    assert not at.exception
    after = trace_colours(chart_specs(at)[0])
    assert after["hat"] == before["hat"]
    assert set(after) == {"hat", "filtered out"}
    assert any("9 of 36 items shown" in c.value for c in at.caption)


def test_other_maps_pick_on_click_and_name_extractors(app: AppTest, catalog: pd.DataFrame) -> None:
    at = open_page(app, "search")
    (spec,) = chart_specs(at)
    assert spec["layout"]["dragmode"] == "zoom"  # a click picks; no dead lasso
    assert any(
        h.value.startswith("10 nearest items · InceptionV3 (ImageNet) · ") for h in at.subheader
    )
    # Compare: a click on a map makes that item the query.
    at = open_page(at, "compare")
    target = next(i for i in catalog["item_id"] if i != at.session_state["query_id"])
    at.session_state["compare_map_custom_cnn"] = selection_event([target])
    at.run()
    assert not at.exception and at.session_state["query_id"] == target


def test_find_lookalikes_from_a_cluster_opens_search_and_history_goes_back(
    app: AppTest, catalog: pd.DataFrame
) -> None:
    at = open_page(app, "search")
    first = at.session_state["query_id"]
    at = open_page(at, "clusters")
    buttons = [b for b in at.button if b.key and b.key.startswith("cluster_pick_")]
    assert buttons and all(b.label == "🔎 Find lookalikes" for b in buttons)
    picked = next(b for b in buttons if b.key != f"cluster_pick_{first}")
    item = picked.key.removeprefix("cluster_pick_")
    picked.click().run()
    assert not at.exception
    assert at.session_state["query_id"] == item
    assert [t.value for t in at.title] == ["Search"]
    back = [b for b in at.button if b.key == f"history_{first}"]
    assert back, "the previous query is in the history"
    back[0].click().run()
    assert at.session_state["query_id"] == first


def test_cluster_rows_show_their_label_counts(app: AppTest, built: Config) -> None:
    """Which thumbnails a row shows (the members nearest the centre) is checked on the table
    in tests/test_browse_views.py; here, the counts the page prints are the cluster's own."""
    at = open_page(app, "clusters")
    catalog = pd.read_parquet(built.catalog_path)
    clusters = pd.read_parquet(built.clusters_path("inception_v3"))
    labels = catalog.set_index("item_id").loc[clusters["item_id"], "label"].to_numpy()
    for cluster in sorted(clusters["cluster"].unique()):
        counts = pd.Series(labels[clusters["cluster"].to_numpy() == cluster]).value_counts()
        (row,) = [m.value for m in at.markdown if m.value.startswith(f"**Cluster {cluster}**")]
        for label, n in counts.head(3).items():
            assert f"{n} {label}" in row, row


def test_health_and_photo_map_pages(app: AppTest, built: Config) -> None:
    at = open_page(app, "health")
    pairs = pd.read_parquet(built.health_path("inception_v3", "duplicates"))
    (slider,) = [s for s in at.slider if s.key == "health_threshold_inception_v3"]
    slider.set_value(float(slider.min)).run()
    assert not at.exception
    expected = int((pairs["similarity"] >= float(slider.min)).sum())
    assert any(m.value.startswith(f"**{expected} pair") for m in at.markdown)
    assert len(at.get("download_button")) == 3
    at = open_page(at, "photo_map")
    (spec,) = chart_specs(at)
    assert spec["layout"]["images"][0]["source"].startswith("data:image/jpeg;base64,")
    (trace,) = spec["data"]
    assert len(trace["customdata"]) == len(pd.read_parquet(built.catalog_path))
    # A click on a photo opens Search on it.
    target = trace["customdata"][3]
    at.session_state["photo_map_inception_v3"] = selection_event([target])
    at.run()
    assert not at.exception
    assert at.session_state["query_id"] == target
    assert [t.value for t in at.title] == ["Search"]


def test_health_fix_buttons_write_a_correction_and_undo_it(
    built: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    from pipelines.data.corrections import read_corrections

    # A copy of the build: the page writes corrections.parquet into its artifacts folder.
    config = built.replace(artifacts_dir=tmp_path / "artifacts")
    shutil.copytree(built.artifacts_dir, config.artifacts_dir)
    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(config.artifacts_dir))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["extractor"] = "inception_v3"
    at.run()
    at = open_page(at, "health")
    assert any("python -m pipelines run" in c.value for c in at.caption)
    assert any(i.value.startswith("No corrections yet") for i in at.info)
    wrong = pd.read_parquet(config.health_path("inception_v3", "mislabelled"))
    assert len(wrong) >= 2, "the small build should list likely-mislabelled items"
    first, second = wrong.iloc[0], wrong.iloc[1]

    # The suggested label, with a name and a note: one relabel, recorded as typed.
    at.text_input(key="correction_who").input("ann")
    key = f"fix_wrong_{first['item_id']}"
    assert at.selectbox(key=f"{key}_pick").value == first["suggested"]  # offered first
    at.text_input(key=f"{key}_note").input("its neighbours")
    at.button(key=f"{key}_relabel").click().run()
    assert not at.exception, [e.message for e in at.exception]
    table = read_corrections(config)
    columns = ["item_id", "action", "label", "previous_label", "who", "note"]
    assert table[columns].values.tolist() == [
        [first["item_id"], "relabel", first["suggested"], first["label"], "ann", "its neighbours"]
    ]
    assert any(m.value.startswith("c1:") for m in at.success)
    assert any("**c1**" in m.value for m in at.markdown)
    assert any(c.value.startswith("✏️ c1: ") and "next run" in c.value for c in at.caption)

    # A typed label wins over the pick; Drop marks the item for removal.
    key = f"fix_wrong_{second['item_id']}"
    at.text_input(key=f"{key}_typed").input("sandals")
    at.button(key=f"{key}_relabel").click().run()
    at.button(key=f"{key}_drop").click().run()
    table = read_corrections(config)
    assert table["label"].tolist()[1:] == ["sandals", None]
    assert table["action"].tolist() == ["relabel", "relabel", "drop"]

    # Undo keeps the row, with who undid it and when.
    at.button(key="undo_c1").click().run()
    assert not at.exception
    table = read_corrections(config)
    assert table["undone_by"].tolist() == ["ann", None, None]
    assert table["undone_at"].notna().tolist() == [True, False, False]
    assert not any(b.key == "undo_c1" for b in at.button)
    assert any(m.value.startswith("**2 in force**") for m in at.markdown)


def test_upload_warns_on_tiny_and_panoramic_photos(app: AppTest) -> None:
    import io

    from PIL import Image

    def png(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (90, 60, 40)).save(buffer, format="PNG")
        return buffer.getvalue()

    at = open_page(app, "upload")
    at.file_uploader(key="uploads").set_value(
        [("dot.png", png(1, 1), "image/png"), ("pano.png", png(2000, 75), "image/png")]
    ).run()
    assert not at.exception
    warnings = " ".join(w.value for w in at.warning)
    assert "dot.png is only 1×1 px" in warnings
    assert "pano.png is 2000×75 px" in warnings
    # The page names the model that predicts the category (the classify stage's choice).
    import re

    named = [re.fullmatch(r"Category by the (.+) classifier\.", c.value) for c in at.caption]
    models = {m.group(1) for m in named if m}
    assert len(models) == 1 and "None" not in models, models
    # ... by its display name, not an internal one like "inception_v3".
    assert not any(name in m for m in models for name in ("inception_v3", "custom_cnn")), models
    assert len(at.expander) >= 2  # each photo's results collapse


def test_the_server_starts_the_upload_models_before_any_page_opens(
    built: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """app/server.py (the README's `streamlit run app/server.py`) is what `streamlit run` serves
    as an ASGI app, and its lifespan starts the upload models' background build: the first
    page's session then finds that build (loading or loaded), not a new one."""
    import asyncio
    import time

    from streamlit.web.server.app_discovery import discover_asgi_app

    from app import server
    from app.ui import loaders, warmup

    found = discover_asgi_app(REPO_ROOT / "app" / "server.py")
    assert found.is_asgi_app and found.import_string == "server:app", found
    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(built.artifacts_dir))
    monkeypatch.setattr(warmup, "_BUILDS", {})  # no build left by other tests' sessions
    cfg = loaders.config()
    assert warmup.started(cfg) is None

    async def serve_and_stop() -> None:
        async with server.lifespan(server.app):
            pass

    asyncio.run(serve_and_stop())
    build = warmup.started(cfg)
    assert build is not None and set(build.names) == set(cfg.extractors_built())
    deadline = time.monotonic() + 300
    while not build.finished and time.monotonic() < deadline:
        time.sleep(0.25)
    assert build.finished and build.error is None and build.done == len(build.names)
