"""Memory benchmark: disk bytes per catalog item by artifact (the pixel cache included) and
peak RSS of the real stages in child processes, on a temporary copy of the artifacts."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines import artifacts
from pipelines.bench.common import K, jsonable, real_embeddings, run_child
from pipelines.config import Config
from pipelines.data import pixel_cache


def bench_memory(config: Config, quick: bool, shared: dict[str, Any]) -> dict[str, Any]:
    """Bytes per item, the pixel cache's cost, and peak RSS rows (stages, vector stages, app)."""
    out: dict[str, Any] = {
        "bytes_per_item": bytes_per_item(config),
        "pixel_cache": pixel_cache_cost(config),
    }
    rows = stage_rss(config, quick)
    vector = shared.get("vector_stages")
    if vector:
        rows.append(
            {
                "stage": "vector stages (maps, index, k-means)",
                "n": vector["n"],
                "data": vector["data"],
                **{k: v for k, v in vector.items() if k.startswith("peak") or k.endswith("_s")},
            }
        )
    if shared.get("app"):
        rows.append({"stage": "app", **shared["app"]})
    out["rows"] = rows
    return out


def catalog_rows(config: Config) -> int:
    """Rows of the catalog, from its manifest (or the table when the manifest lacks them)."""
    rows = (artifacts.read_manifest(config.catalog_path) or {}).get("rows")
    if not rows:
        import pandas as pd

        rows = len(pd.read_parquet(config.catalog_path, columns=["item_id"]))
    return int(rows)


def bytes_per_item(config: Config) -> dict[str, Any]:
    """Disk bytes of every artifact (top-level file or folder, bench results aside) per item."""
    if not config.catalog_path.exists():
        return {"skipped": f"no catalog at {config.catalog_path}"}
    rows = catalog_rows(config)
    parts: dict[str, int] = {}
    for path in config.artifacts_dir.iterdir():
        if path == config.bench_dir:
            continue
        size = (
            path.stat().st_size
            if path.is_file()
            else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        )
        key = path.name if path.is_dir() else path.name.split(".")[0]
        parts[key] = parts.get(key, 0) + size
    total = sum(parts.values())
    fixed = parts.get(config.models_dir.name, 0)
    return {
        "rows": rows,
        "total_bytes": total,
        "per_item_bytes": round(total / rows, 1),
        "per_item_bytes_without_models": round((total - fixed) / rows, 1),
        "by_artifact_per_item": {k: round(v / rows, 1) for k, v in sorted(parts.items())},
    }


def pixel_cache_cost(config: Config) -> dict[str, Any]:
    """Disk cost of the custom CNN's pixel cache per item: measured when it exists, else the
    size it will take (size x size x 3 bytes)."""
    size = config.cnn_image_size
    path = config.pixel_cache_path(size)
    expected = pixel_cache.bytes_per_item(size)
    if not config.catalog_path.exists() or not path.exists():
        return {"size": size, "exists": False, "per_item_bytes_expected": expected}
    rows = catalog_rows(config)
    return {
        "size": size,
        "exists": True,
        "path": str(path),
        "bytes": path.stat().st_size,
        "per_item_bytes": round(path.stat().st_size / rows, 1),
        "per_item_bytes_expected": expected,
    }


def _copy_artifacts(config: Config, dest: Path, embeddings: list[Path]) -> None:
    """The catalog and `embeddings` (with manifests) into the artifacts folder `dest`."""
    copy = Config(artifacts_dir=dest)
    copy.embeddings_path("x").parent.mkdir(parents=True)
    for source, target in [
        (config.catalog_path, copy.catalog_path),
        *[(p, copy.embeddings_path(p.stem)) for p in embeddings],
    ]:
        shutil.copy2(source, target)
        shutil.copy2(artifacts.manifest_path(source), artifacts.manifest_path(target))


def stage_rss(config: Config, quick: bool) -> list[dict[str, Any]]:
    """Peak RSS of real stages at the catalog's size, on a copy of its artifacts."""
    real = real_embeddings(config)
    if not real:
        return [{"stage": "catalog stages", "skipped": f"no embeddings in {config.artifacts_dir}"}]
    rows: list[dict[str, Any]] = []
    names = list(real)
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        copy = Path(tmp) / "artifacts"
        _copy_artifacts(config, copy, list(real.values()))
        for stage in ["index"] if quick else ["maps", "clusters", "index"]:
            params = {"artifacts_dir": str(copy), "stage": stage, "extractors": names}
            result = run_child("stage", params, 1800)
            summary = {k: v for k, v in result.items() if k != "summary"}
            rows.append({"stage": stage, "extractors": names, **summary})
    if quick:
        rows.append({"stage": "embed", "skipped": "quick mode (the full run measures it)"})
    else:
        rows += embed_rss(config, names)
    return rows


def embed_rss(config: Config, extractors: list[str]) -> list[dict[str, Any]]:
    """Peak RSS of the embedding stage on a 256-row subset of the catalog (temp folder)."""
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-embed-") as tmp:
        copy = Config(artifacts_dir=Path(tmp) / "artifacts")
        catalog = pd.read_parquet(config.catalog_path).iloc[:256]
        artifacts.write_parquet(catalog, copy.catalog_path)
        artifacts.write_manifest(copy.catalog_path, "catalog", {"bench_subset": 256}, {})
        if config.models_dir.exists():
            shutil.copytree(config.models_dir, copy.models_dir)
        for name in extractors:
            params = {
                "artifacts_dir": str(copy.artifacts_dir),
                "stage": "embed",
                "extractors": [name],
            }
            result = run_child("stage", params, 1800)
            summary = (result.pop("summary", None) or [{}])[0]
            rows.append(
                {
                    "stage": f"embed {name}",
                    "n": len(catalog),
                    "images_per_s_incl_load": summary.get("images_per_s"),
                    **result,
                }
            )
    return rows


def child_stage(artifacts_dir: str, stage: str, extractors: list[str]) -> dict[str, Any]:
    """(child) One real pipeline stage on a (copied) artifacts folder."""
    config = Config(artifacts_dir=Path(artifacts_dir))
    t0 = time.perf_counter()
    summary: Any
    if stage == "embed":
        from pipelines.embedding.embed import run_embed

        summary = [
            run_embed(config, name, force=True, progress=False).details for name in extractors
        ]
    elif stage == "maps":
        from pipelines.explore.maps import run_maps

        summary = run_maps(config, extractors, force=True).details
    elif stage == "clusters":
        from pipelines.explore.clusters import run_clusters

        summary = run_clusters(config, extractors, force=True).details
    elif stage == "index":
        from pipelines.readers import load_index

        summary = {}
        for name in extractors:
            index = load_index(config, name)
            for row in range(0, index.size, max(1, index.size // 50)):
                index.search(index.vectors[row], K, exclude_rows=[row])
            summary[name] = index.size
    else:
        raise ValueError(f"unknown stage {stage}")
    return {"stage_s": round(time.perf_counter() - t0, 2), "summary": jsonable(summary)}
