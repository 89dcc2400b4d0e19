"""Metrics as pure functions with torchmetrics wrappers: retrieval ranking metrics and
copy-detection pair metrics."""
