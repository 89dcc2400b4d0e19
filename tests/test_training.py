import csv

import pytest
import torch

import zoo
from zoo.datamodule import ZooDataModule
from zoo.errors import ZooError
from shapes import make_shapes


def test_bad_configs_fail_before_training(tmp_path):
    with pytest.raises(ZooError, match="batch_size=6 does not fit the sampler"):
        ZooDataModule(str(tmp_path), batch_size=6, samples_per_class=4)
    with pytest.raises(ZooError, match="samples_per_class=1"):
        ZooDataModule(str(tmp_path), batch_size=8, samples_per_class=1)
    with pytest.raises(ZooError, match="unknown head"):
        zoo.ZooModel("resnet50", head="siamese")


def test_autoencoder_trains_and_checkpoint_reloads_identically(tmp_path, zoo_cli):
    data = make_shapes(tmp_path / "shapes", per_class=8, seed=0, shapes=("circle", "square"))
    code, _, err = zoo_cli(
        "fit", "--model.backbone", "null", "--model.head", "autoencoder", "--model.data_config", "{image_size: 32}",
        "--model.head_kwargs", "{bottleneck: 16, recon_size: 16, width: 8}", "--model.lr", "0.01",
        "--data.root", data, "--data.batch_size", "8", "--data.samples_per_class", "4", "--data.num_workers", "0",
        "--trainer.max_epochs", "15", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", tmp_path / "runs", "--trainer.default_root_dir", tmp_path / "runs",
    )
    assert code == 0, err
    log = next((tmp_path / "runs").rglob("metrics.csv"))
    losses = [float(r["train/recon_mse"]) for r in csv.DictReader(open(log)) if r.get("train/recon_mse")]
    assert len(losses) >= 15 and sum(losses[-3:]) / 3 < 0.85 * sum(losses[:2]) / 2  # reconstruction improves
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    a, b = zoo.load_model(str(ckpt)), zoo.load_model(str(ckpt))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert a.weights_id.startswith("checkpoint:last.ckpt sha256:")
    # a trained checkpoint is usable wherever a backbone is
    code, out, err = zoo_cli("index", "--images", data, "--out", tmp_path / "ae.index", "--checkpoint", ckpt, "--num_workers", "0")
    assert code == 0, err
    assert zoo.load_index(tmp_path / "ae.index").meta["model"]["architecture"] == "own-encoder+autoencoder"
