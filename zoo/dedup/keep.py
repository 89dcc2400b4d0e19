"""Which member of a duplicate group to keep, and why: the one owner of that choice.

``choose_keep`` is a pure function over each member's facts (zoo.dedup.facts: pixels, bytes,
format, JPEG quality, sharpness, EXIF date, path). A member in a protected folder wins over any
other; then the rules, in the order given (default: most pixels, then least compressed, then
sharpest, then oldest EXIF date), each keep the members best at it (within its tolerance) until
one is left; then the largest file, then the first path. Every rule that ruled a member out
gives a reason a person can read. `zoo duplicates` (groups.json, groups.csv, --move-to) and the
review page of `zoo serve` both call it, so they keep the same file.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from zoo.dedup.facts import file_facts
from zoo.errors import ZooError


@dataclass(frozen=True)
class Rule:
    name: str
    value: Callable[[Mapping], Optional[float]]  # higher is better; None: unknown, loses
    tolerance: Callable[[float], float]  # values within this of the best tie
    reason: Callable[[Mapping, list[Mapping]], str]  # the winner's facts, the ruled-out members' facts


def _dims(f: Mapping) -> str:
    return f"{f.get('width')}×{f.get('height')}" if f.get("pixels") else "unknown size"


def _compression(f: Mapping) -> Optional[float]:
    if f.get("lossless"):
        return 101.0  # no loss beats any JPEG quality
    return float(f["quality"]) if f.get("quality") is not None else None


def _compression_words(f: Mapping) -> str:
    if f.get("lossless"):
        return f"lossless {f.get('format')}"
    return f"{f.get('format')} quality ~{f['quality']}" if f.get("quality") is not None else f"{f.get('format') or 'unknown'} (quality unknown)"


def _date_value(f: Mapping) -> Optional[float]:
    try:
        return -_dt.datetime.fromisoformat(f["date"]).timestamp() if f.get("date") else None
    except (TypeError, ValueError):
        return None


def _kib(n) -> str:
    return f"{n / 1024:.1f} KiB" if isinstance(n, (int, float)) else "unknown size"


def _sharp_value(f: Mapping) -> Optional[float]:
    return f["sharpness"]  # a FileFacts decodes it here, only when this rule is reached


RULES: dict[str, Rule] = {
    "pixels": Rule("pixels", lambda f: f.get("pixels"), lambda best: 0.0,
                   lambda w, out: f"most pixels: {_dims(w)} (others {', '.join(sorted({_dims(f) for f in out}))})"),
    "compression": Rule("compression", _compression, lambda best: 1.0,
                        lambda w, out: f"least compressed: {_compression_words(w)} (others "
                                       f"{', '.join(sorted({_compression_words(f) for f in out}))})"),
    "sharpness": Rule("sharpness", _sharp_value, lambda best: 0.05 * abs(best),
                      lambda w, out: f"sharpest: {w['sharpness']:.0f} (others "
                                     f"{', '.join(sorted({'unknown' if f['sharpness'] is None else format(f['sharpness'], '.0f') for f in out}))})"),
    "date": Rule("date", _date_value, lambda best: 0.0,
                 lambda w, out: f"oldest EXIF date: {w['date']} (others "
                                f"{', '.join(sorted({str(f.get('date') or 'none') for f in out}))})"),
}
DEFAULT_RULES = ("pixels", "compression", "sharpness", "date")


def check_rules(rules: Sequence[str]) -> tuple[str, ...]:
    """``rules`` as a tuple, or a ZooError naming an unknown or repeated rule."""
    rules = tuple(rules)
    for r in rules:
        if r not in RULES:
            raise ZooError(f"--keep_rules {r}: one of {', '.join(RULES)} is expected")
    if len(set(rules)) != len(rules):
        raise ZooError(f"--keep_rules {' '.join(rules)}: a rule is named twice")
    return rules


@dataclass(frozen=True)
class Keep:
    index: int  # position of the member to keep
    reasons: tuple[str, ...]  # why, rule by rule (empty: the only member there is)


def _narrow(cands: list[int], value: Callable[[int], Optional[float]], tolerance: Callable[[float], float]) -> list[int]:
    values = {i: value(i) for i in cands}
    known = [v for v in values.values() if v is not None]
    if not known:
        return cands
    best = max(known)
    return [i for i in cands if values[i] is not None and values[i] >= best - tolerance(best)]


def choose_keep(facts: Sequence[Mapping], rules: Sequence[str] = DEFAULT_RULES,
                protected: Optional[Sequence[bool]] = None) -> Optional[Keep]:
    """The member of a group to keep (see the module's docstring), or None when every member
    is gone. ``facts``: one mapping per member (keys of zoo.dedup.facts.file_facts; a member
    whose ``gone`` is true, or that is no image, is never chosen over one that is);
    ``protected``: per member, whether it lies in a protected folder."""
    rules = check_rules(rules)
    cands = [i for i, f in enumerate(facts) if not f.get("gone")]
    if not cands:
        return None
    reasons: list[str] = []

    def narrow(new: list[int], words: Callable[[int, list[int]], str]) -> None:
        nonlocal cands
        if len(new) < len(cands):
            reasons.append(words(new[0], [i for i in cands if i not in new]))
            cands = new

    readable = [i for i in cands if facts[i].get("format") is not None]
    if readable:
        narrow(readable, lambda w, out: "an image (others unreadable)")
    if protected is not None and any(protected[i] for i in cands):
        narrow([i for i in cands if protected[i]], lambda w, out: "in a protected folder")
    for name in rules:
        if len(cands) == 1:
            break
        rule = RULES[name]
        narrow(_narrow(cands, lambda i: rule.value(facts[i]), rule.tolerance),
               lambda w, out: rule.reason(facts[w], [facts[i] for i in out]))
    if len(cands) > 1:
        narrow(_narrow(cands, lambda i: facts[i].get("bytes"), lambda best: 0.0),
               lambda w, out: f"largest file: {_kib(facts[w].get('bytes'))}")
    if len(cands) > 1:
        first = min(cands, key=lambda i: str(facts[i].get("path")))
        narrow([first], lambda w, out: "first by path (the others are alike)")
    return Keep(cands[0], tuple(reasons))


def suggest(paths: Sequence[str], rules: Sequence[str] = DEFAULT_RULES, protect: Sequence[str] = ()) -> dict:
    """``{"path", "reasons"}`` of the member of ``paths`` to keep, from each file's facts as it is
    now (zoo.dedup.facts); a member under one of the ``protect`` folders wins. ``path`` None:
    every member is gone."""
    held = [Path(os.path.realpath(p)) for p in protect]
    real = [Path(os.path.realpath(p)) for p in paths]
    keep = choose_keep([file_facts(p) for p in paths], rules,
                       [any(h == r or h in r.parents for h in held) for r in real])
    return {"path": None, "reasons": []} if keep is None else {"path": paths[keep.index], "reasons": list(keep.reasons)}
