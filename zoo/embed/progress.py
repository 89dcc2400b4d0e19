"""Progress on stderr, so that stdout carries results only."""
from __future__ import annotations

import contextlib
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


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

    # embedding: images per second beside the bar's batches and ETA
    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        super().on_predict_epoch_start(trainer, pl_module)
        self._images, self._start = 0, time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if isinstance(outputs, dict) and "index" in outputs:
            self._images += len(outputs["index"]) + len(outputs.get("skipped", []))
            elapsed = time.perf_counter() - self._start
            bar = self.predict_progress_bar
            if bar is not None and elapsed > 0 and self._should_update(batch_idx + 1, bar.total):
                bar.set_postfix_str(f"{self._images / elapsed:.1f} img/s", refresh=False)


def progress_on_stderr(trainer: L.Trainer) -> None:
    """Swap the progress bar Lightning chose by default (tqdm, or Rich where the rich package is
    installed; both write to stdout) for :class:`StderrProgressBar`. A bar the user configured
    as a callback of another kind is left alone."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) in (TQDMProgressBar, RichProgressBar):
            trainer.callbacks[i] = StderrProgressBar()
