"""Atomic writes and manifests: an interrupted write never leaves a file that looks complete."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipelines.artifacts import (
    artifact_hash,
    atomic_path,
    is_fresh,
    read_manifest,
    write_json,
    write_manifest,
    write_npy,
)
from pipelines.errors import LookalikeError


def test_failed_write_keeps_the_previous_version_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "emb.npy"
    write_npy(np.arange(4, dtype=np.float32), path)
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    np.testing.assert_array_equal(np.load(path), np.arange(4, dtype=np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]


def test_written_files_follow_the_umask_not_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def test_manifest_detects_changed_params_inputs_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "emb.npy"
    write_npy(np.ones((3, 2), np.float32), path)
    manifest = write_manifest(path, "embed", {"batch": 32}, {"catalog": "abc"})
    assert read_manifest(path) == manifest
    assert is_fresh(path, "embed", {"batch": 32}, {"catalog": "abc"})
    assert not is_fresh(path, "embed", {"batch": 64}, {"catalog": "abc"})
    assert not is_fresh(path, "embed", {"batch": 32}, {"catalog": "xyz"})
    with open(path, "r+b") as handle:
        handle.truncate(10)
    assert not is_fresh(path, "embed", {"batch": 32}, {"catalog": "abc"})


def test_missing_upstream_artifact_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="python -m pipelines catalog"):
        artifact_hash(tmp_path / "catalog.parquet", "python -m pipelines catalog")
