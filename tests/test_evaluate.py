"""Retrieval metrics on hand-computable cases, the query/gallery protocol, and the stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.artifacts import read_manifest, write_manifest, write_parquet
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.explore.clusters import run_clusters
from pipelines.quality.evaluate import evaluate_index, format_report, make_protocol, run_evaluate
from pipelines.quality.metrics import (
    average_precision,
    latency_stats,
    per_class_precision,
    precision_at,
    recall_at,
)
from pipelines.search.index import Index
from tests.conftest import blobs as conftest_blobs
from tests.conftest import unit, write_vector_artifacts


def blobs(n_clusters: int = 4, per: int = 12, d: int = 24, noise: float = 0.05, seed: int = 0):
    """`n_clusters` groups of `per` unit vectors (see tests.conftest.blobs)."""
    return conftest_blobs((per,) * n_clusters, d, noise, seed)


# --- metrics by hand ---
RELEVANT = np.array(
    [
        [1, 0, 1, 0],  # hits at ranks 1 and 3 of 2 relevant
        [0, 1, 0, 0],  # one hit at rank 2 of 3 relevant
    ],
    dtype=bool,
)
N_RELEVANT = np.array([2, 3])


def test_precision_and_recall_by_hand():
    np.testing.assert_allclose(precision_at(RELEVANT, 1), [1.0, 0.0])
    np.testing.assert_allclose(precision_at(RELEVANT, 4), [0.5, 0.25])
    np.testing.assert_allclose(recall_at(RELEVANT, N_RELEVANT, 2), [0.5, 1 / 3])
    np.testing.assert_allclose(recall_at(RELEVANT, N_RELEVANT, 4), [1.0, 1 / 3])


def test_average_precision_by_hand():
    # AP = (1/1 + 2/3) / min(4, 2) and (1/2) / min(4, 3).
    np.testing.assert_allclose(
        average_precision(RELEVANT, N_RELEVANT, k=4), [(1 + 2 / 3) / 2, 0.5 / 3]
    )
    # A perfect top-k scores 1.0 even when the class is smaller than k.
    perfect = np.array([[1, 1, 0, 0]], dtype=bool)
    assert average_precision(perfect, np.array([2]), k=4)[0] == 1.0


def test_per_class_precision_by_hand():
    table = per_class_precision(RELEVANT, ["shirt", "dress"], k=4)
    assert table.to_dict("records") == [
        {"label": "dress", "n_queries": 1, "p@4": 0.25},
        {"label": "shirt", "n_queries": 1, "p@4": 0.5},
    ]


def test_latency_stats():
    stats = latency_stats(np.arange(1, 101) / 1000.0)  # 1..100 ms
    assert stats["latency_ms_median"] == pytest.approx(50.5)
    assert stats["latency_ms_p95"] == pytest.approx(95.05)


# --- protocol ---
def catalog_frame(labels, splits) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame(
        {
            "item_id": [f"item{i:03d}" for i in range(n)],
            "path": [f"img/{i}.jpg" for i in range(n)],
            "label": pd.Series(labels, dtype=object),
            "split": pd.Series(splits, dtype=object),
            "width": 64,
            "height": 64,
        }
    )


def test_protocol_uses_the_test_split_against_the_rest():
    catalog = catalog_frame(
        ["a", "b", "a", None, "b"], ["train", "test", "validation", "test", None]
    )
    protocol = make_protocol(catalog)
    assert not protocol.leave_one_out
    assert protocol.queries.tolist() == [1]  # the unlabelled test item is not a query
    assert protocol.gallery.tolist() == [0, 2, 4]


def test_protocol_without_splits_is_leave_one_out():
    protocol = make_protocol(catalog_frame(["a", "b", None], [None, None, None]))
    assert protocol.leave_one_out
    assert protocol.queries.tolist() == [0, 1] and protocol.gallery.tolist() == [0, 1, 2]


def test_protocol_without_labels_is_none():
    assert make_protocol(catalog_frame([None, None], ["train", "test"])) is None


def test_evaluate_index_is_perfect_on_separated_clusters():
    vectors, labels = blobs()
    names = np.array(list("abcd"), dtype=object)[labels]
    index = Index(vectors, [str(i) for i in range(len(vectors))], clusters=labels, categories=names)
    splits = np.where(np.arange(len(vectors)) % 4 == 0, "test", "train")
    for protocol in (
        make_protocol(catalog_frame(names, splits)),
        make_protocol(catalog_frame(names, [None] * len(names))),
    ):
        for strategy in ("exact", "cluster", "category"):
            metrics, per_class = evaluate_index(index, names, protocol, strategy, ks=(1, 5, 20))
            assert metrics["p@1"] == metrics["p@5"] == metrics["map@10"] == 1.0
            # Every relevant item is found; a class of 9 (or 11 others) caps P@20 below 1.
            assert metrics["r@20"] == 1.0
            relevant = 11 if protocol.leave_one_out else 9
            assert metrics["p@20"] == pytest.approx(relevant / 20)
            assert np.isfinite(metrics["latency_ms_p95"]) and metrics["latency_ms_median"] > 0
            assert set(per_class["label"]) == set("abcd")


# --- the stage ---
def write_inputs(config: Config, labelled: bool = True) -> pd.DataFrame:
    vectors, labels = blobs()
    n = len(vectors)
    names = np.array(list("abcd"), dtype=object)[labels] if labelled else None
    splits = np.where(
        np.arange(n) % 4 == 0, "test", np.where(np.arange(n) % 4 == 1, "validation", "train")
    )
    embeddings = {"inception_v3": vectors, "custom_cnn": unit(vectors[:, :8])}
    return write_vector_artifacts(
        config, embeddings, labels=names, splits=splits if labelled else None
    )


def test_run_evaluate_writes_metrics_and_skips_missing_strategies(tmp_path):
    config = Config(artifacts_dir=tmp_path, n_clusters=4)
    catalog = write_inputs(config)
    run_clusters(config, ["inception_v3"])  # custom_cnn has no clusters: that strategy is skipped

    metrics = run_evaluate(config).details
    assert metrics["labels"] is True and "12 test queries" in metrics["protocol"]
    exact = metrics["results"]["inception_v3"]["exact"]
    assert {"p@1", "p@5", "p@10", "p@20", "r@20", "map@10", "latency_ms_p95"} <= set(exact)
    assert exact["n_queries"] == 12 and exact["n_gallery"] == 36
    # 9 gallery items per class: all found in the top 10, so P@10 = 0.9 and AP = 1.
    assert exact["p@5"] == exact["map@10"] == exact["r@10"] == 1.0
    assert exact["p@10"] == pytest.approx(0.9)
    assert metrics["results"]["inception_v3"]["cluster"]["map@10"] == 1.0
    assert "python -m pipelines clusters" in metrics["results"]["custom_cnn"]["cluster"]["skipped"]
    assert (
        "categories.parquet is missing" in metrics["results"]["custom_cnn"]["category"]["skipped"]
    )
    assert json.loads(config.metrics_path.read_text()) == metrics
    assert read_manifest(config.metrics_path)["stage"] == "evaluate"
    table = pd.read_parquet(config.per_class_path)
    assert set(table.columns) == {"extractor", "strategy", "label", "n_queries", "p@10"}
    assert len(table) == 3 * 4  # inception exact + cluster, custom_cnn exact; 4 classes each

    report = format_report(metrics)
    assert "inception_v3" in report and "0.900" in report and "—" in report
    assert "custom_cnn/category skipped" in report

    # Nothing changed: nothing is recomputed.
    before = config.metrics_path.stat().st_mtime_ns
    again = run_evaluate(config)
    assert again.skipped and again.details == metrics
    assert config.metrics_path.stat().st_mtime_ns == before

    # A categories file appears: the metrics are stale and the category strategy now runs.
    predicted = pd.DataFrame(
        {"item_id": catalog["item_id"], "predicted": catalog["label"], "confidence": 0.9}
    )
    write_parquet(predicted, config.categories_path)
    write_manifest(config.categories_path, "embed", {}, {})
    metrics = run_evaluate(config, ["inception_v3"], ["category"]).details
    assert metrics["results"]["inception_v3"]["category"]["map@10"] == 1.0


def test_run_evaluate_on_an_unlabelled_catalog_says_metrics_need_labels(tmp_path):
    config = Config(artifacts_dir=tmp_path)
    write_inputs(config, labelled=False)
    metrics = run_evaluate(config).details
    assert metrics["labels"] is False and metrics["results"] == {}
    assert "metrics need labels" in metrics["message"]
    assert format_report(metrics).startswith("metrics need labels")
    assert config.per_class_path.exists()


def test_run_evaluate_rejects_an_unknown_strategy(tmp_path):
    config = Config(artifacts_dir=tmp_path)
    write_inputs(config)
    with pytest.raises(LookalikeError, match="unknown strategy 'fuzzy'; valid: exact, cluster"):
        run_evaluate(config, strategies=["fuzzy"])


def test_latency_stats_are_milliseconds_at_the_median_and_95th_percentile():
    seconds = [0.001 * i for i in range(1, 101)]  # 1 ms .. 100 ms
    stats = latency_stats(seconds)
    assert stats["latency_ms_median"] == pytest.approx(50.5)
    assert stats["latency_ms_p95"] == pytest.approx(95.05)
    assert np.isnan(latency_stats([])["latency_ms_median"])
