"""Label corrections and drops (pipelines/data/corrections.py): recorded with who and when,
checked, undone with an audit trail, the latest in force per item winning; applied to a catalog;
the same answers through the shell and the Python API; and, end to end, a relabel and a drop
reaching every artifact of `run` without retraining or re-embedding."""

from __future__ import annotations

import getpass
import json
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.api import Lookalike
from pipelines.artifacts import read_manifest, write_manifest, write_parquet
from pipelines.cli import main
from pipelines.config import Config
from pipelines.data import corrections as c
from pipelines.errors import LookalikeError

IDS = ["a1", "b2", "c3", "d4", "e5"]
LABELS = ["hat", "hat", "dress", "shoes", None]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A built-looking catalog of five items (one unlabelled) and no corrections yet."""
    config = Config(artifacts_dir=tmp_path / "artifacts")
    catalog = pd.DataFrame(
        {
            "item_id": IDS,
            "path": [f"/photos/{i}.jpg" for i in IDS],
            "label": pd.array(LABELS, dtype="string"),
            "split": ["train", "train", "test", "test", "test"],
        }
    )
    write_parquet(catalog, config.catalog_path)
    write_manifest(config.catalog_path, "catalog", {}, {})
    return config


def catalog_of(config: Config) -> pd.DataFrame:
    return pd.read_parquet(config.catalog_path)


# --------------------------------------------------------------------------- recording


def test_a_relabel_records_what_who_when_and_the_label_it_had(config: Config) -> None:
    before = datetime.now(UTC)
    made = c.add_correction(config, "a1", "relabel", " dress ", who="ann", note="a dress")
    assert made == {
        "correction_id": "c1",
        "item_id": "a1",
        "action": "relabel",
        "label": "dress",
        "previous_label": "hat",
        "who": "ann",
        "when": made["when"],
        "note": "a dress",
        "undone_at": None,
        "undone_by": None,
    }
    when = datetime.fromisoformat(made["when"])
    assert when.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= when <= datetime.now(UTC)
    table = c.read_corrections(config)
    assert list(table.columns) == c.COLUMNS
    assert c.record(table.iloc[0]) == made
    # Beside the catalog, with a manifest; nothing else in the folder changed.
    assert config.corrections_path.parent == config.catalog_path.parent
    assert read_manifest(config.corrections_path)["active"] == 1


def test_who_defaults_to_the_os_user_and_drops_take_no_label(config: Config) -> None:
    made = c.add_correction(config, "b2", "drop")
    assert made["who"] == getpass.getuser()
    assert made["label"] is None and made["previous_label"] == "hat"
    assert c.add_correction(config, "e5", "relabel", "hat")["previous_label"] is None


def test_an_empty_table_is_typed_and_hashes_to_none(config: Config) -> None:
    table = c.read_corrections(config)
    assert table.empty and list(table.columns) == c.COLUMNS
    assert c.active_corrections(config).empty
    assert c.corrections_hash(config) == "none"
    assert not config.corrections_path.exists()


@pytest.mark.parametrize(
    ("item", "action", "label", "error", "message"),
    [
        ("zz", "relabel", "hat", c.UnknownItemError, "no catalog item 'zz' (5 items)"),
        ("a1", "move", "hat", c.InvalidCorrectionError, "action must be one of relabel, drop"),
        ("a1", "relabel", None, c.InvalidCorrectionError, "a relabel needs the new label"),
        ("a1", "relabel", "   ", c.InvalidCorrectionError, "a relabel needs the new label"),
        ("a1", "drop", "hat", c.InvalidCorrectionError, "a drop takes no label, got 'hat'"),
        ("a1", "relabel", "x" * 101, c.InvalidCorrectionError, "at most 100 characters"),
        ("a1", "relabel", "ha\x00t", c.InvalidCorrectionError, "printable text"),
        ("a1", "relabel", "hat", c.InvalidCorrectionError, "already labelled 'hat'"),
    ],
)
def test_invalid_corrections_name_the_problem(
    config: Config, item: str, action: str, label: str | None, error: type, message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        c.add_correction(config, item, action, label)
    assert c.read_corrections(config).empty


def test_a_note_or_name_too_long_and_no_catalog_are_refused(config: Config, tmp_path) -> None:
    with pytest.raises(c.InvalidCorrectionError, match="note must be at most 1000"):
        c.add_correction(config, "a1", "drop", note="n" * 1001)
    with pytest.raises(c.InvalidCorrectionError, match="who must be at most 100"):
        c.add_correction(config, "a1", "drop", who="w" * 101)
    empty = Config(artifacts_dir=tmp_path / "none")
    with pytest.raises(LookalikeError, match="catalog.parquet is missing — build the catalog"):
        c.add_correction(empty, "a1", "drop")


def test_the_same_correction_twice_is_refused(config: Config) -> None:
    c.add_correction(config, "a1", "relabel", "dress")
    with pytest.raises(LookalikeError, match="already marked relabel → 'dress' \\(c1"):
        c.add_correction(config, "a1", "relabel", "dress")
    assert len(c.read_corrections(config)) == 1


def test_concurrent_writers_lose_nothing(config: Config) -> None:
    def mark(item: str) -> None:
        c.add_correction(config, item, "drop", who=f"user-{item}")

    threads = [threading.Thread(target=mark, args=(item,)) for item in IDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    table = c.read_corrections(config)
    assert sorted(table["item_id"]) == sorted(IDS)
    assert sorted(table["correction_id"]) == sorted(f"c{i}" for i in range(1, 6))


# --------------------------------------------------------------------------- undo, latest wins


def test_undo_keeps_the_row_and_an_earlier_correction_applies_again(config: Config) -> None:
    c.add_correction(config, "a1", "relabel", "shoes")
    only_first = c.corrections_hash(config)
    c.add_correction(config, "a1", "relabel", "dress", who="ann")
    assert c.active_corrections(config)["label"].tolist() == ["dress"]
    assert c.corrections_hash(config) != only_first

    undone = c.undo_correction(config, "c2", who="bob")
    assert undone["undone_by"] == "bob" and undone["undone_at"] is not None
    assert undone["who"] == "ann" and undone["label"] == "dress"
    table = c.read_corrections(config)
    assert table["correction_id"].tolist() == ["c1", "c2"]  # the audit trail keeps both
    active = c.active_corrections(config)
    assert active["correction_id"].tolist() == ["c1"] and active["label"].tolist() == ["shoes"]
    assert c.corrections_hash(config) == only_first

    c.undo_correction(config, "c1")
    assert c.active_corrections(config).empty
    assert c.corrections_hash(config) == "none"


def test_undo_of_an_unknown_or_undone_correction(config: Config) -> None:
    with pytest.raises(c.UnknownCorrectionError, match="no correction 'c1' \\(there are none"):
        c.undo_correction(config, "c1")
    c.add_correction(config, "a1", "drop")
    with pytest.raises(c.UnknownCorrectionError, match="no correction 'c9' \\(ids c1 to c1\\)"):
        c.undo_correction(config, "c9")
    c.undo_correction(config, "c1", who="ann")
    with pytest.raises(LookalikeError, match="c1 was already undone at .* by ann"):
        c.undo_correction(config, "c1")


def test_latest_correction_per_item_wins_across_actions(config: Config) -> None:
    c.add_correction(config, "a1", "relabel", "dress")
    c.add_correction(config, "c3", "drop")
    c.add_correction(config, "a1", "drop")
    c.add_correction(config, "c3", "relabel", "hat")
    active = c.active_corrections(config).set_index("item_id")
    assert active.loc["a1", "action"] == "drop" and active.loc["c3", "label"] == "hat"
    assert len(active) == 2


def test_the_hash_ignores_who_when_and_note(config: Config, tmp_path: Path) -> None:
    other = config.replace(artifacts_dir=tmp_path / "other")
    shutil.copytree(config.artifacts_dir, other.artifacts_dir)
    c.add_correction(config, "a1", "relabel", "dress", who="ann", note="one")
    c.add_correction(other, "a1", "relabel", "dress", who="bob", note="two")
    assert c.corrections_hash(config) == c.corrections_hash(other) != "none"
    c.add_correction(other, "b2", "drop")
    assert c.corrections_hash(config) != c.corrections_hash(other)


# --------------------------------------------------------------------------- applying


def test_apply_relabels_drops_and_reports_unknown_items(config: Config) -> None:
    catalog = catalog_of(config)
    original = catalog.copy()
    c.add_correction(config, "a1", "relabel", "dress")
    c.add_correction(config, "e5", "relabel", "hat")  # an unlabelled item gets a label
    c.add_correction(config, "c3", "drop")
    c.add_correction(config, "d4", "relabel", "hat")
    c.undo_correction(config, "c4")  # undone: d4 keeps its label

    out, summary = c.apply_corrections(catalog, config)
    pd.testing.assert_frame_equal(catalog, original)  # the input is not changed
    assert out["item_id"].tolist() == ["a1", "b2", "d4", "e5"]
    assert out["label"].tolist() == ["dress", "hat", "shoes", "hat"]
    assert out["original_label"].tolist()[:3] == ["hat", "hat", "shoes"]
    assert pd.isna(out["original_label"].iloc[3])
    assert out["label_source"].tolist() == ["correction", "source", "source", "correction"]
    assert out["label"].dtype == catalog["label"].dtype
    assert out.index.tolist() == [0, 1, 2, 3]
    assert summary == {"relabelled": 2, "dropped": 1, "unknown_items": 0, "unknown_ids": []}

    # Applying to the corrected catalog gives it again; an item gone from the catalog is
    # reported, not an error.
    again, summary = c.apply_corrections(out, config)
    pd.testing.assert_frame_equal(again, out)
    assert summary["unknown_ids"] == ["c3"] and summary["unknown_items"] == 1


def test_no_corrections_leave_the_catalog_and_its_hash_unchanged(config: Config) -> None:
    from pipelines.data.catalog import content_hash

    catalog = catalog_of(config)
    out, summary = c.apply_corrections(catalog, config)
    assert content_hash(out) == content_hash(catalog)
    assert list(out.columns) == list(catalog.columns)
    assert summary == {"relabelled": 0, "dropped": 0, "unknown_items": 0, "unknown_ids": []}
    # Undoing every correction comes back to the same catalog.
    c.add_correction(config, "a1", "relabel", "dress")
    changed, _ = c.apply_corrections(catalog, config)
    assert content_hash(changed) != content_hash(catalog)
    c.undo_correction(config, "c1")
    back, _ = c.apply_corrections(changed, config)
    assert content_hash(back) == content_hash(catalog)


def test_states_follow_the_catalog(config: Config) -> None:
    c.add_correction(config, "a1", "relabel", "dress")
    c.add_correction(config, "b2", "drop")
    c.add_correction(config, "c3", "relabel", "hat")
    c.add_correction(config, "c3", "relabel", "shoes")
    c.add_correction(config, "d4", "drop")
    c.undo_correction(config, "c5")
    states = lambda table: dict(zip(table["correction_id"], table["state"], strict=True))  # noqa: E731
    assert states(c.list_corrections(config)) == {
        "c1": "pending",
        "c2": "pending",
        "c3": "superseded by c4",
        "c4": "pending",
        "c5": "undone",
    }
    corrected, _ = c.apply_corrections(catalog_of(config), config)
    assert states(c.list_corrections(config, corrected)) == {
        "c1": "applied",
        "c2": "applied",
        "c3": "superseded by c4",
        "c4": "applied",
        "c5": "undone",
    }


def test_a_damaged_table_is_a_clear_error(config: Config) -> None:
    config.corrections_path.write_bytes(b"not parquet")
    with pytest.raises(LookalikeError, match="corrections.parquet cannot be read .* move it aside"):
        c.read_corrections(config)


# --------------------------------------------------------------------------- shell and Python


def test_the_shell_adds_lists_and_undoes(config: Config, capsys: pytest.CaptureFixture) -> None:
    base = ["corrections", "--artifacts", str(config.artifacts_dir)]
    assert main([*base, "--item", "a1", "--label", "dress", "--who", "ann", "--note", "n"]) == 0
    out = capsys.readouterr().out
    assert "recorded: c1 relabel a1 'hat' → 'dress' by ann" in out
    assert "python -m pipelines run" in out
    assert main([*base, "--item", "b2", "--drop", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["action"] == "drop" and made["who"] == getpass.getuser()
    assert main([*base, "--undo", "c1", "--who", "bob"]) == 0
    assert "undone: c1" in capsys.readouterr().out

    assert main(base) == 0  # --list is the default
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("— undone") and lines[1].endswith("— pending")
    assert main([*base, "--list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    expected = c.list_corrections(config)
    assert [r["correction_id"] for r in listed] == expected["correction_id"].tolist()
    assert [r["state"] for r in listed] == ["undone", "pending"]
    assert listed[0]["undone_by"] == "bob"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--item", "a1"], "needs exactly one of --label NEW (relabel) or --drop"),
        (["--item", "a1", "--label", "x", "--drop"], "needs exactly one of --label"),
        (["--label", "x"], "--label and --drop need --item ID"),
        (["--undo", "c1", "--item", "a1"], "--undo takes no --item"),
        (["--item", "zz", "--drop"], "no catalog item 'zz'"),
        (["--item", "a1", "--label", ""], "a relabel needs the new label"),
        (["--undo", "c4"], "no correction 'c4'"),
    ],
)
def test_the_shell_names_bad_requests(
    config: Config, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    assert main(["corrections", "--artifacts", str(config.artifacts_dir), *argv]) == 2
    assert message in capsys.readouterr().err
    assert c.read_corrections(config).empty


def test_the_python_api_is_the_same_engine(config: Config) -> None:
    look = Lookalike(config)
    made = look.correct("a1", label="dress", who="ann")
    assert made["correction_id"] == "c1" and made["previous_label"] == "hat"
    assert look.correct("b2", drop=True)["action"] == "drop"
    with pytest.raises(c.InvalidCorrectionError, match="not both"):
        look.correct("c3", label="hat", drop=True)
    with pytest.raises(c.InvalidCorrectionError, match="a relabel needs the new label"):
        look.correct("c3")
    assert look.undo_correction("c1")["undone_at"] is not None
    listed = look.corrections()
    pd.testing.assert_frame_equal(listed, c.list_corrections(config))
    assert listed["state"].tolist() == ["undone", "pending"]


# --------------------------------------------------------------------------- end to end


def _composition(config: Config, extractor: str) -> dict[str, int]:
    """Label counts over every cluster of an extractor (the clusters' label mix)."""
    total: dict[str, int] = {}
    for text in pd.read_parquet(config.cluster_summary_path(extractor))["composition"]:
        for label, n in json.loads(text).items():
            total[label] = total.get(label, 0) + n
    return total


def _queries(config: Config) -> dict[str, int]:
    table = pd.read_parquet(config.per_class_path)
    rows = table[(table["extractor"] == "inception_v3") & (table["strategy"] == "exact")]
    return dict(zip(rows["label"], rows["n_queries"], strict=True))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
def test_e2e_corrections_reach_every_artifact_at_the_next_run(
    built: Config, tmp_path: Path
) -> None:
    """END TO END, through the catalog stage: passes once pipelines/data/catalog.py calls
    `apply_corrections` and keys its freshness on `corrections_hash`.

    On a copy of the small real build: relabel a test hat to "shoes" and drop a test pant,
    `run`; the hat is shoes in the catalog, the map's points, the clusters' label mix and the
    evaluation's per-class queries, the pant is gone from every artifact, no model is retrained
    and no kept item is re-embedded (its vectors are identical); the source folder is untouched.
    Undo both and `run` again: the build is back to its labels and 36 items."""
    from pipelines.explore.browse import map_points
    from pipelines.readers import read_catalog, read_embeddings
    from pipelines.run import run_all

    config = built.replace(artifacts_dir=tmp_path / "artifacts")
    shutil.copytree(built.artifacts_dir, config.artifacts_dir)
    source = _snapshot(Path(config.source))
    before, _ = read_catalog(config)
    vectors_before = {n: read_embeddings(config, n)[0].copy() for n in config.extractors_built()}
    cnn_sha = read_manifest(config.custom_cnn_path)["sha256"]
    mix, queries = _composition(config, "inception_v3"), _queries(config)
    test = before[before["split"] == "test"]
    hat = str(test[test["label"] == "hat"]["item_id"].iloc[0])
    pant = str(test[test["label"] == "pants"]["item_id"].iloc[0])

    c.add_correction(config, hat, "relabel", "shoes", who="ann", note="it is a shoe")
    c.add_correction(config, pant, "drop", who="ann")
    run_all(config)

    after, _ = read_catalog(config)
    row = after.set_index("item_id").loc[hat]
    assert (row["label"], row["original_label"], row["label_source"]) == (
        "shoes",
        "hat",
        "correction",
    )
    assert pant not in set(after["item_id"]) and len(after) == len(before) - 1
    assert set(after["label_source"]) == {"source", "correction"}
    points = map_points(
        after,
        pd.read_parquet(config.map_path("inception_v3")),
        pd.read_parquet(config.clusters_path("inception_v3")),
        pd.read_parquet(config.categories_path),
    ).set_index("item_id")
    assert points.loc[hat, "label"] == "shoes" and pant not in points.index
    assert _composition(config, "inception_v3") == {
        **mix,
        "hat": mix["hat"] - 1,
        "shoes": mix["shoes"] + 1,
        "pants": mix["pants"] - 1,
    }
    assert _queries(config) == {
        **queries,
        "hat": queries["hat"] - 1,
        "shoes": queries["shoes"] + 1,
        "pants": queries["pants"] - 1,
    }
    for kind in ("duplicates", "mislabelled", "outliers"):
        table = pd.read_parquet(config.health_path("inception_v3", kind))
        ids = (
            set(table.get("item_id", []))
            | set(table.get("item_a", []))
            | set(table.get("item_b", []))
        )
        assert pant not in ids, kind
    # Nothing retrained or re-embedded: kept rows' vectors are as they were.
    assert read_manifest(config.custom_cnn_path)["sha256"] == cnn_sha
    rows_before = pd.Index(before["item_id"])
    for name, old in vectors_before.items():
        new = read_embeddings(config, name)[0]
        np.testing.assert_array_equal(new, old[rows_before.get_indexer(after["item_id"])])
    states = c.list_corrections(config)["state"].tolist()
    assert states == ["applied", "applied"]
    assert _snapshot(Path(config.source)) == source  # never written into the user's photos

    c.undo_correction(config, "c1")
    c.undo_correction(config, "c2")
    run_all(config)
    back, _ = read_catalog(config)
    pd.testing.assert_frame_equal(back, before)
    assert _composition(config, "inception_v3") == mix and _queries(config) == queries
