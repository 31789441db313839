"""The custom CNN's appearance descriptor: whitening whitens, and the joined vector's cosine is
the promised mix of the category and appearance cosines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import LookalikeError
from pipelines.models.cnn_descriptor import Descriptor, fit_descriptor, pooled_parts


def _parts(rng: np.random.Generator, n: int) -> np.ndarray:
    # Correlated, unevenly scaled features: whitening has something to undo.
    mixing = rng.normal(size=(12, 12)) * np.linspace(0.1, 3.0, 12)
    return rng.normal(size=(n, 12)) @ mixing + 5.0


def test_whitening_gives_the_train_rows_identity_covariance() -> None:
    rng = np.random.default_rng(0)
    parts = _parts(rng, 400)
    descriptor = fit_descriptor(parts, share=0.5)
    white = (parts - descriptor.mean) @ descriptor.projection
    np.testing.assert_allclose(np.cov(white.T), np.eye(12), atol=1e-8)


def test_joined_cosine_mixes_category_and_appearance_by_the_share(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    parts = _parts(rng, 200)
    embeddings = rng.normal(size=(200, 8))
    descriptor = fit_descriptor(parts[:150], share=0.3)
    joined = descriptor.join(embeddings, parts)
    np.testing.assert_allclose(np.linalg.norm(joined, axis=1), 1.0, atol=1e-6)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    appearance = descriptor.appearance(parts)
    expected = 0.7 * unit @ unit.T + 0.3 * appearance @ appearance.T
    np.testing.assert_allclose(joined @ joined.T, expected, atol=1e-5)
    descriptor.save(tmp_path / "d.npz")
    again = Descriptor.load(tmp_path / "d.npz")
    np.testing.assert_array_equal(again.join(embeddings, parts), joined)


def test_pooled_parts_are_unit_per_stage() -> None:
    rng = np.random.default_rng(2)
    maps = [rng.random((3, 8, 8, 4)), rng.random((3, 4, 4, 6))]
    parts = pooled_parts(maps)
    assert parts.shape == (3, 10)
    np.testing.assert_allclose(np.linalg.norm(parts[:, :4], axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(parts[:, 4:], axis=1), 1.0)


def test_a_broken_descriptor_file_says_how_to_rebuild_it(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(b"not a numpy file")
    with pytest.raises(LookalikeError, match="train --force"):
        Descriptor.load(path)
