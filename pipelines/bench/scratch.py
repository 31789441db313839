"""The benchmark's scratch folders: created for one run, removed however it ends (normally, on
an exception, on SIGTERM), and a killed run's leftovers swept by the next. Writes and removes
only under the scratch root (`vectors_disk.scratch_dir`) and the folders it is given.

The 1M sections write 13 GB of vectors and indexes; a run stopped by a timeout used to leave
them under bench/scratch for good. Each run now writes under its own `run-pid{pid}@{host}`
folder, which it removes at the end; a folder whose process is gone (SIGKILL, a power cut) is
removed by the next `bench`, as `artifacts.sweep_stale_temporaries` removes a killed writer's
temporaries.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.artifacts import owner_is_gone, owner_tag

RUN_PREFIX = "run-"
_RUN_FOLDER = re.compile(r"run-pid(?P<pid>\d+)@(?P<host>.+)")
# What earlier versions left loose in the scratch root (the 1M sections' cached vectors,
# queries, truths and indexes, and their half-written files): never owned, always swept.
_LOOSE_FILE = re.compile(r"(vectors|queries|truth|ann)_[\w.]+\.(npy|npz)(\.partial)?")


@contextlib.contextmanager
def sigterm_as_exit(what: str) -> Iterator[None]:
    """While the block runs, SIGTERM raises SystemExit (in the main thread; elsewhere nothing
    changes), so `finally` blocks and context managers clean up as on an exception. The
    handler before it is restored afterwards."""
    previous = None

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(f"{what}: stopped by signal {signum}")

    with contextlib.suppress(ValueError):  # not the main thread
        previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def removed_afterwards(path: Path, what: str = "bench") -> Iterator[Path]:
    """Yield `path` (created empty), and remove it however the block ends: normally, on an
    exception, or on SIGTERM (`sigterm_as_exit`)."""
    path = Path(path)
    with sigterm_as_exit(what):
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def run_scratch(root: Path, what: str = "bench") -> contextlib.AbstractContextManager[Path]:
    """This run's own scratch folder under `root` (`run-pid{pid}@{host}`), removed however the
    run ends; the leftovers of killed runs under `root` are swept first (`sweep_scratch`)."""
    sweep_scratch(root)
    return removed_afterwards(Path(root) / f"{RUN_PREFIX}{owner_tag()}", what)


def sweep_scratch(root: Path) -> dict[Path, int]:
    """Remove what killed runs left in the scratch `root`: `run-pid{pid}@{host}` folders whose
    process is gone (this host's, dead or its pid reused; another host's are left alone) and
    the loose files earlier versions cached there. Anything else is left alone (the root may be
    a folder the user named with $LOOKALIKE_SCRATCH).

    Returns
    -------
    {removed path: its size in bytes}; what vanishes or cannot be removed meanwhile is skipped.
    """
    removed: dict[Path, int] = {}
    root = Path(root)
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        try:
            stat = entry.lstat()
            run = _RUN_FOLDER.fullmatch(entry.name)
            if entry.is_dir() and not entry.is_symlink() and run is not None:
                if not owner_is_gone(int(run["pid"]), run["host"], stat):
                    continue
                size = sum(p.lstat().st_size for p in entry.rglob("*") if p.is_file())
                shutil.rmtree(entry)
            elif entry.is_file() and _LOOSE_FILE.fullmatch(entry.name):
                size = stat.st_size
                entry.unlink()
            else:
                continue
        except OSError:
            continue
        removed[entry] = size
    if removed:
        total = sum(removed.values()) / 1e9
        print(f"bench: removed {len(removed)} leftovers of stopped runs ({total:.1f} GB) in {root}")
    return removed
