"""The Ray engine of the embed stage: same vectors and artifact as the local engine, resume
after an interrupted run, clear errors when Ray is not there; and Ray leaves no process behind.

One local Ray serves the whole module (starting one takes ~15 s on 2 cores); each Ray run
still starts its actor, which imports TensorFlow and builds InceptionV3 once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Pinned in requirements.txt: a missing Ray Data fails this module (and the run), never skips it.
import ray.data  # noqa: F401

from pipelines import artifacts
from pipelines.cli import build_parser
from pipelines.config import REPO_ROOT, Config
from pipelines.data.catalog import load_catalog, run_catalog
from pipelines.embedding import embed, embed_ray, ray_session
from pipelines.embedding.embed import run_embed
from pipelines.errors import LookalikeError
from tests.conftest import real_photos
from tests.test_embed import inception_models, link_models  # noqa: F401 - a fixture

LABELS = ("dress", "hat", "pants", "shoes", "shirt")
N_PER_LABEL = 8  # 40 real photos: 5 chunks of 8


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (Ray's head processes and workers are), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":  # a zombie has exited already
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.fixture(scope="module")
def ray_up() -> Iterator[None]:
    """One local Ray for the module; afterwards it is shut down and no process of it is left."""
    before = _descendants(os.getpid())
    with ray_session.ray_session(Config()):
        yield
    leftover = _descendants(os.getpid()) - before
    for _ in range(60):  # Ray's processes exit within a few seconds of ray.shutdown()
        if not leftover:
            break
        time.sleep(0.25)
        leftover = _descendants(os.getpid()) - before
    assert not leftover, f"Ray left processes behind: {sorted(leftover)}"


@pytest.fixture(scope="module")
def catalog_config(tmp_path_factory: pytest.TempPathFactory, inception_models: Path) -> Config:  # noqa: F811
    """A 40-photo real catalog read in place (a CSV of paths into the shared dataset)."""
    root = tmp_path_factory.mktemp("ray_catalog")
    rows = [
        {"path": str(p), "label": label}
        for label in LABELS
        for p in real_photos(label, N_PER_LABEL)
    ]
    pd.DataFrame(rows).to_csv(root / "photos.csv", index=False)
    config = Config(
        artifacts_dir=root / "art", source=root / "photos.csv", batch_size=8, chunk_size=8
    )
    run_catalog(config, progress=False)
    link_models(inception_models, config.artifacts_dir)
    return config


@pytest.fixture(scope="module")
def local_vectors(catalog_config: Config) -> np.ndarray:
    """The local engine's InceptionV3 vectors of the catalog: the reference."""
    run_embed(catalog_config, "inception_v3", progress=False)
    return np.load(catalog_config.embeddings_path("inception_v3"))


@pytest.mark.slow
def test_ray_engine_matches_the_local_engine(
    catalog_config: Config, local_vectors: np.ndarray, ray_up: None
) -> None:
    config = catalog_config
    out = config.embeddings_path("inception_v3")
    local_manifest = artifacts.read_manifest(out)
    result = run_embed(config, "inception_v3", force=True, progress=False, engine="ray")
    vectors = np.load(out)
    n = len(load_catalog(config))
    assert vectors.shape == local_vectors.shape == (n, 2048) and vectors.dtype == np.float32
    # Same rows in the same order: each row agrees with its own local row...
    cos = np.sum(vectors * local_vectors, axis=1)
    assert cos.min() >= 0.9999, cos.min()
    # ...and not with a shifted one (so a one-row slip would fail the line above).
    assert float(np.sum(vectors[1:] * local_vectors[:-1], axis=1).max()) < 0.99

    # The same artifact: the manifest key does not depend on the engine, so the other engine
    # finds it up to date.
    manifest = artifacts.read_manifest(out)
    assert manifest["params"] == local_manifest["params"]
    assert manifest["inputs"] == local_manifest["inputs"]
    assert manifest["run"]["engine"] == "ray" and local_manifest["run"]["engine"] == "local"
    assert manifest["run"]["actors"] == 1 and manifest["run"]["embedded"] == n
    assert manifest["run"]["per_actor_images_per_s"] > 0
    assert result.details["engine"] == "ray"
    assert run_embed(config, "inception_v3", progress=False).skipped
    assert not list(out.parent.glob(".inception_v3.parts/*"))


class _Killed(Exception):
    """Stands in for a kill: raised by the writer after a few chunks are on disk."""


@pytest.mark.slow
def test_interrupted_ray_run_resumes_without_repeating_or_losing_rows(
    catalog_config: Config,
    local_vectors: np.ndarray,
    ray_up: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = catalog_config
    out = config.embeddings_path("inception_v3")
    parts = out.parent / ".inception_v3.parts"
    add = embed.ChunkWriter.add

    def add_then_die(self: embed.ChunkWriter, emb: np.ndarray, probs: np.ndarray | None) -> None:
        add(self, emb, probs)
        if len(list(self.parts.glob("*.npy"))) >= 2:
            raise _Killed

    out.unlink()  # the previous test's array: this run starts from nothing
    monkeypatch.setattr(embed.ChunkWriter, "add", add_then_die)
    with pytest.raises(_Killed):
        run_embed(config, "inception_v3", progress=False, engine="ray")
    monkeypatch.undo()
    assert not out.exists()  # nothing that looks complete
    chunks = sorted(parts.glob("*/*.npy"))
    assert [p.name for p in chunks] == ["00000.npy", "00001.npy"]
    # Lose the first chunk too, so the rows left to embed have a gap (0-7, 16-39).
    chunks[0].unlink()

    capsys.readouterr()
    result = run_embed(config, "inception_v3", progress=False, engine="ray")
    assert "resuming, 1 of 5 chunks already done" in capsys.readouterr().out
    # The finished chunk was kept, not redone; only the other rows were embedded.
    n = len(load_catalog(config))
    assert result.details["embedded"] == n - config.chunk_size
    assert result.details["per_actor_images_per_s"] > 0
    vectors = np.load(out)
    assert vectors.shape == local_vectors.shape
    assert np.sum(vectors * local_vectors, axis=1).min() >= 0.9999
    assert len({row.tobytes() for row in vectors}) == n  # no row twice
    assert not list(parts.glob("*"))


def _in_session(session: int) -> set[int]:
    """Live processes of one session (a process started with start_new_session and all it
    started, Ray's head processes and workers included), from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                found.add(int(entry.name))
    return found


@pytest.mark.slow
def test_a_killed_ray_run_resumes_and_leaves_no_process(
    catalog_config: Config,
    local_vectors: np.ndarray,
    ray_up: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Small chunks so the kill lands mid-run: 40 photos in 20 chunks of 2.
    config = catalog_config.replace(batch_size=2, chunk_size=2)
    out = config.embeddings_path("inception_v3")
    parts = out.parent / ".inception_v3.parts"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "pipelines", "embed", "--extractor", "inception_v3",
        "--engine", "ray", "--artifacts", str(config.artifacts_dir),
        "--set", "batch_size=2", "--set", "chunk_size=2",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(parts.glob("*/*.npy"))) >= 3:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    leftover = _in_session(proc.pid)
    for _ in range(40):
        if not leftover:
            break
        time.sleep(0.25)
        leftover = _in_session(proc.pid)
    for pid in leftover:  # never leave them running, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not leftover, f"the killed run left processes behind: {sorted(leftover)}"
    assert not out.exists()  # nothing that looks complete
    done = len(list(parts.glob("*/*.npy")))
    assert 3 <= done < 20

    capsys.readouterr()
    result = run_embed(config, "inception_v3", progress=False, engine="ray")
    assert f"resuming, {done} of 20 chunks already done" in capsys.readouterr().out
    n = len(load_catalog(config))
    assert result.details["embedded"] == n - 2 * done  # finished chunks not redone
    vectors = np.load(out)
    assert np.sum(vectors * local_vectors, axis=1).min() >= 0.9999  # none lost or shifted
    assert len({row.tobytes() for row in vectors}) == n


def _fails(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if batch["id"][0] == 0:
        raise LookalikeError("photo.jpg: cannot be decoded — run the catalog stage again")
    raise ValueError("disk on fire\nsecond line")


@pytest.mark.parametrize(
    ("first_id", "message"),
    [
        (0, "^photo.jpg: cannot be decoded — run the catalog stage again$"),
        (1, r"a Ray worker failed \(.*ValueError: disk on fire\) — check that every node"),
    ],
)
def test_a_failure_inside_ray_is_one_actionable_line(
    ray_up: None, first_id: int, message: str
) -> None:
    import ray

    ds = ray.data.range(1).map_batches(lambda b: {"id": b["id"] + first_id}).map_batches(_fails)
    with pytest.raises((ray.exceptions.RayError, ray.data.exceptions.UserCodeException)) as caught:
        ds.take_all()
    with pytest.raises(LookalikeError, match=message):
        raise embed_ray._worker_error(caught.value)


def test_rows_come_back_in_catalog_order_whatever_order_ray_returns_them() -> None:
    rows = np.arange(10, 22)

    def batch(lo: int, hi: int) -> dict[str, np.ndarray]:
        r = np.arange(lo, hi)
        return {
            "row": r,
            "emb": r[:, None].astype(np.float32),
            "error": np.array([""] * len(r), dtype=object),
            "actor": np.array(["a"] * len(r), dtype=object),
            "busy_s": np.full(len(r), 0.5),
        }

    stats = embed_ray.RayStats()
    shuffled = [batch(18, 22), batch(10, 14), batch(14, 18)]
    got = np.concatenate([emb for emb, _ in embed_ray._in_order(iter(shuffled), rows, stats)])
    assert got[:, 0].tolist() == list(range(10, 22))
    assert stats.rows_per_actor == {"a": 12} and stats.per_actor_rate() == 2.0

    with pytest.raises(LookalikeError, match="returned 4 of 12 rows in sequence"):
        list(embed_ray._in_order(iter([batch(10, 14), batch(15, 19)]), rows, stats))
    vanished = batch(10, 14)
    vanished["error"][1] = "/photos/a.jpg: file not found"
    with pytest.raises(LookalikeError, match=r"changed or vanished .* /photos/a.jpg: file not"):
        list(embed_ray._in_order(iter([vanished]), rows, stats))


def test_actor_pool_size_follows_the_settings_and_the_cluster() -> None:
    config = Config()
    assert embed_ray._pool_size(config, {"CPU": 2.0}, 0.0) == 1  # one CPU kept for decoding
    assert embed_ray._pool_size(config, {"CPU": 16.0}, 0.0) == 15
    assert embed_ray._pool_size(config.replace(ray_actor_cpus=4), {"CPU": 16.0}, 0.0) == 3
    assert embed_ray._pool_size(config, {"CPU": 16.0, "GPU": 4.0}, 1.0) == 4
    assert embed_ray._pool_size(config, {"CPU": 16.0, "GPU": 4.0}, 0.5) == 8
    with pytest.raises(LookalikeError, match=r"ray_actors=3 x ray_actor_cpus=1 .* needs 4 CPUs"):
        embed_ray._pool_size(config.replace(ray_actors=3), {"CPU": 2.0}, 0.0)


def test_ray_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    with pytest.raises(LookalikeError, match=r"pip install 'ray\[data\]==2\.60\.0'"):
        ray_session.import_ray()


def test_a_malformed_address_is_refused_before_ray_starts() -> None:
    with pytest.raises(LookalikeError, match="--address must be HOST:PORT"):
        ray_session._check_reachable("my-cluster")


def test_unreachable_address_is_one_clear_line_from_the_cli(catalog_config: Config) -> None:
    # Checked before any stage runs: nothing is touched, no Ray is started.
    cmd = [
        sys.executable, "-m", "pipelines", "embed", "--extractor", "inception_v3", "--force",
        "--artifacts", str(catalog_config.artifacts_dir), "--engine", "ray",
        "--address", "127.0.0.1:9",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert not (catalog_config.artifacts_dir / "embeddings" / ".inception_v3.parts").exists()
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "cannot reach a Ray cluster at 127.0.0.1:9" in errors[0]
    assert "ray start --head" in errors[0] and "leave out --address" in errors[0]


def test_engine_and_address_options_of_embed_and_run() -> None:
    parser = build_parser()
    args = parser.parse_args(["embed", "--engine", "ray", "--address", "10.0.0.5:6379"])
    assert (args.engine, args.address) == ("ray", "10.0.0.5:6379")
    assert parser.parse_args(["run"]).engine == "local"  # the local engine stays the default
    with pytest.raises(SystemExit):
        parser.parse_args(["embed", "--engine", "spark"])
    with pytest.raises(LookalikeError, match="engine must be one of local, ray; got 'spark'"):
        run_embed(Config(), "inception_v3", engine="spark")
