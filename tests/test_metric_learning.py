"""The labelled recipe (issue 24): pytorch-metric-learning losses as options of the triplet head,
warm-up + cosine schedule, layer-wise learning rates, timm's RandAugment, the configs."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from zoo.errors import ZooError
from zoo.heads.losses import LOSSES
from zoo.heads.triplet import TripletHead
from zoo.model.module import ZooModel
from zoo.model.optim import schedule_factor

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "metric"


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """16 feature vectors of 4 classes (4 each): class centres plus as much noise, so that
    every loss has hard pairs to learn from."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(4)
    centres = torch.randn(4, 32, generator=g)
    return centres[labels] + 1.5 * torch.randn(16, 32, generator=g), labels


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_builds_and_one_step_lowers_it(loss):
    torch.manual_seed(0)
    mining = {"mining": "all"} if loss == "triplet" else {}
    head = TripletHead(32, projection="linear", loss=loss, num_classes=4, **mining)
    feats, labels = batch()
    before, _ = head.training_loss(feats, None, labels)
    assert before.item() > 0
    head_params = list(head.parameters())
    if loss in ("proxyanchor", "arcface"):  # the class vectors are the head's parameters
        assert any(p is q for p in head.loss_fn.parameters() for q in head_params)
        assert "loss_fn." + next(n for n, _ in head.loss_fn.named_parameters()) in dict(head.named_parameters())
    opt = torch.optim.SGD(head_params, lr=0.01)
    opt.zero_grad()
    before.backward()
    opt.step()
    after, _ = head.training_loss(feats, None, labels)
    assert after.item() < before.item()


def test_search_on_features_trains_the_projection_and_embeds_the_features():
    """search_on: features: the loss trains the projection (and, through it, whatever makes the
    features), while the model embeds the normalised features the projection starts from."""
    torch.manual_seed(0)
    head = TripletHead(32, embedding_dim=8, loss="multisimilarity", search_on="features")
    assert head.dim == 32 and head.loss_dim == 8
    feats, labels = batch()
    feats.requires_grad_(True)
    assert torch.allclose(head(feats), torch.nn.functional.normalize(feats, dim=1))
    assert head.project(feats).shape == (16, 8)
    loss, _ = head.training_loss(feats, None, labels)
    loss.backward()
    assert feats.grad.abs().sum() > 0  # the backbone learns through the projection
    before = head(feats).detach().clone()
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    opt.step()
    assert torch.equal(head(feats).detach(), before)  # the projection is not what is searched
    assert head.training_loss(feats, None, labels)[0].item() < loss.item()
    default = TripletHead(32, embedding_dim=8)
    assert default.dim == 8 and default(feats).shape == (16, 8)
    with pytest.raises(ZooError, match="search_on 'pixels' is not one of projection, features"):
        TripletHead(32, search_on="pixels")


def test_koleo_over_images_spreads_same_class_photos_too():
    """koleo_over: labels measures each image's nearest neighbour of another label; images,
    its nearest other image: two same-class photos at the same point cost nothing in the first
    and a large -log(distance) in the second."""
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1e-3], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 2])
    by_label = TripletHead(2, projection="identity", loss="multisimilarity", koleo_weight=1.0)
    by_image = TripletHead(2, projection="identity", loss="multisimilarity", koleo_weight=1.0, koleo_over="images")
    _, logs_label = by_label.training_loss(emb, None, labels)
    _, logs_image = by_image.training_loss(emb, None, labels)
    # by label: every image's nearest other-label image is at distance sqrt(2) (90 degrees)
    assert logs_label["koleo"].item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-3)
    # by image: the two near-identical photos are 1e-3 apart
    expected = -(2 * math.log(1e-3) + 2 * math.log(math.sqrt(2))) / 4
    assert logs_image["koleo"].item() == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ZooError, match="koleo_over 'classes' is not one of labels, images"):
        TripletHead(2, koleo_over="classes")


def test_center_subtracts_the_running_mean_of_the_training_batches():
    """center: the first training batch sets the centre to its mean search vector, later ones
    move it by (1 - momentum); the search vectors are the normalised difference; validation's
    loss leaves it alone; the centre travels in the state dict, and an uncentred head has none
    (its checkpoints load as before)."""
    head = TripletHead(2, projection="identity", loss="multisimilarity", center=True, center_momentum=0.5)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # normalised rows; their mean is (0.5, 0.5)
    labels = torch.tensor([0, 1])
    assert torch.equal(head(a), a)  # before training: a zero centre changes nothing
    head.train()
    head.training_loss(a, None, labels)
    assert torch.allclose(head.running_center, torch.tensor([0.5, 0.5]))
    # (1, 0) - (0.5, 0.5) = (0.5, -0.5) -> (0.7071, -0.7071): the two photos now point apart
    assert torch.allclose(head(a), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]) / math.sqrt(2))
    head.training_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), None, labels)  # mean (1, 0)
    assert torch.allclose(head.running_center, torch.tensor([0.75, 0.25]))  # 0.5 * old + 0.5 * new
    head.eval()
    head.training_loss(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), None, labels)
    assert torch.allclose(head.running_center, torch.tensor([0.75, 0.25]))
    state = head.state_dict()
    assert set(state) >= {"running_center", "center_updates"} and int(state["center_updates"]) == 2
    again = TripletHead(2, projection="identity", loss="multisimilarity", center=True)
    again.load_state_dict(state, strict=True)
    assert torch.equal(again(a), head(a))
    assert "running_center" not in TripletHead(2, projection="identity", loss="multisimilarity").state_dict()
    with pytest.raises(ZooError, match=r"center_momentum 1.0 must be in \[0, 1\)"):
        TripletHead(2, center=True, center_momentum=1.0)


def test_loss_options_are_checked():
    with pytest.raises(ZooError, match="loss 'proxyanchor' learns one vector per class and needs num_classes"):
        TripletHead(32, projection="linear", loss="proxyanchor")
    with pytest.raises(ZooError, match="loss 'softmax' is not one of triplet, ntxent, multisimilarity"):
        TripletHead(32, loss="softmax")
    with pytest.raises(ZooError, match=r"loss 'multisimilarity' options \{'gamma': 1\}"):
        TripletHead(32, loss="multisimilarity", loss_options={"gamma": 1})
    head = TripletHead(32, projection="linear", loss="multisimilarity", loss_options={"alpha": 3.0})
    assert head.loss_fn.alpha == 3.0 and head.loss_fn.beta == 50.0  # the paper's defaults under the option


def test_warmup_then_cosine_schedule():
    # 10 warm-up steps from 1/11 to 10/11, then 1 falling along a cosine to 0 at step 110
    assert schedule_factor(0, 110, 10) == pytest.approx(1 / 11)
    assert schedule_factor(9, 110, 10) == pytest.approx(10 / 11)
    assert schedule_factor(10, 110, 10) == 1.0
    assert schedule_factor(60, 110, 10) == pytest.approx(0.5)
    assert schedule_factor(35, 110, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert schedule_factor(110, 110, 10) == pytest.approx(0.0) and schedule_factor(500, 110, 10) == pytest.approx(0.0)
    assert schedule_factor(50, 110, 0, kind="constant") == 1.0 and schedule_factor(2, 110, 4, kind="constant") == 0.6


def tiny_model(**kw) -> ZooModel:
    model = ZooModel(backbone="test_resnet", head="triplet", pretrained=False, data_config={"image_size": 32},
                     head_kwargs={"projection": "linear", "loss": "proxyanchor"}, lr=0.01, backbone_lr=0.001, **kw)
    model._trainer = SimpleNamespace(estimated_stepping_batches=100, datamodule=SimpleNamespace(classes=["a", "b", "c"]))
    return model.build()


def test_optimizer_groups_schedule_and_num_classes_from_the_data():
    model = tiny_model(lr_schedule="cosine", warmup_steps=10, layer_decay=0.5, freeze_until=None)
    assert model.head.num_classes == 3 and model.hparams.head_kwargs["num_classes"] == 3  # kept for checkpoints
    assert model.head.loss_fn.proxies.shape == (3, model.head.dim)
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = {g["name"]: g["initial_lr"] for g in opt.param_groups}  # the base rates (lr: after the warm-up's first factor)
    assert lrs["head"] == 0.01 and lrs["loss"] == 0.01  # loss_lr_scale 1 by default
    backbone = [g for g in opt.param_groups if g["name"].startswith("backbone")]
    assert len(backbone) >= 3 and backbone[-1]["initial_lr"] == 0.001
    for lower, upper in zip(backbone, backbone[1:]):  # each block half the rate of the one above
        assert lower["initial_lr"] == pytest.approx(0.5 * upper["initial_lr"])
    every = {id(p) for g in opt.param_groups for p in g["params"]}
    assert every == {id(p) for p in model.parameters() if p.requires_grad}  # each trainable parameter once
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 / 11)  # warm-up: step 0
    for _ in range(55):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)  # step 55 of 100 after 10 of warm-up: half-way down
    # without a schedule: the optimizer alone, one backbone group, as before
    plain = tiny_model().configure_optimizers()
    assert isinstance(plain, torch.optim.AdamW) and [g["name"] for g in plain.param_groups] == ["head", "loss", "backbone"]


def test_randaugment_from_timm(tmp_path):
    from zoo.data.augment import timm_augmentation
    from zoo.data.datamodule import ZooDataModule

    cfg = {"input_size": (3, 40, 40), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}
    t = timm_augmentation(cfg, "rand-m9-mstd0.5-inc1")
    assert "RandAugment" in repr(t) and "RandomResizedCrop" in repr(t)
    torch.manual_seed(0)
    image = Image.radial_gradient("L").convert("RGB")
    a, b = t(image), t(image)
    assert a.shape == (3, 40, 40) and not torch.equal(a, b)  # random each time
    with pytest.raises(ZooError, match="auto_augment 'nonsense': not a timm policy"):
        ZooDataModule(root=str(tmp_path), auto_augment="nonsense")
    with pytest.raises(ZooError, match=r"crop_scale \[0.0, 1.0\]"):
        ZooDataModule(root=str(tmp_path), auto_augment="rand-m9", crop_scale=(0.0, 1.0))


def test_randaugment_at_full_magnitude_posterizes_to_one_bit_not_zero():
    """timm's increasing posterize asks for 0 bits at magnitude 10, which Pillow 13 refuses (a
    ValueError in a loader worker ended a training); zoo keeps one bit, whatever Pillow does with 0."""
    from PIL import ImageOps

    from zoo.data.augment import timm_augmentation

    cfg = {"input_size": (3, 40, 40), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}
    t = timm_augmentation(cfg, "rand-m10-n1-inc1")
    ra = next(s for s in t.transforms if type(s).__name__ == "RandAugment")
    ra.ops = [op for op in ra.ops if op.name == "PosterizeIncreasing"]
    ra.ops[0].prob = 1.0  # always applied
    assert len(ra.ops) == 1 and ra.ops[0].level_fn(10.0, ra.ops[0].hparams) == (0,)  # timm asks for 0 bits
    image = Image.radial_gradient("L").convert("RGB")
    out = ra(image)
    assert out.getextrema() == ImageOps.posterize(image, 1).getextrema() == ((0, 128),) * 3


@pytest.mark.parametrize("name", ["mobilenetv2_shared", "mobilenetv2_shared_closeups", "resnet50", "vgg16", "inception_resnet_v2"])
def test_metric_configs_parse(name, zoo_cli):
    code, out, err = zoo_cli("fit", "--config", CONFIGS / f"{name}.yaml", "--print_config")
    assert code == 0, err
    assert "loss: proxyanchor" in out and "loss_lr_scale: 100.0" in out and "lr_schedule: cosine" in out and "auto_augment: rand-m9-mstd0.5-inc1" in out
    assert "projection: linear" in out and "layer_decay: 0.8" in out
    assert "weight_interpolation: 0.8" in out and "train_size: 2" in out and "center: true" in out


def test_fit_with_proxies_schedule_and_randaugment_then_the_checkpoint_reloads(tmp_path, zoo_cli):
    from shapes import make_shapes, triplet_fit_args

    from zoo.model.restore import load_model

    data = make_shapes(tmp_path / "shapes", per_class=6, seed=0, size=32, shapes=("circle", "square", "triangle"))
    runs = tmp_path / "runs"
    code, _, err = zoo_cli(*triplet_fit_args(data, runs), "--model.head_kwargs",
                           "{loss: proxyanchor, projection: linear, loss_lr_scale: 100}", "--model.lr_schedule", "cosine",
                           "--model.warmup_steps", "1", "--model.layer_decay", "0.8", "--data.auto_augment", "rand-m9",
                           "--data.batch_size", "6", "--data.samples_per_class", "2", "--data.val_fraction", "0.34",
                           "--trainer.max_epochs", "2", "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1")
    assert code == 0, err
    rows = list(csv.DictReader(open(next(runs.rglob("metrics.csv")))))
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/map") for r in rows)
    ckpt = next(runs.rglob("last.ckpt"))
    model = load_model(str(ckpt))
    assert model.hparams.head_kwargs["num_classes"] == 3 and model.head.loss_fn.proxies.shape == (3, model.head.dim)
    x = torch.rand(2, 3, 32, 32)
    assert model.eval()(x).shape == (2, model.head.dim)
