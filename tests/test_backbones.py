import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo.backbones import create_backbone
from zoo.errors import ZooError
from conftest import SHARED, needs_shared


@pytest.mark.parametrize("name,dim,size", [("resnet50", 2048, 64), ("vgg16", 4096, 64), ("inception_resnet_v2", 1536, 96)])
def test_builtin_backbone_embeds_with_right_dim(name, dim, size):
    m = zoo.ZooModel(name, pretrained=False, data_config={"image_size": size}).build().eval()
    assert m.embedding_dim == dim
    assert m.data_config["input_size"] == (3, size, size)
    with torch.no_grad():
        e = m(torch.randn(2, 3, size, size))
    assert e.shape == (2, dim)
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)  # L2-normalised
    assert not any(p.requires_grad for p in m.parameters())  # frozen extractor: nothing trains


def test_builtin_weight_tags_and_preprocessing_from_timm():
    b = create_backbone("inception_resnet_v2", pretrained=False)
    assert b.model.pretrained_cfg["tag"] == "tf_in1k"
    assert b.data_config["input_size"] == (3, 299, 299) and b.data_config["mean"] == (0.5, 0.5, 0.5)
    assert create_backbone("resnet50", pretrained=False).model.pretrained_cfg["tag"] == "tv_in1k"


def test_pretrained_unavailable_says_so_and_records_random_init(capsys):
    b = create_backbone("timm/resnet18.a1_in1k", pretrained=True)  # the tests run offline
    err = capsys.readouterr().err
    assert "WARNING" in err and "RANDOM INIT" in err
    assert b.weights_id == "random init (seed 0)"


def test_random_init_is_reproducible():
    a = create_backbone("timm/resnet18", pretrained=False, seed=3)
    b = create_backbone("timm/resnet18", pretrained=False, seed=3)
    c = create_backbone("timm/resnet18", pretrained=False, seed=4)
    wa, wb, wc = (x.model.conv1.weight for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_round_trip(tmp_path, suffix):
    src = create_backbone("timm/resnet18", pretrained=False, seed=7)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    loaded = create_backbone("timm/resnet18", weights=str(path), seed=0)
    for k, v in src.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    assert loaded.weights_id.startswith(f"file:w{suffix} sha256:") and len(loaded.weights_id.split("sha256:")[1]) == 64


def test_weights_file_that_does_not_fit_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(create_backbone("timm/resnet34", pretrained=False).model.state_dict(), path)
    with pytest.raises(ZooError, match="does not fit resnet18: 0 missing keys .* unexpected keys"):
        create_backbone("timm/resnet18", weights=str(path))
    with pytest.raises(ZooError, match="weights file not found"):
        create_backbone("timm/resnet18", weights=str(tmp_path / "nope.pth"))


def test_freeze_until_stage_and_unknown_stage():
    m = zoo.ZooModel("timm/resnet18", head="triplet", pretrained=False, freeze_until="layer3").build()
    named = dict(m.backbone.model.named_parameters())
    assert not named["layer3.1.bn2.weight"].requires_grad and not named["conv1.weight"].requires_grad
    assert named["layer4.0.conv1.weight"].requires_grad
    with pytest.raises(ZooError, match="has no stage 'layer9'; use one of conv1, bn1, layer1, layer2, layer3, layer4"):
        zoo.ZooModel("timm/resnet18", head="triplet", pretrained=False, freeze_until="layer9").build()


@needs_shared
def test_shared_mobilenetv2_classifies_and_embeds_food(tmp_path):
    import timm
    from zoo.data.images import load_image

    path = SHARED / "weights" / "mobilenetv2_100_in1k.pth"
    food = SHARED / "data" / "food7"
    clf = timm.create_model("mobilenetv2_100", pretrained=True, pad_type="same", pretrained_cfg_overlay=dict(
        file=str(path), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0)).eval()
    tf = timm.data.create_transform(**timm.data.resolve_model_data_config(clf))
    photo = sorted((food / "satay").iterdir())[0]
    x = tf(load_image(photo)).unsqueeze(0)
    with torch.no_grad():
        p1, p2 = clf(x).softmax(-1), clf(x).softmax(-1)
    assert torch.equal(p1, p2) and int(p1.argmax()) == 987 and p1.max() > 0.1  # repeatable, known class, 15x uniform

    # the zoo model reads its build recipe from the sidecar json: no extra flags needed
    m = zoo.ZooModel("timm/mobilenetv2_100", weights=str(path)).build().eval()
    assert m.data_config["mean"] == (0.5, 0.5, 0.5) and m.data_config["interpolation"] == "bilinear"
    assert m.weights_id.endswith("90b5a777abde1f1873ba97b617915c8e3ea91a58d124ed1e9efa68ac6373ff9a")
    from zoo.data.images import records_from
    from zoo.embed.runner import embed

    a = sorted((food / "satay").iterdir())[:6]
    b = sorted((food / "apam_balik").iterdir())[:6]
    v = embed(m, records_from(a + b), report=False).vectors
    sim = v @ v.T
    within = (sim[:6, :6].sum() - 6 + sim[6:, 6:].sum() - 6) / 60
    between = sim[:6, 6:].mean()
    assert within > between + 0.05  # measured: 0.53 within satay, 0.45 satay vs apam_balik
    # and the embedding of a photo is close to the same photo's classifier features
    assert np.isclose(np.linalg.norm(v[0]), 1.0, atol=1e-3)
