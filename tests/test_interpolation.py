"""WiSE-FT weight interpolation (zoo.model.interpolation), the centre a centring head takes from
the clean validation photos, and training at a smaller size than the model embeds (FixRes)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from zoo.data.datamodule import ZooDataModule
from zoo.errors import ZooError
from zoo.metrics.retrieval import RetrievalMetrics, retrieval_metrics
from zoo.model.module import ZooModel


def tiny_model(**kw) -> ZooModel:
    return ZooModel(backbone="test_resnet", pretrained=False, head="triplet", data_config={"image_size": 32},
                    head_kwargs={"loss": "multisimilarity", "projection": "linear", "search_on": "features", "center": True},
                    **kw).build()


@pytest.fixture
def start_weights(monkeypatch) -> list:
    """The model's weights when the starting model has been validated, before the first step,
    as each fit in this process sees them (start.ckpt holds them too, but only until an epoch
    beats the start: ModelCheckpoint then removes it)."""
    from zoo.model.start_validation import StartValidation

    seen = []
    real = StartValidation.on_sanity_check_end

    def spy(self, trainer, pl_module):
        seen.append({k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()})
        return real(self, trainer, pl_module)

    monkeypatch.setattr(StartValidation, "on_sanity_check_end", spy)
    return seen


def test_centred_retrieval_metrics_score_the_vectors_minus_their_mean():
    """Two classes that share one big direction: centred, the scores are those of the functional
    twin on the centred vectors, and the mean is kept for the head."""
    emb = torch.tensor([[10.0, 1.0, 0.2], [10.0, 0.8, -0.1], [10.0, -1.0, 0.1], [10.0, -0.9, 0.3], [10.0, 0.1, -0.2]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    m = RetrievalMetrics(center=True)
    m.update(emb, labels)
    summary = m.compute()
    assert torch.allclose(m.mean_vector, emb.mean(0))
    expected = retrieval_metrics(F.normalize(emb - emb.mean(0), dim=1), labels)["summary"]
    assert summary == expected
    plain = RetrievalMetrics()
    plain.update(emb, labels)
    assert plain.compute() == retrieval_metrics(emb, labels)["summary"] and plain.mean_vector is None


def test_weight_interpolation_is_checked():
    with pytest.raises(ZooError, match=r"weight_interpolation 0.0 must be in \(0, 1\]"):
        ZooModel(backbone="test_resnet", pretrained=False, weight_interpolation=0.0)
    with pytest.raises(ZooError, match=r"weight_interpolation 1.5 must be in \(0, 1\]"):
        ZooModel(backbone="test_resnet", pretrained=False, weight_interpolation=1.5)
    assert ZooModel(backbone="test_resnet", pretrained=False).configure_callbacks() == []


def test_train_size_makes_training_crops_smaller_than_validation_images(tmp_path):
    from shapes import make_shapes

    data = make_shapes(tmp_path / "shapes", per_class=4, seed=0, size=40, shapes=("circle", "square"))
    dm = ZooDataModule(root=str(data), val_fraction=0.5, batch_size=4, samples_per_class=2, num_workers=0,
                       auto_augment="rand-m9", train_size=24)
    dm.trainer = SimpleNamespace(lightning_module=tiny_model())
    dm.setup("fit")
    assert dm.train_set[0]["image"].shape == (3, 24, 24)
    assert dm.val_set[0]["image"].shape == (3, 32, 32)  # the model's own input size
    with pytest.raises(ZooError, match="train_size=8: the training side must be between 16 and 1024 pixels"):
        ZooDataModule(root=str(data), train_size=8)


def test_fit_saves_the_interpolated_weights_centred_on_the_validation_photos(tmp_path, zoo_cli, start_weights):
    """weight_interpolation 0.25: every trained tensor of the saved model is start + 0.25 x
    (trained - start), the trained weights stay in the checkpoint for resuming, and the saved
    centre is the mean search vector of the clean validation photos under the saved weights."""
    from shapes import make_shapes, triplet_fit_args

    from zoo.model.restore import load_model

    data = make_shapes(tmp_path / "shapes", per_class=6, seed=0, size=32, shapes=("circle", "square", "triangle"))
    runs = tmp_path / "runs"
    code, _, err = zoo_cli(*triplet_fit_args(data, runs), "--model.head_kwargs",
                           "{loss: multisimilarity, projection: linear, search_on: features, center: true}",
                           "--model.lr", "0.01", "--model.backbone_lr", "0.01", "--model.weight_interpolation", "0.25",
                           "--data.auto_augment", "rand-m9", "--data.train_size", "24",
                           "--data.batch_size", "6", "--data.samples_per_class", "2", "--data.val_fraction", "0.34",
                           "--trainer.max_epochs", "2")
    assert code == 0, err
    ckpts = runs / "lightning_logs" / "version_0" / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    (start,) = start_weights
    saved, trained = last["state_dict"], last["current_model_state"]
    moved = [k for k, v in trained.items() if v.is_floating_point() and "running_center" not in k and not torch.equal(v, start[k])]
    assert "head.mlp.weight" in moved and any(k.startswith("backbone.") for k in moved)
    for k in moved:
        assert torch.allclose(saved[k], start[k] + 0.25 * (trained[k] - start[k]), atol=1e-6), k

    model = load_model(str(ckpts / "last.ckpt"))
    dm = ZooDataModule(root=str(data), val_fraction=0.34, batch_size=6, samples_per_class=2, num_workers=0)
    dm.trainer = SimpleNamespace(lightning_module=model)
    dm.setup("fit")
    images = torch.stack([dm.val_set[i]["image"] for i in range(len(dm.val_set))])
    with torch.no_grad():
        mean = model.head.searched(model.features(images)).mean(0)
    assert torch.allclose(model.head.running_center, mean, atol=1e-5)
    assert not torch.allclose(saved["head.running_center"], trained["head.running_center"], atol=1e-3)


def test_a_resumed_fit_goes_on_from_the_trained_weights_and_interpolates_from_the_start(tmp_path, zoo_cli,
                                                                                       start_weights):
    """--ckpt_path last.ckpt: training goes on (Lightning's WeightAveraging restores the trained
    weights, current_model_state) and the next save still interpolates from the first run's
    start, not from the interpolated weights the resumed run was loaded from."""
    from shapes import make_shapes, triplet_fit_args

    data = make_shapes(tmp_path / "shapes", per_class=6, seed=0, size=32, shapes=("circle", "square", "triangle"))
    runs = tmp_path / "runs"
    args = [*triplet_fit_args(data, runs), "--model.head_kwargs", "{loss: multisimilarity, projection: linear}",
            "--model.lr", "0.01", "--model.backbone_lr", "0.01", "--model.weight_interpolation", "0.5",
            "--data.batch_size", "6", "--data.samples_per_class", "2", "--data.val_fraction", "0.34"]
    code, _, err = zoo_cli(*args, "--trainer.max_epochs", "1")
    assert code == 0, err
    ckpts = runs / "lightning_logs" / "version_0" / "checkpoints"
    start = start_weights[0]
    first = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    code, _, err = zoo_cli(*args, "--trainer.max_epochs", "2", "--ckpt_path", ckpts / "last.ckpt")
    assert code == 0, err
    second = torch.load(next((runs / "lightning_logs" / "version_1").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert second["epoch"] == 1
    k = "head.mlp.weight"
    trained1, trained2 = first["current_model_state"][k], second["current_model_state"][k]
    assert not torch.equal(trained1, trained2)
    assert torch.allclose(second["state_dict"][k], start[k] + 0.5 * (trained2 - start[k]), atol=1e-6)
