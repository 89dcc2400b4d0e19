"""Measuring models: the benchmark suite (images and video), threshold calibration,
analysis behind the averages, clustering views and cost measurements."""
