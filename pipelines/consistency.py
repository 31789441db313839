"""Whether the artifacts folder holds one consistent build: reads every artifact's manifest
(and checks its bytes against it); writes nothing.

`python -m pipelines run` rewrites an updated catalog's artifacts one at a time, each file and
then its manifest, so while it runs the folder holds a new catalog beside embeddings, maps or
clusters of the old one. A door (the app, the HTTP service) must not serve that mix. Every
downstream manifest names the inputs it was built from (the catalog's content hash, the
embeddings' and maps' sha256, the model's weights, the training set), so one pass over the
manifests tells whether they all describe the same build:

* each artifact's bytes match its manifest (a run between a file's rename and its manifest's
  write leaves them apart);
* each recorded input is the one in the folder now: `inputs.catalog` is the catalog's content
  hash; `embeddings/<x>`, `maps/<x>`, `clusters/<x>`, `centroids/<x>`, `categories` and
  `colours` are those artifacts' sha256 ("absent" when they were not built); `training_set` is
  the training set's content; an embeddings file's `weights` are its model file's sha256.

`build_stamp` returns the manifests' hashes (the cache key of everything a door loads) and the
first disagreement found, if any; `check_unchanged` lets a loader confirm that the files it just
read are still the ones its key names. Both are cheap: the stamp is recomputed only when a
file's or a manifest's inode, size or modification time changed, and the bytes are hashed once
per rewrite (`artifacts.sha256_file` remembers them; files from 256 MB are checked by inode,
size and mtime).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import commands
from pipelines.artifacts import manifest_path, matches_manifest, read_manifest
from pipelines.config import EXTRACTORS, Config
from pipelines.errors import LookalikeError

HEALTH_KINDS = ("duplicates", "mislabelled", "outliers")  # as `explore.browse.HEALTH_KINDS`
MISSING = "missing"
# What every door says while the folder is between two builds.
UPDATING = (
    "The catalog is being updated ({detail}). This clears itself when `{run}` finishes; if "
    "none is running, an update stopped half-way: run `{run}` to finish it."
)


class UpdateInProgress(LookalikeError):
    """The artifacts are between two builds (or changed while they were read)."""


def updating_message(detail: str) -> str:
    """The one-paragraph note the doors show while the artifacts are mid-update."""
    return UPDATING.format(detail=detail, run=commands.RUN)


def artifact_paths(config: Config) -> dict[str, Path]:
    """{name: path} of every artifact a door reads, named as downstream manifests name their
    inputs where they do (catalog, embeddings/<x>, maps/<x>, ...); model files are
    weights/<x>."""
    from pipelines.models.training_set import snapshot_path

    paths = {
        "catalog": config.catalog_path,
        "colours": config.colours_path,
        "categories": config.categories_path,
        "training_set": snapshot_path(config),
        "category_model": config.category_model_path,
        "metrics": config.metrics_path,
        "metrics_per_class": config.per_class_path,
    }
    for name in EXTRACTORS:
        paths[f"weights/{name}"] = config.model_path(name)
        paths[f"embeddings/{name}"] = config.embeddings_path(name)
        paths[f"maps/{name}"] = config.map_path(name)
        paths[f"clusters/{name}"] = config.clusters_path(name)
        paths[f"centroids/{name}"] = config.centroids_path(name)
        paths[f"cluster_summary/{name}"] = config.cluster_summary_path(name)
        paths[f"ann/{name}"] = config.ann_index_path(name)
        paths[f"ann/{name}_lists"] = config.ann_lists_path(name)
        paths[f"ann/{name}_delta"] = config.ann_delta_path(name)
        paths[f"mosaic/{name}"] = config.mosaic_image_path(name)
        paths[f"mosaic_cells/{name}"] = config.mosaic_cells_path(name)
        paths[f"mosaic_tiles/{name}"] = config.mosaic_tiles_path(name)
        for kind in HEALTH_KINDS:
            paths[f"health/{name}_{kind}"] = config.health_path(name, kind)
    return paths


# Not checked against the build: the saved approximate index and its update delta are checked
# by their reader (`readers.load_saved_ann` falls back to an in-memory index when they are
# stale), and a catalog that shrank below the ANN threshold leaves an old one behind for good.
_KEYED_ONLY = ("ann/",)
# Recorded inputs whose value is another artifact's sha256 ("absent" when not built).
_SHA_INPUTS = ("embeddings/", "maps/", "clusters/", "centroids/")
_SHA_NAMES = ("categories", "colours")


@dataclass(frozen=True)
class BuildStamp:
    """The manifests of one artifacts folder at one moment.

    Attributes
    ----------
    artifacts_dir : the folder.
    shas : {artifact name: its manifest's sha256, or "missing" (no file or no manifest)}.
    paths : {absolute path: sha256 or "missing"}, the same by path (what loaders look up).
    problem : None when every artifact belongs to one build; else the first disagreement,
        in words ("embeddings/custom_cnn.npy was built from another catalog ...").
    """

    artifacts_dir: str
    shas: Mapping[str, str]
    paths: Mapping[str, str] = field(repr=False)
    problem: str | None = None

    @property
    def consistent(self) -> bool:
        """True when the folder holds one build (possibly an empty or partial one)."""
        return self.problem is None

    @property
    def key(self) -> tuple[str, ...]:
        """The build's identity: every artifact's sha256, in a fixed order (a cache key)."""
        return tuple(f"{name}={sha}" for name, sha in sorted(self.shas.items()))

    def sha(self, path: Path | str) -> str | None:
        """The sha256 this build has for `path` ("missing"), None for a path it does not hold."""
        return self.paths.get(str(path))

    def note(self) -> str:
        """What a door says while this folder is mid-update ("" when it is consistent)."""
        return "" if self.problem is None else updating_message(self.problem)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


_MEMO: dict[tuple[str, tuple[Path, ...]], tuple[tuple[Any, ...], BuildStamp]] = {}
_MEMO_LOCK = threading.Lock()


def build_stamp(config: Config) -> BuildStamp:
    """The manifests of `config.artifacts_dir` and whether they describe one build.

    Recomputed only when a file or manifest changed since the last call for this folder (a
    `stat` of each, about 60 files); otherwise the remembered stamp is returned.

    Parameters
    ----------
    config : where the artifacts live; use `status.app_config(config)` so the InceptionV3
        weights file is the one the embeddings were made with.
    """
    named = artifact_paths(config)
    files = tuple(named.values())
    signature = tuple((_stat(p), _stat(manifest_path(p))) for p in files)
    memo_key = (str(config.artifacts_dir), files)
    with _MEMO_LOCK:
        held = _MEMO.get(memo_key)
    if held is not None and held[0] == signature:
        return held[1]
    stamp = _compute(config, named)
    # Memoise only what was read from an unchanged folder: a file rewritten during the pass
    # gets looked at again next time.
    if signature == tuple((_stat(p), _stat(manifest_path(p))) for p in files):
        with _MEMO_LOCK:
            _MEMO[memo_key] = (signature, stamp)
    return stamp


def _compute(config: Config, named: Mapping[str, Path]) -> BuildStamp:
    manifests: dict[str, dict[str, Any]] = {}
    shas: dict[str, str] = {}
    problems: list[str] = []
    root = Path(config.artifacts_dir)

    def shown(name: str) -> str:
        path = named[name]
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    for name, path in named.items():
        manifest = read_manifest(path) if path.exists() else None
        if manifest is None or not manifest.get("sha256"):
            shas[name] = MISSING  # not built (a file without its manifest is not built yet)
            continue
        manifests[name] = manifest
        shas[name] = str(manifest["sha256"])
        if not name.startswith(_KEYED_ONLY) and not matches_manifest(path, manifest):
            problems.append(
                f"{shown(name)} is being rewritten (its bytes differ from its manifest)"
            )

    catalog = manifests.get("catalog", {})
    expected: dict[str, str] = {}
    if catalog:
        expected["catalog"] = str(catalog.get("content") or catalog.get("sha256"))
    snapshot = manifests.get("training_set", {})
    if snapshot.get("content"):
        expected["training_set"] = str(snapshot["content"])

    for name, manifest in manifests.items():
        if name.startswith(_KEYED_ONLY):
            continue
        inputs = manifest.get("inputs") or {}
        for key, recorded in inputs.items():
            if key in expected:
                if recorded != expected[key]:
                    what = "catalog" if key == "catalog" else "training set"
                    problems.append(f"{shown(name)} was built from another {what}")
            elif key.startswith(_SHA_INPUTS) or key in _SHA_NAMES:
                if key not in shas:
                    continue
                now = shas[key]
                if now == MISSING and recorded != "absent":
                    continue  # deleted since: the pages say it is missing
                if recorded != ("absent" if now == MISSING else now):
                    problems.append(f"{shown(name)} was built from another {shown(key)}")
            elif key == "weights" and name.startswith("embeddings/"):
                model = f"weights/{name.split('/', 1)[1]}"
                if shas.get(model, MISSING) not in (MISSING, recorded):
                    problems.append(f"{shown(name)} was made by another {shown(model)}")
    return BuildStamp(
        artifacts_dir=str(config.artifacts_dir),
        shas=shas,
        paths={str(path): shas[name] for name, path in named.items()},
        problem=problems[0] if problems else None,
    )


def check_unchanged(expected: Mapping[Path, str]) -> None:
    """Raise UpdateInProgress unless each path still has the sha256 `expected` names (and its
    bytes match its manifest). A loader calls this after reading, so what it read, and caches
    under that key, is the build the key names.

    Parameters
    ----------
    expected : {artifact path: sha256 or "missing"} as a `BuildStamp` gave them.
    """
    for path, sha in expected.items():
        path = Path(path)
        manifest = read_manifest(path) if path.exists() else None
        now = str((manifest or {}).get("sha256") or MISSING)
        if now != sha or (manifest is not None and not matches_manifest(path, manifest)):
            raise UpdateInProgress(updating_message(f"{path.name} changed while it was read"))
