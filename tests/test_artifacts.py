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


# Temporaries of killed writers: sweep_stale_temporaries removes exactly those whose owner is
# gone, and nothing else.


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(child.stdout)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def _temporary(folder: Path, name: str, pid: int, host: str | None = None) -> Path:
    """A file named as atomic_path names the temporary of `folder/name` written by `pid`."""
    from pipelines.artifacts import _host_tag

    suffixes = "".join(Path(name).suffixes)
    path = folder / f".{name}.pid{pid}@{host or _host_tag()}.k3j_9x0a.tmp{suffixes}"
    path.write_bytes(b"half-written")
    return path


def test_temporary_of_a_killed_writer_is_swept_and_the_artifact_kept(tmp_path: Path) -> None:
    """A writer SIGKILLed inside atomic_path leaves its temporary (the `finally` never runs);
    the sweep removes it, reports its size, and leaves the previous artifact as it was."""
    from pipelines.artifacts import sweep_stale_temporaries

    path = tmp_path / "embeddings" / "x.weights.h5"
    write_npy(np.arange(3, dtype=np.float32), path)
    before = path.read_bytes()
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from pipelines.artifacts import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as tmp:\n"
        "    tmp.write_bytes(b'x' * 5000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO_ROOT, timeout=120)
    assert child.returncode == -9
    [left] = [p for p in path.parent.iterdir() if p != path]
    assert left.name.startswith(".x.weights.h5.pid") and left.name.endswith(".tmp.weights.h5")

    assert sweep_stale_temporaries(tmp_path) == {left: 5000}
    assert sorted(path.parent.iterdir()) == [path] and path.read_bytes() == before
    assert sweep_stale_temporaries(tmp_path) == {}


def test_temporary_of_a_live_writer_stays(tmp_path: Path) -> None:
    """An app or a second `run` may be writing right now: its temporary is never touched."""
    from pipelines.artifacts import sweep_stale_temporaries

    path = tmp_path / "models" / "cnn.keras"
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"being written")
        assert str(os.getpid()) in tmp.name and tmp.name.endswith(".tmp.keras")
        assert sweep_stale_temporaries(tmp_path) == {}
        assert tmp.exists()
    assert path.read_bytes() == b"being written"
    kept = _temporary(tmp_path, "other.npy", os.getpid())
    assert sweep_stale_temporaries(tmp_path) == {}
    assert kept.exists()


def test_dead_pid_temporary_is_removed_in_every_subfolder(tmp_path: Path) -> None:
    from pipelines.artifacts import sweep_stale_temporaries

    pid = _dead_pid()
    (tmp_path / "thumbs").mkdir()
    (tmp_path / "embeddings" / "custom_cnn.parts").mkdir(parents=True)
    stale = [
        _temporary(tmp_path, "catalog.parquet", pid),
        _temporary(tmp_path / "thumbs", "0a1b2c3d4e5f6071.jpg", pid),
        _temporary(tmp_path / "embeddings" / "custom_cnn.parts", "00003.probs.npy", pid),
        _temporary(tmp_path, "README", pid),  # no suffix: the name ends in `.tmp`
    ]
    assert sweep_stale_temporaries(tmp_path) == {p: len(b"half-written") for p in stale}
    assert not any(p.exists() for p in stale)


def test_other_hosts_real_artifacts_and_unrelated_files_stay(tmp_path: Path) -> None:
    """Only this host's exact atomic_path names are candidates: a pid of another machine
    (a folder shared over NFS) says nothing here, and anything else is someone's file."""
    from pipelines.artifacts import _host_tag, sweep_stale_temporaries

    pid, host = _dead_pid(), _host_tag()
    write_npy(np.zeros(2, np.float32), tmp_path / "emb.npy")
    write_manifest(tmp_path / "emb.npy", "embed", {}, {})
    keep = [
        tmp_path / "emb.npy",
        tmp_path / "emb.manifest.json",
        _temporary(tmp_path, "emb.npy", pid, host="other-machine"),
        tmp_path / ".hidden",
        tmp_path / ".emb.npy.tmp",
        tmp_path / ".emb.npy.tmp.npy",
        tmp_path / f".emb.npy.pid{pid}.k3j_9x0a.tmp.npy",  # no host
        tmp_path / f".emb.npy.pid{pid}@{host}.k3j_9x0a.tmp.parquet",  # not emb.npy's suffix
        tmp_path / f"emb.npy.pid{pid}@{host}.k3j_9x0a.tmp.npy",  # not hidden
        tmp_path / f".emb.npy.pid{pid}@{host}.k3j_9x0a.tmp.npy.bak",
        tmp_path / ".write-check-k3j_9x0a",
        tmp_path / f".emb.npy.pid9999999999@{host}.k3j_9x0a.tmp.npy",  # no such pid can exist
    ]
    for path in keep[3:]:
        path.write_bytes(b"mine")
    # A folder and a symlink named like stale temporaries: never removed (nor followed).
    folder = _temporary(tmp_path, "a.npy", pid)
    folder.unlink()
    folder.mkdir()
    link = _temporary(tmp_path, "b.npy", pid)
    link.unlink()
    link.symlink_to(tmp_path / "emb.npy")
    assert sweep_stale_temporaries(tmp_path) == {}
    assert all(p.exists() for p in [*keep, folder, link])


def test_a_pid_reused_by_a_process_started_later_does_not_own_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a restarted container `run` may get the killed run's pid again: a live pid owns a
    temporary only when it started before the temporary last changed."""
    import time

    from pipelines import artifacts

    stale = _temporary(tmp_path, "emb.npy", os.getpid())
    monkeypatch.setattr(artifacts, "_process_start", lambda pid: time.time() + 2 * 3600)
    assert artifacts.sweep_stale_temporaries(tmp_path) == {stale: len(b"half-written")}
    kept = _temporary(tmp_path, "emb.npy", os.getpid())
    monkeypatch.setattr(artifacts, "_process_start", lambda pid: None)  # unknown: keep
    assert artifacts.sweep_stale_temporaries(tmp_path) == {}
    assert kept.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux /proc")
def test_process_start_is_when_the_process_started() -> None:
    import time

    from pipelines.artifacts import _process_start

    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = _process_start(child.pid)
    finally:
        child.kill()
        child.wait()
    assert start is not None and before - 2 <= start <= time.time() + 2
    assert _process_start(_dead_pid()) is None


def test_old_format_temporaries_are_removed_only_after_a_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temporaries named before the owner was recorded cannot be tied to a process; a day
    after their last change no writer can still be using them."""
    import time

    from pipelines import artifacts

    old = tmp_path / ".catalog.parquet.k3j_9x0a.tmp.parquet"
    old.write_bytes(b"half")
    unrelated = [
        tmp_path / ".catalog.parquet.k3j_9x0ab.tmp.parquet",  # not 8 random characters
        tmp_path / ".catalog.parquet.k3j_9x0a.tmp.npy",  # not catalog.parquet's suffix
    ]
    for path in unrelated:
        path.write_bytes(b"mine")
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 23 * 3600)
    assert artifacts.sweep_stale_temporaries(tmp_path) == {}
    monkeypatch.setattr(time, "time", lambda: now + 25 * 3600)
    assert artifacts.sweep_stale_temporaries(tmp_path) == {old: 4}
    assert all(p.exists() for p in unrelated)


def test_a_temporary_removed_meanwhile_is_skipped_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs may sweep at once: a file the other one removed first is no error."""
    from pipelines import artifacts

    pid = _dead_pid()
    first = _temporary(tmp_path, "a.npy", pid)
    second = _temporary(tmp_path, "b.npy", pid)
    is_stale = artifacts._is_stale

    def removed_by_someone_else(name: str, stat: os.stat_result, now: float) -> bool:
        if name == first.name:
            first.unlink()
        return is_stale(name, stat, now)

    monkeypatch.setattr(artifacts, "_is_stale", removed_by_someone_else)
    assert artifacts.sweep_stale_temporaries(tmp_path) == {second: len(b"half-written")}
    assert artifacts.sweep_stale_temporaries(tmp_path / "missing") == {}


def test_run_says_what_the_sweep_freed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from types import SimpleNamespace

    from pipelines.run import _size, _sweep

    pid = _dead_pid()
    for name in ("a.npy", "b.npy"):
        _temporary(tmp_path, name, pid).write_bytes(b"x" * 1_600_000)
    _sweep(SimpleNamespace(artifacts_dir=tmp_path))
    assert capsys.readouterr().out == (
        "removed 2 temporary files left by an interrupted run (3.2 MB)\n"
    )
    _sweep(SimpleNamespace(artifacts_dir=tmp_path))
    assert capsys.readouterr().out == ""
    assert [_size(n) for n in (812, 4_200_000, 3_100_000_000)] == ["812 B", "4.2 MB", "3.1 GB"]
