"""Embedding at any size: uint8 hand-over, device-side JPEG decoding, shards on disk that a
stopped run resumes from, and one index from many processes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

import zoo
from conftest import SHARED, TINY, needs_shared, save
from zoo.data.images import ImageDataset, scan_folder
from zoo.data.decode import device_decodable
from zoo.data.transforms import eval_transform, pixel_transform
from zoo.embed.runner import default_trainer, embed
from zoo.model.inference import InferenceSetting, inference_setting
from zoo.errors import ZooError


def tiny_model(**kw):
    return zoo.ZooModel("resnet50", pretrained=False, data_config={"image_size": 64}, **kw).build()


def cpu_index(images):
    """The reference: the tiny model's index built in fp32 on the CPU, also on a GPU machine."""
    return zoo.build_index(images, tiny_model(), trainer=default_trainer(False, accelerator="cpu"))


def same_index(a, b):
    """Same items in the same id order, same vectors (up to float rounding)."""
    ia, va, _ = a.vectors()
    ib, vb, _ = b.vectors()
    assert a.paths == b.paths and list(ia) == list(ib)
    np.testing.assert_allclose(va, vb, atol=1e-5)


def photo(seed: int, size=(120, 90)) -> Image.Image:
    """A smooth random picture (JPEG-friendly, unlike noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


# ---- pixels cross as uint8; the model normalises on its device ---------------------------------
def test_loader_hands_over_uint8_and_embeddings_equal_the_float_transform(shapes_dir):
    model = tiny_model()
    records = scan_folder(shapes_dir)
    item = ImageDataset(records, pixel_transform(model))[0]
    assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (3, 64, 64)
    cpu = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    emb = embed(model, records, trainer=cpu)  # fp32 on the CPU, to compare with the float path exactly
    with torch.no_grad():  # the float path, as timm's own transform makes it
        ref = model.eval()(torch.stack([eval_transform(model)(Image.open(r.path).convert("RGB")) for r in records]))
    np.testing.assert_allclose(emb.vectors, ref.numpy(), atol=1e-5)


def test_inference_precision_is_bf16_on_a_gpu(monkeypatch):
    """On a GPU as before; on a CPU without native bf16 (conftest: ZOO_CPU_BF16=0), fp32. The
    CPU with bf16: tests/test_precision.py."""
    assert inference_setting("auto").precision == "32-true" or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert inference_setting("auto").precision == "bf16-mixed" and inference_setting("gpu").precision == "bf16-mixed"
    assert inference_setting("auto").channels_last
    assert inference_setting("cpu") == InferenceSetting("cpu", "32-true", False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert inference_setting("cuda").precision == "16-mixed"


# ---- JPEGs decoded where the model runs -------------------------------------------------------
@pytest.fixture
def mixed_files(tmp_path) -> Path:
    """Files of every kind the device decoder must leave to the CPU path, and plain JPEGs."""
    d = tmp_path / "mixed"
    save(photo(0), d / "baseline.jpg", quality=90)
    save(photo(1, (90, 120)), d / "baseline_tall.jpg", quality=90)
    save(photo(2), d / "progressive.jpg", quality=90, progressive=True)
    save(photo(3).convert("CMYK"), d / "cmyk.jpg", quality=90)
    save(photo(4).convert("L"), d / "grey.jpg", quality=90)
    save(photo(5), d / "image.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown turned by 90 degrees
    save(photo(6), d / "rotated.jpg", quality=90, exif=exif.tobytes())
    good = (d / "baseline.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "notes.txt").write_text("not an image")
    return d


def test_device_decodable_accepts_only_upright_baseline_rgb_jpegs(mixed_files):
    verdict = {p.name: device_decodable(p.read_bytes()) for p in sorted(mixed_files.iterdir())}
    assert verdict == {"baseline.jpg": True, "baseline_tall.jpg": True, "cmyk.jpg": False, "grey.jpg": False,
                       "image.png": False, "notes.txt": False, "progressive.jpg": False, "rotated.jpg": False,
                       "truncated.jpg": False}


def test_device_decoding_matches_the_cpu_path_and_skips_nothing_more(mixed_files, capsys):
    model = tiny_model()
    records = scan_folder(mixed_files)
    cpu = embed(model, records, trainer=default_trainer(False), decode="cpu")
    dev = embed(model, records, trainer=default_trainer(False), decode="device")
    assert [r.path for r in dev.records] == [r.path for r in cpu.records]
    assert len(cpu.records) == 7  # all but the truncated file and the text
    assert sorted(Path(p).name for p, _ in dev.skipped) == ["notes.txt", "truncated.jpg"] == \
        sorted(Path(p).name for p, _ in cpu.skipped)
    cos = (dev.vectors * cpu.vectors).sum(1)
    assert cos.min() >= 0.99, dict(zip((Path(r.path).name for r in cpu.records), cos.round(4)))


def test_a_jpeg_the_device_decoder_refuses_is_decoded_by_pillow(mixed_files, monkeypatch):
    from zoo.data.decode import DevicePreprocess

    real = DevicePreprocess.decode

    def refuse_first(self, jpegs, device):  # as if nvJPEG failed on the first file of each batch
        out, _ = real(self, jpegs[1:], device)
        return out, [0] if jpegs else []

    model = tiny_model()
    records = [r for r in scan_folder(mixed_files) if r.path.endswith(("baseline.jpg", "baseline_tall.jpg"))]
    cpu = embed(model, records, trainer=default_trainer(False), decode="cpu")
    monkeypatch.setattr(DevicePreprocess, "decode", refuse_first)
    dev = embed(model, records, trainer=default_trainer(False), decode="device", batch_size=2)
    assert [r.path for r in dev.records] == [r.path for r in cpu.records]
    assert (dev.vectors * cpu.vectors).sum(1).min() >= 0.99


@needs_shared
def test_device_decoding_matches_pillow_on_real_photos():
    """Each food7 photo (one in 25, a mix of decodable and fallback files) embeds the same
    with the pretrained MobileNetV2 whether decoded by Pillow in the workers or on the device."""
    records = scan_folder(SHARED / "data" / "food7")[::25]
    model = zoo.ZooModel("timm/mobilenetv2_100", weights=str(SHARED / "weights" / "mobilenetv2_100_in1k.pth"),
                         model_kwargs={"pad_type": "same"}).build()
    decodable = sum(device_decodable(Path(r.path).read_bytes()) for r in records)
    assert 0 < decodable < len(records)  # both paths are exercised
    cpu = embed(model, records, trainer=default_trainer(False), decode="cpu")
    dev = embed(model, records, trainer=default_trainer(False), decode="device")
    assert [r.path for r in dev.records] == [r.path for r in cpu.records] and len(cpu.records) == len(records)
    cos = (dev.vectors * cpu.vectors).sum(1)
    assert cos.min() >= 0.99


# ---- shards on disk, resume ---------------------------------------------------------------------
class StopAt(Callback):
    """Fails the run at a given batch, as a crash would."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.batch:
            raise RuntimeError("simulated crash")


class CountImages(Callback):
    def __init__(self):
        self.n = 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.n += len(outputs["index"])


def test_a_stopped_index_run_resumes_from_its_shards_and_ends_with_the_same_index(shapes_dir, tmp_path, capsys):
    reference = zoo.build_index(shapes_dir, tiny_model())  # in memory, uninterrupted
    out = tmp_path / "s.index"
    trainer = default_trainer(False)
    trainer.callbacks.append(StopAt(batch=3))
    with pytest.raises(RuntimeError, match="simulated crash"):
        zoo.build_index(shapes_dir, tiny_model(), out=out, trainer=trainer, batch_size=2, shard_size=2)
    assert "the same command resumes from them" in capsys.readouterr().err
    work = list(out.glob(".embed-*"))
    assert len(work) == 1 and not (out / "ZOO_INDEX.json").exists()
    done = sum(len(np.load(p)) for p in work[0].glob("*.index.npy"))
    assert done == 6  # batches 0-2 in full shards, batch 3 crashed before it was written

    counter = CountImages()
    trainer = default_trainer(False)
    trainer.callbacks.append(counter)
    index = zoo.build_index(shapes_dir, tiny_model(), out=out, trainer=trainer, batch_size=2, shard_size=2)
    assert f"resuming: 6 of {len(reference)} images were embedded by an earlier run" in capsys.readouterr().err
    assert counter.n == len(reference) - 6  # only what was missing
    same_index(zoo.load_index(out), reference)
    assert index.meta["factory"] == "Flat" and not list(out.glob(".embed-*"))  # the work is gone when done


def test_work_of_another_job_is_discarded_not_mixed_in(shapes_dir, tmp_path, capsys):
    out = tmp_path / "s.index"
    trainer = default_trainer(False)
    trainer.callbacks.append(StopAt(batch=2))
    with pytest.raises(RuntimeError):
        zoo.build_index(shapes_dir / "circle", tiny_model(), out=out, trainer=trainer, batch_size=1, shard_size=1)
    index = zoo.build_index(shapes_dir, tiny_model(), out=out)  # other files: a new job
    assert "discarding the unfinished embeddings of an earlier run" in capsys.readouterr().err
    same_index(index, zoo.build_index(shapes_dir, tiny_model()))
    assert not list(out.glob(".embed-*"))


def test_a_shard_built_to_unpickle_is_refused_in_one_line(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "s.index"
    trainer = default_trainer(False)
    trainer.callbacks.append(StopAt(batch=2))
    with pytest.raises(RuntimeError):
        zoo.build_index(shapes_dir, tiny_model(), out=out, trainer=trainer, batch_size=2, shard_size=2)
    shard = sorted(next(out.glob(".embed-*")).glob("*.index.npy"))[0]
    np.save(shard, np.array([{"run": "code"}], dtype=object), allow_pickle=True)
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *TINY)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"zoo: error: {shard} is damaged (Object arrays cannot be loaded when allow_pickle=False); "
        f"remove {shard.parent} to embed again from the start")


def test_a_killed_zoo_index_resumes(tmp_path):
    """SIGKILL (no clean-up at all) after the first shards; the same command then finishes."""
    from shapes import make_shapes

    images = make_shapes(tmp_path / "many", per_class=20, seed=1, shapes=("circle", "square", "triangle"))
    out = tmp_path / "k.index"
    cmd = [sys.executable, "-m", "zoo", "index", "--images", str(images), "--out", str(out), *TINY,
           "--batch_size", "2", "--shard_size", "2", "--trainer.accelerator", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob(".embed-*/*.index.npy"))) < 2 and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sum(len(np.load(p)) for p in out.glob(".embed-*/*.index.npy"))
    assert 4 <= done < 60
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr[-500:]
    assert f"resuming: {done} of 60 images" in rerun.stderr
    assert "img/s" in rerun.stderr and "precision 32-true" in rerun.stderr  # rate, ETA and what runs, on stderr
    same_index(zoo.load_index(out), cpu_index(images))


def test_two_processes_build_the_same_index_as_one(shapes_dir, tmp_path):
    """--trainer.devices 2 with DDP on the CPU: each process embeds its half into its own
    shards; the first builds the index from all of them."""
    out = tmp_path / "ddp.index"
    cmd = [sys.executable, "-m", "zoo", "index", "--images", str(shapes_dir), "--out", str(out), *TINY,
           "--batch_size", "2", "--shard_size", "2",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr[-800:]
    assert "embedding 12 images on 2 x cpu" in run.stderr and "MEMBER: 2/2" in run.stderr
    # the first process's bar: its own half (3 batches of 2), so the other half came from the other's shards
    assert "| 3/3 [" in run.stderr and "/6 [" not in run.stderr
    assert run.stdout.count("zoo: indexed 12 items") == 1  # one process builds and reports the index
    same_index(zoo.load_index(out), cpu_index(shapes_dir))


def test_a_planted_work_folder_link_is_never_followed_or_removed(shapes_dir, tmp_path, capsys):
    """A link named like zoo's work folder, pointing at the user's files, inside an index."""
    out = tmp_path / "s.index"
    zoo.build_index(shapes_dir / "circle", tiny_model(), out=out)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    (out / ".embed-0123456789abcdef01234567").symlink_to(mine, target_is_directory=True)
    zoo.build_index(shapes_dir, tiny_model(), out=out, overwrite=True)
    assert (mine / "keep.txt").read_text() == "keep" and sorted(p.name for p in mine.iterdir()) == ["keep.txt"]
    assert len(zoo.load_index(out)) == 12


def test_cli_index_says_what_runs_and_channels_last_gives_the_same_vectors(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "cl.index"
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *TINY, "--channels_last", "true",
                           "--trainer.accelerator", "cpu")
    assert code == 0, err
    assert "zoo: embedding 12 images on cpu, precision 32-true, channels_last, decoding on the CPU, batch 32, 0 loader workers" in err
    same_index(zoo.load_index(out), cpu_index(shapes_dir))
