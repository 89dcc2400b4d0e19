"""Copy detection: configured augmentations, NT-Xent, GeM, pair metrics, start validation,
calibration and --threshold auto."""
import csv
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.data.augment import PRESETS, SomeOf, build_augmentation, edits, make_copy, resolve_spec
from zoo.evaluate.calibration import lookup_threshold, save_entry
from zoo.data.datamodule import ZooDataModule
from zoo.errors import ZooError
from zoo.index.core import load_index
from zoo.metrics.pairs import average_precision, pair_scores, pr_curve, threshold_for_precision
from zoo.serve.duplicates import load_duplicates
from conftest import TINY
from shapes import make_shapes


def noise_image(seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ---- augmentations as configuration -------------------------------------------------------
def test_presets_and_bad_specs():
    assert resolve_spec(None) == PRESETS["default"] and resolve_spec("copydetect") == PRESETS["copydetect"]
    names = {s["name"] for s in PRESETS["copydetect"]}
    assert {"JPEG", "RandomResizedCrop", "ColorJitter", "RandomRotation", "RandomHorizontalFlip", "Downscale", "GaussianBlur"} <= names
    for preset in PRESETS:  # every preset builds and edits an image
        assert isinstance(edits(preset, (32, 32))(noise_image()), Image.Image)
    with pytest.raises(ZooError, match="unknown augmentation preset 'nope'; presets: default, copydetect, copyset"):
        resolve_spec("nope")
    with pytest.raises(ZooError, match="unknown augmentation 'Blurr'"):
        edits([{"name": "Blurr"}], (32, 32))
    with pytest.raises(ZooError, match=r"augmentation step .*expected \{name"):
        resolve_spec([{"name": "JPEG", "quality": 5}])
    with pytest.raises(ZooError, match="augmentation JPEG"):
        edits([{"name": "JPEG", "args": {"quality": 0}}], (32, 32))
    with pytest.raises(ZooError, match="unknown augmentation preset"):
        ZooDataModule("x", augmentations="nope")


def test_each_configured_step_is_applied_exactly():
    im = noise_image()
    flip = edits([{"name": "RandomHorizontalFlip", "args": {"p": 1.0}}], (30, 40))(im)
    assert np.array_equal(np.asarray(flip), np.asarray(im)[:, ::-1])
    never = edits([{"name": "RandomHorizontalFlip", "args": {"p": 1.0}, "p": 0.0}], (30, 40))(im)
    assert np.array_equal(np.asarray(never), np.asarray(im))
    down = edits([{"name": "Downscale", "args": {"scale": 0.5}}], (30, 40))(im)
    expected = im.resize((20, 15), Image.BILINEAR).resize((40, 30), Image.BILINEAR)
    assert np.array_equal(np.asarray(down), np.asarray(expected))
    crop = edits([{"name": "RandomResizedCrop", "args": {"size": "input", "scale": [0.5, 0.5]}}], (16, 24))(im)
    assert crop.size == (24, 16)  # "input" is the working size [H, W]
    jpeg = make_copy(im, [{"name": "JPEG", "args": {"quality": [5, 5]}}], seed=0)
    assert jpeg.size == im.size and not np.array_equal(np.asarray(jpeg), np.asarray(im))
    # seeded copies are reproducible, and differ between seeds
    a, b, c = (make_copy(im, "copydetect", seed=s) for s in (1, 1, 2))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    # the tail of every pipeline: resize, scale to [0, 1], normalise
    tensor = build_augmentation([], {"input_size": (3, 8, 8), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)})(
        Image.new("RGB", (20, 10), (255, 0, 51)))
    assert tensor.shape == (3, 8, 8)
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([2.0, -2.0, (0.2 - 0.5) / 0.25]))


def test_some_of_applies_exactly_n_in_order():
    seen = []
    steps = [lambda x, k=k: seen.append(k) or x for k in range(5)]
    torch.manual_seed(0)
    for _ in range(20):
        seen.clear()
        SomeOf(steps, n=3)(0)
        assert len(seen) == 3 and seen == sorted(seen)
    with pytest.raises(ZooError, match="SomeOf: n=6"):
        SomeOf(steps, n=6)


def test_unlabelled_validation_pairs_each_image_with_a_fixed_copy(tmp_path):
    from zoo.data.images import scan_folder
    from zoo.data.datamodule import AugmentedQueries

    make_shapes(tmp_path / "s", per_class=3, seed=0, shapes=("circle",))
    records = scan_folder(tmp_path / "s")
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    ds = AugmentedQueries(records, build_augmentation([], cfg), build_augmentation("copyset", cfg), seed=0)
    items = [ds[i] for i in range(len(ds))]
    assert [it["label"] for it in items] == [0, 0, 1, 1, 2, 2]  # whole pairs in every batch
    assert [it["is_query"] for it in items] == [False, True] * 3
    assert torch.equal(ds[1]["image"], items[1]["image"])  # the same copy every epoch
    assert not torch.equal(items[0]["image"], items[1]["image"])


# ---- loss and pooling ---------------------------------------------------------------------
def test_ntxent_loss_matches_the_formula():
    from zoo.heads.triplet import TripletHead, ntxent_loss

    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.9, 0.5], [-0.3, 1.0], [0.1, 0.8]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    t = 0.1
    s = emb @ emb.T / t
    terms = []
    for a in range(4):
        for p in range(4):
            if a != p and labels[a] == labels[p]:
                negatives = torch.exp(s[a][labels != labels[a]]).sum()
                terms.append(-torch.log(torch.exp(s[a, p]) / (torch.exp(s[a, p]) + negatives)))
    expected = torch.stack(terms).mean()
    assert torch.allclose(ntxent_loss(emb, labels, t), expected, atol=1e-5)
    head = TripletHead(6, embedding_dim=2, hidden_dim=4, loss="ntxent", temperature=t).eval()
    feats = torch.randn(4, 6)
    loss, logs = head.training_loss(feats, None, labels)
    assert torch.allclose(loss, ntxent_loss(head(feats), labels, t)) and "triplet_acc" in logs
    with pytest.raises(ZooError, match="loss 'softmax' is not one of triplet, ntxent"):  # arcface is one (issue 24)
        TripletHead(6, loss="softmax")


@pytest.mark.parametrize("projection", ["linear", "residual", "identity"])
def test_projections_start_at_the_backbone_features_then_train(projection):
    from zoo.heads.triplet import ntxent_loss

    model = zoo.ZooModel("test_resnet", head="triplet", pretrained=False,
                         head_kwargs={"projection": projection, "loss": "ntxent"}).build().eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        feats = model.backbone(images)  # (4, dim)
        assert model.embedding_dim == feats.shape[1]
        assert torch.allclose(model(images), torch.nn.functional.normalize(feats, dim=1), atol=1e-6)
    if projection == "identity":
        assert not list(model.head.parameters())
        return
    opt = torch.optim.SGD(model.head.parameters(), lr=0.5)
    ntxent_loss(model.head(feats), torch.tensor([0, 0, 1, 1])).backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(model(images), torch.nn.functional.normalize(feats, dim=1), atol=1e-4)


def test_copydetect_config_starts_at_the_frozen_gem_features():
    import yaml
    from pathlib import Path

    cfg = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "configs/copydetect/mobilenetv2_shared.yaml"))["model"]
    cfg = {**cfg, "weights": None, "pretrained": False, "data_config": {**cfg["data_config"], "input_size": [3, 64, 64]}}
    trained = zoo.ZooModel(**cfg).build().eval()
    frozen = zoo.ZooModel(**{k: v for k, v in cfg.items() if k not in ("head", "head_kwargs", "freeze_until")}).build().eval()
    assert trained.head.projection == "linear" and trained.head.loss_name == "ntxent"
    assert type(trained.backbone.model.global_pool).__name__ == "GeM"
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(trained(images), frozen(images), atol=1e-6)


def test_copydetect_config_sees_the_whole_photo_as_training_does(tmp_path):
    """The copy recipe squashes each photo to the input size (crop_mode squash), as its training
    edits do: a copy stretched to twice the width embeds like the original; a centre crop would
    cut its sides away and see another picture."""
    import yaml
    from pathlib import Path

    cfg = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "configs/copydetect/mobilenetv2_shared.yaml"))["model"]
    assert cfg["data_config"]["crop_mode"] == "squash"
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))  # smooth once enlarged
    picture.resize((64, 64), Image.BICUBIC).save(tmp_path / "a.png")
    picture.resize((128, 64), Image.BICUBIC).save(tmp_path / "b.png")  # the same picture, twice as wide
    scores = {}
    for mode in ("squash", "center"):
        model = zoo.ZooModel(**{**cfg, "weights": None, "pretrained": False, "head": "frozen", "head_kwargs": {},
                                "freeze_until": None, "data_config": {**cfg["data_config"], "crop_mode": mode, "input_size": [3, 64, 64]}})
        a, b = zoo.embed([tmp_path / "a.png", tmp_path / "b.png"], model=model)
        scores[mode] = float(a @ b)
    assert scores["squash"] > 0.999 and scores["center"] < 0.99


def test_projection_options_and_bad_values(zoo_cli, shapes_dir, tmp_path):
    from zoo.heads.triplet import TripletHead

    assert TripletHead(6).dim == 128 and isinstance(TripletHead(6).mlp[1], torch.nn.BatchNorm1d)  # the default mlp
    assert TripletHead(6, embedding_dim=3).dim == 3 and TripletHead(6, projection="linear", embedding_dim=6).dim == 6
    with pytest.raises(ZooError, match="^head 'triplet': projection 'pca' is not one of mlp, linear, residual, identity$"):
        TripletHead(6, projection="pca")
    with pytest.raises(ZooError, match="projection 'linear' keeps the backbone's 6 dimensions; embedding_dim 3 needs projection mlp"):
        TripletHead(6, projection="linear", embedding_dim=3)
    code, out, err = zoo_cli("fit", "--data.root", shapes_dir, "--model.backbone", "test_resnet", "--model.head", "triplet",
                             "--model.head_kwargs", "{projection: pca}", "--trainer.default_root_dir", tmp_path,
                             "--trainer.logger.init_args.save_dir", tmp_path, *TINY[:4], "--data.num_workers", "0",
                             "--data.batch_size", "4", "--data.samples_per_class", "2")
    assert code != 0 and err.strip().splitlines()[-1].startswith("zoo: error: head 'triplet': projection 'pca'")
    assert "Traceback" not in err


def test_koleo_regulariser_on_constructed_embeddings():
    from zoo.heads.triplet import TripletHead, koleo_loss, ntxent_loss

    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    # nearest other-label neighbours: 0 -> 2 (sqrt 2), 1 -> 2 (sqrt 0.8), 2 -> 1 (sqrt 0.8), 3 -> 2 (sqrt 2)
    expected = -(2 * math.log(math.sqrt(2)) + 2 * math.log(math.sqrt(0.8))) / 4
    assert koleo_loss(emb, labels).item() == pytest.approx(expected, abs=1e-6)
    assert koleo_loss(emb, torch.zeros(4, dtype=torch.long)).item() == 0.0  # no other label: nothing to spread
    head = TripletHead(2, projection="identity", loss="ntxent", koleo_weight=0.5)
    loss, logs = head.training_loss(emb, None, labels)
    assert loss.item() == pytest.approx(ntxent_loss(emb, labels).item() + 0.5 * expected, abs=1e-5)
    assert logs["koleo"].item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ZooError, match="koleo_weight -1 must not be negative"):
        TripletHead(2, koleo_weight=-1)


def test_gem_pooling_option():
    from zoo.backbones.timm_backbone import GeM

    x = torch.rand(2, 3, 4, 5)
    assert torch.allclose(GeM(3.0)(x), x.pow(3).mean(dim=(2, 3)).pow(1 / 3))
    assert torch.allclose(GeM(1.0)(x), x.mean(dim=(2, 3)))
    avg = zoo.ZooModel("test_resnet", pretrained=False).build()
    gem = zoo.ZooModel("test_resnet", pretrained=False, model_kwargs={"global_pool": "gem", "gem_p": 4}).build()
    assert isinstance(gem.backbone.model.global_pool, GeM) and gem.backbone.model.global_pool.p == 4.0
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats = gem.backbone.forward_features(images)
        assert torch.allclose(gem.backbone(images), GeM(4.0)(feats), atol=1e-6)
        assert not torch.allclose(gem.backbone(images), avg.backbone(images))
    # a checkpoint's recipe rebuilds the same pooling without timm seeing an unknown pool type
    again = zoo.ZooModel("test_resnet", pretrained=False)
    again.configure_model(load_weights=False, recipe=gem.recipe)
    assert isinstance(again.backbone.model.global_pool, GeM)


# ---- pair metrics and calibration ---------------------------------------------------------
def test_pair_metrics_on_constructed_scores():
    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4])
    positive = np.array([1, 1, 0, 1, 0, 1, 0], bool)
    c = pr_curve(scores, positive)
    assert c["threshold"].tolist() == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]  # the tie at 0.8 is one step
    assert np.allclose(c["precision"], [1, 2 / 3, 3 / 4, 3 / 5, 4 / 6, 4 / 7])
    assert threshold_for_precision(scores, positive, 0.95) == {"threshold": 0.9, "precision": 1.0, "recall": 0.25, "tp": 1, "fp": 0}
    assert threshold_for_precision(scores, positive, 0.7)["threshold"] == 0.7
    assert threshold_for_precision(scores, positive, 0.6)["threshold"] == 0.5  # recall 1.0 at precision 4/6
    from sklearn.metrics import average_precision_score

    assert math.isclose(average_precision(scores, positive), average_precision_score(positive, scores))
    vecs = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], np.float32)
    sims, pos = pair_scores(vecs, np.array([0, 0, 1, 1]))
    assert pos.tolist() == [True, False, False, False, False, True] and len(sims) == 6
    assert np.isclose(sims[0], 1 / math.sqrt(1.01))


def test_calibration_file_merges_per_model_and_lookup_fails_cleanly(tmp_path):
    path = tmp_path / "cal.json"
    with pytest.raises(ZooError, match=r"no calibration for a\+frozen .*does not exist.*run `zoo calibrate"):
        lookup_threshold(path, "a+frozen", "w1")
    save_entry(path, "a+frozen | w1", {"threshold": 0.8}, overwrite=False)
    save_entry(path, "b+frozen | w2", {"threshold": 0.7}, overwrite=False)
    assert lookup_threshold(path, "a+frozen", "w1") == 0.8 and lookup_threshold(path, "b+frozen", "w2") == 0.7
    with pytest.raises(ZooError, match="already holds a calibration for a\\+frozen | w1; pass --overwrite"):
        save_entry(path, "a+frozen | w1", {"threshold": 0.5}, overwrite=False)
    save_entry(path, "a+frozen | w1", {"threshold": 0.5}, overwrite=True)
    assert lookup_threshold(path, "a+frozen", "w1") == 0.5 and lookup_threshold(path, "b+frozen", "w2") == 0.7
    with pytest.raises(ZooError, match=r"no calibration for a\+frozen \(weights: other\) in"):
        lookup_threshold(path, "a+frozen", "other")  # thresholds are per model


def test_cli_calibrate_then_duplicates_threshold_auto(shapes_dir, tmp_path, zoo_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ["--backbone", "test_resnet", *TINY]
    code, _, err = zoo_cli("duplicates", "--images", shapes_dir, "--threshold", "auto", "--out", "d0", *model)
    assert code == 2 and err.strip().splitlines()[-1].startswith("zoo: error: --threshold auto: no calibration for test_resnet+frozen")
    code, out, err = zoo_cli("calibrate", "--images", shapes_dir, "--sample", "12", "--copies", "2", "--precision", "0.9", *model)
    assert code == 0, err
    entry = json.load(open(tmp_path / "zoo-calibration.json"))["models"]["test_resnet+frozen | random init (seed 0)"]
    assert entry["precision"] >= 0.9 and entry["positive_pairs"] == 12 * 3 and entry["images"] == 12
    assert f"threshold {entry['threshold']:.4f}" in out and (tmp_path / entry["plot"]).is_file()
    # the entry's threshold is the lowest with precision >= 0.9 on the same model's pair scores
    code, _, err = zoo_cli("calibrate", "--images", shapes_dir, "--sample", "12", "--copies", "2", *model)
    assert code == 2 and "already holds a calibration for test_resnet+frozen" in err
    # size-aware (issue 20): the threshold is chosen for this library's size and its estimate reported
    assert entry["size_aware"]["negative_pairs"] == entry["negative_pairs"] and "a library of 12 photos with 1 copy pairs: " in out
    code, out, err = zoo_cli("duplicates", "--images", shapes_dir, "--threshold", "auto", "--out", "d1", *model)
    assert code == 0, err
    result = json.load(open(tmp_path / "d1" / "groups.json"))
    report = result["auto_threshold"]
    assert report["library_images"] == 12 and report["library_pairs"] == 66 and report["precision_target"] == 0.9
    assert result["threshold"] >= report["search_floor"] and "--threshold auto: " in err
    assert report["expected_precision"] is None or report["expected_precision"] >= 0.9
    # the seam with zoo serve: a size-aware groups.json loads for review, ids mapped, its chosen threshold shown
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", "ix", *model)
    assert code == 0, err
    groups = load_duplicates(tmp_path / "d1", load_index(tmp_path / "ix"))
    assert len(groups) == len(result["exact_groups"]) + len(result["near_groups"])
    assert groups.about["threshold"] == result["threshold"]
    assert all(groups.ids.get(p) is not None for g in groups.groups for p in g.paths)
    # a version 1 entry (one threshold) still works, with a note that it is not size-aware
    data = json.load(open(tmp_path / "zoo-calibration.json"))
    data["version"] = 1
    del data["models"]["test_resnet+frozen | random init (seed 0)"]["size_aware"]
    json.dump(data, open(tmp_path / "zoo-calibration.json", "w"))
    code, out, err = zoo_cli("duplicates", "--images", shapes_dir, "--threshold", "auto", "--out", "d3", *model)
    assert code == 0, err
    assert json.load(open(tmp_path / "d3" / "groups.json"))["threshold"] == entry["threshold"]
    assert "--threshold auto: " in err and "is version 1 (one threshold" in err and "does not adapt" in err
    # another model has no calibration in the file
    code, _, err = zoo_cli("duplicates", "--images", shapes_dir, "--threshold", "auto", "--out", "d2", *TINY)
    assert code == 2 and "no calibration for resnet50+frozen" in err


# ---- training: start validation, pair metrics, best never worse than start ---------------
def test_training_validates_the_start_and_keeps_it_when_epochs_are_no_better(tmp_path, zoo_cli):
    data = tmp_path / "flat"
    data.mkdir()
    make_shapes(tmp_path / "s", per_class=4, seed=0, shapes=("circle", "square", "triangle"))
    for i, p in enumerate(sorted((tmp_path / "s").rglob("*.png"))):
        p.rename(data / f"{i:02d}.png")
    code, out, err = zoo_cli(
        "fit", "--data.root", data, "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1", "--trainer.logger.init_args.save_dir", tmp_path / "runs",
        "--trainer.default_root_dir", tmp_path / "runs", "--model.backbone", "test_resnet", "--model.head", "triplet",
        "--model.pretrained", "false", "--model.data_config", "{image_size: 32}", "--model.model_kwargs", "{global_pool: gem}",
        "--model.head_kwargs", "{loss: ntxent, temperature: 0.1}", "--data.augmentations", "copydetect",
        "--data.batch_size", "4", "--data.samples_per_class", "2", "--data.val_fraction", "0.35", "--trainer.max_epochs", "2")
    assert code == 0, err
    rows = list(csv.DictReader(open(next((tmp_path / "runs").rglob("metrics.csv")))))
    val = [r for r in rows if r.get("val/map")]
    assert [int(r["epoch"]) for r in val] == [-1, 0, 1]  # the starting model first
    assert all(r["val/pair_ap"] and r["val/recall@p95"] for r in val)
    assert len({r["val/loss"] for r in val}) == 3 and all(float(r["val/loss"]) > 0 for r in val)
    start = float(val[0]["val/map"])
    best = re.search(r"best checkpoint \(val/map = ([0-9.]+)\): (\S+)", out)
    assert float(best.group(1)) == pytest.approx(max(float(r["val/map"]) for r in val), abs=1e-4)
    epochs_better = any(float(r["val/map"]) > start for r in val[1:])
    assert best.group(2).endswith("start.ckpt") == (not epochs_better)
    assert zoo.load_model(best.group(2)).embedding_dim == 128  # a usable checkpoint


# ---- background score normalisation ------------------------------------------------------
def test_background_normalisation_on_constructed_vectors():
    from zoo.dedup.background import background_pairs, background_similarity

    angle = lambda deg: [math.cos(math.radians(deg)), math.sin(math.radians(deg))]  # noqa: E731
    vectors = np.array([angle(0), angle(10), angle(90), angle(95)], np.float32)
    background = np.array([angle(d) for d in (100, 110, 120, -80)], np.float32)
    bg = background_similarity(vectors, background, k=2)
    # the 2nd nearest background vector: 0 deg -> -80 (80 deg) is 1st, 100 is 2nd
    assert np.allclose(bg, [math.cos(math.radians(a)) for a in (100, 90, 20, 15)], atol=1e-6)
    pairs, scores = background_pairs(vectors, bg, threshold=0.5)
    raw = {(0, 1): math.cos(math.radians(10)), (2, 3): math.cos(math.radians(5))}
    expected = {p: raw[p] - (bg[p[0]] + bg[p[1]]) / 2 for p in raw}
    assert expected[(0, 1)] > 0.5 > expected[(2, 3)]  # the pair in a crowded region drops out
    assert [tuple(p) for p in pairs.tolist()] == [(0, 1)] and np.isclose(scores[0], expected[(0, 1)], atol=1e-6)
    with pytest.raises(ZooError, match="background set holds 4 images; --background_k 5"):
        background_similarity(vectors, background, k=5)


def test_cli_duplicates_with_background(shapes_dir, tmp_path, zoo_cli):
    bg = make_shapes(tmp_path / "bg", per_class=3, seed=5, shapes=("cross",))
    code, _, err = zoo_cli("duplicates", "--images", shapes_dir, "--threshold", "0.01", "--background", bg,
                           "--background_k", "2", "--out", tmp_path / "d", "--backbone", "test_resnet", *TINY)
    assert code == 0, err
    result = json.load(open(tmp_path / "d" / "groups.json"))
    assert result["background"] == str(bg) and result["background_k"] == 2
    rows = list(csv.DictReader(open(tmp_path / "d" / "pairs.csv")))
    assert rows and all(float(r["similarity"]) >= 0.01 for r in rows)
    code, _, err = zoo_cli("duplicates", "--images", shapes_dir, "--background", tmp_path / "nowhere",
                           "--out", tmp_path / "d2", "--backbone", "test_resnet", *TINY)
    assert code == 2 and "zoo: error: --background" in err and "no such folder or index" in err
