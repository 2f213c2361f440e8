"""What analytics keeps of an attribute map: every key and every value redacted as free text
(pipeline.detect: each PII span replaced by its label), the entries in the map's order.

Keys are free text as much as values are: a carrier writes what it likes there
("callback:+14155550123": "yes", "bob@example.com": "vip"). A key goes through `redact_value`
with the call's regions as a value does, remembered under the same memo entry ("attr", text,
regions): one text gives one answer, key or value. Secret-named keys never get here
(`pipeline.secret_names.strip_secrets` removes them with their values before the vault).

Two keys may redact to one text ("a@example.com", "b@example.org": "[EMAIL]" twice). No entry is
lost: a key that redaction left as it was keeps its name, and a redacted key that is already
taken gets the first free "#n" suffix (n from 2), in the map's order ("[EMAIL]", "[EMAIL]#2").
Which address was which is not kept. The row form (`redact_attributes`) and the column form
(pipeline/pseudonymize_columns.py) both name them with `distinct_keys`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.detect import redact_value, rememberable
from pipeline.memo import Memo

ENTRY = "attr"  # the memo entry's kind: (ENTRY, text, regions); pipeline.memo forgets it first


def redacted(text: str, hint: tuple[str, ...], memo: Memo) -> str:
    """`redact_value(text, hint)`, remembered when `rememberable` (short texts repeat)."""
    entry = (ENTRY, text, hint)
    found: str | None = memo.peek(entry)
    if found is None:
        found = redact_value(text, hint)
        if rememberable(text):
            memo.put(entry, found)
    return found


def redact_attributes(value: Mapping[str, str], hint: tuple[str, ...], memo: Memo) -> dict[str, str]:
    """The analytics form of an attribute map of a call whose regions are `hint`."""
    out: dict[str, str] = {}
    peek = memo.peek
    for k, v in value.items():
        # only rememberable texts are ever remembered, so a text found is one: the look-up
        # comes first, `redacted` (and `rememberable`) on a miss only
        name = peek((ENTRY, k, hint))
        if name is None:
            name = redacted(k, hint, memo)
        text = peek((ENTRY, v, hint))
        if text is None:
            text = redacted(v, hint, memo)
        out[name] = text
    if len(out) != len(value):  # two keys redacted to one text (rare): name them apart
        keys = list(value)
        names = distinct_keys(keys, [redacted(k, hint, memo) for k in keys])
        return dict(zip(names, (redacted(v, hint, memo) for v in value.values()), strict=True))
    return out


def distinct_keys(keys: Sequence[str], names: Sequence[str]) -> list[str]:
    """The analytics names of a map's `keys` (distinct), given what each redacts to (`names`):
    a key redaction left alone keeps its name; a redacted one already taken, the first free
    "#n" (n from 2), in order."""
    taken = {k for k, name in zip(keys, names, strict=True) if k == name}
    out = []
    for key, name in zip(keys, names, strict=True):
        if key != name:
            base, n = name, 1
            while name in taken:
                n += 1
                name = f"{base}#{n}"
            taken.add(name)
        out.append(name)
    return out
