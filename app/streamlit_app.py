"""The app's router: page config, shared session defaults, the pages via st.navigation, the
upload models' background build, and the "being updated" note while `run` writes an update.

Start it from the repository root: `python -m streamlit run app/server.py` (which serves this
router and starts the upload models with the server); `streamlit run app/streamlit_app.py`
works too, the models then starting with the first page.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# Streamlit puts this file's folder (app/) on sys.path; the pages import `app.ui` and
# `pipelines` from the repository root, so that goes first whichever way the app is started.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from app.ui import loaders, warmup  # noqa: E402
from app.ui.widgets import GOTO_SEARCH, init_session  # noqa: E402
from pipelines.consistency import UpdateInProgress  # noqa: E402

st.set_page_config(page_title="Lookalike", page_icon="👗", layout="wide")
init_session()
cfg = loaders.config()  # also pins the build this run shows
# The first upload's models load while the user is still browsing or choosing a file.
warmup.start(cfg)
warmup.warm_pages(cfg)  # once per process and build: a no-op after the first session

SEARCH = st.Page("app_pages/search.py", title="Search", icon="🔎")
PAGES = [
    st.Page("app_pages/map.py", title="Map", icon="🗺️", default=True),
    st.Page("app_pages/photo_map.py", title="Photo map", icon="🖼️"),
    SEARCH,
    st.Page("app_pages/compare.py", title="Compare", icon="⚖️"),
    st.Page("app_pages/clusters.py", title="Clusters", icon="🧩"),
    st.Page("app_pages/health.py", title="Catalog health", icon="🩺"),
    st.Page("app_pages/upload.py", title="Upload", icon="📤"),
]
page = st.navigation(PAGES)
# "Find lookalikes" under any thumbnail sets the query and asks for the Search page.
if st.session_state.pop(GOTO_SEARCH, False) and page.url_path != SEARCH.url_path:
    st.switch_page(SEARCH)
shown, _now = loaders.build(cfg)
if not shown.consistent:  # mid-update, and no earlier build of it seen by this process
    st.info(shown.note())
    st.stop()
try:
    page.run()
except UpdateInProgress as err:  # the shown build's files were replaced while read
    st.info(str(err))
