"""Validate the starting model before the first training epoch, and keep it as the best
checkpoint until an epoch beats it.

Lightning's sanity check runs the validation loop before training (``zoo fit`` sets
``num_sanity_val_steps: -1``: the whole validation set) but throws its numbers away. This
callback logs them (step 0, ``val/*`` with ``epoch`` -1) and saves the starting model as
``start.ckpt`` registered as every monitoring ModelCheckpoint's best so far: a fine-tuning
run that only makes things worse ends with the starting weights as its best checkpoint.
"""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class StartValidation(L.Callback):
    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        full = all(s == float("inf") or s >= n for s, n in zip(
            [trainer.num_sanity_val_steps] * len(trainer.num_val_batches), trainer.num_val_batches))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if not full or not metrics:
            if metrics:
                print("zoo: note: the sanity check saw part of the validation set; the starting model is not "
                      "scored (--trainer.num_sanity_val_steps -1 validates it all)", file=sys.stderr)
            return
        print("zoo: starting model: " + ", ".join(f"{k} = {v:.4f}" for k, v in sorted(metrics.items())), file=sys.stderr)
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": -1}, step=trainer.global_step)
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.monitor or cb.monitor not in metrics or cb.best_model_path:
                continue  # resumed runs keep their own best
            if cb.save_top_k == 0 or not cb.dirpath:
                continue
            path = str(Path(cb.dirpath) / "start.ckpt")
            trainer.save_checkpoint(path)
            score = torch.tensor(metrics[cb.monitor])
            cb.best_k_models = {path: score}
            cb.kth_best_model_path, cb.kth_value = path, score
            cb.best_model_path, cb.best_model_score = path, score
