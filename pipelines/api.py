"""Lookalike from Python (notebooks, scripts): similar catalog items of a photo or an item, and the
categories of a folder of photos. Reads the built artifacts; writes nothing.

    >>> from pipelines.api import Lookalike
    >>> look = Lookalike.open()                      # artifacts/ or $LOOKALIKE_ARTIFACTS
    >>> look.similar("my_dress.jpg", k=5)            # DataFrame: rank, item_id, similarity, ...
    >>> look.similar_to("3f2a...", diversity=0.3)    # neighbours of a catalog item, spread out
    >>> look.similar_to("3f2a...", rerank=True)      # re-ranked by query expansion
    >>> look.categories("holiday_photos/")           # predicted category of every photo

A thin layer: photos go through the Upload page's functions (`pipelines.search.photos.embed_upload`,
`analyse_upload`, `category_summary`), catalog items through `pipelines.search.similar`, so the
answers are the app's answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import commands
from pipelines.config import EXTRACTORS, STRATEGIES, Config
from pipelines.errors import LookalikeError
from pipelines.search.diversity import check_diversity, diversify_table
from pipelines.search.index import Index
from pipelines.search.photos import UploadResult
from pipelines.search.rerank import check_rerank, reranked
from pipelines.search.topk import check_k

CATEGORY_COLUMNS = ["photo", "category", "confidence", "error"]


def photo_files(paths: Iterable[str | Path]) -> list[tuple[str, Path | None, str | None]]:
    """Expand photos and folders into (name, file, problem) entries, in the given order.

    A folder gives every non-hidden file under it (sorted; files that are not photos are kept
    and reported by the embedding step). A path that does not exist, or a folder with no files,
    gives one entry with file None and the problem.
    """
    out: list[tuple[str, Path | None, str | None]] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                out.append((str(path), None, f"{path}: the folder holds no files"))
            out.extend((str(p), p, None) for p in files)
        elif path.is_file():
            out.append((str(path), path, None))
        else:
            out.append((str(path), None, f"{path}: no such file or folder — check the path"))
    return out


class Lookalike:
    """The built catalog, its indexes and models, opened once and queried many times.

    Models load on first use (InceptionV3 takes ~10 s); indexes are built on first use of each
    extractor. Open it with `Lookalike.open`.
    """

    def __init__(self, config: Config) -> None:
        from pipelines.status import app_config

        # The trained custom CNN's own input size and width, exactly as the app embeds uploads.
        self.config = app_config(config)
        self._indexes: dict[str, Index] = {}
        self._extractors: dict[str, Any] = {}

    @classmethod
    def open(cls, artifacts: str | Path | None = None) -> Lookalike:
        """Open the artifacts in `artifacts` (default: artifacts/ in the repo, or
        $LOOKALIKE_ARTIFACTS). Raises when the catalog has not been built yet."""
        config = Config() if artifacts is None else Config(artifacts_dir=Path(artifacts))
        if not config.catalog_path.exists():
            raise LookalikeError(
                f"{config.catalog_path} is missing — build the artifacts with `{commands.RUN}`"
                + ("" if artifacts is None else f" --artifacts {artifacts}")
            )
        return cls(config)

    # --------------------------------------------------------------------------- loaded parts

    @cached_property
    def catalog(self) -> pd.DataFrame:
        """The catalog: item_id, path, label, ..., thumb_file (absolute thumbnail path)."""
        from pipelines.explore.browse import with_thumb_files
        from pipelines.readers import read_catalog

        table, _ = read_catalog(self.config)
        return with_thumb_files(table, self.config.artifacts_dir)

    def index(self, extractor: str) -> Index:
        """The search index of `extractor` (built on first use)."""
        _check_extractor(extractor)
        if extractor not in self._indexes:
            from pipelines.readers import load_index

            self._indexes[extractor] = load_index(self.config, extractor)
        return self._indexes[extractor]

    def extractor(self, name: str) -> Any:
        """The loaded `pipelines.models.extractors.Extractor` called `name`, loaded on first use."""
        _check_extractor(name)
        if name not in self._extractors:
            from pipelines.models.extractors import get_extractor

            self._extractors[name] = get_extractor(name, self.config)
        return self._extractors[name]

    # --------------------------------------------------------------------------- queries

    def similar(
        self,
        photo: str | Path | bytes,
        k: int = 10,
        extractor: str = EXTRACTORS[0],
        strategy: str = "exact",
        diversity: float = 0.0,
        rerank: bool = False,
    ) -> pd.DataFrame:
        """The k catalog items most similar to a photo, best first.

        Parameters
        ----------
        photo : a file path, or the bytes of a photo.
        k : neighbours to return (1 to the catalog size).
        extractor : one of EXTRACTORS.
        strategy : one of STRATEGIES; falls back to "exact" where its data is missing.
        diversity : 0 for plain nearest neighbours; up to 1 to spread out near-duplicates
            (maximal marginal relevance, see `pipelines.search.diversity`).
        rerank : False (default) for plain search; True re-orders the nearest candidates by
            query expansion (`pipelines.search.rerank`); similarities stay cosines to the photo.

        Returns
        -------
        DataFrame: rank, item_id, similarity (cosine), label, thumb (thumbnail path). Its
        `attrs` hold the photo's predicted "category" and "confidence" (None without a trained
        classifier) and "notes" (strategy fallbacks).

        Raises LookalikeError when the photo cannot be used (the message names the problem).
        """
        if isinstance(photo, bytes):
            name, data = "photo", photo
        else:
            path = Path(photo)
            if not path.is_file():
                raise LookalikeError(f"{path}: no such file — check the path")
            name, data = str(path), _read(path)
        result = self.search_bytes(
            [(name, data)], k, [extractor], strategy, diversity, rerank=rerank
        )[0]
        if result.error:
            raise LookalikeError(result.error)
        table = result.neighbours[extractor]
        table.attrs.update(
            category=result.category, confidence=result.confidence, notes=list(result.notes)
        )
        return table

    def similar_to(
        self,
        item_id: str,
        k: int = 10,
        extractor: str = EXTRACTORS[0],
        strategy: str = "exact",
        diversity: float = 0.0,
        rerank: bool = False,
    ) -> pd.DataFrame:
        """The k catalog items most similar to catalog item `item_id` (never itself), best
        first; same parameters and columns as `similar`."""
        from pipelines.search.similar import item_neighbours, resolve_strategy

        index = self.index(extractor)
        use, _note = resolve_strategy(index, strategy)
        return item_neighbours(
            index,
            self.catalog,
            str(item_id),
            k,
            use,
            diversity=check_diversity(diversity),
            rerank=check_rerank(rerank),
        )

    def categories(self, folder: str | Path | Sequence[str | Path], top: int = 3) -> pd.DataFrame:
        """The predicted category of every photo in a folder (or list of photos and folders).

        Returns
        -------
        DataFrame with one row per file: photo, category, confidence, error (the problem, for a
        file that is not a usable photo; None otherwise). Its `attrs["most_common"]` is the
        `top` most common categories (`pipelines.search.photos.category_summary`).
        """
        from pipelines.search.photos import category_summary, embed_upload

        if "custom_cnn" not in self.available_models():
            raise LookalikeError(
                f"categories come from the trained custom CNN, and {self.config.custom_cnn_path} "
                f"is missing — run `{commands.TRAIN}`"
            )
        paths = [folder] if isinstance(folder, str | Path) else list(folder)
        embedder = {"custom_cnn": self.extractor("custom_cnn")}
        embeddings = []
        for name, data, problem in self._read_all(paths):
            if problem:
                embeddings.append(_failed(name, problem))
            else:
                embeddings.append(
                    embed_upload(name, data, embedder, max_pixels=self.config.max_pixels)
                )
        table = pd.DataFrame(
            [[e.name, e.category, e.confidence, e.error] for e in embeddings],
            columns=CATEGORY_COLUMNS,
        )
        table.attrs["most_common"] = category_summary(embeddings, top=top)
        return table

    def search_files(
        self,
        paths: Sequence[str | Path],
        k: int = 10,
        extractors: Sequence[str] = EXTRACTORS,
        strategy: str = "exact",
        diversity: float = 0.0,
        rerank: bool = False,
    ) -> list[UploadResult]:
        """Neighbours of photos and folders of photos, as the Upload page finds them.

        Returns one `pipelines.search.photos.UploadResult` per file (see `photo_files`), in order; a
        file that cannot be used has `error` ("<file>: <problem>") and nothing else.
        `rerank` as in `similar`.
        """
        return self.search_bytes(
            [
                (name, data) if not problem else (name, problem)
                for name, data, problem in self._read_all(paths)
            ],
            k,
            extractors,
            strategy,
            diversity,
            rerank=rerank,
        )

    def search_bytes(
        self,
        photos: Sequence[tuple[str, bytes | str]],
        k: int = 10,
        extractors: Sequence[str] = EXTRACTORS,
        strategy: str = "exact",
        diversity: float = 0.0,
        rerank: bool = False,
    ) -> list[UploadResult]:
        """`search_files` on (name, bytes) pairs; a str instead of bytes is a problem found
        before embedding (kept as that result's error). `rerank` as in `similar`: the
        indexes are searched through `pipelines.search.rerank.RerankedIndex`."""
        from pipelines.search.photos import analyse_upload, embed_upload

        chosen = list(dict.fromkeys(extractors))
        for name in chosen:
            _check_extractor(name)
        if strategy not in STRATEGIES:
            raise LookalikeError(
                f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
            )
        diversity = check_diversity(diversity)
        check_k(k)
        rerank = check_rerank(rerank)
        indexes = {name: reranked(self.index(name), rerank) for name in chosen}
        # The custom CNN also predicts each photo's category, so it embeds every photo when it
        # is trained, even if only InceptionV3's neighbours are asked for.
        embedders = {
            name: self.extractor(name)
            for name in EXTRACTORS
            if name in chosen or name in self.available_models()
        }
        results = []
        for name, data in photos:
            if isinstance(data, str):
                results.append(UploadResult(name, error=data))
                continue
            embedding = embed_upload(name, data, embedders, max_pixels=self.config.max_pixels)
            results.append(
                analyse_upload(
                    embedding, indexes, self.catalog, {}, k, strategy, diversity=diversity
                )
            )
        return results

    def available_models(self) -> list[str]:
        """Extractors whose model can be loaded: InceptionV3 always (its weights ship with the
        install), the custom CNN once it has been trained."""
        have = ["inception_v3"]
        if self.config.custom_cnn_path.exists():
            have.append("custom_cnn")
        return have

    def _read_all(self, paths: Sequence[str | Path]) -> list[tuple[str, bytes, str | None]]:
        out = []
        for name, path, problem in photo_files(paths):
            if problem or path is None:
                out.append((name, b"", problem or f"{name}: unreadable"))
                continue
            try:
                out.append((name, _read(path), None))
            except LookalikeError as err:
                out.append((name, b"", str(err)))
        return out


def diversify_upload(
    result: UploadResult,
    indexes: Mapping[str, Index],
    k: int,
    diversity: float,
    maps: Mapping[str, pd.DataFrame] | None = None,
) -> UploadResult:
    """An `analyse_upload` result searched with `pool_size(k, diversity, ...)` candidates, cut
    to k by `diversify_table` (MMR) in every extractor; map positions are placed again from
    the kept neighbours when `maps` is given. At diversity 0 the tables are only cut to k."""
    if result.error is not None:
        return result
    tables = {
        name: diversify_table(table, indexes[name], k, diversity)
        for name, table in result.neighbours.items()
    }
    positions = dict(result.positions)
    if maps:
        from pipelines.search.photos import place_on_map

        positions.update(
            {name: place_on_map(tables[name], maps[name]) for name in tables if name in maps}
        )
    return dataclasses.replace(result, neighbours=tables, positions=positions)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise LookalikeError(f"{path}: cannot read file ({err.strerror or err})") from None


def _failed(name: str, problem: str) -> Any:
    from pipelines.search.photos import UploadEmbedding

    return UploadEmbedding(name, error=problem)


def _check_extractor(name: str) -> None:
    if name not in EXTRACTORS:
        raise LookalikeError(
            f"unknown extractor {name!r}; valid extractors: {', '.join(EXTRACTORS)}"
        )
