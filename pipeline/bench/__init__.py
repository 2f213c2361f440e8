"""Benchmarks: callpipe measured against its physical limit and the tools users would pick instead.

`callpipe bench stream|detect|jobs [--quick] [--json]` runs the modules here (`stream`, `detect`,
`jobs`); each returns plain data (a dict) and a table. Application code never imports this
package; the command imports it only when run. Scripts beside them (bench_sink.py,
bench_codec.py) measure single stages.
"""
