"""The upload check (`zoo check`, POST /api/check): copy of an indexed item or new, with the
threshold for the index's size and its expected precision (zoo.evaluate.check)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import TINY
from zoo.errors import ZooError
from zoo.evaluate.calibration import save_entry
from zoo.evaluate.check import load_check, size_aware, verdict
from zoo.metrics.falsematch import FalseMatchRate

MODEL = ["--backbone", "test_resnet", *TINY]
KEY = "test_resnet+frozen | random init (seed 0)"


def collage(seed: int, size: int = 96) -> Image.Image:
    """A picture of its own: a dozen seeded coloured shapes on a seeded background."""
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        box = [x0, y0, x0 + rng.randint(8, 40), y0 + rng.randint(8, 40)]
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    return im


def rate(negatives: np.ndarray, positives) -> FalseMatchRate:
    """A calibration's false-match rate without a tail model: exactly the measured shares."""
    return FalseMatchRate(top=np.sort(negatives)[::-1], n=len(negatives), tail=None,
                          positives=np.sort(np.asarray(positives, dtype=np.float64))[::-1])


# ---- the maths -----------------------------------------------------------------------------------
def test_threshold_rises_with_the_index_size():
    r = rate(np.arange(1000) / 1000, [0.995] * 10 + [0.5] * 10)  # copies: half at 0.995, half at 0.5
    # 10 items: at 0.995, 5 of 1000 non-copy pairs -> chance 5/1000 x 10 = 0.05, recall 0.5: precision 0.5 / 0.55;
    # below 0.995 the chance grows while the recall stays 0.5
    t, p, chance, recall, reached = size_aware(r, 10, 0.9)
    assert (t, recall, reached) == (0.995, 0.5, True)
    assert chance == pytest.approx(0.05) and p == pytest.approx(0.5 / 0.55)
    # 100 items: 0.5 / (0.5 + 0.5) at 0.995 and no copy above it: the target is out of reach
    t, p, chance, recall, reached = size_aware(r, 100, 0.9)
    assert not reached and p == pytest.approx(0.5)


def test_verdict_copy_new_and_uncalibrated(tmp_path):
    path = tmp_path / "cal.json"
    save_entry(path, "arch | w", {"threshold": 0.7, "precision_target": 0.9,
                                  "size_aware": rate(np.arange(1000) / 1000, [0.995] * 10 + [0.5] * 10).to_json()},
               overwrite=False)
    check = load_check(path, "arch", "w", 10)
    assert check.threshold == 0.995 and check.expected_precision == pytest.approx(0.5 / 0.55)
    assert "min(1, FPR(t) x 10) = 5.00e-02" in check.estimate and "measured: 5 of 1000 non-copy" in check.estimate
    near = {"id": 3, "path": "a.png"}
    assert verdict(check, near, 0.995)["verdict"] == "copy" and verdict(check, near, 0.9949)["verdict"] == "new"
    answer = verdict(None, near, 0.5, "no calibration for arch")
    assert answer["calibrated"] is False and answer["verdict"] is None and answer["nearest"] == near
    assert answer["cosine"] == 0.5 and answer["score"] == 0.75 and answer["note"] == "no calibration for arch"
    with pytest.raises(ZooError, match=r"no calibration for arch \(weights: other\) in .*the copy check needs one"):
        load_check(path, "arch", "other", 10)
    # a version 1 entry: its one threshold, its sample's precision, not adjusted to the size (said so)
    save_entry(path, "arch | w", {"threshold": 0.7, "precision_target": 0.9, "precision": 0.93, "images": 50},
               overwrite=True)
    old = load_check(path, "arch", "w", 10)
    assert (old.threshold, old.expected_precision) == (0.7, 0.93) and "not adjusted to this index's 10 items" in old.estimate
    # a damaged entry (built to break it): one line
    save_entry(path, "arch | w", {"threshold": 0.7, "precision_target": 0.9,
                                  "size_aware": {"negative_pairs": 1, "top_negatives": [0.5, 0.4]}}, overwrite=True)
    with pytest.raises(ZooError, match=r"the entry of arch \| w is damaged") as e:
        load_check(path, "arch", "w", 10)
    assert "\n" not in str(e.value)


# ---- zoo check and POST /api/check on an index of known images -------------------------------------
@pytest.fixture(scope="module")
def known(tmp_path_factory) -> dict:
    """16 known pictures indexed with the tiny model, an edited copy of one, an unrelated picture
    and a calibration made here: non-copy pairs up to 0.979, copies at 0.99 (threshold ~0.975)."""
    from zoo.cli.main import main

    root = tmp_path_factory.mktemp("check")
    (root / "known").mkdir()
    for i in range(16):
        collage(i).save(root / "known" / f"{i:02d}.png")
    collage(3).crop((6, 6, 90, 90)).resize((96, 96)).save(root / "copy.jpg", quality=50)  # cropped, JPEG
    collage(1000).save(root / "new.png")
    assert main(["index", "--images", str(root / "known"), "--out", str(root / "known.index"),
                 "--trainer.enable_progress_bar", "false", *MODEL]) == 0
    save_entry(root / "cal.json", KEY, {"threshold": 0.97, "precision_target": 0.9,
                                        "size_aware": rate(np.arange(1000) / 1000 * 0.98, [0.99] * 20).to_json()},
               overwrite=False)
    return {"root": root, "index": root / "known.index", "cal": root / "cal.json"}


def test_cli_copy_of_an_indexed_photo_and_a_new_one(known, zoo_cli):
    root = known["root"]
    code, out, err = zoo_cli("check", "--query", root / "copy.jpg", root / "new.png", "--index", known["index"],
                             "--calibration", known["cal"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"{root / 'copy.jpg'}: copy of {root / 'known' / '03.png'} (cosine ")
    assert lines[1].startswith(f"{root / 'new.png'}: new (below threshold ") and "expected precision" in lines[1]
    assert "zoo: check: threshold " in err and "for 16 items" in err
    code, out, _ = zoo_cli("check", "--query", root / "copy.jpg", root / "new.png", "--index", known["index"],
                           "--calibration", known["cal"], "--json")
    answers = json.loads(out)
    expected = load_check(known["cal"], "test_resnet+frozen", "random init (seed 0)", 16)
    assert [a["verdict"] for a in answers] == ["copy", "new"] and answers[0]["nearest"]["id"] == 3
    assert answers[0]["threshold"] == pytest.approx(expected.threshold) and 0.97 < expected.threshold < 0.98
    assert answers[0]["expected_precision"] == pytest.approx(expected.expected_precision, abs=1e-6)
    assert answers[0]["cosine"] >= expected.threshold > answers[1]["cosine"]


def test_cli_against_a_folder_of_known_images(known, zoo_cli):
    root = known["root"]
    code, out, err = zoo_cli("check", "--query", root / "copy.jpg", root / "new.png", "--images", root / "known",
                             "--calibration", known["cal"], "--json", *MODEL)
    assert code == 0, err
    answers = json.loads(out)
    assert [a["verdict"] for a in answers] == ["copy", "new"] and answers[0]["index_items"] == 16
    assert answers[0]["nearest"]["path"] == str(root / "known" / "03.png")
    code, _, err = zoo_cli("check", "--query", root / "new.png", "--images", root / "known", "--index", known["index"],
                           "--calibration", known["cal"], *MODEL)
    assert code == 2 and "--index and --images exclude each other" in err


def test_cli_without_calibration_says_so(known, zoo_cli, tmp_path):
    code, out, err = zoo_cli("check", "--query", known["root"] / "copy.jpg", "--index", known["index"],
                             "--calibration", tmp_path / "none.json")
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("zoo: error: no calibration for test_resnet+frozen (weights: "
                                                   "random init (seed 0)) (")
    assert "the copy check needs one" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def clients(known):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from zoo.index.core import load_index
    from zoo.serve.app import create_app
    from zoo.serve.service import SearchService

    out = {}
    for name, cal in (("calibrated", known["cal"]), ("uncalibrated", known["root"] / "none.json")):
        service = SearchService(load_index(known["index"]), known["index"], max_upload_bytes=100_000, calibration=cal)
        out[name] = TestClient(create_app(service)).__enter__()
    yield out
    for c in out.values():
        c.__exit__(None, None, None)


def post(client, path: Path, name: str | None = None):
    return client.post("/api/check", files={"file": (name or path.name, path.read_bytes(), "application/octet-stream")})


def test_api_check_copy_new_and_uncalibrated(known, clients):
    root = known["root"]
    copy = post(clients["calibrated"], root / "copy.jpg").json()
    new = post(clients["calibrated"], root / "new.png").json()
    assert copy["verdict"] == "copy" and copy["calibrated"] is True and copy["nearest"]["id"] == 3
    assert copy["nearest"]["name"] == "03.png" and copy["nearest"]["thumbnail"] == "/api/items/3/thumbnail"
    assert new["verdict"] == "new" and new["cosine"] < new["threshold"] <= copy["cosine"]
    assert copy["index_items"] == 16 and 0.9 <= copy["expected_precision"] <= 1 and "FPR(t)" in copy["estimate"]
    assert copy["query"] == {"name": "copy.jpg", "decoded_size": [96, 96]}
    # without a calibration: no verdict, but the nearest item and its score
    bare = post(clients["uncalibrated"], root / "copy.jpg").json()
    assert bare["calibrated"] is False and bare["verdict"] is None and bare["nearest"]["id"] == 3
    assert bare["cosine"] == pytest.approx(copy["cosine"], abs=1e-6) and "no calibration" in bare["note"]


def test_api_check_refuses_hostile_uploads(clients, monkeypatch):
    c = clients["calibrated"]
    r = c.post("/api/check", files={"file": ("photo.jpg", b"not an image\n" * 50, "image/jpeg")})
    assert r.status_code == 422 and "not a usable image" in r.json()["error"] and "Traceback" not in r.text
    assert c.post("/api/check", files={"file": ("e.png", b"", "image/png")}).status_code == 400
    assert c.post("/api/check", files={"other": ("e.png", b"x", "image/png")}).status_code == 422
    big = b"\x89PNG" + b"\0" * 100_001  # over the upload limit
    r = c.post("/api/check", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 96 x 96 > 2 x 500: a decompression bomb
    buf = collage(1)
    import io

    data = io.BytesIO()
    buf.save(data, format="PNG")
    r = c.post("/api/check", files={"file": ("bomb.png", data.getvalue(), "image/png")})
    assert r.status_code == 413 and "decompression-bomb" in r.json()["error"]


def test_api_check_needs_the_token(known):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from zoo.index.core import load_index
    from zoo.serve.app import create_app
    from zoo.serve.service import SearchService

    service = SearchService(load_index(known["index"]), known["index"], calibration=known["cal"])
    with TestClient(create_app(service, token="s3cret")) as c:
        files = {"file": ("new.png", (known["root"] / "new.png").read_bytes(), "image/png")}
        assert c.post("/api/check", files=files).status_code == 401
        r = c.post("/api/check", files=files, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["verdict"] == "new"


def test_api_check_refuses_a_pixel_bomb_from_its_header(known):
    import io

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from zoo.index.core import load_index
    from zoo.serve.app import create_app
    from zoo.serve.service import SearchService

    buf = io.BytesIO()
    Image.new("1", (9400, 9400)).save(buf, format="PNG")  # 88 megapixels under Pillow's limit, a few KiB
    service = SearchService(load_index(known["index"]), known["index"], max_upload_bytes=4 << 20, max_pixels=1_000_000,
                            calibration=known["cal"])
    with TestClient(create_app(service)) as c:
        r = c.post("/api/check", files={"file": ("bomb.png", buf.getvalue(), "image/png")})
        assert r.status_code == 413 and "9400 x 9400" in r.json()["error"] and "\n" not in r.json()["error"]
