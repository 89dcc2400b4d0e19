"""Hostile files, round two: model recipes that name files, and index folders whose parts disagree.

Every case builds the hostile file itself; none may run code, make timm read a file, put
damaged vectors into an index, or end in a traceback or an empty answer with exit 0.
"""
import json
import shutil
import sqlite3

import faiss
import numpy as np
import pytest
import torch

import zoo
from zoo.embed.runner import default_trainer
from zoo.errors import ZooError
from zoo.index.factory import new_faiss_index
from zoo.model.module import model_config
from test_hostile import FAST, MODEL, evil_file, fast_model, index_dir, one_error, version_dir  # noqa: F401
from test_streaming import StopAt


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


# ---- 10: shards and index files that disagree ----------------------------------------------------


def stopped_run(shapes_dir, out):
    """Shards of a run that stopped after three batches of two: the job's folder and its vector files."""
    trainer = default_trainer(False)
    trainer.callbacks.append(StopAt(batch=3))
    with pytest.raises(RuntimeError, match="simulated crash"):
        zoo.build_index(shapes_dir, fast_model(), out=out, trainer=trainer, batch_size=2, shard_size=2)
    work = next(out.glob(".embed-*"))
    return work, sorted(work.glob("*.vectors.npy"))


def test_a_resumed_shard_of_nan_vectors_is_refused(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "s.index"
    work, shards = stopped_run(shapes_dir, out)
    v = np.load(shards[1])
    v[0, 3], v[1, 0] = np.nan, np.inf
    np.save(shards[1], v)
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *FAST)
    assert code == 2, err
    one_error(err, f"{shards[1]} is damaged (non-finite values); remove {work} to embed again from the start")
    assert not (out / "ZOO_INDEX.json").exists()


def test_a_resumed_shard_of_another_dim_is_refused(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "s.index"
    work, shards = stopped_run(shapes_dir, out)
    for shard in (shards[-1], shards[0]):  # after shards of the right dim, or first
        good = np.load(shard)
        np.save(shard, np.ones((len(good), 7), np.float32))
        code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *FAST)
        assert code == 2, err
        one_error(err, f"{shard} is damaged (vectors of dim 7, not 96); remove {work} to embed again from the start")
        np.save(shard, good)
    assert not (out / "ZOO_INDEX.json").exists()


def rewrite_faiss(index, factory: str = "Flat", shift: int = 0, drop: int = 0) -> None:
    """index.faiss of the same vectors as ``factory``, their ids shifted by ``shift``, the last ``drop`` left out."""
    path = version_dir(index) / "index.faiss"
    old = faiss.read_index(str(path))
    ids = faiss.vector_to_array(old.id_map).astype(np.int64)
    vectors = np.asarray(faiss.downcast_index(old.index).reconstruct_n(0, old.ntotal), np.float32)
    new = new_faiss_index(old.d, factory)
    new.train(vectors)
    keep = len(ids) - drop
    new.add_with_ids(vectors[:keep], ids[:keep] + shift)
    faiss.write_index(new, str(path))


@pytest.mark.parametrize("factory", ["Flat", "IVF2,Flat", "HNSW8"])
def test_an_index_whose_ids_are_not_its_items_is_refused(index_dir, shapes_dir, zoo_cli, factory):
    q = shapes_dir / "circle" / "000.png"
    saved = (version_dir(index_dir) / "index.faiss").read_bytes()
    rewrite_faiss(index_dir, factory)  # the same ids: a good index
    code, out, err = zoo_cli("search", "--query", q, "--index", index_dir, "-k", "3")
    assert code == 0 and str(q) in out, err
    for shift, drop in ((1000, 0), (1, 0), (0, 1)):
        (version_dir(index_dir) / "index.faiss").write_bytes(saved)
        rewrite_faiss(index_dir, factory, shift, drop)
        code, out, err = zoo_cli("search", "--query", q, "--index", index_dir, "-k", "3")
        assert code == 2, (shift, drop, out, err)
        one_error(err, "rebuild the index")
        assert "index.faiss" in err and "items.sqlite" in err


def test_index_faiss_swapped_between_two_indexes_is_refused(index_dir, shapes_dir, tmp_path, zoo_cli):
    other = tmp_path / "other.index"
    shutil.copytree(index_dir, other)
    (shapes_dir / "circle" / "000.png").unlink()  # one file goes, another comes: ids 1..12, not 0..11
    shutil.copy(shapes_dir / "square" / "000.png", shapes_dir / "square" / "new.png")
    code, _, err = zoo_cli("index", "--out", other, "--update", "--num_workers", "0")
    assert code == 0, err
    assert len(zoo.load_index(other)) == len(zoo.load_index(index_dir))
    shutil.copy(version_dir(index_dir) / "index.faiss", version_dir(other) / "index.faiss")
    code, out, err = zoo_cli("search", "--query", shapes_dir / "square" / "001.png", "--index", other)
    assert code == 2, (out, err)
    one_error(err, "the ids in index.faiss are not the ids of items.sqlite")


def test_items_whose_ids_are_not_integers_are_refused(index_dir, shapes_dir, zoo_cli):
    db = sqlite3.connect(version_dir(index_dir) / "items.sqlite")
    db.executescript("ALTER TABLE items RENAME TO old; CREATE TABLE items (id TEXT, path TEXT, label TEXT, frame INTEGER, "
                     "time REAL, size INTEGER, mtime_ns INTEGER); INSERT INTO items SELECT 'x' || id, path, label, frame, "
                     "time, size, mtime_ns FROM old; DROP TABLE old;")
    db.close()
    code, out, err = zoo_cli("search", "--query", shapes_dir / "circle" / "000.png", "--index", index_dir)
    assert code == 2, (out, err)
    one_error(err, "items.sqlite: not a readable zoo item table (12 ids that are not integers)")


# ---- meta.json values of the wrong type ------------------------------------------------------------
def test_meta_json_search_settings_and_root_of_the_wrong_type_are_one_line(index_dir, shapes_dir, zoo_cli):
    q = shapes_dir / "circle" / "000.png"
    rewrite_faiss(index_dir, "IVF2,Flat")
    edit_meta(index_dir, search={"nprobe": 2})
    good = (version_dir(index_dir) / "meta.json").read_text()
    code, _, err = zoo_cli("search", "--query", q, "--index", index_dir)
    assert code == 0, err
    cases = [({"search": {"nprobe": "x"}}, "search setting nprobe"), ({"search": {"nprobe": 1.5}}, "search setting nprobe"),
             ({"search": {"nprobe": -3}}, "search setting nprobe"), ({"search": {"nprobe": True}}, "search setting nprobe"),
             ({"search": {"nprobe": None}}, "search setting nprobe"), ({"search": {"nprobe": 10**30}}, "search setting nprobe"),
             ({"search": [1]}, "search settings"), ({"search": {"max_codes": 1}}, "search setting max_codes"),
             ({"root": None}, "root"), ({"root": 3}, "root"), ({"root": ""}, "root"), ({"root": "relative/dir"}, "root"),
             ({"root": "/a\u0000b"}, "root")]
    for change, message in cases:
        (version_dir(index_dir) / "meta.json").write_text(good)
        edit_meta(index_dir, **change)
        code, _, err = zoo_cli("search", "--query", q, "--index", index_dir)
        assert code == 2, (change, err)
        one_error(err, "meta.json is damaged")
        one_error(err, message)


def test_a_recipe_cannot_make_every_image_huge(index_dir):
    """Preprocessing and sizes from a file are bounded (a query resized to 100000 px a side would
    take the machine's memory); checked when the model is rebuilt, before any image is read."""
    good = (version_dir(index_dir) / "meta.json").read_text()
    for where, value, message in (("model__recipe__data_config", {"input_size": [3, 100000, 100000]}, "input_size"),
                                  ("model__recipe__data_config", {"image_size": 10**6}, "image_size"),
                                  ("model__recipe__data_config", {"crop_pct": 1e-6}, "crop_pct"),
                                  ("model__recipe__data_config", {"mean": [0, 0]}, "mean"),
                                  ("model__recipe__model_kwargs", {"img_size": 10**6}, "img_size"),
                                  ("model__hparams__data_config", {"image_size": 10**6}, "image_size")):
        (version_dir(index_dir) / "meta.json").write_text(good)
        edit_meta(index_dir, **{where: value})
        with pytest.raises(ZooError, match=f"the recorded model cannot be built .*{message}"):
            zoo.load_index(index_dir).model()


def test_json_nested_too_deep_or_with_infinite_positions_is_one_line(index_dir, shapes_dir, tmp_path, zoo_cli):
    q = shapes_dir / "circle" / "000.png"
    deep = "[" * 100_000 + "]" * 100_000
    for path in (version_dir(index_dir) / "meta.json", index_dir / "ZOO_INDEX.json"):
        good = path.read_text()
        path.write_text(deep)
        code, _, err = zoo_cli("search", "--query", q, "--index", index_dir)
        assert code == 2, err
        one_error(err, "is damaged")
        path.write_text(good)
    out = tmp_path / "s.index"
    work, shards = stopped_run(shapes_dir, out)
    skipped = shards[0].with_name(shards[0].name.replace(".vectors.npy", ".skipped.json"))
    for text in ('[[1e999, "not an image"]]', deep):
        skipped.write_text(text)
        code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *FAST)
        assert code == 2, err
        one_error(err, f"{skipped} is damaged (not a list of [position, reason]); remove {work}")
