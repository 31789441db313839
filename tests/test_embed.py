"""The embedding stage: unit rows aligned with the catalog, live equals batch, resume after kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines import artifacts
from pipelines.config import REPO_ROOT, Config
from pipelines.data.catalog import load_catalog, run_catalog
from pipelines.embedding.embed import run_embed
from pipelines.errors import LookalikeError
from pipelines.models.extractors import InceptionV3Extractor, get_extractor
from tests.conftest import copy_subset


@pytest.fixture(scope="session")
def inception_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Google's weights converted once per test session; tests link them into their artifacts."""
    config = Config(artifacts_dir=tmp_path_factory.mktemp("inception"))
    InceptionV3Extractor(config).ensure_weights()
    return config.models_dir


def link_models(models: Path, artifacts_dir: Path) -> None:
    """Share the converted weights (87 MB) instead of converting them again."""
    target = artifacts_dir / "models"
    target.mkdir(parents=True, exist_ok=True)
    for path in models.iterdir():
        if not (target / path.name).exists():
            (target / path.name).symlink_to(path)


@pytest.fixture
def small_catalog(tmp_path: Path, inception_models: Path) -> Config:
    """A 24-photo real catalog (4 classes) with the converted weights in place."""
    source = copy_subset(tmp_path / "src", {"dress": 2, "hat": 2, "shoes": 2, "pants": 2})
    config = Config(artifacts_dir=tmp_path / "art", source=source, batch_size=8, chunk_size=8)
    run_catalog(config, progress=False)
    link_models(inception_models, config.artifacts_dir)
    return config


def test_inception_embeddings_are_unit_rows_aligned_with_the_catalog(small_catalog: Config) -> None:
    config = small_catalog
    summary = run_embed(config, "inception_v3", progress=False)
    emb = np.load(config.embeddings_path("inception_v3"))
    catalog = load_catalog(config)
    assert emb.shape == (len(catalog), 2048) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert summary.details["embedded"] == len(catalog)
    manifest = artifacts.read_manifest(config.embeddings_path("inception_v3"))
    assert manifest["params"]["scale"] == "x/128-1" and manifest["inputs"]["weights"]
    # Same-class photos are closer than other-class ones on average (real features).
    labels = catalog["label"].to_numpy()
    sims = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    assert sims[same & off_diagonal].mean() > sims[~same].mean() + 0.05

    # Live path: a catalog photo's bytes, as an upload, give its stored row.
    live = get_extractor("inception_v3", config).embed_images(
        [Path(catalog["path"][3]).read_bytes()]
    )
    assert float(live[0] @ emb[3]) >= 0.9999

    # A second run does nothing; a changed catalog makes the embeddings stale.
    assert run_embed(config, "inception_v3", progress=False).skipped
    (Path(catalog["path"][0])).unlink()
    run_catalog(config, progress=False)
    again = run_embed(config, "inception_v3", progress=False)
    assert not again.skipped and again.rows == len(catalog) - 1


def test_resume_after_kill_recomputes_nothing_finished(small_catalog: Config) -> None:
    config = small_catalog
    parts = config.embeddings_path("inception_v3").parent
    cmd = [
        sys.executable, "-m", "pipelines", "embed", "--extractor", "inception_v3",
        "--artifacts", str(config.artifacts_dir), "--set", "batch_size=2", "--set", "chunk_size=2",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    chunks: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        chunks = sorted(parts.glob(".inception_v3.parts/*/*.npy"))
        if len(chunks) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    assert not config.embeddings_path("inception_v3").exists()  # nothing that looks complete
    chunks = sorted(parts.glob(".inception_v3.parts/*/*.npy"))
    finished = {p: p.stat().st_mtime_ns for p in chunks}

    resumed = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming, {len(finished)} of 12 chunks already done" in resumed.stdout
    emb = np.load(config.embeddings_path("inception_v3"))
    n = len(load_catalog(config))
    assert emb.shape == (n, 2048)
    assert not list(parts.glob(".inception_v3.parts/*"))  # parts cleaned up

    # No missing or repeated rows: identical to embedding every image afresh, in order.
    fresh = get_extractor("inception_v3", config).embed_images(list(load_catalog(config)["path"]))
    np.testing.assert_allclose(emb, fresh, atol=2e-5)
    assert len({row.tobytes() for row in emb}) == n
    manifest = artifacts.read_manifest(config.embeddings_path("inception_v3"))
    assert manifest["run"]["embedded"] == n - 2 * len(finished)  # finished chunks not redone


def test_unknown_extractor_and_missing_catalog(tmp_path: Path) -> None:
    config = Config(artifacts_dir=tmp_path)
    with pytest.raises(
        LookalikeError, match="unknown extractor 'vgg'; valid extractors: custom_cnn"
    ):
        get_extractor("vgg", config)
    with pytest.raises(LookalikeError, match=r"catalog.parquet is missing — run `python -m pipe"):
        run_embed(config, "inception_v3", progress=False)


def test_wrong_input_shape_is_refused(tmp_path: Path) -> None:
    ext = get_extractor("inception_v3", Config(artifacts_dir=tmp_path))
    with pytest.raises(LookalikeError, match=r"takes \(n, 299, 299, 3\) uint8 images"):
        ext.embed_arrays(np.zeros((1, 128, 128, 3), np.uint8))


def test_custom_cnn_input_size_follows_the_saved_model(tmp_path: Path) -> None:
    # A model trained at 64 px must get 64 px pixels even after cnn_image_size changed.
    config = Config(artifacts_dir=tmp_path, cnn_image_size=96)
    model = config.models_dir / "custom_cnn.keras"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model")
    assert get_extractor("custom_cnn", config).input_size == 96  # no manifest: the setting
    artifacts.write_manifest(model, "train", {}, {}, extra={"image_size": 64})
    assert get_extractor("custom_cnn", config).input_size == 64
