"""Re-ranking: off changes nothing (every strategy), query expansion pulls in a planted
neighbour plain search misses, DBA + QE equal an independent computation, and the option
reaches the engine from the Python API, the CLI and the HTTP service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.search import rerank
from pipelines.search.index import Index
from pipelines.search.rerank import RerankedIndex, RerankSettings, neighbour_graph, reranked
from pipelines.search.similar import item_neighbours, vector_neighbours
from tests.conftest import blobs, unit


def _catalog(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [f"item{i:03d}" for i in range(n)],
            "label": [f"l{i % 4}" for i in range(n)],
            "thumb": [f"thumbs/{i}.jpg" for i in range(n)],
        }
    )


def _index() -> tuple[Index, pd.DataFrame]:
    """60 items in 4 loose groups, with clusters and categories that cut across them, so every
    strategy searches a different pool and re-ranking has something to re-order."""
    vectors, labels = blobs((15, 15, 15, 15), d=16, noise=0.6, seed=3)
    catalog = _catalog(len(vectors))
    clusters = labels  # the groups as k-means clusters
    categories = np.array([f"c{i % 3}" for i in range(len(vectors))], dtype=object)
    index = Index(
        vectors, catalog["item_id"], name="inception_v3", clusters=clusters, categories=categories
    )
    return index, catalog


@pytest.mark.parametrize("strategy", ["exact", "cluster", "category"])
def test_disabled_reranking_is_plain_search(strategy: str) -> None:
    index, catalog = _index()
    settings = RerankSettings(qe_m=3, alpha=1.0, dba_m=3)
    moved = 0
    for item in catalog["item_id"][::3]:
        plain = item_neighbours(index, catalog, item, 8, strategy)
        off = item_neighbours(index, catalog, item, 8, strategy, rerank=False)
        pd.testing.assert_frame_equal(off, plain)  # ids, similarities, ranks, labels
        # Plain search is the cosine ranking of the pool, computed here independently.
        row = int(item[4:])
        pool = np.arange(index.size) != row
        if strategy == "cluster":
            pool &= index.clusters == index.clusters[row]
        elif strategy == "category":
            pool &= index.categories == index.categories[row]
        cos = index.vectors @ index.vectors[row]
        best = np.flatnonzero(pool)[np.argsort(-cos[pool], kind="stable")][:8]
        assert off["item_id"].tolist() == catalog["item_id"].to_numpy()[best].tolist()
        np.testing.assert_allclose(off["similarity"], cos[best], atol=1e-6)
        # The option is not a no-op on this data, so equality above means it did not leak.
        on = item_neighbours(
            RerankedIndex(index, settings), catalog, item, 8, strategy, rerank=False
        )
        moved += on["item_id"].tolist() != plain["item_id"].tolist()
    assert moved >= 3
    # Off returns the very index object: nothing wraps plain search.
    assert reranked(index, False) is index


def _planted() -> tuple[Index, int]:
    """A query e0; A and B close to it; T close to A and B but less like the query than five
    distractors, each of which points its own way (so they share nothing with each other)."""
    d = 12
    e = np.eye(d, dtype=np.float32)
    a = unit((e[0] + 0.3 * e[1])[None])[0]  # cos to query 0.958
    b = unit((0.8 * e[0] + 0.6 * e[1])[None])[0]  # 0.8
    t = unit((0.5 * e[0] + 1.0 * e[1])[None])[0]  # 0.447
    distractors = [0.6 * e[0] + 0.8 * e[2 + i] for i in range(5)]  # 0.6 each
    vectors = np.vstack([a, b, t, *distractors]).astype(np.float32)
    index = Index(vectors, [f"item{i:03d}" for i in range(len(vectors))], name="planted")
    return index, 2


def test_query_expansion_pulls_in_a_neighbour_plain_search_misses() -> None:
    index, target = _planted()
    query = np.eye(index.dim, dtype=np.float32)[0]
    plain = index.search(query, 3)[0]
    assert target not in plain.rows.tolist()  # A, B and a distractor
    qe = RerankedIndex(index, RerankSettings(qe_m=2, alpha=0.0, dba_m=0)).search(query, 3)[0]
    assert qe.rows.tolist()[:2] == [0, 1] and qe.rows[2] == target
    # The similarity shown is still the cosine to the original query.
    assert qe.similarities[2] == pytest.approx(float(index.vectors[target] @ query), abs=1e-6)
    # Expanding with the nearest item only is not enough here: T stays out.
    one = RerankedIndex(index, RerankSettings(qe_m=1, alpha=0.0)).search(query, 3)[0]
    assert target not in one.rows.tolist()


def test_dba_and_qe_match_a_direct_computation() -> None:
    vectors, _ = blobs((12, 12, 12), d=8, noise=0.5, seed=1)
    index = Index(vectors, [str(i) for i in range(len(vectors))])
    settings = RerankSettings(qe_m=4, alpha=3.0, dba_m=3)
    # Independently: every item replaced by itself + its 3 nearest others (weights sim^3),
    # then the query expanded by its 4 best augmented items, then everything scored again.
    cos = vectors @ vectors.T
    np.fill_diagonal(cos, -np.inf)
    near = np.argsort(-cos, axis=1, kind="stable")[:, :3]
    graph_rows, graph_sims = neighbour_graph(index, 3)
    np.testing.assert_array_equal(graph_rows, near)
    weights = np.take_along_axis(cos, near, 1) ** 3
    dba = unit(vectors + np.einsum("nm,nmd->nd", weights, vectors[near]))
    for row in (0, 13, 30):
        q = vectors[row]
        others = np.flatnonzero(np.arange(len(vectors)) != row)
        first = dba[others] @ q
        top = others[np.argsort(-first, kind="stable")[:4]]
        expanded = unit((q + (np.maximum(dba[top] @ q, 0) ** 3) @ dba[top])[None])[0]
        expected = others[np.argsort(-(dba[others] @ expanded), kind="stable")][:10]
        found, sims = RerankedIndex(index, settings).search_rows(q, 10, exclude_rows=[row])
        assert found[0].tolist() == expected.tolist()
        np.testing.assert_allclose(sims[0], vectors[expected] @ q, atol=1e-6)


def test_upload_vectors_and_bad_settings() -> None:
    index, catalog = _index()
    vector = index.vectors[5] + 0.1 * index.vectors[6]
    plain = vector_neighbours(index, catalog, vector, 6)
    pd.testing.assert_frame_equal(vector_neighbours(index, catalog, vector, 6, rerank=False), plain)
    on = vector_neighbours(index, catalog, vector, 6, rerank=True)
    assert len(on) == 6 and set(on["item_id"]) <= set(catalog["item_id"])
    with pytest.raises(LookalikeError, match="rerank must be true or false, got 'yes'"):
        reranked(index, "yes")  # type: ignore[arg-type]
    with pytest.raises(LookalikeError, match="qe_m must be a whole number >= 0, got -1"):
        RerankSettings(qe_m=-1)
    with pytest.raises(LookalikeError, match="alpha must be a number >= 0"):
        RerankSettings(alpha=float("nan"))
    # Every shipped extractor has settings of its own.
    assert set(rerank.TUNED) == {"inception_v3", "custom_cnn", "inception_head"}
    # Large catalogs never pay for DBA's neighbour graph.
    for name in [*rerank.TUNED, "another"]:
        assert rerank.settings_for(name, rerank.DBA_MAX_ITEMS + 1).dba_m == 0
    assert rerank.settings_for("inception_v3", 3000).dba_m > 0


# ------------------------------------------------------------ the option reaches the engine


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the indexes searched through `RerankedIndex` (the engine's re-ranking)."""
    calls: list[str] = []
    original = RerankedIndex.search_rows

    def recorded(self: RerankedIndex, *args, **kwargs):  # noqa: ANN202
        calls.append(self.index.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RerankedIndex, "search_rows", recorded)
    return calls


@pytest.fixture
def photo_of(built: Config, monkeypatch: pytest.MonkeyPatch) -> str:
    """Any photo embeds as a catalog item's InceptionV3 vector (no model is loaded, so these
    tests take a second, not the half minute TensorFlow needs); returns that item's id."""
    from pipelines.api import Lookalike
    from pipelines.readers import load_index
    from pipelines.search import photos

    index = load_index(built, "inception_v3")
    item = str(index.item_ids[5])

    def embedded(name: str, *_args, **_kwargs) -> photos.UploadEmbedding:
        vector = index.vectors[5].copy()
        return photos.UploadEmbedding(name, {"inception_v3": vector}, "hat", 0.9)

    monkeypatch.setattr(photos, "embed_upload", embedded)
    monkeypatch.setattr(Lookalike, "extractor", lambda self, name: None)
    return item


def _moved_item(config: Config, extractor: str, k: int) -> tuple[str, pd.DataFrame]:
    """A catalog item whose re-ranked neighbours differ from plain search, and that table."""
    from pipelines.readers import load_index, read_catalog

    catalog, _ = read_catalog(config)
    index = load_index(config, extractor)
    for item in catalog["item_id"]:
        on = item_neighbours(index, catalog, item, k, rerank=True)
        if on["item_id"].tolist() != item_neighbours(index, catalog, item, k)["item_id"].tolist():
            return item, on
    pytest.fail("re-ranking changes no item's neighbours in the small build")


def test_api_passes_rerank(built: Config, spy: list[str], photo_of: str) -> None:
    from pipelines.api import Lookalike

    look = Lookalike.open(built.artifacts_dir)
    item, expected = _moved_item(built, "inception_v3", 6)
    spy.clear()
    table = look.similar_to(item, k=6, extractor="inception_v3", rerank=True)
    assert table["item_id"].tolist() == expected["item_id"].tolist() and spy
    spy.clear()
    look.similar_to(item, k=6, extractor="inception_v3")
    look.similar(b"photo", k=4, extractor="inception_v3")
    assert spy == []
    table = look.similar(b"photo", k=4, extractor="inception_v3", rerank=True)
    assert spy == ["inception_v3"] and table["item_id"].iloc[0] == photo_of


def test_cli_passes_rerank(
    built: Config, spy: list[str], photo_of: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipelines.cli import main

    photo = tmp_path / "dress.jpg"
    photo.write_bytes(b"any bytes: the embedding is faked")
    argv = ["search", str(photo), "--artifacts", str(built.artifacts_dir), "--k", "3", "--json"]
    assert main([*argv, "--extractor", "inception_v3"]) == 0
    assert json.loads(capsys.readouterr().out)["rerank"] is False and spy == []
    assert main([*argv, "--extractor", "inception_v3", "--rerank"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rerank"] is True and spy == ["inception_v3"]
    assert report["photos"][0]["neighbours"]["inception_v3"][0]["item_id"] == photo_of


def test_http_passes_rerank(built: Config, spy: list[str], photo_of: str) -> None:
    from fastapi.testclient import TestClient

    from pipelines.serve.app import create_app

    item, expected = _moved_item(built, "inception_v3", 6)
    spy.clear()
    app = create_app(built, reload_interval=0, load_extractors=False)
    with TestClient(app) as client:
        plain = client.get(f"/items/{item}/similar", params={"k": 6}).json()
        assert plain["rerank"] is False and spy == []
        body = client.get(f"/items/{item}/similar", params={"k": 6, "rerank": True}).json()
        assert body["rerank"] is True
        assert [r["item_id"] for r in body["results"]] == expected["item_id"].tolist()
        spy.clear()
        # Models are not loaded here: mark InceptionV3 as able to embed (the embedding is faked).
        client.app.state.holder.state.extractors["inception_v3"] = object()
        response = client.post(
            "/search",
            files=[("photo", ("hat.jpg", b"faked", "image/jpeg"))],
            params={"k": 3, "extractor": "inception_v3", "rerank": True},
        )
        assert response.status_code == 200, response.text
        search = response.json()["photos"][0]["searches"][0]
        assert search["rerank"] is True and search["results"][0]["item_id"] == photo_of
        assert spy == ["inception_v3"]
