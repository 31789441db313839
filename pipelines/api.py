"""Lookalike from Python (notebooks, scripts): similar catalog items of a photo or an item, and the
categories of a folder of photos. Reads the built artifacts; writes only the user's label
corrections (artifacts/corrections.parquet, through `pipelines.data.corrections`).

    >>> from pipelines.api import Lookalike
    >>> look = Lookalike.open()                      # artifacts/ or $LOOKALIKE_ARTIFACTS
    >>> look.similar("my_dress.jpg", k=5)            # DataFrame: rank, item_id, similarity, ...
    >>> look.similar_to("3f2a...", diversity=0.3)    # neighbours of a catalog item, spread out
    >>> look.similar_to("3f2a...", rerank=True)      # re-ranked by query expansion
    >>> look.categories("holiday_photos/")           # predicted category of every photo
    >>> look.correct("3f2a...", label="dress")       # a relabel, applied at the next `run`

A thin layer: photos go through the engine's one photo search
(`pipelines.search.photos.search_photos`), as on the Upload page, over HTTP and in the shell;
catalog items through `pipelines.search.similar`. So the answers are the app's answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import commands
from pipelines.config import EXTRACTORS, Config
from pipelines.errors import LookalikeError
from pipelines.search.diversity import check_diversity
from pipelines.search.index import Index
from pipelines.search.photos import PhotoSources, UploadResult, search_photos
from pipelines.search.rerank import check_rerank

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

            self._extractors[name] = get_extractor(name, self.config, live=True)
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
        *,
        colour: str | None = None,
        label: str | None = None,
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
        colour, label : only items of this dominant colour / catalog label (None: any).

        Returns
        -------
        DataFrame: rank, item_id, similarity (cosine), label, thumb (thumbnail path). Its
        `attrs` hold the photo's predicted "category" and "confidence" (None without a
        category model), "notes" (strategy fallbacks, the categories searched) and "warnings"
        (far from the catalog, tiny, panoramic, a guessed category).

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
            [(name, data)], k, [extractor], strategy, diversity, rerank=rerank, colour=colour,
            label=label,
        )[0]  # fmt: skip
        if result.error:
            raise LookalikeError(result.error)
        table = result.neighbours[extractor]
        table.attrs.update(
            category=result.category,
            confidence=result.confidence,
            notes=list(result.notes),
            warnings=list(result.warnings),
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
        """The predicted category of every photo in a folder (or list of photos and folders),
        by the same model as every photo search (`pipelines.search.photos.search_photos`).

        Returns
        -------
        DataFrame with one row per file: photo, category, confidence, error (the problem, for a
        file that is not a usable photo; None otherwise). Its `attrs["most_common"]` is the
        `top` most common categories (`pipelines.search.photos.category_summary`).
        """
        from pipelines.search.photos import category_summary

        sources = self.sources
        if sources.category_model is None and "custom_cnn" not in sources.models:
            raise LookalikeError(
                f"categories come from the category classifier ({self.config.category_model_path}"
                f") or the trained custom CNN, and neither is built — run `{commands.RUN}`"
            )
        paths = [folder] if isinstance(folder, str | Path) else list(folder)
        results = search_photos(self._read_all(paths), sources, extractors=[])
        table = pd.DataFrame(
            [[r.name, r.category, r.confidence, r.error] for r in results],
            columns=CATEGORY_COLUMNS,
        )
        table.attrs["most_common"] = category_summary(results, top=top)
        return table

    def search_files(
        self,
        paths: Sequence[str | Path],
        k: int = 10,
        extractors: Sequence[str] = EXTRACTORS,
        strategy: str = "exact",
        diversity: float = 0.0,
        rerank: bool = False,
        *,
        colour: str | None = None,
        label: str | None = None,
    ) -> list[UploadResult]:
        """Neighbours of photos and folders of photos, as the Upload page finds them.

        Returns one `pipelines.search.photos.UploadResult` per file (see `photo_files`), in
        order; a file that cannot be used has `error` ("<file>: <problem>") and nothing else.
        `rerank`, `colour` and `label` as in `similar`.
        """
        return self.search_bytes(
            self._read_all(paths), k, extractors, strategy, diversity, rerank=rerank,
            colour=colour, label=label,
        )  # fmt: skip

    def search_bytes(
        self,
        photos: Sequence[tuple[str, bytes | str]],
        k: int = 10,
        extractors: Sequence[str] = EXTRACTORS,
        strategy: str = "exact",
        diversity: float = 0.0,
        rerank: bool = False,
        *,
        colour: str | None = None,
        label: str | None = None,
    ) -> list[UploadResult]:
        """`search_files` on (name, bytes) pairs; a str instead of bytes is a problem found
        before embedding (kept as that result's error). The engine's
        `pipelines.search.photos.search_photos` does the whole search."""
        chosen = list(dict.fromkeys(extractors))
        for name in chosen:
            _check_extractor(name)
        return search_photos(
            photos, self.sources, k, chosen, strategy, diversity=diversity, rerank=rerank,
            colour=colour, label=label,
        )  # fmt: skip

    # --------------------------------------------------------------------------- corrections

    def corrections(self) -> pd.DataFrame:
        """Every label correction and drop, oldest first, undone ones included, with its
        `state` against the built catalog ("applied", "pending" until the next `run`,
        "superseded by cN", "undone"); see `pipelines.data.corrections.COLUMNS`."""
        from pipelines.data.corrections import list_corrections

        return list_corrections(self.config)

    def correct(
        self,
        item_id: str,
        label: str | None = None,
        drop: bool = False,
        who: str | None = None,
        note: str = "",
    ) -> dict[str, Any]:
        """Mark catalog item `item_id` for a new `label`, or to be dropped (`drop=True`); it
        applies at the next `python -m pipelines run`, never in the source folder.

        Returns the correction (correction_id, item_id, action, label, previous_label, who,
        when, note, ...). `who` defaults to the operating-system user. Raises LookalikeError
        for an unknown item, an empty label, or both or neither of `label` and `drop`.
        """
        from pipelines.data.corrections import InvalidCorrectionError, add_correction

        if drop and label is not None:
            raise InvalidCorrectionError(
                f"give a label or drop=True, not both (got label {label!r}) — a drop takes no label"
            )
        action = "drop" if drop else "relabel"
        return add_correction(self.config, item_id, action, label=label, who=who, note=note)

    def undo_correction(self, correction_id: str, who: str | None = None) -> dict[str, Any]:
        """Undo correction `correction_id` ("c3"); it stays listed as undone. Returns it."""
        from pipelines.data.corrections import undo_correction

        return undo_correction(self.config, correction_id, who=who)

    @cached_property
    def sources(self) -> PhotoSources:
        """What photo searches read: the catalog, and indexes, models and maps loaded on first
        use; the colours, the category classifier and the far-from-catalog check."""
        from pipelines.data.colour import read_colours
        from pipelines.models.classify import load_category_model

        built = self.config.extractors_built()
        indexes = _Lazy([n for n in built if self.config.embeddings_path(n).exists()], self.index)
        maps = _Lazy(
            [n for n in built if self.config.map_path(n).exists()],
            lambda name: pd.read_parquet(self.config.map_path(name)),
        )
        models = _Lazy([*self.available_models(), *_heads(built)], self.extractor)
        return PhotoSources(
            catalog=self.catalog,
            indexes=indexes,
            models=models,
            config=self.config,
            maps=maps,
            colours=read_colours(self.config, self.catalog["item_id"].to_numpy()),
            category_model=load_category_model(self.config),
            far=_far_check(indexes),
        )

    def available_models(self) -> list[str]:
        """Extractors whose model can be loaded: InceptionV3 always (its weights ship with the
        install), the custom CNN once it has been trained."""
        have = ["inception_v3"]
        if self.config.custom_cnn_path.exists():
            have.append("custom_cnn")
        return have

    def _read_all(self, paths: Sequence[str | Path]) -> list[tuple[str, bytes | str]]:
        """(name, bytes) per file of `photo_files`, or (name, problem) when it cannot be read."""
        out: list[tuple[str, bytes | str]] = []
        for name, path, problem in photo_files(paths):
            if problem or path is None:
                out.append((name, problem or f"{name}: unreadable"))
                continue
            try:
                out.append((name, _read(path)))
            except LookalikeError as err:
                out.append((name, str(err)))
        return out


class _Lazy(Mapping[str, Any]):
    """A read-only mapping whose values load on first access: a search touches only the
    extractors it needs (loading InceptionV3 takes ~10 s)."""

    def __init__(self, names: Sequence[str], load: Callable[[str], Any]) -> None:
        self._names = list(dict.fromkeys(names))
        self._load = load
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


def _far_check(indexes: Mapping[str, Index]) -> Any:
    """The far-from-catalog check of the reference index, or None without that index."""
    from pipelines.search.novelty import REFERENCE, far_check

    return far_check(indexes[REFERENCE]) if REFERENCE in indexes else None


def _heads(built: Sequence[str]) -> list[str]:
    """The metric head, when this catalog has it: it embeds photos from InceptionV3's vector."""
    return [name for name in built if name not in ("inception_v3", "custom_cnn")]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise LookalikeError(f"{path}: cannot read file ({err.strerror or err})") from None


def _check_extractor(name: str) -> None:
    if name not in EXTRACTORS:
        raise LookalikeError(
            f"unknown extractor {name!r}; valid extractors: {', '.join(EXTRACTORS)}"
        )
