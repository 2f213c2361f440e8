"""DuckDB batch jobs over the lake: retention, anonymize, erase, export, compact, report, audit."""
