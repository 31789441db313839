"""Shifted views of the training photos (issue 25): a view is seeded and looks like another
photo style (a small garment on a larger frame), the `views` stage embeds one per validation
photo and a share of the fit photos once, and the head and the classifier learn from them."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from pipelines import artifacts
from pipelines.config import Config
from pipelines.embedding.embed_views import run_views
from pipelines.models import views
from pipelines.models.classify import ViewVectors, choose_model
from pipelines.models.head import labelled_rows
from tests.conftest import real_photos


def test_a_view_is_seeded_and_shows_a_small_garment_on_a_larger_frame() -> None:
    photo = Image.open(real_photos("dress", 1)[0]).convert("RGB")
    one = views.shifted_view(photo, np.random.default_rng(3))
    assert one == views.shifted_view(photo, np.random.default_rng(3))
    assert one != views.shifted_view(photo, np.random.default_rng(4))
    for seed in range(20):
        view = Image.open(io.BytesIO(views.shifted_view(photo, np.random.default_rng(seed))))
        assert view.format == "JPEG"
        # The garment's long side is at most GARMENT_SIDE[1] px (before its small rotation),
        # so the frame, which is larger, is far smaller than the catalog photo.
        assert max(view.size) < max(photo.size)
        assert max(view.size) >= views.GARMENT_SIDE[0]


def test_view_rows_are_every_validation_row_and_a_share_of_the_fit_rows() -> None:
    fit = np.zeros(2000, dtype=bool)
    fit[:1800] = True
    val = ~fit
    rows = views.view_rows(fit, val, seed=1)
    assert set(np.flatnonzero(val)) <= set(rows.tolist())
    share = np.isin(np.flatnonzero(fit), rows).mean()
    assert abs(share - views.FIT_SHARE) < 0.05
    np.testing.assert_array_equal(rows, views.view_rows(fit, val, seed=1))


def test_the_pipeline_embeds_views_once_and_the_trained_parts_key_on_them(built: Config) -> None:
    catalog = pd.read_parquet(built.catalog_path)
    fit, val, _ = labelled_rows(catalog, built.seed)
    saved = views.load_views(built, catalog)
    assert set(saved.rows.tolist()) <= set(np.flatnonzero(fit | val).tolist())
    assert set(np.flatnonzero(val).tolist()) <= set(saved.rows.tolist())
    assert saved.vectors.shape == (len(saved.rows), 2048)
    np.testing.assert_allclose(np.linalg.norm(saved.vectors, axis=1), 1.0, atol=1e-3)
    # A view is not its photo: InceptionV3 sees the shift.
    stored = np.load(built.embeddings_path("inception_v3"))[saved.rows]
    assert float(np.mean(np.sum(stored * saved.vectors, axis=1))) < 0.95
    # Up to date on a second run; the head and the classifier name the views they learnt from.
    assert run_views(built).skipped
    digest = artifacts.artifact_hash(views.views_path(built), "run")
    for path in (built.head_path, built.category_model_path):
        assert (artifacts.read_manifest(path) or {})["inputs"][views.STAGE] == digest
    trials = (artifacts.read_manifest(built.category_model_path) or {})["trials"]
    assert all("val_shifted_accuracy" in t for t in trials)


def test_views_teach_the_classifier_a_shift_it_cannot_guess() -> None:
    """Two classes told apart by one direction; the shifted style moves every photo along it.
    Without views the classifier calls every shifted photo the same class; with them it
    learns the shift."""
    rng = np.random.default_rng(0)
    n, d = 200, 16
    labels = np.array(["a", "b"] * (n // 2), dtype=object)
    x = rng.normal(scale=0.3, size=(n, d))
    x[:, 0] += np.where(labels == "a", -1.0, 1.0)
    x[:, 1] = rng.normal(scale=0.1, size=n)  # the style axis: 0 for catalog photos

    def shifted(rows: np.ndarray) -> np.ndarray:
        out = x[rows].copy()
        out[:, 0] += 2.0
        out[:, 1] += 3.0
        return out

    fit = np.arange(n) < 150
    val = ~fit
    fit_rows, val_rows = np.flatnonzero(fit)[::3], np.flatnonzero(val)  # both classes
    vectors = {"inception_v3": x}
    shift = ViewVectors(shifted(fit_rows), labels[fit_rows], shifted(val_rows), labels[val_rows])
    for taught, at_least in ((None, 0.0), (shift, 0.9)):
        model, trials = choose_model(
            vectors, labels, fit, val, 0, [("inception_v3",)], (1.0,), views=taught
        )
        probs = model.probabilities({"inception_v3": shifted(val_rows)})
        accuracy = (model.classes[probs.argmax(axis=1)] == labels[val_rows]).mean()
        if taught is None:
            assert accuracy < 0.6 and "val_shifted_accuracy" not in trials[0]
        else:
            assert accuracy >= at_least
            assert trials[0]["val_shifted_accuracy"] == accuracy
