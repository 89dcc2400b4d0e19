"""Runtimes of the CPU forward (zoo.model.runtime): ONNX Runtime and OpenVINO run the model
exported in memory and must agree with torch fp32; one rule picks the runtime; the index records
it and --update keeps it; serve runs it; bad values are one line."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
import zoo.model.runtime as rt
from conftest import SHARED, TINY, needs_shared
from zoo.data.images import scan_folder
from zoo.embed.runner import default_trainer, embed
from zoo.errors import ZooError
from zoo.index.core import load_index
from zoo.serve.service import SearchService

INSTALLED = [r for r in rt.COMPILED if rt.installed(r)]
needs_runtimes = pytest.mark.skipif(not INSTALLED, reason="neither onnxruntime nor openvino is installed")


def tiny_model(backbone="resnet18"):
    return zoo.ZooModel(backbone, pretrained=False, data_config={"image_size": 64}).build()


def meta_of(index: Path) -> dict:
    marker = json.loads((index / "ZOO_INDEX.json").read_text())
    return json.loads((index / marker["current"] / "meta.json").read_text())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


# ---- the rule ---------------------------------------------------------------------------------------
def test_auto_compiles_big_fp32_cpu_runs_only(monkeypatch):
    monkeypatch.setattr(rt, "installed", lambda r: True)
    assert rt.choose_runtime("auto", "cpu", "32-true", n_images=1000) == "openvino"
    assert rt.choose_runtime("auto", "cpu", "32", n_images=None) == "openvino"  # zoo serve: loaded once
    assert rt.choose_runtime("auto", "cpu", "32-true", n_images=rt.MIN_IMAGES - 1) == "torch"  # export costs more
    assert rt.choose_runtime("auto", "cpu", "bf16-mixed", n_images=1000) == "torch"  # autocast: torch's
    assert rt.choose_runtime("auto", "cuda", "32-true", n_images=1000) == "torch"
    assert rt.choose_runtime("torch", "cpu", "32-true", n_images=1000) == "torch"
    assert rt.choose_runtime("onnx", "cpu", "32-true", n_images=1) == "onnx"  # asked for: kept
    monkeypatch.setattr(rt, "installed", lambda r: r == "onnx")
    assert rt.choose_runtime("auto", "cpu", "32-true", n_images=1000) == "onnx"
    monkeypatch.setattr(rt, "installed", lambda r: False)
    assert rt.choose_runtime("auto", "cpu", "32-true", n_images=1000) == "torch"


def test_asked_runtimes_that_cannot_run_are_one_line(monkeypatch):
    monkeypatch.setattr(rt, "installed", lambda r: True)
    with pytest.raises(ZooError, match="runs on the CPU and this run is on cuda"):
        rt.choose_runtime("openvino", "cuda", "32-true")
    with pytest.raises(ZooError, match="--runtime onnx computes at 32-true, not bf16-mixed"):
        rt.choose_runtime("onnx", "cpu", "bf16-mixed")
    assert rt.choose_runtime("openvino", "cpu", "bf16-mixed") == "openvino"  # its bf16 precision hint
    with pytest.raises(ZooError, match="choose one of auto, torch, onnx, openvino"):
        rt.choose_runtime("tensorrt", "cpu", "32-true")
    monkeypatch.setattr(rt, "installed", lambda r: False)
    with pytest.raises(ZooError, match=r"needs openvino and onnx: pip install 'zoo\[cpu\]'"):
        rt.choose_runtime("openvino", "cpu", "32-true")


def test_update_keeps_the_recorded_runtime_unless_asked(monkeypatch):
    monkeypatch.setattr(rt, "installed", lambda r: r != "onnx")
    assert rt.keep_recorded("auto", "openvino") == "openvino"
    assert rt.keep_recorded("auto", "torch") == "torch"
    assert rt.keep_recorded("auto", "onnx") == "auto"  # not installed here: the rule decides
    assert rt.keep_recorded("torch", "openvino") == "torch"  # the user's choice wins
    assert rt.keep_recorded("auto", None) == "auto"


def test_a_trainer_without_a_runtime_runs_torch():
    """zoo benchmark and the user's own Trainer keep torch: published tables stay exact."""
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert rt.runtime_of(trainer, 10_000) == "torch"
    assert default_trainer(False, runtime="torch", accelerator="cpu").zoo_runtime == "torch"


ON_CPU = ["--trainer.accelerator", "cpu"]  # the compiled runtimes run on the CPU, also on a GPU machine


# ---- agreement with torch fp32 ------------------------------------------------------------------------
@needs_runtimes
@pytest.mark.parametrize("runtime", INSTALLED)
def test_compiled_runtime_agrees_with_torch_fp32(shapes_dir, runtime, capsys):
    model = tiny_model()
    records = scan_folder(shapes_dir)
    ref = embed(model, records, trainer=default_trainer(False, runtime="torch", accelerator="cpu"), num_workers=0)
    got = embed(model, records, trainer=default_trainer(False, runtime=runtime, accelerator="cpu"), num_workers=0)
    assert model.runtime == runtime and getattr(model, "compiled", None) is not None  # it did not fall back
    assert [r.path for r in got.records] == [r.path for r in ref.records]
    assert cosines(got.vectors, ref.vectors).min() >= 0.9999
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-4)
    assert capsys.readouterr().out == ""  # the exporter's notes never reach stdout


@needs_runtimes
def test_compiled_forward_is_kept_and_dropped_when_training(shapes_dir):
    model = tiny_model()
    first = rt.compiled_forward(model, INSTALLED[0])
    assert rt.compiled_forward(model, INSTALLED[0]) is first
    rt.forget_compiled(model)
    assert rt.compiled_forward(model, INSTALLED[0]) is not first


def test_a_model_that_does_not_export_falls_back_to_torch_under_auto(monkeypatch, capsys):
    monkeypatch.setattr(rt, "CompiledForward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no such operator")))
    model = tiny_model()
    assert rt.compiled_forward(model, "onnx", explicit=False) is None
    assert "does not compile for onnx (no such operator); running it in torch" in capsys.readouterr().err
    with pytest.raises(ZooError, match="--runtime onnx: resnet18\\+frozen does not compile \\(no such operator\\)"):
        rt.compiled_forward(tiny_model(), "onnx", explicit=True)


# ---- the commands ---------------------------------------------------------------------------------------
@pytest.mark.skipif("onnx" not in INSTALLED, reason="onnxruntime is not installed")
def test_index_records_its_runtime_and_update_keeps_it(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "a.index"
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, "--runtime", "onnx", *TINY, *ON_CPU)
    assert code == 0, err
    assert "images on cpu with onnx, precision 32-true" in err
    assert meta_of(out)["runtime"] == "onnx" and meta_of(out)["precision"] == "32-true"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(shapes_dir / "circle" / "new.png")
    code, _, err = zoo_cli("index", "--update", "--out", out, *TINY, *ON_CPU)  # auto: the index's own
    assert code == 0, err
    assert "embedding 1 images on cpu with onnx, precision 32-true" in err
    assert meta_of(out)["runtime"] == "onnx"
    Image.new("RGB", (40, 40), (30, 200, 30)).save(shapes_dir / "circle" / "new2.png")
    code, _, err = zoo_cli("index", "--update", "--out", out, "--runtime", "torch", *TINY, *ON_CPU)
    assert code == 0, err
    assert "embedding 1 images on cpu, precision" in err and "built with runtime onnx" in err


def test_small_runs_and_old_indexes_are_torch(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "a.index"
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *TINY, *ON_CPU)
    assert code == 0, err
    assert "images on cpu, precision 32-true" in err and meta_of(out)["runtime"] == "torch"
    assert load_index(out).runtime == "torch"
    marker = json.loads((out / "ZOO_INDEX.json").read_text())
    meta_path = out / marker["current"] / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["runtime"]  # an index made before zoo recorded it
    meta_path.write_text(json.dumps(meta))
    assert load_index(out).runtime == "torch"


def test_bad_runtimes_are_one_line(shapes_dir, tmp_path, zoo_cli):
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", tmp_path / "a.index", "--runtime", "tpu", *TINY)
    assert code == 2 and err.strip().splitlines()[-1].startswith("zoo: error: --runtime tpu: choose one of")
    out = tmp_path / "b.index"
    assert zoo_cli("index", "--images", shapes_dir, "--out", out, *TINY)[0] == 0
    marker = json.loads((out / "ZOO_INDEX.json").read_text())
    meta_path = out / marker["current"] / "meta.json"
    for bad in ("auto", "../../x", 3, None):
        meta = json.loads(meta_path.read_text())
        meta["runtime"] = bad
        meta_path.write_text(json.dumps(meta))
        code, _, err = zoo_cli("search", "--index", out, "--query", next(shapes_dir.rglob("*.png")))
        assert code == 2 and "runtime" in err and "Traceback" not in err, err


@needs_runtimes
def test_serve_runs_the_compiled_forward_and_agrees(shapes_dir, tmp_path):
    out = tmp_path / "a.index"
    zoo.build_index(shapes_dir, tiny_model(), out=out, trainer=default_trainer(False, runtime="torch", accelerator="cpu"), num_workers=0)
    torch_svc = SearchService(load_index(out), out)
    fast = SearchService(load_index(out), out, runtime="auto")
    assert torch_svc.runtime == "torch" and fast.runtime == INSTALLED[0] and fast.compiled is not None
    image = Image.open(next(shapes_dir.rglob("*.png"))).convert("RGB")
    a, b = torch_svc.embed(image), fast.embed(image)
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.9999
    assert [h["id"] for h in fast.search(b, 5)] == [h["id"] for h in torch_svc.search(a, 5)]


# ---- real photos, the shared pretrained MobileNetV2 --------------------------------------------------------
def photos_and_copies(folder: Path, n: int = 24, copies: int = 8) -> list:
    """n food7 photos across its classes and edited copies of the first ``copies`` (JPEG quality
    75, half of them scaled to 90%): duplicate pairs about the default threshold, for the
    agreement checks."""
    records = scan_folder(SHARED / "data" / "food7")[:: 1505 // n][:n]
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(records[:copies]):
        with Image.open(r.path) as im:
            scale = 1.0 if i % 2 else 0.9  # re-encoded, or scaled to 90% and re-encoded
            im.convert("RGB").resize((int(im.width * scale), int(im.height * scale))).save(folder / f"copy{i}.jpg",
                                                                                           quality=75)
    return records + scan_folder(folder)


@needs_shared
@needs_runtimes
def test_runtimes_agree_with_torch_fp32_on_real_photos(tmp_path):
    """24 food7 photos and 8 edited copies: per-image cosine >= 0.999, top-10 neighbour overlap
    >= 0.99 and the same duplicate pairs at the default threshold (0.95), for every installed
    runtime's fp32 path."""
    records = photos_and_copies(tmp_path / "copies")
    model = zoo.ZooModel("mobilenetv2_100", weights=str(SHARED / "weights" / "mobilenetv2_100_in1k.pth")).build()
    ref = embed(model, records, trainer=default_trainer(False, runtime="torch", accelerator="cpu"), num_workers=0).vectors

    def neighbours(v):
        s = v @ v.T
        np.fill_diagonal(s, -2)
        return np.argsort(-s, axis=1)[:, :10], {tuple(p) for p in np.argwhere(np.triu(s, 1) >= 0.95)}

    ref_top, ref_pairs = neighbours(ref)
    assert len(ref_pairs) >= 4  # the copies: the pairs are a real check
    for runtime in INSTALLED:
        got = embed(model, records, trainer=default_trainer(False, runtime=runtime, accelerator="cpu"), num_workers=0).vectors
        top, pairs = neighbours(got)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, ref_top)])
        assert cosines(got, ref).min() >= 0.999, runtime
        assert overlap >= 0.99, runtime
        assert pairs == ref_pairs, runtime


# ---- big pictures: JPEG draft mode and reduce-on-load ------------------------------------------------------
def smooth(w: int, h: int, seed: int = 0) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def test_big_pictures_are_reduced_on_load_without_changing_the_model_input(tmp_path):
    import timm

    from zoo.data.images import load_image

    transform = timm.data.create_transform(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875,
                                           is_training=False, use_prefetcher=True)
    png = tmp_path / "screen.png"
    smooth(1920, 1080).save(png)
    reduced = load_image(png, draft_size=257)
    assert reduced.size == (960, 540)  # reduced by 2: still at least twice the resize's 257
    full = load_image(png)
    assert full.size == (1920, 1080)
    diff = (transform(reduced).float() - transform(full).float()).abs()
    assert float(diff.mean()) < 1.0 and float(diff.max()) <= 4  # grey levels of the model's uint8 input
    phone = tmp_path / "phone.jpg"
    smooth(4032, 3024).save(phone, quality=90)
    assert load_image(phone, draft_size=257).size == (504, 378)  # JPEG DCT scaling, 1/8
    photo = tmp_path / "photo.png"
    smooth(500, 375).save(photo)
    assert load_image(photo, draft_size=257).size == (500, 375)  # small pictures as they are
