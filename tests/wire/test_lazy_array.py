"""``wire.lazy_array``: an image encoded chunk by chunk decodes to exactly what encoding it
in one piece gives, at every array-length boundary of CBOR's head encoding; ``load`` decodes
any image to what ``cbor2.loads`` gives, with the one array handed to its builder item by
item."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from discoverd.wire.lazy_array import LazyArray, dumps, load

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


def _as_built(obj: object, path: tuple[str, ...]) -> object:
    """What ``load(..., path, build=tuple)`` must give for ``cbor2.loads``'s ``obj``."""
    if not path:
        return tuple(obj) if isinstance(obj, list) else obj
    if not isinstance(obj, dict):
        return obj
    return {k: _as_built(v, path[1:]) if k == path[0] else v for k, v in obj.items()}


VALUES = st.recursive(
    st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=30), st.text(max_size=5),
              st.none(), st.booleans()),
    lambda inner: st.one_of(st.lists(inner, max_size=30),
                            st.dictionaries(st.sampled_from(["store", "versions", "x"]), inner,
                                            max_size=4)),
    max_leaves=60,
)


@given(VALUES, st.booleans(), st.integers(1, 5))
def test_load_is_loads_with_the_array_at_path_built_item_by_item(
        obj: object, lazy: bool, chunk: int) -> None:
    """Any image, whether the path leads to an array, to something else or nowhere; the
    array written in one piece or as an indefinite-length one, chunk by chunk."""
    def lazify(value: object, path: tuple[str, ...]) -> object:
        if not path:
            if lazy and isinstance(value, list):
                return LazyArray([value[i:i + chunk] for i in range(0, len(value), chunk)])
            return value
        if not isinstance(value, dict):
            return value
        return {k: lazify(v, path[1:]) if k == path[0] else v for k, v in value.items()}

    path = ("store", "versions")
    encoded = dumps(lazify(obj, path))
    want = _as_built(cbor2.loads(encoded), path)
    assert load(encoded, path, tuple) == want


def test_load_hands_the_items_over_one_at_a_time_and_drains_what_build_leaves() -> None:
    rows = [[i, b"v"] for i in range(10)]
    encoded = dumps({"a": 1, "store": {"versions": LazyArray([rows[:4], rows[4:]])}, "z": 2})
    seen: list[object] = []

    def build(items: object) -> str:
        for item in items:  # type: ignore[attr-defined]
            seen.append(item)
            if len(seen) == 3:
                return "built"
        return "all"

    assert load(encoded, ("store", "versions"), build) == {
        "a": 1, "store": {"versions": "built"}, "z": 2}
    assert seen == rows[:3]


def test_load_of_a_truncated_image_fails_as_loads_does() -> None:
    encoded = dumps({"store": {"versions": LazyArray([[[1, b"a"], [2, b"b"]]])}, "z": 2})
    for cut in range(len(encoded)):
        with pytest.raises((cbor2.CBORDecodeError, EOFError)):
            load(encoded[:cut], ("store", "versions"), list)
