"""`python -m pipelines status`: what the artifacts hold, whether they are one build, and the
drift since the models were trained (items added and removed, what the next `run` does, what
`run --retrain` costs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import artifacts, status
from pipelines.cli import main
from pipelines.config import Config
from pipelines.models import training_set
from tests.conftest import blobs, write_vector_artifacts


def _catalog(config: Config, ids: list[str], labels: list[str]) -> pd.DataFrame:
    table = pd.DataFrame(
        {"item_id": ids, "path": [f"{i}.jpg" for i in ids], "label": labels, "split": "train"}
    )
    artifacts.write_parquet(table, config.catalog_path)
    artifacts.write_manifest(config.catalog_path, "catalog", {}, {})
    return table


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """20 labelled items the models were trained on (a training set, and a custom CNN whose
    training took 300 s), then 3 added and 1 removed."""
    config = Config(artifacts_dir=tmp_path / "artifacts")
    vectors, groups = blobs((10, 10), d=8)
    labels = np.array(["hat", "shoes"])[groups]
    catalog = write_vector_artifacts(config, {"inception_v3": vectors}, labels, ["train"] * 20)
    training_set.ensure(config, catalog)
    config.models_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_manifest(config.custom_cnn_path, "train", {}, {}, {"train_seconds": 300.0})
    ids = [*catalog["item_id"][1:], "new0", "new1", "new2"]
    _catalog(config, ids, [*labels[1:], "hat", "hat", "shoes"])
    return config


def test_drift_counts_what_changed_since_training(config: Config) -> None:
    found = status.drift(config)
    assert (found["trained"], found["current"]) == (20, 22)
    assert (found["added"], found["removed"]) == (3, 1)
    assert found["retrain_due"] is False and found["retrain_seconds"] == 300.0
    assert status.drift_caption(found) == "Since training: **3** added, **1** removed"


def test_status_says_what_run_and_retrain_would_do(
    config: Config, capsys: pytest.CaptureFixture
) -> None:
    assert main(["status", "--artifacts", str(config.artifacts_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "Catalog: 22 items, built " + out[1].split("built ")[1]
    assert "Build: consistent (every artifact comes from this catalog)" in out
    assert any(line.startswith("Models trained ") and "on 20 items" in line for line in out)
    assert any(line.startswith("3 items added and 1 removed since the models") for line in out)
    assert any(line.startswith("The next `python -m pipelines run` keeps them") for line in out)
    assert out[-1] == (
        "`python -m pipelines run --retrain` retrains now: about 5.0 min of training (what the "
        "last training took), then every item is embedded again with the retrained models."
    )


def test_status_names_the_retrain_a_new_label_makes_due(
    config: Config, capsys: pytest.CaptureFixture
) -> None:
    table = pd.read_parquet(config.catalog_path)
    table.loc[table["item_id"] == "new2", "label"] = "scarf"
    _catalog(config, table["item_id"].tolist(), table["label"].tolist())
    found = status.drift(config)
    assert found["retrain_due"] and found["unseen_labels"] == ["scarf"]
    assert status.drift_caption(found).endswith(" · next run retrains")
    details = status.drift_details(found)
    assert "The category classifier cannot predict scarf (never seen in training)." in details
    assert (
        "The next `python -m pipelines run` retrains them: new label(s) in the train split: "
        "scarf." in details
    )


def test_status_json_and_a_folder_mid_update(config: Config, capsys: pytest.CaptureFixture) -> None:
    # Embeddings recorded as made from another catalog: the folder is between two builds.
    path = config.embeddings_path("inception_v3")
    artifacts.write_manifest(path, "embed", {}, {"catalog": "another"})
    assert main(["status", "--artifacts", str(config.artifacts_dir), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["items"] == 22 and found["drift"]["added"] == 3
    assert found["problem"] == "embeddings/inception_v3.npy was built from another catalog"
    lines = status.report_lines(found)
    assert any(line.startswith("Build: mid-update — embeddings/") for line in lines)


def test_status_before_anything_is_built(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["status", "--artifacts", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Artifacts: {tmp_path / 'empty'} (not built yet: run `python -m")
