"""The update benchmark (`bench --section update`): its core on a tiny real catalog reports
what happened (items after each phase, new and gone ids, kept vectors, exact top-10), leaves
the shared photos untouched and its scratch removed; its checks catch planted faults."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.bench import OPT_IN_SECTIONS, SECTIONS, check_sections
from pipelines.bench.update import (
    QUICK_SETTINGS,
    image_files,
    measure_updates,
    quick_subset,
    spread_pick,
    targets_met,
)
from pipelines.bench.update_checks import bit_identical, brute_topk, compare_builds, compare_p10
from pipelines.config import REPO_ROOT
from tests.conftest import CLOTHING, SMALL_LABELS, unit


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_update_bench_on_a_tiny_real_catalog(tmp_path: Path) -> None:
    """First run, add 2, remove 2, replace 1 (3 photos per class and split, small settings):
    each phase's item count, the ids each update brought and took, and the kept vectors."""
    files = quick_subset(image_files(CLOTHING), SMALL_LABELS, 3)
    assert len(files) == 36
    originals = {rel: _sha(CLOTHING / rel) for rel in files}
    scratch = tmp_path / "scratch"
    result = measure_updates(
        CLOTHING, files, scratch, QUICK_SETTINGS, hold=2, remove=2, replace=1, rebuild=False
    )

    assert not scratch.exists()  # removed when done
    # The shared photos are as they were (a replaced photo is a new file, never written in).
    assert {rel: _sha(CLOTHING / rel) for rel in files} == originals
    chosen = result["catalog"]["files"]
    assert len(set(chosen["held_back"]) | set(chosen["removed"]) | set(chosen["replaced"])) == 5

    rows = {row["phase"]: row for row in result["rows"]}
    assert list(rows) == ["first run", "add 2", "remove 2", "replace 1"]
    assert [rows[p]["items"] for p in rows] == [34, 36, 34, 34]
    for name in ("add 2", "remove 2", "replace 1"):
        assert rows[name]["ratio"] == round(rows[name]["wall_s"] / rows["first run"]["wall_s"], 4)
    assert rows["add 2"]["target"] == 0.08 and rows["remove 2"]["target"] == 0.03

    checks = result["checks"]
    assert (checks["add 2"]["added"], checks["add 2"]["gone"]) == (2, 0)
    assert (checks["remove 2"]["added"], checks["remove 2"]["gone"]) == (0, 2)
    # A replaced photo is a new item: its old id leaves, the altered photo's id arrives.
    assert (checks["replace 1"]["added"], checks["replace 1"]["gone"]) == (1, 1)
    for name, check in checks.items():
        assert set(check["extractors"]) == {"inception_v3", "custom_cnn", "inception_head"}
        for extractor, part in check["extractors"].items():
            vectors, top = part["vectors"], part["top10"]
            assert vectors["identical"] == vectors["kept"] == check["kept"], (name, extractor)
            assert top["queries"] == check["added"]
            assert top["same_set"] == top["queries"], (name, extractor, top)
        assert check["left_behind"] == {}, name
    # Every phase's stages are named as run names them.
    assert [s["stage"] for s in result["stages"]["add 2"]][:3] == [
        "catalog",
        "colours",
        "training set",
    ]
    met = targets_met(result)
    assert met["vectors_identical"] and met["top10_exact"] and met["removed_gone"]
    assert "p10_diff" not in met  # no rebuild, no verdict


def test_spread_pick_covers_every_folder_and_is_seeded() -> None:
    files = [f"{split}/{label}/{i}.jpg" for split in "ab" for label in "xyz" for i in range(5)]
    rng = np.random.default_rng(3)
    picked = spread_pick(files, 6, rng)
    assert sorted({str(Path(p).parent) for p in picked}) == sorted(
        {str(Path(f).parent) for f in files}
    )
    assert picked == spread_pick(files, 6, np.random.default_rng(3))
    with pytest.raises(ValueError, match="only 30"):
        spread_pick(files, 31, rng)


def test_bit_identical_and_brute_topk_on_planted_vectors() -> None:
    a = unit(np.random.default_rng(0).normal(size=(20, 8)))
    b = a.copy()
    b[3, 5] = np.nextafter(b[3, 5], np.float32(2))  # one ulp
    assert bit_identical(a, b).tolist() == [i != 3 for i in range(20)]
    # Row 7's planted near-copy is its nearest; itself never appears.
    v = a.copy()
    v[11] = unit((a[7] + 0.01 * a[2])[None])[0]
    rows, sims = brute_topk(v, 7, 5)
    assert rows[0] == 11 and 7 not in rows and np.all(np.diff(sims) <= 0)


def _fake_build(folder: Path, ids: list[str], vectors: np.ndarray, xy: np.ndarray) -> None:
    (folder / "embeddings").mkdir(parents=True)
    (folder / "maps").mkdir()
    pd.DataFrame({"item_id": ids}).to_parquet(folder / "catalog.parquet")
    np.save(folder / "embeddings" / "inception_v3.npy", vectors)
    table = pd.DataFrame({"item_id": ids, "x": xy[:, 0], "y": xy[:, 1]})
    table.to_parquet(folder / "maps" / "inception_v3.parquet")


def test_compare_builds_catches_a_moved_item_a_changed_vector_and_a_left_behind_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted faults: one kept vector changed, one kept item moved on the map, a removed
    item still in a table, and an engine whose top-10 differs from the brute force."""
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(30, 16)))
    xy = rng.normal(size=(30, 2)).astype(np.float32)
    ids = [f"i{i:02d}" for i in range(30)]
    _fake_build(tmp_path / "before", ids[:28], vectors[:28], xy[:28])
    after_ids = ids[1:]  # i00 removed, i28 and i29 added
    after_vectors, after_xy = vectors[1:].copy(), xy[1:].copy()
    after_vectors[4] = unit(after_vectors[4:5] + 0.1)[0]
    after_xy[6] += 0.5
    _fake_build(tmp_path / "after", after_ids, after_vectors, after_xy)
    pd.DataFrame({"item_id": ["i00", "i05"]}).to_parquet(tmp_path / "after" / "feed.parquet")

    class Engine:  # the engine's search, with one planted wrong neighbour for i29
        def similar_to(self, item: str, k: int, extractor: str) -> pd.DataFrame:
            row = after_ids.index(item)
            rows, _ = brute_topk(after_vectors, row, k)
            found = [after_ids[r] for r in rows]
            if item == "i29":
                found[-1] = next(i for i in after_ids if i not in found and i != item)
            return pd.DataFrame({"item_id": found})

    monkeypatch.setattr("pipelines.api.Lookalike.open", classmethod(lambda cls, a: Engine()))
    out = compare_builds(tmp_path / "before", tmp_path / "after", k=10)
    assert (out["added"], out["gone"], out["kept"]) == (2, 1, 27)
    part = out["extractors"]["inception_v3"]
    assert part["vectors"] == {"kept": 27, "identical": 26}
    assert part["map"]["unmoved"] == 26 and part["map"]["max_shift"] == pytest.approx(0.7071, 1e-3)
    assert part["top10"]["queries"] == 2
    assert part["top10"]["same_set"] == 1 and part["top10"]["same_order"] == 1
    assert out["left_behind"] == {"feed.parquet:item_id": 1}


def test_compare_p10_and_the_verdicts(tmp_path: Path) -> None:
    for name, p in (("updated", 0.80), ("rebuilt", 0.815)):
        (tmp_path / name).mkdir()
        metrics = {"results": {"inception_v3": {"exact": {"p@10": p}}}}
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    p10 = compare_p10(tmp_path / "updated", tmp_path / "rebuilt")
    assert p10 == {"inception_v3": {"updated": 0.8, "rebuild": 0.815, "diff": -0.015}}
    rows = [
        {"phase": "add 38", "ratio": 0.05, "target": 0.08},
        {"phase": "remove 38", "ratio": 0.04, "target": 0.03},
    ]
    met = targets_met({"rows": rows, "p10": p10, "synthetic": {"ratio": 0.02}})
    assert met == {
        "add_ratio": True,
        "remove_ratio": False,
        "p10_diff": False,
        "synthetic_add_ratio": True,
    }


def test_update_is_an_opt_in_section() -> None:
    assert "update" in OPT_IN_SECTIONS and "update" not in SECTIONS
    assert check_sections(["update"]) == ("update",)
    assert check_sections(None) == SECTIONS


def test_scratch_is_removed_on_sigterm(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    code = (
        "import sys, time; from pathlib import Path\n"
        "from pipelines.bench.scratch import removed_afterwards\n"
        "with removed_afterwards(Path(sys.argv[1])) as work:\n"
        "    (work / 'photo.jpg').write_bytes(b'x'); print('ready', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(scratch)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert (scratch / "photo.jpg").exists()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while scratch.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not scratch.exists()
