"""benchmarks/copy_detection.py's split: photos a listing names as one picture (crops, frames of
one video) never meet in the unseen sets, and none of an unseen picture trains."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import copy_detection  # noqa: E402
import one_picture  # noqa: E402


def test_listed_pictures_join_pairs_transitively_and_undecided_pairs_too(tmp_path):
    listing = tmp_path / "same.txt"
    listing.write_text("# comment\nx/a.jpg x/b.jpg\nx/b.jpg x/c.jpg  # a video's frames\nx/d.jpg x/e.jpg ?\n")
    pictures = one_picture.listed_pictures(str(listing), str(tmp_path))
    key = {Path(p).name: g for p, g in pictures.items()}
    assert set(key) == {"a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"}
    assert key["a.jpg"] == key["b.jpg"] == key["c.jpg"] != key["d.jpg"] == key["e.jpg"]
    assert one_picture.listed_pictures("none", str(tmp_path)) == {}
    # scoring merges the decided pairs only
    items = [copy_detection.Record(str(tmp_path / "x" / n)) for n in ("a.jpg", "c.jpg", "d.jpg", "e.jpg")]
    groups = [0, 1, 2, 3]
    assert one_picture.same_photos(str(listing), str(tmp_path), items, groups) == 0  # a-b, b-c: b is absent
    items[1] = copy_detection.Record(str(tmp_path / "x" / "b.jpg"))
    assert one_picture.same_photos(str(listing), str(tmp_path), items, groups) == 1 and groups == [0, 0, 2, 3]


def test_split_keeps_one_pictures_photos_apart(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(12):  # unrelated noise: the thumbnail check sees no near-identical pair
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{k:02d}.png")
    listing = tmp_path / "same.txt"
    listing.write_text("00.png 01.png\n01.png 02.png\n03.png 04.png ?\n")
    for seed in range(5):
        train, originals, distractors, calibration = copy_detection.split(str(folder), None, 3, 3, seed, 2, listing=str(listing))
        unseen = {Path(r.path).name for r in [*originals, *distractors, *calibration]}
        trained = {Path(r.path).name for r in train}
        assert len(unseen) == 8 and not unseen & trained
        for group in ({"00.png", "01.png", "02.png"}, {"03.png", "04.png"}):
            assert len(group & unseen) <= 1  # never two photos of one picture among the unseen
            if group & unseen:
                assert not group & trained  # nor a photo of an unseen picture in training
    train, *_ = copy_detection.split(str(folder), None, 3, 3, 0, 2)  # without the listing
    assert len(train) == 4
