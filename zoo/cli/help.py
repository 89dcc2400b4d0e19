"""Short ``zoo COMMAND --help``: the command's own options first, then a handful of common
--model.* (and, for training, --trainer.* / --data.*) ones; ``--help-all`` lists everything.

LightningCLI gives every subcommand parser the options of the Trainer, the model and the data
module; the parser class below (``LightningCLI(parser_class=...)``) only changes how its help
is printed, never what it parses.
"""
from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser

FULL_HELP = {"on": False}  # set by `--help-all`
DESCRIPTION = ("zoo: image similarity and retrieval: embed, index, search, compare, find duplicates, "
               "train and benchmark timm backbones")  # `zoo --help`, above the list of commands

COMMON_MODEL = ["model.backbone", "model.head", "model.pretrained", "model.weights", "model.data_config"]
COMMON_TRAINING = [
    "trainer.max_epochs", "trainer.accelerator", "trainer.devices", "trainer.precision", "trainer.logger",
    "trainer.default_root_dir", "data.root", "data.batch_size", "data.samples_per_class", "data.val_fraction",
]
TRAINING_COMMANDS = {"fit", "validate", "test", "predict"}
CORE_PREFIXES = ("trainer", "model", "data", "seed_everything")


def _command(prog: str) -> str:
    return prog.split()[-1] if prog else ""


class ZooArgumentParser(LightningArgumentParser):
    def format_help(self) -> str:
        command = _command(self.prog)
        if FULL_HELP["on"] or not command or command == "zoo":
            return super().format_help()
        actions = {a.dest: a for a in self._actions}
        own = [a for a in self._actions
               if not a.dest.split(".")[0] in CORE_PREFIXES and a.dest not in ("help",)]
        common = [actions[d] for d in COMMON_MODEL if d in actions]
        if command in TRAINING_COMMANDS:
            common += [actions[d] for d in COMMON_TRAINING if d in actions]
        formatter = self._get_formatter()
        formatter.add_usage(f"zoo {command} [options]", [], [])
        formatter.add_text(self.description)
        formatter.start_section("options")
        formatter.add_arguments([actions["help"], *own] if "help" in actions else own)
        formatter.end_section()
        formatter.start_section("common model options" + (" and training options" if command in TRAINING_COMMANDS else ""))
        formatter.add_arguments(common)
        formatter.end_section()
        if command == "fit":
            formatter.add_text("--wandb [--wandb_project P]: log to Weights & Biases (Lightning's WandbLogger, offline "
                               "unless W&B is set up; run named after the architecture; best checkpoint as artifact)")
        hidden = sum(1 for a in self._actions if a.dest.split(".")[0] in CORE_PREFIXES) - len(common)
        formatter.add_text(f"{hidden} more options (--model.*, --trainer.*: accelerator, devices, precision, ...; "
                           f"--data.*): zoo {command} --help-all")
        return formatter.format_help()
