"""Which duplicate to keep (zoo.dedup.keep) and the facts it weighs (zoo.dedup.facts); groups.json
and the CLI quarantine keep what the rules say."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import save
from zoo.dedup.facts import file_facts, jpeg_quality
from zoo.dedup.keep import DEFAULT_RULES, check_rules, choose_keep
from zoo.errors import ZooError


def f(path, pixels=100, quality=None, lossless=False, sharpness=10.0, date=None, bytes=1000, gone=False, fmt="JPEG"):
    side = int(pixels ** 0.5)
    return {"path": path, "pixels": pixels, "width": side, "height": side, "quality": quality, "lossless": lossless,
            "sharpness": sharpness, "date": date, "bytes": bytes, "gone": gone, "format": fmt}


# ---- the rules, on constructed facts ---------------------------------------------------------
def test_most_pixels_wins_first():
    keep = choose_keep([f("a", pixels=100, quality=95), f("b", pixels=400, quality=50)])
    assert keep.index == 1 and keep.reasons[0].startswith("most pixels: 20×20 (others 10×10)")


def test_then_least_compressed_then_sharpest_then_oldest():
    same = dict(pixels=400)
    assert choose_keep([f("a", quality=70, **same), f("b", quality=92, **same)]).index == 1
    assert choose_keep([f("a", quality=92, **same), f("b", lossless=True, fmt="PNG", **same)]).reasons == (
        "least compressed: lossless PNG (others JPEG quality ~92)",)
    # a quality estimate one step apart is a tie: sharpness decides
    keep = choose_keep([f("a", quality=90, sharpness=50.0, **same), f("b", quality=91, sharpness=80.0, **same)])
    assert keep.index == 1 and keep.reasons == ("sharpest: 80 (others 50)",)
    # sharpness within 5 % ties: the oldest EXIF date decides, a file without a date loses
    keep = choose_keep([f("a", quality=90, sharpness=100.0, date="2021-06-01T10:00:00", **same),
                        f("b", quality=90, sharpness=98.0, date="2019-01-01T08:00:00", **same),
                        f("c", quality=90, sharpness=99.0, **same)])
    assert keep.index == 1 and keep.reasons[0].startswith("oldest EXIF date: 2019-01-01T08:00:00")


def test_rule_order_is_configurable():
    facts = [f("a", pixels=400, quality=50), f("b", pixels=100, quality=95)]
    assert choose_keep(facts).index == 0
    assert choose_keep(facts, ("compression", "pixels")).index == 1
    with pytest.raises(ZooError, match="--keep_rules bigness: one of pixels, compression, sharpness, date"):
        check_rules(["bigness"])
    with pytest.raises(ZooError, match="named twice"):
        check_rules(["pixels", "pixels"])


def test_ties_fall_to_largest_file_then_first_path_and_gone_never_wins():
    assert choose_keep([f("b", bytes=10), f("a", bytes=20)]).reasons == ("largest file: 0.0 KiB",)
    keep = choose_keep([f("b"), f("a")])
    assert keep.index == 1 and keep.reasons == ("first by path (the others are alike)",)
    assert choose_keep([f("a", pixels=900, gone=True), f("b")]).index == 1
    assert choose_keep([f("a", gone=True)]) is None
    assert choose_keep([f("a", pixels=900, fmt=None), f("b")]).index == 1  # not an image: never kept first


def test_protected_member_is_kept_first():
    keep = choose_keep([f("a", pixels=900), f("b", pixels=100)], protected=[False, True])
    assert keep.index == 1 and keep.reasons == ("in a protected folder",)


def test_sharpness_is_read_only_when_the_rules_get_there(tmp_path):
    a = save(Image.new("RGB", (32, 32), (9, 9, 9)), tmp_path / "a.png")
    b = save(Image.new("RGB", (64, 64), (9, 9, 9)), tmp_path / "b.png")
    facts = [file_facts(a), file_facts(b)]
    assert choose_keep(facts).index == 1
    assert all("sharpness" not in x for x in facts)  # decided by pixels: nothing decoded


# ---- facts from files ---------------------------------------------------------------------------
def test_jpeg_quality_estimate_and_facts(tmp_path):
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for q in (30, 50, 75, 90, 95):
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=q)
        assert abs(jpeg_quality(Image.open(buf).quantization) - q) <= 2, q
    exif = Image.Exif()
    exif[306] = "2018:03:04 05:06:07"
    path = save(im, tmp_path / "x.jpg", quality=80, exif=exif.tobytes())
    facts = file_facts(path)
    assert (facts["width"], facts["height"], facts["format"], facts["bytes"]) == (64, 64, "JPEG", path.stat().st_size)
    assert abs(facts["quality"] - 80) <= 2 and facts["date"] == "2018-03-04T05:06:07" and facts["lossless"] is False
    assert file_facts(tmp_path / "nope.jpg")["gone"] is True
    (tmp_path / "link.jpg").symlink_to(path)
    assert file_facts(tmp_path / "link.jpg")["format"] is None  # never read through a link


def test_blurred_copy_is_less_sharp(tmp_path):
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    sharp = file_facts(save(im, tmp_path / "s.png"))["sharpness"]
    blurred = file_facts(save(im.filter(ImageFilter.GaussianBlur(2)), tmp_path / "b.png"))["sharpness"]
    assert sharp > 5 * blurred > 0


# ---- the CLI writes the choice, and its quarantine keeps the same file -----------------------------
def test_groups_json_has_pairs_and_keep_and_quarantine_keeps_it(shapes_dir, tmp_path, zoo_cli):
    from conftest import TINY

    src = shapes_dir / "circle" / "000.png"
    Image.open(src).save(shapes_dir / "circle" / "000_q40.jpg", quality=40)
    Image.open(src).save(shapes_dir / "circle" / "000_q95.jpg", quality=95)
    shutil.copy(src, shapes_dir / "circle" / "000_copy.png")
    protected = shapes_dir / "square"
    code, _, err = zoo_cli("duplicates", "--images", shapes_dir, "--threshold", "0.99", "--out", tmp_path / "d",
                           "--move-to", tmp_path / "q", "--protect", protected, *TINY)
    assert code == 0, err
    data = json.loads((tmp_path / "d" / "groups.json").read_text())
    assert data["keep_rules"] == list(DEFAULT_RULES)
    assert data["exact_groups"] == [[str(src), str(shapes_dir / "circle" / "000_copy.png")]]
    assert data["exact_keep"][0]["path"] == str(src) and data["exact_keep"][0]["reasons"] == [
        "first by path (the others are alike)"]
    group = next(g for g in data["near_groups"] if str(shapes_dir / "circle" / "000_q95.jpg") in g["paths"])
    n = len(group["paths"])
    assert group["pairs"] and all(0 <= i < j < n and 0.99 <= s <= 1.0 + 1e-6 for i, j, s in group["pairs"])
    assert min(s for *_, s in group["pairs"]) == pytest.approx(group["min_similarity"], abs=1e-6)
    kept = group["keep"]["path"]
    assert kept == str(src)  # lossless PNG over the JPEG copies
    assert group["keep"]["reasons"][0].startswith("least compressed: lossless PNG")
    rows = (tmp_path / "d" / "groups.csv").read_text().splitlines()
    assert rows[0] == "group,kind,path,keep,reasons" and any(r.startswith(f"near-") and f",{kept},1," in r for r in rows)
    # --move-to kept that file, moved the JPEG copies, and moved nothing from the protected folder
    assert src.exists() and not (shapes_dir / "circle" / "000_q95.jpg").exists()
    moved = json.loads(next((tmp_path / "q").glob("manifest-*.json")).read_text())["moves"]
    assert not [m for m in moved if m["from"].startswith(str(protected))]
    assert {m["kept"] for m in moved if "000_" in m["from"]} == {str(src)}
