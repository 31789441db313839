"""Reads a catalog source (image folders, a CSV, the DeepFashion layout) into a table of files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.config import IMAGE_SUFFIXES, SOURCE_FORMATS
from pipelines.data.images import printable
from pipelines.errors import LookalikeError

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}
BBOX_COLUMNS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]
# Columns the catalog stage computes itself; a CSV column of the same name is kept as meta_<name>.
RESERVED = {"item_id", "width", "height", "bytes", "thumb", *BBOX_COLUMNS}
DEEPFASHION_FILES = (
    "Anno/list_category_cloth.txt",
    "Anno/list_category_img.txt",
    "Anno/list_bbox.txt",
    "Eval/list_eval_partition.txt",
)


def is_image_name(path: Path) -> bool:
    """True for the file types a catalog may hold (by extension; content is checked later)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def detect_format(source: Path) -> str:
    """Name the layout of `source`: "csv", "deepfashion" or "folders"."""
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return "csv"
        raise LookalikeError(
            f"{source} is a file but not a .csv; pass a folder of images, a CSV with a "
            f"'path' column, or a DeepFashion root"
        )
    if (source / DEEPFASHION_FILES[1]).is_file():
        return "deepfashion"
    return "folders"


def read_source(source: Path, fmt: str = "auto") -> tuple[pd.DataFrame, list[Path], str]:
    """Read a source into a table with at least `path` (absolute), `label` and `split`.

    Returns the table, the side files whose content defines it (a CSV, annotation lists: their
    hashes make the stage's fingerprint) and the format actually used.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise LookalikeError(
            f"catalog source {source} does not exist — pass --source with a folder of images, "
            f"a CSV file or a DeepFashion root"
        )
    if fmt not in SOURCE_FORMATS:
        raise LookalikeError(f"unknown format {fmt!r}; valid formats: {', '.join(SOURCE_FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(source)
    source = source.resolve()
    if fmt == "folders":
        if not source.is_dir():
            raise LookalikeError(f"--format folders needs a folder, got the file {source}")
        return read_folders(source), [], fmt
    if fmt == "csv":
        csv_path = source if source.is_file() else source / "manifest.csv"
        return read_csv(csv_path), [csv_path], fmt
    return read_deepfashion(source), [source / name for name in DEEPFASHION_FILES], fmt


def read_folders(root: Path) -> pd.DataFrame:
    """`ROOT/[split/]label/*.jpg|png|webp`; images directly in ROOT have no label.

    The first folder level counts as the split only when it is named like one (train,
    validation/val, test); the label is the image's own folder. Every entry named like an
    image that is not a folder is listed, so broken links, link loops and FIFOs reach the
    catalog stage's rejects with their reason instead of vanishing. A folder named like an
    image (`x.jpg/inner.jpg`) is not a label: the label is the nearest folder above it that
    is not named like an image, and `table.attrs["warnings"]` says so.
    """
    rows = []
    odd_folders: set[str] = set()
    for path in sorted(p for p in root.rglob("*") if is_image_name(p) and not p.is_dir()):
        parts = path.relative_to(root).parts[:-1]
        split = SPLIT_NAMES.get(parts[0].lower()) if parts else None
        label_parts = list(parts[1:] if split else parts)
        while label_parts and is_image_name(Path(label_parts[-1])):
            odd_folders.add(str(Path(root, *parts[: len(label_parts) + (1 if split else 0)])))
            label_parts.pop()
        rows.append(
            {
                "path": str(path),
                "label": label_parts[-1] if label_parts else None,
                "split": split,
            }
        )
    if not rows:
        raise LookalikeError(
            f"no images (jpg, png, webp) found under {root} — expected ROOT/[split/]label/*.jpg"
        )
    table = _typed(pd.DataFrame(rows))
    table.attrs["warnings"] = [
        f"{printable(folder)} is a folder named like an image; its files get the label of the "
        f"folder above it, not {Path(folder).name!r} — rename it if it is meant as a label"
        for folder in sorted(odd_folders)
    ]
    return table


def read_csv(csv_path: Path) -> pd.DataFrame:
    """A CSV with a `path` column (relative to the CSV's folder, or absolute) and any others."""
    if not csv_path.is_file():
        raise LookalikeError(f"CSV {csv_path} does not exist — pass --source with the CSV's path")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise LookalikeError(
            f"cannot read CSV {csv_path} ({err}); it must be UTF-8 CSV with a header row"
        ) from err
    if "path" not in table.columns:
        raise LookalikeError(
            f"CSV {csv_path} has no 'path' column (columns: {', '.join(table.columns)}) — add a "
            f"'path' column with image paths relative to the CSV"
        )
    if table.empty:
        raise LookalikeError(f"CSV {csv_path} has no rows — add one row per image")
    table = table.rename(columns={c: f"meta_{c}" for c in table.columns if c in RESERVED})
    base = csv_path.parent
    # An empty path stays empty (the catalog stage rejects it as such); joined to the CSV's
    # folder it would be read as that folder.
    table["path"] = [
        str((base / p.strip()).resolve()) if isinstance(p, str) and p.strip() else ""
        for p in table["path"]
    ]
    for column in ("label", "split"):
        if column not in table.columns:
            table[column] = None
    table["split"] = [_split_name(s) for s in table["split"]]
    table = _typed(table)
    table.attrs["warnings"] = _split_warnings(table, csv_path)
    return table


def read_deepfashion(root: Path) -> pd.DataFrame:
    """DeepFashion "Category and Attribute Prediction": category names, splits and bboxes."""
    for name in DEEPFASHION_FILES:
        if not (root / name).is_file():
            raise LookalikeError(
                f"{root / name} is missing — a DeepFashion root needs "
                f"{', '.join(DEEPFASHION_FILES)}"
            )
    categories = [line.split()[0] for line in _records(root / DEEPFASHION_FILES[0])]
    labels = {}
    for line in _records(root / DEEPFASHION_FILES[1]):
        name, index = line.split()
        labels[name] = categories[int(index) - 1]  # the lists are 1-based
    bboxes = {}
    for line in _records(root / DEEPFASHION_FILES[2]):
        name, *coords = line.split()
        bboxes[name] = [int(c) for c in coords]
    splits = {}
    for line in _records(root / DEEPFASHION_FILES[3]):
        name, status = line.split()
        splits[name] = _split_name(status)
    rows = []
    for name, label in labels.items():
        bbox = bboxes.get(name, [None] * 4)
        rows.append(
            {
                "path": str(root / name),
                "label": label,
                "split": splits.get(name),
                **dict(zip(BBOX_COLUMNS, bbox, strict=True)),
            }
        )
    if not rows:
        raise LookalikeError(f"{root / DEEPFASHION_FILES[1]} lists no images")
    table = pd.DataFrame(rows)
    for column in BBOX_COLUMNS:
        table[column] = table[column].astype("Int64")
    table = _typed(table)
    table.attrs["warnings"] = _split_warnings(table, root / DEEPFASHION_FILES[3])
    return table


def _records(path: Path) -> list[str]:
    """Data lines of a DeepFashion list: line 1 is a count, line 2 a header."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    try:
        expected = int(lines[0])
    except (IndexError, ValueError) as err:
        raise LookalikeError(
            f"{path} does not start with a count line (DeepFashion list format)"
        ) from err
    records = [line for line in lines[2:] if line]
    if len(records) != expected:
        raise LookalikeError(f"{path} says {expected} records but holds {len(records)}")
    return records


def _split_warnings(table: pd.DataFrame, where: Path) -> list[str]:
    """One warning per split value that is not train, validation or test."""
    known = set(SPLIT_NAMES.values())
    counts = table["split"].dropna().value_counts()
    return [
        f"{printable(str(where))}: split {name!r} of {count} row(s) is not one of "
        f"{', '.join(sorted(known))} (or {', '.join(sorted(set(SPLIT_NAMES) - known))}); "
        f"those rows are kept but no stage trains, validates or tests on them — rename it"
        for name, count in counts.items()
        if name not in known
    ]


def _split_name(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return SPLIT_NAMES.get(value.strip().lower(), value.strip().lower())


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Labels and splits as strings; a blank label ("  ") is a missing one, not a class."""
    labels = table["label"].astype("string").str.strip()
    table["label"] = labels.mask(labels == "")
    table["split"] = table["split"].astype("string")
    table = table.reset_index(drop=True)
    table.attrs.setdefault("warnings", [])
    return table
