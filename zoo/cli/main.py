"""The ``zoo`` command: LightningCLI with zoo's commands as Trainer methods (zoo.cli.commands).

    zoo fit --config configs/triplet/resnet50.yaml
    zoo index --images DIR --out my.index --backbone resnet50
    zoo search --query q.jpg --index my.index -k 10 --grid out.png
    zoo compare --images a.jpg b.jpg c.jpg [--matrix out]
    zoo duplicates --images DIR --threshold 0.95
    zoo calibrate --images DIR
    zoo benchmark --backbone resnet50 vgg16
    zoo export --checkpoint best.ckpt
    zoo list 'res*'
    zoo serve --index my.index [--host 127.0.0.1 --port 8000]

Options of the model (``--model.*``), the trainer (``--trainer.*``: accelerator, devices,
precision, ...) and the data (``--data.*``) come from the classes' signatures. Every error a
user can cause ends as one ``zoo: error:`` line and exit 2 (main below).
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import threading
from typing import Optional

from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from zoo.cli.argv import LOG_DIR, expand_fit_wandb, normalise_argv
from zoo.cli.commands import COMMANDS, ZooTrainer
from zoo.cli.help import DESCRIPTION, FULL_HELP, ZooArgumentParser
from zoo.data.datamodule import ZooDataModule
from zoo.embed.progress import progress_on_stderr
from zoo.embed.quiet import quiet_lightning
from zoo.errors import ZooError
from zoo.index.persist import current_precision, current_runtime
from zoo.model.inference import inference_setting
from zoo.model.module import ZooModel
from zoo.model.runtime import check_runtime, keep_recorded
from zoo.model.start_validation import StartValidation


class FitConfigSaver(SaveConfigCallback):
    """Save the run's config next to its logs, for training only."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


TRAINING_COMMANDS = {"fit", "validate", "test"}
INTERRUPTED = threading.Event()  # Ctrl-C was pressed during this command
LOCK_KEEPERS = ("logging",)  # modules whose lock bookkeeping an exception could leave locked


def on_sigint(signum, frame) -> None:
    """Ctrl-C: remembered (Lightning turns an interrupt into SystemExit(1)) and raised where the
    main thread is, unless it is inside the logging module (its fork hooks take and release its
    lock while loader workers start): an exception there can leave the lock held and the
    shutdown's own log lines wait for it forever. StopWhenInterrupted raises it at the next batch."""
    INTERRUPTED.set()
    if frame is not None and frame.f_globals.get("__name__") in LOCK_KEEPERS:
        return
    raise KeyboardInterrupt


class StopWhenInterrupted(Callback):
    """Ctrl-C raises KeyboardInterrupt wherever the main thread is; where that is code whose
    exceptions Python ignores (the logging module's fork hooks, while loader workers start), the
    interrupt would be lost and the run go on, and inside lock bookkeeping on_sigint only
    remembers it. This raises it at the next batch."""

    def _check(self, *args, **kwargs) -> None:
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt

    on_train_batch_end = on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _check


def logs_follow_root_dir(trainer) -> None:
    """A logger whose save_dir was left at LOG_DIR writes under --trainer.default_root_dir when it
    is given (CSVLogger by default, WandbLogger with --wandb); checkpoints follow the logger."""
    if trainer.default_root_dir is None:
        return
    for logger in trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]:
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and init_args.get("save_dir") == LOG_DIR:
            init_args.save_dir = str(trainer.default_root_dir)


FAST_CPU_COMMANDS = {"index", "search", "compare", "duplicates", "calibrate", "serve", "check"}  # bf16 on the CPU with ZOO_CPU_BF16=1


def default_precision(subcommand: str, cfg) -> str:
    """The precision a command embeds at when --trainer.precision is not given
    (zoo.model.inference decides): a command that adds to an index or searches it (index
    --update, search, serve, duplicates --index) uses the index's own where the device computes
    it; zoo serve runs its model on the CPU; zoo benchmark (and commands that embed nothing)
    keep fp32 on the CPU."""
    on_index = {"index": cfg.get("out") if cfg.get("update") else None, "search": cfg.get("index"),
                "check": cfg.get("index"), "serve": cfg.get("index"), "duplicates": cfg.get("index")}.get(subcommand)
    recorded = current_precision(on_index) if on_index else None
    accelerator = "cpu" if subcommand == "serve" else cfg.trainer.accelerator
    return inference_setting(accelerator, recorded=recorded, cpu_bf16=subcommand in FAST_CPU_COMMANDS).precision


class ZooCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        extra = {"model", "datamodule"}
        return {**LightningCLI.subcommands(), **{name: extra for name in COMMANDS}}

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if "weights_only" in cfg and cfg.weights_only is None:  # fit/validate/test --ckpt_path: never unpickled
            cfg.weights_only = True
        if self.subcommand in TRAINING_COMMANDS:
            logs_follow_root_dir(cfg.trainer)
        else:  # no runs/lightning_logs for index, search, ...
            cfg.trainer.logger = False
            if cfg.trainer.precision is None:  # the user's --trainer.precision always wins
                cfg.trainer.precision = default_precision(self.subcommand, cfg)
            if "runtime" in cfg:  # zoo.model.runtime; index --update: the index's own unless asked
                cfg.runtime = check_runtime(cfg.runtime)
                if self.subcommand == "index" and cfg.get("update") and cfg.get("out"):
                    cfg.runtime = keep_recorded(cfg.runtime, current_runtime(cfg.out))

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "fit":
            trainer.callbacks.append(StartValidation())  # scores the starting model; keeps it if best
        progress_on_stderr(trainer)
        trainer.callbacks.append(StopWhenInterrupted())
        return trainer

    def after_fit(self) -> None:
        from zoo.report.wandb_log import finish_fit_logger

        finish_fit_logger(self.trainer)
        for cb in self.trainer.checkpoint_callbacks:
            if cb.monitor and cb.best_model_path:
                print(f"zoo: best checkpoint ({cb.monitor} = {float(cb.best_model_score):.4f}): {cb.best_model_path}")
            elif not cb.monitor and (cb.last_model_path or cb.best_model_path):  # saved every epoch
                print(f"zoo: last checkpoint (resume with --ckpt_path): {cb.last_model_path or cb.best_model_path}")

    def before_fit(self) -> None:
        """A WandbLogger (`zoo fit --wandb`) runs offline by default, is named after the
        architecture and records the trainer and data settings."""
        from zoo.report.wandb_log import prepare_fit_logger

        cfg = self.config.get("fit", self.config)
        settings = {key: cfg[key].as_dict() for key in ("trainer", "data") if cfg.get(key) is not None}
        prepare_fit_logger(self.trainer, self.model, json.loads(json.dumps(settings, default=str)))

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({
            "trainer.max_epochs": 10,
            "trainer.num_sanity_val_steps": -1,  # validate the starting model in full (zoo.model.start_validation)
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": LOG_DIR}},
            "trainer.callbacks": [
                # the best epoch by validation mAP ...
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"monitor": "val/map", "mode": "max", "filename": "best-{epoch}-{step}"}},
                # ... and last.ckpt after every epoch, to resume from (--ckpt_path .../last.ckpt)
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"filename": "last", "enable_version_counter": False}},
            ],
        })


def main(argv: Optional[list[str]] = None) -> int:
    argv = expand_fit_wandb(normalise_argv(list(sys.argv[1:] if argv is None else argv)))

    FULL_HELP["on"] = "--help_all" in argv
    argv = ["--help" if a == "--help_all" else a for a in argv]
    saved_argv, sys.argv = sys.argv, [saved_argv_name(), *argv]
    INTERRUPTED.clear()

    saved_handler = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    saved_unraisable = sys.unraisablehook
    sys.unraisablehook = quiet_ignored_interrupts(saved_unraisable)
    try:
        with quiet_lightning():
            ZooCLI(
                ZooModel,
                ZooDataModule,
                trainer_class=ZooTrainer,
                parser_class=ZooArgumentParser,
                save_config_callback=FitConfigSaver,
                save_config_kwargs={"overwrite": True},
                seed_everything_default=0,
                auto_configure_optimizers=False,
                parser_kwargs={"description": DESCRIPTION, "exit_on_error": False,
                               **{c: {"exit_on_error": False} for c in ZooCLI.subcommands()}},
            )
    except ZooError as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    except ArgumentError as e:  # a bad option or value, as one line
        message = " ".join(str(e).split())
        print(f"zoo: error: {message[:400]} (see `zoo {argv[0] if argv else ''} --help`)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if INTERRUPTED.is_set():
            print("zoo: interrupted", file=sys.stderr)
            return 130
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except pickle.UnpicklingError:  # `fit --ckpt_path` read with weights_only (Lightning's loader)
        print("zoo: error: refusing to load the checkpoint: it holds Python objects beyond tensors and plain values "
              "(loading it could run code); only zoo/Lightning checkpoints are accepted", file=sys.stderr)
        return 2
    except OSError as e:  # a file system refusal that no check foresaw: one line, no traceback
        print(f"zoo: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.unraisablehook = saved_argv, saved_unraisable
        if saved_handler is not None:
            signal.signal(signal.SIGINT, saved_handler)
    return 0


def quiet_ignored_interrupts(fallback):
    """An unraisable-exception hook: Ctrl-C raised where Python ignores exceptions (logging's fork
    hooks while loader workers start) would print "Exception ignored ... Traceback"; after a
    Ctrl-C it prints nothing (StopWhenInterrupted stops the run at the next batch, with one line).
    Anything else goes to ``fallback``."""
    def hook(unraisable) -> None:
        if not (INTERRUPTED.is_set() and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            fallback(unraisable)
    return hook


def saved_argv_name() -> str:
    """The program's path when it is a script file (Lightning's multi-device launcher starts the
    other processes with it), else "zoo"."""
    name = sys.argv[0] if sys.argv else ""
    return name if os.path.isfile(name) and os.path.basename(name) == "zoo" else "zoo"


if __name__ == "__main__":
    sys.exit(main())
