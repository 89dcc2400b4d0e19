import json
import shutil

import numpy as np
from PIL import Image

from zoo.dedup.exact import exact_groups
from zoo.dedup.groups import connected_components
from zoo.dedup.pairsearch import similar_pairs
from conftest import TINY


def test_similar_pairs_match_brute_force_and_groups():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x[10] = x[3] + 0.01
    x[11] = x[10] + 0.01  # 3 -> 10 -> 11 chain
    x[200] = x[100] * 2  # same direction
    pairs, sims = similar_pairs(x, 0.99, chunk=64)
    n = x / np.linalg.norm(x, axis=1, keepdims=True)
    brute = {(i, j) for i, j in zip(*np.nonzero(np.triu(n @ n.T, 1) >= 0.99))}
    assert {tuple(p) for p in pairs.tolist()} == brute
    assert connected_components(300, pairs) == [[3, 10, 11], [100, 200]]
    assert connected_components(5, np.array([[0, 4], [1, 2], [2, 4]])) == [[0, 1, 2, 4]]


def test_exact_groups_by_bytes(tmp_path):
    for name, data in {"a": b"same", "b": b"same", "c": b"diff", "d": b"size", "e": b"same"}.items():
        (tmp_path / name).write_bytes(data)
    assert exact_groups(sorted(str(p) for p in tmp_path.iterdir())) == [[str(tmp_path / n) for n in "abe"]]


def test_cli_duplicates_quarantine_and_undo(shapes_dir, tmp_path, zoo_cli):
    shutil.copy(shapes_dir / "circle" / "000.png", shapes_dir / "circle" / "copy.png")
    Image.open(shapes_dir / "square" / "001.png").resize((30, 30)).save(shapes_dir / "square" / "small.png")
    out = tmp_path / "dups"
    code, stdout, err = zoo_cli("duplicates", "--images", shapes_dir, "--threshold", "0.995", "--out", out,
                                "--plots", "--move-to", tmp_path / "q", *TINY)
    assert code == 0, err
    groups = json.load(open(out / "groups.json"))
    assert groups["exact_groups"] == [[str(shapes_dir / "circle" / "000.png"), str(shapes_dir / "circle" / "copy.png")]]
    near = [set(g["paths"]) for g in groups["near_groups"]]
    assert {str(shapes_dir / "square" / "001.png"), str(shapes_dir / "square" / "small.png")} in [g & {str(shapes_dir / "square" / "001.png"), str(shapes_dir / "square" / "small.png")} for g in near]
    assert (out / "nearest_similarity.png").is_file() and (out / "pairs.csv").is_file() and (out / "group_000.png").is_file()
    assert not (shapes_dir / "circle" / "copy.png").exists()  # quarantined, not deleted
    manifest = next((tmp_path / "q").glob("manifest-*.json"))
    moved = json.load(open(manifest))["moves"]
    assert all(p.exists() for p in (tmp_path / "q").rglob("*.png")) and len(moved) >= 2
    code, stdout, _ = zoo_cli("duplicates", "--undo", manifest)
    assert code == 0 and f"restored {len(moved)} of {len(moved)}" in stdout
    assert (shapes_dir / "circle" / "copy.png").exists() and (shapes_dir / "square" / "small.png").exists()


def test_duplicates_from_existing_index(shapes_dir, tmp_path, zoo_cli):
    shutil.copy(shapes_dir / "circle" / "000.png", shapes_dir / "circle" / "copy.png")
    assert zoo_cli("index", "--images", shapes_dir, "--out", tmp_path / "i", *TINY)[0] == 0
    code, _, err = zoo_cli("duplicates", "--index", tmp_path / "i", "--threshold", "0.9999", "--out", tmp_path / "d")
    assert code == 0, err
    groups = json.load(open(tmp_path / "d" / "groups.json"))["near_groups"]
    assert [sorted(g["paths"]) for g in groups] == [[str(shapes_dir / "circle" / "000.png"), str(shapes_dir / "circle" / "copy.png")]]
