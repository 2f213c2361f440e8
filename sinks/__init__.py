"""Parquet writing: batch -> Arrow table (pure), destination (atomic, idempotent files)."""
