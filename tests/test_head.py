"""The metric-learned head: it learns on real InceptionV3 vectors, its gradients are right, its
fusion is the weighted sum of cosines it claims, and the extractor built on it finds a catalog
photo uploaded live; a photo that is not clothing is flagged as far from the catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import artifacts
from pipelines.config import Config
from pipelines.models import head as head_module
from pipelines.models.head import (
    Head,
    ShiftedViews,
    _loss_and_grads,
    run_train_head,
    train_head,
)
from pipelines.quality.metrics import gallery_precision as precision_at_k
from tests.conftest import unit, write_vector_artifacts

# InceptionV3 vectors (float16) of 12 train and 5 validation photos per class of clothing-small,
# taken from a full run's embeddings/inception_v3.npy (paths included).
SUBSET = Path(__file__).parent / "data" / "inception_subset.npz"


def _subset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SUBSET's vectors, integer labels, and fit and validation masks."""
    data = np.load(SUBSET)
    classes = sorted(set(data["labels"].tolist()))
    y = np.array([classes.index(v) for v in data["labels"]])
    fit, val = data["splits"] == "train", data["splits"] == "validation"
    return data["vectors"].astype(np.float32), y, fit, val


@pytest.mark.parametrize("loss", ["norm_softmax", "supcon", "supcon with items and looks"])
def test_gradients_match_finite_differences(loss: str) -> None:
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.normal(size=(6, 5)) * 0.5,
        "b1": rng.normal(size=5) * 0.1,
        "w2": rng.normal(size=(5, 4)) * 0.5,
        "b2": rng.normal(size=4) * 0.1,
    }
    if loss == "norm_softmax":
        params["proxies"] = rng.normal(size=(3, 4))
    x, y = rng.normal(size=(8, 6)), np.array([0, 1, 2, 0, 1, 2, 0, 1])
    # Rows 6 and 7 are shifted views of rows 0 and 1: same photo, extra positive weight; and
    # two colours, whose same-label pairs weigh more.
    items = np.array([0, 1, 2, 3, 4, 5, 0, 1]) if loss.endswith("looks") else None
    looks = np.array([0, 1, 1, 0, 0, 1, 0, 1]) if loss.endswith("looks") else None
    loss = loss.removesuffix(" with items and looks")
    _, grads = _loss_and_grads(params, x, y, loss, 3, items, looks)
    for key, value in params.items():
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            old = value[i]
            value[i] = old + 1e-6
            up, _ = _loss_and_grads(params, x, y, loss, 3, items, looks)
            value[i] = old - 1e-6
            down, _ = _loss_and_grads(params, x, y, loss, 3, items, looks)
            value[i] = old
            numeric[i] = (up - down) / 2e-6
        np.testing.assert_allclose(grads[key], numeric, atol=2e-5, err_msg=f"{loss} {key}")


def test_head_improves_validation_precision_over_raw_vectors_on_real_photos() -> None:
    x, y, fit, val = _subset()
    config = Config(head_raw_share=0.0, head_cnn_share=0.0, head_epochs=40)
    head, history = train_head(x[fit], y[fit], x[val], y[val], config)
    raw = precision_at_k(x[val], y[val], x[fit], y[fit], 10)
    learned = precision_at_k(head.apply(x[val]), y[val], head.apply(x[fit]), y[fit], 10)
    assert learned == pytest.approx(max(h["val_p@10"] for h in history), abs=1e-6)
    assert learned >= raw + 0.05, (raw, learned)
    # Same settings, same head: no hidden randomness.
    again, _ = train_head(x[fit], y[fit], x[val], y[val], config)
    np.testing.assert_array_equal(head.w1, again.w1)


def _shifted(x: np.ndarray, seed: int) -> np.ndarray:
    """A stand-in for another photo style on real vectors: a fixed offset shared by every
    shifted photo (the style), plus per-photo noise, renormalised."""
    style = np.random.default_rng(99).normal(size=x.shape[1]).astype(np.float32)
    noise = np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
    return unit(x + 0.06 * style + 0.02 * noise)


def test_shifted_views_teach_the_head_the_shift_and_choose_its_epoch() -> None:
    x, y, fit, val = _subset()
    x_fit, y_fit, x_val, y_val = x[fit], y[fit], x[val], y[val]
    every_other = np.arange(0, len(x_fit), 2)
    views = ShiftedViews(_shifted(x_fit[every_other], 1), every_other, _shifted(x_val, 2), y_val)
    config = Config(head_raw_share=0.0, head_cnn_share=0.0, head_epochs=25)
    plain, _ = train_head(x_fit, y_fit, x_val, y_val, config)
    taught, history = train_head(x_fit, y_fit, x_val, y_val, config, views=views)
    queries = _shifted(x_val, 3)  # unseen shifted copies of the validation photos

    def shifted_precision(head: Head) -> float:
        return precision_at_k(head.apply(queries), y_val, head.apply(x_fit), y_fit, 10)

    assert shifted_precision(taught) >= shifted_precision(plain) + 0.05
    # The kept epoch is the best of the blended score, and the blend is what it says.
    best = max(history, key=lambda h: h["val_score"])
    share = head_module.SHIFT_SELECT_SHARE
    blend = (1 - share) * best["val_p@10"] + share * best["val_shifted_p@10"]
    assert best["val_score"] == pytest.approx(blend)
    kept = precision_at_k(taught.apply(x_val), y_val, taught.apply(x_fit), y_fit, 10)
    assert kept == pytest.approx(best["val_p@10"], abs=1e-6)


def test_colour_positives_bring_a_colour_together_within_a_kind() -> None:
    """A "colour" the vectors hold (the side of a fixed direction each photo is on): with
    colours, more of a validation photo's 10 neighbours share it, and P@10 holds."""
    x, y, fit, val = _subset()
    direction = np.random.default_rng(5).normal(size=x.shape[1]).astype(np.float32)
    projection = (x - x.mean(axis=0)) @ direction
    colour = (projection > np.median(projection)).astype(int)
    config = Config(head_raw_share=0.0, head_cnn_share=0.0, head_epochs=25)

    def scores(colours: np.ndarray | None) -> tuple[float, float]:
        head, _ = train_head(x[fit], y[fit], x[val], y[val], config, colours=colours)
        q, g = head.apply(x[val]), head.apply(x[fit])
        top = np.argsort(-(q @ g.T), axis=1)[:, :10]
        same = float((colour[fit][top] == colour[val][:, None]).mean())
        return precision_at_k(q, y[val], g, y[fit], 10), same

    plain_p, plain_colour = scores(None)
    taught_p, taught_colour = scores(colour[fit])
    assert taught_colour >= plain_colour + 0.05, (plain_colour, taught_colour)
    assert taught_p >= plain_p - 0.05, (plain_p, taught_p)


def test_fusion_is_the_weighted_sum_of_cosines_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    d, hidden, dim = 32, 16, 8
    head = Head(
        rng.normal(size=(d, hidden)).astype(np.float32),
        np.zeros(hidden, np.float32),
        rng.normal(size=(hidden, dim)).astype(np.float32),
        np.zeros(dim, np.float32),
        np.zeros(d, np.float32),
        np.linalg.qr(rng.normal(size=(d, 6)))[0].astype(np.float32),
        0.3,
        0.2,
        5,
    )
    x, cnn = unit(rng.normal(size=(4, d))), unit(rng.normal(size=(4, 5)))
    fused = head.apply(x, cnn)
    assert fused.shape == (4, head.dim) == (4, dim + 6 + 5)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    learned = head.learned(x)
    raw = unit(x @ head.raw_axes)
    expected = 0.5 * learned @ learned.T + 0.3 * raw @ raw.T + 0.2 * cnn @ cnn.T
    np.testing.assert_allclose(fused @ fused.T, expected, atol=1e-5)
    head.save(tmp_path / "head.npz")
    np.testing.assert_array_equal(Head.load(tmp_path / "head.npz").apply(x, cnn), fused)


def test_catalog_without_labels_skips_the_head_with_a_note(tmp_path: Path) -> None:
    config = Config(artifacts_dir=tmp_path)
    write_vector_artifacts(config, {"inception_v3": unit(np.random.rand(12, 16))})
    result = run_train_head(config)
    assert result.skipped and "no labels" in result.note
    assert not config.head_path.exists()
    assert config.extractors_built() == ["inception_v3", "custom_cnn"]


@pytest.mark.slow
def test_upload_through_the_head_finds_the_photo_and_a_non_photo_is_far(built: Config) -> None:
    from PIL import Image

    from pipelines.models.extractors import get_extractor
    from pipelines.readers import load_index, read_catalog
    from pipelines.search.novelty import far_check, far_message, nearest_similarity

    catalog, _ = read_catalog(built)
    head_index = load_index(built, "inception_head")
    path = catalog["path"].iloc[5]
    vector = get_extractor("inception_head", built).embed_images([path])[0]
    found = head_index.search(vector, 3)[0]
    assert found.item_ids[0] == catalog["item_id"].iloc[5]
    assert found.similarities[0] > 0.98
    # A smooth synthetic pattern, nothing like a garment: far from every catalog photo.
    yy, xx = np.mgrid[0:256, 0:256]
    pattern = np.stack([xx, yy, (xx * yy) % 256], axis=-1).astype(np.uint8)
    inception = load_index(built, "inception_v3")
    check = far_check(inception)
    ext = get_extractor("inception_v3", built)
    odd = ext.embed_arrays(np.asarray(Image.fromarray(pattern).resize((299, 299)))[None])[0]
    assert far_message(nearest_similarity(inception, odd), check) is not None
    photo = ext.embed_images([catalog["path"].iloc[7]])[0]
    assert far_message(nearest_similarity(inception, photo), check) is None


@pytest.mark.slow
def test_train_command_fits_the_head_once_its_vectors_exist(
    built: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train` goes on to the metric head when the vectors it learns from are embedded, and
    says what to run when they are not."""
    import dataclasses
    import shutil

    from pipelines import cli

    art = tmp_path / "artifacts"
    shutil.copytree(built.artifacts_dir, art)
    config = dataclasses.replace(built, artifacts_dir=art)
    # The fixture's own CNN settings, so `train` finds its CNN up to date.
    argv = ["train", "--artifacts", str(art)]
    for name in ("cnn_image_size", "cnn_epochs", "cnn_patience", "batch_size", "chunk_size"):
        argv += ["--set", f"{name}={getattr(built, name)}"]
    config.head_path.unlink()
    assert cli.main(argv) == 0
    assert config.head_path.is_file()
    assert "inception_head" in capsys.readouterr().out
    config.embeddings_path("inception_v3").unlink()
    config.head_path.unlink()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "inception_v3 vectors are not embedded yet" in out
    assert "python -m pipelines embed" in out
    assert not config.head_path.exists()


@pytest.mark.slow
def test_a_retrained_cnn_moves_the_fused_rows_even_when_the_head_file_stays(
    built: Config, tmp_path: Path
) -> None:
    """The head's learned part reads InceptionV3 only, so retraining the custom CNN alone can
    leave models/inception_head.npz bit for bit the same; its fused rows must still follow."""
    from pipelines.embedding import reuse
    from pipelines.models.head import load_head, run_embed_head
    from pipelines.readers import read_catalog
    from tests.conftest import copy_build

    config = copy_build(built, tmp_path)
    catalog, _ = read_catalog(config)
    head = load_head(config)
    assert head.cnn_share > 0
    old = np.load(config.embeddings_path("custom_cnn"))
    retrained = unit(old[::-1].copy())  # other vectors from "another model"
    manifest = artifacts.read_manifest(config.embeddings_path("custom_cnn")) or {}
    reuse.write_embeddings(
        config,
        "custom_cnn",
        retrained,
        catalog["item_id"].astype(str).to_numpy(),
        "embed",
        manifest["params"],
        {**manifest["inputs"], "weights": "a retrained model"},
    )
    result = run_embed_head(config)
    assert not result.skipped and "kept" not in result.note
    fused = np.load(config.embeddings_path("inception_head"))
    expected = head.apply(np.load(config.embeddings_path("inception_v3")), retrained)
    np.testing.assert_allclose(fused, expected, atol=1e-6)
