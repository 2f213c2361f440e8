"""A bounded memory of values derived from identifiers (E.164 forms, number facts, tokens, IP
prefixes), owned by whoever runs the chain, never module-global.

Its keys are plaintext identifiers, so it is personal data held in memory: it is bounded (when
full it forgets the one-off values, cell areas and attribute values, or everything if those are
few; recomputing costs a few seconds at carrier rates), it
lives and dies with its owner (a stream worker, one `callpipe ingest` run), and `forget()` drops
it whole when an account is erased, so an erased subject's identifiers do not linger in a
long-running worker. Erasures are rare; forgetting everything is simpler to prove than tracking
which entries came from which account.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

DEFAULT_ENTRIES = 262_144
# Kinds of entry (a key's first item) that are one-off values: a call's cell area, an attribute
# value. They are the most numerous (a cell id per call) and the least often seen again, so a
# full memo forgets them first, and numbers, tokens and decisions, which every call of an
# account or number reads again, outlive them.
VOLATILE = frozenset({"cell", "attr"})


class Memo:
    def __init__(self, max_entries: int = DEFAULT_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._values: dict[Hashable, Any] = {}
        self.peek = self._values.get  # type: ignore[method-assign,assignment]
        self._tables: dict[Hashable, dict[Any, Any]] = {}
        self._in_tables = 0  # their entries when last counted (`settle`)

    def __len__(self) -> int:
        return len(self._values) + sum(len(table) for table in self._tables.values())

    def table(self, name: Hashable) -> dict[Any, Any]:
        """A dict of one kind of entry keyed by a plain value, part of this memo (bounded and
        forgotten with it): the column chain's form, looked up a batch at a time by `map` in C,
        where a str key costs a third of a tuple's. Whoever fills it calls `settle` after."""
        found = self._tables.get(name)
        if found is None:
            found = self._tables[name] = {}
        return found

    def settle(self) -> None:
        """Count the tables' entries again, and make room if the whole is past the bound."""
        self._in_tables = sum(len(table) for table in self._tables.values())
        if len(self._values) + self._in_tables > self.max_entries:
            self._make_room()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value remembered for `key`, computing and remembering it on a miss."""
        values = self._values
        try:
            return values[key]
        except KeyError:
            pass
        value = compute()
        if len(values) + self._in_tables >= self.max_entries:
            self._make_room()
        values[key] = value
        return value

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """The value remembered for `key`, or `default`: with `put`, the hot path's form of
        `get` (no closure per look-up). Each instance replaces this method with its dict's own
        `get` (bound in `__init__`; `forget` clears that same dict): a look-up in C, no Python
        frame, on the chain's ~10 look-ups per event."""
        return self._values.get(key, default)

    def put(self, key: Hashable, value: Any) -> Any:
        """Remember `value` for `key` (forgetting everything first when full); returns it."""
        values = self._values
        if len(values) + self._in_tables >= self.max_entries:
            self._make_room()
        values[key] = value
        return value

    def _make_room(self) -> None:
        """Full: forget the one-off values (VOLATILE), or everything when what else is held
        (the tables among it) fills more than three quarters of the bound (the same dict,
        emptied and refilled: `peek` is bound to it)."""
        values = self._values
        kept = {k: v for k, v in values.items() if not (type(k) is tuple and k and k[0] in VOLATILE)}
        values.clear()
        if len(kept) + self._in_tables <= self.max_entries * 3 // 4:
            values.update(kept)
        else:
            self._forget_tables()

    def forget(self) -> None:
        self._values.clear()
        self._forget_tables()

    def _forget_tables(self) -> None:
        for table in self._tables.values():
            table.clear()  # the same dicts: a caller holding one sees it emptied
        self._in_tables = 0
