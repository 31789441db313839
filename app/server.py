"""The app's server: `python -m streamlit run app/server.py` serves the pages of
app/streamlit_app.py and, as the server starts, begins building the upload models in the
background, so they are ready (or nearly) when the first page opens rather than only starting
then: TensorFlow's import and InceptionV3 take ~7 s on 2 cores, most of a first upload that
opened the app cold.

It also serves the tiles of a large catalog's photo map (`app/routes.py`).

`streamlit run app/streamlit_app.py` still works (the models then start with the first page,
and a tiled photo map has no tiles to show: use app/server.py).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import streamlit as st

# Streamlit puts this file's folder (app/) on sys.path; `app.ui` and `pipelines` are imported
# from the repository root.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@contextlib.asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    """Start the upload models' background build as the server starts (a thread: the server
    answers meanwhile), and the read of what the pages' first renders share
    (`warmup.warm_pages`); a build that cannot start (no models yet) is left to the pages."""
    from app import routes
    from app.ui import loaders, warmup

    routes.serving()
    with contextlib.suppress(Exception):  # the pages say what is missing, with the fix
        warmup.start(loaders.config(), in_session=False)
    with contextlib.suppress(Exception):
        warmup.warm_pages(loaders.config())
    yield


def _routes() -> list[Any]:
    from app.routes import ROUTES

    return ROUTES


app = st.App("streamlit_app.py", lifespan=lifespan, routes=_routes())
