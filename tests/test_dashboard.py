"""W&B for training, the Python API, `import zoo`, short help and `zoo list`."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
from conftest import TINY
from shapes import make_shapes
from wandb_offline import read_run

ROOT = Path(__file__).resolve().parents[1]


def test_fit_with_wandb_logs_config_and_best_checkpoint_offline(tmp_path, zoo_cli, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    data = make_shapes(tmp_path / "shapes", per_class=8, seed=0, shapes=("circle", "square"))
    runs = tmp_path / "runs"
    code, _, err = zoo_cli("fit", "--wandb", "--data.root", data, "--data.num_workers", "0", "--data.batch_size", "8",
                           "--data.samples_per_class", "4", "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1",
                           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", runs,
                           "--model.backbone", "test_resnet", "--model.head", "triplet", "--model.pretrained", "false",
                           "--model.data_config", "{image_size: 32}")
    assert code == 0, err
    found = list((runs / "wandb").glob("offline-run-*"))
    assert len(found) == 1
    run = read_run(found[0])
    assert run["name"] == "test_resnet+triplet" and run["job_type"] == "fit"
    cfg = run["config"]
    assert cfg["backbone"] == "test_resnet" and cfg["head"] == "triplet"  # the model's hparams
    assert cfg["trainer"]["max_epochs"] == 2 and cfg["data"]["batch_size"] == 8  # the trainer and data settings
    assert any(k.startswith("val/map") or k == "val" for k in run["summary"])
    models = [a for a in run["artifacts"] if a["type"] == "model"]
    assert models and all(a["files"] == ["model.ckpt"] for a in models)
    assert any("best" in a["aliases"] for a in models)  # the best checkpoint (by val/map) is logged


def test_embed_paths_folder_and_list_and_the_record_function_stays(shapes_dir):
    import zoo.embed as embed_module
    from zoo.embed.runner import embed as embed_records

    model = zoo.ZooModel("test_resnet", pretrained=False, data_config={"image_size": 32})
    vectors, paths = zoo.embed(shapes_dir, model=model, paths=True)
    assert isinstance(vectors, np.ndarray) and vectors.shape == (12, model.embedding_dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert paths == sorted(paths) and Path(paths[0]).parent.name == "circle"
    two = zoo.embed([paths[3], paths[0]], model=model)
    single = zoo.embed(paths[3], model=model)
    assert np.allclose(two, vectors[[3, 0]], atol=1e-5) and np.allclose(single, vectors[[3]], atol=1e-5)
    # the record-level function keeps its module, name and signature
    assert embed_module is zoo.embed and embed_module.embed is embed_records
    from zoo.data.images import records_from

    emb = zoo.embed.embed(model, records_from([paths[0]]), report=False)
    assert np.allclose(emb.vectors, vectors[[0]], atol=1e-5)
    with pytest.raises(zoo.ZooError, match="no such file or folder"):
        zoo.embed(shapes_dir / "missing.png", model=model)


def test_import_zoo_is_quiet():
    r = subprocess.run([sys.executable, "-W", "default", "-c", "import zoo"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""


def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"## Python\n\n```python\n(.*?)```", text, re.S).group(1)
    make_shapes(tmp_path / "photos", per_class=2, seed=0, shapes=("circle", "square"))
    (tmp_path / "photos" / "circle" / "000.png").rename(tmp_path / "query.jpg")  # any format; decoded by content
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    assert zoo.load_index("photos.index").meta["model"]["architecture"] == "resnet50+frozen"


def test_short_help_lists_own_options_first_and_help_all_lists_everything(zoo_cli, capsys):
    from zoo.cli.main import main

    def help_text(*args):
        assert main(list(args)) == 0  # help is printed and the command ends, exit code 0
        return capsys.readouterr().out

    short = help_text("index", "--help")
    lines = short.splitlines()
    assert len(lines) < 80 and "--trainer.precision" not in short and "--data.root" not in short
    assert short.index("--images") < short.index("--model.backbone") and "zoo index --help-all" in short
    full = help_text("index", "--help-all")
    assert len(full.splitlines()) > 300 and "--trainer.precision" in full and "--data.root" in full
    bench = help_text("benchmark", "--help")
    assert "--video" in bench and "--window" in bench and "--trainer.callbacks" not in bench
    fit = help_text("fit", "--help")
    assert "--trainer.max_epochs" in fit and "--data.root" in fit and "--trainer.gradient_clip_val" not in fit


def test_list_says_which_weights_are_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    from zoo.model import listing

    hub_id, cached = listing.hub_weights("resnet50")
    assert hub_id == "timm/resnet50.tv_in1k" and cached is None
    # a file in the Hugging Face cache layout makes it offline
    snap = cache / "models--timm--resnet50.tv_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"0")
    (cache / "models--timm--resnet50.tv_in1k" / "refs").mkdir()
    (cache / "models--timm--resnet50.tv_in1k" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert listing.hub_weights("resnet50")[1] == str(snap / "model.safetensors")
    r = subprocess.run([sys.executable, "-m", "zoo", "list", "--pattern", "*v*"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "empty")})
    assert r.returncode == 0, r.stderr
    vgg = next(l for l in r.stdout.splitlines() if l.strip().startswith("vgg16"))
    assert "hub (timm/vgg16.tv_in1k" in vgg
    assert "mobilenetv2_100_in1k.pth" in r.stdout  # weight files named by configs/
