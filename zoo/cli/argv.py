"""The argv conventions zoo adds to jsonargparse's: space-separated lists (``--images a b``),
bare switches (``--overwrite``), ``-k N``, dashes in option names (``--move-to``), and
``zoo fit --wandb``. Which options are switches and lists is read from the commands'
signatures (zoo.cli.options)."""
from __future__ import annotations

import json

from zoo.cli.commands import COMMANDS, ZooTrainer
from zoo.cli.options import list_options, switches

METHODS = {name: getattr(ZooTrainer, name) for name in COMMANDS}
SWITCHES = {**switches(METHODS), "fit": {"--wandb"}}  # fit's --wandb: expand_fit_wandb below
LIST_OPTIONS = list_options(METHODS)
LOG_DIR = "runs"  # where fit/validate/test log (and checkpoint) unless --trainer.default_root_dir says otherwise


def normalise_argv(argv: list[str]) -> list[str]:
    """Space-separated list values (a repeated list option adds to it), bare switches and ``-k N``
    (jsonargparse wants JSON lists, ``--switch true`` and ``--k``)."""
    if not argv:
        return argv
    lists, bare = LIST_OPTIONS.get(argv[0], set()), SWITCHES.get(argv[0], set())
    out, i, given = [], 0, {}
    while i < len(argv):
        a = argv[i]
        if a == "-k":
            a = "--k"
        elif a.startswith("--") and "-" in a[2:]:  # --move-to == --move_to
            name, eq, value = a.partition("=")
            a = "--" + name[2:].replace("-", "_") + eq + value
        if a in bare and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out += [a, "true"]
            i += 1
            continue
        if a in lists:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("-"):
                j += 1
            values = argv[i + 1 : j]
            if a in given and not (len(values) == 1 and values[0].lstrip().startswith("[")):
                values = given[a] + values  # a repeated list option adds to it: --protect a --protect b
                out[out.index(a) + 1] = json.dumps(values)
            else:
                out += [a, values[0] if len(values) == 1 and values[0].lstrip().startswith("[") else json.dumps(values)]
            given[a] = values
            i = j
            continue
        out.append(a)
        i += 1
    return out


def expand_fit_wandb(argv: list[str]) -> list[str]:
    """`zoo fit --wandb [--wandb_project P]`: Lightning's WandbLogger, logging the best checkpoint."""
    if not argv or argv[0] != "fit" or "--wandb" not in argv:
        return argv
    from zoo.report.wandb_log import wandb_logger_args  # wandb, only when asked for

    rest, i = [], 1
    while i < len(argv):  # `--wandb true|false` (normalised from a bare `--wandb`)
        if argv[i] == "--wandb":
            value = argv[i + 1] if i + 1 < len(argv) else "true"
            i += 2
            if value.lower() in ("false", "0", "no"):
                return ["fit", *rest, *argv[i:]]
            continue
        rest.append(argv[i])
        i += 1
    project = "zoo"
    if "--wandb_project" in rest:
        i = rest.index("--wandb_project")
        project = rest[i + 1]
        del rest[i : i + 2]
    return ["fit", *wandb_logger_args(LOG_DIR, project), *rest]  # under --trainer.default_root_dir if given
