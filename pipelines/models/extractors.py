"""Feature extractors: input size, preprocessing and weights of each, and how it embeds pixels."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipelines import artifacts, commands
from pipelines.config import Config
from pipelines.data.images import BBox, ImageSource, load_array
from pipelines.errors import LookalikeError


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero instead of NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class Extractor(ABC):
    """Turns (n, S, S, 3) uint8 RGB arrays into (n, dim) float32 unit rows.

    Subclasses set `name`, `input_size` and `dim`, and implement `_load` (build the model once),
    `preprocess` and `forward`. The batch stage and the live path share `embed_arrays`, and
    both get their pixels from `pipelines.data.images.load_array`.

    `live=True` (the processes that answer uploads) runs the network as its LiteRT export
    (`pipelines.models.lite`, read without importing TensorFlow) where the subclass has one
    (`_load_lite`); the batch stages run Keras.
    """

    name: ClassVar[str]
    input_size: ClassVar[int]
    dim: ClassVar[int]

    def __init__(self, config: Config, live: bool = False) -> None:
        self.config = config
        self.live = live
        self._model: Any = None
        self._keras: Any = None

    @property
    def model(self) -> Any:
        """The model, loaded on first use: Keras, or its LiteRT export when `live` (both have
        `predict_on_batch`, returning the same outputs in the same order)."""
        if self._model is None:
            self._model = self._load_lite() if self.live else self._load()
        return self._model

    @property
    def keras_model(self) -> Any:
        """The Keras model whatever `live` says (explaining a match reads its layers)."""
        if not self.live:
            return self.model
        if self._keras is None:
            self._keras = self._load_keras()
        return self._keras

    @abstractmethod
    def _load(self) -> Any:
        """Build the model and load its weights."""

    def _load_lite(self) -> Any:
        """The live model (default: the Keras one)."""
        return self._load()

    def _load_keras(self) -> Any:
        """The Keras model of a live extractor, without touching the live one."""
        return self._load()

    @abstractmethod
    def weights_id(self) -> str:
        """A hash that changes whenever the weights change (goes into embedding manifests)."""

    @abstractmethod
    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 -> the float32 tensor the model takes."""

    def describe(self) -> dict[str, Any]:
        """Preprocessing and model facts recorded in the embedding manifest."""
        return {"input_size": self.input_size, "dim": self.dim, "resize": "bilinear, centre crop"}

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's embedding output on preprocessed tensors, not yet normalised."""
        # predict_on_batch runs Keras's compiled predict step: no eager op-by-op dispatch.
        out = self.model.predict_on_batch(x)
        if isinstance(out, list | tuple):
            out = out[0]
        return np.asarray(out)

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 -> (n, dim) float32 unit rows."""
        images = np.asarray(images)
        expected = (self.input_size, self.input_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
            raise LookalikeError(
                f"{self.name} takes (n, {self.input_size}, {self.input_size}, 3) uint8 images, "
                f"got {images.shape} {images.dtype}"
            )
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return normalize_rows(self.forward(self.preprocess(images)))

    def load_pixels(self, source: ImageSource, bbox: BBox | None = None) -> np.ndarray:
        """One image file or upload -> (S, S, 3) uint8, exactly as the batch stage loads it."""
        return load_array(source, self.input_size, bbox=bbox, max_pixels=self.config.max_pixels)

    def embed_images(
        self,
        sources: Sequence[ImageSource],
        bboxes: Sequence[BBox | None] | None = None,
        batch: int | None = None,
    ) -> np.ndarray:
        """The live path: files or uploaded bytes -> (n, dim) unit rows, decoded and embedded
        `batch` images at a time (default: all at once), so thousands of photos never sit
        decoded in memory together."""
        boxes = list(bboxes) if bboxes is not None else [None] * len(sources)
        if len(boxes) != len(sources):
            raise ValueError(f"{len(sources)} images but {len(boxes)} boxes")
        step = batch or max(len(sources), 1)
        empty = np.zeros((0, self.input_size, self.input_size, 3), np.uint8)
        out = []
        for lo in range(0, len(sources), step):
            pixels = [
                self.load_pixels(s, b)
                for s, b in zip(sources[lo : lo + step], boxes[lo : lo + step], strict=True)
            ]
            out.append(self.embed_arrays(np.stack(pixels)))
        return np.concatenate(out) if out else self.embed_arrays(empty)


# The manifest stage of InceptionV3's saved whole model (`InceptionV3Extractor._read_or_build`).
MODEL_STAGE = "inception_model"


class InceptionV3Extractor(Extractor):
    """InceptionV3 pool3 features (2048-d) with Google's 2015 ImageNet weights, offline."""

    name = "inception_v3"
    input_size = 299
    dim = 2048

    @property
    def weights_path(self) -> Path:
        return self.config.inception_weights_path

    def embed_with_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, S, S, 3) uint8 -> (n, 2048) unit vectors and their (n, 8, 8, 2048) last maps, in
        one pass (`pipelines.search.garment` finds an upload's garment in the map)."""
        from pipelines.search.garment import inception_vectors_and_maps

        return inception_vectors_and_maps(self, images)

    def last_maps(self, images: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 -> (n, 8, 8, 2048) float32 `mixed10` maps (the live model has
        them as its second output; Keras's through `explain.feature_maps`)."""
        if not self.live:
            from pipelines.search.explain import feature_maps

            return feature_maps(self, images)
        out = self.model.predict_on_batch(self.preprocess(np.asarray(images)))
        return np.asarray(out[1], dtype=np.float32)

    def weights_id(self) -> str:
        self.ensure_weights()
        return artifacts.artifact_hash(self.weights_path, commands.embed(self.name))

    def ensure_weights(self) -> None:
        """Convert the weights once into a Keras weights file under artifacts/models/."""
        from pipelines.models import inception_weights as iw

        source = "fid" if self.config.inception_weights == "fid" else "keras-imagenet"
        if artifacts.is_fresh(self.weights_path, "weights", {"source": source}, {}):
            return
        start = time.perf_counter()
        if self.config.inception_weights == "fid":
            pt_path = iw.find_fid_weights()
            print(f"inception_v3: converting {pt_path.name} to Keras weights (once)...")
            model = iw.build_inception_v3()
            iw.load_fid_weights(model, pt_path)
            extra = {"converted_from": str(pt_path), "source_sha1": iw.FID_WEIGHTS_SHA1}
        else:
            import keras

            print("inception_v3: downloading Keras's ImageNet weights (needs internet)...")
            try:
                model = keras.applications.InceptionV3(
                    include_top=False, weights="imagenet", pooling="avg"
                )
            except Exception as err:  # Keras raises several kinds on a failed download
                raise LookalikeError(
                    f"could not download Keras's ImageNet weights ({err}); use the default "
                    f"offline weights (inception_weights='fid')"
                ) from err
            extra = {"converted_from": "keras.applications imagenet"}
        with artifacts.atomic_path(self.weights_path) as tmp:
            model.save_weights(tmp)
        artifacts.write_manifest(
            self.weights_path,
            "weights",
            {"source": source},
            {},
            extra={**extra, "seconds": round(time.perf_counter() - start, 1)},
        )

    def _load(self) -> Any:
        from pipelines.models import model_cache

        self.ensure_weights()
        # Shared with every extractor of this process that runs the same weights (the head).
        return model_cache.shared(self.weights_path, self._read_or_build)

    def _load_lite(self) -> Any:
        from pipelines.models import lite, model_cache

        path = self.config.lite_model_path(InceptionV3Extractor.name)
        inputs = {"weights": self.weights_id()}
        return model_cache.shared(
            path, lambda: lite.read_or_export(path, inputs, self._with_last_map)
        )

    def _with_last_map(self) -> Any:
        """The Keras model with its `mixed10` map as a second output (what is exported live)."""
        import keras

        from pipelines.search.explain import INCEPTION_LAYER

        model = self._load()
        last_map = model.get_layer(INCEPTION_LAYER).output
        return keras.Model(model.inputs, [model.outputs[0], last_map])

    def _read_or_build(self) -> Any:
        """The whole model saved beside the weights (`config.inception_model_path`) when it was
        built from these weights by this Keras version; else built, then saved for the next
        start. Reading it took 1.5-2.2 s against 1.9-3.3 s to build the graph (Keras's
        InceptionV3, then cloned with the 2015 pooling) and load the weights, in fresh
        processes; the two give the same bits."""
        import keras

        path = self.config.inception_model_path
        params = {"source": self.config.inception_weights, "keras": keras.__version__}
        inputs = {"weights": self.weights_id()}
        if artifacts.is_fresh(path, MODEL_STAGE, params, inputs):
            try:
                return keras.saving.load_model(path, compile=False)
            except Exception:  # an unreadable file of any kind is rebuilt
                pass
        model = self._build()
        try:
            with artifacts.atomic_path(path) as tmp:
                model.save(tmp)
            artifacts.write_manifest(path, MODEL_STAGE, params, inputs)
        except OSError:
            pass  # a read-only artifacts folder: built again at the next start
        return model

    def _build(self) -> Any:
        from pipelines.models import inception_weights as iw

        if self.config.inception_weights == "fid":
            model = iw.build_inception_v3()
        else:
            import keras

            model = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg")
        model.load_weights(self.weights_path)
        return model

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        from pipelines.models import inception_weights as iw

        # Google's 2015 graph scales by 128, Keras's port by 127.5: each weights source keeps
        # the scale it was trained with (one function each, both tested).
        if self.config.inception_weights == "fid":
            return iw.preprocess(images)
        return iw.preprocess_keras(images)

    def describe(self) -> dict[str, Any]:
        scale = "x/128-1" if self.config.inception_weights == "fid" else "x/127.5-1"
        return {**super().describe(), "weights": self.config.inception_weights, "scale": scale}


# The custom CNN's forward passes take a multiple of this many rows. oneDNN picks its kernels by
# batch size, and a photo's vector came out ~1e-8 different in a pass whose size is not a
# multiple of 4 (measured on the default build's CNN: sizes 1, 2, 3, 5, 7, 13 and 31 against
# 32; every multiple of 4 gave the same bits, whatever the other photos). Padded, a photo's
# vector does not depend on what it was embedded with: an update's few new photos, a run
# resumed after a kill (which re-embeds whole batches) and a full rebuild agree bit for bit.
# InceptionV3 differed only in a pass of one photo; it is not padded (an upload would pay for it).
CNN_BATCH_MULTIPLE = 4


class CustomCNNExtractor(Extractor):
    """Our CNN trained on the catalog: its category embedding (`cnn_embedding_dim` wide, 128
    by default) joined with its appearance descriptor (`pipelines.models.cnn_descriptor`), each
    photo averaged with its mirror image; and a category head."""

    name = "custom_cnn"

    def __init__(self, config: Config, live: bool = False) -> None:
        super().__init__(config, live)
        self._manifest: dict[str, Any] | None = None
        self._descriptor: Any = None
        self._features: Any = None

    @property
    def input_size(self) -> int:  # type: ignore[override]
        # The saved model's own input side: a model trained at another size than the current
        # setting (before `train` reruns) must still get the pixels it was built for.
        saved = artifacts.read_manifest(self.config.custom_cnn_path) or {}
        return int(saved.get("image_size") or self.config.cnn_image_size)

    @property
    def dim(self) -> int:  # type: ignore[override]
        # Likewise the saved model's own embedding width, not the current setting's.
        saved = artifacts.read_manifest(self.config.custom_cnn_path) or {}
        return int(
            saved.get("vector_dim") or saved.get("embedding_dim") or self.config.cnn_embedding_dim
        )

    @property
    def manifest(self) -> dict[str, Any]:
        """The trained model's manifest (class names, kind, image size)."""
        if self._manifest is None:
            _ = self.model
        assert self._manifest is not None
        return self._manifest

    def weights_id(self) -> str:
        return artifacts.artifact_hash(self.config.custom_cnn_path, commands.TRAIN)

    def _load(self) -> Any:
        # Shared with every extractor of this process that runs the same model (the head).
        model, self._manifest, self._descriptor, self._features = self._shared_keras()
        return model

    def _build(self) -> tuple[Any, dict[str, Any], Any, Any]:
        """(model, its manifest, descriptor or None, feature model or None), from the files."""
        from pipelines.models import cnn_descriptor
        from pipelines.models.train import load_custom_cnn

        model, manifest = load_custom_cnn(self.config)
        descriptor = self._read_descriptor(manifest)
        if descriptor is None:
            return model, manifest, None, None
        return model, manifest, descriptor, cnn_descriptor.feature_model(model)

    def _read_descriptor(self, manifest: dict[str, Any]) -> Any:
        """The appearance descriptor the model's `manifest` names, or None when it has none."""
        from pipelines.models import cnn_descriptor

        saved = manifest.get("descriptor")
        if not saved:
            return None
        path = self.config.custom_cnn_descriptor_path
        if not path.is_file() or artifacts.sha256_file(path) != saved.get("sha256"):
            raise LookalikeError(
                f"{path} is missing or is not the one trained with "
                f"{self.config.custom_cnn_path} — rerun `{commands.TRAIN} --force`"
            )
        return cnn_descriptor.Descriptor.load(path)

    def _load_lite(self) -> Any:
        """The LiteRT export of the network the forward pass runs: the feature model (with a
        descriptor) or the classifier itself; no TensorFlow when the export is current."""
        from pipelines.models import lite, model_cache

        path = self.config.lite_model_path(self.name)
        inputs = {"model": self.weights_id()}

        def load() -> tuple[Any, dict[str, Any], Any]:
            manifest = artifacts.read_manifest(self.config.custom_cnn_path) or {}
            descriptor = self._read_descriptor(manifest)
            return lite.read_or_export(path, inputs, self._exported), manifest, descriptor

        runner, self._manifest, self._descriptor = model_cache.shared(path, load)
        self._features = runner if self._descriptor is not None else None
        return runner

    def _exported(self) -> Any:
        """The Keras network a live model is exported from (the feature model, else the
        classifier)."""
        model, _, descriptor, features = self._shared_keras()
        return model if descriptor is None else features

    def _shared_keras(self) -> tuple[Any, dict[str, Any], Any, Any]:
        from pipelines.models import model_cache

        return model_cache.shared(self.config.custom_cnn_path, self._build)

    def _load_keras(self) -> Any:
        return self._shared_keras()[0]

    @property
    def descriptor(self) -> Any:
        """The appearance descriptor (`pipelines.models.cnn_descriptor.Descriptor`), or None when
        the vector is the category embedding alone (an autoencoder, or share 0)."""
        _ = self.model
        return self._descriptor

    @property
    def feature_model(self) -> Any:
        """With a descriptor: the Keras model image -> [embedding, probs, stage maps...]."""
        _ = self.model
        return self._features

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x)[0]

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(vectors, class probabilities or None) of preprocessed images, in passes padded to a
        multiple of CNN_BATCH_MULTIPLE rows (copies of the first; their outputs dropped)."""
        n = len(x)
        pad = (-n) % CNN_BATCH_MULTIPLE
        if pad:
            x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
        vectors, probs = self._forward_padded(x)
        return vectors[:n], None if probs is None else probs[:n]

    def _forward_padded(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        from pipelines.models import cnn_descriptor

        if self.descriptor is None:
            out = self.model.predict_on_batch(x)
            if isinstance(out, list | tuple) and len(out) > 1:
                return np.asarray(out[0]), np.asarray(out[1], dtype=np.float32)
            return np.asarray(out[0] if isinstance(out, list | tuple) else out), None
        features = cnn_descriptor.forward(self._features, x)
        parts = cnn_descriptor.pooled_parts(features.maps)
        return self._descriptor.join(features.embedding, parts), features.probs

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        # The model rescales inside (its first layer), so it owns its preprocessing.
        return images.astype(np.float32)

    @property
    def class_names(self) -> list[str]:
        """Category names of the classifier head; empty for an autoencoder."""
        return list(self.manifest.get("class_names") or [])

    def embed_and_classify(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(n, S, S, 3) uint8 -> (unit vectors, class probabilities or None)."""
        vectors, probs = self._forward(self.preprocess(images))
        return normalize_rows(vectors), probs


class InceptionHeadExtractor(InceptionV3Extractor):
    """The metric-learned head on InceptionV3 (`pipelines/models/head.py`): an image goes through
    InceptionV3 exactly as for `inception_v3`, then through the head. The embed stage skips
    the images and applies the head to the stored InceptionV3 vectors (`embed_catalog`)."""

    # Its vector is not the average of a map: no garment box from it (uploads find the garment
    # with InceptionV3's own map, then feed the crop's base vectors to the head).
    embed_with_maps = None

    name = "inception_head"

    def __init__(self, config: Config, live: bool = False) -> None:
        super().__init__(config, live)
        self._head: Any = None

    @property
    def head(self) -> Any:
        """The trained head (`head.Head`), loaded on first use."""
        if self._head is None:
            from pipelines.models.head import load_head

            self._head = load_head(self.config)
        return self._head

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.head.dim

    def weights_id(self) -> str:
        return artifacts.artifact_hash(self.config.head_path, commands.RUN)

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        """(n, 299, 299, 3) uint8 -> (n, dim): InceptionV3, then the head (and, when the head
        fuses the custom CNN, the CNN on the same pixels resized to its own input side)."""
        images = np.asarray(images)
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        base = super().embed_arrays(images)  # InceptionV3's unit vectors (forward unchanged)
        cnn = None
        if self.head.cnn_share > 0:
            from PIL import Image

            cnn_ext = self._cnn()
            side = cnn_ext.input_size
            small = np.stack(
                [
                    np.asarray(Image.fromarray(p).resize((side, side), Image.Resampling.BILINEAR))
                    for p in images
                ]
            )
            cnn = cnn_ext.embed_arrays(small)
        return self.from_base(base, cnn)

    def embed_images(
        self, sources: Sequence[ImageSource], bboxes: Sequence[BBox | None] | None = None
    ) -> np.ndarray:
        """The live path, exactly as the batch stage: InceptionV3 on its own pixels and, when
        the head fuses the custom CNN, the CNN on pixels loaded at its own side (not the 299
        px ones resized, which differ slightly from what the catalog's vectors saw)."""
        boxes = bboxes if bboxes is not None else [None] * len(sources)
        if not len(sources):
            return np.zeros((0, self.dim), np.float32)
        pixels = np.stack([self.load_pixels(s, b) for s, b in zip(sources, boxes, strict=True)])
        base = InceptionV3Extractor.embed_arrays(self, pixels)
        cnn = self._cnn().embed_images(sources, boxes) if self.head.cnn_share > 0 else None
        return self.from_base(base, cnn)

    def _cnn(self) -> Extractor:
        if getattr(self, "_cnn_ext", None) is None:
            self._cnn_ext = CustomCNNExtractor(self.config, self.live)
        return self._cnn_ext

    def from_base(self, vectors: np.ndarray, cnn: np.ndarray | None = None) -> np.ndarray:
        """(n, 2048) InceptionV3 unit vectors (and the custom CNN's, when the head fuses
        them) -> (n, dim) head vectors."""
        return self.head.apply(vectors, cnn)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "head": str(self.config.head_path.name)}

    def embed_catalog(self, force: bool = False) -> Any:
        """The embed stage for this extractor: the head over embeddings/inception_v3.npy."""
        from pipelines.models.head import run_embed_head

        return run_embed_head(self.config, force=force)


REGISTRY: dict[str, type[Extractor]] = {
    InceptionV3Extractor.name: InceptionV3Extractor,
    CustomCNNExtractor.name: CustomCNNExtractor,
    InceptionHeadExtractor.name: InceptionHeadExtractor,
}


def wants_categories(ext: Extractor) -> bool:
    """Whether embedding with `ext` also predicts each item's category (categories.parquet):
    the custom CNN when it was trained with a classifier head."""
    return isinstance(ext, CustomCNNExtractor) and bool(ext.class_names)


ModelStep = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def model_step(ext: Extractor, categories: bool) -> ModelStep:
    """The embed stage's model step, shared by its local and Ray engines and the embedding
    benchmark: (b, S, S, 3) uint8 -> ((b, dim) unit vectors, (b, classes) probabilities, or
    None when `categories` is False)."""
    if categories:
        return ext.embed_and_classify  # type: ignore[attr-defined]
    return lambda pixels: (ext.embed_arrays(pixels), None)


def get_extractor(name: str, config: Config, live: bool = False) -> Extractor:
    """The extractor called `name`; an unknown name lists the valid ones. `live`: for a
    process answering uploads (its networks run as their LiteRT exports)."""
    if name not in REGISTRY:
        raise LookalikeError(
            f"unknown extractor {name!r}; valid extractors: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[name](config, live)
