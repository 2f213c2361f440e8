"""Which schema field a validation rejection is about, for the dead letter's `callpipe.field`.

Asked on the rejection path only, after a record has failed (pipeline/validate.py): a good event
pays nothing for it. The answer is a field name from the schema (dotted for a nested record),
never a value; None where no single field is to blame or the checks disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.codec_json import Invalid, converter
from pipeline.identifiers import bad_identifier_field
from pipeline.reasons import Reason

RECORD = "CallEvent"
TIMES = ("started_at", "answered_at", "ended_at")


def _time_field(record: Mapping[str, Any], earliest: int, latest: int) -> str | None:
    times = {name: record.get(name) for name in TIMES}
    for name, t in times.items():
        if type(t) is int and not earliest <= t <= latest:
            return name
    started, answered, ended = (times[name] for name in TIMES)
    if type(started) is not int:
        return "started_at"
    if type(answered) is int and answered < started:
        return "answered_at"
    if type(ended) is int and (ended < started or (type(answered) is int and ended < answered)):
        return "ended_at"
    return None


def field_of(record: Any, reason: Reason, earliest: int, latest: int) -> str | None:
    """The field of a CallEvent `record` that `reason` rejected it for; `earliest` and `latest`
    are the bounds validation held its times to."""
    if not isinstance(record, Mapping):
        return None
    if reason is Reason.BAD_TIME:
        return _time_field(record, earliest, latest)
    if reason is Reason.BAD_DURATION:
        return "duration_s"
    if reason is Reason.DUPLICATE:
        return "event_id"
    if reason is Reason.BAD_ID:
        return bad_identifier_field(record, RECORD)
    if reason in (Reason.MISSING_FIELD, Reason.WRONG_TYPE, Reason.UNKNOWN_ENUM):
        try:
            converter(RECORD)(dict(record))
        except Invalid as bad:
            return bad.field if bad.reason is reason else None
        except Exception:  # a hint, not a check: a record the converter chokes on names nothing
            return None
    return None
