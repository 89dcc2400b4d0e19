"""zoo export: ONNX / TorchScript give zoo's embeddings from a preprocessed batch."""
import json

import numpy as np
import pytest
import torch

import zoo
from zoo.model.export import preprocess_transform
from zoo.data.images import load_image
from shapes import make_shapes


@pytest.fixture
def checkpoint(tmp_path, zoo_cli):
    data = make_shapes(tmp_path / "shapes", per_class=8, seed=0, shapes=("circle", "square"))
    runs = tmp_path / "runs"
    code, _, err = zoo_cli("fit", "--data.root", data, "--data.num_workers", "0", "--data.batch_size", "8",
                           "--data.samples_per_class", "4", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                           "--trainer.logger.init_args.save_dir", runs, "--trainer.default_root_dir", runs,
                           "--model.backbone", "test_resnet", "--model.head", "triplet", "--model.pretrained", "false",
                           "--model.data_config", "{image_size: 40, crop_pct: 0.875}",
                           "--model.head_kwargs", "{embedding_dim: 24}")
    assert code == 0, err
    return next(runs.rglob("last.ckpt")), data


def batch_from_sidecar(sidecar, paths):
    info = json.loads(open(sidecar).read())
    t = preprocess_transform(info)
    return torch.stack([t(load_image(p)) for p in paths]).numpy()  # (B, 3, H, W)


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_onnx_and_torchscript_give_zoos_embeddings(checkpoint, tmp_path, zoo_cli):
    import onnxruntime as ort

    ckpt, data = checkpoint
    expected, paths = zoo.embed(data, checkpoint=str(ckpt), paths=True)  # (16, 24)
    assert expected.shape == (16, 24)
    onnx_file = tmp_path / "m.onnx"
    code, stdout, err = zoo_cli("export", "--checkpoint", ckpt, "--format", "onnx", "--out", onnx_file)
    assert code == 0, err and stdout.strip() == str(onnx_file)
    info = json.load(open(tmp_path / "m.onnx.json"))
    assert info["preprocessing"]["input_size"] == [3, 40, 40] and info["preprocessing"]["crop_pct"] == 0.875
    assert info["preprocessing"]["interpolation"] and len(info["preprocessing"]["mean"]) == 3
    assert info["identity"]["architecture"] == "test_resnet+triplet" and info["identity"]["dim"] == 24
    assert info["identity"]["weights"].startswith("checkpoint:last.ckpt sha256:")
    batch = batch_from_sidecar(tmp_path / "m.onnx.json", paths)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"images": batch})[0]
    assert got.shape == (16, 24) and cosines(got, expected).min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    one = session.run(["embedding"], {"images": batch[:1]})[0]  # any batch size
    assert cosines(one, expected[:1]).min() >= 0.9999

    ts_file = tmp_path / "m.pt"
    code, _, err = zoo_cli("export", "--checkpoint", ckpt, "--format", "torchscript", "--out", ts_file)
    assert code == 0, err
    with torch.no_grad():
        got = torch.jit.load(str(ts_file))(torch.from_numpy(batch)).numpy()
    assert cosines(got, expected).min() >= 0.9999

    # never overwrites without --overwrite; then it does
    code, _, err = zoo_cli("export", "--checkpoint", ckpt, "--format", "onnx", "--out", onnx_file)
    assert code == 2 and "m.onnx already exists; pass --overwrite" in err
    code, _, err = zoo_cli("export", "--checkpoint", ckpt, "--format", "onnx", "--out", onnx_file, "--overwrite")
    assert code == 0, err


def test_export_the_model_config_without_checkpoint_and_bad_format(tmp_path, zoo_cli, shapes_dir):
    import onnxruntime as ort

    cfg = ["--model.backbone", "test_resnet", "--model.pretrained", "false", "--model.data_config", "{image_size: 32}"]
    out = tmp_path / "cfg.onnx"
    code, _, err = zoo_cli("export", *cfg, "--out", out)
    assert code == 0, err
    info = json.load(open(tmp_path / "cfg.onnx.json"))
    assert info["identity"]["weights"] == "random init (seed 0)" and info["identity"]["hparams"]["backbone"] == "test_resnet"
    model = zoo.ZooModel("test_resnet", pretrained=False, data_config={"image_size": 32})
    expected, paths = zoo.embed(shapes_dir, model=model, paths=True)
    got = ort.InferenceSession(str(out)).run(None, {"images": batch_from_sidecar(tmp_path / "cfg.onnx.json", paths)})[0]
    assert cosines(got, expected).min() >= 0.9999
    code, _, err = zoo_cli("export", *cfg, "--format", "tflite", "--out", tmp_path / "x")
    assert code == 2 and err.strip().splitlines()[-1] == "zoo: error: unknown export format 'tflite'; use onnx or torchscript"
