import subprocess
import sys
import textwrap

import pytest

import zoo
from zoo.errors import ZooError
from zoo.registry import Registry


def test_builtins_registered_and_wildcards():
    assert {"resnet50", "vgg16", "inception_resnet_v2"} <= set(zoo.BACKBONES.names())
    assert zoo.BACKBONES.list("res*") == ["resnet50"]
    assert zoo.BACKBONES.list("*v2") == ["inception_resnet_v2"]
    assert zoo.HEADS.names() == ["autoencoder", "frozen", "triplet"]


def test_register_decorator_and_unknown_name_lists_close_names():
    reg = Registry("thing", "zoo.test-none")

    @reg.register
    def alpha():
        return 1

    @reg.register(name="beta2")
    def _b():
        return 2

    assert reg.get("alpha")() == 1 and reg.get("beta2")() == 2
    with pytest.raises(ZooError) as e:
        reg.get("alpah")
    msg = str(e.value)
    assert "unknown thing 'alpah'" in msg and "did you mean: alpha" in msg and "beta2" in msg
    assert "\n" not in msg


def test_unknown_backbone_fails_at_model_construction():
    with pytest.raises(ZooError, match="unknown backbone 'resnt50'; did you mean: resnet50"):
        zoo.ZooModel("resnt50")
    with pytest.raises(ZooError, match="unknown head 'tripplet'; did you mean: triplet"):
        zoo.ZooModel("resnet50", head="tripplet")


def test_any_timm_model_by_name():
    m = zoo.ZooModel("timm/resnet18", pretrained=False, data_config={"image_size": 32}).build()
    assert m.embedding_dim == 512 and m.weights_id == "random init (seed 0)"


PLUGIN = '''
import timm
from zoo.backbones import timm_backbone

def tiny_plugin_net(**kwargs):
    """A third-party backbone from an entry point."""
    return timm_backbone("resnet18", **kwargs)
'''


def test_entry_point_backbone_usable_from_cli(tmp_path, shapes_dir):
    site = tmp_path / "site"
    (site / "zoo_plugin_demo-0.1.dist-info").mkdir(parents=True)
    (site / "zoo_plugin_demo-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-plugin-demo\nVersion: 0.1\n")
    (site / "zoo_plugin_demo-0.1.dist-info" / "entry_points.txt").write_text(
        "[zoo.backbones]\ntiny_plugin_net = zoo_plugin_demo:tiny_plugin_net\n")
    (site / "zoo_plugin_demo.py").write_text(textwrap.dedent(PLUGIN))
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    listed = subprocess.run([sys.executable, "-m", "zoo", "list", "--pattern", "tiny*"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "tiny_plugin_net" in listed.stdout and "third-party backbone" in listed.stdout
    out = tmp_path / "plugin.index"
    run = subprocess.run([sys.executable, "-m", "zoo", "index", "--images", str(shapes_dir), "--out", str(out),
                          "--model.backbone", "tiny_plugin_net", "--model.pretrained", "false",
                          "--model.data_config", "{image_size: 32}", "--num_workers", "0"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    idx = zoo.load_index(out)
    assert idx.meta["model"]["backbone"] == "tiny_plugin_net" and len(idx) == 12 and idx.dim == 512
