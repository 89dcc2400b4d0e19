import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    cases = [
        (("index", "--images", tmp_path / "missing", "--model.pretrained", "false"), "no such file or folder"),
        (("index", "--images", tmp_path, "--model.backbone", "resnt50"), "unknown backbone 'resnt50'; did you mean: resnet50"),
        (("search", "--query", tmp_path / "q.jpg", "--index", tmp_path), "is not a zoo index"),
        (("benchmark", "--bogus", "1"), "unrecognized arguments: --bogus"),
        (("fit", "--model.backbone", "resnet50", "--model.head", "triplet", "--data.batch_size", "6"), "batch_size=6 does not fit the sampler"),
    ]
    for args, message in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        errors = [l for l in r.stderr.splitlines() if l.startswith("zoo: error:")]
        assert len(errors) == 1 and message in errors[0], r.stderr
        assert "Traceback" not in r.stderr and "usage:" not in r.stderr


def test_list_with_wildcard():
    r = run("list", "--pattern", "*v*")
    assert r.returncode == 0
    assert "vgg16" in r.stdout and "inception_resnet_v2" in r.stdout and "resnet50" not in r.stdout
