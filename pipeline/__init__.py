"""callpipe stream side: faust app and agents (thin), pure record transforms, codecs, settings, CLI."""
