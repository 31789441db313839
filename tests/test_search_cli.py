"""`python -m pipelines search`: a folder with a bad file gives the good photos' neighbours,
names the bad file and exits 0; nothing searchable exits non-zero."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.config import EXTRACTORS, Config


@pytest.fixture(scope="module")
def catalog(built: Config) -> pd.DataFrame:
    return pd.read_parquet(built.catalog_path)


def photos_folder(catalog: pd.DataFrame, tmp_path: Path) -> tuple[Path, list[str]]:
    """Two catalog photos (a dress and shoes) and a text file named like a photo."""
    folder = tmp_path / "photos"
    folder.mkdir()
    ids = []
    for label in ("dress", "shoes"):
        row = catalog[catalog["label"] == label].iloc[0]
        shutil.copy(row["path"], folder / f"{label}.jpg")
        ids.append(str(row["item_id"]))
    (folder / "notes.jpg").write_text("a shopping list, not a photo\n")
    return folder, ids


def test_folder_with_a_bad_file_prints_json_for_the_good_ones(
    built: Config, catalog: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, ids = photos_folder(catalog, tmp_path)
    argv = ["search", str(folder), "--artifacts", str(built.artifacts_dir), "--k", "4", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    names = [Path(p["photo"]).name for p in report["photos"]]
    assert names == ["dress.jpg", "notes.jpg", "shoes.jpg"]  # sorted, the bad file included
    dress, notes, shoes = report["photos"]
    assert (
        notes["error"]
        == f"{folder / 'notes.jpg'}: not a recognised image (jpg, png, webp, heic or avif expected)"
    )
    assert report["errors"] == [notes["error"]]
    assert f"skipped {folder / 'notes.jpg'}: not a recognised image" in err
    for photo, item_id in ((dress, ids[0]), (shoes, ids[1])):
        assert photo["error"] is None
        # One list per extractor the build embedded (the metric head too where it was trained).
        built_extractors = {n for n in EXTRACTORS if built.embeddings_path(n).exists()}
        assert {"inception_v3", "custom_cnn"} <= built_extractors
        assert set(photo["neighbours"]) == built_extractors
        for rows in photo["neighbours"].values():
            assert [r["rank"] for r in rows] == [1, 2, 3, 4]
            # A catalog photo finds itself first.
            assert rows[0]["item_id"] == item_id
            assert rows[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
        # The classify stage's classifier predicts (never the CNN's softmax when it exists).
        assert photo["category_model"] == "logistic regression on inception_v3"
        assert photo["category"] in {"dress", "hat", "pants", "shoes"}
        assert photo["searched_categories"] and photo["strategies"]
    counts = {c["category"]: c["count"] for c in report["most_common_categories"]}
    assert sum(counts.values()) == 2
    assert set(counts) == {dress["category"], shoes["category"]}


def test_table_output_and_one_extractor_with_diversity(
    built: Config, catalog: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, ids = photos_folder(catalog, tmp_path)
    photo = folder / "dress.jpg"
    argv = ["search", str(photo), "--artifacts", str(built.artifacts_dir), "--k", "5"]
    assert main([*argv, "--extractor", "inception_v3", "--diversity", "0.5"]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"{photo}  ·  predicted: ")
    assert lines[1:3] == ["  inception_v3", "  rank  item_id            similarity  label"]
    assert lines[3].split()[:3] == ["1", ids[0], "1.000"]
    assert len([line for line in lines if line.startswith("     ")]) == 5  # five ranked rows
    assert "custom_cnn" not in out
    assert "searched 1 of 1 file(s)" in out
    assert "most common categories: " in out


def test_nothing_searchable_exits_non_zero(
    built: Config, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    argv = ["search", str(bad), str(tmp_path / "gone.jpg"), "--artifacts", str(built.artifacts_dir)]
    assert main(argv) == 2
    _, err = capsys.readouterr()
    assert f"skipped {bad}: not a recognised image" in err
    assert f"skipped {tmp_path / 'gone.jpg'}: no such file or folder — check the path" in err
    assert "error: none of the 2 file(s) could be searched" in err


def test_bad_options_name_the_rule(built: Config, tmp_path: Path, capsys) -> None:
    argv = ["search", str(tmp_path), "--artifacts", str(built.artifacts_dir)]
    assert main([*argv, "--diversity", "3"]) == 2
    assert "diversity must be between 0 (plain nearest neighbours) and 1, got 3.0" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--strategy", "fastest"]) == 2
    assert "unknown strategy 'fastest'; valid strategies: exact, cluster, category" in (
        capsys.readouterr().err
    )
