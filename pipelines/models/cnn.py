"""The custom CNN's architecture: a residual classifier with a unit embedding layer, and a
convolutional autoencoder for catalogs without labels. Builds Keras models; reads and writes
nothing."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from pipelines.config import Config
from pipelines.errors import LookalikeError

# Residual stages after the stride-4 stem; each halves the map. 128 px -> 8x8x256 at the end.
STEM_WIDTH = 32
STAGE_WIDTHS = (64, 128, 256)
# Dropout on the pooled features before the embedding layer (training only).
DROPOUT = 0.3
# Batch-norm running statistics follow the weights within ~10 steps: with only ~50 steps an
# epoch, Keras's default 0.99 lags so far behind that validation accuracy swings wildly.
BN_MOMENTUM = 0.9


def _conv_bn_relu(x, filters: int, dtype: str, *, strides: int = 1, relu: bool = True):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, dtype=dtype)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, dtype=dtype)(x)
    return layers.ReLU(dtype=dtype)(x) if relu else x


def _residual_block(x, filters: int, dtype: str):
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, dtype=dtype)(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, dtype=dtype)(shortcut)
    y = _conv_bn_relu(x, filters, dtype)
    y = _conv_bn_relu(y, filters, dtype, relu=False)
    return layers.ReLU(dtype=dtype)(layers.Add(dtype=dtype)([y, shortcut]))


def _encoder(inputs, dtype: str):
    """(S, S, 3) in 0-255 -> (S/16, S/16, STAGE_WIDTHS[-1]) feature map."""
    # The model owns its preprocessing: callers feed raw pixel values as float32.
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale", dtype=dtype)(inputs)
    x = _conv_bn_relu(x, STEM_WIDTH, dtype, strides=2)
    # Pooling early keeps most of the compute at 1/4 resolution, where clothing shape and
    # texture are still clear but convolutions cost 16x less than at full size.
    x = layers.MaxPooling2D(2, padding="same", dtype=dtype)(x)
    for i, width in enumerate(STAGE_WIDTHS):
        if i:
            x = layers.MaxPooling2D(2, padding="same", dtype=dtype)(x)
        x = _residual_block(x, width, dtype)
    return x


def _embedding_head(features, config: Config, dropout: float = 0.0):
    """Pooled features -> dense -> unit length: the `embedding` output used for retrieval."""
    x = layers.GlobalAveragePooling2D(name="pool", dtype="float32")(features)
    if dropout:
        x = layers.Dropout(dropout, name="pool_dropout", dtype="float32")(x)
    x = layers.Dense(config.cnn_embedding_dim, name="embedding_dense", dtype="float32")(x)
    return layers.UnitNormalization(name="embedding", dtype="float32")(x)


def classifier_model(n_classes: int, config: Config, dtype: str) -> keras.Model:
    size = config.cnn_image_size
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    features = _encoder(inputs, dtype)
    embedding = _embedding_head(features, config, DROPOUT)
    # Softmax over a linear map of the unit vector: classes become directions on the sphere,
    # which is exactly what cosine retrieval on the embedding compares.
    probs = layers.Dense(n_classes, activation="softmax", name="category", dtype="float32")(
        embedding
    )
    return keras.Model(inputs, [embedding, probs], name="custom_cnn")


def build_classifier(n_classes: int, config: Config) -> keras.Model:
    """The custom CNN classifier, float32, untrained.

    Parameters
    ----------
    n_classes:
        Width of the softmax head (>= 2).
    config:
        `cnn_image_size` (S) and `cnn_embedding_dim` (D) shape the model.

    Returns
    -------
    keras.Model
        Input (batch, S, S, 3) float32 pixel values in 0-255 (rescaled inside the model).
        Outputs [embedding (batch, D) unit-length float32, category (batch, n_classes) probs].
    """
    if n_classes < 2:
        raise LookalikeError(f"a classifier needs at least 2 classes, got {n_classes}")
    return classifier_model(n_classes, config, "float32")


def autoencoder_model(config: Config, dtype: str) -> keras.Model:
    size = config.cnn_image_size
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    features = _encoder(inputs, dtype)
    embedding = _embedding_head(features, config)
    x = features
    for width in (*reversed(STAGE_WIDTHS[:-1]), STEM_WIDTH, 16):
        x = layers.UpSampling2D(2, dtype=dtype)(x)
        x = _conv_bn_relu(x, width, dtype)
    x = layers.Conv2D(3, 3, padding="same", dtype="float32")(x)
    if x.shape[1] != size:
        # "same" pooling rounds odd sizes up, so the decoder can overshoot; resize back.
        x = layers.Resizing(size, size, dtype="float32")(x)
    reconstruction = layers.Activation("sigmoid", name="reconstruction", dtype="float32")(x)
    return keras.Model(inputs, [embedding, reconstruction], name="custom_cnn_autoencoder")


def build_autoencoder(config: Config) -> keras.Model:
    """The convolutional autoencoder for unlabelled catalogs, float32, untrained.

    Returns
    -------
    keras.Model
        Input (batch, S, S, 3) float32 in 0-255. Outputs [embedding (batch, D) unit-length,
        reconstruction (batch, S, S, 3) in 0-1]. The encoder's bottleneck is globally pooled
        and projected by the dense layer `embedding_dense` (fitted by PCA after training).
    """
    return autoencoder_model(config, "float32")


def training_precision() -> str:
    """bfloat16 compute where the CPU has native bf16 units (about twice as fast), else float32.

    Only training uses it: the saved model is float32, so inference is the same everywhere.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "float32"
