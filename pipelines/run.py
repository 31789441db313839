"""Runs every stage in order (catalog, train, embed, maps, clusters, evaluate); prints times."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from pipelines.config import EXTRACTORS, Config


def _stages(config: Config, extractors: Sequence[str], force: bool) -> list[tuple[str, Callable]]:
    """(name, thunk) for every stage; imports stay lazy so `--help` never loads TensorFlow."""
    from pipelines.catalog import run_catalog
    from pipelines.cluster import run_clusters
    from pipelines.embed import run_embed
    from pipelines.evaluate import run_evaluate
    from pipelines.project import run_maps
    from pipelines.train import run_train

    stages: list[tuple[str, Callable]] = [("catalog", lambda: run_catalog(config, force=force))]
    if "custom_cnn" in extractors:
        stages.append(("train", lambda: run_train(config, force=force)))
    for name in extractors:
        stages.append((f"embed {name}", lambda name=name: run_embed(config, name, force=force)))
    stages += [
        ("maps", lambda: run_maps(config, extractors, force=force)),
        ("clusters", lambda: run_clusters(config, extractors, force=force)),
        ("evaluate", lambda: run_evaluate(config, extractors, force=force)),
    ]
    return stages


def _wrote(result: Any) -> str:
    """A short description of what a stage wrote, from its summary."""
    if isinstance(result, dict) and result.get("stage") == "train":
        acc = result.get("best_val_accuracy")
        return f"{result.get('kind')}" + (f", val accuracy {acc:.3f}" if acc is not None else "")
    if isinstance(result, dict) and "skipped" in result:
        return "up to date" if result["skipped"] else f"{result.get('rows', '')} rows".strip()
    if isinstance(result, dict) and result and all(isinstance(v, dict) for v in result.values()):
        parts = []
        for name, sub in result.items():
            if not isinstance(sub, dict):
                continue
            state = "up to date" if sub.get("skipped") else "written"
            parts.append(f"{name}: {state}")
        return ", ".join(parts)
    return "done"


def run_all(
    config: Config, extractors: Sequence[str] = EXTRACTORS, force: bool = False
) -> list[dict[str, Any]]:
    """Run every stage; each skips itself when its inputs and settings are unchanged.

    Returns one row per stage: name, seconds, what it wrote. Prints the table and the
    evaluation report at the end.
    """
    rows = []
    total = time.perf_counter()
    stages = _stages(config, list(extractors), force)
    for i, (name, thunk) in enumerate(stages, 1):
        print(f"\n[{i}/{len(stages)}] {name}", flush=True)
        start = time.perf_counter()
        result = thunk()
        rows.append(
            {"stage": name, "seconds": time.perf_counter() - start, "wrote": _wrote(result)}
        )
    seconds = time.perf_counter() - total
    print("\nstage                  seconds  result")
    for row in rows:
        print(f"{row['stage']:<22} {row['seconds']:>7.1f}  {row['wrote']}")
    print(f"{'total':<22} {seconds:>7.1f}")
    _print_report(config)
    print(f"\nArtifacts are in {config.artifacts_dir}.")
    print("Open the explorer with: python -m streamlit run app/streamlit_app.py")
    return rows


def _print_report(config: Config) -> None:
    import json

    from pipelines.evaluate import format_report

    if config.metrics_path.exists():
        print("\n" + format_report(json.loads(config.metrics_path.read_text())))
