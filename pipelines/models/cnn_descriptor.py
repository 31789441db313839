"""The custom CNN's retrieval vector: its category embedding joined with a whitened,
multi-layer appearance descriptor, both averaged over the photo and its mirror image. Fits
and applies the descriptor; reads and writes one .npz (models/custom_cnn_descriptor.npz).

Why: a classifier's embedding keeps only the category, so two t-shirts look alike whatever
their colour or print, and a photo is hard to find again after a crop, a flip or a colour
change (copy R@1 0.34 on validation with the embedding alone). The classifier's feature maps
still hold that appearance. Global average pools of the four stage outputs (stem 32-d,
stages 64-, 128- and 256-d), each unit length, concatenated and PCA-whitened on the train
split, find copies (R@1 0.955 alone) but not categories (P@10 0.63). Joining both unit vectors
with weights sqrt(1 - share) and sqrt(share) makes the cosine (1 - share) * category cosine
+ share * appearance cosine. Measured on validation (341 queries against the train photos,
200 altered copies), the 112 px model trained 48 epochs:

    share      0      0.3    0.4    0.5    0.6    0.7
    P@10     0.850  0.850  0.849  0.845  0.841  0.828
    copy R@1 0.34   0.855  0.910  0.940  0.940  0.945

`DEFAULT_SHARE` is, among the shares whose P@10 stays within 0.01 of the embedding alone, the
one that finds the most copies, the smaller on a tie (the 36-epoch model chose the same, at
0.836 / 0.935 against 0.844 alone; 0.6 was 0.013 below).
Tried on a 96 px model at share 0.5 and not taken: max pooling, GeM (p = 3), square-rooted
pools, and whitening shrunk or cut to 256 dimensions moved P@10 by -0.008 to +0.004 and copy
R@1 by -0.07 to +0.015, none clearly better than plain average pools.
Averaging each photo with its mirror image (embedding 0.25 -> 0.35 copy R@1 on an earlier
model) costs a second forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts import atomic_path
from pipelines.errors import LookalikeError

DEFAULT_SHARE = 0.5
# Eigenvalues below this fraction of the largest are floored there before whitening, so
# near-empty directions are not blown up into noise.
EIGEN_FLOOR = 1e-6
# Layers whose input is a stage's output map, in order: the three max-pools (stem, stage 1,
# stage 2) and the global pool (stage 3). Found by type and name, not by auto-numbered names.
POOL_LAYER = "pool"
EMBEDDING_LAYER = "embedding"
CATEGORY_LAYER = "category"


def stage_layers(model: Any) -> list[Any]:
    """The layers whose inputs are the classifier's stage output maps, finest first."""
    pools = [layer for layer in model.layers if type(layer).__name__ == "MaxPooling2D"]
    try:
        return [*pools, model.get_layer(POOL_LAYER)]
    except ValueError as err:
        raise LookalikeError(
            "the custom CNN has no 'pool' layer — retrain it with `python -m pipelines train "
            "--force`"
        ) from err


def feature_model(model: Any) -> Any:
    """A Keras model sharing the classifier `model`'s layers:
    image -> [embedding, category probabilities, stage maps...]."""
    import keras

    maps = [layer.input for layer in stage_layers(model)]
    outputs = [model.get_layer(EMBEDDING_LAYER).output, model.get_layer(CATEGORY_LAYER).output]
    return keras.Model(model.inputs, [*outputs, *maps])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pooled_parts(maps: list[np.ndarray]) -> np.ndarray:
    """(n, h_i, w_i, c_i) stage maps -> (n, sum c_i): each map's global average, unit length."""
    return np.concatenate([_unit(np.asarray(m).mean(axis=(1, 2))) for m in maps], axis=1)


@dataclass(frozen=True)
class Descriptor:
    """Whitening of the pooled stage maps and the appearance share of the joined vector.

    mean : (c,) mean of the train rows' pooled parts; projection : (c, c) whitening matrix
    (eigenvectors over sqrt(eigenvalues)); share : weight of the appearance cosine.
    """

    mean: np.ndarray
    projection: np.ndarray
    share: float

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def appearance(self, parts: np.ndarray) -> np.ndarray:
        """(n, c) pooled parts -> (n, c) unit appearance vectors."""
        return _unit((np.asarray(parts, np.float64) - self.mean) @ self.projection)

    def join(self, embedding: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """(n, d) category embeddings and (n, c) pooled parts -> (n, d + c) unit float32."""
        joined = np.concatenate(
            [
                np.sqrt(1.0 - self.share) * _unit(embedding),
                np.sqrt(self.share) * self.appearance(parts),
            ],
            axis=1,
        )
        return joined.astype(np.float32)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, projection=self.projection, share=self.share)

    @classmethod
    def load(cls, path: Path) -> Descriptor:
        try:
            with np.load(path) as data:
                return cls(data["mean"], data["projection"], float(data["share"]))
        except (OSError, KeyError, ValueError) as err:
            raise LookalikeError(
                f"cannot read the custom CNN's descriptor {path} ({err}) — rebuild it with "
                f"`python -m pipelines train --force`"
            ) from err


def fit_descriptor(parts: np.ndarray, share: float = DEFAULT_SHARE) -> Descriptor:
    """PCA whitening of (n, c) pooled parts (train rows, each averaged with its mirror)."""
    parts = np.asarray(parts, np.float64)
    if len(parts) < 2:
        raise LookalikeError(f"the descriptor needs at least 2 training photos, got {len(parts)}")
    mean = parts.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov((parts - mean).T))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    floor = max(float(values[0]), 1e-12) * EIGEN_FLOOR
    projection = vectors / np.sqrt(np.maximum(values, floor))
    return Descriptor(mean, projection, float(share))


@dataclass(frozen=True)
class Features:
    """What one pass of a photo and its mirror image gives (each pair summed; maps of the
    mirror image mirrored back, so cells line up with the photo's)."""

    embedding: np.ndarray  # (n, d)
    probs: np.ndarray  # (n, classes), the mean of the two passes
    maps: list[np.ndarray]  # (n, h_i, w_i, c_i), finest first


def forward(model: Any, images: np.ndarray) -> Features:
    """Float32 (n, S, S, 3) images and their mirror images through a `feature_model`."""
    both = np.concatenate([images, images[:, :, ::-1]])
    outs = [np.asarray(o, np.float32) for o in model.predict_on_batch(both)]
    n = len(images)
    return Features(
        embedding=outs[0][:n] + outs[0][n:],
        probs=(outs[1][:n] + outs[1][n:]) / 2,
        maps=[m[:n] + m[n:, :, ::-1] for m in outs[2:]],
    )


def pooled_features(
    model: Any, pixels: np.ndarray, batch: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embedding sums, mean probabilities, pooled parts) of (n, S, S, 3) pixels through a
    `feature_model`, in batches (the stem's maps alone are ~0.3 MB a photo)."""
    embeddings, probs, parts = [], [], []
    for start in range(0, len(pixels), batch):
        out = forward(model, np.asarray(pixels[start : start + batch], np.float32))
        embeddings.append(out.embedding)
        probs.append(out.probs)
        parts.append(pooled_parts(out.maps))
    return np.concatenate(embeddings), np.concatenate(probs), np.concatenate(parts)
