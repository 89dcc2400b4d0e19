"""Progress on stderr, so that stdout carries results only."""
from __future__ import annotations

import contextlib
import sys

from lightning.pytorch.callbacks import TQDMProgressBar


def _on_stderr(name: str):
    """TQDMProgressBar's ``name`` method, with the bar it makes writing to stderr (Lightning
    passes ``file=sys.stdout`` when it creates each bar)."""
    make = getattr(TQDMProgressBar, name)

    def init(self):
        with contextlib.redirect_stdout(sys.stderr):
            return make(self)

    return init


class StderrProgressBar(TQDMProgressBar):
    """Lightning's progress bar on stderr: stdout carries results only."""

    init_sanity_tqdm = _on_stderr("init_sanity_tqdm")
    init_train_tqdm = _on_stderr("init_train_tqdm")
    init_predict_tqdm = _on_stderr("init_predict_tqdm")
    init_validation_tqdm = _on_stderr("init_validation_tqdm")
    init_test_tqdm = _on_stderr("init_test_tqdm")
