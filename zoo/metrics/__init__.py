"""Metrics as pure functions with torchmetrics wrappers: retrieval ranking metrics and
copy-detection pair metrics, and the per-pair false-match rate that sizes a threshold to a
library (falsematch)."""
