"""Inference precision: one rule (zoo.model.inference) for the commands, default_trainer and
zoo serve; bf16 autocast + channels_last on a CPU that computes bf16 natively, fp32 elsewhere;
the index records its precision and what adds to it or searches it reuses it.

The tests force the detection both ways (ZOO_CPU_BF16, or the CPU's flags mocked): bf16
autocast runs on any x86 CPU, only slower where the CPU does not compute it natively.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import Namespace
from PIL import Image

import zoo
import zoo.model.inference as inference
from conftest import SHARED, TINY, needs_shared
from zoo.cli.main import default_precision
from zoo.data.images import scan_folder
from zoo.embed.runner import default_trainer, embed
from zoo.errors import ZooError
from zoo.index.core import load_index
from zoo.index.persist import current_precision
from zoo.model.inference import InferenceSetting, cpu_has_native_bf16, inference_setting
from zoo.serve.service import SearchService


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that computes bf16 natively, as far as zoo can tell."""
    monkeypatch.setenv("ZOO_CPU_BF16", "1")


@pytest.fixture
def fp32_cpu(monkeypatch):
    monkeypatch.setenv("ZOO_CPU_BF16", "0")


def tiny_model():
    return zoo.ZooModel("resnet50", pretrained=False, data_config={"image_size": 64}).build()


def meta_of(index: Path) -> dict:
    marker = json.loads((index / "ZOO_INDEX.json").read_text())
    return json.loads((index / marker["current"] / "meta.json").read_text())


def edit_meta(index: Path, edit) -> None:
    marker = json.loads((index / "ZOO_INDEX.json").read_text())
    path = index / marker["current"] / "meta.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


# ---- detection: the CPU's flags, never a guess -----------------------------------------------------
@pytest.mark.parametrize("caps, native", [
    ({"avx512_f": True, "avx512_bf16": True}, True),
    ({"amx_tile": True, "amx_bf16": True}, True),
    ({"avx512_f": True, "avx2": True, "avx512_bf16": False, "amx_bf16": False}, False),  # AVX512 alone emulates bf16
    ({"architecture": "arm64", "neon": True}, False),
])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, caps, native):
    monkeypatch.delenv("ZOO_CPU_BF16")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    inference._detected_cpu_bf16.cache_clear()
    try:
        assert cpu_has_native_bf16() is native
    finally:
        inference._detected_cpu_bf16.cache_clear()


def test_native_bf16_falls_back_to_proc_cpuinfo(monkeypatch, tmp_path):
    def broken():
        raise RuntimeError("no cpuinfo")

    monkeypatch.delenv("ZOO_CPU_BF16")
    monkeypatch.setattr(torch.cpu, "get_capabilities", broken)
    for flags, native in (("fpu avx2 avx512f avx512_bf16 amx_tile", True), ("fpu avx2 avx512f avx512bw", False)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(inference, "open", lambda path, *a, _p=cpuinfo, **k: open(_p, *a, **k), raising=False)
        inference._detected_cpu_bf16.cache_clear()
        try:
            assert cpu_has_native_bf16() is native
        finally:
            inference._detected_cpu_bf16.cache_clear()


def test_the_environment_overrides_the_detection(monkeypatch):
    monkeypatch.setattr(inference, "_detected_cpu_bf16", lambda: True)
    monkeypatch.setenv("ZOO_CPU_BF16", "0")
    assert not cpu_has_native_bf16()
    monkeypatch.delenv("ZOO_CPU_BF16")
    assert cpu_has_native_bf16()


# ---- the rule -------------------------------------------------------------------------------------
def test_rule_picks_bf16_and_channels_last_on_a_cpu_with_native_bf16(bf16_cpu):
    assert inference_setting("cpu") == InferenceSetting("cpu", "bf16-mixed", True)
    assert inference_setting("cpu").autocast_dtype == torch.bfloat16
    if not torch.cuda.is_available():
        assert inference_setting("auto") == InferenceSetting("cpu", "bf16-mixed", True)
        assert default_trainer(False).precision == "bf16-mixed"


def test_rule_picks_fp32_on_a_cpu_without(fp32_cpu):
    assert inference_setting("cpu") == InferenceSetting("cpu", "32-true", False)
    assert inference_setting("cpu").autocast_dtype is None
    if not torch.cuda.is_available():
        assert default_trainer(False).precision == "32-true"


def test_user_precision_wins_and_channels_last_follows_it(bf16_cpu):
    assert inference_setting("cpu", "32-true") == InferenceSetting("cpu", "32-true", False)
    assert inference_setting("cpu", "32") == InferenceSetting("cpu", "32-true", False)
    assert inference_setting("cpu", "bf16") == InferenceSetting("cpu", "bf16-mixed", True)
    assert inference_setting("cpu", "32-true", recorded="bf16-mixed").precision == "32-true"
    if not torch.cuda.is_available():
        assert default_trainer(False, precision="32-true").precision == "32-true"


def test_user_bf16_on_a_cpu_without_native_bf16_is_kept_without_channels_last(fp32_cpu):
    assert inference_setting("cpu", "bf16-mixed") == InferenceSetting("cpu", "bf16-mixed", False)


def test_an_index_precision_is_kept_where_the_device_computes_it(monkeypatch):
    monkeypatch.setenv("ZOO_CPU_BF16", "1")
    assert inference_setting("cpu", recorded="bf16-mixed").precision == "bf16-mixed"
    assert inference_setting("cpu", recorded="32-true") == InferenceSetting("cpu", "32-true", False)  # an old index
    assert inference_setting("cpu", recorded="16-mixed").precision == "bf16-mixed"  # a GPU's fp16: not on a CPU
    monkeypatch.setenv("ZOO_CPU_BF16", "0")
    assert inference_setting("cpu", recorded="bf16-mixed").precision == "32-true"  # a laptop without bf16


def test_benchmark_stays_fp32_on_the_cpu(bf16_cpu):
    assert inference_setting("cpu", cpu_bf16=False) == InferenceSetting("cpu", "32-true", False)
    cfg = Namespace(trainer=Namespace(accelerator="cpu", precision=None))
    assert default_precision("benchmark", cfg) == "32-true"
    assert default_precision("export", cfg) == "32-true"
    for command in ("index", "search", "compare", "duplicates", "calibrate", "serve"):
        assert default_precision(command, cfg) == "bf16-mixed", command


def test_channels_last_follows_the_rule_unless_set(bf16_cpu):
    model = tiny_model()
    cpu = torch.device("cpu")
    assert model.uses_channels_last(cpu) and model.uses_channels_last(cpu, "bf16-mixed")
    assert not model.uses_channels_last(cpu, "32-true")
    model.channels_last = False
    assert not model.uses_channels_last(cpu, "bf16-mixed")
    model.channels_last = True
    assert model.uses_channels_last(cpu, "32-true")


# ---- the commands --------------------------------------------------------------------------------
def test_cli_index_runs_bf16_on_a_bf16_cpu_and_records_it(shapes_dir, tmp_path, zoo_cli, bf16_cpu):
    out = tmp_path / "bf.index"
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *TINY, "--trainer.accelerator", "cpu")
    assert code == 0, err
    assert "zoo: embedding 12 images on cpu, precision bf16-mixed, channels_last, decoding on the CPU" in err
    assert meta_of(out)["precision"] == "bf16-mixed" and load_index(out).precision == "bf16-mixed"
    # the same vectors as fp32, to bf16's rounding
    ref = zoo.build_index(shapes_dir, tiny_model(), trainer=default_trainer(False, precision="32-true"))
    index = load_index(out)  # kept alive: vectors() of a flat index is a view of its memory
    _, got, _ = index.vectors()
    _, want, _ = ref.vectors()
    assert ref.precision == "32-true" and (got * want).sum(1).min() > 0.98


def test_cli_user_precision_wins(shapes_dir, tmp_path, zoo_cli, bf16_cpu):
    out = tmp_path / "fp.index"
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *TINY, "--trainer.accelerator", "cpu",
                           "--trainer.precision", "32-true")
    assert code == 0, err
    assert "zoo: embedding 12 images on cpu, precision 32-true, decoding" in err
    assert meta_of(out)["precision"] == "32-true"


def test_cli_index_on_a_cpu_without_bf16_is_fp32(shapes_dir, tmp_path, zoo_cli, fp32_cpu):
    out = tmp_path / "fp.index"
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *TINY, "--trainer.accelerator", "cpu")
    assert code == 0, err
    assert "precision 32-true, decoding" in err and meta_of(out)["precision"] == "32-true"


def add_photo(folder: Path, name: str) -> None:
    rng = np.random.default_rng(len(name))
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((80, 60)).save(folder / name)


def test_update_reuses_the_build_precision(shapes_dir, tmp_path, zoo_cli, monkeypatch):
    out = tmp_path / "u.index"
    monkeypatch.setenv("ZOO_CPU_BF16", "1")
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *TINY, "--trainer.accelerator", "cpu")
    assert code == 0, err
    add_photo(shapes_dir / "circle", "new1.png")
    code, _, err = zoo_cli("index", "--update", "--out", out, *TINY, "--trainer.accelerator", "cpu")
    assert code == 0, err
    assert "zoo: embedding 1 images on cpu, precision bf16-mixed" in err and "note" not in err
    # the user's precision wins; the index keeps the build's and says so
    add_photo(shapes_dir / "square", "new2.png")
    code, _, err = zoo_cli("index", "--update", "--out", out, *TINY, "--trainer.precision", "32-true")
    assert code == 0, err
    assert "precision 32-true" in err and "was built at precision bf16-mixed; this update embeds at 32-true" in err
    assert meta_of(out)["precision"] == "bf16-mixed" and len(load_index(out)) == 14


def test_update_of_an_fp32_index_stays_fp32_on_a_bf16_cpu(shapes_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "u.index"
    monkeypatch.setenv("ZOO_CPU_BF16", "0")
    zoo.build_index(shapes_dir, tiny_model(), out=out, trainer=default_trainer(False, accelerator="cpu"))
    assert meta_of(out)["precision"] == "32-true"
    edit_meta(out, lambda m: m.pop("precision"))  # an index of an older zoo: 32-true
    assert current_precision(out) == "32-true"
    monkeypatch.setenv("ZOO_CPU_BF16", "1")
    add_photo(shapes_dir / "circle", "new.png")
    capsys.readouterr()
    index = zoo.build_index(None, out=out, update=True)
    assert "precision 32-true" in capsys.readouterr().err and index.precision == "32-true" and len(index) == 13


def test_search_and_serve_use_the_index_precision(shapes_dir, tmp_path, monkeypatch):
    out = tmp_path / "s.index"
    monkeypatch.setenv("ZOO_CPU_BF16", "1")
    built = zoo.build_index(shapes_dir, tiny_model(), out=out)
    assert built.precision == "bf16-mixed"
    monkeypatch.setenv("ZOO_CPU_BF16", "0")  # e.g. another machine without bf16: fp32, not emulated bf16
    cfg = Namespace(trainer=Namespace(accelerator="cpu", precision=None), index=str(out))
    assert default_precision("search", cfg) == "32-true"
    monkeypatch.setenv("ZOO_CPU_BF16", "1")
    assert default_precision("search", cfg) == "bf16-mixed" and default_precision("serve", cfg) == "bf16-mixed"
    cfg.trainer.accelerator = "gpu"  # zoo serve runs its model on the CPU whatever the trainer's device
    assert default_precision("serve", cfg) == "bf16-mixed"
    edit_meta(out, lambda m: m.update(precision="32-true"))
    assert default_precision("search", cfg) == "32-true"
    assert default_precision("serve", cfg) == "32-true"
    edit_meta(out, lambda m: m.update(precision="bf16-mixed"))

    seen = []
    real_embed = embed
    monkeypatch.setattr("zoo.index.core.embed", lambda model, records, trainer: seen.append(trainer.precision)
                        or real_embed(model, records, trainer=trainer))
    query = sorted((shapes_dir / "circle").iterdir())[0]
    hits = load_index(out).search(query, k=1)
    assert seen == ["bf16-mixed"] and hits[0].path == str(query) and hits[0].similarity > 0.99

    svc = SearchService(load_index(out), out)
    assert svc.inference == InferenceSetting("cpu", "bf16-mixed", True)
    vector = svc.embed(Image.open(query).convert("RGB"))
    assert float(vector @ load_index(out).vectors_of([hits[0].id])[0]) > 0.99
    assert SearchService(load_index(out), out, precision="32-true").inference == InferenceSetting("cpu", "32-true", False)


def test_a_damaged_precision_is_refused(shapes_dir, tmp_path, fp32_cpu):
    out = tmp_path / "d.index"
    zoo.build_index(shapes_dir / "circle", tiny_model(), out=out)
    edit_meta(out, lambda m: m.update(precision="fp4-magic"))
    with pytest.raises(ZooError, match="meta.json is damaged .*precision"):
        load_index(out)
    assert current_precision(out) is None  # the command itself then says what is wrong


# ---- agreement on real photos: the acceptance criteria ----------------------------------------
def shared_mobilenet():
    return zoo.ZooModel("timm/mobilenetv2_100", weights=str(SHARED / "weights" / "mobilenetv2_100_in1k.pth"),
                        model_kwargs={"pad_type": "same"},
                        data_config={"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
                                     "crop_pct": 1.0}).build()


def top_k(vectors: np.ndarray, k: int) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def pairs(vectors: np.ndarray, threshold: float) -> set:
    sims = np.triu(vectors @ vectors.T, 1)
    return set(zip(*np.nonzero(sims >= threshold)))


def test_bf16_is_opt_in_on_a_cpu_that_computes_it(monkeypatch):
    """Native bf16 alone does not make it the default (its vectors agree with fp32 only to
    cosine 0.990, below): ZOO_CPU_BF16=1 does."""
    monkeypatch.setattr(inference, "_detected_cpu_bf16", lambda: True)
    monkeypatch.delenv("ZOO_CPU_BF16")
    assert inference_setting("cpu") == InferenceSetting("cpu", "32-true", False)
    assert inference_setting("cpu", recorded="bf16-mixed").precision == "bf16-mixed"  # an index made so
    monkeypatch.setenv("ZOO_CPU_BF16", "1")
    assert inference_setting("cpu") == InferenceSetting("cpu", "bf16-mixed", True)


@needs_shared
def test_bf16_channels_last_agreement_with_fp32_on_real_photos(monkeypatch):
    """Every 10th food7 photo (151) with the pretrained MobileNetV2: the opt-in bf16 +
    channels_last path against fp32, per image, per top-10 neighbourhood and per duplicate pair,
    at the figures the README publishes (cosine min 0.990, top-10 overlap 0.945, the same
    duplicate pairs); fp32 + channels_last is exact."""
    records = scan_folder(SHARED / "data" / "food7")[::10]
    model = shared_mobilenet()
    monkeypatch.setenv("ZOO_CPU_BF16", "0")
    fp32 = embed(model, records, trainer=default_trainer(False, precision="32-true"), num_workers=0, decode="cpu")
    monkeypatch.setenv("ZOO_CPU_BF16", "1")
    fast = default_trainer(False)
    assert fast.precision == "bf16-mixed" and model.uses_channels_last(torch.device("cpu"), fast.precision)
    bf16 = embed(model, records, trainer=fast, num_workers=0, decode="cpu")
    assert [r.path for r in bf16.records] == [r.path for r in fp32.records] and len(fp32.records) == len(records)
    a, b = fp32.vectors.astype(np.float64), bf16.vectors.astype(np.float64)
    assert pairs(a, 0.95) == pairs(b, 0.95)  # the same duplicates at the default threshold
    cosine = (a * b).sum(1)
    overlap = np.mean([len(set(p) & set(q)) / 10 for p, q in zip(top_k(a, 10), top_k(b, 10))])
    assert cosine.min() >= 0.989 and cosine.mean() >= 0.997, f"cosine min {cosine.min():.5f}, mean {cosine.mean():.5f}"
    assert overlap >= 0.94, f"top-10 neighbour overlap {overlap:.4f}"
    model.channels_last = True  # fp32 + channels_last: the same vectors
    cl = embed(model, records, trainer=default_trainer(False, precision="32-true"), num_workers=0, decode="cpu")
    assert (fp32.vectors.astype(np.float64) * cl.vectors).sum(1).min() >= 0.9999
