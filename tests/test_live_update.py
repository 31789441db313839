"""A running app and HTTP service pick up a catalog update without a restart, and never serve
a half-written one (issue 24): a copy of the small build, a photo added to a copy of its
source, then `run_all` (or only its first stages, as a run still writing leaves the folder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from fastapi.testclient import TestClient
from streamlit.testing.v1 import AppTest

from app.ui.warmup import WARM_KEY
from app.ui.widgets import UPDATING_CAPTION
from pipelines import artifacts, consistency, status
from pipelines.config import REPO_ROOT, Config
from pipelines.serve.app import create_app
from tests.conftest import copy_build, real_photos, remove_last_photos

APP = str(REPO_ROOT / "app" / "streamlit_app.py")
TIMEOUT = 240

pytestmark = pytest.mark.slow


def add_photo(config: Config) -> None:
    """A real dress photo of the train split that the small catalog does not hold."""
    photo = real_photos("dress", 4)[3]
    shutil.copy(photo, config.source / "train" / "dress" / photo.name)


def new_ids(config: Config, before: set[str]) -> list[str]:
    ids = pd.read_parquet(config.catalog_path)["item_id"].astype(str)
    return sorted(set(ids) - before)


def ids_of(config: Config) -> set[str]:
    return set(pd.read_parquet(config.catalog_path)["item_id"].astype(str))


def search_for(at: AppTest, item_id: str) -> AppTest:
    """Ask the Search page for `item_id` as the query (as the Item id box does)."""
    at.session_state["query_id_pending"] = item_id
    at.switch_page("app_pages/search.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def map_holds(at: AppTest, item_id: str) -> bool:
    """Whether the page's map (the plotly figure sent to the browser) has a point for it."""
    return any(item_id in json.dumps(json.loads(c.proto.spec)) for c in at.get("plotly_chart"))


def open_app(config: Config, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(config.artifacts_dir))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["extractor"] = "inception_v3"
    # No upload here: no models loading in the background while the test copies and ends.
    at.session_state[WARM_KEY] = False
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def captions(at: AppTest) -> list:
    return list(at.sidebar.caption)


def test_a_running_app_and_service_show_an_update_without_restart(
    built: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    from pipelines.run import run_all

    config = copy_build(built, tmp_path)
    before = ids_of(config)
    first = sorted(before)[0]
    at = open_app(config, monkeypatch)
    drift = [c for c in captions(at) if c.value.startswith("Since training")]
    assert [c.value for c in drift] == ["Since training: **0** added, **0** removed"]
    app = create_app(config, load_extractors=False, reload_interval=0)
    holder = app.state.holder
    with TestClient(app) as client:
        assert client.get("/health").json()["drift"]["added"] == 0

        add_photo(config)
        run_all(config)
        (new,) = new_ids(config, before)
        assert consistency.build_stamp(status.app_config(config)).consistent

        # The app's next rerun (same session, caches kept) shows the new item on Search, as
        # the query with its neighbours, and on the map.
        at = search_for(at, new)
        assert not at.error, [e.value for e in at.error]
        assert at.session_state["query_id"] == new
        (table,) = [d.value for d in at.dataframe if "item_id" in d.value.columns]
        assert len(table) == 10 and new not in set(table["item_id"])
        assert map_holds(at, new)
        assert "**37** items" in " ".join(c.value for c in captions(at))
        (line,) = [c for c in captions(at) if c.value.startswith("Since training")]
        assert line.value == "Since training: **1** added, **0** removed"
        assert "`python -m pipelines run --retrain` retrains now: about" in line.proto.help

        # The service swaps in the update at its next look at the manifests.
        assert client.get(f"/items/{new}/similar", params={"k": 3}).status_code == 404
        assert holder.refresh() is True
        body = client.get(f"/items/{new}/similar", params={"k": 36}).json()
        found = [r["item_id"] for r in body["results"]]
        assert len(found) == 36 and set(found) == before  # every other item, itself left out
        assert client.get(f"/items/{first}/similar", params={"k": 36}).status_code == 200
        health = client.get("/health").json()
        assert health["catalog_size"] == 37 and health["reloads"] == 1
        assert health["drift"]["added"] == 1 and health["drift"]["removed"] == 0
        assert health["drift"] == status.drift(status.app_config(config))

    # Before the update the app did not know the item: the same question is refused there.
    at = search_for(open_app(built, monkeypatch), new)
    assert any("is not in the catalog (36 items)" in e.value for e in at.error)
    assert not map_holds(at, new)


def write_half_an_update(config: Config, built: Config) -> str:
    """What the folder holds while `run` is still writing an update: a photo added and one
    removed, then the catalog (which deletes the removed item's thumbnail), colours, training
    set and InceptionV3's embeddings written; the custom CNN's embeddings (and everything after
    them) still those of the previous catalog. Returns the removed item's id."""
    from pipelines.data.catalog import run_catalog
    from pipelines.data.colour import run_colours
    from pipelines.embedding.embed import run_embed
    from pipelines.models.training_set import run_training_set

    add_photo(config)
    (removed,) = remove_last_photos(config, built, 1)
    run_catalog(config, progress=False)
    run_colours(config)
    run_training_set(config)
    run_embed(config, "inception_v3", progress=False)
    return removed


def write_every_embedding(config: Config) -> None:
    """The run a little further: every extractor's embeddings written, so row counts and item
    ids agree everywhere; categories, maps, clusters, health and metrics still the old ones."""
    from pipelines.embedding.embed import run_embed
    from pipelines.models.head import run_embed_head

    run_embed(config, "custom_cnn", progress=False)
    run_embed_head(config)


def test_a_half_written_update_is_never_served(
    built: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    from pipelines.run import run_all

    config = copy_build(built, tmp_path)
    before = ids_of(config)
    at = open_app(config, monkeypatch)
    at = search_for(at, sorted(before)[0])  # Search's catalog, index and map are cached
    app = create_app(config, load_extractors=False, reload_interval=0)
    holder = app.state.holder
    with TestClient(app) as client:
        cnn = config.embeddings_path("custom_cnn")
        cnn_before = artifacts.read_manifest(cnn)["sha256"]
        removed = write_half_an_update(config, built)
        (new,) = new_ids(config, before)
        # One added, one removed: every file still has 36 rows, the custom CNN's the old ones.
        assert len(np.load(config.embeddings_path("inception_v3"))) == len(np.load(cnn)) == 36
        assert artifacts.read_manifest(cnn)["sha256"] == cnn_before
        assert removed not in ids_of(config) and not config.thumb_path(removed).exists()

        stamp = consistency.build_stamp(status.app_config(config))
        assert not stamp.consistent
        assert "was built from another catalog" in stamp.problem
        found = status.report(config)
        assert found["problem"] == stamp.problem
        assert any(line.startswith("Build: mid-update") for line in status.report_lines(found))

        # The service keeps answering from the previous build and says why it did not swap.
        assert holder.refresh() is False
        health = client.get("/health").json()
        assert health["reloads"] == 0 and "The catalog is being updated" in health["error"]
        assert client.get(f"/items/{new}/similar").status_code == 404
        assert client.get(f"/items/{removed}/similar").status_code == 200
        # A service started now has nothing consistent to serve.
        with TestClient(create_app(config, load_extractors=False, reload_interval=0)) as fresh:
            response = fresh.get("/health")
            assert response.status_code == 503 and "being updated" in response.json()["error"]

        # The running app keeps showing the previous build from its caches, and says so: the
        # removed item (its thumbnail already deleted) is still there, the new one not yet.
        at = search_for(at, removed)
        assert at.session_state["query_id"] == removed and not at.error
        assert any(c.value == UPDATING_CAPTION for c in captions(at))
        at = search_for(at, new)
        assert any("is not in the catalog (36 items)" in e.value for e in at.error)

        # Every embeddings file now matches the catalog (the search indexes would load), but
        # the clusters, categories and maps are still the old catalog's: still not served.
        write_every_embedding(config)
        assert "was built from another catalog" in consistency.build_stamp(config).problem
        assert holder.refresh() is False
        assert client.get(f"/items/{new}/similar").status_code == 404
        at = search_for(at, new)
        assert any("is not in the catalog (36 items)" in e.value for e in at.error)

        # A page whose files are not cached says the catalog is being updated (no mix, no
        # traceback): the cached tables are gone, and the files on disk are another build's.
        st.cache_data.clear()
        st.cache_resource.clear()
        at = search_for(at, new)
        assert [i.value for i in at.info if i.value.startswith("The catalog is being updated")]
        assert not at.error and not at.get("plotly_chart")

        # A folder this app never saw consistent: only the note.
        other = tmp_path / "elsewhere"
        shutil.copytree(config.artifacts_dir, other)
        fresh = open_app(config.replace(artifacts_dir=other), monkeypatch)
        (note,) = fresh.info
        assert note.value.startswith("The catalog is being updated")
        assert "python -m pipelines run" in note.value
        assert not fresh.get("plotly_chart") and not fresh.error

        # The run finishes: the same session and the same service show the new build.
        run_all(config)
        monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(config.artifacts_dir))
        at = search_for(at, new)
        assert not at.error and at.session_state["query_id"] == new and map_holds(at, new)
        assert not any(c.value == UPDATING_CAPTION for c in captions(at))
        at = search_for(at, removed)
        assert any("is not in the catalog (36 items)" in e.value for e in at.error)
        assert holder.refresh() is True
        assert client.get(f"/items/{new}/similar", params={"k": 3}).status_code == 200
        assert client.get(f"/items/{removed}/similar").status_code == 404
        assert client.get("/health").json()["error"] is None
