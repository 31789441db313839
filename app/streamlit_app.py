"""The app's router: page config, shared session defaults, and the five pages via st.navigation.

Start it from the repository root: `python -m streamlit run app/streamlit_app.py`.
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

from app.ui.widgets import init_session  # noqa: E402

st.set_page_config(page_title="Lookalike", page_icon="👗", layout="wide")
init_session()

PAGES = [
    st.Page("app_pages/map.py", title="Map", icon="🗺️", default=True),
    st.Page("app_pages/search.py", title="Search", icon="🔎"),
    st.Page("app_pages/compare.py", title="Compare", icon="⚖️"),
    st.Page("app_pages/clusters.py", title="Clusters", icon="🧩"),
    st.Page("app_pages/upload.py", title="Upload", icon="📤"),
]
st.navigation(PAGES).run()
