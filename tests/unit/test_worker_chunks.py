"""How the worker cuts a take into pieces for the chain: bounded by bytes, in order, nothing lost."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from pipeline.stream.worker import CHUNK_BYTES, _chunks, _Keys


@dataclass
class Msg:
    value: bytes | None
    offset: int
    partition: int = 0
    headers: object = None
    key: bytes | None = None


@given(
    sizes=st.lists(st.sampled_from([0, 1, 400, CHUNK_BYTES // 3, CHUNK_BYTES - 1, CHUNK_BYTES]), max_size=20)
)
def test_a_piece_ends_at_the_first_message_that_brings_it_to_the_bound(sizes: list[int]) -> None:
    messages = [Msg(b"x" * n if n else None, i) for i, n in enumerate(sizes)]
    pieces = _chunks(messages)
    assert [m for piece in pieces for m in piece] == messages
    for piece in pieces:
        total = sum(len(m.value or b"") for m in piece)
        assert piece
        assert total - len(piece[-1].value or b"") < CHUNK_BYTES  # it was below the bound before its last
        if piece is not pieces[-1]:
            assert total >= CHUNK_BYTES


def test_keys_of_a_take_by_offset() -> None:
    keys = _Keys([Msg(b"a", 7, key=b"k7"), Msg(b"b", 8)])
    assert keys.get(7) == b"k7"
    assert keys.get(8) is None
    assert keys.get(9) is None
    assert dict(keys) == {7: b"k7", 8: None}
