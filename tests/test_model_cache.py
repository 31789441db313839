"""One loaded model per model file and content in a process (`pipelines.models.model_cache`):
the extractors that run the same weights share it, a new version of the file is loaded anew,
and a file that is not what its manifest records is never served from the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipelines.artifacts import write_manifest
from pipelines.config import Config
from pipelines.models import model_cache
from pipelines.models.extractors import get_extractor


@pytest.fixture(autouse=True)
def _empty_cache():
    model_cache.clear()
    yield
    model_cache.clear()


def _counting_loader():
    calls: list[int] = []

    def load() -> object:
        calls.append(1)
        return object()

    return load, calls


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    write_manifest(path, "train", {}, {})


def test_a_file_is_loaded_once_per_content(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    _write(path, b"weights one")
    load, calls = _counting_loader()
    first = model_cache.shared(path, load)
    assert model_cache.shared(path, load) is first and len(calls) == 1

    _write(path, b"weights two")  # retrained: a new version is loaded, then shared
    second = model_cache.shared(path, load)
    assert second is not first and len(calls) == 2
    assert model_cache.shared(path, load) is second and len(calls) == 2

    other = tmp_path / "copy" / "model.keras"  # the same content in another build
    other.parent.mkdir()
    _write(other, b"weights two")
    assert model_cache.shared(other, load) is second and len(calls) == 2


def test_files_without_a_true_manifest_are_loaded_every_time(tmp_path: Path) -> None:
    load, calls = _counting_loader()
    bare = tmp_path / "bare.keras"
    bare.write_bytes(b"no manifest")
    model_cache.shared(bare, load), model_cache.shared(bare, load)
    assert len(calls) == 2

    path = tmp_path / "model.keras"
    _write(path, b"weights one")
    model_cache.shared(path, load)
    path.write_bytes(b"weights 0ne")  # same size, other bytes: the manifest no longer holds
    os.utime(path, ns=(1, 1))
    model_cache.shared(path, load)
    assert len(calls) == 4


def test_at_most_max_models_are_kept(tmp_path: Path) -> None:
    load, calls = _counting_loader()
    paths = []
    for i in range(model_cache.MAX_MODELS + 1):
        paths.append(tmp_path / f"m{i}.keras")
        _write(paths[-1], f"weights {i}".encode())
        model_cache.shared(paths[-1], load)
    assert len(model_cache._LOADED) == model_cache.MAX_MODELS
    model_cache.shared(paths[-1], load)  # the newest is kept
    assert len(calls) == model_cache.MAX_MODELS + 1
    model_cache.shared(paths[0], load)  # the oldest was dropped
    assert len(calls) == model_cache.MAX_MODELS + 2


def test_the_head_runs_the_inception_model_of_inception_v3(built: Config) -> None:
    """In one process the head and InceptionV3 hold one InceptionV3 model (and the head's fused
    CNN is the custom CNN's), and each embeds a photo as it does alone."""
    photo = np.asarray(np.random.default_rng(0).integers(0, 255, (1, 299, 299, 3)), dtype=np.uint8)
    alone = {}
    for name in ("inception_v3", "inception_head"):
        model_cache.clear()
        alone[name] = get_extractor(name, built).embed_arrays(photo)
    model_cache.clear()
    base, head = get_extractor("inception_v3", built), get_extractor("inception_head", built)
    assert head.model is base.model
    if head.head.cnn_share > 0:
        assert head._cnn().model is get_extractor("custom_cnn", built).model
    np.testing.assert_array_equal(base.embed_arrays(photo), alone["inception_v3"])
    np.testing.assert_array_equal(head.embed_arrays(photo), alone["inception_head"])


def test_inception_is_read_from_its_saved_model_and_rebuilt_when_stale(
    built: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first load builds InceptionV3 and saves it whole (`inception_model_path`, with a
    manifest keyed by the weights); later starts read it and embed the same bits; new weights
    or a damaged file make it rebuilt."""
    import shutil

    import keras

    from pipelines.artifacts import is_fresh, manifest_path, read_manifest
    from pipelines.models.extractors import InceptionV3Extractor

    cfg = Config(artifacts_dir=tmp_path)
    cfg.models_dir.mkdir(parents=True)
    for path in (built.inception_weights_path, manifest_path(built.inception_weights_path)):
        shutil.copy2(path, cfg.models_dir / path.name)
    photo = np.asarray(np.random.default_rng(1).integers(0, 255, (2, 299, 299, 3)), np.uint8)
    builds: list[int] = []
    build = InceptionV3Extractor._build
    monkeypatch.setattr(
        InceptionV3Extractor, "_build", lambda self: builds.append(1) or build(self)
    )

    def embed() -> np.ndarray:
        model_cache.clear()
        return get_extractor("inception_v3", cfg).embed_arrays(photo)

    first = embed()
    saved = cfg.inception_model_path
    assert len(builds) == 1 and saved.is_file()
    assert read_manifest(saved)["inputs"] == {
        "weights": read_manifest(cfg.inception_weights_path)["sha256"]
    }
    np.testing.assert_array_equal(embed(), first)  # read, not built
    assert len(builds) == 1

    saved.write_bytes(saved.read_bytes()[:-100])  # damaged: rebuilt, the same bits again
    np.testing.assert_array_equal(embed(), first)
    assert len(builds) == 2 and is_fresh(
        saved, "inception_model", read_manifest(saved)["params"], read_manifest(saved)["inputs"]
    )

    # New weights (one kernel changed, as a re-conversion from other weights would): rebuilt
    # from them, and the photo's vectors follow the new weights.
    model = keras.saving.load_model(saved, compile=False)
    layer = next(layer for layer in model.layers if layer.get_weights())
    layer.set_weights([w * 1.5 for w in layer.get_weights()])
    model.save_weights(cfg.inception_weights_path)
    write_manifest(cfg.inception_weights_path, "weights", {"source": "fid"}, {})
    changed = embed()
    assert len(builds) == 3 and not np.array_equal(changed, first)
    np.testing.assert_array_equal(embed(), changed)
    assert len(builds) == 3
