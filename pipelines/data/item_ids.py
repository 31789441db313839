"""Finding catalog items by id: which row of one id list each id of another is.

Every stage that updates in place matches the previous catalog's ids against the current
one's (maps, clusters, the approximate index, each per extractor), and at 100k items a pandas
`get_indexer` over arrow strings costs ~45 ms a call: 17 calls were half a second of a
4-second update. Item ids are 16 hex digits of a content hash (`catalog.ID_DIGITS`), so they
are read as 64-bit integers and matched by sorting those (~5 ms at 100k); any other id falls
back to a hashed lookup.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

HEX_DIGITS = 16
# Each ASCII byte's value as a lowercase hex digit (as `hexdigest` writes them); 255 where it is
# none (the padding byte 0 included), so "0A" and "0a" stay two ids as they are two strings.
_NIBBLE = np.full(256, 255, dtype=np.uint8)
for _digits, _first in ((b"0123456789", 0), (b"abcdef", 10)):
    _NIBBLE[np.frombuffer(_digits, np.uint8)] = np.arange(_first, _first + len(_digits))

Ids = Sequence[str] | np.ndarray | pd.Series | pd.Index


def _text_grid(ids: Ids) -> np.ndarray | None:
    """(n, HEX_DIGITS) uint8 bytes of the ids when every one is HEX_DIGITS ASCII characters,
    else None; read from the arrow or numpy buffer without a Python string per id."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "US":
        width, unit = ids.dtype.itemsize, (4 if ids.dtype.kind == "U" else 1)
        chars = width // unit
        if chars < HEX_DIGITS:
            return None
        grid = np.ascontiguousarray(ids).reshape(-1).view(f"u{unit}").reshape(-1, chars)
        if grid[:, HEX_DIGITS:].any() or (grid[:, :HEX_DIGITS] > 127).any():
            return None
        return grid[:, :HEX_DIGITS].astype(np.uint8)
    try:
        arr = pa.array(ids if isinstance(ids, pd.Series | pd.Index) else np.asarray(ids, object))
    except (pa.ArrowException, TypeError, ValueError):
        return None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count or arr.type not in (pa.string(), pa.large_string()):
        return None
    width = np.int64 if arr.type == pa.large_string() else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset : arr.offset + len(arr) + 1]
    if not (np.diff(offsets) == HEX_DIGITS).all():
        return None
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.reshape(-1, HEX_DIGITS)


def hex_keys(ids: Ids) -> np.ndarray | None:
    """(n,) uint64 value of each id when every id is exactly HEX_DIGITS lowercase hex digits,
    else None."""
    if len(ids) == 0:
        return np.empty(0, dtype=np.uint64)
    grid = _text_grid(ids)
    if grid is None:
        return None
    nibbles = _NIBBLE[grid]
    if (nibbles == 255).any():
        return None
    packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    return np.ascontiguousarray(packed).view(">u8").ravel().astype(np.uint64)


def _as_text(ids: Ids) -> np.ndarray:
    if isinstance(ids, pd.Series | pd.Index):
        return ids.astype(str).to_numpy(dtype=object)
    return np.asarray(ids, dtype=object).astype(str)


def match_rows(known: Ids, wanted: Ids) -> np.ndarray:
    """(len(wanted),) int64: the row of each `wanted` id in `known`, -1 where it is absent.

    Raises ValueError when `known` holds an id twice (a row would be ambiguous).
    """
    known_keys, wanted_keys = hex_keys(known), hex_keys(wanted)
    if known_keys is None or wanted_keys is None:
        index = pd.Index(_as_text(known), dtype=object)
        if not index.is_unique:
            raise ValueError("the ids to match against hold an id twice")
        return index.get_indexer(_as_text(wanted)).astype(np.int64)
    order = np.argsort(known_keys, kind="stable")
    ordered = known_keys[order]
    if len(ordered) > 1 and (ordered[1:] == ordered[:-1]).any():
        raise ValueError("the ids to match against hold an id twice")
    if len(ordered) == 0:
        return np.full(len(wanted_keys), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(ordered, wanted_keys), len(ordered) - 1)
    return np.where(ordered[at] == wanted_keys, order[at], -1).astype(np.int64)
