"""Duplicates: exact by hash, near by embedding (exact or inverted-file pair search), pair
scores, background normalisation, grouping and the quarantine with its undo."""
