"""The benchmark's scratch: each run's own folder is removed however the run ends (normally, on
SIGTERM), a killed run's folder and earlier versions' loose files are swept by the next run,
and nothing else in the scratch root is touched. The 1M sections run only when named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.artifacts import _host_tag, owner_tag
from pipelines.bench import OPT_IN_SECTIONS, SECTIONS, check_sections, run_bench
from pipelines.bench.scratch import RUN_PREFIX, run_scratch, sweep_scratch
from pipelines.config import REPO_ROOT, Config
from tests.test_artifacts import _dead_pid

# A child that takes its run's scratch folder under argv[1], writes into it, says so and
# waits to be stopped.
CHILD = (
    "import sys, time; from pathlib import Path\n"
    "from pipelines.bench.scratch import run_scratch\n"
    "with run_scratch(Path(sys.argv[1])) as work:\n"
    "    (work / 'vectors.npy').write_bytes(b'x' * 1000); print(work, flush=True)\n"
    "    time.sleep(60)\n"
)


def _started(root: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    work = Path(proc.stdout.readline().strip())
    assert work.parent == root and (work / "vectors.npy").exists()
    return proc, work


def test_the_1m_sections_run_only_when_named() -> None:
    for name in ("ann_1m", "maps_1m", "update"):
        assert name in OPT_IN_SECTIONS and name not in SECTIONS
    assert check_sections(["maps_1m", "ann_1m"]) == ("ann_1m", "maps_1m")


def test_sweep_removes_dead_runs_and_old_loose_files_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    dead = root / f"{RUN_PREFIX}pid{_dead_pid()}@{_host_tag()}"
    (dead / "deep").mkdir(parents=True)
    (dead / "deep" / "vectors.npy").write_bytes(b"x" * 3000)
    live = root / f"{RUN_PREFIX}{owner_tag()}"  # this process: running
    elsewhere = root / f"{RUN_PREFIX}pid{_dead_pid()}@another-host"  # its pids mean nothing here
    for folder in (live, elsewhere):
        folder.mkdir()
    loose = [root / "vectors_resampled_1000000_s7_2048_f32.npy", root / "ann_x_narrow.npz"]
    loose.append(root / "vectors_clustered_10000_s7_2048_f16.npy.partial")
    for path in loose:
        path.write_bytes(b"y" * 100)
    mine = [root / "notes.txt", root / "vectors.csv"]  # the user's own files
    for path in mine:
        path.write_text("keep")

    removed = sweep_scratch(root)

    assert removed == {dead: 3000, **{path: 100 for path in loose}}
    assert not dead.exists() and not any(p.exists() for p in loose)
    assert live.is_dir() and elsewhere.is_dir() and all(p.exists() for p in mine)
    assert sweep_scratch(tmp_path / "missing") == {}


def test_a_run_stopped_by_sigterm_removes_its_scratch(tmp_path: Path) -> None:
    proc, work = _started(tmp_path / "scratch")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    deadline = time.monotonic() + 5
    while work.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not work.exists()


def test_a_killed_run_leaves_its_scratch_to_the_next_run(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    proc, work = _started(root)
    proc.send_signal(signal.SIGKILL)  # no handler runs: the folder stays
    proc.wait(timeout=30)
    assert work.exists()
    with run_scratch(root) as mine:
        assert not work.exists()  # swept before this run began
        assert mine.is_dir() and mine.name == f"{RUN_PREFIX}{owner_tag()}"
    assert not mine.exists() and list(root.iterdir()) == []


@pytest.mark.slow
def test_quick_1m_sections_run_and_leave_no_scratch(tmp_path: Path) -> None:
    """The 1M sections at their quick sizes: no error, and their scratch (the vectors, the
    saved indexes) gone when they end, along with a killed run's leftovers."""
    config = Config(artifacts_dir=tmp_path / "artifacts")
    root = config.bench_dir / "scratch"
    leftover = root / "vectors_clustered_20000_s7_2048_f32.npy"  # an earlier version's cache
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"z" * 100)

    results = run_bench(config, quick=True, sections=["ann_1m", "maps_1m"])

    for name in ("ann_1m", "maps_1m"):
        section = results["sections"][name]
        assert "error" not in section, f"{name}: {section.get('error')}"
        assert section["rows"] and all("error" not in row for row in section["rows"]), name
    assert list(root.iterdir()) == []
