"""Edit families of copy detection: each produces what it names."""
import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.augment import PRESETS, build_step, edits, make_copy, resolve_spec
from zoo.data.copyedits import FAMILIES, AspectRatio, Border, EmojiOverlay, HeavyCrop, Overlay, TextOverlay

GREEN, GREY = (0, 255, 0), (128, 128, 128)


def noise(seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 255, (size[1], size[0], 3), dtype=np.uint8))


def found_at(big: np.ndarray, small: np.ndarray):
    """Where ``small`` lies, pixel for pixel, inside ``big`` (or None)."""
    h, w = small.shape[:2]
    for y in range(big.shape[0] - h + 1):
        for x in range(big.shape[1] - w + 1):
            if np.array_equal(big[y:y + h, x:x + w], small):
                return y, x
    return None


def test_every_family_is_a_preset_and_copydetect_trains_the_new_ones():
    assert {"overlay", "text", "emoji", "border", "aspect", "heavy_crop", "perspective", "screenshot", "combo",
            "crop", "rotation", "jpeg", "colour", "mirror", "downscale"} <= set(FAMILIES)
    for name in FAMILIES:
        assert resolve_spec(name) == FAMILIES[name]
        assert isinstance(make_copy(noise(), name, seed=1), Image.Image)
    step = next(s for s in PRESETS["copydetect"] if s["name"] == "SomeOf")
    names = {t["name"] for t in step["args"]["transforms"]}
    assert names == {"Overlay", "TextOverlay", "EmojiOverlay", "Border", "AspectRatio", "RandomPerspective", "ScreenshotFrame"}
    crop = next(s for s in PRESETS["copydetect"] if s["name"] == "RandomResizedCrop")
    assert crop["args"]["scale"][0] == 0.3  # heavy crops down to 30 % of the area


def test_overlay_pastes_the_photo_onto_another_photo():
    im, other = noise(), Image.new("RGB", (64, 64), GREEN)
    for seed in range(5):
        out = np.asarray(make_copy(im, "overlay", seed=seed, others=[other]))
        assert out.shape == (30, 40, 3)
        green = np.all(out == GREEN, axis=2).mean()  # the other photo shows around the pasted one
        assert 1 - 0.8 ** 2 - 0.05 <= green <= 1 - 0.45 ** 2 + 0.05
    step = Overlay(scale=0.5)
    step.remember(other)
    out = np.asarray(step(im))
    small = np.asarray(im.resize((20, 15), Image.BILINEAR))
    assert found_at(out, small) is not None and np.all(out == GREEN, axis=2).sum() == 40 * 30 - 20 * 15
    assert len(step.pool) == 2  # the photo itself is remembered for the next one


def test_text_and_emoji_draw_in_their_colour_within_their_size():
    grey = Image.new("RGB", (120, 80), GREY)
    out = np.asarray(TextOverlay(text="ZOO", colour=(255, 0, 0), size=0.25, lines=1, outline=False)(grey))
    changed = np.any(out != GREY, axis=2)
    ys, xs = np.nonzero(changed)
    assert np.all(out == (255, 0, 0), axis=2).sum() > 20  # solid glyph pixels in the text colour
    assert ys.max() - ys.min() <= 0.25 * 80 * 1.2 and 0.01 < changed.mean() < 0.3
    out = np.asarray(EmojiOverlay(colour=(0, 0, 255), size=0.5, count=1)(grey))
    blue = np.all(out == (0, 0, 255), axis=2)
    ys, xs = np.nonzero(blue | np.any(out == (20, 20, 20), axis=2))
    assert ys.max() - ys.min() + 1 == 40 and xs.max() - xs.min() + 1 == 40  # a 40-pixel sticker (half of 80)
    disc = np.pi * 20 ** 2
    assert 0.75 * disc < blue.sum() < disc  # a filled circle, less the eyes and the smile


def test_border_adds_a_uniform_frame_of_the_given_size():
    im = noise()
    out = np.asarray(Border(width=0.1, colour=(1, 2, 3))(im))
    assert out.shape == (30 + 2 * 3, 40 + 2 * 4, 3)
    frame = np.ones(out.shape[:2], bool)
    frame[3:-3, 4:-4] = False
    assert np.all(out[frame] == (1, 2, 3)) and np.array_equal(out[3:-3, 4:-4], np.asarray(im))


def test_aspect_ratio_stretches_one_side():
    im = noise(size=(40, 40))
    for seed in range(8):
        out = make_copy(im, [{"name": "AspectRatio", "args": {"factor": 1.5}}], seed=seed)
        assert sorted(out.size) in ([40, 60], [27, 40])  # one side x 1.5 or / 1.5, the other kept


def test_heavy_crop_keeps_30_to_50_percent_of_the_photo():
    im = noise(size=(60, 40))
    a = np.asarray(im)
    for seed in range(20):
        out = make_copy(im, "heavy_crop", seed=seed)
        area = out.size[0] * out.size[1] / (60 * 40)
        assert 0.28 <= area <= 0.52
        assert found_at(a, np.asarray(out)) is not None  # a region of the photo, not resized
    assert np.asarray(HeavyCrop(area=0.3)(im)).size > 0


def test_perspective_warps_the_corners_keeps_the_centre():
    im = Image.new("RGB", (60, 60), (200, 100, 50))
    out = np.asarray(make_copy(im, "perspective", seed=3))
    corners = [out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]]
    assert any(np.all(c == 0) for c in corners)  # a warped corner shows the fill
    assert np.all(out[30, 30] == (200, 100, 50))


def test_screenshot_frame_holds_the_photo_in_a_window():
    im = noise()
    for seed in range(4):
        out = np.asarray(make_copy(im, "screenshot", seed=seed))
        assert out.shape[0] > 30 and out.shape[1] > 40
        where = found_at(out, np.asarray(im))
        assert where is not None and where[0] > 0  # the photo, whole, under a title bar
        assert 0.6 - 0.05 <= 40 / out.shape[1] <= 0.85 + 0.05


def test_combo_applies_two_or_three_families():
    step = build_step(FAMILIES["combo"][0], (30, 40))
    seen = []
    step.transforms = [lambda x, k=k: seen.append(k) or x for k in range(len(step.transforms))]
    torch.manual_seed(0)
    counts = set()
    for _ in range(30):
        seen.clear()
        step(noise())
        counts.add(len(seen))
    assert counts == {2, 3}


@pytest.mark.parametrize("family", ["mirror", "downscale"])
def test_copyset_edits_one_at_a_time(family):
    im = noise()
    out = np.asarray(edits(family, (30, 40))(im))
    expected = (np.asarray(im)[:, ::-1] if family == "mirror"
                else np.asarray(im.resize((20, 15), Image.BILINEAR).resize((40, 30), Image.BILINEAR)))
    assert np.array_equal(out, expected)
