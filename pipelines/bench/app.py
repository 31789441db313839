"""App benchmark: AppTest render and re-render times of every page, and the Upload page's
server-side round trip, measured by the app's own harness (`app/timing.py`) in a child
process, so the engine never imports the app. Reads the artifacts through the app; writes
nothing."""

from __future__ import annotations

from typing import Any

from pipelines.bench.common import run_child
from pipelines.config import REPO_ROOT, Config

APP = REPO_ROOT / "app" / "streamlit_app.py"


def bench_app(config: Config, quick: bool, shared: dict[str, Any]) -> dict[str, Any]:
    """AppTest render times of the Streamlit app (in a child); its peak RSS goes to
    shared["app"] for the memory section."""
    if not APP.exists():
        return {"skipped": f"{APP.relative_to(REPO_ROOT)} does not exist yet"}
    if not config.catalog_path.exists():
        return {"skipped": f"no catalog at {config.catalog_path} for the app to show"}
    pages = sorted(
        f"app_pages/{p.name}"
        for p in (APP.parent / "app_pages").glob("*.py")
        if not p.name.startswith("_")
    )
    if quick:
        pages = pages[:1]
    params = {"artifacts_dir": str(config.artifacts_dir), "pages": pages}
    result = run_child("app", params, 900)
    shared["app"] = {k: v for k, v in result.items() if k in ("peak_rss_mb", "error")}
    if "error" in result:
        return {"error": f"the app did not render under AppTest: {result['error']}"}
    summary = {k: v for k, v in result.items() if k != "pages"}
    return {"rows": result["pages"], **summary}
