"""The GPU path on a CUDA card: JPEGs decoded by nvJPEG, bf16 autocast with channels-last,
training in bf16, and DDP over NCCL, each checked against the CPU's fp32 path.

Skipped where there is no CUDA device (CI runs on CPUs); on a GPU machine:
    pytest tests/test_gpu.py
"""
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from conftest import TINY, save
from shapes import make_shapes, triplet_fit_args
from zoo.data.decode import DevicePreprocess
from zoo.data.images import scan_folder
from zoo.embed.runner import default_trainer, embed
from zoo.model.restore import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def tiny_model():
    return zoo.ZooModel("resnet50", pretrained=False, data_config={"image_size": 64}).build()


def trainer(accelerator: str, precision: str) -> L.Trainer:
    return L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                     enable_progress_bar=False, enable_model_summary=False)


def photo(seed: int, size=(160, 120)) -> Image.Image:
    """A smooth random picture (JPEG-friendly, unlike noise)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


@pytest.fixture
def jpegs(tmp_path) -> Path:
    """Baseline JPEGs of two sizes (nvJPEG decodes them), a progressive one and a PNG (the CPU
    path in the same run), and a truncated file (skipped)."""
    d = tmp_path / "jpegs"
    for i in range(6):
        save(photo(i, (160, 120) if i % 2 else (120, 160)), d / f"baseline{i}.jpg", quality=90)
    save(photo(10), d / "progressive.jpg", quality=90, progressive=True)
    save(photo(11), d / "image.png")
    good = (d / "baseline0.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return d


def cosines(a, b) -> np.ndarray:
    return (np.asarray(a) * np.asarray(b)).sum(1)


def test_the_default_trainer_runs_bf16_on_the_gpu():
    t = default_trainer(False)
    assert t.strategy.root_device.type == "cuda"
    assert t.precision == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")


def test_nvjpeg_on_the_gpu_matches_pillow_on_the_cpu(jpegs, monkeypatch):
    devices = []
    real = DevicePreprocess.decode

    def spy(self, data, device):
        devices.append((device.type, len(data)))
        return real(self, data, device)

    monkeypatch.setattr(DevicePreprocess, "decode", spy)
    model = tiny_model()
    records = scan_folder(jpegs)
    cpu = embed(model, records, trainer=trainer("cpu", "32-true"), decode="cpu", num_workers=0)
    gpu = embed(model, records, trainer=trainer("gpu", "32-true"), decode="auto", num_workers=0)
    assert devices and {d for d, _ in devices} == {"cuda"} and sum(n for _, n in devices) == 6  # the baseline files
    assert [r.path for r in gpu.records] == [r.path for r in cpu.records] and len(cpu.records) == 8
    assert [Path(p).name for p, _ in gpu.skipped] == ["truncated.jpg"]
    assert cosines(gpu.vectors, cpu.vectors).min() >= 0.99


def test_bf16_channels_last_on_the_gpu_agrees_with_fp32_on_the_cpu(jpegs):
    model = tiny_model()
    records = scan_folder(jpegs)
    cpu = embed(model, records, trainer=trainer("cpu", "32-true"), decode="cpu", num_workers=0)
    gpu = embed(model, records, trainer=default_trainer(False), num_workers=2)
    assert model.uses_channels_last(torch.device("cuda"), "bf16-mixed")
    assert gpu.vectors.dtype == np.float32 and np.isfinite(gpu.vectors).all()
    assert cosines(gpu.vectors, cpu.vectors).min() >= 0.99


def test_zoo_index_on_the_gpu_says_what_runs_and_finds_each_photo_first(jpegs, tmp_path, zoo_cli):
    out = tmp_path / "gpu.index"
    code, _, err = zoo_cli("index", "--images", jpegs, "--out", out, *TINY)
    assert code == 0, err
    assert "on cuda:0, precision bf16-mixed, channels_last, decoding on the device" in err, err
    index = zoo.load_index(out)
    ids, vectors, _ = index.vectors()
    cpu = embed(tiny_model(), scan_folder(jpegs), trainer=trainer("cpu", "32-true"), num_workers=0)
    assert index.paths == [r.path for r in cpu.records]
    assert cosines(vectors, cpu.vectors).min() >= 0.99
    _, found = index.search_vectors(vectors, k=1)
    assert index.paths_of(found[:, 0]) == index.paths_of(ids)


def test_training_in_bf16_on_the_gpu_saves_a_checkpoint_the_cpu_embeds_with(tmp_path, zoo_cli):
    data = make_shapes(tmp_path / "shapes", per_class=6, seed=0, size=32, shapes=("circle", "square", "triangle"))
    runs = tmp_path / "runs"
    code, _, err = zoo_cli(*triplet_fit_args(data, runs), "--model.head_kwargs",
                           "{loss: multisimilarity, projection: linear, search_on: features, center: true}",
                           "--model.weight_interpolation", "0.5", "--data.batch_size", "6",
                           "--data.samples_per_class", "2", "--data.val_fraction", "0.34",
                           "--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed",
                           "--trainer.max_epochs", "2")
    assert code == 0, err
    ckpt = next((runs / "lightning_logs" / "version_0" / "checkpoints").glob("last.ckpt"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1 and all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    model = load_model(str(ckpt))
    records = scan_folder(data)
    cpu = embed(model, records, trainer=trainer("cpu", "32-true"), num_workers=0)
    gpu = embed(load_model(str(ckpt)), records, trainer=trainer("gpu", "32-true"), num_workers=0)
    assert cosines(gpu.vectors, cpu.vectors).min() >= 0.999


def test_ddp_over_nccl_indexes_and_trains(tmp_path):
    """--trainer.strategy ddp on the GPUs there are (one card: one NCCL process; the index is the
    one the CPU builds)."""
    devices = str(min(2, torch.cuda.device_count()))
    data = make_shapes(tmp_path / "shapes", per_class=6, seed=0, size=32, shapes=("circle", "square", "triangle"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = ["--trainer.accelerator", "gpu", "--trainer.devices", devices, "--trainer.strategy", "ddp"]
    out = tmp_path / "ddp.index"
    run = subprocess.run([sys.executable, "-m", "zoo", "index", "--images", str(data), "--out", str(out), *TINY,
                          "--batch_size", "4", "--shard_size", "4", *ddp],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-1500:]
    assert run.stdout.count("zoo: indexed 18 items") == 1
    _, vectors, _ = zoo.load_index(out).vectors()
    cpu = embed(tiny_model(), scan_folder(data), trainer=trainer("cpu", "32-true"), num_workers=0)
    assert cosines(vectors, cpu.vectors).min() >= 0.99
    runs = tmp_path / "runs"
    fit = subprocess.run([sys.executable, "-m", "zoo", *map(str, triplet_fit_args(data, runs)), "--model.head_kwargs",
                          "{loss: multisimilarity, projection: linear}", "--data.batch_size", "6",
                          "--data.samples_per_class", "2", "--data.val_fraction", "0.34", "--trainer.max_epochs", "1",
                          *ddp], capture_output=True, text=True, env=env, timeout=300)
    assert fit.returncode == 0, fit.stderr[-1500:]
    assert (runs / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
