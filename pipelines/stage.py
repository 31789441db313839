"""The one result every stage returns: what it wrote, how many rows, how long, skipped or not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StageResult:
    """What one stage run did; `run` prints it and tests read it.

    Attributes
    ----------
    stage : the CLI name of the stage ("catalog", "train", "embed", "maps", ...).
    wrote : the artifacts written (empty when skipped).
    rows : catalog rows covered (None when not meaningful).
    seconds : wall time of the call.
    skipped : True when everything was up to date and nothing was written.
    note : one short line for the run table (e.g. "val accuracy 0.806").
    details : stage-specific numbers (per extractor, throughput, metrics, ...).
    """

    stage: str
    wrote: tuple[Path, ...] = ()
    rows: int | None = None
    seconds: float = 0.0
    skipped: bool = False
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the run table: 'up to date' or what was written, plus the note."""
        if self.skipped:
            state = "up to date"
        else:
            names = ", ".join(p.name for p in self.wrote[:3])
            more = f" (+{len(self.wrote) - 3})" if len(self.wrote) > 3 else ""
            state = f"wrote {names}{more}" if self.wrote else "done"
        rows = f", {self.rows:,} rows" if self.rows is not None else ""
        note = f", {self.note}" if self.note else ""
        return f"{state}{rows}{note}"


def per_extractor(
    stage: str,
    parts: dict[str, dict[str, Any]],
    rows: int,
    seconds: float,
    wrote: Sequence[Path],
    note: str,
) -> StageResult:
    """One result for a stage that runs per extractor (maps, clusters, mosaic, health):
    skipped only when it had extractors and every one of them was up to date.

    `parts` maps each extractor to its row of the result's details (with "skipped").
    """
    return StageResult(
        stage,
        wrote=tuple(wrote),
        rows=rows,
        seconds=seconds,
        skipped=bool(parts) and all(part["skipped"] for part in parts.values()),
        note=note,
        details=parts,
    )


def note_of(parts: dict[str, dict[str, Any]], key: str) -> str:
    """ "name key 0.948, ..." for the extractors whose row has a number under `key`."""
    return ", ".join(
        f"{name} {key} {part[key]:.3f}" for name, part in parts.items() if part.get(key) is not None
    )


def written(parts: dict[str, dict[str, Any]], keys: Sequence[str]) -> list[Path]:
    """The paths under `keys` of every part that was not skipped."""
    return [Path(part[k]) for part in parts.values() if not part["skipped"] for k in keys]
