"""A bounded memory of values derived from identifiers (E.164 forms, number facts, tokens, IP
prefixes), owned by whoever runs the chain, never module-global.

Its keys are plaintext identifiers, so it is personal data held in memory: it is bounded (it
forgets everything when full, which costs a few seconds of recomputation at carrier rates), it
lives and dies with its owner (a stream worker, one `callpipe ingest` run), and `forget()` drops
it whole when an account is erased, so an erased subject's identifiers do not linger in a
long-running worker. Erasures are rare; forgetting everything is simpler to prove than tracking
which entries came from which account.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

DEFAULT_ENTRIES = 262_144


class Memo:
    def __init__(self, max_entries: int = DEFAULT_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._values: dict[Hashable, Any] = {}
        self.peek = self._values.get  # type: ignore[method-assign,assignment]

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value remembered for `key`, computing and remembering it on a miss."""
        values = self._values
        try:
            return values[key]
        except KeyError:
            pass
        value = compute()
        if len(values) >= self.max_entries:
            self.forget()
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
        if len(values) >= self.max_entries:
            self.forget()
        values[key] = value
        return value

    def forget(self) -> None:
        self._values.clear()
