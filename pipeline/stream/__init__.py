"""The stream runtime: the worker process that consumes calls.raw and the control topics, drives the
chain over raw record batches and lands the results exactly once (docs/ARCHITECTURE.md, "The worker").

app      the Kafka side: consumer group, control duty, dead-letter producer, `run_worker`
worker   StreamWorker, the broker-independent logic (assigned, take, tick, revoked, shutdown)
control  ControlState: every control partition read whole, event-time watermarks
runner   PartitionRunner: one partition's batches through the chain into the lake
offsets  OffsetGuard: gaps and replays of the input offsets
cli      `callpipe worker` and `callpipe ingest`
"""
