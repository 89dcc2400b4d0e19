"""How a model runs for inference on a device: its precision and its memory layout.

One rule (:func:`inference_setting`), used by the commands (zoo.cli), by
``zoo.embed.runner.default_trainer``, by ZooModel's predict (channels_last) and by ``zoo serve``:

- on a CUDA device: bf16 autocast where the card computes in bf16 (else fp16), channels_last;
- on a CPU: fp32, as stored. bf16 autocast + channels_last is about 1.6x faster on a CPU
  with native bf16 (AVX512-BF16 or AMX-BF16, read from the CPU's flags) but its vectors agree
  with fp32 only to cosine 0.990 (MobileNetV2 on food7), short of the 0.999 a silent default
  needs: it is opt-in (``ZOO_CPU_BF16=1``, or ``--trainer.precision bf16-mixed``).

A precision the user asks for always wins (channels_last then follows it: on a CPU only with
bf16 that the CPU computes natively). A precision an index recorded is kept where the device
computes it natively, else the device's default. ``ZOO_CPU_BF16=1`` makes bf16 the CPU
default where the CPU computes it (``0``: never, whatever the CPU), for every command and the
Python API.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

FP32 = "32-true"
BF16 = "bf16-mixed"
FP16 = "16-mixed"
# Lightning's precision names, and the short forms it also accepts
PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine",
              "transformer-engine-float16")
_SHORT = {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}
_AUTOCAST = {BF16: torch.bfloat16, FP16: torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that compute bf16 natively
ENV = "ZOO_CPU_BF16"


@functools.lru_cache(maxsize=None)
def _detected_cpu_bf16() -> bool:
    """The CPU's flags (torch.cpu.get_capabilities, else /proc/cpuinfo) name AVX512-BF16 or
    AMX-BF16."""
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is not None:
        try:
            caps = get()
            return any(bool(caps.get(flag, False)) for flag in CPU_BF16_FLAGS)
        except Exception:  # an older torch, or a CPU cpuinfo does not know: read the flags below
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in CPU_BF16_FLAGS)
    except OSError:
        pass
    return False


def _env_choice() -> Optional[bool]:
    """``ZOO_CPU_BF16``: True for 1/true/yes/on, False for 0/false/no/off, None when unset or other."""
    env = os.environ.get(ENV, "").strip().lower()
    return True if env in ("1", "true", "yes", "on") else False if env in ("0", "false", "no", "off") else None


def cpu_has_native_bf16() -> bool:
    """True where this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16); ``ZOO_CPU_BF16=0``
    or ``1`` says so instead of the detection."""
    choice = _env_choice()
    return _detected_cpu_bf16() if choice is None else choice


def cpu_bf16_opted_in() -> bool:
    """``ZOO_CPU_BF16=1``: bf16 by default on a CPU that computes it natively."""
    return _env_choice() is True


def normalise_precision(precision: Any) -> str:
    """Lightning's precision name for ``precision`` (``"bf16"`` -> ``"bf16-mixed"``, 32 -> ``"32-true"``)."""
    text = str(precision)
    return _SHORT.get(text, text)


def device_type(accelerator: Any = "auto") -> str:
    """``"cuda"``, ``"cpu"`` or another torch device type for a Trainer's ``accelerator``
    (a name, a torch.device or an Accelerator); ``auto`` is CUDA where there is one."""
    if isinstance(accelerator, torch.device):
        return accelerator.type
    name = str(accelerator).lower() if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if name in ("auto", "gpu", "cuda") or name.startswith("cuda"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cpu"):
        return "cpu"
    return name.replace("accelerator", "") or "cpu"


def _native(device: str) -> set[str]:
    """The precisions ``device`` computes natively."""
    if device == "cuda":
        return {FP32, "64-true", FP16, "16-true"} | ({BF16, "bf16-true"} if torch.cuda.is_bf16_supported() else set())
    if device == "cpu":
        return {FP32, "64-true"} | ({BF16, "bf16-true"} if cpu_has_native_bf16() else set())
    return {FP32}


@dataclass(frozen=True)
class InferenceSetting:
    """The precision (a Lightning name) and memory layout of an inference run on ``device``."""

    device: str
    precision: str
    channels_last: bool

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return _AUTOCAST.get(self.precision)

    def autocast(self):
        """The autocast context of an eager forward (``zoo serve``); a no-op at full precision."""
        dtype = self.autocast_dtype
        return torch.autocast(self.device, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def inference_setting(accelerator: Any = "auto", precision: Any = None, *, recorded: Optional[str] = None,
                      cpu_bf16: bool = True) -> InferenceSetting:
    """Precision and channels_last for inference on ``accelerator``: the one rule (module docstring).

    precision: asked for by the user: kept as given. recorded: the precision an index was built
    with, for runs that add to it or search it: kept where the device computes it natively,
    else the device's default. cpu_bf16: False keeps fp32 on the CPU whatever it computes
    (``zoo benchmark``, whose tables stay exact).
    """
    device = device_type(accelerator)
    if precision is not None:
        chosen = normalise_precision(precision)
    elif recorded is not None and normalise_precision(recorded) in _native(device):
        chosen = normalise_precision(recorded)
    elif device == "cuda":
        chosen = BF16 if torch.cuda.is_bf16_supported() else FP16
    elif device == "cpu" and cpu_bf16 and cpu_bf16_opted_in() and cpu_has_native_bf16():
        chosen = BF16
    else:
        chosen = FP32
    if device == "cuda":
        channels_last = True
    else:
        channels_last = device == "cpu" and chosen == BF16 and cpu_has_native_bf16()
    return InferenceSetting(device, chosen, channels_last)
