"""The topic names, the one place they are spelled (docs/ARCHITECTURE.md, Topics). A worker or
test with a prefix (isolated topic sets on a shared broker) puts it in front of these."""

from __future__ import annotations

CALLS = "calls.raw"  # CallEvent, from the carriers
CONSENT = "consent.events"  # ConsentEvent, read whole by every worker
REQUESTS = "privacy.requests"  # PrivacyRequest, read whole by every worker
DLQ = "calls.dlq"  # dead letters of calls.raw, with the reason in their headers
REPLAYED = "calls.dlq.replayed"  # what `callpipe dlq replay` produced, keyed by dead letter
REPLAY_TXN = "callpipe-dlq-replay"  # the transactional id of `callpipe dlq replay`
STREAM_GROUP = "callpipe-stream"  # the stream workers' consumer group on calls.raw

# The topic each record of the Avro contracts travels on.
TOPIC_OF = {"CallEvent": CALLS, "ConsentEvent": CONSENT, "PrivacyRequest": REQUESTS}
