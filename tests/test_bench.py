"""The benchmark: its floor is the fastest pass, exact search agrees with scikit-learn, its
numbers match independent computations, and the quick run covers every section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import artifacts, commands
from pipelines.bench import SECTIONS, check_sections, results_path, run_bench
from pipelines.bench.common import interleaved, jsonable
from pipelines.bench.exact_search import (
    OURS_BATCH,
    OURS_SINGLE,
    exact_case,
    floor_of,
    matrix_passes,
    tie_aware_agreement,
)
from pipelines.bench.memory import bytes_per_item, pixel_cache_cost
from pipelines.config import Config
from pipelines.data.catalog import run_catalog
from pipelines.errors import LookalikeError
from tests.conftest import copy_subset

# Each ratio to the floor and the timing it divides.
RATIOS = {
    "single_median_over_floor": "single_median_ms",
    "single_p95_over_floor": "single_p95_ms",
    "batch64_over_floor": "batch64_median_ms",
}


def check_exact_row(row: dict) -> None:
    """What every exact-search row must satisfy, recomputed from its own raw numbers."""
    passes = row["passes_median_ms"]
    assert {OURS_SINGLE, OURS_BATCH, "gemv with the query"} <= set(passes)
    assert row["floor_ms"] == min(passes.values())
    assert passes[row["floor_method"]] == row["floor_ms"]
    # Each ratio from its own numerator over the floor (a ratio >= 1 is true by construction:
    # the floor is the fastest pass, ours among them), each timing from its own pass.
    assert row["single_median_ms"] == passes[OURS_SINGLE]
    assert row["batch64_median_ms"] == passes[OURS_BATCH]
    for ratio, numerator in RATIOS.items():
        assert row[ratio] == round(row[numerator] / row["floor_ms"], 3), ratio
    best_gemv = min(passes["gemv with the query"], passes["gemv with the query, 1 BLAS thread"])
    assert row["single_over_best_gemv"] == round(row["single_median_ms"] / best_gemv, 3)
    assert row["matrix_mb"] == round(row["n"] * row["d"] * 4 / 2**20, 1)
    gb_s = row["n"] * row["d"] * 4 / (row["floor_ms"] / 1e3) / 1e9
    assert row["floor_gb_s"] == round(gb_s, 2)
    sk_speed = row["sklearn_single_median_ms"] / row["single_median_ms"]
    assert row["speedup_vs_sklearn_single"] == round(sk_speed, 2)
    sk_batch = row["sklearn_batch64_median_ms"] / row["batch64_median_ms"]
    assert row["speedup_vs_sklearn_batch64"] == round(sk_batch, 2)
    # Exact search is exact: the same top 10 as scikit-learn, similarities to float precision.
    assert row["top10_agreement_with_sklearn"] == 1.0
    assert row["max_similarity_diff_vs_sklearn"] < 1e-4


def test_floor_is_the_fastest_pass_and_names_it() -> None:
    assert floor_of({"sum": 3.0, "gemv": 1.5, "ours": 1.6}) == ("gemv", 1.5)
    assert floor_of({"ours": 0.9, "gemv": 1.0}) == ("ours", 0.9)


def test_every_pass_reads_the_whole_matrix() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((301, 17)).astype(np.float32)
    query = rng.standard_normal(17).astype(np.float32)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        out = {name: fn() for name, fn in matrix_passes(matrix, query, pool).items()}
    np.testing.assert_allclose(out["gemv with the query"], matrix @ query, rtol=1e-5)
    np.testing.assert_allclose(out["gemv with the query, 1 BLAS thread"], matrix @ query, rtol=1e-5)
    ones = np.full(17, 1 / np.sqrt(17), np.float32)
    np.testing.assert_allclose(out["gemv with a constant vector"], matrix @ ones, rtol=1e-5)
    np.testing.assert_allclose(out["sum, 1 thread"], matrix.sum(), rtol=1e-4)
    np.testing.assert_allclose(sum(out["sum, 2 threads"]), matrix.sum(), rtol=1e-4)
    assert max(out["max, 2 threads"]) == matrix.max()


def test_agreement_counts_ties_but_not_misses() -> None:
    ours = (np.array([[0, 1, 2]]), np.array([[0.9, 0.8, 0.7]], np.float32))
    assert tie_aware_agreement(ours, np.array([[0, 1, 2]]), ours[1]) == 1.0
    # Row 5 has the same similarity as our third: a tie, which counts as agreeing.
    assert tie_aware_agreement(ours, np.array([[0, 1, 5]]), ours[1]) == 1.0
    # Row 5 with a higher similarity than anything we returned is a miss.
    missed = np.array([[0.95, 0.9, 0.8]], np.float32)
    assert tie_aware_agreement(ours, np.array([[5, 0, 1]]), missed) == pytest.approx(2 / 3)


def test_interleaved_times_every_function_the_same_number_of_times() -> None:
    calls = {"a": 0, "b": 0}

    def count(name: str):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    times = interleaved({"a": count("a"), "b": count("b")}, repeats=5, warmup=2)
    assert calls == {"a": 7, "b": 7} and {len(t) for t in times.values()} == {5}


def test_exact_case_on_planted_vectors() -> None:
    row = exact_case("planted", {"kind": "clustered", "n": 3000, "d": 64, "seed": 2}, quick=True)
    assert (row["n"], row["d"], row["data"]) == (3000, 64, "clustered")
    check_exact_row(row)


def test_sections_are_checked_and_a_subset_writes_its_own_file(tmp_path: Path) -> None:
    config = Config(artifacts_dir=tmp_path)
    assert check_sections(None) == SECTIONS
    assert check_sections(["memory", "embedding"]) == ("embedding", "memory")
    with pytest.raises(LookalikeError, match="unknown bench section 'gpu'; valid sections: emb"):
        check_sections(["gpu"])
    assert results_path(config) == config.bench_dir / "results.json"
    assert results_path(config, ["exact_search"]) == config.bench_dir / "results.exact_search.json"


def test_bytes_per_item_matches_the_files_on_disk(tmp_path: Path) -> None:
    config = Config(artifacts_dir=tmp_path, cnn_image_size=32)
    artifacts.write_parquet(pd.DataFrame({"item_id": list("abcd")}), config.catalog_path)
    artifacts.write_manifest(config.catalog_path, "catalog", {}, {}, extra={"rows": 4})
    artifacts.write_npy(np.zeros((4, 3), np.float32), config.embeddings_path("x"))
    (config.bench_dir).mkdir()
    (config.bench_dir / "results.json").write_text("x" * 10_000)  # not an artifact
    cache = config.pixel_cache_path(32)
    artifacts.write_npy(np.zeros((4, 32, 32, 3), np.uint8), cache)

    found = bytes_per_item(config)
    sizes = [
        p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and "bench" not in p.parts
    ]
    assert found["rows"] == 4 and found["total_bytes"] == sum(sizes)
    assert found["by_artifact_per_item"]["cache"] == cache.stat().st_size / 4
    cost = pixel_cache_cost(config)
    assert cost["exists"] and cost["per_item_bytes"] == cache.stat().st_size / 4
    assert cost["per_item_bytes_expected"] == 32 * 32 * 3


@pytest.mark.slow
def test_quick_bench_reports_every_section(tmp_path: Path, artifacts_dir: Path) -> None:
    source = copy_subset(tmp_path / "photos", {"dress": 2, "shirt": 2}, splits=("train",))
    config = Config(artifacts_dir=artifacts_dir, source=source)
    run_catalog(config, progress=False)

    results = run_bench(config, quick=True)

    assert set(results["sections"]) == set(SECTIONS)
    for name, section in results["sections"].items():
        assert "error" not in section, f"{name}: {section.get('error')}"
        assert all("error" not in row for row in section.get("rows", [])), name

    exact = results["sections"]["exact_search"]["rows"]
    assert [(r["n"], r["d"]) for r in exact] == [(5000, 2048), (5000, 128)]
    for row in exact:
        check_exact_row(row)

    embedding = {r["extractor"]: r for r in results["sections"]["embedding"]["rows"]}
    assert embedding["inception_v3"]["images"] == 4  # the catalog's 4 photos, one batch
    ratio = embedding["inception_v3"]["stream_img_s"] / embedding["inception_v3"]["memory_img_s"]
    assert embedding["inception_v3"]["ratio"] == pytest.approx(ratio, abs=1e-3)
    assert commands.TRAIN in embedding["custom_cnn"]["skipped"]  # no model in a fresh folder

    # IVF probing more lists, or re-ranking more PCA candidates exactly, sees a superset of
    # candidates: recall can only grow (the quick 10k case is not tuned for high recall).
    ann = results["sections"]["ann"]["rows"]
    narrow = [r for r in ann if r["case"].endswith("x 128 clustered")]
    assert [r["nprobe"] for r in narrow] == sorted(r["nprobe"] for r in narrow)
    assert np.all(np.diff([r["recall@10"] for r in narrow]) >= 0) and narrow[-1]["recall@10"] > 0.5
    rerank = {r["rerank"]: r["recall@10"] for r in ann if r.get("rerank")}
    assert rerank[max(rerank)] >= rerank[1]

    # The app's sidebar widgets were found by their labels and re-rendered without errors;
    # the upload round trip needs embeddings, which this catalog-only folder lacks.
    app = results["sections"]["app"]
    for row in app["rows"]:
        assert row["widget"] == "sidebar k slider, extractor selectbox", row
        assert row["exceptions"] == 0 and row["exceptions_after"] == 0, row
    assert commands.RUN in app["upload"]["skipped"]

    memory = results["sections"]["memory"]
    assert memory["bytes_per_item"]["rows"] == 4
    assert memory["pixel_cache"]["per_item_bytes_expected"] == config.cnn_image_size**2 * 3

    saved = json.loads(results_path(config).read_text())
    assert saved["sections"] == jsonable(results["sections"])


def test_cli_bench_passes_quick_sections_and_the_artifacts_folder(tmp_path, monkeypatch):
    from pipelines import bench, cli

    calls = []

    def fake(config, quick, sections):
        calls.append((config, quick, sections))

    monkeypatch.setattr(bench, "run_bench", fake)
    argv = ["bench", "--quick", "--artifacts", str(tmp_path), "--section", "exact_search"]
    assert cli.main([*argv, "--section", "embedding"]) == 0
    ((config, quick, sections),) = calls
    assert quick is True and config.artifacts_dir == tmp_path
    assert sections == ["exact_search", "embedding"]
    with pytest.raises(SystemExit):
        cli.main(["bench", "--section", "gpu"])


def test_cold_start_times_the_service_and_a_first_upload_and_leaves_nothing_running(
    built: Config,
) -> None:
    """`bench --section cold_start`, quick: one quiet and one busy start of each door on the
    small build, each a positive time below the section's own timeout; no server, browser or
    busy loop outlives it."""
    import os
    import subprocess

    from pipelines.bench.cold_start import START_TIMEOUT_S, bench_cold_start

    def children() -> set[str]:
        ps = ["ps", "-o", "pid=,args=", "--ppid", str(os.getpid())]
        found = subprocess.run(ps, capture_output=True, text=True).stdout.splitlines()
        return {line.strip() for line in found if " ps -o " not in f" {line.strip()} "}

    before = children()
    out = bench_cold_start(built, quick=True)
    for door in ("serve", "app", "app_next_visitor"):
        for kind in ("quiet", "busy"):
            (seconds,) = out[door][kind]
            assert 0 < seconds < START_TIMEOUT_S, (door, kind, seconds)
    assert [row["what"].split(":")[0] for row in out["rows"]] == ["serve", "app", "app"]
    left = children() - before
    assert not left, f"processes left running: {left}"
