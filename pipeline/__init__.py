"""callpipe stream side: the worker, pure record transforms, codecs, settings, CLI (docs/ARCHITECTURE.md)."""
