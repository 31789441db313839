"""The runs of the update benchmark (`pipelines/bench/update.py`): a snapshot of the committed
engine every child imports, children whose output goes to a log, `python -m pipelines run` as
such a child (its scratch folder: `scratch.removed_afterwards`). Writes only under the
folders it is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.bench.common import RESULT_PREFIX
from pipelines.config import REPO_ROOT, Config

# The update benchmark's own modules, taken from the working tree into the committed engine's
# snapshot (the children's entry point and task table, and the tasks themselves).
OVERLAY = (
    "pipelines/bench/common.py",
    "pipelines/bench/update.py",
    "pipelines/bench/update_runs.py",
    "pipelines/bench/update_checks.py",
    "pipelines/bench/update_synthetic.py",
    "pipelines/bench/scratch.py",
)
_STAGE_LINE = re.compile(r"^\[(\d+)/(\d+)\] (.+)$")


def snapshot_code(dest: Path) -> dict[str, Any]:
    """Write the engine every child of this run imports into `dest`/pipelines: the committed
    `pipelines/` at HEAD (uncommitted edits of other engineers stay out: a half-written module
    would break or skew the run), with the update benchmark's own modules (OVERLAY) as they are
    in the working tree. Without git, the working tree is copied as it is.

    Returns {"commit", "overlay": the overlaid files, "uncommitted": engine files that differ
    from HEAD and were left out, "sources_sha256": a hash of the snapshot's sources}.
    """

    def git(*args: str) -> subprocess.CompletedProcess[bytes] | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, timeout=60)
            return out if out.returncode == 0 else None
        return None

    dest.mkdir(parents=True, exist_ok=True)
    head = git("rev-parse", "--short", "HEAD")
    archive = git("archive", "--format=tar", "HEAD", "pipelines") if head else None
    if archive is not None:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
        for rel in OVERLAY:
            shutil.copy2(REPO_ROOT / rel, dest / rel)
    else:
        shutil.copytree(
            REPO_ROOT / "pipelines",
            dest / "pipelines",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    digest = hashlib.sha256()
    for path in sorted((dest / "pipelines").rglob("*.py")):
        digest.update(str(path.relative_to(dest)).encode() + path.read_bytes())
    status = git("status", "--porcelain", "--", "pipelines")
    changed = [line[3:] for line in (status.stdout.decode() if status else "").splitlines()]
    return {
        "commit": head.stdout.decode().strip() if head else None,
        "overlay": list(OVERLAY) if archive is not None else [],
        "uncommitted": [c for c in changed if c not in OVERLAY] if archive is not None else [],
        "sources_sha256": digest.hexdigest()[:16],
    }


def run_child_logged(
    code_root: Path, task: str, params: dict[str, Any], log: Path, timeout: float
) -> dict[str, Any]:
    """Run a CHILD_TASKS task in a fresh process importing the engine from `code_root`;
    its output goes to `log`, its stage headers and run table to this process's output.
    Returns the child's result (with "stage_names": the `[i/n] name` headers it printed) or
    {"error": ...}. The child is killed if this process is interrupted."""
    env = {
        **os.environ,
        "PYTHONPATH": str(code_root),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    code = "from pipelines.bench.common import child_main; child_main()"
    names: list[str] = []
    result: dict[str, Any] | None = None
    tail: list[str] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(log, "a") as out:
        out.write(f"\n==== {task} {json.dumps(params)}\n")
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=code_root,
            env=env,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps({"task": task, "params": params}))
            proc.stdin.close()
            in_table = False
            for line in proc.stdout:
                out.write(line)
                text = line.rstrip("\n")
                tail = [*tail[-4:], text]
                if text.startswith(RESULT_PREFIX):
                    result = json.loads(text[len(RESULT_PREFIX) :])
                    continue
                match = _STAGE_LINE.match(text)
                if match:
                    names.append(match.group(3))
                    print(f"   {text}", flush=True)
                in_table = in_table or text.startswith("stage ")
                if in_table:
                    print(f"   {text}", flush=True)
                    in_table = not text.startswith("total")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{task} took over {timeout:.0f} s")
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if result is None:
        return {"error": f"child {task} exited {proc.returncode}: {' | '.join(tail)}"}
    result["stage_names"] = names
    return result


def child_run(
    artifacts_dir: str, source: str, settings: dict[str, Any], force: bool = False
) -> dict[str, Any]:
    """(child) `python -m pipelines run` on `source` into `artifacts_dir`, as run_all; returns
    its seconds, each stage's seconds and one-line result, and the catalog's size."""
    from pipelines.run import run_all

    config = Config(artifacts_dir=Path(artifacts_dir), source=Path(source), **settings)
    t0 = time.perf_counter()
    results = run_all(config, force=force)
    seconds = time.perf_counter() - t0
    return {
        "run_seconds": round(seconds, 2),
        "items": len(pd.read_parquet(config.catalog_path)),
        "stages": [
            {
                "stage": r.stage,
                "seconds": round(r.seconds, 2),
                "skipped": r.skipped,
                "result": r.describe(),
            }
            for r in results
        ],
    }
