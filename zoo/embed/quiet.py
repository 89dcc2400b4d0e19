"""Lightning without its noise: the one place that quietens its tips, known warnings and, for
library calls, its device banner."""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

RANK_ZERO = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
SEED = "lightning.fabric.utilities.seed"
WARNINGS = (
    ".*treespec.*LeafSpec.*",  # a deprecation inside Lightning itself
    ".*does not have many workers.*",  # zoo chooses its loader workers on purpose
    ".*overridden `on_after_batch_transfer`.*",  # the model's own is meant (normalises on the device)
)


def _no_tips(record: logging.LogRecord) -> bool:
    return "Tip:" not in record.getMessage()


@contextlib.contextmanager
def quiet_lightning(banner: bool = True) -> Iterator[None]:
    """Inside: no tips, no seed line, none of the known warnings; with ``banner`` False (library
    calls) not the device lines either. Everything is as before afterwards."""
    loggers = [logging.getLogger(n) for n in (*RANK_ZERO, SEED)]
    levels = [lg.level for lg in loggers]
    logging.getLogger(SEED).setLevel(logging.WARNING)
    for lg in loggers[:2]:
        lg.addFilter(_no_tips)
        if not banner:
            lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
            lg.removeFilter(_no_tips)
