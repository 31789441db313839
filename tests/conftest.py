"""Shared fixtures: where the real photos are, and small real subsets of them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.config import DEFAULT_SOURCE

CLOTHING = DEFAULT_SOURCE


def real_photos(label: str, n: int, split: str = "train") -> list[Path]:
    """The first `n` real photos of one class and split of clothing-small, sorted by name."""
    folder = CLOTHING / split / label
    if not folder.is_dir():
        pytest.fail(
            f"the shared dataset is missing: {folder} (tests need ../shared beside the repo)"
        )
    return sorted(folder.glob("*.jpg"))[:n]


def copy_subset(
    dest: Path, per_class: dict[str, int], splits=("train", "validation", "test")
) -> Path:
    """Copy a few real photos per class and split into dest/<split>/<label>/ (a folder catalog)."""
    for split in splits:
        for label, n in per_class.items():
            target = dest / split / label
            target.mkdir(parents=True, exist_ok=True)
            for photo in real_photos(label, n, split):
                shutil.copy(photo, target / photo.name)
    return dest


@pytest.fixture
def artifacts_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh artifacts folder, also set as $LOOKALIKE_ARTIFACTS for subprocesses."""
    path = tmp_path / "artifacts"
    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(path))
    return path
