import json

import numpy as np
import pytest

import zoo
from zoo.dedup.compare import similarity_score
from conftest import TINY


def test_similarity_score_range():
    assert similarity_score(np.array([1.0, 0.0, -1.0])).tolist() == [1.0, 0.5, 0.0]


def test_cli_compare_pairs_and_matrix(shapes_dir, tmp_path, zoo_cli):
    a, b = shapes_dir / "circle" / "000.png", shapes_dir / "square" / "000.png"
    code, stdout, _ = zoo_cli("compare", "--images", a, a, b, *TINY)
    assert code == 0
    lines = [l for l in stdout.splitlines() if l.strip().startswith(("0.", "1."))]
    assert len(lines) == 3 and lines[0].split()[0] == "1.0000"  # a vs a
    scores = [float(l.split()[0]) for l in lines]
    assert all(0 <= s <= 1 for s in scores) and scores[1] < 1.0
    m = tmp_path / "dist"
    code, _, _ = zoo_cli("compare", "--images", shapes_dir, "--matrix", m, *TINY)
    d = np.load(tmp_path / "dist.npy")
    assert code == 0 and d.shape == (12, 12) and np.allclose(d, d.T, atol=1e-6) and np.all(np.diag(d) == 0)
    assert (tmp_path / "dist.csv").read_text().splitlines()[0].startswith("path,")
    code, _, err = zoo_cli("compare", "--images", shapes_dir, "--matrix", m, *TINY)
    assert code == 2 and "already exists; pass --overwrite" in err


def make_video(path, n=20):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(n):
            a = np.full((64, 64, 3), 30, np.uint8)
            a[:, :, i % 3] = 40 + 10 * i  # each frame differs
            a[5 + 2 * i : 15 + 2 * i, 10:40] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_video_gallery_frames_and_search_by_example(tmp_path, zoo_cli):
    from zoo.data.video import read_frame

    clip = tmp_path / "clip.mp4"
    make_video(clip)
    out = tmp_path / "v.index"
    code, stdout, err = zoo_cli("index", "--video", clip, "--every", "3", "--out", out, *TINY)
    assert code == 0, err
    idx = zoo.load_index(out)
    assert [it["frame"] for it in idx.items] == [0, 3, 6, 9, 12, 15, 18]
    assert [it["time"] for it in idx.items] == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8])
    read_frame(clip, 9).save(tmp_path / "example.png")
    code, stdout, _ = zoo_cli("search", "--query", tmp_path / "example.png", "--index", out, "-k", "2", "--json")
    best = json.loads(stdout)[0]["results"][0]
    assert code == 0 and best["frame"] == 9 and best["time"] == pytest.approx(0.9)
