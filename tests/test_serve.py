"""The HTTP API over the small real pipeline build: every endpoint, every error code, the API
key, reload after a rebuild, and the real server started as a subprocess."""

from __future__ import annotations

import inspect
import io
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipelines import artifacts
from pipelines.config import EXTRACTORS, STRATEGIES, Config
from pipelines.readers import load_index, read_catalog
from pipelines.serve.app import MAX_PHOTOS, create_app
from tests.conftest import copy_build, real_photos, remove_last_photos
from tests.strategy_pools import narrow_query

KEY = "test-key-1234"


def _one_line(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str) and "\n" not in body["detail"]
    return body["detail"]


@pytest.fixture(scope="module")
def client(built: Config) -> TestClient:
    """The API with both models loaded, over the session's small build (read only)."""
    with TestClient(create_app(built, reload_interval=0)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def ids(built: Config) -> list[str]:
    catalog, _ = read_catalog(built)
    return catalog["item_id"].tolist()


@pytest.fixture(scope="module")
def hat_photo() -> bytes:
    """A real hat photo from the test split (it is also in the catalog: its own nearest item)."""
    return real_photos("hat", 1, "test")[0].read_bytes()


# --------------------------------------------------------------------------- read endpoints


def test_health_reports_the_build(client: TestClient, built: Config, ids: list[str]) -> None:
    body = client.get("/health").json()
    assert body["ok"] and body["artifacts_present"]
    assert body["catalog_size"] == len(ids) == 36
    assert body["built"] == artifacts.read_manifest(built.catalog_path)["created"]
    served = [e["name"] for e in client.get("/extractors").json()]
    assert {"inception_v3", "custom_cnn"} <= set(served)
    assert body["extractors_loaded"] == sorted(served)


def test_extractors_and_strategies(client: TestClient) -> None:
    extractors = {e["name"]: e for e in client.get("/extractors").json()}
    assert {"inception_v3", "custom_cnn"} <= set(extractors) <= set(EXTRACTORS)
    assert extractors["inception_v3"]["dim"] == 2048
    assert extractors["custom_cnn"]["model_loaded"]
    assert set(extractors["inception_v3"]["strategies"]) == set(STRATEGIES)
    assert [s["name"] for s in client.get("/strategies").json()] == list(STRATEGIES)


def test_item_is_its_catalog_row_without_server_paths(
    client: TestClient, built: Config, ids: list[str]
) -> None:
    catalog, _ = read_catalog(built)
    row = catalog.iloc[5]
    body = client.get(f"/items/{row['item_id']}").json()
    assert body["item_id"] == row["item_id"]
    assert body["label"] == row["label"]
    assert body["width"] == int(row["width"])
    assert body["thumbnail_url"] == f"/thumbs/{row['item_id']}"
    assert "path" not in body and "thumb" not in body


def test_similar_matches_the_index_and_excludes_the_item(
    client: TestClient, built: Config, ids: list[str]
) -> None:
    item = ids[3]
    response = client.get(f"/items/{item}/similar", params={"k": 5, "extractor": "custom_cnn"})
    assert response.status_code == 200
    body = response.json()
    assert (body["query"], body["extractor"], body["strategy"], body["k"]) == (
        item,
        "custom_cnn",
        "exact",
        5,
    )
    # An independent brute-force answer from the raw embeddings.
    index = load_index(built, "custom_cnn")
    sims = index.vectors @ index.vectors[3]
    sims[3] = -np.inf
    expected = [ids[i] for i in np.argsort(-sims, kind="stable")[:5]]
    assert [r["item_id"] for r in body["results"]] == expected
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    assert body["results"][0]["similarity"] == pytest.approx(float(np.sort(sims)[-1]), abs=1e-5)
    assert all(r["thumbnail_url"] == f"/thumbs/{r['item_id']}" for r in body["results"])


def test_similar_label_filter_returns_only_that_label(client: TestClient, ids: list[str]) -> None:
    body = client.get(f"/items/{ids[0]}/similar", params={"k": 5, "label": "shoes"}).json()
    labels = [r["label"] for r in body["results"]]
    assert labels == ["shoes"] * 5
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]


def test_similar_diversity_is_passed_to_the_engine(
    client: TestClient, built: Config, ids: list[str]
) -> None:
    from pipelines.search.similar import item_neighbours

    def similar(**params) -> list[str]:
        response = client.get(f"/items/{ids[2]}/similar", params={"k": 6, **params})
        assert response.status_code == 200, response.text
        return [r["item_id"] for r in response.json()["results"]]

    assert similar(diversity=0) == similar()
    catalog, _ = read_catalog(built)
    expected = item_neighbours(load_index(built, "inception_v3"), catalog, ids[2], 6, diversity=1)
    assert similar(diversity=1) == expected["item_id"].tolist()
    response = client.get(f"/items/{ids[2]}/similar", params={"diversity": 2})
    assert response.status_code == 422
    assert "diversity must be between 0" in _one_line(response)


@pytest.mark.parametrize("strategy", ["cluster", "category"])
def test_similar_pool_strategies_are_used(
    client: TestClient, built: Config, ids: list[str], strategy
) -> None:
    # A query whose pool (nearest clusters / predicted categories, read from the artifact
    # files) leaves out part of the catalog; k reaches past the pool, so the answer is the
    # whole pool in order of similarity, and a search outside it would show.
    query, pool = narrow_query(built, "inception_v3", strategy)
    params = {"k": len(ids) - 1, "strategy": strategy, "extractor": "inception_v3"}
    body = client.get(f"/items/{query}/similar", params=params).json()
    assert body["strategy"] == strategy and body["note"] is None
    assert [r["item_id"] for r in body["results"]] == pool


def test_thumb_bytes_type_and_cache_headers(
    client: TestClient, built: Config, ids: list[str]
) -> None:
    response = client.get(f"/thumbs/{ids[0]}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content == built.thumb_path(ids[0]).read_bytes()
    assert "max-age" in response.headers["cache-control"]
    again = client.get(f"/thumbs/{ids[0]}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other = client.get(f"/thumbs/{ids[1]}")
    assert other.headers["etag"] != response.headers["etag"]


# --------------------------------------------------------------------------- search


def test_search_one_photo_both_extractors(client: TestClient, hat_photo: bytes) -> None:
    response = client.post(
        "/search", files=[("photo", ("hat.jpg", hat_photo, "image/jpeg"))], params={"k": 4}
    )
    assert response.status_code == 200, response.text
    (photo,) = response.json()["photos"]
    assert photo["name"] == "hat.jpg" and photo["error"] is None
    assert photo["category"] in {"dress", "hat", "pants", "shoes"}
    searches = {s["extractor"]: s for s in photo["searches"]}
    assert set(searches) == set(client.get("/health").json()["extractors_loaded"])
    for search in searches.values():
        assert search["query"] == "hat.jpg" and search["k"] == 4
        assert len(search["results"]) == 4
    # The photo is a catalog item: InceptionV3 finds it first, at similarity ~1.
    first = searches["inception_v3"]["results"][0]
    assert first["label"] == "hat" and first["similarity"] > 0.99


def test_search_diversity_is_passed_to_the_engine(client: TestClient, hat_photo: bytes) -> None:
    def search(**params) -> list[str]:
        files = [("photo", ("hat.jpg", hat_photo, "image/jpeg"))]
        response = client.post(
            "/search", files=files, params={"k": 6, "extractor": "inception_v3", **params}
        )
        assert response.status_code == 200, response.text
        return [r["item_id"] for r in response.json()["photos"][0]["searches"][0]["results"]]

    plain, spread = search(), search(diversity=1)
    assert search(diversity=0) == plain
    # The photo itself stays first; diversity reorders (or replaces) the rest.
    assert spread[0] == plain[0] and spread != plain
    files = [("photo", ("hat.jpg", hat_photo, "image/jpeg"))]
    response = client.post("/search", files=files, params={"diversity": -1})
    assert response.status_code == 422 and "diversity must be between 0" in _one_line(response)


def test_search_several_photos_and_the_set_summary(client: TestClient, hat_photo: bytes) -> None:
    dress = real_photos("dress", 1, "test")[0].read_bytes()
    png = io.BytesIO()
    Image.open(io.BytesIO(dress)).save(png, format="PNG")
    files = [
        ("photo", ("a.jpg", hat_photo, "image/jpeg")),
        ("photo", ("b.png", png.getvalue(), "image/png")),
        ("photo", ("c.jpg", b"not an image", "image/jpeg")),
    ]
    response = client.post("/search", files=files, params={"extractor": "custom_cnn", "k": 2})
    assert response.status_code == 200
    body = response.json()
    assert [p["name"] for p in body["photos"]] == ["a.jpg", "b.png", "c.jpg"]
    assert body["photos"][2]["error"].startswith("c.jpg: not a recognised image")
    assert body["photos"][2]["searches"] == []
    categories = [p["category"] for p in body["photos"][:2]]
    summary = pd.Series(categories).value_counts()
    assert {c["category"]: c["count"] for c in body["top_categories"]} == summary.to_dict()
    assert [s["extractor"] for s in body["photos"][0]["searches"]] == ["custom_cnn"]


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 422, "empty file"),
        (b"hello, I am text", 415, "not a recognised image"),
        ("truncated", 422, "a.jpg:"),
    ],
)
def test_search_bad_photo_names_the_problem(
    client: TestClient, hat_photo: bytes, data, status: int, words: str
) -> None:
    if data == "truncated":
        data = hat_photo[: len(hat_photo) // 3]
    response = client.post("/search", files=[("photo", ("a.jpg", data, "image/jpeg"))])
    assert response.status_code == status
    assert words in _one_line(response)


def test_search_decompression_bomb_is_refused(client: TestClient) -> None:
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, format="PNG")  # 81 Mpx, a few KB of zeros
    response = client.post("/search", files=[("photo", ("bomb.png", bomb.getvalue(), "x/y"))])
    assert response.status_code in (413, 415, 422)
    assert "bomb.png" in _one_line(response)


def test_too_large_is_refused_from_content_length(client: TestClient) -> None:
    limit = (MAX_PHOTOS * 20 + 1) * 2**20
    response = client.post(
        "/search",
        content=b"x",
        headers={"content-length": str(limit), "content-type": "multipart/form-data; b=x"},
    )
    assert response.status_code == 413
    assert "limit" in _one_line(response)


def test_too_large_photo_is_refused(client: TestClient) -> None:
    data = b"\xff\xd8\xff" + bytes(21 * 2**20)
    response = client.post("/search", files=[("photo", ("big.jpg", data, "image/jpeg"))])
    assert response.status_code == 413
    assert "upload limit" in _one_line(response)


def test_too_large_stream_without_length_is_cut_off(built: Config) -> None:
    """A body without Content-Length is read only until it passes the limit. Driven through
    ASGI directly: TestClient reads a streamed body whole before the app sees a byte."""
    import asyncio
    import json
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.serve.app import MULTIPART_SLACK

    app = create_app(built, load_extractors=False, reload_interval=0, max_upload_bytes=1000)
    limit = MAX_PHOTOS * 1000 + MULTIPART_SLACK  # ~74 KB
    sent: list[int] = []
    answer: list[dict] = []

    head = (
        b'--xyz\r\nContent-Disposition: form-data; name="photo"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )

    async def receive() -> dict:
        # One photo part whose bytes keep coming: 200 x 1 KB after the part's header.
        if len(sent) == 201:
            return {"type": "http.request", "body": b"\r\n--xyz--\r\n", "more_body": False}
        chunk = head if not sent else b"x" * 1024
        sent.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        answer.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/search",
        "raw_path": b"/search",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=xyz")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    # Its own thread: a test before it in the same process may have left an event loop running
    # on this one, where asyncio.run refuses to start.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    assert answer[0]["status"] == 413
    assert "limit" in json.loads(answer[1]["body"])["detail"]
    # Reading stopped at the first chunk past the limit, not at the end of the stream.
    assert sum(sent) <= limit + 1024, (sum(sent), limit)


def test_too_many_photos(client: TestClient) -> None:
    files = [("photo", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(MAX_PHOTOS + 1)]
    response = client.post("/search", files=files, params={"extractor": "custom_cnn"})
    assert response.status_code == 413
    assert f"at most {MAX_PHOTOS} photos" in _one_line(response)


def test_search_without_a_photo(client: TestClient) -> None:
    response = client.post("/search", params={"k": 3})
    assert response.status_code == 422
    assert "photo" in _one_line(response)


# --------------------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"k": 0}, 422, "k must be between 1 and 50, got 0"),
        ({"k": 51}, 422, "k must be between 1 and 50, got 51"),
        ({"k": "ten"}, 422, "k: "),
        ({"extractor": "resnet"}, 400, "valid extractors: inception_v3, custom_cnn"),
        ({"strategy": "fast"}, 400, "valid strategies: exact, cluster, category"),
        ({"label": "scarf"}, 400, "valid labels: dress, hat, pants, shoes"),
    ],
)
def test_similar_bad_parameters(
    client: TestClient, ids: list[str], params: dict, status: int, words: str
) -> None:
    response = client.get(f"/items/{ids[0]}/similar", params=params)
    assert response.status_code == status
    assert words in _one_line(response)


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"k": 0}, 422, "k must be between"),
        ({"extractor": "resnet"}, 400, "valid extractors"),
        ({"strategy": "fast"}, 400, "valid strategies"),
    ],
)
def test_search_bad_parameters(
    client: TestClient, hat_photo: bytes, params: dict, status: int, words: str
) -> None:
    files = [("photo", ("hat.jpg", hat_photo, "image/jpeg"))]
    response = client.post("/search", files=files, params=params)
    assert response.status_code == status
    assert words in _one_line(response)


@pytest.mark.parametrize("path", ["/items/nope", "/items/nope/similar", "/thumbs/nope"])
def test_unknown_item_is_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "no catalog item 'nope'" in _one_line(response)


@pytest.mark.parametrize("path", ["/thumbs/..%2F..%2Fcatalog.parquet", "/thumbs/../catalog"])
def test_paths_never_reach_the_filesystem(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_thumbnail_lookup_refuses_paths(built: Config, tmp_path: Path) -> None:
    """The thumbnail handler itself, called without the router (which answers 404 to most
    of these before any handler runs): only a catalog id finds a file. Each name below would
    reach a real file outside thumbs/ if the handler built a path from it (thumbs/<name> or
    thumbs/<name>.jpg), the symlink included."""
    from fastapi import HTTPException
    from starlette.requests import Request

    config = built.replace(artifacts_dir=tmp_path / "artifacts")
    shutil.copytree(built.artifacts_dir, config.artifacts_dir)
    secret = config.artifacts_dir / "secret"
    for outside in (secret, secret.with_suffix(".jpg")):
        outside.write_bytes(b"not for clients")
    for link in ("escape", "escape.jpg"):
        (config.artifacts_dir / "thumbs" / link).symlink_to(secret)
    app = create_app(config, load_extractors=False, reload_interval=0)
    (route,) = [r for r in app.routes if getattr(r, "path", "") == "/thumbs/{item_id}"]
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})

    item = app.state.holder.state.catalog["item_id"].iat[0]
    assert route.endpoint(item, request).body == config.thumb_path(item).read_bytes()
    names = [
        "../secret",
        "../catalog.parquet",
        "%2e%2e/secret",
        "%2e%2e%2fsecret",
        "..%2Fsecret",
        str(secret),
        str(config.catalog_path),
        "escape",
    ]
    for name in names:
        with pytest.raises(HTTPException) as refused:
            route.endpoint(name, request)
        assert refused.value.status_code == 404, name
        assert f"no catalog item {name!r}" in refused.value.detail


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/health", "/extractors", "/strategies", "/items/{item_id}", "/search"):
        assert path in paths
    assert "/items/{item_id}/similar" in paths and "/thumbs/{item_id}" in paths
    assert client.get("/docs").status_code == 200


# --------------------------------------------------------------------------- the API key


@pytest.fixture(scope="module")
def keyed(built: Config) -> TestClient:
    with TestClient(create_app(built, api_key=KEY, load_extractors=False, reload_interval=0)) as c:
        yield c


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"}],
)
def test_api_key_required(keyed: TestClient, ids: list[str], headers: dict) -> None:
    paths = ["/extractors", "/strategies", f"/items/{ids[0]}", f"/items/{ids[0]}/similar"]
    for path in [*paths, f"/thumbs/{ids[0]}"]:
        response = keyed.get(path, headers=headers)
        assert response.status_code == 401
        assert "API key" in _one_line(response)
        assert response.headers["www-authenticate"] == "Bearer"
    assert keyed.post("/search", headers=headers).status_code == 401


def test_api_key_accepted_and_health_open(keyed: TestClient, ids: list[str]) -> None:
    good = {"Authorization": f"Bearer {KEY}"}
    assert keyed.get("/health").status_code == 200
    assert keyed.get(f"/items/{ids[0]}/similar", headers=good).status_code == 200
    assert keyed.get(f"/thumbs/{ids[0]}", headers=good).status_code == 200
    # No models loaded in this app: uploads say why instead of failing.
    response = keyed.post("/search", headers=good, files=[("photo", ("a.jpg", b"x", "i/j"))])
    assert response.status_code == 503
    assert "cannot embed photos" in _one_line(response)


def test_no_key_means_open(client: TestClient) -> None:
    assert client.get("/strategies").status_code == 200


# --------------------------------------------------------------------------- reload


def test_reload_after_an_update_swaps_whole_states(built: Config, tmp_path: Path) -> None:
    from pipelines.data.catalog import run_catalog
    from pipelines.run import run_all

    config = copy_build(built, tmp_path)
    app = create_app(config, load_extractors=False, reload_interval=0)
    holder = app.state.holder
    with TestClient(app) as c:
        ids = list(holder.state.row_of)
        gone = remove_last_photos(config, built, 4)
        assert c.get(f"/items/{gone[-1]}").status_code == 200

        # Half-way through the update (the new catalog, every later artifact still the old
        # one's): keep serving the old state.
        run_catalog(config, progress=False)
        assert holder.refresh() is False
        health = c.get("/health").json()
        assert health["catalog_size"] == 36 and health["reloads"] == 0
        assert "built from another catalog" in health["error"]
        assert c.get(f"/items/{gone[-1]}/similar", params={"k": 3}).status_code == 200

        # The update finishes: the next check swaps in the new state, without a restart.
        run_all(config)
        assert holder.refresh() is True
        health = c.get("/health").json()
        assert health["catalog_size"] == 32 and health["reloads"] == 1 and health["error"] is None
        assert health["drift"]["removed"] == 4
        assert all(c.get(f"/items/{item}").status_code == 404 for item in gone)
        body = c.get(f"/items/{ids[0]}/similar", params={"k": 31}).json()
        assert {r["item_id"] for r in body["results"]} == set(ids) - {ids[0], *gone}
        assert holder.refresh() is False  # nothing changed since


def test_watcher_picks_up_an_update(built: Config, tmp_path: Path) -> None:
    from pipelines.run import run_all

    config = copy_build(built, tmp_path)
    app = create_app(config, load_extractors=False, reload_interval=0.1)
    with TestClient(app) as c:
        remove_last_photos(config, built, 2)
        run_all(config)  # the watcher looks every 0.1 s meanwhile, and swaps only at the end
        deadline = time.monotonic() + 20
        while c.get("/health").json()["catalog_size"] != 34:
            assert time.monotonic() < deadline, "the watcher never swapped in the update"
            time.sleep(0.1)
        assert c.get("/health").json()["reloads"] == 1


def test_missing_artifacts_answer_503(tmp_path: Path) -> None:
    app = create_app(Config(artifacts_dir=tmp_path / "none"), load_extractors=False)
    with TestClient(app) as c:
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["artifacts_present"] is False
        response = c.get("/strategies")
        assert response.status_code == 200  # needs no artifacts
        response = c.get("/extractors")
        assert response.status_code == 503
        assert "python -m pipelines run" in _one_line(response)


# --------------------------------------------------------------------------- corrections


def test_corrections_endpoints_record_list_and_undo(built: Config, tmp_path: Path) -> None:
    from pipelines.data import corrections

    config = built.replace(artifacts_dir=tmp_path / "artifacts")
    shutil.copytree(built.artifacts_dir, config.artifacts_dir)
    catalog, _ = read_catalog(config)
    hat = str(catalog[catalog["label"] == "hat"]["item_id"].iloc[0])
    pant = str(catalog[catalog["label"] == "pants"]["item_id"].iloc[0])
    app = create_app(config, api_key=KEY, load_extractors=False, reload_interval=0)
    good = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app) as c:
        assert c.get("/corrections").status_code == 401  # behind the key like the rest
        assert c.get("/corrections", headers=good).json() == []
        body = {"item_id": hat, "action": "relabel", "label": "shoes", "who": "ann", "note": "x"}
        made = c.post("/corrections", json=body, headers=good)
        assert made.status_code == 201
        assert made.json() == {
            **corrections.record(corrections.read_corrections(config).iloc[0]),
            "state": "pending",
        }
        assert made.json()["previous_label"] == "hat" and made.json()["who"] == "ann"
        drop = c.post("/corrections", json={"item_id": pant, "action": "drop"}, headers=good)
        assert drop.status_code == 201 and drop.json()["correction_id"] == "c2"

        # Every error carries the engine's own message.
        cases = [
            ({"item_id": "nope", "action": "drop"}, 404, "no catalog item 'nope' (36 items)"),
            ({"item_id": hat, "action": "move"}, 422, "action must be one of relabel, drop"),
            ({"item_id": hat, "action": "relabel", "label": " "}, 422, "needs the new label"),
            ({"item_id": hat, "action": "drop", "label": "x"}, 422, "a drop takes no label"),
            ({"item_id": hat, "action": "relabel", "label": "shoes"}, 409, "already marked"),
            ({"item_id": hat}, 422, "action: Field required"),
        ]
        for request, status, message in cases:
            response = c.post("/corrections", json=request, headers=good)
            assert response.status_code == status, request
            assert message in _one_line(response), request
        assert len(corrections.read_corrections(config)) == 2

        undone = c.delete("/corrections/c1", params={"who": "bob"}, headers=good)
        assert undone.status_code == 200
        assert undone.json()["undone_by"] == "bob" and undone.json()["state"] == "undone"
        again = c.delete("/corrections/c1", headers=good)
        assert again.status_code == 409 and "already undone" in _one_line(again)
        missing = c.delete("/corrections/c9", headers=good)
        assert missing.status_code == 404 and "no correction 'c9'" in _one_line(missing)

        # The listing is the engine's, in order, with states against the served catalog.
        listed = c.get("/corrections", headers=good).json()
        expected = corrections.list_corrections(config)
        assert [r["correction_id"] for r in listed] == expected["correction_id"].tolist()
        assert [r["state"] for r in listed] == expected["state"].tolist() == ["undone", "pending"]
        paths = c.get("/openapi.json", headers=good).json()["paths"]
        assert {"get", "post"} <= set(paths["/corrections"])
        assert "delete" in paths["/corrections/{correction_id}"]
    # Nothing is served differently until `run` applies the correction.
    assert read_catalog(config)[0]["label"].tolist() == catalog["label"].tolist()


# --------------------------------------------------------------------------- the real server


def test_the_load_test_server_runs_with_the_benchmarks_settings(
    built: Config, tmp_path: Path
) -> None:
    """`bench --api --set ...` starts its server with the same settings: a setting the server
    refuses stops it, naming the setting in its log."""
    from pipelines.errors import LookalikeError
    from pipelines.serve.loadtest import running_server

    log = tmp_path / "server.log"
    refused = ["no_such_setting=1"]
    with (
        pytest.raises(LookalikeError, match="exited"),
        running_server(built, timeout_s=120, log_path=log, overrides=refused),
    ):
        pass
    assert "no_such_setting" in log.read_text()


def test_real_server_answers_over_http(built: Config, ids: list[str], tmp_path: Path) -> None:
    # `python -m pipelines serve` in a subprocess on a free 127.0.0.1 port, stopped on exit.
    from pipelines.serve.loadtest import running_server

    with running_server(built, timeout_s=180, api_key=KEY, log_path=tmp_path / "server.log") as (
        base,
        _pid,
    ):
        health = httpx.get(f"{base}/health", timeout=2)
        assert health.json()["catalog_size"] == len(ids)
        assert httpx.get(f"{base}/items/{ids[0]}").status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        similar = httpx.get(f"{base}/items/{ids[0]}/similar?k=3", headers=auth)
        assert similar.status_code == 200 and len(similar.json()["results"]) == 3


def test_two_workers_each_answer_with_the_engine_s_neighbours(
    built: Config, ids: list[str], tmp_path: Path
) -> None:
    """`serve --workers 2`: two server processes on one port, each with its models loaded
    (each answers /health with its own pid, the API key required by both), and whichever
    answers gives the engine's neighbours."""
    from pipelines.readers import load_index, read_catalog
    from pipelines.search.similar import item_neighbours
    from pipelines.serve.loadtest import running_server

    catalog, _ = read_catalog(built)
    want = item_neighbours(load_index(built, "inception_v3"), catalog, ids[0], 5)
    log = tmp_path / "server.log"
    with running_server(built, timeout_s=240, api_key=KEY, log_path=log, workers=2) as (
        base,
        _pid,
    ):
        auth = {"Authorization": f"Bearer {KEY}"}
        pids = set()
        for attempt in range(200):  # until both have answered (each is up: running_server)
            if len(pids) == 2 and attempt >= 20:
                break
            health = httpx.get(f"{base}/health", timeout=5).json()
            assert health["extractors_loaded"] and health["catalog_size"] == len(ids)
            pids.add(health["worker_pid"])
            got = httpx.get(f"{base}/items/{ids[0]}/similar?k=5", headers=auth, timeout=5)
            assert [r["item_id"] for r in got.json()["results"]] == list(want["item_id"])
        assert len(pids) == 2, pids
        assert httpx.get(f"{base}/items/{ids[0]}", timeout=5).status_code == 401


# --------------------------------------------------------------------------- latency pins


def test_similar_runs_on_the_event_loop(client: TestClient) -> None:
    # A sync route costs two thread hops per request (the endpoint, then the response
    # validation), which under concurrent clients queue on the GIL behind each other.
    route = next(
        r for r in client.app.routes if getattr(r, "path", "") == "/items/{item_id}/similar"
    )
    assert inspect.iscoroutinefunction(route.endpoint)


def test_reranked_similar_leaves_the_event_loop(
    client: TestClient, ids: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain similar runs on the loop; a re-ranked one in a worker thread, because its first
    query builds a neighbour graph for seconds and the loop must keep answering meanwhile."""
    import asyncio

    from pipelines.serve import routes

    on_loop: list[bool] = []

    def recording(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return item_search(*args, **kwargs)

    from pipelines.search.similar import item_search

    monkeypatch.setattr(routes, "item_search", recording)
    for rerank in (False, True):
        response = client.get(f"/items/{ids[3]}/similar", params={"k": 4, "rerank": rerank})
        assert response.status_code == 200, response.text
        assert response.json()["rerank"] is rerank
    assert on_loop and on_loop[0] is True and on_loop[-1] is False


BLAS_PROBE = """
import sys, types
assert "numpy" not in sys.modules  # as in `python -m pipelines serve`: nothing loaded BLAS yet
seen = []
def create_app(*args, **kwargs):  # stands in for the real app: building it loads numpy
    import numpy
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=2, user_api="blas")  # a BLAS that starts on two threads
    return object()
def run(app, **kwargs):
    from threadpoolctl import threadpool_info
    seen.extend(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")
sys.modules["uvicorn"] = types.SimpleNamespace(run=run)
sys.modules["pipelines.serve.app"] = types.SimpleNamespace(create_app=create_app)
from pipelines.config import Config
from pipelines.serve import run_server
run_server(Config())
print(seen)
"""


def test_server_limits_blas_after_numpy_is_loaded() -> None:
    # threadpoolctl limits only libraries already loaded: set before the app imported numpy,
    # the limit did nothing and every InceptionV3 product woke a second OpenBLAS thread.
    import subprocess
    import sys

    from pipelines.config import REPO_ROOT

    out = subprocess.run(
        [sys.executable, "-c", BLAS_PROBE], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[1]"


# --------------------------------------------------------------------------- the load test


def test_cpu_and_memory_are_summed_over_a_server_s_workers() -> None:
    """`bench --api` reads a server's CPU and memory as its process and every descendant's
    (the workers of `serve --workers N`): a parent whose child burns CPU and holds memory is
    charged with both."""
    import subprocess
    import sys

    from pipelines.serve.loadtest import cpu_seconds, rss_mb

    burn = (
        "import time\nblock = bytearray(300 * 2**20)\nend = time.process_time() + 0.6\n"
        "while time.process_time() < end: pass\nprint('done', flush=True)\ntime.sleep(60)"
    )
    parent_code = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {burn!r}])\nchild.wait()"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while cpu_seconds(parent.pid) < 0.6 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cpu_seconds(parent.pid) >= 0.6  # the child's, the parent itself waits idle
        assert rss_mb(parent.pid) >= 300
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()


def test_quick_load_test_measures_every_phase_and_both_sides_cpu(
    built: Config, tmp_path: Path
) -> None:
    """`python -m pipelines bench --api --quick` on (a copy of) the small build: every phase
    answered without errors, with latencies, throughput and the CPU of the server and of the
    load generator per request; the report is written."""
    from pipelines.serve.loadtest import run_loadtest

    built = copy_build(built, tmp_path)
    report = run_loadtest(built, quick=True)
    assert report["phases"] and report["workers"] == 1
    for name, phase in report["phases"].items():
        assert phase["errors"] == 0, (name, phase["first_errors"])
        for endpoint in ("similar", "search"):
            if endpoint in phase:
                assert phase[endpoint]["requests"] > 0 and phase[endpoint]["p95_ms"] > 0
        assert phase["server_cpu_ms_per_request"] > 0, name
        assert phase["client_cpu_ms_per_request"] > 0, name
        assert len(phase["loadavg_before"]) == 3, name  # the machine's load beside each phase
    assert (built.bench_dir / "api.json").is_file()
