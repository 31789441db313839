"""One photo search, four doors: the same 20 real photos through the Upload page (AppTest), the
Python API (`Lookalike`), POST /search (TestClient) and `python -m pipelines search --json`, with
every strategy and a colour filter, get the same neighbours, predicted categories, notes and
warnings at every door (issue 23: the page and the API once disagreed on 43 of 100 photos).

The photos are validation photos of the small real catalog's classes that the catalog does not
hold, so categories, category covers and far-from-catalog warnings are the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from streamlit.testing.v1 import AppTest

from app.ui.names import EXTRACTOR_NAMES
from pipelines.api import Lookalike
from pipelines.cli import main as cli_main
from pipelines.config import REPO_ROOT, STRATEGIES, Config
from pipelines.serve.app import MAX_PHOTOS, create_app
from tests.conftest import SMALL_LABELS, real_photos

pytestmark = pytest.mark.slow

APP = str(REPO_ROOT / "app" / "streamlit_app.py")
TIMEOUT = 300
K = 5
# The built catalog holds the first 3 photos of each split; these 5 per class it has not seen.
PHOTOS = [p for label in SMALL_LABELS for p in real_photos(label, 8, "validation")[3:8]]
# Captions the page writes itself in a photo's section, not the search's notes.
PAGE_CAPTIONS = ("Category by the ", "Nothing to show.", "Showing ")
EXTRACTOR_OF = {label: name for name, label in EXTRACTOR_NAMES.items()}


def cases(built: Config) -> list[tuple[str, str | None]]:
    """(strategy, colour): every strategy, and the category strategy with the catalog's most
    common colour as a filter."""
    colours = pd.read_parquet(built.colours_path)["colour"]
    return [*((s, None) for s in STRATEGIES), ("category", str(colours.value_counts().index[0]))]


def answer(name: str, category, neighbours: dict, notes, warnings) -> dict:
    """One photo's answer at one door, in one shape."""
    return {
        "name": name,
        "category": category,
        "ids": {n: [str(i) for i in ids] for n, ids in neighbours.items()},
        "notes": list(notes),
        "warnings": list(warnings),
    }


def through_api(look: Lookalike, extractors: list[str], strategy: str, colour) -> list:
    """`Lookalike.search_bytes` on the photos: the engine's results themselves."""
    data = [(p.name, p.read_bytes()) for p in PHOTOS]
    return look.search_bytes(data, K, extractors, strategy, colour=colour)


def as_answer(result) -> dict:
    ids = {n: t["item_id"].tolist() for n, t in result.neighbours.items()}
    return answer(result.name, result.category, ids, result.notes, result.warnings)


def through_http(client: TestClient, extractors: list[str], strategy: str, colour) -> list[dict]:
    out = []
    params = {"k": K, "strategy": strategy, "extractor": extractors}
    if colour is not None:
        params["colour"] = colour
    for start in range(0, len(PHOTOS), MAX_PHOTOS):
        batch = PHOTOS[start : start + MAX_PHOTOS]
        files = [("photo", (p.name, p.read_bytes(), "image/jpeg")) for p in batch]
        response = client.post("/search", params=params, files=files)
        assert response.status_code == 200, response.text
        for photo in response.json()["photos"]:
            ids = {s["extractor"]: [r["item_id"] for r in s["results"]] for s in photo["searches"]}
            out.append(
                answer(photo["name"], photo["category"], ids, photo["notes"], photo["warnings"])
            )
    return out


def through_cli(built: Config, extractors: list[str], strategy: str, colour, capsys) -> list[dict]:
    argv = ["search", *map(str, PHOTOS), "--artifacts", str(built.artifacts_dir), "--json"]
    argv += ["--k", str(K), "--strategy", strategy]
    argv += [arg for name in extractors for arg in ("--extractor", name)]
    argv += [] if colour is None else ["--colour", colour]
    assert cli_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    out = []
    for photo in report["photos"]:
        ids = {n: [r["item_id"] for r in rows] for n, rows in photo["neighbours"].items()}
        # The shell names a photo by the path it was given; the other doors by its file name.
        path, name = photo["photo"], Path(photo["photo"]).name
        warnings = [w.replace(path, name) for w in photo["warnings"]]
        out.append(answer(name, photo["category"], ids, photo["notes"], warnings))
    return out


def through_page(at: AppTest, extractors: list[str], strategy: str, colour) -> list[dict]:
    at.selectbox(key="sidebar_strategy").set_value(strategy)
    at.selectbox(key="upload_colour").set_value(colour or "any colour")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    out = []
    for photo in PHOTOS:
        (section,) = [e for e in at.expander if e.label.split(" · ")[0] == photo.name]
        # One tab per extractor, named by its label: the page opens on the sidebar's extractor,
        # so the tabs' order is not the build's.
        ids = {}
        for tab in section.tabs:
            (table,) = [d.value for d in tab.dataframe if "item_id" in d.value.columns]
            ids[EXTRACTOR_OF[tab.label]] = table["item_id"].tolist()
        assert sorted(ids) == sorted(extractors)
        (category,) = [m.value for m in section.metric if m.label == "Predicted category"]
        notes = [c.value for c in section.caption if not c.value.startswith(PAGE_CAPTIONS)]
        out.append(answer(photo.name, category, ids, notes, [w.value for w in section.warning]))
    return out


def in_pool(built: Config, ids: list[str], searched: set[str]) -> bool:
    """Whether every item is in the category strategy's pool of `searched` categories: its
    predicted category is one, or it is unsure between one of them (categories.parquet)."""
    table = pd.read_parquet(built.categories_path).set_index("item_id")
    if "*" in searched:
        return True
    for item in ids:
        covers = {table.loc[item, "predicted"], *str(table.loc[item, "search"]).split("|")}
        if not (covers & searched or "*" in covers):
            return False
    return True


def test_every_door_gives_the_same_answer(
    built: Config,
    monkeypatch: pytest.MonkeyPatch,
    clear_caches: None,
    capsys: pytest.CaptureFixture,
) -> None:
    extractors = built.extractors_built()
    colour_of = pd.read_parquet(built.colours_path).set_index("item_id")["colour"]
    look = Lookalike.open(built.artifacts_dir)
    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(built.artifacts_dir))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("app_pages/upload.py").run()
    at.slider(key="sidebar_k").set_value(K)
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in PHOTOS]
    at.file_uploader(key="uploads").set_value(files).run()
    assert not at.exception, [e.message for e in at.exception]
    with TestClient(create_app(built, reload_interval=0)) as client:
        for strategy, colour in cases(built):
            results = through_api(look, extractors, strategy, colour)
            api = [as_answer(r) for r in results]
            doors = {
                "page": through_page(at, extractors, strategy, colour),
                "http": through_http(client, extractors, strategy, colour),
                "cli": through_cli(built, extractors, strategy, colour, capsys),
            }
            for door, got in doors.items():
                assert got == api, (door, strategy, colour)
            # And the answer is the search that was asked for.
            for photo, result in zip(PHOTOS, results, strict=True):
                assert result.error is None and result.category in SMALL_LABELS, photo
                assert result.category_model == "logistic regression on inception_v3"
                assert set(result.strategies.values()) == {strategy}
                for name, table in result.neighbours.items():
                    ids = table["item_id"].tolist()
                    if colour is None:
                        assert len(ids) == K, (photo, name)
                    else:
                        assert set(colour_of.loc[ids]) <= {colour}, (photo, name)
                        assert len(ids) == K or any(
                            n.startswith(f"{name}: only ") for n in result.notes
                        )
                    if strategy == "category":
                        assert in_pool(built, ids, set(result.searched_categories)), (photo, name)
                if strategy == "category":
                    assert any(
                        n.startswith("The category strategy searches: ") for n in result.notes
                    )
