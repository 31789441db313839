"""Atomic writes and manifests: an interrupted write never leaves a file that looks complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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
from pipelines.config import REPO_ROOT
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


def test_same_size_replacement_is_not_fresh(tmp_path: Path) -> None:
    """Issue 11, defect 7: freshness checks the content, not only the size."""
    path = tmp_path / "emb.npy"
    write_npy(np.ones((3, 2), np.float32), path)
    write_manifest(path, "embed", {"batch": 32}, {"catalog": "abc"})
    size = path.stat().st_size
    write_npy(np.full((3, 2), 2.0, np.float32), path)  # same shape, so the same byte count
    assert path.stat().st_size == size
    assert not is_fresh(path, "embed", {"batch": 32}, {"catalog": "abc"})
    with pytest.raises(LookalikeError, match="does not match its manifest .* to rebuild it"):
        artifact_hash(path, "python -m pipelines embed")


def test_kill_between_rename_and_manifest_write_is_detected(tmp_path: Path) -> None:
    """Issue 11, defect 7: a run killed after renaming its new artifact into place but before
    writing the new manifest leaves new bytes beside the old manifest: not fresh."""
    path = tmp_path / "catalog.parquet"
    write_json({"rows": 1}, path)
    write_manifest(path, "catalog", {}, {"source": "s1"})
    write_json({"rows": 2}, path)  # the next run's artifact, same size; then the kill
    assert not is_fresh(path, "catalog", {}, {"source": "s1"})
    write_manifest(path, "catalog", {}, {"source": "s1"})
    assert is_fresh(path, "catalog", {}, {"source": "s1"})


def test_unreadable_manifest_is_no_manifest(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    write_npy(np.zeros(2, np.float32), path)
    (tmp_path / "x.manifest.json").write_bytes(b"\xff\xfe[1, 2]")
    assert read_manifest(path) is None
    (tmp_path / "x.manifest.json").write_text("[1, 2]")
    assert read_manifest(path) is None
    assert not is_fresh(path, "s", {}, {})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("/proc/x", "error: cannot write to --artifacts /proc/x (.*) — pass a folder you can"),
        ("FILE", "error: --artifacts .*afile is a file, not a folder — pass a folder"),
    ],
)
def test_bad_artifacts_folder_is_one_line_not_a_traceback(
    where: str, message: str, tmp_path: Path
) -> None:
    """Issue 11, defect 8: `--artifacts /proc/x` and `--artifacts <a file>` exit 2 with one
    line (they raised FileNotFoundError / NotADirectoryError from worker threads before)."""
    (tmp_path / "afile").write_text("x")
    where = str(tmp_path / "afile") if where == "FILE" else where
    proc = _cli("catalog", "--artifacts", where, "--source", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.match(message, lines[0]), proc.stderr


def test_ensure_writable_dir_creates_the_folder(tmp_path: Path) -> None:
    from pipelines.artifacts import ensure_writable_dir

    folder = ensure_writable_dir(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_a_rewritten_file_is_hashed_again_not_remembered(tmp_path: Path) -> None:
    import hashlib
    import os

    from pipelines.artifacts import sha256_file

    path = tmp_path / "a.bin"
    path.write_bytes(b"first")
    assert sha256_file(path) == hashlib.sha256(b"first").hexdigest()
    # Same size, rewritten in place within the same second: the mtime in ns still moves.
    path.write_bytes(b"other")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert sha256_file(path) == hashlib.sha256(b"other").hexdigest()


def test_a_large_unchanged_file_is_not_rehashed_but_a_rewrite_or_copy_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large files (an 8 GB embeddings matrix at 1M items) skip the hash while inode, size and
    mtime are those the manifest recorded; any rewrite (same size) or copy is hashed again."""
    import shutil

    from pipelines import artifacts

    monkeypatch.setattr(artifacts, "QUICK_CHECK_MIN_BYTES", 16)
    path = tmp_path / "emb.npy"
    write_npy(np.ones((8, 4), np.float32), path)
    write_manifest(path, "embed", {}, {"catalog": "abc"})
    hashed = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda p, *a: hashed.append(p) or real(p, *a))
    assert is_fresh(path, "embed", {}, {"catalog": "abc"})
    assert artifact_hash(path, "embed") == read_manifest(path)["sha256"]
    assert hashed == []  # the quick check answered
    write_npy(np.full((8, 4), 2.0, np.float32), path)  # same size, new bytes and mtime
    assert not is_fresh(path, "embed", {}, {"catalog": "abc"})
    assert hashed == [path]
    copy = tmp_path / "copy.npy"
    write_npy(np.ones((8, 4), np.float32), copy)
    write_manifest(copy, "embed", {}, {"catalog": "abc"})
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy2(copy, moved / "copy.npy")  # same mtime, another inode
    shutil.copy2(artifacts.manifest_path(copy), moved / artifacts.manifest_path(copy).name)
    assert is_fresh(moved / "copy.npy", "embed", {}, {"catalog": "abc"})
    assert hashed[-1] == moved / "copy.npy"  # hashed, and still matching
