"""Hubness reduction (CSLS): the maths, the index that stores densities and ranks by them, its
update, its files read as hostile input, and the options of `zoo index` and `zoo benchmark`."""
import json
import re

import numpy as np
import pytest
import torch

import zoo
from zoo.data.images import Record
from zoo.errors import ZooError
from zoo.index.core import ZooIndex
from zoo.metrics.hubness import LIFT, gallery_neighbours, hubness_scores, loo_density
from zoo.metrics.retrieval import retrieval_metrics
from conftest import TINY


def tiny_model():
    return zoo.ZooModel("resnet50", pretrained=False, data_config={"image_size": 64}).build()


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_density(g: np.ndarray, k: int) -> np.ndarray:
    sim = g @ g.T
    np.fill_diagonal(sim, -np.inf)
    return np.sort(sim, axis=1)[:, ::-1][:, :k].mean(1)


def brute_order(cos: np.ndarray, dens: np.ndarray, weight: float, k: int) -> np.ndarray:
    """The nearest by cosine, then the others by cosine - weight x density."""
    first = int(np.argmax(cos))
    rest = [i for i in np.argsort(-(cos - weight * dens), kind="stable") if i != first]
    return np.array([first] + rest[:k - 1])


def test_scores_are_cosine_minus_weighted_density_after_the_nearest_and_copies():
    sim = np.array([[0.9, 0.8, 1.0, 0.7], [0.9, 0.8, float("-inf"), 0.7]], np.float32)
    density = np.array([0.8, 0.8, 0.9, 0.1], np.float32)
    got = hubness_scores(sim, density, 0.5)
    assert got[0] == pytest.approx([0.5, 0.4, 1.0 + LIFT, 0.65])  # the copy first
    assert got[1, [0, 1, 3]] == pytest.approx([0.9 + LIFT, 0.4, 0.65]) and got[1, 2] == float("-inf")  # the nearest first
    t = hubness_scores(torch.tensor(sim), torch.tensor(density), 0.5)
    assert t.numpy() == pytest.approx(got)
    assert list(np.argsort(-got[0])) == [2, 3, 0, 1]  # plain cosine: [2, 0, 1, 3]
    assert list(np.argsort(-got[1])) == [0, 3, 1, 2]  # plain cosine: [0, 1, 3, 2]


def test_leave_one_out_density_is_the_density_without_the_query():
    g = torch.nn.functional.normalize(torch.randn(12, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    k, start, q = 3, 4, 5
    top_s, top_i = gallery_neighbours(g, k + 1)
    pair = g[start:start + q] @ g.T
    got = loo_density(top_s, top_i, k, start, pair)
    for qi in range(q):
        keep = [i for i in range(12) if i != start + qi]
        dens = brute_density(g[keep].numpy(), k)
        for j, gi in enumerate(keep):
            assert float(got[qi, gi]) == pytest.approx(float(dens[j]), abs=1e-6)


def crowded():
    """Four 'a' photos packed together, one 'b' photo alone, and a 'b' query that looks a little
    like the pack: by cosine its 4 nearest are all 'a'; the nearest stays first, the density of
    the other three pushes them below its 'b'."""
    a = [[1, 0.1 * i, 0, 0] for i in range(4)]
    x = unit(a + [[0, 0, 1, 0], [0.62, 0, 0.55, 0.56]])
    return x, torch.tensor([0, 0, 0, 0, 1, 1])


def test_metrics_with_hubness_find_the_crowded_out_query_its_class():
    x, lab = crowded()
    plain = retrieval_metrics(torch.from_numpy(x), lab)["per_query"]
    hub = retrieval_metrics(torch.from_numpy(x), lab, hubness=(2, 0.5))["per_query"]
    # the query is row 5, its one relevant item the lone 'b' (row 4): rank 5 by cosine, 2 by hubness
    assert float(plain["ap"][5]) == pytest.approx(1 / 5) and float(hub["ap"][5]) == pytest.approx(1 / 2)
    assert plain["hit@1"][5] == 0 and hub["hit@1"][5] == 0  # the nearest, an 'a', stays first
    assert hub["hit@1"][:4].tolist() == [1, 1, 1, 1]  # the pack still finds itself


def test_index_ranks_by_the_density_it_stores_and_keeps_it(tmp_path):
    rng = np.random.default_rng(1)
    model = tiny_model()
    files = []
    for i in range(30):
        files.append(tmp_path / "img" / f"{i:02d}.jpg")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_bytes(b"x")
    x = np.zeros((30, model.embedding_dim), np.float32)
    x[:, :6] = rng.normal(size=(30, 6))
    x = unit(x)
    idx = ZooIndex.create(model, hubness=4, hubness_weight=0.5)
    ids = idx.add(x, [Record(str(f), "c") for f in files])
    q = unit(rng.normal(size=(3, model.embedding_dim)) * (np.arange(model.embedding_dim) < 6))
    dens = brute_density(x, 4)
    want = np.stack([brute_order(c, dens, 0.5, 5) for c in q @ x.T])
    sims, got = idx.search_vectors(q, 5)
    assert (got == ids[want]).all()
    assert sims == pytest.approx(np.take_along_axis(q @ x.T, want, 1), abs=1e-5)  # cosines, not scores
    plain = idx.search_vectors(q, 5, hubness=False)[1]
    assert (plain == ids[np.argsort(-(q @ x.T), axis=1)[:, :5]]).all() and not (plain == got).all()
    idx.save(tmp_path / "i.index")
    back = zoo.load_index(tmp_path / "i.index")
    assert back.density == pytest.approx(dens, abs=1e-5)
    assert (back.search_vectors(q, 5)[1] == got).all() and "hubness reduction k=4" in back.describe()
    idx.remove(ids[:10])  # neighbourhoods change: densities found again
    assert idx.search_vectors(q, 3)[1].min() >= ids[10] and idx.density[ids[10:]] == pytest.approx(
        brute_density(x[10:], 4), abs=1e-5)


@pytest.mark.parametrize("factory, tol", [("IVF2,Flat", 1e-5), ("HNSW8", 1e-5), ("IVF2,PQ4x4", 2e-2), ("IVF2,SQ8", 1e-2)])
def test_densities_of_inverted_files_graphs_and_lossy_codes(tmp_path, factory, tol):
    """Every factory's stored vectors reach the densities: read back by id from an inverted
    file, from a graph's storage, the float16 vectors kept beside PQ codes (zoo.index.rerank) and
    SQ codes (these two to within their error); and the index still takes and drops items
    afterwards, as an update does."""
    rng = np.random.default_rng(2)
    model = tiny_model()
    files = [tmp_path / f"{i:03d}.jpg" for i in range(130)]
    for f in files:
        f.write_bytes(b"x")
    x = np.zeros((130, model.embedding_dim), np.float32)
    x[:, :6] = rng.normal(size=(130, 6))
    x = unit(x)
    idx = ZooIndex.create(model, factory=factory, hubness=4)
    idx.train(lambda rows: x[rows], 130)  # codes trained on the range of every vector
    ids = idx.add(x[:120], [Record(str(f), "c") for f in files[:120]])
    probe_all = (lambda: idx.set_search(nprobe=2)) if factory.startswith("IVF") else (lambda: None)
    probe_all()  # every list: the exact neighbours
    idx.refresh_density()
    assert idx.density[ids] == pytest.approx(brute_density(x[:120], 4), abs=tol)
    ids = np.concatenate([ids, idx.add(x[120:], [Record(str(f), "c") for f in files[120:]])])
    idx.remove(ids[:5])  # may rebuild the index, with its recorded search settings
    probe_all()
    idx.refresh_density()
    assert idx.density[ids[5:]] == pytest.approx(brute_density(x[5:], 4), abs=tol)


def versions(out):
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name.startswith("v-"))


def test_update_finds_every_density_again(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "s.index"
    code, stdout, err = zoo_cli("index", "--images", shapes_dir, "--out", out, "--hubness", "3", *TINY)
    assert code == 0 and "hubness reduction k=3, weight 0.5" in stdout
    (shapes_dir / "circle" / "000.png").rename(shapes_dir / "circle" / "moved.png")  # one removed, one new
    code, _, err = zoo_cli("index", "--update", "--out", out, "--hubness", "5")
    assert code == 2 and "--update keeps the index's own --hubness setting" in err
    code, _, err = zoo_cli("index", "--update", "--out", out, "--num_workers", "0")
    assert code == 0, err
    idx = zoo.load_index(out)
    ids, vecs, _ = idx.vectors()
    assert idx.density[ids] == pytest.approx(brute_density(unit(vecs), 3), abs=1e-5)
    code, stdout, _ = zoo_cli("search", "--index", out, "--query", shapes_dir / "square" / "000.png", "-k", "3")
    assert code == 0 and stdout.count("square/") >= 1


@pytest.mark.parametrize("bad, message", [
    (lambda p: np.save(p, np.array([object()]), allow_pickle=True), "density.npy is damaged"),
    (lambda p: np.save(p, np.zeros(3, np.float32)), "density.npy does not match the index"),
    (lambda p: np.save(p, np.full(np.load(p).shape, 5.0, np.float32)), "outside \\[-1, 1\\]"),
    (lambda p: p.unlink(), "density.npy is missing"),
])
def test_a_damaged_density_file_is_a_one_line_error(shapes_dir, tmp_path, zoo_cli, bad, message):
    out = tmp_path / "s.index"
    assert zoo_cli("index", "--images", shapes_dir, "--out", out, "--hubness", "3", *TINY)[0] == 0
    bad(versions(out)[-1] / "density.npy")
    code, stdout, err = zoo_cli("search", "--index", out, "--query", shapes_dir / "square" / "000.png")
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    assert re.search(message, err)


@pytest.mark.parametrize("value", [{"k": "3", "weight": 0.5}, {"k": 0, "weight": 0.5}, {"k": 3, "weight": 9},
                                   {"k": 3}, [3, 0.5]])
def test_a_damaged_hubness_setting_is_a_one_line_error(shapes_dir, tmp_path, zoo_cli, value):
    out = tmp_path / "s.index"
    assert zoo_cli("index", "--images", shapes_dir, "--out", out, "--hubness", "3", *TINY)[0] == 0
    meta = versions(out)[-1] / "meta.json"
    m = json.loads(meta.read_text())
    m["hubness"] = value
    meta.write_text(json.dumps(m))
    code, _, err = zoo_cli("search", "--index", out, "--query", shapes_dir / "square" / "000.png")
    assert code == 2 and "meta.json is damaged" in err and len(err.strip().splitlines()) == 1


def test_options_out_of_range_are_refused(shapes_dir, tmp_path, zoo_cli):
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", tmp_path / "x", "--hubness", "-1", *TINY)
    assert code == 2 and "--hubness -1: the neighbourhood size must be an integer from 0 (off) to 1000" in err
    assert not (tmp_path / "x").exists() or not versions(tmp_path / "x")
    code, _, err = zoo_cli("benchmark", "--images", shapes_dir, "--out", tmp_path / "b", "--hubness", "1001", *TINY)
    assert code == 2 and "--hubness 1001: the neighbourhood size must be an integer from 0 (off) to 1000" in err
    with pytest.raises(ZooError, match="^hubness weight 0: give a number above 0 and at most 2$"):
        ZooIndex.create(tiny_model(), hubness=3, hubness_weight=0)


def test_benchmark_scores_as_the_hubness_index_ranks(shapes_dir, tmp_path, zoo_cli):
    code, _, err = zoo_cli("benchmark", "--images", shapes_dir, "--out", tmp_path / "b", "--hubness", "3",
                           "--protocol", "loo", "--samples", "1", *TINY)
    assert code == 0, err
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    row = res["results"][0]
    assert res["meta"]["hubness"] == {"k": 3, "weight": 0.5} and row["hubness"] == "k=3, weight 0.5"
    model = zoo.ZooModel("resnet50", pretrained=False, data_config={"image_size": 64})
    vecs, paths = zoo.embed(shapes_dir, model=model, paths=True, num_workers=0)
    names = sorted({p.split("/")[-2] for p in paths})
    lab = torch.tensor([names.index(p.split("/")[-2]) for p in paths])
    want = retrieval_metrics(torch.from_numpy(vecs), lab, hubness=(3, 0.5))["summary"]
    assert row["hit@1"] == pytest.approx(want["hit@1"], abs=1e-4) and row["map"] == pytest.approx(want["map"], abs=1e-4)


def test_serve_after_update_ranks_by_fresh_densities_after_the_checks_nearest(tmp_path, zoo_cli):
    """The seam: `zoo index --update` changes every neighbourhood; the server ranks uploads by
    the densities of the updated index, after the first hit: the nearest by cosine, the item its
    upload check names."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image
    from shapes import make_shapes
    from zoo.serve.app import create_app
    from zoo.serve.service import SearchService

    images = make_shapes(tmp_path / "shapes", per_class=4, seed=0, shapes=("circle", "square", "triangle"))
    out = tmp_path / "s.index"
    zoo.build_index(images, zoo.ZooModel("resnet50", pretrained=False, data_config={"image_size": 64}), out=out,
                    hubness=3, hubness_weight=2, num_workers=0)
    make_shapes(tmp_path / "more", per_class=2, seed=5, shapes=("circle", "square"))
    for p in (tmp_path / "more").rglob("*.png"):
        p.rename(images / p.parent.name / f"new_{p.name}")
    assert zoo_cli("index", "--update", "--out", out, "--num_workers", "0")[0] == 0
    idx = zoo.load_index(out)
    service = SearchService(idx, out, max_upload_bytes=200_000)
    ids, vecs, _ = idx.vectors()
    vecs = unit(vecs)
    dens = brute_density(vecs, 3)
    queries = make_shapes(tmp_path / "queries", per_class=3, seed=9, shapes=("circle", "square", "triangle"))
    differ = 0
    with TestClient(create_app(service)) as client:
        for q in sorted(queries.rglob("*.png")):
            v = service.embed(Image.open(q).convert("RGB"))
            cos = vecs @ v
            order = brute_order(cos, dens, 2, 4)
            files = {"file": (q.name, q.read_bytes(), "image/png")}
            got = client.post("/api/search?k=4", files=files).json()["results"]
            assert [h["id"] for h in got] == ids[order].tolist()
            assert [h["cosine"] for h in got] == pytest.approx(cos[order], abs=1e-4)
            check = client.post("/api/check", files=files).json()
            assert check["nearest"]["id"] == got[0]["id"] == int(ids[np.argmax(cos)])
            differ += int((order != np.argsort(-cos)[:4]).any())
    assert differ  # some upload's list is not in cosine order: the fresh densities rank it
