"""SIGKILL `python -m pipelines run` inside every stage, 20 times; the next runs repair it all.

A tiny real catalog (3 photos and one broken file: few enough that the map stage lays points
out without UMAP's minute of JIT compiling) and tiny settings keep one full run to ~30 s on
2 cores; most of that is TensorFlow's import, which every run pays.

Each round deletes the manifests of one stage (so that stage has real work), starts `run`,
waits for that stage's header and kills the process at a random moment (fixed seed) inside
it. The next round's run is the run after that kill. After every kill: each artifact that
matches its manifest must load whole (nothing half-written behind a good manifest). Then two
kills at named points of the atomic writer (`artifacts.KILL_AT_ENV`), never a race with the
clock: the catalog's temporary written but not renamed, and a clusters file renamed in place
under the manifest of other settings. The run after each must finish, rebuild every stage
whose artifact no longer matched its manifest, leave every artifact matching its manifest and
aligned with the catalog, remove the temporary the killed write left (SIGKILL skips
atomic_path's clean-up), and a last run must report every stage up to date.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.artifacts import KILL_AT_ENV, matches_manifest
from pipelines.config import REPO_ROOT
from tests.conftest import real_photos

SEED = 11
KILLS = 20
SETTINGS = {
    "cnn_image_size": "32",
    "cnn_epochs": "1",
    "cnn_patience": "0",
    "map_pca_dims": "2",
    "map_neighbors": "2",
    "n_clusters": "2",
    "batch_size": "4",
    "chunk_size": "2",
    "eval_ks": "1",
}


def _tiny_source(root: Path) -> Path:
    """3 real photos (linked in place, not copied) and a file no decoder accepts."""
    for split, label in (("train", "dress"), ("train", "hat"), ("validation", "dress")):
        folder = root / split / label
        folder.mkdir(parents=True)
        photo = real_photos(label, 1, split)[0]
        (folder / photo.name).symlink_to(photo)
    (root / "train" / "hat" / "broken.jpg").write_bytes(b"P6")
    return root


def _command(source: Path, art: Path) -> list[str]:
    sets = [arg for name, value in SETTINGS.items() for arg in ("--set", f"{name}={value}")]
    return [
        sys.executable,
        "-u",
        "-m",
        "pipelines",
        "run",
        "--source",
        str(source),
        "--artifacts",
        str(art),
        "--extractor",
        "custom_cnn",
        *sets,
    ]


def _stage_table(out: str) -> dict[str, tuple[float, str]]:
    """{stage name: (seconds, result)} from the table `run` prints at the end."""
    rows: dict[str, tuple[float, str]] = {}
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stage  "))
    for line in lines[start + 1 :]:
        if line.startswith("total"):
            break
        seconds, _, result = line[22:].strip().partition("  ")
        rows[line[:22].strip()] = (float(seconds), result.strip())
    return rows


def _manifests(art: Path) -> list[tuple[Path, Path, dict]]:
    """(artifact, manifest file, manifest) for every manifest under `art`."""
    out = []
    for path in sorted(art.rglob("*.manifest.json")):
        manifest = json.loads(path.read_text())
        out.append((path.parent / manifest["artifact"], path, manifest))
    return out


def _temporaries(art: Path) -> list[Path]:
    """Every file under `art` named like an atomic_path temporary (`.{name}.*.tmp*`)."""
    return sorted(p for p in art.rglob(".*") if ".tmp" in p.name)


def _loads_whole(path: Path) -> None:
    """Read an artifact completely by its type; raises if it is cut short."""
    suffix = "".join(path.suffixes[-1:])
    if suffix == ".parquet":
        pd.read_parquet(path)
    elif suffix == ".npy":
        np.load(path)
    elif suffix == ".npz":
        with np.load(path) as data:
            [data[k] for k in data.files]
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix in (".keras", ".zip"):
        with zipfile.ZipFile(path) as zf:
            assert zf.testzip() is None
    elif suffix in (".jpg", ".png"):
        with Image.open(path) as img:
            img.load()


def _check_after_kill(art: Path) -> set[str]:
    """Load every artifact that matches its manifest whole (nothing half-written behind a
    matching manifest); returns the stages whose artifacts do not match."""
    stale = set()
    for artifact, _file, manifest in _manifests(art):
        if artifact.exists() and matches_manifest(artifact, manifest):
            _loads_whole(artifact)
        else:
            stale.add(manifest["stage"])
    return stale


def _run_and_kill(cmd: list[str], stage_index: int, delay: float, log: Path) -> tuple[bool, str]:
    """Start `run`, wait for the header of stage `stage_index` (1-based), sleep `delay` s and
    SIGKILL it. Returns (killed, the stdout read)."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            proc.wait()
            return False, "".join(seen)
        seen.append(line)
        if line.startswith(f"[{stage_index}/"):
            time.sleep(delay)
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL, "".join(seen)


def _killed_at(cmd: list[str], point: str, log: Path) -> subprocess.CompletedProcess:
    """Run `cmd` with the atomic writer told to SIGKILL itself at `point`
    (`artifacts.KILL_AT_ENV`: "written:<path tail>" or "renamed:<path tail>")."""
    env = {**os.environ, KILL_AT_ENV: point}
    with open(log, "ab") as err:
        done = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, env=env)
    assert done.returncode == -signal.SIGKILL, (point, done.returncode)
    return done


@pytest.mark.slow
def test_kills_in_every_stage_are_repaired_by_the_next_run(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    source = _tiny_source(tmp_path / "src")
    art = tmp_path / "art"
    cmd = _command(source, art)
    log = tmp_path / "stderr.log"

    first = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    seconds = {name: row[0] for name, row in _stage_table(first.stdout).items()}
    stages = list(seconds)
    hit: dict[str, int] = {}
    stale_before_final: set[str] = set()

    kills = 0
    for round_ in range(KILLS + 10):
        if kills == KILLS:
            break
        name = stages[round_ % len(stages)]
        stage = name.split()[0]
        for _artifact, manifest_file, manifest in _manifests(art):
            if manifest["stage"] == stage:
                manifest_file.unlink()
        delay = rng.uniform(0, seconds.get(name, 0.0) + 0.3)
        killed, _out = _run_and_kill(cmd, round_ % len(stages) + 1, delay, log)
        if not killed:
            continue
        kills += 1
        hit[name] = hit.get(name, 0) + 1
        stale_before_final = _check_after_kill(art)

    assert kills == KILLS
    assert set(hit) == set(stages), f"stages never killed: {set(stages) - set(hit)}"

    # Random moments rarely fall inside one of these tiny writes, so one more run is killed
    # at a named point: the catalog's temporary written, not yet renamed. SIGKILL skips
    # atomic_path's clean-up, so the temporary stays (this run swept the older ones first).
    for _artifact, manifest_file, manifest in _manifests(art):
        if manifest["stage"] == "catalog":
            manifest_file.unlink()  # the catalog stage rewrites its tables, nothing else
    _killed_at(cmd, "written:catalog.parquet", log)
    stale_before_final = _check_after_kill(art)
    left = _temporaries(art)
    assert [p.name.split(".pid")[0] for p in left] == [".catalog.parquet"], left
    repair = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert repair.returncode == 0, repair.stderr[-3000:]
    assert f"removed {len(left)} temporary file" in repair.stdout, (left, repair.stdout[:500])
    assert _temporaries(art) == [], "the repair run left temporaries of killed writes"
    table = _stage_table(repair.stdout)
    for stage in stale_before_final:
        # A stage whose artifact did not match its manifest must not call itself up to date.
        results = [r for n, (_s, r) in table.items() if n.split()[0] == stage]
        assert results and not any(r.startswith("up to date") for r in results), (stage, table)
    for artifact, _file, manifest in _manifests(art):
        assert matches_manifest(artifact, manifest), artifact
        _loads_whole(artifact)
    catalog = pd.read_parquet(art / "catalog.parquet")
    assert len(catalog) == 3
    assert {p.stem for p in (art / "thumbs").glob("*.jpg")} == set(catalog["item_id"])
    assert np.load(art / "embeddings" / "custom_cnn.npy").shape[0] == len(catalog)

    # Killed after a rename, before its manifest: a clusters run with other settings leaves
    # its first new file (the centroids) under the old manifest, whose stage key is the one
    # `cmd` asks for. The next run must see that the bytes are not the ones recorded, and
    # cluster again.
    centroids = art / "clusters" / "custom_cnn_centroids.npy"
    other = [sys.executable, "-m", "pipelines", "clusters", "--artifacts", str(art)]
    other += ["--extractor", "custom_cnn", "--set", "n_clusters=3"]
    _killed_at(other, "renamed:clusters/custom_cnn_centroids.npy", log)
    assert not matches_manifest(centroids), "the killed run did not replace the centroids"
    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    table = _stage_table(again.stdout)
    assert not table["clusters"][1].startswith("up to date"), again.stdout[-2000:]
    assert all(r.startswith("up to date") for n, (_s, r) in table.items() if n != "clusters")
    for artifact, _file, manifest in _manifests(art):
        assert matches_manifest(artifact, manifest), artifact
    assert len(np.load(centroids)) == int(SETTINGS["n_clusters"])

    last = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr[-3000:]
    results = [r for _s, r in _stage_table(last.stdout).values()]
    assert all(r.startswith("up to date") for r in results), last.stdout[-2000:]
    assert "temporary" not in last.stdout
    assert _temporaries(art) == []


# --------------------------------------------------------------------------- an update killed

# Where an update is killed, in turn: named points of the atomic writer (a file written and
# not renamed, or renamed before its manifest) in the stages too quick for a random moment,
# then a random moment inside the slower ones (a stage named as `run` prints it).
UPDATE_KILLS = (
    "written:catalog.parquet",
    "renamed:embeddings/custom_cnn.npy",
    "renamed:maps/custom_cnn.parquet",
    "clusters",
    "health",
    "evaluate",
)


def _change_source(source: Path) -> None:
    """A day's change: a photo sold out (removed), a new one arrives (linked in place). Neither
    is a train photo, so the retrain policy keeps the models (in a 2-photo train split any new
    train photo is past its share) and the update is an update."""
    (next((source / "validation" / "dress").glob("*.jpg"))).unlink()
    photo = real_photos("dress", 1, "test")[0]
    (source / "test" / "dress").mkdir(parents=True)
    (source / "test" / "dress" / photo.name).symlink_to(photo)


def _built_files(art: Path) -> dict[str, str]:
    """{artifact path: sha256} over every manifest, less the evaluation's timed reports."""
    timed = {"metrics.json"}
    return {
        artifact.relative_to(art).as_posix(): manifest["sha256"]
        for artifact, _file, manifest in _manifests(art)
        if artifact.name not in timed
    }


@pytest.mark.slow
def test_an_update_killed_anywhere_ends_as_the_uninterrupted_update(tmp_path: Path) -> None:
    """Build, change the source (one photo removed, one added), then update it twice: once
    uninterrupted, once SIGKILLed in each of several stages in turn (`UPDATE_KILLS`), then `run` to
    the end. Both updates end with the same files, byte for byte (the timed evaluation report
    aside, whose precision is compared), every artifact matching its manifest, and a last
    `run` with nothing to do."""
    rng = random.Random(SEED)
    source = _tiny_source(tmp_path / "src")
    art = tmp_path / "art"
    log = tmp_path / "stderr.log"
    first = subprocess.run(
        _command(source, art), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stderr[-3000:]
    stages = list(_stage_table(first.stdout))
    _change_source(source)
    for name in ("reference", "killed"):
        shutil.copytree(art, tmp_path / name, symlinks=True)

    reference = tmp_path / "reference"
    done = subprocess.run(
        _command(source, reference), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = _stage_table(done.stdout)
    assert table["catalog"][1] != "up to date" and table["train"][1].startswith("up to date")

    killed = tmp_path / "killed"
    cmd = _command(source, killed)
    for where in UPDATE_KILLS:
        if ":" in where:
            _killed_at(cmd, where, log)
        else:
            at = stages.index(where) + 1
            # A moment inside the stage: within the time the uninterrupted update spent in it.
            delay = rng.uniform(0, 0.8 * table[where][0])
            was_killed, _out = _run_and_kill(cmd, at, delay, log)
            assert was_killed, f"the update finished before the kill in {where}"
        _check_after_kill(killed)
    finish = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert finish.returncode == 0, finish.stderr[-3000:]

    files = _built_files(reference)
    assert {"catalog.parquet", "embeddings/custom_cnn.npy", "maps/custom_cnn.parquet"} <= set(files)
    assert _built_files(killed) == files
    for artifact, _file, manifest in _manifests(killed):
        assert matches_manifest(artifact, manifest), artifact
    p10 = [json.loads((a / "metrics.json").read_text())["results"] for a in (killed, reference)]
    assert _precisions(p10[0]) == _precisions(p10[1]) != {}
    assert _temporaries(killed) == []
    last = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr[-3000:]
    assert all(r.startswith("up to date") for _s, r in _stage_table(last.stdout).values())


def _precisions(results: dict) -> dict:
    """The quality numbers of an evaluation report (its timings left out)."""
    return {
        (extractor, strategy, key): value
        for extractor, strategies in results.items()
        if isinstance(strategies, dict)
        for strategy, numbers in strategies.items()
        if isinstance(numbers, dict)
        for key, value in numbers.items()
        if key.startswith(("p@", "r@", "map", "colour", "copy"))
    }
