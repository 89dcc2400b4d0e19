"""Name -> factory registries for backbones and heads, with entry-point plugins.

Modelled on timm's ``_registry``: a decorated factory per name, ``list("res*")`` with
wildcards, and an unknown name fails with the closest valid names. Other packages add
entries through the ``zoo.backbones`` and ``zoo.heads`` entry-point groups, e.g. in their
``pyproject.toml``::

    [project.entry-points."zoo.backbones"]
    my_net = "my_pkg.nets:my_net"      # a factory: (pretrained=..., **kwargs) -> Backbone
"""
from __future__ import annotations

import difflib
import fnmatch
from importlib.metadata import entry_points
from typing import Callable, Iterable

from zoo.errors import ZooError


class Registry:
    def __init__(self, kind: str, group: str):
        self.kind = kind  # "backbone" / "head", used in messages
        self.group = group  # entry-point group
        self._factories: dict[str, Callable] = {}
        self._plugins_loaded = False

    def register(self, fn: Callable | None = None, *, name: str | None = None):
        """Decorator: ``@registry.register`` or ``@registry.register(name="x")``."""

        def add(f: Callable) -> Callable:
            key = name or f.__name__
            if key in self._factories and self._factories[key] is not f:
                raise ZooError(f"{self.kind} '{key}' is registered twice")
            self._factories[key] = f
            return f

        return add(fn) if fn is not None else add

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._factories:
                continue
            try:
                self._factories[ep.name] = ep.load()
            except Exception as e:  # a broken plugin must not break zoo
                print(f"zoo: warning: cannot load {self.kind} plugin '{ep.name}' ({ep.value}): {e}")

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._factories)

    def list(self, pattern: str = "*") -> list[str]:
        return [n for n in self.names() if fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._factories

    def get(self, name: str, extra_names: Iterable[str] = ()) -> Callable:
        self._load_plugins()
        if name in self._factories:
            return self._factories[name]
        raise ZooError(unknown_name_message(self.kind, name, self.names(), extra_names))


def unknown_name_message(kind: str, name: str, valid: list[str], extra: Iterable[str] = ()) -> str:
    close = difflib.get_close_matches(name, list(dict.fromkeys([*valid, *extra])), n=5, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}? " if close else ""
    return f"unknown {kind} '{name}'; {hint}registered: {', '.join(valid)} (see `zoo list`)"


BACKBONES = Registry("backbone", "zoo.backbones")
HEADS = Registry("head", "zoo.heads")
register_backbone = BACKBONES.register
register_head = HEADS.register
