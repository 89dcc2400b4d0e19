"""Options that several commands share, declared and documented once.

A command method names the shared options it takes (``@command("backbone", "batch_size")``);
the decorator adds them to its signature and their help to its docstring, where
jsonargparse reads both, so ``zoo COMMAND --batch_size N`` and ``--help`` come out the same
for every command. The method receives them as keyword arguments.

What the argv conventions need (which options are bare switches, which take space-separated
lists) is read from the same signatures: :func:`switches` and :func:`list_options`.
"""
from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

from zoo.data.defaults import BATCH_SIZE, NUM_WORKERS


@dataclass(frozen=True)
class Option:
    annotation: Any
    default: Any
    help: str


SHARED: dict[str, Option] = {
    "backbone": Option(Optional[str], None, "shortcut for --model.backbone."),
    "checkpoint": Option(Optional[str], None, "a trained zoo checkpoint to use instead of the --model.* config."),
    "overwrite": Option(bool, False, "replace existing output files."),
    "batch_size": Option(int, BATCH_SIZE, "images per forward pass (on a GPU, 256 or more keeps it busy)."),
    "num_workers": Option(int, NUM_WORKERS, "loader processes that read and decode files (on a GPU machine, "
                                            "about the number of CPU cores)."),
    "protect": Option(Optional[list[str]], None, "folders whose files are never moved (and are kept first), "
                                                 "e.g. --protect ~/originals (repeat or list several)."),
    "keep_rules": Option(Optional[list[str]], None, "which member of a group to keep, rule by rule (default: pixels "
                                                    "compression sharpness date: most pixels, least compressed, "
                                                    "sharpest, oldest EXIF date)."),
    "runtime": Option(str, "auto", "torch, onnx or openvino (CPU, exact fp32), or auto."),
    "calibration": Option(str, "zoo-calibration.json", "the calibration file (`zoo calibrate` writes it, "
                                                       "`--threshold auto` reads it)."),
}
MODEL_OPTIONS = ("backbone", "checkpoint")
LOADER_OPTIONS = ("batch_size", "num_workers")


def command(*shared: str) -> Callable:
    """Give a Trainer method the ``shared`` options (after its own) and the ``datamodule``
    parameter LightningCLI passes to every command; their help joins the docstring's Args. The
    method takes them as keyword arguments (named, or in ``**options``)."""
    unknown = [name for name in shared if name not in SHARED]
    if unknown:
        raise KeyError(f"not shared options: {unknown}")

    def wrap(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn).parameters.values()  # a shared option's own receiver is
               if p.kind is not p.VAR_KEYWORD and p.name not in shared]  # declared by SHARED
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=SHARED[name].default,
                                   annotation=SHARED[name].annotation) for name in shared]
        datamodule = inspect.Parameter("datamodule", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Any)

        @functools.wraps(fn)
        def method(self, *args, datamodule: Any = None, **kwargs):
            return fn(self, *args, **kwargs)

        method.__signature__ = inspect.Signature([*own, *added, datamodule])
        method.__annotations__ = {**fn.__annotations__, **{n: SHARED[n].annotation for n in shared},
                                  "datamodule": Any}
        doc = inspect.cleandoc(fn.__doc__ or "")
        if shared:
            lines = "".join(f"\n    {name}: {SHARED[name].help}" for name in shared)
            doc = doc + lines if "Args:" in doc else f"{doc}\n\nArgs:{lines}"
        method.__doc__ = doc
        method.shared_options = shared
        return method

    return wrap


def _types(fn: Callable) -> dict[str, Any]:
    hints = typing.get_type_hints(fn)
    return {name: hints.get(name) for name in inspect.signature(fn).parameters if name not in ("self", "model")}


def _is_list_of_str(tp: Any) -> bool:
    if typing.get_origin(tp) is typing.Union:
        return any(_is_list_of_str(a) for a in typing.get_args(tp) if a is not type(None))
    return typing.get_origin(tp) is list and typing.get_args(tp) in ((str,), ())


def switches(methods: dict[str, Callable]) -> dict[str, set[str]]:
    """Per command, the options of type bool: a bare ``--name`` means ``--name true``."""
    return {cmd: {f"--{n}" for n, tp in _types(fn).items() if tp is bool} for cmd, fn in methods.items()}


def list_options(methods: dict[str, Callable]) -> dict[str, set[str]]:
    """Per command, the options that take a list of strings: ``--name a b c``."""
    return {cmd: {f"--{n}" for n, tp in _types(fn).items() if _is_list_of_str(tp)} for cmd, fn in methods.items()}
