"""The command line: `python -m pipelines <stage> [options]`, one subcommand per stage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.config import SOURCE_FORMATS, Config
from pipelines.errors import LookalikeError


def _catalog(config: Config, args: argparse.Namespace) -> Any:
    from pipelines.catalog import run_catalog

    return run_catalog(config, force=args.force)


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
        default="auto",
        help=f"layout of --source: {', '.join(SOURCE_FORMATS)} (default: auto-detect)",
    )


Handler = Callable[[Config, argparse.Namespace], Any]
STAGES: dict[str, tuple[str, Handler, list[Callable[[argparse.ArgumentParser], None]]]] = {
    "catalog": (
        "read a folder, CSV or DeepFashion tree into artifacts/catalog.parquet with thumbnails",
        _catalog,
        [_source],
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
    changes: dict[str, Any] = {}
    if args.artifacts is not None:
        changes["artifacts_dir"] = args.artifacts
    for name in ("source", "source_format"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    return Config().replace(**changes)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; user errors print one line and exit 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        STAGES[args.stage][1](config, args)
    except LookalikeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished artifacts are kept, nothing half-written", file=sys.stderr)
        return 130
    return 0
