"""Duplicates: exact by hash, near by embedding (exact or inverted-file pair search), pair
scores against a background set, the size-aware ``--threshold auto`` (autothreshold), grouping,
which member to keep and why (facts, keep), and the quarantine with its undo."""
