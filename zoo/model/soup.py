"""Model soups (Wortsman et al., 2022): one model whose weights are the mean of several models
fine-tuned from one start. Fine-tunes from one start stay in one basin, so the average works as
a model and behaves like an ensemble of them at the cost of one. It needs no more training than
the runs themselves. On food7 (the labelled recipe plus its close-up variant, README
"Fine-tuning on labelled classes"), the soup left fewer held-out photos without a photo of their
class among their 10 nearest than either run on 4 seeds of 5.

``soup_state`` is the maths on state dicts; ``make_soup`` reads checkpoints (as load_model does:
tensors and plain values only) and writes one that every command loads like a trained
checkpoint. The first checkpoint supplies the recorded model (hparams, recipe). The others must
be the same architecture with the same head and preprocessing. A centring head's centre is a
buffer and is averaged like the weights: to first order it is the centre of the averaged model.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from zoo.errors import ZooError
from zoo.io import atomic_path, refuse_overwrite, sha256_file
from zoo.model.module import check_state, model_config
from zoo.model.restore import read_checkpoint, restore_model

SAME = ("backbone", "head", "head_kwargs", "model_kwargs", "data_config")  # what makes two models one architecture


def soup_state(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of ``states`` tensor by tensor (computed in float64, kept in each tensor's dtype);
    tensors that are not floating point (counters) come from the first state. Every state must
    have the first's tensor names and shapes (zoo.model.module.check_state)."""
    if len(states) < 2:
        raise ZooError("a soup needs two or more models")
    first = states[0]
    for i, state in enumerate(states[1:], start=2):
        check_state(state, first, f"model {i}'s state (against model 1's)")
    out = {}
    for name, tensor in first.items():
        if tensor.is_floating_point():
            mean = torch.stack([s[name].to(torch.float64) for s in states]).mean(0)
            out[name] = mean.to(tensor.dtype)
        else:
            out[name] = tensor.clone()
    return out


def make_soup(checkpoints: Sequence[str], out: str, overwrite: bool = False) -> Path:
    """Average ``checkpoints`` (two or more) into the checkpoint ``out``; returns its path."""
    if len(checkpoints) < 2:
        raise ZooError("a soup needs two or more checkpoints (--checkpoints A.ckpt B.ckpt ...)")
    out_path = Path(out)
    if any(out_path.resolve() == Path(c).resolve() for c in checkpoints):
        raise ZooError(f"--out {out} is one of the checkpoints; give another file")
    refuse_overwrite(out_path, overwrite)
    ckpts = [read_checkpoint(c) for c in checkpoints]
    configs = [model_config(c["hyper_parameters"]) for c in ckpts]
    recipes = [c.get("zoo_recipe") for c in ckpts]
    for path, config, recipe in zip(checkpoints[1:], configs[1:], recipes[1:]):
        differ = [k for k in SAME if config.get(k) != configs[0].get(k)] + (["recipe"] if recipe != recipes[0] else [])
        if differ:
            raise ZooError(f"{path} is another model than {checkpoints[0]} ({', '.join(differ)} differ); "
                           "a soup averages fine-tunes of one architecture")
    # the first must load as its recorded model; the others must fit it, name by name and shape by shape
    own = restore_model(ckpts[0]["hyper_parameters"], recipes[0], ckpts[0]["state_dict"],
                        source=str(checkpoints[0])).state_dict()
    for path, ckpt in zip(checkpoints[1:], ckpts[1:]):
        check_state(ckpt["state_dict"], own, f"{path}'s state_dict")
    state = soup_state([c["state_dict"] for c in ckpts])
    saved = {key: ckpts[0][key] for key in ("hyper_parameters", "zoo_recipe", "zoo_weights_id") if key in ckpts[0]}
    saved["state_dict"] = state
    saved["zoo_soup"] = [{"checkpoint": Path(c).name, "sha256": sha256_file(c)} for c in checkpoints]
    with atomic_path(out_path) as tmp:
        torch.save(saved, tmp)
    print(f"zoo: soup of {len(checkpoints)} checkpoints ({', '.join(Path(c).name for c in checkpoints)}) -> {out_path}")
    return out_path
