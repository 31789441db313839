"""Runs every stage in order (catalog, colours, train, embed, head, classify, maps, clusters,
ann, mosaic, health, evaluate); prints times."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pipelines import commands
from pipelines.config import EXTRACTORS, Config
from pipelines.stage import StageResult


def _stages(
    config: Config,
    extractors: Sequence[str],
    force: bool,
    engine: str = "local",
    address: str | None = None,
    retrain: bool = False,
) -> list[tuple[str, Callable[[], StageResult]]]:
    """(name, thunk) for every stage; imports stay lazy so `--help` never loads TensorFlow.

    The metric-learned head trains on the InceptionV3 vectors, so it comes after their embed
    stage (InceptionV3 is embedded whenever the head is asked for). A catalog without labels
    skips the head, and the later stages then leave it out (`extractors` is edited in place).
    """
    from pipelines.data.catalog import run_catalog
    from pipelines.data.colour import run_colours
    from pipelines.embedding.embed import run_embed
    from pipelines.embedding.embed_views import run_views
    from pipelines.explore.clusters import run_clusters
    from pipelines.explore.maps import run_maps
    from pipelines.explore.mosaic import run_mosaic
    from pipelines.models.classify import run_classify
    from pipelines.models.head import EXTRACTOR as HEAD
    from pipelines.models.head import run_embed_head, run_train_head
    from pipelines.models.train import run_train
    from pipelines.models.training_set import run_training_set
    from pipelines.quality.evaluate import run_evaluate
    from pipelines.quality.health import run_health
    from pipelines.search.ann import run_ann

    # Trained parts (models, maps' fits, centroids) are kept across catalog updates until the
    # retrain policy or --retrain renews the training set (pipelines/models/training_set.py).
    fit = force or retrain
    stages: list[tuple[str, Callable[[], StageResult]]] = [
        ("catalog", lambda: run_catalog(config, force=force, prune=False)),
        ("colours", lambda: run_colours(config, force=force)),
        ("training set", lambda: run_training_set(config, retrain=fit)),
    ]
    if "custom_cnn" in extractors:
        stages.append(("train", lambda: run_train(config, force=fit)))
    base = [name for name in extractors if name != HEAD]
    if HEAD in extractors and "inception_v3" not in base:
        base.insert(0, "inception_v3")
    for name in base:
        stages.append(
            (
                f"embed {name}",
                lambda name=name: run_embed(
                    config, name, force=force, engine=engine, address=address
                ),
            )
        )
    if config.train_views and "inception_v3" in base:
        stages.append(("views", lambda: run_views(config, force=fit)))
    if HEAD in extractors:

        def train_head() -> StageResult:
            result = run_train_head(config, force=fit)
            if result.skipped and not config.head_path.is_file():
                extractors.remove(HEAD)  # no labels: nothing to embed, map or evaluate
            return result

        def embed_head() -> StageResult:
            if HEAD not in extractors:
                return StageResult("embed", skipped=True, note=f"{HEAD} skipped (no labels)")
            return run_embed_head(config, force=force)

        stages += [(f"train {HEAD}", train_head), (f"embed {HEAD}", embed_head)]
    stages.append(("classify", lambda: run_classify(config, force=fit)))
    stages += [
        ("maps", lambda: run_maps(config, extractors, force=fit)),
        ("clusters", lambda: run_clusters(config, extractors, force=fit)),
        ("ann", lambda: run_ann(config, extractors, force=force)),
        ("mosaic", lambda: run_mosaic(config, extractors, force=force)),
        ("health", lambda: run_health(config, extractors, force=force)),
        ("evaluate", lambda: run_evaluate(config, extractors, force=force)),
    ]
    return stages


def run_all(
    config: Config,
    extractors: Sequence[str] = EXTRACTORS,
    force: bool = False,
    engine: str = "local",
    address: str | None = None,
    retrain: bool = False,
) -> list[StageResult]:
    """Run every stage; each skips itself when its inputs and settings are unchanged.

    Returns each stage's result, in order. Prints a table of them and the evaluation report
    at the end. `engine` and `address` choose where the embed stages run (see `run_embed`).
    On a changed catalog every stage updates in place with the trained parts as they are;
    `retrain` renews the training set and refits every trained part (`force` rebuilds all).
    """
    results: list[tuple[str, StageResult]] = []
    total = time.perf_counter()
    _sweep(config)
    stages = _stages(config, list(extractors), force, engine, address, retrain)
    for i, (name, thunk) in enumerate(stages, 1):
        print(f"\n[{i}/{len(stages)}] {name}", flush=True)
        results.append((name, thunk()))
    # Removed items' thumbnails go last: until the update is whole, the app shows the previous
    # build, whose photos these are.
    from pipelines.data.catalog import prune_thumbnails

    prune_thumbnails(config)
    seconds = time.perf_counter() - total
    print("\nstage                  seconds  result")
    for name, result in results:
        print(f"{name:<22} {result.seconds:>7.1f}  {result.describe()}")
    print(f"{'total':<22} {seconds:>7.1f}")
    _print_report(config)
    print(f"\nArtifacts are in {config.artifacts_dir}.")
    print(f"Open the explorer with: {commands.APP}")
    return [result for _name, result in results]


def _sweep(config: Config) -> None:
    """Remove the temporaries of writes a SIGKILL or power cut interrupted (GBs at 1M items),
    which nothing else would ever delete; one line when something was removed."""
    from pipelines.artifacts import sweep_stale_temporaries

    removed = sweep_stale_temporaries(config.artifacts_dir)
    if removed:
        files = "file" if len(removed) == 1 else "files"
        print(
            f"removed {len(removed)} temporary {files} left by an interrupted run "
            f"({_size(sum(removed.values()))})",
            flush=True,
        )


def _size(n: int) -> str:
    """Bytes for people: 812 B, 4.2 MB, 3.1 GB (powers of 1000)."""
    if n < 1000:
        return f"{n} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6)):
        if n < 999.95 * scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e9:.1f} GB"


def _print_report(config: Config) -> None:
    import json

    from pipelines.quality.evaluate import format_report

    if config.metrics_path.exists():
        print("\n" + format_report(json.loads(config.metrics_path.read_text())))
