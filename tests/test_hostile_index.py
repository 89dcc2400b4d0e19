"""Hostile files, round two: model recipes that name files, and index folders whose parts disagree.

Every case builds the hostile file itself; none may run code, make timm read a file, put
damaged vectors into an index, or end in a traceback or an empty answer with exit 0.
"""
import json

import pytest
import torch

import zoo
from zoo.errors import ZooError
from zoo.model import model_config
from test_hostile import FAST, MODEL, evil_file, fast_model, one_error, version_dir


@pytest.fixture
def index_dir(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "shapes.index"
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *FAST)
    assert code == 0, err
    return out


@pytest.fixture
def loaded(monkeypatch):
    """Every file torch.load is handed (timm reads checkpoints through it)."""
    seen = []
    real = torch.load

    def spy(f, *args, **kw):
        seen.append(str(f))
        return real(f, *args, **kw)

    monkeypatch.setattr(torch, "load", spy)
    return seen


def edit_meta(index, **changes) -> dict:
    path = version_dir(index) / "meta.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        target = meta
        *parents, last = key.split("__")
        for p in parents:
            target = target[p]
        target[last] = value
    path.write_text(json.dumps(meta))
    return meta


# ---- 4: a model recipe names no file ------------------------------------------------------------
def recipes_naming(evil) -> list[dict]:
    return [{"checkpoint_path": str(evil)}, {"pretrained_cfg": {"file": str(evil)}},
            {"pretrained_cfg_overlay": {"file": str(evil)}}, {"cache_dir": str(evil.parent)}, {"features_only": True}]


def test_an_index_recipe_that_names_a_file_is_refused(index_dir, shapes_dir, tmp_path, zoo_cli, loaded):
    marker = tmp_path / "pwned"
    evil = evil_file(tmp_path / "evil.pth", marker)
    q = shapes_dir / "circle" / "000.png"
    good = (version_dir(index_dir) / "meta.json").read_text()
    for i, kwargs in enumerate(recipes_naming(evil)):
        bad = next(iter(kwargs))
        for where in ("model__recipe__model_kwargs", "model__hparams__model_kwargs"):
            (version_dir(index_dir) / "meta.json").write_text(good)
            edit_meta(index_dir, **{where: kwargs})
            with pytest.raises(ZooError, match=f"model_kwargs key.s. {bad}"):
                zoo.load_index(index_dir).model()
            for args in [("search", "--query", q, "--index", index_dir),
                         ("index", "--out", index_dir, "--update", "--num_workers", "0")][: 2 if i == 0 else 0]:
                code, _, err = zoo_cli(*args)
                assert code == 2, (kwargs, where, args, err)
                one_error(err, f"model_kwargs key(s) {bad}; allowed: ")
                assert "pad_type" in err and "global_pool" in err  # the allowed keys are named
    assert not marker.exists() and str(evil) not in loaded and not loaded


def test_a_checkpoint_recipe_that_names_a_file_is_refused(shapes_dir, tmp_path, zoo_cli, loaded):
    marker = tmp_path / "pwned"
    evil = evil_file(tmp_path / "evil.pth", marker)
    net = fast_model().build()
    for kwargs in recipes_naming(evil):
        bad = next(iter(kwargs))
        hparams = {**model_config(net.hparams), "model_kwargs": kwargs}
        for recipe in ({"model_kwargs": kwargs, "data_config": net.recipe["data_config"]}, None):
            ckpt = tmp_path / "crafted.ckpt"
            torch.save({"state_dict": net.state_dict(), "hyper_parameters": hparams,
                        **({"zoo_recipe": recipe} if recipe else {})}, ckpt)  # plain values: weights_only reads it
            with pytest.raises(ZooError, match=f"model_kwargs key.s. {bad}; allowed: "):
                zoo.load_model(str(ckpt))
        code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", tmp_path / "x.index", "--checkpoint", ckpt, *FAST)
        assert code == 2, (kwargs, err)
        one_error(err, f"model_kwargs key(s) {bad}")
    assert not marker.exists() and str(evil) not in loaded
    assert all(p == str(tmp_path / "crafted.ckpt") for p in loaded)  # only the checkpoint itself, with weights_only
    assert not (tmp_path / "x.index").exists()


def test_the_model_kwargs_zoo_uses_still_build():
    for backbone, kwargs in (("timm/test_efficientnet", {"pad_type": "same", "drop_rate": 0.1, "drop_path_rate": 0.1}),
                             ("timm/test_resnet", {"global_pool": "gem", "gem_p": 4, "output_stride": 16, "drop_block_rate": 0.1}),
                             ("timm/test_vit", {"img_size": [32, 32], "dynamic_img_size": True})):
        net = zoo.ZooModel(backbone, pretrained=False, data_config={"image_size": 32}, model_kwargs=kwargs).build()
        assert net.recipe["model_kwargs"] == kwargs
        assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, net.embedding_dim)


def test_torch_that_unpickles_by_default_is_not_allowed():
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch>=2.6" in deps  # the first torch whose torch.load reads weights only by default
