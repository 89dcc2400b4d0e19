"""The video protocol: examples searched in every frame of a video, true frames known."""
import csv
import json

import numpy as np
import pytest

from conftest import TINY

SEGMENTS = 4
PER_SEGMENT = 10
FPS = 10
SIZE = 48


def segment_frame(segment: int, i: int) -> np.ndarray:
    """Distinct content per segment (colour and shape), a shape that moves 1 px per frame."""
    a = np.zeros((SIZE, SIZE, 3), np.uint8)
    a[:] = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)][segment]
    x = 6 + i
    if segment == 0:
        a[10:30, x : x + 20] = 255  # square
    elif segment == 1:
        a[20:24, 2:46] = 0  # bar
        a[x : x + 4, 2:46] = 255
    elif segment == 2:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        a[(yy - 24) ** 2 + (xx - x - 10) ** 2 < 100] = 0  # disc
    else:
        a[::4, :] = 0  # stripes, shifting
        a[:, x::6] = 255
    return a


def make_video(path):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=FPS)
        s.width = s.height = SIZE
        s.pix_fmt = "yuv420p"
        s.options = {"qscale": "2"}
        for seg in range(SEGMENTS):
            for i in range(PER_SEGMENT):
                for p in s.encode(av.VideoFrame.from_ndarray(segment_frame(seg, i), format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def make_examples(folder, clip, picks):
    """Example images cut from the video's own frames; picks: (frame shown, frame claimed true)."""
    from zoo.data.video import read_frame

    folder.mkdir()
    with open(folder / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "frame"])
        for n, (shown, truth) in enumerate(picks):
            read_frame(clip, shown).save(folder / f"ex{n}.png")
            w.writerow([f"ex{n}.png", truth])
    return folder


def test_video_protocol_numbers_on_a_video_with_known_segments(tmp_path, zoo_cli):
    clip = make_video(tmp_path / "clip.mp4")
    # three examples claim their own frame; the last claims frame 3 but shows frame 33 (another segment)
    examples = make_examples(tmp_path / "examples", clip, [(4, 4), (15, 15), (25, 25), (33, 3)])
    out = tmp_path / "vb"
    code, stdout, err = zoo_cli("benchmark", "--video", clip, "--query", examples, "--window", "10", "--out", out,
                                "--backbone", "test_resnet", "--samples", "1", *TINY[:-2], "--model.data_config",
                                "{image_size: 48}", "--num_workers", "0")
    assert code == 0, err
    assert "first_match" in stdout and "adjacent@10" in stdout
    res = json.load(open(out / "results.json"))
    assert res["meta"]["frames"] == SEGMENTS * PER_SEGMENT and res["meta"]["window"] == 10
    row = res["results"][0]
    # an example is its own frame: the first match is exact, and every one of the top 10 is a frame
    # of its segment (10 frames long, so within +-10 of the truth); the mislabelled one is 30 frames off
    assert [q["first_frame"] for q in row["queries"]] == [4, 15, 25, 33]
    assert [q["adjacent@10"] for q in row["queries"]] == [10, 10, 10, 0]
    assert row["first_match"] == 0.75 and row["exact@1"] == 0.75
    assert row["adjacent@10"] == 7.5
    assert row["offset_s_mean"] == pytest.approx(3.0 / 4) and row["offset_s_median"] == 0.0
    assert [q["offset_s"] for q in row["queries"]] == pytest.approx([0, 0, 0, 3.0])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert rows[0]["architecture"] == "test_resnet+frozen" and float(rows[0]["adjacent@10"]) == 7.5
    assert (out / "report.md").is_file() and (out / "comparison.png").is_file()
    assert (out / "grid_test_resnet+frozen.png").is_file()


def test_video_protocol_bad_input_is_one_line(tmp_path, zoo_cli):
    clip = make_video(tmp_path / "clip.mp4")
    no_truth = tmp_path / "plain"
    no_truth.mkdir()
    make_examples(tmp_path / "late", clip, [(4, 400)])
    cases = [
        (("--video", tmp_path / "missing.mp4", "--query", no_truth), "no such video"),
        (("--video", clip, "--query", no_truth), "has no truth.csv"),
        (("--video", clip), "--video needs --query EXAMPLES"),
        (("--video", clip, "--query", no_truth, "--images", no_truth), "not --images or --gallery"),
        (("--video", clip, "--query", tmp_path / "late"), "true frame 400 is not in"),
    ]
    for args, message in cases:
        code, _, err = zoo_cli("benchmark", *args, "--out", tmp_path / "o", *TINY)
        lines = [l for l in err.splitlines() if l.startswith("zoo: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, err)


def test_examples_made_from_frames_with_edits(tmp_path, zoo_cli):
    clip = make_video(tmp_path / "clip.mp4")
    examples = tmp_path / "made"
    out = tmp_path / "vb"
    args = ("benchmark", "--video", clip, "--query", examples, "--make_examples", "4", "--window", "10", "--out", out,
            "--backbone", "test_resnet", "--samples", "0", *TINY)
    code, _, err = zoo_cli(*args)
    assert code == 0, err
    truth = list(csv.DictReader(open(examples / "truth.csv")))
    assert [int(r["frame"]) for r in truth] == [0, 13, 26, 39]  # evenly spaced over 40 frames
    from PIL import Image

    sizes = [Image.open(examples / r["file"]).size for r in truth]
    assert all(38 <= w <= 46 and 38 <= h <= 46 for w, h in sizes)  # cropped to 80-95% of 48 px
    row = json.load(open(out / "results.json"))["results"][0]
    assert [q["truth_frame"] for q in row["queries"]] == [0, 13, 26, 39] and row["examples"] == 4
    code, _, err = zoo_cli(*args[:-len(TINY)], "--out", tmp_path / "vb2", *TINY)  # the examples are kept
    assert code == 2 and "truth.csv already exists; pass --overwrite" in err
