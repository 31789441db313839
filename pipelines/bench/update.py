"""Catalog updates in place (`bench --section update`, issue 24): reads the default catalog in
place; writes a scratch source (hard links) and scratch builds under bench/scratch/update,
removed afterwards, and returns the section's numbers.

One run: build the catalog less 1 % held back (the first run, from empty), add the held-back
photos, remove as many others, replace a few with altered versions of themselves, and time
each `python -m pipelines run` as a user would run it (a fresh process). After each update
the build is checked against the one before it (kept vectors bit-identical, kept map
positions unmoved, removed items gone from every table, each new item's top-10 equal to a
brute-force cosine top-10), and at the end a `--force` rebuild of the final photos gives the
precision@10 the update must match. The second part (`synthetic_update`) times the stages
after embedding at 100k synthetic items: built once, then 1,000 items added.

Every run goes through a snapshot of the committed engine taken at the start, so an engineer
changing `pipelines/` during the half hour this takes cannot mix two versions into one run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.bench.common import RESULT_PREFIX, jsonable
from pipelines.bench.report import loadavg
from pipelines.bench.vectors_disk import scratch_dir
from pipelines.config import DEFAULT_SOURCE, IMAGE_SUFFIXES, REPO_ROOT, Config

# Issue 24's sizes on clothing-small (3,784 photos): 1 % added, 1 % removed, 10 replaced.
HOLD_BACK = 38
REMOVE = 38
REPLACE = 10
K = 10
TARGETS = {
    "add_ratio": 0.08,  # adding 1 % costs <= 8 % of the first run's wall time
    "remove_ratio": 0.03,  # removing 1 % costs <= 3 %
    "p10_diff": 0.01,  # updated build's test P@10 within 0.01 of a --force rebuild
    "synthetic_add_ratio": 0.03,  # adding 1,000 to 100k synthetic items <= 3 % of building
}
# The quick run (and the test): 4 photos per class and split of four classes, small settings
# (tests/conftest.py's build_small_pipeline), 2 held back, 2 removed, 1 replaced.
QUICK_LABELS = ("dress", "hat", "pants", "shoes")
QUICK_PER_GROUP = 4
QUICK_SETTINGS = {
    "batch_size": 8,
    "chunk_size": 16,
    "cnn_image_size": 32,
    "cnn_epochs": 2,
    "cnn_patience": 1,
    "n_clusters": 4,
    "map_neighbors": 5,
}
# A replaced photo: the same picture cropped by this share of each side and re-encoded, so
# its bytes (and its item id) change while it stays the same product.
REPLACE_CROP = 0.03
RUN_TIMEOUT_S = 3 * 3600
# This bench's own modules, taken from the working tree into the committed engine's snapshot
# (the children's entry point and task table, and the tasks themselves).
OVERLAY = ("pipelines/bench/update.py", "pipelines/bench/common.py")
# The synthetic part: issue 24's 100k catalog and 1,000 added items (quick: 2,000 and 20).
SYNTHETIC_N = 100_000
SYNTHETIC_ADD = 1_000
SYNTHETIC_QUICK = (2_000, 20)
# The stages after embedding, in run's order; the synthetic part runs those the scale bench
# builds (maps and clusters are written by it, the approximate index by `run_ann`). Catalog
# health and evaluation at 100k are left out: the scale bench builds neither (it copies the
# real build's metrics), and both are whole-catalog passes (health: every item's neighbours).
ALL_VECTOR_STAGES = ("maps", "clusters", "ann", "health", "evaluate")
SYNTHETIC_STAGES = ("maps", "clusters", "ann")
_STAGE_LINE = re.compile(r"^\[(\d+)/(\d+)\] (.+)$")


def bench_update(config: Config, quick: bool) -> dict[str, Any]:
    """The section: the default catalog's updates, then the synthetic 100k update.

    Scratch goes under `scratch_dir(config)/update` and is removed at the end, on an error
    and on SIGTERM. The full children's output is kept in bench/update.log.
    """
    source = Path(config.source) if config.source is not None else DEFAULT_SOURCE
    if not source.is_dir():
        return {"skipped": f"the default catalog is not at {source} (python -m pipelines run "
                f"finds or downloads it)"}  # fmt: skip
    files = image_files(source)
    settings: dict[str, Any] = {}
    counts = {"hold": HOLD_BACK, "remove": REMOVE, "replace": REPLACE}
    if quick:
        files = quick_subset(files, QUICK_LABELS, QUICK_PER_GROUP)
        settings = dict(QUICK_SETTINGS)
        counts = {"hold": 2, "remove": 2, "replace": 1}
    scratch = scratch_dir(config) / "update"
    log = config.bench_dir / "update.log"
    result = measure_updates(source, files, scratch, settings, log=log, **counts)
    # Kept on disk before the long synthetic part, so a failure there loses nothing.
    write_json_result(result, config.bench_dir / "update.partial.json")
    try:
        result["synthetic"] = synthetic_section(config, quick, scratch)
    except Exception as err:  # recorded; the default catalog's numbers still count
        result["synthetic"] = {"error": f"{type(err).__name__}: {err}"}
    result["targets"] = TARGETS
    result["targets_met"] = targets_met(result)
    return result


# --------------------------------------------------------------------------- the photos


def image_files(root: Path) -> list[str]:
    """Every image file under `root`, as sorted paths relative to it."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def quick_subset(files: Sequence[str], labels: Sequence[str], per_group: int) -> list[str]:
    """The first `per_group` files of each split/label folder whose label is in `labels`."""
    groups: dict[str, list[str]] = defaultdict(list)
    for rel in files:
        parent = str(Path(rel).parent)
        if Path(parent).name in labels and len(groups[parent]) < per_group:
            groups[parent].append(rel)
    return sorted(rel for group in groups.values() for rel in group)


def spread_pick(files: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """`n` files spread evenly over their folders (split/label), seeded: each folder's files
    shuffled, the folders visited round-robin in a shuffled order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for rel in files:
        groups[str(Path(rel).parent)].append(rel)
    order = sorted(groups)
    rng.shuffle(order)
    queues = {g: list(rng.permutation(sorted(groups[g]))) for g in order}
    picked: list[str] = []
    while len(picked) < n and any(queues.values()):
        for g in order:
            if queues[g] and len(picked) < n:
                picked.append(str(queues[g].pop()))
    if len(picked) < n:
        raise ValueError(f"asked for {n} files, only {len(picked)} available")
    return sorted(picked)


def unique_content(root: Path, files: Sequence[str]) -> list[str]:
    """The files whose bytes no other file shares: a byte-identical copy is one item, so
    holding it back or removing it would not add or remove an item."""
    digests = {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in files}
    count: dict[str, int] = defaultdict(int)
    for digest in digests.values():
        count[digest] += 1
    return [rel for rel in files if count[digests[rel]] == 1]


def link_photos(root: Path, files: Sequence[str], dest: Path) -> dict[str, int]:
    """Hard-link each file of `root` into `dest` at the same relative path (a copy with its
    mtime where a link fails, e.g. across filesystems). Returns {"linked", "copied"}."""
    done = {"linked": 0, "copied": 0}
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(root / rel, target)
            done["linked"] += 1
        except OSError:
            shutil.copy2(root / rel, target)
            done["copied"] += 1
    return done


def replace_with_altered(path: Path, crop: float = REPLACE_CROP) -> None:
    """Replace the photo at `path` by itself cropped by `crop` of each side and re-encoded
    (JPEG, quality 90). The new file is renamed over the old name, so a hard-linked original
    (the shared dataset's file) is never written to."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        dx, dy = max(1, round(w * crop)), max(1, round(h * crop))
        buf = io.BytesIO()
        img.crop((dx, dy, w - dx, h - dy)).save(buf, format="JPEG", quality=90)
    tmp = path.with_name(f".{path.name}.altered")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the runs


def snapshot_code(dest: Path) -> dict[str, Any]:
    """Write the engine every child of this run imports into `dest`/pipelines: the committed
    `pipelines/` at HEAD (uncommitted edits of other engineers stay out: a half-written module
    would break or skew the run), with this bench's own two modules (OVERLAY) as they are in
    the working tree. Without git, the working tree is copied as it is.

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


@contextlib.contextmanager
def removed_afterwards(path: Path) -> Iterator[Path]:
    """Yield `path` (created), and remove it however the block ends: normally, on an
    exception, or on SIGTERM (turned into SystemExit while the block runs, in the main
    thread; the handler before it is restored)."""
    previous = None

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(f"bench update: stopped by signal {signum}")

    with contextlib.suppress(ValueError):  # not the main thread: no handler, still removed
        previous = signal.signal(signal.SIGTERM, stop)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def measure_updates(
    root: Path,
    files: Sequence[str],
    scratch: Path,
    settings: dict[str, Any] | None = None,
    hold: int = HOLD_BACK,
    remove: int = REMOVE,
    replace: int = REPLACE,
    seed: int = 0,
    rebuild: bool = True,
    log: Path | None = None,
    keep_build: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """First run, add, remove, replace and the `--force` rebuild of the final photos.

    Parameters
    ----------
    root : the catalog folder the photos are read from (never written).
    files : the photos to use, relative to `root` (split/label/name.jpg).
    scratch : where the scratch source, builds and code snapshot go; removed at the end.
    settings : Config overrides for every run (e.g. the small test settings).
    hold, remove, replace : photos held back then added; removed; replaced by an altered copy.
    seed : the draw of those photos.
    rebuild : also run `--force` on the final photos into a second folder (P@10 comparison).
    log : file that receives the children's full output (default: scratch/update.log, removed).
    keep_build : called with the updated build's artifacts folder before the scratch goes.

    Returns
    -------
    {"catalog": {...}, "code": {...}, "rows": [one per phase: photos, items, wall_s, run_s,
    ratio, target, loadavg_before/after], "stages": {phase: [...]}, "checks": {phase: {...}},
    "p10": {extractor: {"updated", "rebuild", "diff"}}}
    """
    settings = dict(settings or {})
    rng = np.random.default_rng(seed)
    with removed_afterwards(Path(scratch)) as work:
        log = Path(log) if log is not None else work / "update.log"
        code = snapshot_code(work / "code")
        src, build = work / "source", work / "build"
        candidates = unique_content(root, files)
        held = spread_pick(candidates, hold, rng)
        rest = [f for f in candidates if f not in set(held)]
        removed = spread_pick(rest, remove, rng)
        rest = [f for f in rest if f not in set(removed)]
        replaced = spread_pick(rest, replace, rng)
        start = [f for f in files if f not in set(held)]
        placed = link_photos(root, start, src)
        result: dict[str, Any] = {
            "catalog": {
                "source": str(root),
                "photos": len(files),
                "held_back": len(held),
                "removed": len(removed),
                "replaced": len(replaced),
                "seed": seed,
                "settings": settings,
                **placed,
                "files": {"held_back": held, "removed": removed, "replaced": replaced},
            },
            "code": code,
            "rows": [],
            "stages": {},
            "checks": {},
        }

        def phase(name: str, photos: int, out: Path, force: bool = False) -> dict[str, Any]:
            print(f"bench update: {name} ({photos:,} photos) ...", flush=True)
            load = loadavg()
            params = {
                "artifacts_dir": str(out),
                "source": str(src),
                "settings": settings,
                "force": force,
            }
            t0 = time.perf_counter()
            child = run_child_logged(work / "code", "update_run", params, log, RUN_TIMEOUT_S)
            wall = time.perf_counter() - t0
            if "error" in child:
                raise RuntimeError(f"bench update: {name} failed: {child['error']}")
            names = child.get("stage_names") or []
            stages = child["stages"]
            for i, stage in enumerate(stages):
                stage["stage"] = names[i] if len(names) == len(stages) else stage["stage"]
            result["stages"][name] = stages
            row = {
                "phase": name,
                "photos": photos,
                "items": child["items"],
                "wall_s": round(wall, 1),
                "run_s": child["run_seconds"],
                "peak_rss_mb": child.get("peak_rss_mb"),
                "loadavg_before": load,
                "loadavg_after": loadavg(),
            }
            result["rows"].append(row)
            return row

        before = work / "before"
        first = phase("first run", len(start), build)
        changes: list[tuple[str, Callable[[], int], str | None]] = [
            (f"add {len(held)}", lambda: link_photos(root, held, src)["linked"], "add_ratio"),
            (f"remove {len(removed)}", lambda: _unlink(src, removed), "remove_ratio"),
            (f"replace {len(replaced)}", lambda: _replace(src, replaced), None),
        ]
        photos = len(start)
        for name, change, target in changes:
            keep_snapshot(build, before)
            change()
            photos = len(image_files(src))
            row = phase(name, photos, build)
            row["ratio"] = round(row["wall_s"] / first["wall_s"], 4)
            row["run_ratio"] = round(row["run_s"] / first["run_s"], 4)
            if target:
                row["target"] = TARGETS[target]
            print(f"bench update: checking {name} against the build before it ...", flush=True)
            checks = run_child_logged(
                work / "code",
                "update_checks",
                {"before": str(before), "after": str(build), "k": K},
                log,
                3600,
            )
            checks.pop("stage_names", None)
            result["checks"][name] = checks
        if rebuild:
            again = work / "rebuild"
            phase("rebuild --force", photos, again, force=True)
            result["p10"] = compare_p10(build, again)
        if keep_build is not None:
            keep_build(build)
    return result


def _unlink(src: Path, files: Sequence[str]) -> int:
    for rel in files:
        (src / rel).unlink()
    return len(files)


def _replace(src: Path, files: Sequence[str]) -> int:
    for rel in files:
        path = src / rel
        inode = path.stat().st_ino
        replace_with_altered(path)
        if path.stat().st_ino == inode:  # never: os.replace gives the name a new file
            raise RuntimeError(f"{path} was rewritten in place; its original may have changed")
    return len(files)


def keep_snapshot(build: Path, dest: Path) -> None:
    """Copy what the checks compare (catalog, embeddings, maps, clusters) from `build` into
    `dest`, replacing what was there."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(build / "catalog.parquet", dest / "catalog.parquet")
    for folder in ("embeddings", "maps", "clusters"):
        if (build / folder).is_dir():
            shutil.copytree(build / folder, dest / folder)


# --------------------------------------------------------------------------- the checks


def bit_identical(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) True where row i of `a` and of `b` hold the same bytes (float32 rows)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)).all(axis=1)


def brute_topk(vectors: np.ndarray, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k rows most cosine-similar to row `row` (itself left out), best first, and their
    similarities: every row compared in float64 (the vectors are unit rows)."""
    sims = np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors[row], dtype=np.float64)
    sims[row] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return order, sims[order]


def child_checks(before: str, after: str, k: int = K) -> dict[str, Any]:
    """(child) Compare the build in `after` with the snapshot `before` of the build it
    updated; see `compare_builds`."""
    return compare_builds(Path(before), Path(after), k)


def compare_builds(before: Path, after: Path, k: int = K) -> dict[str, Any]:
    """What an update changed, item by item.

    Returns
    -------
    {"added", "gone", "kept": counts of item ids; per extractor: "vectors" (kept rows
    bit-identical), "map" (kept items unmoved, largest shift), "top10" (new items whose top-k
    from the engine's search, `Lookalike.similar_to`, equals a brute-force cosine top-k over
    the updated embeddings, in order and as a set; a miss only inside a tie is counted
    apart); "left_behind": removed ids still found in any table of `after`}.
    """
    from pipelines.api import Lookalike

    old = pd.read_parquet(before / "catalog.parquet")["item_id"].astype(str).to_numpy()
    new = pd.read_parquet(after / "catalog.parquet")["item_id"].astype(str).to_numpy()
    old_set, new_set = set(old), set(new)
    added = [i for i in new if i not in old_set]
    gone = sorted(old_set - new_set)
    kept = [i for i in new if i in old_set]
    out: dict[str, Any] = {"added": len(added), "gone": len(gone), "kept": len(kept)}
    old_row = {item: i for i, item in enumerate(old)}
    new_row = {item: i for i, item in enumerate(new)}
    engine = Lookalike.open(after)
    per: dict[str, Any] = {}
    for path in sorted((after / "embeddings").glob("*.npy")):
        name = path.stem
        if name.endswith(".items") or not (before / "embeddings" / path.name).exists():
            continue
        vb = np.load(before / "embeddings" / path.name, mmap_mode="r")
        va = np.load(path)
        rb = np.array([old_row[i] for i in kept], dtype=np.int64)
        ra = np.array([new_row[i] for i in kept], dtype=np.int64)
        same = bit_identical(vb[rb], va[ra]) if len(kept) else np.zeros(0, bool)
        part: dict[str, Any] = {
            "vectors": {"kept": len(kept), "identical": int(same.sum())},
            "map": _map_shift(before, after, name, kept),
        }
        top = {"queries": len(added), "same_order": 0, "same_set": 0, "tie_only": 0}
        for item in added:
            row = new_row[item]
            want, sims = brute_topk(va, row, k)
            got = engine.similar_to(item, k=k, extractor=name)["item_id"].astype(str).tolist()
            want_ids = new[want].tolist()
            top["same_order"] += got == want_ids
            top["same_set"] += set(got) == set(want_ids)
            if set(got) != set(want_ids):
                # A miss is a tie when every id in either list scores at least the k-th score
                # of the brute force less a float32 rounding.
                full = np.asarray(va, np.float64) @ np.asarray(va[row], np.float64)
                scores = [full[new_row[i]] for i in got]
                top["tie_only"] += bool(min(scores) >= sims[-1] - 1e-6)
        part["top10"] = top
        per[name] = part
    out["extractors"] = per
    out["left_behind"] = _left_behind(after, set(gone))
    return out


def _map_shift(before: Path, after: Path, name: str, kept: Sequence[str]) -> dict[str, Any]:
    """How many kept items kept their exact map position, and the largest shift."""
    b_path, a_path = before / "maps" / f"{name}.parquet", after / "maps" / f"{name}.parquet"
    if not (b_path.exists() and a_path.exists()):
        return {"missing": True}
    b = pd.read_parquet(b_path).assign(item_id=lambda t: t["item_id"].astype(str))
    a = pd.read_parquet(a_path).assign(item_id=lambda t: t["item_id"].astype(str))
    b, a = b.set_index("item_id").loc[list(kept)], a.set_index("item_id").loc[list(kept)]
    dx = a["x"].to_numpy() - b["x"].to_numpy()
    dy = a["y"].to_numpy() - b["y"].to_numpy()
    shift = np.hypot(dx, dy)
    return {
        "kept": len(kept),
        "unmoved": int((shift == 0).sum()),
        "max_shift": round(float(shift.max()), 6) if len(shift) else 0.0,
    }


def _left_behind(after: Path, gone: set[str]) -> dict[str, int]:
    """{table: removed ids it still holds} over every parquet table and embeddings' item-id
    file of `after` (columns whose name holds "item"); empty when every one is clean. The
    training set (models/training_set.parquet) is left out: it records what the kept models
    learned from, removed items included, until they are retrained."""
    from pipelines.models.training_set import snapshot_path

    found: dict[str, int] = {}
    if not gone:
        return found
    kept_training_set = snapshot_path(Config(artifacts_dir=after))
    for path in sorted(after.rglob("*.parquet")):
        if "bench" in path.relative_to(after).parts or path == kept_training_set:
            continue
        with contextlib.suppress(Exception):
            table = pd.read_parquet(path)
            for column in (c for c in table.columns if "item" in str(c)):
                hits = int(table[column].astype(str).isin(gone).sum())
                if hits:
                    found[f"{path.relative_to(after)}:{column}"] = hits
    for path in sorted((after / "embeddings").glob("*.items.npy")):
        ids = np.load(path).astype(str)
        hits = int(np.isin(ids, list(gone)).sum())
        if hits:
            found[str(path.relative_to(after))] = hits
    return found


def compare_p10(updated: Path, rebuilt: Path) -> dict[str, Any]:
    """Test P@10 (exact search) of each extractor in both builds' metrics.json."""
    a = json.loads((updated / "metrics.json").read_text())["results"]
    b = json.loads((rebuilt / "metrics.json").read_text())["results"]
    out = {}
    for name in a:
        if name in b:
            pa, pb = a[name]["exact"]["p@10"], b[name]["exact"]["p@10"]
            out[name] = {
                "updated": round(pa, 4),
                "rebuild": round(pb, 4),
                "diff": round(pa - pb, 4),
            }
    return out


# --------------------------------------------------------------------------- verdicts


def targets_met(result: dict[str, Any]) -> dict[str, Any]:
    """Each target of TARGETS this run measured: True / False (missing: not measured)."""
    met: dict[str, Any] = {}
    for row in result.get("rows", []):
        if "target" in row:
            key = "add_ratio" if row["phase"].startswith("add") else "remove_ratio"
            met[key] = row["ratio"] <= row["target"]
    p10 = result.get("p10") or {}
    if p10:
        met["p10_diff"] = all(abs(v["diff"]) <= TARGETS["p10_diff"] for v in p10.values())
    checks = result.get("checks", {})
    if checks:
        met["vectors_identical"] = all(
            e["vectors"]["identical"] == e["vectors"]["kept"]
            for c in checks.values()
            for e in c.get("extractors", {}).values()
        )
        met["maps_unmoved"] = all(
            e["map"].get("unmoved") == e["map"].get("kept")
            for c in checks.values()
            for e in c.get("extractors", {}).values()
        )
        met["top10_exact"] = all(
            e["top10"]["same_set"] == e["top10"]["queries"]
            for c in checks.values()
            for e in c.get("extractors", {}).values()
        )
        met["removed_gone"] = all(not c.get("left_behind") for c in checks.values())
    synthetic = result.get("synthetic") or {}
    if synthetic.get("ratio") is not None:
        met["synthetic_add_ratio"] = synthetic["ratio"] <= TARGETS["synthetic_add_ratio"]
    return met


def synthetic_section(config: Config, quick: bool, scratch: Path) -> dict[str, Any]:
    """The 100k synthetic update (`synthetic_update`) drawn from the build in
    `config.artifacts_dir`, in `scratch`/synthetic (removed afterwards)."""
    if not config.catalog_path.exists():
        return {
            "skipped": f"no build in {config.artifacts_dir} to draw synthetic items from — "
            f"run `python -m pipelines run` first"
        }
    n, add = SYNTHETIC_QUICK if quick else (SYNTHETIC_N, SYNTHETIC_ADD)
    return synthetic_update(
        config, scratch / "synthetic", n, add, log=config.bench_dir / "update.log"
    )


def synthetic_update(
    source: Config,
    scratch: Path,
    n: int = SYNTHETIC_N,
    add: int = SYNTHETIC_ADD,
    stages: Sequence[str] = SYNTHETIC_STAGES,
    seed: int = 0,
    log: Path | None = None,
) -> dict[str, Any]:
    """Build the vector stages of an `n`-item synthetic catalog, then add `add` items and run
    them again as `run` would (no force), each in a fresh process; time both.

    The items are `scale_build.build_scaled`'s (the scale bench's): drawn around the real
    build's class centroids, with its photos, labels and splits. Embedding is not part of
    either side: synthetic vectors have no photos of their own (the real catalog's cost of
    embedding new photos is the default-catalog part's). The build runs `stages` with
    `force` on the first `n` items; the update swaps in the catalog, embeddings, colours and
    categories of all `n + add` (untimed: that is what the catalog and embed stages would
    leave) and runs `stages` again.

    Returns
    -------
    {"n", "add", "stages", "build": {stage: seconds, "total_s", "wall_s", ...}, "update":
    {...the same, "checks": kept map places and clusters unchanged, how each stage worked},
    "ratio": update total / build total, "wall_ratio", "target", "not_covered"}
    """
    with removed_afterwards(Path(scratch)) as work:
        log = Path(log) if log is not None else work / "update.log"
        code = snapshot_code(work / "code")
        build = work / "build"
        print(f"bench update: synthetic {n:,} + {add:,} items ...", flush=True)
        params = {"source": str(source.artifacts_dir), "out": str(build), "n": n, "add": add}
        params["seed"] = seed
        prepared = run_child_logged(work / "code", "update_synthetic_prepare", params, log, 3600)
        if "error" in prepared:
            raise RuntimeError(f"bench update: synthetic build failed: {prepared['error']}")
        out: dict[str, Any] = {"n": n, "add": add, "stages": list(stages), "code": code}
        out["prepare_s"] = prepared.get("child_seconds")
        for name, force, incoming in (("build", True, None), ("update", False, "incoming")):
            print(f"bench update: synthetic {name} ({', '.join(stages)}) ...", flush=True)
            load = loadavg()
            t0 = time.perf_counter()
            part = run_child_logged(
                work / "code",
                "update_synthetic_stages",
                {
                    "artifacts_dir": str(build),
                    "stages": list(stages),
                    "force": force,
                    "incoming": None if incoming is None else str(work / "build" / incoming),
                },
                log,
                3 * 3600,
            )
            if "error" in part:
                raise RuntimeError(f"bench update: synthetic {name} failed: {part['error']}")
            part.pop("stage_names", None)
            part["wall_s"] = round(time.perf_counter() - t0, 1)
            part["loadavg_before"], part["loadavg_after"] = load, loadavg()
            out[name] = part
        out["ratio"] = round(out["update"]["total_s"] / out["build"]["total_s"], 4)
        out["wall_ratio"] = round(out["update"]["wall_s"] / out["build"]["wall_s"], 4)
        out["target"] = TARGETS["synthetic_add_ratio"]
        out["not_covered"] = [s for s in ALL_VECTOR_STAGES if s not in stages] + [
            "catalog, colours, embedding and classify (synthetic vectors have no photos)"
        ]
    return out


def child_synthetic_prepare(source: str, out: str, n: int, add: int, seed: int = 0) -> dict:
    """(child) `build_scaled` of n + add items into `out`; the last `add` rows of the catalog,
    embeddings, colours and categories moved to `out`/incoming and the first n written in
    place (each with its manifest), so `out` is an n-item build and incoming its update."""
    from pipelines import artifacts
    from pipelines.bench.scale_build import build_scaled

    src = Config(artifacts_dir=Path(source))
    cfg = build_scaled(src, Path(out), n + add, seed=seed, models=True)
    incoming = Path(out) / "incoming"
    incoming.mkdir()
    moved = [cfg.catalog_path, cfg.colours_path, cfg.categories_path]
    moved += [p for p in (cfg.embeddings_path(e) for e in src.extractors_built()) if p.exists()]
    for path in moved:
        if path.exists():
            for file in (path, artifacts.manifest_path(path)):
                os.replace(file, incoming / file.name)
    _write_rows(Config(artifacts_dir=incoming), cfg, n, [p.name for p in moved])
    return {"items": n, "incoming": n + add}


def _write_rows(full: Config, cfg: Config, n: int, names: Sequence[str]) -> None:
    """The first `n` rows of `full`'s catalog, colours, categories and embeddings (files named
    in `names`, all under `full.artifacts_dir`) into `cfg`, each with a manifest keyed as the
    synthetic build keys them (embeddings with their rows' item ids)."""
    from pipelines import artifacts
    from pipelines.embedding.reuse import write_embeddings

    here = full.artifacts_dir
    catalog = pd.read_parquet(here / cfg.catalog_path.name).iloc[:n].reset_index(drop=True)
    artifacts.write_parquet(catalog, cfg.catalog_path)
    old = artifacts.read_manifest(here / cfg.catalog_path.name) or {}
    made = artifacts.write_manifest(cfg.catalog_path, "catalog", old.get("params", {}), {})
    inputs = {"catalog": made["sha256"]}
    for path, stage in ((cfg.colours_path, "colours"), (cfg.categories_path, "classify")):
        if path.name in names and (here / path.name).exists():
            table = pd.read_parquet(here / path.name).iloc[:n].reset_index(drop=True)
            artifacts.write_parquet(table, path)
            artifacts.write_manifest(path, stage, {}, inputs)
    ids = catalog["item_id"].astype(str).to_numpy()
    for name in names:
        if not name.endswith(".npy"):
            continue
        extractor = name.removesuffix(".npy")
        old = artifacts.read_manifest(here / name) or {}
        vectors = np.load(here / name, mmap_mode="r")[:n]
        write_embeddings(cfg, extractor, vectors, ids, "embed", old.get("params", {}), inputs)


def child_synthetic_stages(
    artifacts_dir: str, stages: Sequence[str], force: bool, incoming: str | None = None
) -> dict[str, Any]:
    """(child) Time `stages` (names of ALL_VECTOR_STAGES) on the build in `artifacts_dir`, in
    run's order; with `incoming`, first (untimed) move its files into the build, rewriting
    their manifests against the build's catalog, and after the stages compare the kept items'
    map places and clusters with those before."""
    cfg = Config(artifacts_dir=Path(artifacts_dir))
    names = cfg.extractors_built()
    before: dict[str, pd.DataFrame] = {}
    if incoming is not None:
        for name in names:
            for kind, path in (("map", cfg.map_path(name)), ("clusters", cfg.clusters_path(name))):
                if path.exists():
                    before[f"{kind} {name}"] = pd.read_parquet(path)
        here = Path(incoming)
        _write_rows(Config(artifacts_dir=here), cfg, _rows(here), [p.name for p in here.iterdir()])
    runners = _vector_stages(cfg, names)
    out: dict[str, Any] = {"items": len(pd.read_parquet(cfg.catalog_path)), "stage_seconds": {}}
    how: dict[str, Any] = {}
    began = time.perf_counter()
    for stage in stages:
        t0 = time.perf_counter()
        result = runners[stage](force)
        out["stage_seconds"][stage] = round(time.perf_counter() - t0, 2)
        how[stage] = {
            name: {k: v for k, v in part.items() if k in _HOW_KEYS}
            for name, part in (result.details or {}).items()
            if isinstance(part, dict)
        }
    out["total_s"] = round(time.perf_counter() - began, 2)
    out["how"] = how
    if before:
        out["checks"] = _kept_unchanged(before, cfg, names)
    return out


def _rows(folder: Path) -> int:
    return len(pd.read_parquet(folder / "catalog.parquet"))


# What each stage's details say about how it worked (fitted anew or updated, and why).
_HOW_KEYS = ("skipped", "refit", "kept", "placed", "assigned", "removed", "build_seconds")


def _vector_stages(cfg: Config, names: list[str]) -> dict[str, Callable[[bool], Any]]:
    """The stages after embedding that a synthetic catalog can run, by name."""
    from pipelines.explore.clusters import run_clusters
    from pipelines.explore.maps import run_maps
    from pipelines.quality.evaluate import run_evaluate
    from pipelines.quality.health import run_health
    from pipelines.search.ann import run_ann

    return {
        "maps": lambda force: run_maps(cfg, names, force=force),
        "clusters": lambda force: run_clusters(cfg, names, force=force),
        "ann": lambda force: run_ann(cfg, names, force=force),
        "health": lambda force: run_health(cfg, names, force=force),
        "evaluate": lambda force: run_evaluate(cfg, names, force=force),
    }


def _kept_unchanged(
    before: dict[str, pd.DataFrame], cfg: Config, names: list[str]
) -> dict[str, Any]:
    """For each map and clusters table: kept items whose place / cluster did not change."""
    out: dict[str, Any] = {}
    for name in names:
        for kind, path, cols in (
            ("map", cfg.map_path(name), ["x", "y"]),
            ("clusters", cfg.clusters_path(name), ["cluster"]),
        ):
            old = before.get(f"{kind} {name}")
            if old is None or not path.exists():
                continue
            new = pd.read_parquet(path).set_index("item_id")
            old = old.set_index("item_id")
            kept = old.index.intersection(new.index)
            same = (old.loc[kept, cols].to_numpy() == new.loc[kept, cols].to_numpy()).all(1)
            out[f"{kind} {name}"] = {
                "kept": len(kept),
                "unchanged": int(same.sum()),
                "new": int(len(new) - len(kept)),
            }
    return out


def write_json_result(result: dict[str, Any], path: Path) -> None:
    """`result` (JSON-safe) into `path`, for a partial run outside `run_bench`."""
    from pipelines import artifacts

    artifacts.write_json(jsonable(result), path)
