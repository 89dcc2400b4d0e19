import csv

import pytest
import torch

import zoo
from zoo.data.datamodule import ZooDataModule
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


def fit_args(data, runs, *extra):
    return ("fit", "--data.root", data, "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.log_every_n_steps", "1", "--trainer.logger.init_args.save_dir", runs,
            "--trainer.default_root_dir", runs, *extra)


def test_triplet_training_beats_frozen_features_on_heldout_shapes(tmp_path, zoo_cli):
    # classes differ by shape only; colours, sizes and positions are random in every class
    train = make_shapes(tmp_path / "train", per_class=150, seed=1, size=32)
    query = make_shapes(tmp_path / "query", per_class=25, seed=2, size=32)
    gallery = make_shapes(tmp_path / "gallery", per_class=25, seed=3, size=32)
    model = ["--model.backbone", "test_resnet", "--model.pretrained", "false",
             "--model.data_config", "{image_size: 32, crop_pct: 1.0}"]
    code, _, err = zoo_cli(*fit_args(train, tmp_path / "runs"), "--model.head", "triplet", *model,
                           "--model.head_kwargs", "{embedding_dim: 32, hidden_dim: 128, mining: all}",
                           "--model.lr", "1e-3", "--model.backbone_lr", "1e-3",
                           "--data.batch_size", "32", "--data.samples_per_class", "8", "--data.val_fraction", "0.1",
                           "--trainer.max_epochs", "40", "--trainer.num_sanity_val_steps", "0")
    assert code == 0, err
    log = next((tmp_path / "runs").rglob("metrics.csv"))
    rows = list(csv.DictReader(open(log)))
    acc = [float(r["train/triplet_acc"]) for r in rows if r.get("train/triplet_acc")]
    assert sum(acc[-10:]) / 10 > 0.8  # most triplets are ordered right after training
    assert any(r.get("val/map") for r in rows)  # validated every epoch
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    # held-out images, same protocol for the frozen backbone and the trained checkpoint
    code, out, err = zoo_cli("benchmark", "--query", query, "--gallery", gallery, *model, "--num_workers", "0", "--backbone", "test_resnet",
                             "--checkpoint", ckpt, "--out", tmp_path / "bench", "--samples", "0")
    assert code == 0, err
    rows = {r["architecture"]: r for r in csv.DictReader(open(tmp_path / "bench" / "results.csv"))}
    frozen = float(rows["test_resnet+frozen"]["hit@1"])
    trained = float(next(r for a, r in rows.items() if a != "test_resnet+frozen")["hit@1"])
    assert frozen < 0.45  # 4 classes: chance is 0.25
    assert trained > frozen + 0.3, (frozen, trained)


def test_resume_from_last_checkpoint_continues(tmp_path, zoo_cli):
    data = make_shapes(tmp_path / "shapes", per_class=12, seed=0, shapes=("circle", "square"))
    common = (*fit_args(data, tmp_path / "runs"), "--model.backbone", "test_resnet", "--model.head", "triplet",
              "--model.pretrained", "false", "--model.data_config", "{image_size: 32}",
              "--data.batch_size", "8", "--data.samples_per_class", "4")
    code, _, err = zoo_cli(*common, "--trainer.max_epochs", "2")
    assert code == 0, err
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    first = torch.load(last, map_location="cpu", weights_only=False)
    assert first["epoch"] == 1
    steps_per_epoch = first["global_step"] // 2
    code, _, err = zoo_cli(*common, "--trainer.max_epochs", "3", "--ckpt_path", last)
    assert code == 0, err
    last = max((tmp_path / "runs").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 3 * steps_per_epoch  # one more epoch, not three
    logs = sorted((tmp_path / "runs").rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    epochs = {int(r["epoch"]) for r in csv.DictReader(open(logs[-1])) if r.get("train/loss")}
    assert epochs == {2}


def test_unlabelled_training_uses_augmented_positives_and_validates_on_copies(tmp_path, zoo_cli):
    data = tmp_path / "flat"
    make_shapes(tmp_path / "s", per_class=6, seed=0)
    data.mkdir()
    for i, p in enumerate(sorted((tmp_path / "s").rglob("*.png"))):
        p.rename(data / f"{i:02d}.png")  # no class folders: no labels
    code, _, err = zoo_cli(*fit_args(data, tmp_path / "runs"), "--model.backbone", "test_resnet", "--model.head", "triplet",
                           "--model.pretrained", "false", "--model.data_config", "{image_size: 32}",
                           "--data.batch_size", "8", "--data.samples_per_class", "2", "--trainer.max_epochs", "2")
    assert code == 0, err
    rows = list(csv.DictReader(open(next((tmp_path / "runs").rglob("metrics.csv")))))
    assert any(r.get("train/triplet_acc") for r in rows)
    val = [float(r["val/hit@1"]) for r in rows if r.get("val/hit@1")]
    assert len(val) == 3 and all(0.0 <= v <= 1.0 for v in val)  # the starting model, then each epoch


@pytest.mark.parametrize("freeze_norm_stats", ["null", "true"])
def test_fine_tuning_keeps_frozen_batch_norm_statistics(tmp_path, zoo_cli, freeze_norm_stats):
    data = make_shapes(tmp_path / "shapes", per_class=8, seed=0, shapes=("circle", "square"))
    code, _, err = zoo_cli(*fit_args(data, tmp_path / "runs"), "--model.backbone", "test_resnet", "--model.head", "triplet",
                           "--model.pretrained", "false", "--model.data_config", "{image_size: 32}",
                           "--model.freeze_until", "layer2", "--model.freeze_norm_stats", freeze_norm_stats,
                           "--model.backbone_lr", "1e-2", "--data.batch_size", "8", "--data.samples_per_class", "4",
                           "--trainer.max_epochs", "1")
    assert code == 0, err
    trained = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)["state_dict"]
    init = zoo.ZooModel("test_resnet", head="triplet", pretrained=False).build().state_dict()
    changed = lambda key: not torch.equal(trained[key], init[key])  # noqa: E731
    assert not changed("backbone.model.layer2.0.bn1.running_mean")  # frozen stage: statistics kept
    assert not changed("backbone.model.layer2.0.conv1.weight")
    assert changed("backbone.model.layer4.0.conv1.weight")  # fine-tuned stage
    # random init needs batch statistics above the frozen stages, unless told otherwise
    assert changed("backbone.model.layer4.0.bn1.running_mean") == (freeze_norm_stats == "null")
