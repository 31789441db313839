"""The catalog stage on real photos mixed with broken and odd files, CSV and DeepFashion trees."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines import artifacts
from pipelines.config import DEFAULT_SOURCE, REPO_ROOT, Config
from pipelines.data.catalog import bbox_of, load_catalog, run_catalog
from pipelines.data.download import DEFAULT_COUNTS
from pipelines.data.images import load_image
from pipelines.errors import LookalikeError
from tests.conftest import copy_subset, real_photos
from tests.test_images import (
    cmyk_jpeg,
    exif_rotated_jpeg,
    grey16_png,
    palette_png,
    rgba_png,
)

CAP = 500_000


@pytest.fixture
def mixed_tree(tmp_path: Path) -> Path:
    """ROOT/train/<label>/ with 4 real photos, 5 odd-but-valid files, 4 bad files, 1 duplicate."""
    root = tmp_path / "mixed"
    for label in ("dress", "shoes"):
        (root / "train" / label).mkdir(parents=True)
        for photo in real_photos(label, 2):
            shutil.copy(photo, root / "train" / label / photo.name)
    odd = root / "train" / "odd"
    odd.mkdir()
    (odd / "rgba.png").write_bytes(rgba_png())
    (odd / "palette.png").write_bytes(palette_png())
    (odd / "cmyk.jpg").write_bytes(cmyk_jpeg())
    (odd / "grey16.png").write_bytes(grey16_png())
    (odd / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    bad = root / "train" / "bad"
    bad.mkdir()
    whole = real_photos("hat", 1)[0].read_bytes()
    (bad / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("not a photo")
    Image.new("RGB", (1000, 600), "white").save(bad / "huge.png")
    # The same bytes as a dress photo, under another label: kept once.
    shutil.copy(real_photos("dress", 1)[0], bad / "copy.jpg")
    (root / "README.txt").write_text("not an image type: ignored")
    return root


def test_mixed_tree_rows_rejects_and_reasons(mixed_tree: Path, tmp_path: Path) -> None:
    config = Config(artifacts_dir=tmp_path / "art", source=mixed_tree, max_pixels=CAP)
    summary = run_catalog(config, progress=False)
    assert summary.rows == 9 and not summary.skipped
    assert summary.details["rejects"] == 4 and summary.details["duplicates"] == 1

    catalog = load_catalog(config)
    assert catalog["item_id"].is_unique
    assert sorted(Path(p).name for p in catalog["path"] if "/odd/" in p) == [
        "cmyk.jpg",
        "grey16.png",
        "palette.png",
        "rgba.png",
        "rotated.jpg",
    ]
    assert set(catalog["label"]) == {"dress", "shoes", "odd", "bad"}  # bad/copy.jpg is kept
    assert set(catalog["split"]) == {"train"}
    rotated = catalog[catalog["path"].str.endswith("rotated.jpg")].iloc[0]
    assert (rotated["width"], rotated["height"]) == (40, 60)  # upright size, not stored size

    rejects = pd.read_parquet(config.rejects_path)
    reasons = {Path(p).name: r for p, r in zip(rejects["path"], rejects["reason"], strict=True)}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "notes.jpg", "huge.png"}
    assert "truncated or corrupt" in reasons["truncated.jpg"]
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert "not a recognised image" in reasons["notes.jpg"]
    assert "over the cap of 500,000" in reasons["huge.png"]

    duplicates = pd.read_parquet(config.duplicates_path)
    assert len(duplicates) == 1
    dup = duplicates.iloc[0]
    # Sorted by path, bad/copy.jpg comes first, so it is the one kept; the dress copy is reported.
    assert Path(dup["kept_path"]).name == "copy.jpg" and "/dress/" in dup["path"]

    manifest = artifacts.read_manifest(config.catalog_path)
    assert manifest is not None and manifest["rows"] == 9
    assert {Path(r["path"]).name for r in manifest["rejected"]} == set(reasons)
    for item_id in catalog["item_id"]:
        thumb = config.thumbs_dir / f"{item_id}.jpg"
        assert max(Image.open(thumb).size) <= config.thumb_size


def test_loaded_pixels_of_rotated_and_cmyk_files(mixed_tree: Path) -> None:
    rotated = np.asarray(load_image(mixed_tree / "train/odd/rotated.jpg"))
    assert rotated.shape == (60, 40, 3) and rotated[5, 20, 0] > 200  # red stays on top
    cmyk = load_image(mixed_tree / "train/odd/cmyk.jpg")
    assert cmyk.mode == "RGB" and np.asarray(cmyk)[10, 10, 0] > 200


def test_rerun_is_a_noop_and_force_rebuilds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = copy_subset(tmp_path / "src", {"dress": 2, "hat": 2}, splits=("train",))
    config = Config(artifacts_dir=tmp_path / "art", source=source)
    first = run_catalog(config, progress=False)
    written = config.catalog_path.stat().st_mtime_ns
    second = run_catalog(config, progress=False)
    assert not first.skipped and second.skipped
    assert "nothing to do" in capsys.readouterr().out
    assert config.catalog_path.stat().st_mtime_ns == written
    assert not run_catalog(config, force=True, progress=False).skipped
    # A changed source is noticed.
    shutil.copy(real_photos("pants", 1)[0], source / "train" / "hat" / "new.jpg")
    third = run_catalog(config, progress=False)
    assert not third.skipped and third.rows == 5


def test_interrupted_write_leaves_no_artifact(tmp_path: Path) -> None:
    target = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError), artifacts.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_csv_source_keeps_metadata_and_reports_missing_files(tmp_path: Path) -> None:
    images = tmp_path / "shop" / "images"
    images.mkdir(parents=True)
    photos = real_photos("skirt", 2)
    for photo in photos:
        shutil.copy(photo, images / photo.name)
    csv = tmp_path / "shop" / "items.csv"
    pd.DataFrame(
        {
            "path": [f"images/{photos[0].name}", f"images/{photos[1].name}", "images/gone.jpg"],
            "label": ["skirt", "skirt", "skirt"],
            "split": ["train", "val", "test"],
            "colour": ["red", "blue", "green"],
            "width": ["1", "2", "3"],
        }
    ).to_csv(csv, index=False)
    config = Config(artifacts_dir=tmp_path / "art", source=csv)
    assert run_catalog(config, progress=False).rows == 2
    catalog = load_catalog(config).sort_values("colour")
    assert list(catalog["colour"]) == ["blue", "red"]
    assert list(catalog["split"]) == ["validation", "train"]
    assert list(catalog["meta_width"]) == ["2", "1"]  # a clashing column is kept, renamed
    rejects = pd.read_parquet(config.rejects_path)
    assert list(rejects["reason"]) == ["file not found"]


def write_deepfashion(root: Path) -> dict[str, tuple[str, str, tuple[int, int]]]:
    """A tiny tree in the published DeepFashion Category-and-Attribute format, real photos inside.

    Returns image name -> (label, split, cropped size).
    """
    categories = [("Anorak", 1), ("Blouse", 1), ("Maxi_Dress", 3)]
    images = [
        ("img/Hooded_Anorak/img_00000001.jpg", 1, (10, 20, 210, 320), "train", "outwear"),
        ("img/Silk_Blouse/img_00000001.jpg", 2, (0, 0, 400, 500), "val", "shirt"),
        ("img/Silk_Blouse/img_00000002.jpg", 2, (50, 60, 150, 260), "test", "longsleeve"),
        ("img/Long_Maxi_Dress/img_00000001.jpg", 3, (100, 40, 300, 500), "train", "dress"),
    ]
    (root / "Anno").mkdir(parents=True)
    (root / "Eval").mkdir()
    cloth = [str(len(categories)), "category_name  category_type"]
    cloth += [f"{name:<40}{kind}" for name, kind in categories]
    listing = [str(len(images)), "image_name  category_label"]
    bbox = [str(len(images)), "image_name  x_1  y_1  x_2  y_2"]
    part = [str(len(images)), "image_name  evaluation_status"]
    expected = {}
    for name, cat, box, split, source_label in images:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real_photos(source_label, 1)[0], root / name)
        listing.append(f"{name:<70}{cat}")
        bbox.append(f"{name:<70}{box[0]:<4}{box[1]:<4}{box[2]:<4}{box[3]}")
        part.append(f"{name:<70}{split}")
        size = (box[2] - box[0], box[3] - box[1])
        expected[name] = (categories[cat - 1][0], {"val": "validation"}.get(split, split), size)
    for rel, lines in {
        "Anno/list_category_cloth.txt": cloth,
        "Anno/list_category_img.txt": listing,
        "Anno/list_bbox.txt": bbox,
        "Eval/list_eval_partition.txt": part,
    }.items():
        (root / rel).write_text("\n".join(lines) + "\n")
    return expected


def test_deepfashion_layout_labels_splits_and_crops(tmp_path: Path) -> None:
    root = tmp_path / "deepfashion"
    expected = write_deepfashion(root)
    config = Config(artifacts_dir=tmp_path / "art", source=root)
    assert run_catalog(config, progress=False).rows == 4
    catalog = load_catalog(config)
    assert artifacts.read_manifest(config.catalog_path)["params"]["format"] == "deepfashion"
    for row in catalog.to_dict("records"):
        name = str(Path(row["path"]).relative_to(root))
        label, split, size = expected[name]
        assert (row["label"], row["split"], (row["width"], row["height"])) == (label, split, size)
        # Wherever the image is loaded, the box applies.
        assert load_image(row["path"], bbox=bbox_of(row)).size == size


def _cli(*args: str, env_artifacts: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args, "--artifacts", str(env_artifacts)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (None, ["--source", "{tmp}/nowhere"], "does not exist — pass --source"),
        (
            "folder",
            ["--source", "{tmp}/src", "--format", "xml"],
            "must be one of auto, folders, csv, deepfashion; got 'xml'",
        ),
        ("csv", ["--source", "{tmp}/src/list.csv"], "has no 'path' column"),
        ("empty", ["--source", "{tmp}/src"], "no images (jpg, png, webp) found"),
    ],
)
def test_bad_arguments_exit_with_one_clear_line(
    tmp_path: Path, make: str | None, args: list[str], message: str
) -> None:
    src = tmp_path / "src"
    if make in ("folder", "empty", "csv"):
        src.mkdir()
    if make == "folder":
        shutil.copy(real_photos("hat", 1)[0], src / "a.jpg")
    if make == "csv":
        (src / "list.csv").write_text("file,label\na.jpg,hat\n")
    result = _cli("catalog", *[a.format(tmp=tmp_path) for a in args], env_artifacts=tmp_path / "a")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "a" / "catalog.parquet").exists()


def test_help_for_each_stage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines", "catalog", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--source" in result.stdout and "--force" in result.stdout


def test_config_rejects_bad_settings() -> None:
    with pytest.raises(LookalikeError, match="batch_size must be a whole number >= 1, got 0"):
        Config(batch_size=0)
    with pytest.raises(LookalikeError, match="source_format must be one of"):
        Config(source_format="xml")
    with pytest.raises(LookalikeError, match=r"unknown setting\(s\) \['colour'\]"):
        Config().replace(colour="red")


def test_default_catalog_clothing_small(tmp_path: Path) -> None:
    """The real default catalog: 3,781 rows, the README's label counts and splits."""
    config = Config(artifacts_dir=tmp_path / "art")
    first = run_catalog(config, progress=False)
    catalog = load_catalog(config)
    assert (
        len(catalog) == 3781 and first.details["rejects"] == 0 and first.details["duplicates"] == 0
    )
    assert catalog["label"].value_counts().to_dict() == DEFAULT_COUNTS
    assert catalog["split"].value_counts().to_dict() == {
        "train": 3068,
        "validation": 341,
        "test": 372,
    }
    # Read in place (paths are resolved, so a symlinked ../shared is followed), never copied.
    assert all(str(p).startswith(str(DEFAULT_SOURCE.resolve())) for p in catalog["path"][:5])
    second = run_catalog(config, progress=False)
    assert second.skipped and not second.wrote


# --- issue 11: one odd file never stops the stage; every file gets an answer ----------------


def _thumb_ids(config: Config) -> set[str]:
    return {p.stem for p in config.thumbs_dir.iterdir()} if config.thumbs_dir.exists() else set()


def test_one_odd_file_never_aborts_the_stage_and_leaves_no_orphans(tmp_path: Path) -> None:
    """Defect 2: 3 good photos plus files other Pillow plugins choke on (a PPM header, an SGI
    header) used to exit 1 with a traceback, no catalog and orphaned thumbnails."""
    root = tmp_path / "src" / "train" / "dress"
    root.mkdir(parents=True)
    for photo in real_photos("dress", 3):
        shutil.copy(photo, root / photo.name)
    (root / "bad.jpg").write_bytes(b"P6")
    (root / "sgi.png").write_bytes(b"\x01\xda" + b"\x00" * 20)
    config = Config(artifacts_dir=tmp_path / "art", source=tmp_path / "src")
    config.thumbs_dir.mkdir(parents=True)
    (config.thumbs_dir / "0123456789abcdef.jpg").write_bytes(b"a thumbnail of no catalog row")
    result = run_catalog(config, progress=False)
    assert result.rows == 3
    rejects = pd.read_parquet(config.rejects_path)
    assert sorted(Path(p).name for p in rejects["path"]) == ["bad.jpg", "sgi.png"]
    assert all("not a recognised image" in r for r in rejects["reason"])
    assert _thumb_ids(config) == set(load_catalog(config)["item_id"])


def test_a_failed_stage_removes_the_thumbnails_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 2: when the new catalog is never written (here the disk fills up), the
    thumbnails made for it go too; those of the catalog on disk stay."""
    source = copy_subset(tmp_path / "src", {"hat": 2}, splits=("train",))
    config = Config(artifacts_dir=tmp_path / "art", source=source)
    run_catalog(config, progress=False)
    kept = _thumb_ids(config)
    shutil.copy(real_photos("shoes", 1)[0], source / "train" / "hat" / "new.jpg")

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "write_parquet", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_catalog(config, progress=False)
    assert _thumb_ids(config) == kept and len(kept) == 2


def _catalog_cli(
    source: Path, artifacts_dir: Path, timeout: int = 180
) -> subprocess.CompletedProcess[str]:
    """The catalog stage in a child with a 4 GB address-space cap: the code before issue 11
    read /dev/zero until memory ran out and hung on a FIFO; here that fails, not the machine."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    return subprocess.run(
        [sys.executable, "-m", "pipelines", "catalog", "--source", str(source)]
        + ["--artifacts", str(artifacts_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=cap,
    )


def test_csv_rows_at_devices_fifos_blanks_and_conflicting_duplicates(tmp_path: Path) -> None:
    """Defect 6: /dev/zero and a FIFO are rejected (not read, not waited on), an empty path
    has its own reason, a blank label is missing, an unknown split is warned about, and
    duplicates with conflicting labels are written down with the labelled row kept."""
    shop = tmp_path / "shop"
    shop.mkdir()
    photo, other = real_photos("shirt", 2)
    shutil.copy(photo, shop / "a.jpg")
    shutil.copy(photo, shop / "a_copy.jpg")  # same bytes, labelled differently
    shutil.copy(photo, shop / "0_unlabelled.jpg")  # same bytes, first by path, no label
    shutil.copy(other, shop / "b.jpg")
    os.mkfifo(shop / "pipe.jpg")
    (shop / "manifest.csv").write_text(
        "path,label,split\n"
        "a.jpg,shirt,train\n"
        "a_copy.jpg,dress,train\n"
        "0_unlabelled.jpg,,train\n"
        "b.jpg,  ,dev\n"
        "/dev/zero,shirt,train\n"
        "pipe.jpg,shirt,train\n"
        ",shirt,train\n"
    )
    proc = _catalog_cli(shop / "manifest.csv", tmp_path / "art")
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = Config(artifacts_dir=tmp_path / "art")
    rejects = pd.read_parquet(config.rejects_path)
    reasons = dict(zip(rejects["path"], rejects["reason"], strict=True))
    assert "character device" in reasons["/dev/zero"]
    assert "FIFO" in reasons[str(shop / "pipe.jpg")]
    assert reasons[""].startswith("empty path")
    catalog = load_catalog(config)
    assert sorted(Path(p).name for p in catalog["path"]) == ["a.jpg", "b.jpg"]
    b_row = catalog[catalog["path"].str.endswith("b.jpg")].iloc[0]
    assert pd.isna(b_row["label"]) and b_row["split"] == "dev"
    assert "split 'dev' of 1 row(s) is not one of test, train, validation" in proc.stdout
    duplicates = pd.read_parquet(config.duplicates_path).set_index("path")
    assert set(duplicates["kept_path"]) == {str(shop / "a.jpg")}  # labelled beats first-by-path
    assert bool(duplicates.loc[str(shop / "a_copy.jpg"), "label_conflict"])
    assert duplicates.loc[str(shop / "a_copy.jpg"), "label"] == "dress"
    assert not bool(duplicates.loc[str(shop / "0_unlabelled.jpg"), "label_conflict"])
    assert "its label 'dress' differs from the kept 'shirt'" in proc.stdout


def test_links_loops_fifos_and_image_named_folders_in_a_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Defect 6: a symlink loop, a broken link and a FIFO are listed in rejects with their
    reason (they vanished silently before); a folder named like an image is not a label; a
    control character in a file name is escaped when printed (defect 8)."""
    root = tmp_path / "src" / "train" / "hat"
    root.mkdir(parents=True)
    for photo in real_photos("hat", 2):
        shutil.copy(photo, root / photo.name)
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    (root / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(root / "pipe.png")
    (root / "bundle.jpg").mkdir()
    shutil.copy(real_photos("hat", 3)[2], root / "bundle.jpg" / "inner.jpg")
    (root / "evil\x1b[2J.jpg").write_bytes(b"not an image")
    config = Config(artifacts_dir=tmp_path / "art", source=tmp_path / "src")
    run_catalog(config, progress=False)
    out = capsys.readouterr().out
    rejects = pd.read_parquet(config.rejects_path)
    reasons = {Path(p).name: r for p, r in zip(rejects["path"], rejects["reason"], strict=True)}
    assert "symbolic link loop" in reasons["loop.jpg"]
    assert "broken symbolic link" in reasons["broken.jpg"]
    assert "FIFO" in reasons["pipe.png"]
    assert "not a recognised image" in reasons["evil\x1b[2J.jpg"]
    catalog = load_catalog(config)
    inner = catalog[catalog["path"].str.endswith("inner.jpg")].iloc[0]
    assert inner["label"] == "hat" and inner["split"] == "train"
    assert "bundle.jpg is a folder named like an image" in out
    assert "\x1b" not in out and "evil\\x1b[2J.jpg" in out


def test_up_to_date_catalog_keeps_a_live_writers_thumbnail_temporary(tmp_path: Path) -> None:
    """The catalog stage prunes thumbnails even when up to date. It used to delete every
    hidden temporary in thumbs/, also one another process (an app, a second run) was writing;
    now only those whose writer is gone go."""
    from tests.test_artifacts import _dead_pid, _temporary

    source = copy_subset(tmp_path / "src", {"hat": 2}, splits=("train",))
    config = Config(artifacts_dir=tmp_path / "art", source=source)
    run_catalog(config, progress=False)
    dead = _temporary(config.thumbs_dir, "0123456789abcdef.jpg", _dead_pid())
    with artifacts.atomic_path(config.thumbs_dir / "fedcba9876543210.jpg") as live:
        live.write_bytes(b"being written")
        result = run_catalog(config, progress=False)
        assert result.skipped
        assert live.exists()
    assert not dead.exists()
