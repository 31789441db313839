"""Writes and reads artifacts atomically, each with a JSON manifest that says how it was made."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import signal
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import LookalikeError

MANIFEST_VERSION = 1
_VERSIONED = (
    "numpy",
    "pandas",
    "pyarrow",
    "pillow",
    "scikit-learn",
    "umap-learn",
    "tensorflow-cpu",
    "tensorflow",
    "keras",
)


# sha256 of files this process already hashed, keyed by what any rewrite changes (inode,
# size, mtime in ns): freshness checks and readers hash every input, and the app, the
# service and `run` ask about the same files again and again.
# Files at least this large are checked against their manifest by inode, size and mtime when
# those are unchanged since the manifest was written, not re-hashed: hashing a 1M x 2048
# embeddings file (8 GB) took 4-8 s of the app's first page at 1M items. Any rewrite or copy
# changes the inode or the mtime, and then the file is hashed as before.
QUICK_CHECK_MIN_BYTES = 256 << 20
_HASHED: dict[tuple[str, int, int, int], str] = {}
_HASHED_MAX = 4096


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (remembered per process until the
    file is rewritten)."""
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        key = (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key in _HASHED:
            return _HASHED[key]
        digest = hashlib.sha256()
        while block := handle.read(chunk):
            digest.update(block)
    if len(_HASHED) >= _HASHED_MAX:
        _HASHED.clear()
    _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a JSON-serialisable object in canonical form (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# Tests: LOOKALIKE_KILL_AT=<written|renamed>:<path tail> SIGKILLs a write before|after its rename.
KILL_AT_ENV = "LOOKALIKE_KILL_AT"


def _kill_point(point: str, path: Path) -> None:
    point_at, _, tail = os.environ.get(KILL_AT_ENV, "").partition(":")
    if point_at == point and tail and path.as_posix().endswith(f"/{tail}"):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted or failed write leaves `path` as it was (absent or the previous version),
    never half-written. The temporary name ends in `path`'s own suffixes (`.tmp.weights.h5`,
    `.tmp.keras`), because Keras picks its file format from them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes)
    # The owner's pid and host are in the name, so `sweep_stale_temporaries` can tell the
    # temporary of a SIGKILLed writer (never renamed, never unlinked) from one being written.
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{owner_tag()}.",
        suffix=f".tmp{suffixes}",
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file owner-only (0600); give the artifact the usual permissions
        # (0666 less the umask) so an app run by another user can read it.
        os.chmod(tmp, 0o666 & ~_umask())
        _kill_point("written", path)
        os.replace(tmp, path)
        _kill_point("renamed", path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Temporaries older than this in the name format before the owner was recorded (no pid) are
# removed: no write takes a day, and the next `run` redoes whatever was cut short.
OLD_TEMPORARY_MAX_AGE_S = 24 * 3600
# A live pid owns a temporary only when it started before the temporary last changed; this
# margin absorbs clock steps and a file server's clock, so a reused pid (a container whose
# `run` restarts under the same pid) frees a killed run's temporaries an hour later.
PID_REUSE_MARGIN_S = 3600
# `.{name}.pid{pid}@{host}.{8 random}.tmp{suffixes}`, as atomic_path names them, and the older
# `.{name}.{8 random}.tmp{suffixes}`; the 8 characters are mkstemp's alphabet.
_TEMPORARY = re.compile(
    r"\.(?P<target>.+)\.pid(?P<pid>[1-9][0-9]{0,9})@(?P<host>[A-Za-z0-9-]+)"
    r"\.[a-z0-9_]{8}\.tmp(?P<tail>(\.[^.]+)*)"
)
_OLD_TEMPORARY = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(?P<tail>(\.[^.]+)*)")


@functools.cache
def _host_tag() -> str:
    """This machine's name as it goes into a temporary's name: letters, digits and '-' only,
    at most 40 characters (a longer name is cut and ends in a hash of the whole name)."""
    host = socket.gethostname() or "localhost"
    tag = re.sub(r"[^A-Za-z0-9-]", "-", host)
    if len(tag) > 40:
        tag = f"{tag[:31]}-{hashlib.sha256(host.encode()).hexdigest()[:8]}"
    return tag


def _is_alive(pid: int) -> bool:
    """True when process `pid` exists on this machine (possibly owned by another user); True
    too when that cannot be told, so the file is kept."""
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # PermissionError: alive, another user's
    return True


@functools.cache
def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def _process_start(pid: int) -> float | None:
    """When process `pid` started, in seconds since the epoch (Linux /proc), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def owner_tag() -> str:
    """`pid{pid}@{host}` of this process, as temporaries' names record their owner."""
    return f"pid{os.getpid()}@{_host_tag()}"


def owner_is_gone(pid: int, host: str, stat: os.stat_result) -> bool:
    """True when process `pid` on `host`, which wrote the file or folder with `stat`, can no
    longer own it: it runs here and is dead, or its pid now belongs to a later process.
    Another host's pids mean nothing here, so its files are never called stale."""
    if host != _host_tag():
        return False
    if not _is_alive(pid):
        return True
    # ctime, not mtime: nothing can set it back, and every write moves it forward.
    start = _process_start(pid)
    return start is not None and stat.st_ctime < start - PID_REUSE_MARGIN_S


def _is_stale(name: str, stat: os.stat_result, now: float) -> bool:
    """True when `name` is an atomic_path temporary no live writer can own."""
    match = _TEMPORARY.fullmatch(name)
    if match is not None:
        if not match["target"].endswith(match["tail"]):
            return False
        return owner_is_gone(int(match["pid"]), match["host"], stat)
    match = _OLD_TEMPORARY.fullmatch(name)
    if match is None or not match["target"].endswith(match["tail"]):
        return False
    return now - max(stat.st_mtime, stat.st_ctime) > OLD_TEMPORARY_MAX_AGE_S


def sweep_stale_temporaries(folder: Path) -> dict[Path, int]:
    """Remove the temporary files of atomic_path writes whose writer is gone.

    A writer killed by SIGKILL or a power cut leaves its hidden temporary
    (`.{name}.pid{pid}@{host}.{random}.tmp{suffixes}`) beside the artifact forever; at 1M items
    an embeddings temporary is several GB. This walks `folder` and everything under it (not
    following symlinks) and removes a temporary when it names this host and a pid that no
    longer runs here (or was reused by a process started after the temporary was last
    written). A temporary of a live process, of another host (a folder shared over NFS), or any
    file whose name is not exactly an atomic_path temporary is left alone; so is a temporary in
    the older name format without a pid unless it is older than `OLD_TEMPORARY_MAX_AGE_S`.

    Args:
        folder: the artifacts folder; a missing folder removes nothing.

    Returns:
        {removed path: its size in bytes}. A file that disappears or cannot be removed
        meanwhile is skipped, never raised.
    """
    removed: dict[Path, int] = {}
    now = time.time()
    pending = [Path(folder)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                    continue
                # The cheap test first: tens of thousands of thumbnails pass through here.
                if not (entry.name.startswith(".") and ".tmp" in entry.name):
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
                if _is_stale(entry.name, stat, now):
                    os.unlink(entry.path)
                    removed[Path(entry.path)] = stat.st_size
            except OSError:
                continue  # gone meanwhile, or not ours to remove
    return removed


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write a table atomically as parquet (no index)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_npy(array: np.ndarray, path: Path) -> None:
    """Write an array atomically as .npy."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically, indented for people to read."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def manifest_path(artifact: Path) -> Path:
    """`dir/name.ext` -> `dir/name.manifest.json` (`dir/.manifest.json` for a folder artifact)."""
    artifact = Path(artifact)
    stem = artifact.name.split(".")[0]
    return artifact.with_name(f"{stem}.manifest.json")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact's numbers."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def stage_key(stage: str, params: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """The identity of one stage run: what it was asked to do on which inputs."""
    return sha256_json({"stage": stage, "params": dict(params), "inputs": dict(inputs)})


def write_manifest(
    artifact: Path,
    stage: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `artifact`'s manifest after the artifact itself; returns the manifest.

    `inputs` maps input names to their content hashes (for example the catalog's sha256),
    so a later run can tell whether anything it depends on changed.
    """
    artifact = Path(artifact)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "stage": stage,
        "artifact": artifact.name,
        "key": stage_key(stage, params, inputs),
        "params": dict(params),
        "inputs": dict(inputs),
        "sha256": sha256_file(artifact) if artifact.is_file() else None,
        "bytes": artifact.stat().st_size if artifact.is_file() else None,
        **_stat_fields(artifact),
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(dict(extra) if extra else {}),
    }
    write_json(manifest, manifest_path(artifact))
    return manifest


def _stat_fields(artifact: Path) -> dict[str, int]:
    """{"inode", "mtime_ns"} of a large file (what the quick check compares), else {}."""
    if not artifact.is_file():
        return {}
    stat = artifact.stat()
    if stat.st_size < QUICK_CHECK_MIN_BYTES:
        return {}
    return {"inode": stat.st_ino, "mtime_ns": stat.st_mtime_ns}


def read_manifest(artifact: Path) -> dict[str, Any] | None:
    """The manifest beside `artifact`, or None when there is none or it cannot be read."""
    path = manifest_path(artifact)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_fresh(
    artifact: Path, stage: str, params: Mapping[str, Any], inputs: Mapping[str, str]
) -> bool:
    """True when `artifact` exists, was made by this stage from these inputs, and its bytes are
    the ones its manifest recorded.

    The content hash is checked, not only the size: a file replaced by another of the same
    size, or a kill between an artifact's rename and its manifest's write (new artifact, old
    manifest), must rebuild. sha256 runs at ~1 GB/s, so this costs well under a second for
    every artifact the stages write.
    """
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if manifest is None or not artifact.exists():
        return False
    if manifest.get("key") != stage_key(stage, params, inputs):
        return False
    return matches_manifest(artifact, manifest)


def matches_manifest(artifact: Path, manifest: Mapping[str, Any] | None = None) -> bool:
    """True when the file `artifact` has the size and sha256 its manifest recorded (a folder
    artifact, which has no hash, matches when it exists)."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact) if manifest is None else manifest
    if manifest is None or not artifact.exists():
        return False
    if not artifact.is_file():
        return True
    if manifest.get("bytes") != artifact.stat().st_size:
        return False
    quick = _stat_fields(artifact)
    if quick and all(manifest.get(k) == v for k, v in quick.items()):
        return bool(manifest.get("sha256"))
    return manifest.get("sha256") == sha256_file(artifact)


def artifact_hash(artifact: Path, make_with: str) -> str:
    """The recorded sha256 of an upstream artifact, or a clear error saying how to build it.

    An artifact whose bytes no longer match its manifest (replaced, or a run killed between
    the two writes) is an error too: a later stage must never key itself on a stale hash.
    """
    manifest = read_manifest(artifact)
    if not Path(artifact).exists() or manifest is None or not manifest.get("sha256"):
        raise LookalikeError(f"{artifact} is missing — run `{make_with}` first")
    if not matches_manifest(artifact, manifest):
        raise LookalikeError(
            f"{artifact} does not match its manifest (changed since it was written, or a run "
            f"was interrupted) — run `{make_with}` to rebuild it"
        )
    return str(manifest["sha256"])


def ensure_writable_dir(folder: Path, what: str = "the artifacts folder") -> Path:
    """Create `folder` if needed and check that files can be written in it.

    Raises LookalikeError (one line: which folder, why, what to pass instead) for a path that
    is a file, lies under /proc or a read-only mount, or cannot be created, so no stage fails
    later with a traceback from a worker thread.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise LookalikeError(
            f"{what} {folder} is a file, not a folder — pass a folder (it is created if missing)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise LookalikeError(
            f"cannot write to {what} {folder} ({err.strerror or err}) — pass a folder you can "
            f"write to"
        ) from err
    return folder
