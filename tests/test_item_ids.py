"""Matching item ids (`pipelines.data.item_ids`) gives what a pandas lookup by string gives,
for catalog ids (16 hex digits, read as integers) and any other id (the string path), in
every container a stage passes (arrow and object Series, numpy text arrays, lists)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from pipelines.data.item_ids import hex_keys, match_rows

HEX = st.text("0123456789abcdef", min_size=16, max_size=16)
# Near misses of a catalog id: other lengths, upper case, other characters.
ODD = st.one_of(
    st.text("0123456789abcdef", min_size=0, max_size=20),
    st.text("0123456789abcdefABCDEFxyz-_ é", min_size=1, max_size=18),
)


def _forms(ids: list[str]) -> list:
    """The containers the stages hand to match_rows."""
    forms = [
        ids,
        pd.Series(ids, dtype="str"),
        pd.Series(ids, dtype=object),
        pd.Index(ids),
        np.asarray(ids, dtype=str),
    ]
    if all(i.isascii() for i in ids):
        forms.append(np.asarray(ids, dtype="S").astype("S32"))
    return forms


def _expected(known: list[str], wanted: list[str]) -> np.ndarray:
    return pd.Index(known, dtype=object).get_indexer(pd.Index(wanted, dtype=object))


@seed(20261207)
@settings(max_examples=150, deadline=None)
@given(
    known=st.lists(st.one_of(HEX, HEX, HEX, ODD), max_size=30, unique=True),
    extra=st.lists(st.one_of(HEX, ODD), max_size=10),
    data=st.data(),
)
def test_rows_match_a_string_lookup_in_every_container(
    known: list[str], extra: list[str], data: st.DataObject
) -> None:
    # Near misses of the known ids themselves: one digit more or less, upper case.
    near = [f(i) for i in known for f in (lambda i: i + "0", lambda i: i[:-1], str.upper)]
    near = [i for i in near if i not in known]
    # A few of the others at a time, so all-hex lists (the integer path) are drawn often.
    others = data.draw(st.lists(st.sampled_from(extra + near), max_size=3)) if extra + near else []
    wanted = data.draw(st.permutations(known + others))
    expected = _expected(known, wanted)
    for k in _forms(known):
        for w in _forms(wanted):
            rows = match_rows(k, w)
            assert rows.dtype == np.int64
            np.testing.assert_array_equal(rows, expected)


def test_catalog_ids_take_the_integer_path_and_others_do_not() -> None:
    ids = ["0123456789abcdef", "ffffffffffffffff"]
    np.testing.assert_array_equal(hex_keys(ids), [0x0123456789ABCDEF, 2**64 - 1])
    np.testing.assert_array_equal(hex_keys(pd.Series(ids, dtype="str")), hex_keys(ids))
    for odd in ("0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg"):
        assert hex_keys([ids[0], odd]) is None, odd
    # A 100k-id catalog's rows come back in order (the sorted path and its inverse).
    rng = np.random.default_rng(0)
    many = [f"{v:016x}" for v in rng.integers(0, 2**63, 100_000)]
    order = rng.permutation(len(many))
    np.testing.assert_array_equal(match_rows(many, [many[i] for i in order]), order)


@pytest.mark.parametrize("ids", [["0123456789abcdef"] * 2, ["a", "b", "a"]])
def test_an_id_held_twice_is_refused(ids: list[str]) -> None:
    with pytest.raises(ValueError, match="twice"):
        match_rows(ids, ["a"])
