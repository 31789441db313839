"""The retrain policy (pipelines/models/training_set.py): the trained parts are kept while a
catalog changes a little, and renewed when asked, when a quarter of the train split is new or
gone, or when a label appears in the train split that training never saw."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import Config
from pipelines.models.training_set import (
    RETRAIN_CHANGED_SHARE,
    drift,
    ensure,
    in_training_set,
    read_snapshot,
)


def _catalog(n_train: int, start: int = 0, label_of=lambda i: "ab"[i % 2], split="train"):
    ids = [f"item{i:04d}" for i in range(start, start + n_train)]
    return pd.DataFrame(
        {
            "item_id": ids,
            "label": [label_of(i) for i in range(start, start + n_train)],
            "split": split,
        }
    )


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = Config(artifacts_dir=tmp_path)
    config.models_dir.mkdir(parents=True)
    return config


def test_the_first_training_set_is_the_whole_catalog(config: Config) -> None:
    catalog = _catalog(100)
    assert drift(config, catalog).retrain_due  # nothing trained yet
    content = ensure(config, catalog)
    assert read_snapshot(config)["item_id"].tolist() == catalog["item_id"].tolist()
    assert ensure(config, catalog) == content  # unchanged: kept
    assert in_training_set(config, catalog).all()


def test_a_few_new_items_keep_it_a_quarter_renews_it(config: Config) -> None:
    first = ensure(config, _catalog(100))
    few = pd.concat([_catalog(100), _catalog(20, start=100)], ignore_index=True)
    d = drift(config, few)
    assert (d.added, d.removed, d.changed_share, d.retrain_due) == (
        20,
        0,
        round(20 / 120, 4),
        False,
    )
    assert ensure(config, few) == first  # the models stay as they are
    assert in_training_set(config, few).sum() == 100  # the new items are not learnt from yet

    many = pd.concat([_catalog(100), _catalog(40, start=100)], ignore_index=True)
    d = drift(config, many)
    assert RETRAIN_CHANGED_SHARE < 40 / 140 and d.retrain_due and "changed" in d.reason
    assert ensure(config, many) != first
    assert in_training_set(config, many).all()


def test_removed_train_items_count_against_the_training_set(config: Config) -> None:
    first = ensure(config, _catalog(100))
    assert not drift(config, _catalog(80, start=20)).retrain_due  # 20 % gone
    gone = _catalog(70, start=30)  # 30 % of the training set left the catalog
    d = drift(config, gone)
    assert (d.removed, d.retrain_due) == (30, True)
    assert ensure(config, gone) != first


def test_new_items_outside_the_train_split_never_retrain(config: Config) -> None:
    first = ensure(config, _catalog(100))
    tests = _catalog(200, start=100, split="test")
    catalog = pd.concat([_catalog(100), tests], ignore_index=True)
    d = drift(config, catalog)
    assert (d.added, d.changed_share, d.retrain_due) == (200, 0.0, False)
    assert ensure(config, catalog) == first


def test_a_label_training_never_saw(config: Config) -> None:
    first = ensure(config, _catalog(100))
    # In the test split: noted (the classifier cannot predict it), nothing retrained.
    shirts = _catalog(3, start=100, label_of=lambda i: "shirt", split="test")
    catalog = pd.concat([_catalog(100), shirts], ignore_index=True)
    d = drift(config, catalog)
    assert d.unseen_labels == ("shirt",) and not d.retrain_due
    assert ensure(config, catalog) == first
    # In the train split: renewed, so the classifier and the head learn it.
    train_shirts = _catalog(3, start=103, label_of=lambda i: "shirt")
    catalog = pd.concat([catalog, train_shirts], ignore_index=True)
    d = drift(config, catalog)
    assert d.retrain_due and "shirt" in d.reason
    assert ensure(config, catalog) != first


def test_retrain_renews_whatever_the_drift(config: Config) -> None:
    first = ensure(config, _catalog(100))
    catalog = pd.concat([_catalog(100), _catalog(1, start=100)], ignore_index=True)
    assert not drift(config, catalog).retrain_due
    assert ensure(config, catalog, retrain=True) != first
    assert drift(config, catalog).added == 0
