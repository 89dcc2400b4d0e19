"""The version of zoo, recorded in every file it writes."""
__version__ = "0.1.0"
