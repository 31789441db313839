"""`python -m pipelines search PHOTO...`: neighbours and predicted categories of photos (or folders
of photos) from the shell, as a table or JSON. Reads the built artifacts; prints, writes nothing.

The photos go through `pipelines.api.Lookalike.search_files`, that is the engine's one photo
search (`pipelines.search.photos.search_photos`) the Upload page and the HTTP service call too,
so every door answers alike and names bad files alike. `python -m pipelines search` is wired in
`pipelines.cli`, which imports this module (never the other way round).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO

from pipelines.config import STRATEGIES, Config
from pipelines.data.images import ACCEPTED_TEXT
from pipelines.errors import LookalikeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The search subcommand's own options (`--extractor` comes from the CLI's shared one)."""
    parser.add_argument(
        "photos", nargs="+", type=Path, metavar="PHOTO", help="photo files or folders of photos"
    )
    parser.add_argument("--k", type=int, default=10, help="neighbours per photo (default 10)")
    parser.add_argument(
        "--strategy",
        default="exact",
        help=f"search strategy: {', '.join(STRATEGIES)} (default exact)",
    )
    parser.add_argument(
        "--diversity",
        type=float,
        default=0.0,
        help="0 (default) = plain nearest neighbours; up to 1 spreads out near-duplicates "
        "(maximal marginal relevance)",
    )
    parser.add_argument(
        "--rerank",
        action="store_true",
        help="re-rank the nearest candidates by query expansion "
        "(pipelines.search.rerank; off by default)",
    )
    parser.add_argument(
        "--colour", default=None, help="only neighbours of this dominant colour (default: any)"
    )
    parser.add_argument(
        "--label", default=None, help="only neighbours with this catalog label (default: any)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )


def run_search(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """Search every photo; print the report (table or JSON) on stdout and each unusable file
    on stderr. Returns the report; raises LookalikeError (exit 2) when no photo could be
    searched at all."""
    from pipelines.api import Lookalike
    from pipelines.search.photos import category_summary

    look = Lookalike.open(config.artifacts_dir)
    rerank = bool(getattr(args, "rerank", False))
    colour, label = getattr(args, "colour", None), getattr(args, "label", None)
    results = look.search_files(
        args.photos, args.k, args.extractor, args.strategy, args.diversity, rerank=rerank,
        colour=colour, label=label,
    )  # fmt: skip
    good = [r for r in results if r.error is None]
    report = {
        "k": args.k,
        "strategy": args.strategy,
        "diversity": args.diversity,
        "rerank": rerank,
        "colour": colour,
        "label": label,
        "extractors": list(args.extractor),
        "photos": [_photo(r) for r in results],
        "most_common_categories": category_summary(good, top=3).to_dict("records"),
        "errors": [r.error for r in results if r.error is not None],
    }
    for error in report["errors"]:
        print(f"skipped {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report, sys.stdout)
    if not good:
        raise LookalikeError(
            f"none of the {len(results)} file(s) could be searched (see the reasons above) — "
            f"pass {ACCEPTED_TEXT} photos"
        )
    return report


def _photo(result: Any) -> dict[str, Any]:
    neighbours = {
        name: [
            {
                "rank": int(row.rank),
                "item_id": str(row.item_id),
                "similarity": round(float(row.similarity), 6),
                "label": None if _missing(row.label) else str(row.label),
                "thumb": str(row.thumb),
            }
            for row in table.itertuples(index=False)
        ]
        for name, table in result.neighbours.items()
    }
    return {
        "photo": result.name,
        "category": result.category,
        "confidence": None if result.confidence is None else round(result.confidence, 4),
        "category_model": result.category_model,
        "probabilities": {c: round(p, 4) for c, p in result.probabilities.items()},
        "searched_categories": result.searched_categories,
        "neighbours": neighbours,
        "strategies": dict(result.strategies),
        "notes": list(result.notes),
        "warnings": list(result.warnings),
        "error": result.error,
    }


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def print_tables(report: dict[str, Any], out: TextIO) -> None:
    """The report as plain text: per photo its category and one neighbour table per
    extractor, then the set's most common categories."""
    for photo in report["photos"]:
        if photo["error"]:
            continue
        head = photo["photo"]
        if photo["category"] is not None:
            head += f"  ·  predicted: {photo['category']} ({photo['confidence']:.0%})"
        print(head, file=out)
        for warning in photo.get("warnings", []):
            print(f"  warning: {warning}", file=out)
        for note in photo["notes"]:
            print(f"  note: {note}", file=out)
        for extractor, rows in photo["neighbours"].items():
            print(f"  {extractor}", file=out)
            print(f"  {'rank':>4}  {'item_id':<18} {'similarity':>10}  label", file=out)
            for row in rows:
                print(
                    f"  {row['rank']:>4}  {row['item_id']:<18} {row['similarity']:>10.3f}  "
                    f"{row['label'] or '-'}",
                    file=out,
                )
        print(file=out)
    searched = sum(1 for p in report["photos"] if not p["error"])
    print(f"searched {searched} of {len(report['photos'])} file(s)", file=out)
    common = report["most_common_categories"]
    if common:
        text = ", ".join(f"{c['category']} ({c['count']})" for c in common)
        print(f"most common categories: {text}", file=out)
