"""``wire.lazy_array``: an image encoded chunk by chunk decodes to exactly what encoding it
in one piece gives, at every array-length boundary of CBOR's head encoding."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.wire.lazy_array import LazyArray, dumps

ROW = st.lists(st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=40)),
               max_size=7)


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_chunk_lengths_at_every_head_size_boundary(n: int) -> None:
    rows = [[i, b"k%d" % i] for i in range(n)]
    image = {"format": 1, "versions": LazyArray([rows])}
    assert cbor2.loads(dumps(image)) == {"format": 1, "versions": rows}


@given(st.lists(st.lists(ROW, max_size=30), max_size=8), st.dictionaries(
    st.text(max_size=5), st.integers(), max_size=3))
def test_any_chunking_decodes_as_the_plain_list(chunks: list[list[list[object]]],
                                                head: dict[str, int]) -> None:
    flat = [row for chunk in chunks for row in chunk]
    encoded = dumps({**head, "versions": LazyArray(iter(chunks))})
    assert cbor2.loads(encoded) == {**head, "versions": flat}


def test_other_unknown_types_are_still_refused() -> None:
    with pytest.raises(cbor2.CBOREncodeError):
        dumps({"x": object()})
