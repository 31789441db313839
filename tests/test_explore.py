"""The app's engine functions: map selections, Jaccard, neighbours, uploads (good and bad)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app.ui import selection
from pipelines import status
from pipelines.artifacts import write_json, write_manifest
from pipelines.config import REPO_ROOT, Config
from pipelines.data import images
from pipelines.data.images import load_array
from pipelines.errors import LookalikeError
from pipelines.explore import browse
from pipelines.models.extractors import normalize_rows
from pipelines.quality import metrics
from pipelines.search import photos, similar
from pipelines.search.index import Index

# --------------------------------------------------------------------------- selections

TRACES = [["a", "b", "c"], ["d", "e"], None, ["b"]]


def test_box_selection_uses_customdata() -> None:
    event = {
        "selection": {
            "points": [
                {"curve_number": 0, "point_index": 1, "customdata": ["b"], "x": 1, "y": 2},
                {"curve_number": 1, "point_index": 0, "customdata": "d"},
            ],
            "point_indices": [1, 0],
            "box": [{"x": [0, 1], "y": [0, 1]}],
            "lasso": [],
        }
    }
    assert selection.selection_to_item_ids(event, TRACES) == ["b", "d"]
    # customdata alone is enough when the caller has no trace ids.
    assert selection.selection_to_item_ids(event) == ["b", "d"]


def test_lasso_selection_without_customdata_uses_trace_positions() -> None:
    event = {
        "selection": {
            "points": [
                {"curve_number": 1, "point_index": 1},
                {"curve_number": 0, "point_number": 2},
                {"curve_number": 0, "point_index": 2},  # the same point twice: once
            ],
            "point_indices": [1, 2, 2],
            "box": [],
            "lasso": [{"x": [0, 1, 1], "y": [0, 0, 1]}],
        }
    }
    assert selection.selection_to_item_ids(event, TRACES) == ["e", "c"]


@pytest.mark.parametrize(
    "event",
    [
        None,
        {},
        {"selection": {"points": [], "point_indices": [], "box": [], "lasso": []}},
        {"selection": None},
    ],
)
def test_empty_selection_gives_no_items(event: object) -> None:
    assert selection.selection_to_item_ids(event, TRACES) == []


def test_highlight_and_unknown_traces_are_ignored() -> None:
    # With a label filter the figure holds fewer traces; points of traces the caller marks
    # None (lines, highlights), past the last trace or past a trace's end give nothing.
    event = {
        "points": [
            {"curve_number": 2, "point_index": 0, "customdata": "zzz"},
            {"curve_number": 7, "point_index": 0},
            {"curve_number": 1, "point_index": 9},
            {"curve_number": 3, "point_index": 0, "customdata": ["b"]},
            {"curve_number": 0, "point_index": 0},
        ]
    }
    assert selection.selection_to_item_ids(event, TRACES) == ["b", "a"]


def test_selection_from_a_filtered_figure_maps_through_its_own_traces() -> None:
    from app.ui.plots import map_figure

    points = pd.DataFrame(
        {
            "item_id": ["i0", "i1", "i2", "i3"],
            "x": [0.0, 1.0, 2.0, 3.0],
            "y": [0.0, 1.0, 0.0, 1.0],
            "label": ["hat", "shoes", "hat", "shoes"],
        }
    )
    shown = points[points["label"] == "shoes"]
    figure, trace_ids = map_figure(shown, "label", query="i1", neighbours=["i3"])
    assert trace_ids[0] == ["i1", "i3"]
    assert len(figure.data) == len(trace_ids)
    event = {"selection": {"points": [{"curve_number": 0, "point_index": 1}]}}
    assert selection.selection_to_item_ids(event, trace_ids) == ["i3"]
    # The lines trace (query -> neighbours) is not an item.
    lines = next(i for i, t in enumerate(figure.data) if t.mode == "lines")
    assert trace_ids[lines] is None


# --------------------------------------------------------------------------- jaccard


def test_jaccard_at_k() -> None:
    assert metrics.jaccard_at_k(["a", "b"], ["b", "a"]) == 1.0
    assert metrics.jaccard_at_k(["a", "b"], ["c", "d"]) == 0.0
    assert metrics.jaccard_at_k(["a", "b", "c"], ["b", "c", "d"]) == pytest.approx(2 / 4)
    assert metrics.jaccard_at_k([], []) == 1.0


# --------------------------------------------------------------------------- neighbours


COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 200, 20),
    "blue": (20, 20, 220),
    "yellow": (230, 230, 30),
    "pink": (230, 20, 180),
}


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    img = Image.new("RGB", size, colour)
    # A gradient so photos of one colour are not all identical.
    for x in range(size[0]):
        img.putpixel((x, 0), (x * 6 % 256, 0, 0))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


class FakeExtractor:
    """The Extractor interface the upload path uses, without TensorFlow: mean colours."""

    input_size = 8

    def __init__(self, classes: list[str] | None = None) -> None:
        self.config = Config()
        self._classes = classes

    def load_pixels(self, source: bytes) -> np.ndarray:
        return load_array(source, self.input_size, max_pixels=self.config.max_pixels)

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        return normalize_rows(images.reshape(len(images), -1, 3).mean(axis=1) + 1.0)

    @property
    def class_names(self) -> list[str]:
        return list(self._classes or [])


class FakeClassifier(FakeExtractor):
    def embed_and_classify(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb = self.embed_arrays(images)
        # A softmax: 0.92 on "red", "green" or "blue" by the strongest channel, 0.04 on each other.
        probs = np.full((len(images), len(self.class_names)), 0.04, np.float32)
        probs[:, int(np.argmax(emb[0]))] = 0.92
        return emb, probs


@pytest.fixture
def tiny() -> dict:
    """Five one-colour items, their index, map and catalog, for each of two fake extractors."""
    names = list(COLOURS)
    data = [png_bytes(COLOURS[n]) for n in names]
    extractors = {"inception_v3": FakeExtractor(), "custom_cnn": FakeClassifier(["r", "g", "b"])}
    catalog = pd.DataFrame(
        {
            "item_id": [f"id{i}" for i in range(len(names))],
            "label": ["warm", "cool", "cool", "warm", "warm"],
            "thumb": [f"thumbs/id{i}.jpg" for i in range(len(names))],
        }
    )
    catalog = browse.with_thumb_files(catalog, Path("/art"))
    pixels = np.stack([extractors["inception_v3"].load_pixels(d) for d in data])
    vectors = extractors["inception_v3"].embed_arrays(pixels)
    indexes = {
        name: Index(
            vectors,
            catalog["item_id"],
            name=name,
            clusters=np.array([0, 1, 1, 0, 0]),
            categories=np.array(["r", "g", "b", "r", "r"], dtype=object),
        )
        for name in extractors
    }
    maps = {
        name: pd.DataFrame(
            {"item_id": catalog["item_id"], "x": np.arange(5.0), "y": np.arange(5.0) * 2}
        )
        for name in extractors
    }
    return {
        "data": data,
        "extractors": extractors,
        "catalog": catalog,
        "indexes": indexes,
        "maps": maps,
    }


def test_item_neighbours_exclude_the_query_and_clip_k(tiny: dict) -> None:
    index, catalog = tiny["indexes"]["inception_v3"], tiny["catalog"]
    table = similar.item_neighbours(index, catalog, "id0", k=50)
    assert list(table.columns) == similar.NEIGHBOUR_COLUMNS
    assert len(table) == 4 and "id0" not in set(table["item_id"])
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table["similarity"].is_monotonic_decreasing
    assert table["thumb"].iloc[0].startswith("/art/thumbs/")
    # Cluster strategy: only the query's own cluster (id0 is in cluster 0 with id3, id4).
    cluster = similar.item_neighbours(index, catalog, "id0", k=10, strategy="cluster")
    assert set(cluster["item_id"]) == {"id3", "id4"}
    with pytest.raises(LookalikeError, match="k must be a whole number >= 1, got 0"):
        similar.item_neighbours(index, catalog, "id0", k=0)
    with pytest.raises(LookalikeError, match="'nope' is not in the inception_v3 index"):
        similar.item_neighbours(index, catalog, "nope", k=3)


def test_query_precision_counts_missing_neighbours_as_misses(tiny: dict) -> None:
    table = similar.item_neighbours(tiny["indexes"]["inception_v3"], tiny["catalog"], "id1", 4)
    labels = table["label"].tolist()
    assert similar.query_precision(table, "cool", 4) == labels.count("cool") / 4
    assert similar.query_precision(table.head(1), "cool", 4) == (labels[0] == "cool") / 4
    assert np.isnan(similar.query_precision(table, None, 4))


def test_unavailable_strategy_falls_back_to_exact_with_a_reason(tiny: dict) -> None:
    bare = Index(
        tiny["indexes"]["inception_v3"].vectors,
        tiny["catalog"]["item_id"],
        name="bare",
        unavailable={"cluster": "clusters/bare.parquet is missing — run `x`"},
    )
    assert similar.resolve_strategy(bare, "exact") == ("exact", None)
    strategy, note = similar.resolve_strategy(bare, "cluster")
    assert strategy == "exact" and "clusters/bare.parquet is missing" in note
    with pytest.raises(LookalikeError, match="valid strategies: exact, cluster, category"):
        similar.resolve_strategy(bare, "fuzzy")


def test_map_points_align_to_the_catalog_and_report_missing_items(tiny: dict) -> None:
    catalog = tiny["catalog"]
    shuffled = tiny["maps"]["inception_v3"].iloc[::-1]
    clusters = pd.DataFrame({"item_id": catalog["item_id"], "cluster": [0, 1, 1, 0, 0]})
    points = browse.map_points(catalog, shuffled, clusters=clusters)
    assert points["item_id"].tolist() == catalog["item_id"].tolist()
    assert points["x"].tolist() == [0, 1, 2, 3, 4]
    assert points["cluster"].tolist() == ["0", "1", "1", "0", "0"]
    assert points["predicted"].tolist() == [""] * 5
    with pytest.raises(LookalikeError, match="the map lacks 1 catalog item"):
        browse.map_points(catalog, shuffled.iloc[1:])


def test_place_on_map_is_the_similarity_weighted_mean() -> None:
    points = pd.DataFrame({"item_id": ["a", "b", "c"], "x": [0.0, 4.0, 9.0], "y": [0.0, 2.0, 9.0]})
    near = pd.DataFrame({"item_id": ["a", "b", "c"], "similarity": [0.75, 0.25, -0.5]})
    assert photos.place_on_map(near, points) == pytest.approx((1.0, 0.5))
    negative = pd.DataFrame({"item_id": ["a", "b"], "similarity": [-0.1, -0.2]})
    assert photos.place_on_map(negative, points) == pytest.approx((2.0, 1.0))
    nowhere = pd.DataFrame({"item_id": ["zz"], "similarity": [0.9]})
    assert all(np.isnan(photos.place_on_map(nowhere, points)))


# --------------------------------------------------------------------------- uploads


def sources(tiny: dict, **extra) -> photos.PhotoSources:
    """The tiny catalog as a photo search reads it (no classifier: the fake CNN's softmax)."""
    return photos.PhotoSources(
        tiny["catalog"], tiny["indexes"], tiny["extractors"], maps=tiny["maps"], **extra
    )


def test_an_uploaded_catalog_photo_finds_itself_first(tiny: dict) -> None:
    results = photos.search_photos([("blue.png", tiny["data"][2])], sources(tiny), k=3)
    (result,) = results
    assert result.error is None and result.category == "b"
    assert result.confidence == pytest.approx(0.92)
    # Without the classify stage's model, the custom CNN's softmax predicts, and says so.
    assert result.category_model == photos.CNN_HEAD
    assert result.strategies == {"inception_v3": "exact", "custom_cnn": "exact"}
    for name in tiny["indexes"]:
        table = result.neighbours[name]
        assert table["item_id"].iloc[0] == "id2"
        assert table["similarity"].iloc[0] >= 0.999
        assert len(table) == 3
        x, y = result.positions[name]
        assert 0 <= x <= 4 and 0 <= y <= 8
    assert Image.open(io.BytesIO(result.preview)).size[0] <= photos.UPLOAD_PREVIEW_SIZE


def test_upload_category_strategy_searches_the_predicted_category(tiny: dict) -> None:
    (result,) = photos.search_photos(
        [("red.png", tiny["data"][0])], sources(tiny), k=5, strategy="category"
    )
    assert result.category == "r" and result.searched == "r"
    assert set(result.neighbours["inception_v3"]["item_id"]) == {"id0", "id3", "id4"}
    assert result.notes == ["The category strategy searches: r"]


class TwoClassModel:
    """A stand-in for the classify stage's model: g 0.4, r 0.6 for any photo, from the
    InceptionV3 vector it is given (recorded)."""

    features = ("inception_v3",)
    classes = np.array(["g", "r"])
    name = "logistic regression on inception_v3"

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def probabilities(self, vectors: dict) -> np.ndarray:
        self.seen.append(np.asarray(vectors["inception_v3"]))
        return np.array([[0.4, 0.6]], np.float32)


def test_the_classifier_predicts_before_the_cnn_softmax_and_its_cover_is_searched(
    tiny: dict,
) -> None:
    # The fake CNN calls the green photo "g" at 0.92; the classifier says r at 0.6, g at 0.4:
    # its answer is the photo's, and as neither alone covers 0.9, the category strategy
    # searches both.
    model = TwoClassModel()
    (result,) = photos.search_photos(
        [("green.png", tiny["data"][1])],
        sources(tiny, category_model=model),
        k=5,
        extractors=["custom_cnn"],  # the classifier's extractor is embedded all the same
        strategy="category",
    )
    (vector,) = model.seen
    np.testing.assert_allclose(vector, tiny["indexes"]["inception_v3"].vectors[1], atol=1e-6)
    assert (result.category, result.category_model) == ("r", model.name)
    assert result.confidence == pytest.approx(0.6)
    assert result.probabilities == pytest.approx({"r": 0.6, "g": 0.4})
    assert list(result.probabilities) == ["r", "g"]  # most likely first
    assert result.searched_categories == ["g", "r"]
    assert list(result.neighbours) == ["custom_cnn"]
    assert set(result.neighbours["custom_cnn"]["item_id"]) == {"id0", "id1", "id3", "id4"}
    assert result.notes == ["The category strategy searches: g, r"]


def test_colour_and_label_filters_widen_the_photo_search(tiny: dict) -> None:
    colours = np.array(["red", "green", "blue", "red", "red"], dtype=object)
    (result,) = photos.search_photos(
        [("blue.png", tiny["data"][2])], sources(tiny, colours=colours), k=2, colour="red"
    )
    for table in result.neighbours.values():
        assert set(table["item_id"]) <= {"id0", "id3", "id4"} and len(table) == 2
    (cool,) = photos.search_photos([("red.png", tiny["data"][0])], sources(tiny), k=3, label="cool")
    for name, table in cool.neighbours.items():
        assert set(table["item_id"]) == {"id1", "id2"}  # only two items are cool
        assert f"{name}: only 2 items with label cool in the searched items" in cool.notes
    with pytest.raises(LookalikeError, match="unknown colour 'teal'; valid colours: "):
        photos.search_photos([], sources(tiny, colours=colours), colour="teal")
    with pytest.raises(LookalikeError, match="the colour filter needs the items' colours"):
        photos.search_photos([], sources(tiny), colour="red")
    with pytest.raises(LookalikeError, match="unknown label 'hot'; valid labels: cool, warm"):
        photos.search_photos([], sources(tiny), label="hot")


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]  # header intact, pixels cut off


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("notes.txt", b"just some text, not a photo", "not a recognised image"),
        ("empty.jpg", b"", "empty file (0 bytes)"),
        ("cut.jpg", truncated_jpeg(), "truncated or corrupt"),
        ("huge.jpg", b"\xff" * 2048, "2.0 KB is over the 1.0 KB upload limit"),
        ("bomb.png", bomb_png(), "too large"),
    ],
)
def test_bad_uploads_get_a_message_naming_the_file(
    tiny: dict, name: str, data: bytes, message: str
) -> None:
    max_bytes = 1024 if name == "huge.jpg" else photos.MAX_UPLOAD_BYTES
    extractors = tiny["extractors"]  # their Config() caps images at 40 Mpx; bomb.png has 48
    results = photos.search_photos(
        [("ok.png", tiny["data"][1]), (name, data)],
        photos.PhotoSources(tiny["catalog"], tiny["indexes"], extractors, maps=tiny["maps"]),
        k=2,
        max_bytes=max_bytes,
    )
    good, bad = results
    assert good.error is None and good.neighbours["custom_cnn"]["item_id"].iloc[0] == "id1"
    assert bad.error is not None and bad.error.startswith(f"{name}: ")
    assert message in bad.error
    assert bad.neighbours == {} and bad.positions == {}


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_shared_decode_gives_the_batch_stage_pixels(fmt: str) -> None:
    # Non-JPEG uploads are decoded once and resized per extractor; the pixels must be the
    # ones `load_array` (the batch embedding stage) gives, or a catalog photo would not find
    # itself at similarity 1.
    noise = np.random.default_rng(1).integers(0, 255, (90, 70, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=fmt, lossless=True)
    data = buffer.getvalue()
    image = images.load_image(data)
    for size in (32, 128, 299):
        np.testing.assert_array_equal(photos.square_pixels(image, size), load_array(data, size))


def test_category_summary_counts_the_top_three() -> None:
    results = [
        photos.UploadResult(name=f"p{i}", category=c)
        for i, c in enumerate(["hat", "dress", "hat", "shoes", "pants", "dress", "hat"])
    ]
    results.append(photos.UploadResult(name="bad", error="bad: not a recognised image"))
    table = photos.category_summary(results)
    assert table.to_dict("records") == [
        {"category": "hat", "count": 3},
        {"category": "dress", "count": 2},
        {"category": "pants", "count": 1},
    ]
    assert photos.category_summary([]).empty


# --------------------------------------------------------------------------- artifacts


def test_missing_artifacts_and_app_config(tmp_path: Path) -> None:
    config = Config(artifacts_dir=tmp_path)
    missing = status.missing_artifacts(config, ["catalog", "maps"], ["custom_cnn"])
    assert missing == [config.catalog_path, config.map_path("custom_cnn")]
    with pytest.raises(LookalikeError, match="valid parts: catalog, embeddings"):
        status.missing_artifacts(config, ["thumbs"])
    # The app embeds uploads at the trained model's input size, not the default setting.
    assert status.app_config(config).cnn_image_size == config.cnn_image_size
    model = config.models_dir / "custom_cnn.keras"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model")
    write_manifest(model, "train", {}, {}, extra={"image_size": 32, "embedding_dim": 64})
    tuned = status.app_config(config)
    assert (tuned.cnn_image_size, tuned.cnn_embedding_dim) == (32, 64)
    assert (
        status.manifest_sha(model)
        == json.loads((model.parent / "custom_cnn.manifest.json").read_text())["sha256"]
    )
    assert status.manifest_sha(tmp_path / "nothing.npy") == "missing"


def test_cluster_tables_and_metrics_long() -> None:
    summary = pd.DataFrame(
        {
            "cluster": [0, 1],
            "size": [3, 1],
            "n_labelled": [3, 1],
            "top_label": ["hat", "shoes"],
            "purity": [2 / 3, 1.0],
            "composition": [json.dumps({"hat": 2, "shoes": 1}), json.dumps({"shoes": 1})],
        }
    )
    assert browse.cluster_composition(summary, 0).to_dict("records") == [
        {"label": "hat", "count": 2},
        {"label": "shoes", "count": 1},
    ]
    with pytest.raises(LookalikeError, match="cluster 5 does not exist; valid clusters: 0, 1"):
        browse.cluster_composition(summary, 5)
    catalog = browse.with_thumb_files(
        pd.DataFrame(
            {"item_id": list("abcd"), "label": ["hat"] * 4, "thumb": [f"t/{c}" for c in "abcd"]}
        ),
        Path("/art"),
    )
    clusters = pd.DataFrame({"item_id": list("abcd"), "cluster": [0, 1, 0, 0]})
    overview = browse.cluster_overview(summary, clusters, catalog, n_thumbs=2)
    assert overview["thumbs"].tolist() == [["/art/t/a", "/art/t/c"], ["/art/t/b"]]
    assert browse.cluster_members(clusters, catalog, 1)["item_id"].tolist() == ["b"]

    metrics = {
        "results": {
            "inception_v3": {
                "exact": {"p@1": 0.5, "p@10": 0.4, "r@10": 0.1, "map@10": 0.3},
                "category": {"skipped": "no categories"},
            }
        }
    }
    long = browse.metrics_long(metrics)
    assert sorted(long["metric"]) == ["map@10", "p@1", "p@10"]
    assert set(long["strategy"]) == {"exact"}


def test_browse_page_filters_and_clips() -> None:
    catalog = pd.DataFrame({"item_id": [str(i) for i in range(10)], "label": ["a", "b"] * 5})
    rows, pages = browse.browse_page(catalog, ["a"], page=9, per_page=2)
    assert pages == 3 and rows["item_id"].tolist() == ["8"]
    rows, pages = browse.browse_page(catalog, None, page=0, per_page=4)
    assert pages == 3 and len(rows) == 4


def test_artifacts_summary(tmp_path: Path) -> None:
    config = Config(artifacts_dir=tmp_path)
    assert status.artifacts_summary(config)["built"] is False
    pd.DataFrame({"item_id": ["a", "b"]}).to_parquet(config.catalog_path)
    write_json({"note": "x"}, tmp_path / "other.json")
    write_manifest(config.catalog_path, "catalog", {}, {}, extra={"rows": 2})
    summary = status.artifacts_summary(config)
    assert summary["built"] and summary["items"] == 2 and summary["catalog_created"]


def test_the_engine_imports_without_streamlit_or_tensorflow() -> None:
    code = (
        "import sys, pipelines.status, pipelines.explore.browse, pipelines.search.similar, "
        "pipelines.search.photos, pipelines.readers, pipelines.quality.metrics, app.ui.selection; "
        "print(sorted(m for m in ('streamlit', 'tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
