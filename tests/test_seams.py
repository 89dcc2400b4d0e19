"""Where `zoo` writes its logs, checkpoints and exports, and how it introduces itself."""
import json

import torch

import zoo
from zoo.cli.main import main
from shapes import make_shapes

# a very small random-init model, one epoch on tiny images
FAST_FIT = ["--model.backbone", "timm/test_resnet", "--model.pretrained", "false", "--model.data_config",
            "{image_size: 32}", "--model.head", "triplet", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--data.num_workers", "0", "--data.batch_size", "8",
            "--data.samples_per_class", "4"]


def fit(tmp_path, zoo_cli, *args):
    data = make_shapes(tmp_path / "shapes", per_class=8, seed=0, shapes=("circle", "square"))
    code, _, err = zoo_cli("fit", "--data.root", data, *FAST_FIT, *args)
    assert code == 0, err


def test_fit_logs_and_checkpoints_under_default_root_dir(tmp_path, zoo_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit(tmp_path, zoo_cli, "--trainer.default_root_dir", "D")
    root = tmp_path / "D"
    assert list(root.rglob("metrics.csv"))
    assert list(root.rglob("last.ckpt"))
    assert all(root in p.parents for p in tmp_path.rglob("*.ckpt"))  # the best one too, wherever it came from
    assert not (tmp_path / "runs").exists()


def test_fit_with_wandb_logs_under_default_root_dir_given_with_equals(tmp_path, zoo_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    fit(tmp_path, zoo_cli, "--wandb", "--trainer.default_root_dir=D")
    assert len(list((tmp_path / "D" / "wandb").glob("offline-run-*"))) == 1
    assert list((tmp_path / "D").rglob("last.ckpt")) and not (tmp_path / "runs").exists()


def test_an_explicit_logger_save_dir_still_wins_over_default_root_dir(tmp_path, zoo_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit(tmp_path, zoo_cli, "--trainer.default_root_dir", "D", "--trainer.logger.init_args.save_dir", "X")
    assert list((tmp_path / "X").rglob("metrics.csv")) and list((tmp_path / "X").rglob("last.ckpt"))
    assert not list(tmp_path.glob("D/**/metrics.csv")) and not (tmp_path / "runs").exists()


def test_fit_without_default_root_dir_still_logs_under_runs(tmp_path, zoo_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit(tmp_path, zoo_cli)
    assert list((tmp_path / "runs").rglob("metrics.csv")) and list((tmp_path / "runs").rglob("last.ckpt"))


def test_export_names_its_files_after_the_checkpoint(tmp_path, zoo_cli, monkeypatch):
    model = zoo.ZooModel("timm/test_resnet", pretrained=False, data_config={"image_size": 32})
    ckpt = tmp_path / "path" / "to" / "best-epoch=1.ckpt"
    ckpt.parent.mkdir(parents=True)
    model.build()
    state = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(state)  # what Lightning's checkpoint holds for zoo
    torch.save(state, ckpt)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = zoo_cli("export", "--checkpoint", ckpt)
    assert code == 0, err
    assert out.strip() == "best-epoch=1.onnx"
    assert sorted(p.name for p in work.iterdir()) == ["best-epoch=1.onnx", "best-epoch=1.onnx.json"]
    assert json.loads((work / "best-epoch=1.onnx.json").read_text())["file"] == "best-epoch=1.onnx"
    code, out, err = zoo_cli("export", "--checkpoint", ckpt, "--format", "torchscript")
    assert code == 0, err and out.strip() == "best-epoch=1.pt"
    assert (work / "best-epoch=1.pt").is_file() and (work / "best-epoch=1.pt.json").is_file()


def test_root_help_introduces_zoo_and_lists_its_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Lightning Trainer command line tool" not in out
    text = " ".join(out.split())
    assert "zoo: image similarity and retrieval" in text
    for command in ("fit", "index", "search", "compare", "duplicates", "benchmark", "calibrate", "export", "serve", "list"):
        assert f"\n    {command} " in out, command
