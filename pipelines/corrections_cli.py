"""`python -m pipelines corrections`: list, add and undo the label corrections and drops of the
catalog from the shell. Reads and writes artifacts/corrections.parquet through
`pipelines.data.corrections`, the engine the Health page, the HTTP service and the Python API
call; prints a line per correction or JSON. Wired in `pipelines.cli`, which imports this module.

    python -m pipelines corrections                                # --list: every correction
    python -m pipelines corrections --item 0a1b2c3d4e5f6a7b --label dress --note "a dress"
    python -m pipelines corrections --item 0a1b2c3d4e5f6a7b --drop --who ann
    python -m pipelines corrections --undo c3
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipelines import commands
from pipelines.config import Config
from pipelines.data import corrections
from pipelines.errors import LookalikeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The corrections subcommand's own options."""
    parser.add_argument(
        "--list",
        action="store_true",
        help="list every correction with its state (the default when nothing else is asked)",
    )
    parser.add_argument("--item", default=None, metavar="ID", help="the catalog item to correct")
    parser.add_argument(
        "--label", default=None, metavar="NEW", help="with --item: relabel the item to NEW"
    )
    parser.add_argument(
        "--drop", action="store_true", help="with --item: drop the item (a duplicate, unwanted)"
    )
    parser.add_argument("--undo", default=None, metavar="CID", help="undo correction CID (c3)")
    parser.add_argument(
        "--who", default=None, help="who makes the change (default: your operating-system user)"
    )
    parser.add_argument("--note", default="", help="why (kept with the correction)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")


def run_corrections(config: Config, args: argparse.Namespace) -> Any:
    """Add, undo or list corrections as the options say; prints the result. Returns the new or
    undone correction (a dict), or the list (a DataFrame)."""
    _check_options(args)
    if args.undo is not None:
        done = corrections.undo_correction(config, args.undo, who=args.who)
        _print_one(done, "undone", args.json)
        return done
    if args.item is not None:
        action = "drop" if args.drop else "relabel"
        made = corrections.add_correction(
            config, args.item, action, label=args.label, who=args.who, note=args.note
        )
        _print_one(made, "recorded", args.json)
        return made
    table = corrections.list_corrections(config)
    if args.json:
        print(json.dumps([_with_state(row) for _, row in table.iterrows()], indent=2))
    elif table.empty:
        print(f"no corrections in {config.corrections_path}")
    else:
        for _, row in table.iterrows():
            print(f"{corrections.describe(corrections.record(row))} — {row['state']}")
    return table


def _check_options(args: argparse.Namespace) -> None:
    """One request per command: --undo, or --item with exactly one of --label and --drop."""
    if args.undo is not None and (args.item is not None or args.label or args.drop):
        raise LookalikeError("--undo takes no --item, --label or --drop — run them separately")
    if args.list and (args.undo is not None or args.item is not None):
        raise LookalikeError("--list only lists — leave out --item and --undo, or --list")
    if args.item is None and (args.label is not None or args.drop):
        raise LookalikeError(
            f"--label and --drop need --item ID, the item to correct (e.g. "
            f"`{commands.CORRECTIONS} --item ID --label dress`)"
        )
    if args.item is not None and (args.label is not None) == args.drop:
        raise LookalikeError(
            f"--item {args.item} needs exactly one of --label NEW (relabel) or --drop"
        )


def _with_state(row: Any) -> dict[str, Any]:
    return {**corrections.record(row), "state": row["state"]}


def _print_one(correction: dict[str, Any], done: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(correction, indent=2))
        return
    print(f"{done}: {corrections.describe(correction)}")
    print(f"it applies at the next `{commands.RUN}`")
