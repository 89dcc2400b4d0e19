import json

import faiss
import numpy as np
import pytest

from zoo.errors import ZooError
from zoo.dedup.groups import component_groups, group_similarity_range, make_groups, star_groups
from zoo.dedup.ivfpairs import _Coarse, calibrated_radius
from zoo.dedup.pairsearch import exact_search, find_pairs, ivf_search
from zoo.index.vectors import index_vectors
from conftest import TINY


def planted(n: int, d: int, seed: int = 0, share: float = 0.05):
    """Clustered unit vectors with a decaying spectrum; ``share`` of them are copies of others at
    cosine 0.96-0.98 (threshold 0.95 catches them, same-cluster vectors sit near 0.5)."""
    rng = np.random.default_rng(seed)
    spec = (1.0 + np.arange(d)) ** -0.5
    centres = rng.standard_normal((20, d)) * spec
    x = centres[rng.integers(0, 20, n)] + rng.standard_normal((n, d)) * spec
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pos = rng.permutation(n)
    copies, src = pos[: int(n * share)], pos[int(n * share):][: int(n * share)]
    u = rng.standard_normal((len(src), d)) * spec
    u -= np.einsum("ij,ij->i", u, x[src])[:, None] * x[src]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    c = rng.uniform(0.96, 0.98, (len(src), 1))
    x[copies] = c * x[src] + np.sqrt(1 - c * c) * u
    truth = {tuple(sorted(p)) for p in zip(src.tolist(), copies.tolist())}
    return x.astype(np.float32), truth


def brute(x: np.ndarray, threshold: float):
    n = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = n @ n.T
    np.fill_diagonal(s, -np.inf)
    pairs = {(i, j) for i, j in zip(*np.nonzero(np.triu(s >= threshold, 1)))}
    return pairs, s.max(1)


def test_approximate_path_finds_the_exact_groups_and_reports_recall():
    x, truth = planted(3000, 384, seed=1)  # 384 > 128: the PCA step runs
    exact = find_pairs(x, 0.95)
    assert exact.method == "exact" and exact.expected_recall == 1.0
    assert {tuple(p) for p in exact.pairs.tolist()} == truth == brute(x, 0.95)[0]
    approx = find_pairs(x, 0.95, exact_max_work=0)  # a low switch-over forces the inverted file
    assert approx.method == "ivf" and approx.params["pca_dim"] == 128 and approx.params["nlist"] == 75
    assert 0.98 <= approx.expected_recall <= 1.0 and "calibrated" in approx.recall_note
    assert approx.params["nprobe"] < approx.params["nlist"]  # it did not just compare everything
    assert approx.params["candidates"] < 0.01 * 3000 * 2999  # the PCA bound prunes before the exact check
    assert {tuple(p) for p in approx.pairs.tolist()} == truth
    np.testing.assert_allclose(approx.sims, exact.sims, atol=1e-5)  # re-checked on the full vectors
    for grouping in ("star", "components"):
        a = make_groups(len(x), approx.pairs, approx.sims, grouping)
        b = make_groups(len(x), exact.pairs, exact.sims, grouping)
        assert [g.tolist() for g in a] == [g.tolist() for g in b] and len(a) > 100


def test_fewer_probes_lose_recall_and_say_so():
    x, truth = planted(3000, 64, seed=2)
    one = ivf_search(x, 0.95, nprobe=1, nlist=60)
    found = {tuple(p) for p in one.pairs.tolist()}
    assert found < truth  # some pairs straddle lists that never meet
    assert one.expected_recall < 0.98 and one.params["pca_dim"] is None
    everything = ivf_search(x, 0.95, nprobe=60, nlist=60)
    assert {tuple(p) for p in everything.pairs.tolist()} == truth and everything.expected_recall == 1.0


def test_exact_switch_and_bad_options():
    x, _ = planted(500, 32)
    assert find_pairs(x, 0.95).method == "exact"
    assert find_pairs(x, 0.95, method="ivf").method == "ivf"
    assert find_pairs(x, 0.95, method="exact", exact_max_work=0).method == "exact"
    with pytest.raises(ZooError, match="search method 'fast'"):
        find_pairs(x, 0.95, method="fast")
    with pytest.raises(ZooError, match="--nprobe 0"):
        find_pairs(x, 0.95, nprobe=0)
    with pytest.raises(ZooError, match="threshold 1.5"):
        find_pairs(x, 1.5)


def test_nearest_similarities_come_from_the_same_search():
    x, _ = planted(400, 16, seed=3)
    x[7] = x[5]  # an identical vector
    _, nearest = brute(x, 0.95)
    np.testing.assert_allclose(exact_search(x, 0.95, chunk=64).nearest, nearest, atol=1e-5)
    full = ivf_search(x, 0.95, nlist=8, nprobe=8)  # every list meets every list: the true nearest
    np.testing.assert_allclose(full.nearest, nearest, atol=1e-5)
    part = ivf_search(x, 0.95, nlist=8, nprobe=1)  # lower bounds, exact for members of a pair
    assert np.all(part.nearest <= nearest + 1e-5) and np.isclose(part.nearest[5], 1.0, atol=1e-5)
    assert np.isclose(full.nearest[7], 1.0, atol=1e-5)


def chain(angles_deg):
    """Unit vectors in a plane at the given angles (cosine = cos of the angle between them)."""
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], 1).astype(np.float32)


def test_star_grouping_breaks_chains_that_components_merge():
    # a-b-c-d-e 14-15 degrees apart: neighbours at cos >= 0.966, two apart at <= 0.883, a~e at 0.545;
    # b, c, d have two neighbours each, b the largest similarity sum (c~d is the weakest link)
    x = chain([0, 14, 28, 43, 57])
    found = exact_search(x, 0.95)
    assert found.pairs.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert [g.tolist() for g in component_groups(5, found.pairs)] == [[0, 1, 2, 3, 4]]
    stars = star_groups(5, found.pairs, found.sims)
    assert [g.tolist() for g in stars] == [[1, 0, 2], [3, 4]]  # the centre first
    for g in stars:
        assert np.all(x[g[1:]] @ x[g[0]] >= 0.95)  # every member near its centre
    # a-b-c: star centres on b (both ends are near it), components the same members
    three = exact_search(chain([0, 15, 30]), 0.95)
    assert [g.tolist() for g in star_groups(3, three.pairs, three.sims)] == [[1, 0, 2]]
    # a-b-c-d: d's only neighbour went to b's star; it stays out of the groups
    four = exact_search(x[:4], 0.95)
    assert [g.tolist() for g in star_groups(4, four.pairs, four.sims)] == [[1, 0, 2]]
    with pytest.raises(ZooError, match="--grouping clique"):
        make_groups(5, found.pairs, found.sims, "clique")


def test_group_similarity_range_is_over_pairs_inside_each_group():
    pairs = np.array([[0, 1], [1, 2], [3, 4], [2, 5]])
    sims = np.array([0.97, 0.96, 0.99, 0.951], np.float32)
    groups = [np.array([1, 0, 2]), np.array([3, 4])]
    lo, hi = group_similarity_range(groups, 6, pairs, sims)
    np.testing.assert_allclose(lo, [0.96, 0.99])
    np.testing.assert_allclose(hi, [0.97, 0.99])


@pytest.mark.parametrize("factory,lossy", [("Flat", False), ("IVF4,Flat", False), ("HNSW8", False), ("SQ8", True)])
def test_index_vectors_read_back_without_extra_copies(factory, lossy):
    x, _ = planted(300, 32, seed=4)
    index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    got, is_lossy = index_vectors(index)
    assert got.shape == x.shape and is_lossy == lossy
    np.testing.assert_allclose(got, x, atol=0.02 if lossy else 0)
    if factory == "Flat":
        assert not got.flags.owndata  # a view on the index's memory


def test_cli_duplicates_exact_and_approximate(shapes_dir, tmp_path, zoo_cli):
    from PIL import Image

    Image.open(shapes_dir / "square" / "001.png").resize((30, 30)).save(shapes_dir / "square" / "small.png")
    runs = {}
    for flag in ("--exact", "--approximate"):
        out = tmp_path / flag.strip("-")
        code, stdout, err = zoo_cli("duplicates", "--images", shapes_dir, "--threshold", "0.995", "--out", out,
                                    flag, "--grouping", "components", *TINY)
        assert code == 0, err
        runs[flag] = json.load(open(out / "groups.json"))
        assert (out / "nearest_similarity.png").is_file()
    assert runs["--exact"]["search"]["method"] == "exact" and runs["--approximate"]["search"]["method"] == "ivf"
    assert runs["--approximate"]["search"]["grouping"] == "components"
    exact, approximate = runs["--exact"]["near_groups"], runs["--approximate"]["near_groups"]
    assert [g["paths"] for g in exact] == [g["paths"] for g in approximate]  # the same groups
    for e, a in zip(exact, approximate):  # the similarities, up to float rounding of the two searches
        assert e["min_similarity"] == pytest.approx(a["min_similarity"], abs=1e-6)
        assert e["max_similarity"] == pytest.approx(a["max_similarity"], abs=1e-6)
    pair = {str(shapes_dir / "square" / "001.png"), str(shapes_dir / "square" / "small.png")}
    assert any(pair <= set(g["paths"]) for g in runs["--exact"]["near_groups"])
    code, _, err = zoo_cli("duplicates", "--images", shapes_dir, "--exact", "--approximate", "--out", tmp_path / "x", *TINY)
    assert code != 0 and "zoo: error: --exact and --approximate exclude each other" in err
    code, _, err = zoo_cli("duplicates", "--images", shapes_dir, "--grouping", "chain", "--out", tmp_path / "y", *TINY)
    assert code != 0 and "zoo: error: --grouping chain" in err


def test_cli_duplicates_from_a_lossy_index_says_so(shapes_dir, tmp_path, zoo_cli):
    assert zoo_cli("index", "--images", shapes_dir, "--out", tmp_path / "i", "--factory", "SQ8", *TINY)[0] == 0
    code, _, err = zoo_cli("duplicates", "--index", tmp_path / "i", "--threshold", "0.99", "--out", tmp_path / "d")
    assert code == 0, err
    assert "similarities from lossy index codes are approximate" in err
    info = json.load(open(tmp_path / "d" / "groups.json"))["search"]
    assert info["method"] == "exact" and info["similarities"].startswith("approximate")


def test_memory_mapped_vectors_are_searched_in_place(tmp_path):
    from zoo.dedup.pairsearch import unit_rows

    x, truth = planted(2000, 64, seed=5)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert unit_rows(mapped) is mapped  # unit float32 rows: no copy
    found = find_pairs(mapped, 0.95, method="ivf", nprobe=8)
    assert {tuple(p) for p in found.pairs.tolist()} == truth
    scaled = unit_rows(x * 3)  # not unit: one normalised copy
    np.testing.assert_allclose(np.linalg.norm(scaled, axis=1), 1, atol=1e-5)


def test_lists_are_probed_in_order_of_the_distance_to_their_boundary():
    """A vector at (1, 0) in list A (centre (0, 0)): C (0, 2.5) has the nearer centre (7.25 vs 9),
    but the A|B boundary (x = 2) is 1 away and the A|C boundary 1.25: B is probed before C."""
    coarse = _Coarse.__new__(_Coarse)
    coarse.centroids = np.array([[0, 0], [4, 0], [0, 2.5], [50, 50]], np.float32)
    coarse.quantizer = faiss.IndexFlatL2(2)
    coarse.quantizer.add(coarse.centroids)
    coarse.gram = coarse.centroids @ coarse.centroids.T
    coarse.sq_norms = (coarse.centroids ** 2).sum(1)
    y = np.array([[1, 0]], np.float32)
    assert coarse.quantizer.search(y, 3)[1].tolist() == [[0, 2, 1]]  # by centre distance
    lists, keys = coarse.ranked(y, 3)
    assert lists.tolist() == [[0, 1, 2]] and keys[0, 0] == -np.inf  # by boundary distance
    assert coarse.ranked(y, 1)[0].tolist() == [[0]]
    assert coarse.ranked(y, 2)[0].tolist() == [[0, 2]]  # only the shortlist is ranked
    assert np.allclose(keys[0, 1:], [1.0, 1.25])  # (9 - 1) / (2 * 4), (7.25 - 1) / (2 * 2.5)


def test_the_radius_is_the_smallest_that_meets_the_target_share():
    need = np.array([0.3, -np.inf, np.inf, 0.1, 0.2])  # -inf: same list; inf: beyond the shortlist
    assert calibrated_radius(need, 0.6) == 0.2  # 3 of 5 meet within 0.2
    assert calibrated_radius(need, 0.61) == 0.3
    assert calibrated_radius(need, 0.8) == 0.3
    assert calibrated_radius(need, 0.81) == np.inf  # not reached: the whole shortlist is probed


def test_default_search_probes_a_calibrated_radius_and_a_fixed_nprobe_probes_that_many():
    x, truth = planted(3000, 32, seed=3)
    exact = set(map(tuple, exact_search(x, 0.95).pairs.tolist()))
    adaptive = ivf_search(x, 0.95, nlist=40)
    assert adaptive.params["radius"] is not None and 1 <= adaptive.params["nprobe"] < 40  # mean lists probed
    assert "boundary is within" in adaptive.recall_note
    found = set(map(tuple, adaptive.pairs.tolist()))
    assert truth <= found <= exact
    own_only = ivf_search(x, 0.95, nlist=40, max_probe=1)  # the target is out of reach: no radius, and
    assert own_only.params["radius"] is None and own_only.params["nprobe"] == 1  # the recall says what
    assert own_only.expected_recall < 0.98  # the own lists alone hold, not 1
    fixed = ivf_search(x, 0.95, nlist=40, nprobe=3)
    assert fixed.params["radius"] is None and fixed.params["nprobe"] == 3 and "nprobe 3" in fixed.recall_note
