"""Defaults of the loader options, one place for the command line and the Python API."""
BATCH_SIZE = 32  # images per forward pass (on a GPU, 256 or more keeps it busy)
NUM_WORKERS = 2  # loader processes that read and decode files (on a GPU machine, about the CPU cores)
