"""The quick benchmark on a tiny real catalog: every section reports numbers or why it skipped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipelines.bench import SECTIONS, results_path, run_bench
from pipelines.catalog import run_catalog
from pipelines.config import Config
from tests.conftest import copy_subset


def _numbers(obj: object) -> list[float]:
    """Every int/float inside a JSON-like object (bools excluded)."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [float(obj)]
    if isinstance(obj, dict):
        return [v for value in obj.values() for v in _numbers(value)]
    if isinstance(obj, list):
        return [v for value in obj for v in _numbers(value)]
    return []


@pytest.mark.slow
def test_quick_bench_reports_every_section(tmp_path: Path, artifacts_dir: Path) -> None:
    source = copy_subset(tmp_path / "photos", {"dress": 2, "shirt": 2}, splits=("train",))
    config = Config(artifacts_dir=artifacts_dir, source=source)
    run_catalog(config, progress=False)

    results = run_bench(config, quick=True)

    assert results["quick"] is True
    assert results["machine"]["cores"] >= 1 and results["machine"]["ram_gib"] > 0
    assert set(results["sections"]) == set(SECTIONS)
    for name, section in results["sections"].items():
        assert "error" not in section, f"{name}: {section.get('error')}"
        if "skipped" in section:
            assert isinstance(section["skipped"], str) and section["skipped"], name
            continue
        rows = section["rows"]
        assert rows, f"{name} has neither rows nor a skipped reason"
        for row in rows:
            # A row is numbers, or says why it has none.
            assert _numbers(row) or row.get("skipped"), f"{name}: {row}"
            assert "error" not in row, f"{name}: {row['error']}"

    # Exact search: the ratios a reader compares are positive finite numbers.
    exact = results["sections"]["exact_search"]["rows"]
    assert exact
    for row in exact:
        for field in (
            "single_p95_over_floor",
            "speedup_vs_sklearn_single",
            "speedup_vs_sklearn_batch64",
            "floor_ms",
            "single_p95_ms",
        ):
            value = row[field]
            assert isinstance(value, float | int) and value > 0 and math.isfinite(value), field
        assert row["top10_agreement_with_sklearn"] >= 0.9

    # The embedding section ran the real stage path on the real photos.
    embedding = results["sections"]["embedding"]["rows"]
    inception = next(r for r in embedding if r["extractor"] == "inception_v3")
    assert inception["stream_img_s"] > 0 and inception["ratio"] > 0
    custom = next(r for r in embedding if r["extractor"] == "custom_cnn")
    assert "train" in custom["skipped"]  # no model in a fresh artifacts folder

    # ANN rows carry recall in [0, 1].
    for row in results["sections"]["ann"]["rows"]:
        assert 0.0 <= row["recall@10"] <= 1.0

    # The app rendered under AppTest and re-rendered after the sidebar changes; the upload
    # round trip needs embeddings, which this catalog-only folder lacks, and says so.
    app = results["sections"]["app"]
    for row in app["rows"]:
        assert row["exceptions"] == 0 and row["k_rerender_median_ms"] > 0, row
    assert "python -m pipelines run" in app["upload"]["skipped"]

    # results.json round-trips to the returned numbers.
    saved = json.loads(results_path(config).read_text())
    assert saved["sections"]["exact_search"]["rows"] == json.loads(json.dumps(exact))
    assert set(saved["sections"]) == set(SECTIONS)
    assert saved["seconds"] == results["seconds"]


def test_cli_bench_passes_quick_and_the_artifacts_folder(tmp_path, monkeypatch):
    from pipelines import bench, cli

    calls = []
    monkeypatch.setattr(bench, "run_bench", lambda config, quick: calls.append((config, quick)))
    assert cli.main(["bench", "--quick", "--artifacts", str(tmp_path)]) == 0
    ((config, quick),) = calls
    assert quick is True and config.artifacts_dir == tmp_path
    assert results_path(config) == tmp_path / "bench" / "results.json"
