"""zoo soup: one model whose weights are the mean of fine-tuned checkpoints (zoo.model.soup)."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from shapes import make_shapes, triplet_fit_args

from zoo.errors import ZooError
from zoo.io import sha256_file
from zoo.model.restore import load_model
from zoo.model.soup import soup_state


def test_soup_state_is_the_mean_tensor_by_tensor_and_counters_come_from_the_first():
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0], dtype=torch.float16), "n": torch.tensor(5)}
    c = {"w": torch.tensor([2.0, 1.0]), "h": torch.tensor([6.0], dtype=torch.float16), "n": torch.tensor(9)}
    out = soup_state([a, b, c])
    assert torch.equal(out["w"], torch.tensor([2.0, 3.0]))
    assert out["h"].dtype == torch.float16 and torch.equal(out["h"], torch.tensor([3.0], dtype=torch.float16))
    assert torch.equal(out["n"], torch.tensor(3))
    with pytest.raises(ZooError, match=r"^model 2's state \(against model 1's\) does not fit the model: "
                                        r"tensors missing 1 \(n\); unexpected 1 \(x\)$"):
        soup_state([a, {"w": b["w"], "h": b["h"], "x": b["n"]}])
    with pytest.raises(ZooError, match=r"^model 2's state \(against model 1's\) does not fit the model: "
                                        r"tensors of another shape 1 \(w\)$"):
        soup_state([a, {**b, "w": torch.zeros(3)}])
    with pytest.raises(ZooError, match="two or more"):
        soup_state([a])


@pytest.fixture(scope="module")
def fits(tmp_path_factory) -> dict[str, Path]:
    """Best checkpoints of tiny fits on one shapes folder: two seeds of one model, and one
    with other preprocessing (another model)."""
    from zoo.cli.main import main

    root = tmp_path_factory.mktemp("soup")
    data = make_shapes(root / "shapes", per_class=6, seed=0, size=32, shapes=("circle", "square", "triangle"))
    out = {"data": data}
    for name, extra in (("a", ["--seed_everything", "0"]), ("b", ["--seed_everything", "1"]),
                        ("other", ["--seed_everything", "0", "--model.data_config", "{image_size: 40}"])):
        runs = root / name
        args = [*triplet_fit_args(data, runs), "--model.head_kwargs", "{loss: multisimilarity, projection: linear}",
                "--model.lr", "0.01", "--model.backbone_lr", "0.01", "--data.batch_size", "6",
                "--data.samples_per_class", "2", "--data.val_fraction", "0.34", "--trainer.max_epochs", "1", *extra]
        assert main([str(a) for a in args]) == 0
        out[name] = next(runs.rglob("last.ckpt"))
    return out


def test_zoo_soup_writes_the_mean_as_a_checkpoint_every_command_loads(fits, tmp_path, zoo_cli):
    soup = tmp_path / "soup.ckpt"
    code, out, err = zoo_cli("soup", "--checkpoints", fits["a"], fits["b"], "--out", soup)
    assert code == 0, err
    assert out.strip() == f"zoo: soup of 2 checkpoints (last.ckpt, last.ckpt) -> {soup}"
    a, b = (torch.load(fits[k], map_location="cpu", weights_only=True)["state_dict"] for k in ("a", "b"))
    saved = torch.load(soup, map_location="cpu", weights_only=True)
    moved = [k for k, v in a.items() if v.is_floating_point() and not torch.equal(v, b[k])]
    assert "head.mlp.weight" in moved and any(k.startswith("backbone.") for k in moved)
    for k, v in a.items():
        expected = (v.double() + b[k].double()).div(2).to(v.dtype) if v.is_floating_point() else v
        assert torch.equal(saved["state_dict"][k], expected), k
    assert saved["zoo_soup"] == [{"checkpoint": "last.ckpt", "sha256": sha256_file(fits[k])} for k in ("a", "b")]
    assert "optimizer_states" not in saved and "current_model_state" not in saved  # a model, not a run to resume
    model = load_model(str(soup))
    assert all(torch.equal(model.state_dict()[k], saved["state_dict"][k]) for k in saved["state_dict"])
    index = tmp_path / "soup.index"
    code, out, err = zoo_cli("index", "--images", fits["data"], "--out", index, "--checkpoint", soup,
                             "--num_workers", "0", "--trainer.accelerator", "cpu")
    assert code == 0 and "zoo: indexed 18 items" in out, err


def test_a_soup_refuses_other_models_a_single_checkpoint_and_overwriting(fits, tmp_path, zoo_cli):
    soup = tmp_path / "soup.ckpt"
    code, _, err = zoo_cli("soup", "--checkpoints", fits["a"], fits["other"], "--out", soup)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"zoo: error: {fits['other']} is another model than {fits['a']} (data_config, recipe differ); "
        "a soup averages fine-tunes of one architecture")
    code, _, err = zoo_cli("soup", "--checkpoints", fits["a"], "--out", soup)
    assert code == 2 and "a soup needs two or more checkpoints" in err and not soup.exists()
    code, _, err = zoo_cli("soup", "--checkpoints", fits["a"], fits["b"], "--out", fits["a"])
    assert code == 2 and "is one of the checkpoints" in err
    soup.write_text("mine")
    code, _, err = zoo_cli("soup", "--checkpoints", fits["a"], fits["b"], "--out", soup)
    assert code == 2 and "already exists; pass --overwrite to replace it" in err and soup.read_text() == "mine"
    code, _, err = zoo_cli("soup", "--checkpoints", fits["a"], fits["b"], "--out", soup, "--overwrite")
    assert code == 0, err
    assert load_model(str(soup)) is not None and [p.name for p in tmp_path.iterdir()] == ["soup.ckpt"]  # no temp left


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_state_dict_that_does_not_fit_is_one_line_before_anything_is_written(fits, tmp_path, zoo_cli):
    """A checkpoint whose state_dict holds a number where a tensor was, or lacks a tensor: one
    line naming it, whichever side of the soup it is on, and no file."""
    good = torch.load(fits["a"], map_location="cpu", weights_only=True)
    name = next(iter(good["state_dict"]))
    number, short = tmp_path / "number.ckpt", tmp_path / "short.ckpt"
    torch.save({**good, "state_dict": {**good["state_dict"], name: 3}}, number)
    torch.save({**good, "state_dict": {k: v for k, v in good["state_dict"].items() if k != name}}, short)
    code, _, err = zoo_cli("soup", "--checkpoints", fits["a"], number, "--out", tmp_path / "soup.ckpt")
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"zoo: error: {number}'s state_dict does not fit the model: tensors of another shape 1 ({name})")
    code, _, err = zoo_cli("soup", "--checkpoints", fits["a"], short, "--out", tmp_path / "soup.ckpt")
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"zoo: error: {short}'s state_dict does not fit the model: tensors missing 1 ({name})")
    code, _, err = zoo_cli("soup", "--checkpoints", number, fits["a"], "--out", tmp_path / "soup.ckpt")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"zoo: error: {number} does not hold the recorded model")
    assert not (tmp_path / "soup.ckpt").exists()


def test_a_checkpoint_built_to_unpickle_is_refused_before_anything_is_written(fits, tmp_path, zoo_cli, capsys):
    crafted = tmp_path / "crafted.ckpt"
    good = torch.load(fits["a"], map_location="cpu", weights_only=True)
    torch.save({**good, "callbacks": Payload()}, crafted, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    code, out, err = zoo_cli("soup", "--checkpoints", fits["a"], crafted, "--out", tmp_path / "soup.ckpt")
    assert code == 2 and f"refusing to load {crafted}" in err and "this ran" not in out + err
    assert not (tmp_path / "soup.ckpt").exists()
