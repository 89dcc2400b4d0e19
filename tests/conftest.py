from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from shapes import make_shapes  # noqa: E402

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a hub
os.environ["ZOO_CPU_BF16"] = "0"  # fp32 on every CPU, bf16 or not (zoo.model.inference); a test that wants bf16 sets it

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
needs_shared = pytest.mark.skipif(not (SHARED / "data" / "food7").is_dir(), reason="../shared is absent")

# a fast model for tests: built-in backbone, random init, tiny images
TINY = ["--model.pretrained", "false", "--model.data_config", "{image_size: 64}", "--num_workers", "0"]


@pytest.fixture(autouse=True, scope="session")
def private_state(tmp_path_factory):
    """zoo's per-user state (the key that signs quarantine manifests) in a folder of the test run."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))


@pytest.fixture
def shapes_dir(tmp_path) -> Path:
    return make_shapes(tmp_path / "shapes", per_class=4, seed=0, shapes=("circle", "square", "triangle"))


@pytest.fixture
def zoo_cli(capsys):
    """Run `zoo ARGS` in this process; returns (exit code, stdout, stderr)."""
    from zoo.cli.main import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def save(im: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path
