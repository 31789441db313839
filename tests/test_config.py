"""Settings: every one is checked with one clear line, from the CLI as from Python, and the
engine imports without Streamlit."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.config import REPO_ROOT, Config
from pipelines.errors import LookalikeError

# A value each setting must refuse, as typed after --set NAME=. Every field of Config has at
# least one, so a new setting without a check fails here.
BAD_VALUES: dict[str, list[str]] = {
    "artifacts_dir": [],  # any path is a valid place to write; see the CLI test below
    "source": ["/nonexistent/catalog"],
    "source_format": ["zip", ""],
    "max_pixels": ["0", "-5", "many", "1.5"],
    "thumb_size": ["8", "0", "x"],
    "batch_size": ["0", "-1", "two"],
    "chunk_size": ["0", "1e3"],
    "inception_weights": ["torch", ""],
    "ray_actors": ["-1", "many", "1.5"],
    "ray_actor_cpus": ["0", "-2", "half"],
    "ray_actor_gpus": ["0", "-1", "nan", "inf", "65", "one"],
    "ray_gpu_batch_size": ["0", "big"],
    "cnn_image_size": ["16", "0", "big"],
    "cnn_embedding_dim": ["1", "0"],
    "cnn_epochs": ["0", "-3"],
    "cnn_patience": ["-1", "soon"],
    "cnn_learning_rate": ["0", "1", "-0.1", "nan", "inf", "fast"],
    "cnn_time_budget_s": ["0", "-1", "nan", "inf", "forever"],
    "cnn_appearance_share": ["-0.1", "1.5", "nan", "half"],
    "head_loss": ["triplet_hard", ""],
    "head_hidden": ["0", "wide"],
    "head_dim": ["1", "0"],
    "head_epochs": ["0", "-1"],
    "head_learning_rate": ["0", "1", "nan"],
    "head_raw_share": ["-0.1", "1.5", "nan", "half"],
    "cluster_search_width": ["0", "two"],
    "category_cover": ["-0.1", "1.01", "nan"],
    "category_exact_below": ["-1", "2", "nan"],
    "eval_copy_queries": ["-1", "all"],
    "head_cnn_share": ["-0.5", "0.9", "nan"],
    "train_views": ["maybe", "2"],
    "garment_crop": ["ture", ""],
    "map_pca_dims": ["1", "0"],
    "map_neighbors": ["1", "0"],
    "map_min_dist": ["-0.1", "1.5", "nan", "close"],
    "n_clusters": ["0", "-2"],
    "map_full_fit_max_items": ["3", "0", "many"],
    "map_fit_sample": ["3", "-1", "half"],
    "kmeans_full_max_items": ["0", "1e6"],
    "kmeans_sample": ["0", "all"],
    "max_k": ["0", "lots"],
    "health_min_similarity": ["-1", "1", "nan", "high"],
    "health_max_pairs": ["0", "many"],
    "health_neighbors": ["0", "-1"],
    "mosaic_tile": ["4", "0", "big"],
    "mosaic_tiled_min_items": ["0", "-5", "many"],
    "mosaic_deep_cell": ["4", "24", "300"],
    "eval_ks": ["0", "1,x", "", "-5,10"],
    "seed": ["-1", "random"],
}


def test_every_setting_has_bad_values_listed() -> None:
    assert set(BAD_VALUES) == {f.name for f in dataclasses.fields(Config)}


CASES = [(name, value) for name, values in BAD_VALUES.items() for value in values]


@pytest.mark.parametrize(("name", "value"), CASES)
def test_a_bad_setting_is_one_line_from_the_cli(name, value, tmp_path, capsys) -> None:
    code = cli.main(["catalog", "--artifacts", str(tmp_path), "--set", f"{name}={value}"])
    err = capsys.readouterr().err
    assert code == 2, f"--set {name}={value!r} was accepted"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert name in lines[0] or "catalog" in lines[0], lines[0]
    assert "Traceback" not in err


def test_python_callers_get_the_same_checks() -> None:
    with pytest.raises(LookalikeError, match="cnn_time_budget_s must be a number above 0"):
        Config(cnn_time_budget_s=0)
    with pytest.raises(LookalikeError, match="batch_size must be a whole number >= 1, got True"):
        Config(batch_size=True)
    with pytest.raises(LookalikeError, match="unknown setting"):
        Config().replace(batch=3)
    assert Config(cnn_time_budget_s=5.0).cnn_time_budget_s == 5.0


def test_paths_are_spelled_once_on_config(tmp_path: Path) -> None:
    fid = Config(artifacts_dir=tmp_path)
    keras = fid.replace(inception_weights="keras")
    assert fid.inception_weights_path != keras.inception_weights_path
    assert keras.inception_weights_path.name.endswith(".weights.h5")
    assert fid.centroids_path("x").parent == fid.clusters_path("x").parent
    for path in (fid.custom_cnn_path, fid.per_class_path, fid.categories_path, fid.bench_dir):
        assert path.is_relative_to(tmp_path)


def test_every_engine_module_imports_without_streamlit() -> None:
    modules = sorted(
        ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts)
        for p in (REPO_ROOT / "pipelines").rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'streamlit' or name.startswith('streamlit.'):\n"
        "            raise ImportError('streamlit is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "assert not any(m == 'streamlit' or m.startswith('streamlit.') for m in sys.modules)\n"
        "print(len(" + repr(modules) + "))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) == len(modules) > 20
