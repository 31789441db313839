"""The live path's networks as LiteRT exports (`pipelines.models.lite`): written by the embed
stage, the same vectors and neighbours as Keras, read without importing TensorFlow, and
exported again when stale or damaged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.artifacts import manifest_path, read_manifest, write_manifest
from pipelines.config import Config
from pipelines.models import lite, model_cache
from pipelines.models.extractors import get_extractor
from pipelines.search.topk import top_k

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _empty_cache():
    # Per module, not per test: the tests share the loaded Keras models (InceptionV3 is ~10 s
    # to read); the one that needs a fresh load clears the cache itself.
    model_cache.clear()
    yield
    model_cache.clear()


def _cnn_only(built: Config, root: Path) -> Config:
    """A build under `root` holding only `built`'s custom CNN (model, descriptor, manifest)."""
    cfg = Config(artifacts_dir=root, cnn_image_size=built.cnn_image_size)
    cfg.models_dir.mkdir(parents=True)
    for path in (built.custom_cnn_path, built.custom_cnn_descriptor_path):
        if path.exists():
            shutil.copy2(path, cfg.models_dir / path.name)
    shutil.copy2(manifest_path(built.custom_cnn_path), manifest_path(cfg.custom_cnn_path))
    return cfg


def _photos(built: Config, n: int = 8) -> list[str]:
    return pd.read_parquet(built.catalog_path)["path"].head(n).tolist()


@pytest.mark.parametrize("name", ["inception_v3", "custom_cnn", "inception_head"])
def test_live_vectors_are_keras_vectors_and_find_the_same_neighbours(
    built: Config, name: str
) -> None:
    photos = _photos(built)
    live = get_extractor(name, built, live=True)
    keras = get_extractor(name, built)
    got, want = live.embed_images(photos), keras.embed_images(photos)
    assert isinstance(live.model, lite.LiteModel) and not isinstance(keras.model, lite.LiteModel)
    assert got.shape == want.shape
    # Float rounding only: every vector within 1e-5 of Keras's (cosine), and the catalog's
    # own vectors (embedded by the stage, with Keras) rank the same neighbours.
    assert np.min(np.sum(got * want, axis=1)) > 1 - 1e-5
    catalog = np.load(built.embeddings_path(name))
    np.testing.assert_array_equal(top_k(got, catalog, 5, None)[0], top_k(want, catalog, 5, None)[0])


def test_the_live_inception_map_is_the_keras_map(built: Config) -> None:
    pixels = np.stack(
        [get_extractor("inception_v3", built).load_pixels(p) for p in _photos(built, 3)]
    )
    live = get_extractor("inception_v3", built, live=True)
    vectors, maps = live.embed_with_maps(pixels)
    want = get_extractor("inception_v3", built).last_maps(pixels)
    assert maps.shape == want.shape == (3, 8, 8, 2048)
    np.testing.assert_allclose(maps, want, atol=1e-3 * float(np.abs(want).max()))
    assert np.min(np.sum(vectors * live.embed_arrays(pixels), axis=1)) > 1 - 1e-6


def test_the_embed_stage_exports_them_and_a_server_reads_them_without_tensorflow(
    built: Config,
) -> None:
    for name in ("inception_v3", "custom_cnn"):
        path = built.lite_model_path(name)
        manifest = read_manifest(path)
        assert path.is_file() and manifest is not None and manifest["stage"] == lite.STAGE
    # A fresh process: the three live extractors embed a photo; TensorFlow is never imported.
    script = (
        "import json, sys\n"
        "from pipelines.config import Config\n"
        "from pipelines.models.extractors import get_extractor\n"
        f"cfg = Config(artifacts_dir={str(built.artifacts_dir)!r})\n"
        f"photo = {_photos(built, 1)[0]!r}\n"
        "dims = {n: get_extractor(n, cfg, live=True).embed_images([photo]).shape[1]\n"
        "        for n in ('inception_v3', 'custom_cnn', 'inception_head')}\n"
        "print(json.dumps({'dims': dims, 'tensorflow': 'tensorflow' in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tensorflow"] is False
    assert result["dims"]["inception_v3"] == 2048


def test_a_stale_or_damaged_export_is_exported_again(built: Config, tmp_path: Path) -> None:
    cfg = _cnn_only(built, tmp_path)
    photo = _photos(built, 1)
    exported = cfg.lite_model_path("custom_cnn")

    def embed() -> np.ndarray:
        model_cache.clear()
        return get_extractor("custom_cnn", cfg, live=True).embed_images(photo)

    first = embed()
    assert exported.is_file()
    created = read_manifest(exported)["created"], exported.stat().st_mtime_ns
    np.testing.assert_array_equal(embed(), first)  # read as it is
    assert (read_manifest(exported)["created"], exported.stat().st_mtime_ns) == created

    # Another model's hash in its manifest (the CNN was retrained since): exported again.
    stale = read_manifest(exported)
    write_manifest(exported, lite.STAGE, stale["params"], {"model": "0" * 64})
    np.testing.assert_array_equal(embed(), first)
    assert read_manifest(exported)["inputs"] == {
        "model": read_manifest(cfg.custom_cnn_path)["sha256"]
    }

    # Damaged bytes under a manifest written for them: not a model, so exported again.
    exported.write_bytes(b"not a flatbuffer")
    write_manifest(exported, lite.STAGE, stale["params"], read_manifest(exported)["inputs"])
    np.testing.assert_array_equal(embed(), first)
    assert exported.stat().st_size > 1000


def test_an_export_that_cannot_be_written_runs_the_keras_model(
    built: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    cfg = _cnn_only(built, tmp_path)

    def read_only(*_args: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(lite, "export", read_only)
    live = get_extractor("custom_cnn", cfg, live=True)
    photo = _photos(built, 2)
    got = live.embed_images(photo)
    assert not isinstance(live.model, lite.LiteModel)  # Keras, since nothing could be written
    assert "cannot write the live model" in capsys.readouterr().err
    np.testing.assert_array_equal(got, get_extractor("custom_cnn", cfg).embed_images(photo))
