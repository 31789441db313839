"""Tests of the custom CNN stage on a tiny real subset of clothing-small at 32 px, 2 epochs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.artifacts import (
    is_fresh,
    read_manifest,
    write_manifest,
    write_parquet,
)
from pipelines.config import DEFAULT_SOURCE, Config
from pipelines.data.images import load_array
from pipelines.errors import LookalikeError
from pipelines.models import training_set
from pipelines.models.cnn import STAGE_WIDTHS, STEM_WIDTH, build_autoencoder, build_classifier
from pipelines.models.train import (
    STAGE,
    load_custom_cnn,
    run_train,
    save_custom_cnn,
    train_custom_cnn,
    train_params,
)
from pipelines.models.train_data import augment_batch, decode_catalog, split_rows
from pipelines.models.training_set import snapshot_path

CLASSES = ("pants", "shoes", "t-shirt")
SIZE = 32
DIM = 16

pytestmark = pytest.mark.skipif(
    not DEFAULT_SOURCE.is_dir(), reason=f"shared dataset {DEFAULT_SOURCE} not present"
)


def _rows(split: str, per_class: int) -> list[dict]:
    rows = []
    for label in CLASSES:
        for path in sorted((DEFAULT_SOURCE / split / label).glob("*.jpg"))[:per_class]:
            rows.append(
                {
                    "item_id": f"{split}/{label}/{path.stem}",
                    "path": str(path),
                    "label": label,
                    "split": split,
                }
            )
    return rows


def _write_catalog(config: Config, rows: list[dict]) -> pd.DataFrame:
    """A catalog in the catalog stage's layout, with the manifest its hash is read from."""
    df = pd.DataFrame(rows)
    for col in ("item_id", "path", "label", "split"):
        df[col] = df[col].astype("string")
    df["width"], df["height"], df["bytes"] = 400, 533, 0
    for col in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"):
        df[col] = pd.array([pd.NA] * len(df), dtype="Int64")
    write_parquet(df, config.catalog_path)
    write_manifest(config.catalog_path, "catalog", {"test": True}, {})
    return df


def _small(config: Config) -> Config:
    return config.replace(cnn_image_size=SIZE, cnn_embedding_dim=DIM, cnn_epochs=2, cnn_patience=2)


def _pixels(df: pd.DataFrame) -> np.ndarray:
    return np.stack([load_array(p, SIZE) for p in df["path"]]).astype(np.float32)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """Trained in memory, then saved the way the stage saves it."""
    config = _small(Config(artifacts_dir=tmp_path_factory.mktemp("clf")))
    df = _write_catalog(config, _rows("train", 12) + _rows("validation", 4) + _rows("test", 2))
    trained = train_custom_cnn(df, config)
    manifest = save_custom_cnn(trained, config, training_set.ensure(config, df))
    return config, df, trained, manifest


def test_classifier_trains_and_saves(classifier):
    config, _, trained, manifest = classifier
    assert config.custom_cnn_path.is_file()
    assert manifest["kind"] == "classifier"
    assert manifest["class_names"] == sorted(CLASSES)
    assert manifest["image_size"] == SIZE and manifest["embedding_dim"] == DIM
    assert manifest["epochs_run"] == 2 and manifest["stopped_by"] == "epochs"
    assert manifest["n_train"] == 36 and manifest["n_validation"] == 12  # test rows untouched
    assert manifest["params"]["cnn_image_size"] == SIZE and "seed" in manifest["params"]
    # Keyed on the items it learnt from (the training set), not on the whole catalog.
    assert manifest["inputs"] == {"training_set": read_manifest(snapshot_path(config))["content"]}
    history = json.loads(config.custom_cnn_history_path.read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    # The best accuracy is the best epoch's, as the history recorded it (not any number in 0-1).
    best = max(e["val_accuracy"] for e in history["epochs"])
    assert manifest["best_val_accuracy"] == pytest.approx(best)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(
        history["epochs"][0]
    )


def test_manifest_round_trips(classifier):
    config, _, _, manifest = classifier
    assert read_manifest(config.custom_cnn_path) == manifest
    _, loaded_manifest = load_custom_cnn(config)
    assert loaded_manifest == manifest


def test_embeddings_unit_length_and_probs_sum_to_one(classifier):
    config, df, _, _ = classifier
    model, _ = load_custom_cnn(config)
    embedding, probs = model.predict(_pixels(df), verbose=0)
    assert embedding.shape == (len(df), DIM) and embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    assert probs.shape == (len(df), len(CLASSES))
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_loaded_model_matches_in_memory(classifier):
    config, df, trained, _ = classifier
    model, _ = load_custom_cnn(config)
    x = _pixels(df)
    for loaded, memory in zip(
        model.predict(x, verbose=0), trained.model.predict(x, verbose=0), strict=True
    ):
        np.testing.assert_allclose(loaded, memory, atol=1e-5)


def test_second_run_is_a_no_op(classifier, capsys):
    config, _, _, manifest = classifier
    before = config.custom_cnn_path.stat().st_mtime_ns
    again = run_train(config)
    assert again.skipped and not again.wrote
    assert again.details["key"] == manifest["key"]
    assert config.custom_cnn_path.stat().st_mtime_ns == before
    assert "up to date" in capsys.readouterr().out


def test_changed_setting_makes_the_model_stale(classifier):
    config, _, _, manifest = classifier
    inputs = manifest["inputs"]
    assert is_fresh(config.custom_cnn_path, STAGE, train_params(config), inputs)
    changed = train_params(config.replace(cnn_epochs=3))
    assert not is_fresh(config.custom_cnn_path, STAGE, changed, inputs)


def test_unlabelled_catalog_trains_autoencoder(tmp_path, capsys):
    # One epoch then out of time: also checks the wall-clock budget.
    config = _small(Config(artifacts_dir=tmp_path)).replace(cnn_epochs=3, cnn_time_budget_s=1e-3)
    rows = _rows("train", 8)
    for row in rows:
        row["label"] = row["split"] = None
    missing = str(tmp_path / "gone.jpg")
    rows.append({"item_id": "gone", "path": missing, "label": None, "split": None})
    df = _write_catalog(config, rows)

    result = run_train(config)
    manifest = result.details
    assert not result.skipped and config.custom_cnn_path in result.wrote
    assert manifest["kind"] == "autoencoder" and manifest["class_names"] == []
    assert manifest["best_val_accuracy"] is None and manifest["best_val_loss"] > 0
    assert manifest["epochs_run"] == 1 and manifest["stopped_by"] == "time_budget"
    # The unreadable row is reported by path and skipped; the rest train, 10% held out.
    assert manifest["n_skipped"] == 1 and missing in capsys.readouterr().out
    assert manifest["n_train"] + manifest["n_validation"] == len(df) - 1
    assert manifest["n_validation"] == 2

    model, _ = load_custom_cnn(config)
    assert len(model.outputs) == 1
    embedding = model.predict(_pixels(df.iloc[:-1]), verbose=0)
    assert embedding.shape == (len(df) - 1, DIM)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_missing_catalog_says_how_to_build_it(tmp_path):
    config = Config(artifacts_dir=tmp_path)
    with pytest.raises(LookalikeError, match="python -m pipelines catalog") as err:
        run_train(config)
    assert str(config.catalog_path) in str(err.value)


def test_missing_model_says_how_to_train_it(tmp_path):
    config = Config(artifacts_dir=tmp_path)
    with pytest.raises(LookalikeError, match="python -m pipelines train") as err:
        load_custom_cnn(config)
    assert "custom_cnn.keras" in str(err.value)


def test_models_have_the_documented_contract():
    config = _small(Config(artifacts_dir=Path("unused")))
    model = build_classifier(4, config)
    assert tuple(model.input.shape) == (None, SIZE, SIZE, 3)
    assert model.output_names == ["embedding", "category"]
    assert model.get_layer("embedding").output.shape[-1] == DIM
    assert model.get_layer("category").output.shape[-1] == 4
    # Preprocessing lives in the model: raw 0-255 pixels in, scaled by its first layer.
    rescale = model.get_layer("rescale")
    assert rescale.scale == pytest.approx(1 / 127.5) and rescale.offset == pytest.approx(-1.0)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    embedding, probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    auto = build_autoencoder(config)
    embedding, reconstruction = auto.predict(x, verbose=0)
    assert auto.output_names == ["embedding", "reconstruction"]
    assert embedding.shape == (2, DIM) and reconstruction.shape == x.shape
    with pytest.raises(LookalikeError, match="at least 2 classes, got 1"):
        build_classifier(1, config)


def test_holdout_is_stratified_and_seeded():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20 + ["d"] * 5
    df = pd.DataFrame(
        {"path": "x", "label": labels + ["a"] * 5, "split": ["train"] * 105 + ["test"] * 5}
    )
    fit, val, labelled = split_rows(df, seed=0)
    assert labelled
    assert not (fit & val).any() and not (fit | val)[-5:].any()  # test rows never used
    held = pd.Series(labels)[val[:105]].value_counts().to_dict()
    assert held == {"a": 5, "b": 3, "c": 2, "d": 1}  # ~10% of each class
    again_fit, again_val, _ = split_rows(df, seed=0)
    assert (again_val == val).all() and (again_fit == fit).all()
    assert not (split_rows(df, seed=1)[1] == val).all()


def test_decode_crops_to_bbox_and_reports_bad_rows(tmp_path, capsys):
    path = str(sorted((DEFAULT_SOURCE / "train" / "shoes").glob("*.jpg"))[0])
    df = pd.DataFrame(
        {
            "path": [path, path, str(tmp_path / "gone.jpg")],
            "bbox_x1": pd.array([pd.NA, 10, pd.NA], dtype="Int64"),
            "bbox_y1": pd.array([pd.NA, 20, pd.NA], dtype="Int64"),
            "bbox_x2": pd.array([pd.NA, 200, pd.NA], dtype="Int64"),
            "bbox_y2": pd.array([pd.NA, 300, pd.NA], dtype="Int64"),
        }
    )
    pixels, ok, skipped = decode_catalog(df, SIZE, 40_000_000)
    assert ok.tolist() == [True, True, False] and pixels.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(pixels[0], load_array(path, SIZE))
    np.testing.assert_array_equal(pixels[1], load_array(path, SIZE, bbox=(10, 20, 200, 300)))
    assert skipped == [(str(tmp_path / "gone.jpg"), "file not found")]
    assert "gone.jpg: file not found" in capsys.readouterr().out


def test_augmentation_keeps_shape_and_pixel_range():
    import tensorflow as tf

    x = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    out = augment_batch(tf.constant(x)).numpy()
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, x)


@pytest.mark.slow
def test_same_settings_train_the_same_model_on_a_quiet_and_a_busy_machine(tmp_path):
    """Epoch-bound schedule, seeded stateless augmentation and deterministic kernels: a run
    while other threads keep the cores busy gives the very same model, only later."""
    import threading

    from pipelines.models.train import train_custom_cnn

    config = _small(Config(artifacts_dir=tmp_path))
    df = _write_catalog(config, _rows("train", 6) + _rows("validation", 2))
    quiet = train_custom_cnn(df, config)

    stop = threading.Event()

    def burn() -> None:  # BLAS releases the GIL: these threads compete for the cores
        x = np.random.default_rng(0).normal(size=(300, 300))
        while not stop.is_set():
            x = np.tanh(x @ x)

    burners = [threading.Thread(target=burn) for _ in range(2)]
    for t in burners:
        t.start()
    try:
        busy = train_custom_cnn(df, config)
    finally:
        stop.set()
        for t in burners:
            t.join()
    assert [e["val_accuracy"] for e in quiet.history] == [e["val_accuracy"] for e in busy.history]
    assert quiet.stopped_by == busy.stopped_by == "epochs"
    for a, b in zip(quiet.model.get_weights(), busy.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_extractor_takes_size_and_width_from_the_saved_model(classifier):
    from pipelines.models.extractors import CustomCNNExtractor

    config, df, _, _ = classifier
    # Settings changed since training must not change what the saved model is fed or gives.
    extractor = CustomCNNExtractor(config.replace(cnn_image_size=64, cnn_embedding_dim=128))
    # The category embedding, then one pooled width per stage (the appearance descriptor).
    width = DIM + STEM_WIDTH + sum(STAGE_WIDTHS)
    assert (extractor.input_size, extractor.dim) == (SIZE, width)
    pixels = np.stack([load_array(p, SIZE) for p in df["path"].iloc[:3]])
    assert extractor.embed_arrays(pixels).shape == (3, width)


def test_the_custom_cnn_vector_is_the_same_for_a_photo_and_its_mirror_image(classifier):
    from pipelines.models.extractors import CustomCNNExtractor

    config, df, _, _ = classifier
    extractor = CustomCNNExtractor(config)
    pixels = np.stack([load_array(p, SIZE) for p in df["path"].iloc[:4]])
    vectors, probs = extractor.embed_and_classify(pixels)
    mirrored, mirrored_probs = extractor.embed_and_classify(pixels[:, :, ::-1].copy())
    # float32 sums in another order, blown up by the whitening's weakest directions: up to
    # 1.6e-5 on unit vectors once the appearance share is 0.6 (1e-5 held at 0.5).
    np.testing.assert_allclose(mirrored, vectors, atol=5e-5)
    np.testing.assert_allclose(mirrored_probs, probs, atol=1e-5)
    # And not the same for different photos: the descriptor is not constant.
    assert (vectors @ vectors.T)[np.triu_indices(4, 1)].max() < 0.9999


def test_a_photo_gets_the_same_custom_cnn_vector_whatever_it_is_embedded_with(classifier):
    """A photo's vector and class probabilities do not depend on how many photos share its
    forward pass (oneDNN chose other kernels for sizes that are not a multiple of 4): alone, in
    uneven groups or in one batch, the same bits. An update embedding one new photo and a run
    resumed after a kill (whole batches) then agree."""
    from pipelines.models.extractors import CustomCNNExtractor

    config, df, _, _ = classifier
    extractor = CustomCNNExtractor(config)
    pixels = np.stack([load_array(p, SIZE) for p in df["path"].iloc[:9]])
    together, probs = extractor.embed_and_classify(pixels)
    for sizes in ((1,) * 9, (2, 3, 4), (5, 4), (7, 2)):
        parts = np.split(np.arange(9), np.cumsum(sizes)[:-1])
        got = [extractor.embed_and_classify(pixels[rows]) for rows in parts]
        np.testing.assert_array_equal(np.concatenate([v for v, _ in got]), together)
        np.testing.assert_array_equal(np.concatenate([p for _, p in got]), probs)
    np.testing.assert_array_equal(extractor.embed_arrays(pixels[3:4]), together[3:4])


def test_a_share_of_each_batch_is_a_small_garment_on_another_background():
    """A flat red "garment" stays red everywhere under crop, flip and colour jitter; only the
    shifted views (zoomed out onto a background) lose red at the edges. Their share is
    SHIFT_SHARE, and the photo shrinks to a part of the frame."""
    import tensorflow as tf

    from pipelines.models import train_data

    x = np.zeros((256, SIZE, SIZE, 3), np.float32)
    x[..., 0] = 255.0
    out = augment_batch(tf.constant(x), tf.constant([3, 1], tf.int64)).numpy()
    # The backgrounds are greyish (channels within 120 of each other): never this red.
    garment = (out[..., 0] - out[..., 1]) > 140
    shifted = ~garment.all(axis=(1, 2))
    assert abs(shifted.mean() - train_data.SHIFT_SHARE) < 0.1, shifted.mean()
    spans = []
    for mask in garment[shifted]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        spans.append(min(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / SIZE)
    assert max(spans) < 1.0 and np.median(spans) < 0.75, spans
