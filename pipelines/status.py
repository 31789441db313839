"""What the artifacts folder holds: which files a page needs, which are missing, when they were
built, how far the catalog moved since the models were trained, and the settings the app runs
with. Reads manifests (and, for the drift, the catalog and the training set); writes nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines import commands
from pipelines.artifacts import read_manifest
from pipelines.config import EXTRACTORS, Config
from pipelines.errors import LookalikeError

CATALOG_PARTS = ("catalog", "embeddings", "maps", "clusters", "models", "metrics")


def app_config(config: Config | None = None) -> Config:
    """The settings the app runs with: `config` (default `Config()`, which honours
    $LOOKALIKE_ARTIFACTS) with the custom CNN's input size and width taken from the trained
    model's manifest, and InceptionV3's weights source from its embeddings' manifest, so live
    uploads are embedded exactly as the catalog was.

    Parameters
    ----------
    config : base settings; None builds `Config()`.

    Returns
    -------
    Config, unchanged when there is no trained model yet.
    """
    config = config or Config()
    manifest = read_manifest(config.custom_cnn_path) or {}
    changes = {}
    if isinstance(manifest.get("image_size"), int):
        changes["cnn_image_size"] = manifest["image_size"]
    if isinstance(manifest.get("embedding_dim"), int):
        changes["cnn_embedding_dim"] = manifest["embedding_dim"]
    embedded = read_manifest(config.embeddings_path("inception_v3")) or {}
    weights = (embedded.get("params") or {}).get("weights")
    if weights in ("fid", "keras"):
        changes["inception_weights"] = weights
    return config.replace(**changes) if changes else config


def required_paths(
    config: Config, parts: Sequence[str], extractors: Sequence[str] = EXTRACTORS
) -> list[Path]:
    """The artifact files a page needs.

    Parameters
    ----------
    config : where the artifacts live.
    parts : any of "catalog", "embeddings", "maps", "clusters", "models", "metrics".
    extractors : extractors whose per-extractor artifacts are needed.
    """
    unknown = [p for p in parts if p not in CATALOG_PARTS]
    if unknown:
        raise LookalikeError(
            f"unknown artifact part {unknown[0]!r}; valid parts: {', '.join(CATALOG_PARTS)}"
        )
    paths: list[Path] = []
    if "catalog" in parts:
        paths.append(config.catalog_path)
    for name in extractors:
        if "embeddings" in parts:
            paths.append(config.embeddings_path(name))
        if "maps" in parts:
            paths.append(config.map_path(name))
        if "clusters" in parts:
            paths.append(config.clusters_path(name))
    if "models" in parts:
        paths.append(config.inception_weights_path)
        paths.append(config.custom_cnn_path)
    if "metrics" in parts:
        paths.append(config.metrics_path)
    return paths


def missing_artifacts(
    config: Config, parts: Sequence[str], extractors: Sequence[str] = EXTRACTORS
) -> list[Path]:
    """The needed artifact files (see `required_paths`) that are absent or lack a manifest."""
    return [
        p
        for p in required_paths(config, parts, extractors)
        if not p.exists() or read_manifest(p) is None
    ]


def missing_paths(paths: Sequence[Path]) -> list[Path]:
    """The artifact files among `paths` that are absent or lack a manifest."""
    return [p for p in paths if not Path(p).exists() or read_manifest(p) is None]


def manifest_sha(path: Path) -> str:
    """The sha256 recorded in `path`'s manifest ("missing" when there is none): the cache key
    of everything loaded from it, so a rebuilt artifact is read again."""
    manifest = read_manifest(path) or {}
    return str(manifest.get("sha256") or "missing")


def artifacts_summary(config: Config) -> dict[str, Any]:
    """What the sidebar says about the artifacts: catalog rows and when they were built.

    Returns
    -------
    {"dir": str, "built": bool, "items": int | None, "catalog_created": str | None,
    "embeddings_created": {extractor: str | None}}
    """
    catalog = read_manifest(config.catalog_path) or {}
    rows = catalog.get("rows")
    if rows is None and config.catalog_path.exists():
        # Older manifests may not count rows; parquet metadata does, without reading the data.
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(config.catalog_path).metadata.num_rows
    return {
        "dir": str(config.artifacts_dir),
        "built": bool(catalog) and config.catalog_path.exists(),
        "items": None if rows is None else int(rows),
        "catalog_created": catalog.get("created"),
        "embeddings_created": {
            name: (read_manifest(config.embeddings_path(name)) or {}).get("created")
            for name in EXTRACTORS
        },
    }


# --------------------------------------------------------------------------- drift


def drift(config: Config, catalog: Any = None) -> dict[str, Any] | None:
    """How far the catalog moved since the models were trained, and what the retrain policy
    will do: `models.training_set.describe` (trained, current, added, removed, changed_share,
    unseen_labels, retrain_due, reason, trained_at, retrain_seconds, summary).

    Parameters
    ----------
    config : where the artifacts live.
    catalog : the catalog table when the caller holds it; read from `config` when None.

    Returns
    -------
    The dict, or None before the catalog is built.
    """
    from pipelines.models.training_set import describe

    if catalog is None:
        if missing_paths([config.catalog_path]):
            return None
        from pipelines.readers import read_catalog

        catalog, _ = read_catalog(config)
    return describe(config, catalog)


def _duration(seconds: float) -> str:
    """Seconds for people: 40 s, 9.5 min, 2.1 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def drift_caption(found: Mapping[str, Any]) -> str:
    """One short line on the drift (the app's sidebar caption)."""
    if not found.get("trained"):
        return "Models: not trained yet"
    line = f"Since training: **{found['added']:,}** added, **{found['removed']:,}** removed"
    return line + (" · next run retrains" if found.get("retrain_due") else "")


def drift_details(found: Mapping[str, Any]) -> list[str]:
    """The drift in full, one sentence per line: when the models were trained and on what,
    what changed since, what the next `run` does (the policy) and what `run --retrain` costs.
    `python -m pipelines status` prints these; the sidebar shows them in its tooltip."""
    from pipelines.models.training_set import RETRAIN_CHANGED_SHARE

    if not found.get("trained"):
        return [f"No models trained yet: `{commands.RUN}` trains them."]
    when = str(found.get("trained_at") or "?").replace("T", " ")[:16]
    lines = [
        f"Models trained {when} on {found['trained']:,} items; the catalog has "
        f"{found['current']:,} now.",
        f"{found['summary']}.",
    ]
    if found.get("unseen_labels"):
        lines.append(
            f"The category classifier cannot predict {', '.join(found['unseen_labels'])} "
            "(never seen in training)."
        )
    if found.get("retrain_due"):
        lines.append(f"The next `{commands.RUN}` retrains them: {found['reason']}.")
    else:
        lines.append(
            f"The next `{commands.RUN}` keeps them; it retrains once a label training never "
            f"saw appears in the train split or more than {RETRAIN_CHANGED_SHARE:.0%} of the "
            "train split changed."
        )
    seconds = found.get("retrain_seconds")
    cost = (
        f"about {_duration(seconds)} of training (what the last training took), then every "
        "item is embedded again with the retrained models"
        if seconds
        else "the models' manifests record no training time"
    )
    lines.append(f"`{commands.RETRAIN}` retrains now: {cost}.")
    return lines


def report(config: Config) -> dict[str, Any]:
    """What `python -m pipelines status` says: `artifacts_summary`, whether the folder holds
    one build (`consistency.build_stamp`: "problem" is None, or what is mid-update) and the
    drift (None before a catalog is built)."""
    from pipelines.consistency import build_stamp

    config = app_config(config)
    stamp = build_stamp(config)
    problem = stamp.problem
    try:
        found = drift(config)
    except LookalikeError as err:  # a catalog being rewritten: say so rather than fail
        found, problem = None, problem or str(err)
    return {**artifacts_summary(config), "problem": problem, "drift": found}


def report_lines(found: Mapping[str, Any]) -> list[str]:
    """`report` as the lines `python -m pipelines status` prints."""
    if not found["built"]:
        return [f"Artifacts: {found['dir']} (not built yet: run `{commands.RUN}`)"]
    built = str(found["catalog_created"] or "?").replace("T", " ")[:16]
    lines = [
        f"Artifacts: {found['dir']}",
        f"Catalog: {found['items']:,} items, built {built}",
    ]
    embedded = [
        f"{name} {str(when).replace('T', ' ')[:16]}"
        for name, when in found["embeddings_created"].items()
        if when
    ]
    if embedded:
        lines.append(f"Embeddings: {', '.join(embedded)}")
    if found["problem"]:
        lines.append(
            f"Build: mid-update — {found['problem']}; if no `{commands.RUN}` is running, run it "
            "to finish the update"
        )
    else:
        lines.append("Build: consistent (every artifact comes from this catalog)")
    if found["drift"] is not None:
        lines += drift_details(found["drift"])
    return lines
