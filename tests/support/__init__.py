"""Helpers shared by the tests: one module per kind of fixture data or harness.

streamkit       topics, publishing, worker subprocesses and waiting on the lake (broker tests)
analysis_lake   small hand-built lakes for the analysis jobs (anonymize, risk, query, report)
ops_lake        keys, callpipe subprocess runs and lake digests for the operations jobs
sink_rows       vault/analytics rows and events for the sink and chain unit tests
"""
