"""Which runtime runs a model's inference forward on the CPU, and that forward compiled for it.

Runtimes: ``torch`` (eager PyTorch), ``onnx`` (ONNX Runtime) and ``openvino`` (OpenVINO). The
compiled ones run the model exported to ONNX in memory (the graph ``zoo export`` writes), in
fp32 by default: their vectors agree with torch fp32 to cosine >= 0.9999 (tests/test_runtime.py)
and they run the forward 1.5-7x faster on a CPU (benchmarks/embed_throughput.py).

The one rule (:func:`choose_runtime`):

- asked for (``--runtime torch|onnx|openvino``): kept; a compiled runtime runs on the CPU only,
  needs its package, and computes fp32 (ONNX Runtime) or fp32/bf16/fp16 (OpenVINO's precision
  hint, following ``--trainer.precision``);
- ``auto`` (the commands' default): on the CPU at fp32, OpenVINO, else ONNX Runtime, else torch
  (whichever is installed); torch elsewhere (GPUs, bf16 or fp16 autocast) and for runs of fewer
  than MIN_IMAGES images, where exporting and compiling (seconds) would cost more than it saves.
  ``index --update`` keeps the runtime the index recorded (keep_recorded). A Trainer with no
  runtime (``zoo benchmark``, the user's own Trainer) runs torch.

A Trainer carries the runtime asked for as ``trainer.zoo_runtime`` (zoo.cli.commands sets it from
``--runtime``; zoo.embed.runner.default_trainer from its argument); ZooModel runs the compiled
forward in its ``predict_step``, so every batch run still goes through the Trainer.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import warnings
import weakref
from typing import Any, Optional

import numpy as np
import torch

from zoo.errors import ZooError
from zoo.model.graph import EmbeddingModel  # the graph zoo export writes
from zoo.model.inference import BF16, FP16, FP32, normalise_precision

TORCH, ONNX, OPENVINO, AUTO = "torch", "onnx", "openvino", "auto"
RUNTIMES = (AUTO, TORCH, ONNX, OPENVINO)
COMPILED = (OPENVINO, ONNX)  # auto's order of preference
MIN_IMAGES = 64  # auto compiles the forward for runs of at least this many images
_PACKAGES = {ONNX: ("onnxruntime", "onnx"), OPENVINO: ("openvino", "onnx")}
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {(runtime, precision): forward}
OPENVINO_CONFIG = {"PERFORMANCE_HINT": "LATENCY"}  # one request at a time: a batch, or a serve query
_HINTS = {ONNX: {FP32: None}, OPENVINO: {FP32: "f32", BF16: "bf16", FP16: "f16"}}


def installed(runtime: str) -> bool:
    """The packages ``runtime`` needs can be imported (torch always)."""
    return all(importlib.util.find_spec(p) is not None for p in _PACKAGES.get(runtime, ()))


def check_runtime(runtime: Any) -> str:
    """``runtime`` as one of RUNTIMES (None: auto), or a one-line error."""
    name = AUTO if runtime is None else str(runtime).lower()
    if name not in RUNTIMES:
        raise ZooError(f"--runtime {runtime}: choose one of {', '.join(RUNTIMES)}")
    return name


def choose_runtime(asked: Any, device: str, precision: Any, n_images: Optional[int] = None) -> str:
    """The runtime of an inference run on ``device`` (a torch device type) at ``precision`` (a
    Lightning name): the one rule (module docstring). ``n_images``: the run's size (None: a
    long-lived model, ``zoo serve``)."""
    asked = check_runtime(asked)
    precision = normalise_precision(precision)
    if asked == TORCH:
        return TORCH
    if asked in COMPILED:
        if device != "cpu":
            raise ZooError(f"--runtime {asked} runs on the CPU and this run is on {device}: give --runtime torch, "
                           f"or --trainer.accelerator cpu")
        if not installed(asked):
            raise ZooError(f"--runtime {asked} needs {' and '.join(_PACKAGES[asked])}: pip install 'zoo[cpu]' "
                           f"(or --runtime torch)")
        if precision not in _HINTS[asked]:
            raise ZooError(f"--runtime {asked} computes at {', '.join(_HINTS[asked])}, not {precision}: give "
                           f"--trainer.precision 32-true, or --runtime torch")
        return asked
    if device != "cpu" or precision != FP32:
        return TORCH
    if n_images is not None and n_images < MIN_IMAGES:
        return TORCH
    return next((r for r in COMPILED if installed(r)), TORCH)


def keep_recorded(asked: Any, recorded: Optional[str]) -> str:
    """The runtime to ask for when adding to an index built with ``recorded``: auto becomes the
    index's own where it is installed (the user's choice wins)."""
    asked = check_runtime(asked)
    return recorded if asked == AUTO and recorded in RUNTIMES[1:] and installed(recorded) else asked


def asked_runtime(trainer) -> str:
    """The runtime ``trainer`` carries (``zoo_runtime``); torch for a Trainer without one."""
    return getattr(trainer, "zoo_runtime", None) or TORCH


def runtime_of(trainer, n_images: Optional[int] = None) -> str:
    """The runtime a run of ``n_images`` on ``trainer`` uses."""
    return choose_runtime(asked_runtime(trainer), trainer.strategy.root_device.type, str(trainer.precision), n_images)


class CompiledForward:
    """A model's inference forward (preprocessed images (B, 3, H, W) float32 -> L2-normalised
    embeddings (B, D)) exported to ONNX in memory and compiled by ONNX Runtime or OpenVINO, with
    as many threads as torch uses (the physical cores by default)."""

    def __init__(self, model, runtime: str, precision: str = FP32):
        self.runtime, self.precision = runtime, normalise_precision(precision)
        net = EmbeddingModel(model).eval().float()
        _, h, w = model.data_config["input_size"]
        buf = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")  # the exporter's notes on tracing
            torch.onnx.export(net, (torch.zeros(2, 3, int(h), int(w)),), buf, input_names=["images"],
                              output_names=["embedding"], opset_version=17, dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}})
        threads = torch.get_num_threads()
        if runtime == ONNX:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
            self._run = lambda x: session.run(None, {"images": x})[0]
        elif runtime == OPENVINO:
            import openvino as ov

            core = ov.Core()
            compiled = core.compile_model(core.read_model(io.BytesIO(buf.getvalue())), "CPU", {
                **OPENVINO_CONFIG, "INFERENCE_PRECISION_HINT": _HINTS[OPENVINO][self.precision],
                "INFERENCE_NUM_THREADS": threads})
            request = compiled.create_infer_request()
            self._run = lambda x: request.infer({0: x})[0]
        else:
            raise ValueError(f"not a compiled runtime: {runtime}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return torch.from_numpy(np.array(self._run(x), dtype=np.float32))  # a copy: the runtime reuses its buffer


def compiled_forward(model, runtime: str, precision: str = FP32, explicit: bool = True) -> Optional[CompiledForward]:
    """``model``'s forward compiled for ``runtime`` (None for torch), kept on the model for the
    next run at the same precision. A model that does not export: a one-line error when the
    runtime was asked for (``explicit``), else a note and None (torch runs it)."""
    if runtime not in COMPILED:
        return None
    cache = _CACHE.setdefault(model, {})
    key = (runtime, normalise_precision(precision))
    if key not in cache:
        try:
            cache[key] = CompiledForward(model, runtime, precision)
        except Exception as e:  # an operator the exporter or the runtime lacks
            reason = " ".join(str(e).split())[:200]
            if explicit:
                raise ZooError(f"--runtime {runtime}: {model.architecture} does not compile ({reason}); "
                               f"give --runtime torch") from None
            print(f"zoo: note: {model.architecture} does not compile for {runtime} ({reason}); running it in torch",
                  file=sys.stderr)
            cache[key] = None
    return cache[key]


def forget_compiled(model) -> None:
    """Drop ``model``'s compiled forwards (its weights are about to change: training)."""
    _CACHE.pop(model, None)
