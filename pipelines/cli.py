"""The command line: `python -m pipelines <stage> [options]`, one subcommand per stage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.config import ENGINES, EXTRACTORS, SOURCE_FORMATS, Config, parse_overrides
from pipelines.errors import LookalikeError


def _catalog(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.data.catalog import run_catalog

    return run_catalog(config, force=args.force)


def _check_engine(args: argparse.Namespace) -> None:
    """Before any stage runs: with --engine ray, Ray is installed and --address answers."""
    if args.engine == "ray":
        from pipelines.embedding.ray_session import preflight

        preflight(args.address)
    elif args.address:
        raise LookalikeError(
            f"--address {args.address} is for the Ray engine — add --engine ray, or leave out "
            f"--address"
        )


def _embed(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.embedding.embed import run_embed

    _check_engine(args)
    return [
        run_embed(config, name, force=args.force, engine=args.engine, address=args.address)
        for name in args.extractor
    ]


def _train(config: Config, args: argparse.Namespace) -> Any:
    """The custom CNN, then the metric head when the vectors it learns from are current."""
    from pipelines import commands
    from pipelines.models.head import BASE, CNN, EXTRACTOR, run_train_head
    from pipelines.models.train import run_train

    results = [run_train(config, force=args.force)]
    bases = [BASE, CNN] if config.head_cnn_share > 0 else [BASE]
    missing = [name for name in bases if not config.embeddings_path(name).is_file()]
    if missing or (CNN in bases and not results[0].skipped):
        why = (
            f"{' and '.join(missing)} vectors are not embedded yet"
            if missing
            else "the custom CNN just changed, so its vectors are out of date"
        )
        print(
            f"{EXTRACTOR} (the metric head) learns from {' and '.join(bases)} vectors, and "
            f"{why}: run `{commands.embed()}` and then `{commands.TRAIN}` again "
            f"(`{commands.RUN}` does every stage in order)"
        )
        return results
    if config.train_views:
        from pipelines.embedding.embed_views import run_views

        results.append(run_views(config, force=args.force))
    return [*results, run_train_head(config, force=args.force)]


def _classify(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.models.classify import run_classify

    return run_classify(config, force=args.force)


def _maps(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.explore.maps import run_maps

    return run_maps(config, args.extractor, force=args.force)


def _clusters(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.explore.clusters import run_clusters

    return run_clusters(config, args.extractor, force=args.force)


def _ann(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.search.ann import run_ann

    return run_ann(config, args.extractor, force=args.force)


def _mosaic(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.explore.mosaic import run_mosaic

    return run_mosaic(config, args.extractor, force=args.force)


def _health(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.quality.health import run_health

    return run_health(config, args.extractor, force=args.force)


def _evaluate(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.quality.evaluate import format_report, run_evaluate

    result = run_evaluate(config, args.extractor, force=args.force)
    print(format_report(result.details))
    return result


def _run(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.run import run_all

    _check_engine(args)
    return run_all(
        config,
        args.extractor,
        force=args.force,
        engine=args.engine,
        address=args.address,
        retrain=args.retrain,
    )


def _status(config: Config, args: argparse.Namespace) -> Any:
    import json

    from pipelines import status

    found = status.report(config)
    print(json.dumps(found, indent=2) if args.json else "\n".join(status.report_lines(found)))
    return found


def _search(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.search_cli import run_search

    return run_search(config, args)


def _search_options(parser: argparse.ArgumentParser) -> None:
    from pipelines.search_cli import add_arguments

    add_arguments(parser)


def _bench(config: Config, args: argparse.Namespace) -> Any:
    if args.scale is not None:
        from pipelines.bench.scale import run_scale_bench

        return run_scale_bench(
            config, args.scale, scratch=args.scratch, browser=not args.no_browser
        )
    if args.api:
        from pipelines.serve.loadtest import run_loadtest

        return run_loadtest(
            config, quick=args.quick, workers=args.workers, overrides=args.overrides
        )
    from pipelines.bench import run_bench

    return run_bench(config, quick=args.quick, sections=args.section)


def _serve(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.serve import run_server

    return run_server(
        config, host=args.host, port=args.port, embed_mode=args.embed_mode, workers=args.workers
    )


def _neighbours(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.search.neighbours import run_neighbours

    return run_neighbours(config, args.extractor, k=args.k, fmt=args.out_format, force=args.force)


def _corrections(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.corrections_cli import run_corrections

    return run_corrections(config, args)


def _corrections_options(parser: argparse.ArgumentParser) -> None:
    from pipelines.corrections_cli import add_arguments

    add_arguments(parser)


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument(
        "--embed-mode",
        choices=("lock", "batch"),
        default="lock",
        help="concurrent uploads: one at a time per model (lock) or micro-batched (batch)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the port, each with its own models (default: 1)",
    )


def _neighbours_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=20, help="neighbours per item (default: 20)")
    parser.add_argument(
        "--format",
        dest="out_format",
        choices=("parquet", "csv"),
        default="parquet",
        help="table format (default: parquet)",
    )


def _section(parser: argparse.ArgumentParser) -> None:
    from pipelines.bench import OPT_IN_SECTIONS, SECTIONS

    parser.add_argument(
        "--section",
        action="append",
        choices=SECTIONS + OPT_IN_SECTIONS,
        default=None,
        metavar="NAME",
        help=f"run only this section, repeatable: {', '.join(SECTIONS)} (default: all of "
        f"these); {', '.join(OPT_IN_SECTIONS)} only when named",
    )


def _scale(parser: argparse.ArgumentParser) -> None:
    from pipelines.bench.scale import add_arguments

    add_arguments(parser)


def _api(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        action="store_true",
        help="load-test the HTTP API instead (pipelines/serve/loadtest.py; loopback only)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="with --api: server processes to load-test (default: 1)",
    )


def _engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="where embedding runs: this process (local, the default) or Ray Data (ray; "
        "settings ray_actors, ray_actor_cpus, ray_actor_gpus, ray_gpu_batch_size)",
    )
    parser.add_argument(
        "--address",
        default=None,
        metavar="HOST:PORT",
        help="with --engine ray: join the Ray cluster whose head is here "
        "(default: start Ray on this machine)",
    )


def _retrain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="retrain the models and refit maps and clusters on the catalog as it is now (an "
        "update keeps them until the catalog drifts; see `status`); --force rebuilds everything",
    )


def _status_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print it as JSON")


def _extractors(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--extractor",
        action="append",
        default=None,
        help=f"extractor to use, repeatable: {', '.join(EXTRACTORS)} (default: all)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="folder the stages write to "
        "(default: artifacts/ in the repo, or $LOOKALIKE_ARTIFACTS)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even when inputs and settings are unchanged"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a setting of pipelines/config.py, e.g. --set batch_size=16 (repeatable)",
    )


def _source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="a folder ROOT/[split/]label/*.jpg, a CSV with a 'path' column, or a DeepFashion "
        "root (default: the clothing-small catalog)",
    )
    parser.add_argument(
        "--format",
        dest="source_format",
        default=None,
        help=f"layout of --source: {', '.join(SOURCE_FORMATS)} (default: auto-detect)",
    )


def _quick(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repetitions: under 2 minutes (the full run takes ~20 on 2 cores)",
    )


Handler = Callable[[Config, argparse.Namespace], Any]
STAGES: dict[str, tuple[str, Handler, list[Callable[[argparse.ArgumentParser], None]]]] = {
    "catalog": (
        "read a folder, CSV or DeepFashion tree into artifacts/catalog.parquet with thumbnails",
        _catalog,
        [_source],
    ),
    "train": (
        "train the custom CNN on the catalog's labels (an autoencoder when it has none), "
        "then the metric head on the embedded InceptionV3 vectors",
        _train,
        [],
    ),
    "embed": (
        "embed every catalog image with the chosen extractors into artifacts/embeddings/",
        _embed,
        [_extractors, _engine],
    ),
    "classify": (
        "the category classifier, chosen on validation among classifiers of the embedded "
        "vectors, into artifacts/categories.parquet and models/category_model.npz",
        _classify,
        [],
    ),
    "maps": (
        "2-D UMAP map per extractor into artifacts/maps/, with its trustworthiness",
        _maps,
        [_extractors],
    ),
    "clusters": (
        "k-means clusters per extractor into artifacts/clusters/",
        _clusters,
        [_extractors],
    ),
    "ann": (
        "the saved approximate index per extractor, for catalogs of 100k items and more, into "
        "artifacts/ann/ (smaller catalogs are searched exactly; nothing is written)",
        _ann,
        [_extractors],
    ),
    "mosaic": (
        "the photo map: every thumbnail on a grid laid out by each map, into artifacts/mosaic/",
        _mosaic,
        [_extractors],
    ),
    "health": (
        "near-duplicates, likely-mislabelled items and outliers per extractor into "
        "artifacts/health/",
        _health,
        [_extractors],
    ),
    "evaluate": (
        "precision@k, mAP@10 and latency per extractor x strategy into artifacts/metrics.json",
        _evaluate,
        [_extractors],
    ),
    "run": (
        "every stage in order (catalog, colours, train, embed, the metric head, classify, "
        "maps, clusters, ann, mosaic, health, evaluate); each skips itself when nothing changed",
        _run,
        [_source, _extractors, _engine, _retrain],
    ),
    "status": (
        "what the artifacts folder holds, whether it is one build or mid-update, and how many "
        "items were added or removed since the models were trained (what `run` and "
        "`run --retrain` would do)",
        _status,
        [_status_options],
    ),
    "search": (
        "neighbours and predicted category of photos or folders of photos, as a table or "
        "JSON (the Upload page's search from the shell)",
        _search,
        [_extractors, _search_options],
    ),
    "bench": (
        "speed, memory and scale of every stage against the memory floor and peers, into "
        "artifacts/bench/results.json (prints a table)",
        _bench,
        [_quick, _api, _section, _scale],
    ),
    "serve": (
        "the similar-items HTTP API over the artifacts (FastAPI; OpenAPI docs at /docs)",
        _serve,
        [_serve_options],
    ),
    "neighbours": (
        "every catalog item's top-k neighbours into artifacts/neighbours/<extractor>.parquet",
        _neighbours,
        [_extractors, _neighbours_options],
    ),
    "corrections": (
        "list, add (--item ID --label NEW, --item ID --drop) and undo (--undo CID) the label "
        "corrections and drops of artifacts/corrections.parquet; `run` applies them",
        _corrections,
        [_corrections_options],
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines",
        description="Lookalike pipeline: catalog -> embeddings -> maps, clusters, metrics.",
    )
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (help_text, _handler, extras) in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        _common(stage)
        for extra in extras:
            extra(stage)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """A Config with the command line's overrides applied (and checked)."""
    changes: dict[str, Any] = parse_overrides(args.overrides)
    if args.artifacts is not None:
        changes["artifacts_dir"] = args.artifacts
    for name in ("source", "source_format"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    config = Config().replace(**changes)
    if args.artifacts is not None:
        from pipelines.artifacts import ensure_writable_dir

        ensure_writable_dir(config.artifacts_dir, "--artifacts")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; user errors print one line and exit 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        if getattr(args, "extractor", "absent") is None:
            args.extractor = list(EXTRACTORS)
        STAGES[args.stage][1](config, args)
    except LookalikeError as err:
        from pipelines.data.images import printable

        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        # A disk or permission problem in any stage: one line with the path, not a traceback.
        from pipelines.data.images import printable

        where = f"{err.filename}: " if err.filename else ""
        print(
            f"error: {printable(where + (err.strerror or str(err)))} — check the path, free "
            f"space and permissions, then run the command again",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished artifacts are kept, nothing half-written", file=sys.stderr)
        return 130
    return 0
