"""The API's request and response shapes (pydantic): what /docs shows and what clients get."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Neighbour(BaseModel):
    """One similar catalog item; the item's public catalog columns (split, width, ...) follow
    the fixed fields."""

    model_config = ConfigDict(extra="allow")

    rank: int = Field(description="1 = most similar")
    item_id: str
    similarity: float = Field(description="cosine similarity to the query")
    label: str | None = None
    thumbnail_url: str = Field(description="GET this for the item's JPEG thumbnail")


class Neighbours(BaseModel):
    """The one response shape of every search: a query and its neighbours, best first."""

    query: str = Field(description="the catalog item id or the photo's file name")
    extractor: str
    strategy: str = Field(description="the strategy used (exact when the asked one lacks data)")
    k: int
    took_ms: float
    note: str | None = Field(None, description="why the asked strategy was replaced, if it was")
    rerank: bool = Field(False, description="whether the candidates were re-ranked")
    results: list[Neighbour]


class Item(BaseModel):
    """One catalog row (public columns) and its thumbnail URL."""

    model_config = ConfigDict(extra="allow")

    item_id: str
    label: str | None = None
    thumbnail_url: str


class PhotoResult(BaseModel):
    """One uploaded photo: its predicted category and its neighbours per extractor."""

    name: str
    category: str | None = Field(None, description="the predicted category (by `category_model`)")
    confidence: float | None = None
    error: str | None = Field(None, description="why the photo could not be used")
    searches: list[Neighbours] = Field(default_factory=list)
    probabilities: dict[str, float] = Field(
        default_factory=dict, description="category -> probability, most likely first"
    )
    searched_categories: list[str] | None = Field(
        None,
        description='what the category strategy searches for this photo ("*" = the whole '
        "catalog: the classifier is unsure)",
    )
    category_model: str | None = Field(
        None,
        description="what predicted the category: the classify stage's classifier, or the "
        "custom CNN's softmax head when there is none",
    )
    notes: list[str] = Field(
        default_factory=list, description="how the search went (fallbacks, categories searched)"
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="why the results deserve less trust: far from the catalog, a tiny or "
        "panoramic photo, a guessed category",
    )


class CategoryCount(BaseModel):
    """How many of the photos got one predicted category."""

    category: str
    count: int


class SearchResponse(BaseModel):
    """Every photo's result, and the set's most common predicted categories (at most 3)."""

    took_ms: float
    photos: list[PhotoResult]
    top_categories: list[CategoryCount]


class ExtractorInfo(BaseModel):
    """An extractor the service can search with."""

    name: str
    dim: int = Field(description="embedding width")
    strategies: list[str] = Field(description="strategies with their data built")
    unavailable: dict[str, str] = Field(description="strategy -> why it falls back to exact")
    approximate: bool = Field(description="exact search goes through the ANN index")
    model_loaded: bool = Field(description="photos can be embedded (POST /search)")
    model_error: str | None = None


class StrategyInfo(BaseModel):
    """A search strategy and what it searches."""

    name: str
    description: str


class Health(BaseModel):
    """Whether the service can answer, and from which build."""

    ok: bool
    artifacts: str
    artifacts_present: bool
    catalog_size: int
    built: str | None = Field(None, description="the catalog's build time (manifest)")
    extractors_loaded: list[str]
    reloads: int = Field(description="times new artifacts were swapped in since start")
    error: str | None = Field(None, description="why the latest (re)load failed, if it did")
    embed_mode: str
    worker_pid: int = Field(
        description="the server process that answered (one of them with `serve --workers N`)"
    )
    drift: dict[str, Any] | None = Field(
        None,
        description="the served catalog since the models were trained (`python -m pipelines "
        "status`): trained, current, added, removed, changed_share, unseen_labels, "
        "retrain_due, reason, trained_at, retrain_seconds, summary",
    )


class CorrectionRequest(BaseModel):
    """A label correction or a drop to record (POST /corrections); the engine checks it."""

    item_id: str = Field(description="a catalog item")
    action: str = Field(description='"relabel" (with `label`) or "drop"')
    label: str | None = Field(None, description="the item's new label (relabel only)")
    who: str | None = Field(None, description="who makes it (default: the service's OS user)")
    note: str = Field("", description="why (kept with the correction)")


class Correction(BaseModel):
    """One label correction or drop; applied at the next `python -m pipelines run`."""

    correction_id: str = Field(description='"c1", "c2", ... in the order they were made')
    item_id: str
    action: str = Field(description='"relabel" or "drop"')
    label: str | None = Field(None, description="the new label of a relabel")
    previous_label: str | None = Field(None, description="the item's label when it was made")
    who: str
    when: str = Field(description="when it was made (UTC, ISO 8601)")
    note: str = ""
    undone_at: str | None = Field(None, description="when it was undone (UTC), if it was")
    undone_by: str | None = None
    state: str | None = Field(
        None,
        description='against the catalog served: "applied", "pending" (the next run applies '
        'it), "superseded by cN" (a later correction of the item wins) or "undone"',
    )
