"""The one JSON reader (zoo.io.read_json) and the readers built on it refuse hostile files in one line."""
import json
import os

import pytest

from zoo.errors import ZooError
from zoo.evaluate.calibration import read_calibration
from zoo.io import read_json
from zoo.model.export import preprocess_transform


def test_read_json_refuses_pipes_big_deep_and_broken_files(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}')
    assert read_json(good, "a test file") == {"a": [1, 2]}
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    cases = {fifo: "named pipe", deep: "nested too deep", latin: "utf-8", tmp_path: "folder"}
    for path, reason in cases.items():
        with pytest.raises(ZooError, match=f"is not a test file .*{reason}"):
            read_json(path, "a test file")
    with pytest.raises(ZooError, match="more than the 10"):
        read_json(good, "a test file", max_bytes=10)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json", "a test file")


def test_calibration_file_nested_too_deep_is_one_line(tmp_path):
    cal = tmp_path / "zoo-calibration.json"
    cal.write_text('{"models": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ZooError, match="is not a zoo calibration file"):
        read_calibration(cal)


def test_export_sidecar_preprocessing_is_checked(tmp_path):
    pre = {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
           "crop_pct": 0.875, "crop_mode": "center"}
    side = tmp_path / "m.onnx.json"
    side.write_text(json.dumps({"preprocessing": pre}))
    assert preprocess_transform(side) is not None
    for bad, message in [({**pre, "input_size": [3, 100000, 100000]}, "input_size"),
                         ({**pre, "checkpoint_path": "/etc/passwd"}, "unknown key"),
                         ({k: v for k, v in pre.items() if k != "mean"}, "lacks mean"),
                         ("not a mapping", "must be a mapping")]:
        side.write_text(json.dumps({"preprocessing": bad}))
        with pytest.raises(ZooError, match=message):
            preprocess_transform(side)
    side.write_text("{" * 50_000)
    with pytest.raises(ZooError, match="is not the JSON of a zoo export"):
        preprocess_transform(side)
