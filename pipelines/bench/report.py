"""The machine a benchmark ran on, and the plain-text table of its results. Reads /proc."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.bench.common import jsonable

_LIBRARIES = (
    "numpy",
    "scipy",
    "scikit-learn",
    "umap-learn",
    "tensorflow-cpu",
    "keras",
    "faiss-cpu",
    "hnswlib",
    "streamlit",
)


def loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, Python and library versions, and the BLAS numpy uses."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "loadavg_start": loadavg(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
    versions = {}
    for name in _LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    info["versions"] = versions
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for p in threadpool_info()
        ]
    return info


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of every section's rows (the numbers of results.json)."""
    machine = results["machine"]
    lines = [
        f"machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"{machine.get('ram_gib')} GiB, "
        f"python {machine.get('python')}, load {machine.get('loadavg_start')} -> "
        f"{machine.get('loadavg_end')}; quick={results['quick']}"
    ]
    for name, section in results["sections"].items():
        lines += ["", f"== {name} ({section.get('seconds', '?')} s)"]
        if "skipped" in section:
            lines.append(f"   skipped: {section['skipped']}")
            continue
        if "error" in section:
            lines.append(f"   error: {section['error']}")
            continue
        for key in ("bytes_per_item", "pixel_cache"):
            if isinstance(section.get(key), dict):
                lines.append(f"   {key}: {json.dumps(jsonable(section[key]))}")
        lines += rows_table(section.get("rows", []))
        for key in ("ann_min_items", "target_met", "targets_met"):
            if key in section:
                lines.append(f"   {key}: {json.dumps(jsonable(section[key]))}")
    return "\n".join(lines)


def rows_table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as aligned text; rows with more than 12 columns are transposed (one per line)."""
    if not rows:
        return ["   (no rows)"]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and not isinstance(row[c], dict | list)]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    if len(columns) > 12:
        width = max(len(c) for c in columns)
        cols = [max(len(r[i]) for i in range(len(columns))) for r in cells]
        return [
            "   "
            + c.ljust(width)
            + "  "
            + "  ".join(r[i].rjust(w) for r, w in zip(cells, cols, strict=True))
            for i, c in enumerate(columns)
        ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    out = ["   " + "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    out += ["   " + "  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
