"""Vectors on disk and the index that fits (issue 23): vector files (zoo.index.vecfile), pair
search on compact codes from a file, chunked index building, the auto factory by memory, the
re-ranking index (zoo.index.rerank) and its nprobe calibration. Small and fast: thousands of
vectors; speed and memory figures are in benchmarks/scale.py --disk."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zoo.data.images import Record
from zoo.dedup.pairsearch import exact_search, find_pairs, ivf_search, unit_rows
from zoo.errors import ZooError
from zoo.index.core import ZooIndex, load_index
from zoo.index.factory import auto_factory
from zoo.index.vecfile import VectorFile, write_vectors


class StubModel:
    def __init__(self, dim: int):
        self.embedding_dim, self.architecture, self.weights_id = dim, "stub+frozen", "random init (seed 0)"
        self.hparams, self.data_config, self.recipe = {"backbone": "stub", "head": "frozen"}, {}, {}


def clustered(n: int, dim: int, seed: int = 0, copies: int = 0):
    """Unit rows around 20 centres, the last ``copies`` rows near copies (cosine ~0.97) of the first ones."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for i in range(copies):
        noise = rng.standard_normal(dim).astype(np.float32)
        noise -= noise @ x[i] * x[i]
        x[n - copies + i] = 0.97 * x[i] + np.sqrt(1 - 0.97**2) * noise / np.linalg.norm(noise)
    return x


def chunks(x: np.ndarray, size: int = 700):
    return (x[s:s + size] for s in range(0, len(x), size))


# ---- vector files -----------------------------------------------------------------------------
def test_vector_file_round_trip_by_slice_and_rows(tmp_path):
    x = clustered(3000, 48)
    vf = write_vectors(tmp_path / "v.npy", chunks(x), len(x), 48)  # float16, streamed in chunks of 700
    half = x.astype(np.float16).astype(np.float32)
    assert vf.shape == (3000, 48) and vf.dtype == np.float16
    assert np.array_equal(vf[0:3000], half)
    assert np.array_equal(vf[2990:5000], half[2990:])  # clipped like a slice
    rows = np.array([2999, 5, 5, 1700, 0])
    assert np.array_equal(vf[rows], half[rows])  # any order, repeats
    assert np.array_equal(np.load(tmp_path / "v.npy"), x.astype(np.float16))  # a plain .npy to any tool
    assert np.array_equal(np.asarray(vf.memmap()), x.astype(np.float16))
    f32 = write_vectors(tmp_path / "w.npy", chunks(x), len(x), 48, np.float32)
    assert np.array_equal(f32[0:3000], x)


def test_vector_file_write_refuses_a_wrong_count(tmp_path):
    x = clustered(100, 8)
    with pytest.raises(ZooError, match="99 vectors arrived, 100 were expected"):
        write_vectors(tmp_path / "v.npy", chunks(x[:99], 10), 100, 8)
    assert not (tmp_path / "v.npy").exists()  # nothing half-written left behind


@pytest.mark.parametrize("make, why", [
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated or damaged"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 64), "truncated or damaged"),
    (lambda p: p.write_bytes(b"\x93NUMPX" + p.read_bytes()[6:]), "not a usable"),
    (lambda p: p.write_bytes(b"junk"), "not a usable"),
    (lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True), "dtype |O"),
    (lambda p: np.save(p, np.zeros((4, 8), np.int64)), "dtype <i8"),
    (lambda p: np.save(p, np.zeros((2, 4, 8), np.float16)), "shape (2, 4, 8)"),
    (lambda p: np.save(p, np.asfortranarray(np.zeros((4, 8), np.float32))), "Fortran order"),
    (lambda p: np.save(p, np.zeros((4, 8), ">f4")), "dtype >f4"),
])
def test_damaged_vector_file_is_a_one_line_error(tmp_path, make, why):
    p = tmp_path / "v.npy"
    write_vectors(p, [clustered(16, 8)], 16, 8)
    make(p)
    with pytest.raises(ZooError) as e:
        VectorFile.open(p)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_vector_file_that_is_a_folder_or_missing(tmp_path):
    for p in (tmp_path, tmp_path / "none.npy"):
        with pytest.raises(ZooError, match="missing or not a regular file"):
            VectorFile.open(p)


# ---- pair search from a file ------------------------------------------------------------------
def test_compact_code_search_from_a_file_finds_the_planted_pairs(tmp_path):
    x = clustered(4000, 64, copies=40)
    vf = write_vectors(tmp_path / "v.npy", chunks(x), len(x), 64)
    exact = exact_search(unit_rows(vf[0:len(x)]), 0.95)  # the float16 vectors, all pairs
    planted = {(i, 4000 - 40 + i) for i in range(40)}
    assert planted <= set(map(tuple, exact.pairs.tolist()))
    found = ivf_search(vf, 0.95, nlist=40, nprobe=40, pca_dim=16)  # every list probed: nothing may be missed
    assert found.params["codes"] == "float16"
    assert found.pairs.tolist() == exact.pairs.tolist()  # the bound with the float16 slack drops no pair
    assert np.allclose(found.sims, exact.sims, rtol=0, atol=1e-6)  # re-checked on the full vectors read back from the file
    paired = np.unique(found.pairs)
    assert np.allclose(found.nearest[paired], exact.nearest[paired], rtol=0, atol=1e-6)
    assert (found.nearest[np.setdiff1d(np.arange(4000), paired)] < 0.95).all()
    blocked = ivf_search(vf, 0.95, nlist=40, nprobe=40, pca_dim=16, block_entries=5000)  # lists in small blocks
    assert blocked.pairs.tolist() == found.pairs.tolist() and np.array_equal(blocked.nearest, found.nearest)
    calibrated = find_pairs(vf, 0.95, method="ivf", pca_dim=16)  # a small file: read in, float32 codes
    assert planted <= set(map(tuple, calibrated.pairs.tolist()))


def test_pair_search_refuses_unknown_codes(tmp_path):
    vf = write_vectors(tmp_path / "v.npy", [clustered(200, 8)], 200, 8)
    with pytest.raises(ZooError, match="codes 'int4'"):
        ivf_search(vf, 0.9, codes="int4")


# ---- the index ---------------------------------------------------------------------------------
def test_factory_auto_picks_by_the_memory_given():
    gb = 1 << 30
    assert auto_factory(1_000_000, 1280, 24 * gb) == "IVF4096,Flat"  # 4.9 GiB of floats: a quarter of 24
    assert auto_factory(1_000_000, 1280, 8 * gb) == "IVF4096,SQ8"  # 1.2 GiB of codes: a quarter of 8
    assert auto_factory(10_000_000, 1280, 24 * gb) == "PCA256,IVF4096,SQ8"  # 2.4 GiB of 256-d codes
    assert auto_factory(10_000_000, 1280, 8 * gb) == "PCA256,IVF4096,PQ64"  # 0.6 GiB of PQ codes
    assert auto_factory(100_000, 512, 64 << 20) == "PCA96,IVF256,SQ8"  # 9.2 MiB of codes
    assert auto_factory(100_000, 512, 32 << 20) == "PCA96,IVF256,PQ16"


@pytest.fixture
def one_faiss_thread():
    """FAISS's k-means on several threads sums in a varying order (last-bit differences from run to run)."""
    import faiss
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    faiss.omp_set_num_threads(before)


def records(n: int, prefix: str = "") -> list[Record]:
    return [Record(f"/data/{prefix}{i:05d}.jpg") for i in range(n)]


@pytest.mark.parametrize("factory", ["IVF16,Flat", "PCA16,IVF16,SQ8"])
def test_chunked_build_from_a_file_equals_one_shot_build(tmp_path, factory, one_faiss_thread):
    x = clustered(3000, 32)
    vf = write_vectors(tmp_path / "v.npy", chunks(x), len(x), 32, np.float32)
    one = ZooIndex.create(StubModel(32), factory, root=Path("/data"))
    one.add_file(vf, records(3000), chunk=3000)  # all rows in one go
    streamed = ZooIndex.create(StubModel(32), factory, root=Path("/data"))
    streamed.add_file(vf, records(3000), chunk=256)
    q = clustered(50, 32, seed=1)
    kept = q.copy()
    for a, b in zip(one.search_vectors(q, 10), streamed.search_vectors(q, 10)):
        assert np.array_equal(a, b)
    assert list(one.store.rows()) == list(streamed.store.rows()) and len(list(one.store.rows())) == 3000
    assert np.array_equal(q, kept)  # searching leaves the caller's queries as they were
    if factory.startswith("PCA"):
        return  # added from memory, the re-ranking vectors wait as float16, not the file's float32
    from_memory = ZooIndex.create(StubModel(32), factory, root=Path("/data"))
    from_memory.add(x.copy(), records(3000))  # the array in memory (scaled in place): the same up to float rounding
    sims, ids = from_memory.search_vectors(q, 10)
    assert np.array_equal(ids, one.search_vectors(q, 10)[1])
    assert np.allclose(sims, one.search_vectors(q, 10)[0], rtol=0, atol=1e-6)


def test_rerank_index_round_trip_calibration_and_update(tmp_path):
    x = clustered(3000, 32)
    vf = write_vectors(tmp_path / "v.npy", chunks(x), len(x), 32)
    index = ZooIndex.create(StubModel(32), "PCA8,IVF16,SQ8", root=Path("/data"))
    index.add_file(vf, records(3000))
    out = tmp_path / "idx"
    index.save(out)
    meta = json.loads((index.folder / "meta.json").read_text())
    assert meta["rerank"] == {"k_factor": 8}
    assert meta["calibration"]["nprobe"] == meta["search"]["nprobe"]  # chosen by the calibration
    assert meta["calibration"]["recall@10"] >= 0.95 and meta["calibration"]["queries"] == 200
    assert (index.folder / "rerank.npy").stat().st_ino == (tmp_path / "v.npy").stat().st_ino  # linked, not copied
    opened = load_index(out)
    sims, ids = opened.search_vectors(x[:5], 3)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]  # each finds itself first, by exact re-ranking
    half = x[:5].astype(np.float16).astype(np.float32)
    assert np.allclose(sims[:, 0], np.einsum("ij,ij->i", half / np.linalg.norm(half, axis=1, keepdims=True), x[:5]),
                       atol=1e-6)
    update = ZooIndex.load(out, mmap=False).writable_copy()
    update.remove([0, 1])
    update.add(x[:1], records(1, "new"))
    update.save(out, overwrite=True)
    again = load_index(out)
    assert len(again) == 2999 and len(again.rerank) == 2999
    _, ids = again.search_vectors(x[:2], 2)
    assert ids[0, 0] == 3000 and 0 not in ids and 1 not in ids  # the new copy of row 0; the removed ones gone


def test_damaged_rerank_parts_are_one_line_errors(tmp_path):
    x = clustered(600, 16)
    index = ZooIndex.create(StubModel(16), "PCA8,IVF4,SQ8", root=Path("/data"))
    index.add(x, records(600))
    out = tmp_path / "idx"
    index.save(out)
    folder = index.folder
    ids = folder / "rerank_ids.npy"
    np.save(ids, np.arange(599, dtype=np.int64))
    with pytest.raises(ZooError, match="re-ranking vectors do not match"):
        load_index(out)
    np.save(ids, np.array([None] * 600, dtype=object), allow_pickle=True)
    with pytest.raises(ZooError, match="rerank_ids.npy is damaged"):
        load_index(out)
    np.save(ids, np.arange(600, dtype=np.int64)[::-1].copy())
    with pytest.raises(ZooError, match="not increasing"):
        load_index(out)
    np.save(ids, np.arange(600, dtype=np.int64))
    rerank = folder / "rerank.npy"
    rerank.write_bytes(rerank.read_bytes()[:-2])
    with pytest.raises(ZooError, match="truncated or damaged"):
        load_index(out)
    meta = json.loads((folder / "meta.json").read_text())
    meta["rerank"] = {"k_factor": "8; rm -rf"}
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ZooError, match="rerank must be a mapping"):
        load_index(out)


def test_duplicates_of_a_rerank_index_search_its_vector_file(tmp_path, monkeypatch):
    from zoo.dedup import duplicates, pairsearch
    from zoo.index.vecfile import VectorFile as VF

    x = clustered(2000, 32, copies=10)
    index = ZooIndex.create(StubModel(32), "PCA8,IVF8,SQ8", root=Path("/data"))
    index.add(x.copy(), records(2000))
    index.save(tmp_path / "idx")
    ids, vf = load_index(tmp_path / "idx").vector_file()
    assert isinstance(vf, VF) and ids.tolist() == list(range(2000))
    handed = []
    real = pairsearch.find_pairs
    monkeypatch.setattr(duplicates, "find_pairs", lambda v, *a, **k: handed.append(type(v)) or real(v, *a, **k))
    result = duplicates.run_duplicates(None, index=str(tmp_path / "idx"), threshold=0.95, out=tmp_path / "dups")
    assert handed == [VF]  # the vectors were not read back through FAISS
    pairs = {tuple(sorted(g["paths"])) for g in result["near_groups"]}
    assert {(f"/data/{i:05d}.jpg", f"/data/{1990 + i:05d}.jpg") for i in range(10)} <= pairs
    assert result["search"]["similarities"] == "exact"


def test_truncated_rerank_vectors_are_one_line_at_the_command(tmp_path, zoo_cli):
    x = clustered(600, 16)
    index = ZooIndex.create(StubModel(16), "PCA8,IVF4,SQ8", root=Path("/data"))
    index.add(x, records(600))
    index.save(tmp_path / "idx")
    rerank = index.folder / "rerank.npy"
    rerank.write_bytes(rerank.read_bytes()[:1000])
    code, out, err = zoo_cli("duplicates", "--index", tmp_path / "idx", "--out", tmp_path / "dups")
    lines = [line for line in err.splitlines() if line.startswith("zoo: error:")]
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(lines) == 1 and "rerank.npy: not a usable re-ranking vector file" in lines[0] and "truncated" in lines[0]


def test_an_inverted_file_spreads_few_queries_over_lists_and_many_over_queries():
    """zoo.index.factory.search: FAISS parallel_mode 1 (threads over one query's lists) below the
    thread count, 0 (threads over queries) above it; the results are the same either way."""
    import faiss

    from zoo.index.factory import new_faiss_index, search

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    index = new_faiss_index(16, "IVF16,Flat")
    index.train(x)
    index.add_with_ids(x, np.arange(2000))
    faiss.extract_index_ivf(index).nprobe = 4
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        one = search(index, x[:1], 5)
        assert faiss.extract_index_ivf(index).parallel_mode == 1
        many = search(index, x[:8], 5)
        assert faiss.extract_index_ivf(index).parallel_mode == 0
    finally:
        faiss.omp_set_num_threads(threads)
    assert np.array_equal(one[1], many[1][:1]) and one[1][0, 0] == 0
