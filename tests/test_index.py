import json
import shutil

import numpy as np
import pytest
from PIL import Image

import zoo
from zoo.errors import ZooError
from conftest import TINY, save


def tiny_model(**kw):
    return zoo.ZooModel("resnet50", pretrained=False, data_config={"image_size": 64}, **kw)


@pytest.fixture
def gallery(shapes_dir):
    q = shapes_dir / "circle" / "000.png"
    Image.open(q).resize((36, 36)).save(shapes_dir / "circle" / "resized_copy.jpg", quality=60)
    (shapes_dir / "notes.txt").write_text("a text file")
    (shapes_dir / "square" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return shapes_dir


def test_index_then_search_finds_itself_then_resized_copy(gallery, tmp_path, capsys):
    out = tmp_path / "g.index"
    idx = zoo.build_index(gallery, tiny_model(), out=out)
    err = capsys.readouterr().err
    assert "notes.txt: not an image" in err and "broken.jpg: corrupt or truncated" in err
    assert len(idx) == 13 and not any(p.endswith(("notes.txt", "broken.jpg")) for p in idx.paths)
    loaded = zoo.load_index(out)
    assert loaded.meta["model"]["weights"] == "random init (seed 0)" and loaded.meta["model"]["dim"] == 2048
    assert loaded.meta["model"]["preprocessing"]["input_size"] == [3, 64, 64]
    assert sorted(p.rsplit("/", 1)[1] for p, _ in loaded.skipped) == ["broken.jpg", "notes.txt"]
    hits = loaded.search(str(gallery / "circle" / "000.png"), k=3)  # rebuilds the model from metadata
    assert hits[0].path.endswith("circle/000.png") and hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert hits[1].path.endswith("circle/resized_copy.jpg") and hits[0].label == "circle"
    assert hits[0].similarity >= hits[1].similarity >= hits[2].similarity


def test_existing_index_is_not_overwritten_without_flag(shapes_dir, tmp_path):
    out = tmp_path / "a.index"
    zoo.build_index(shapes_dir, tiny_model(), out=out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ZooError, match="already exists; pass --overwrite"):
        zoo.build_index(shapes_dir, tiny_model(), out=out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    zoo.build_index(shapes_dir / "circle", tiny_model(), out=out, overwrite=True)
    assert len(zoo.load_index(out)) == 4
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "precious.txt").write_text("keep")
    with pytest.raises(ZooError, match="not part of a zoo index; refusing to replace it"):
        zoo.build_index(shapes_dir, tiny_model(), out=user_dir, overwrite=True)
    assert (user_dir / "precious.txt").read_text() == "keep"
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary leftovers


def test_update_adds_only_new_files(shapes_dir, tmp_path, capsys):
    out = tmp_path / "u.index"
    zoo.build_index(shapes_dir, tiny_model(), out=out)
    save(Image.new("RGB", (48, 48), (9, 9, 9)), shapes_dir / "square" / "new.png")
    capsys.readouterr()
    idx = zoo.build_index(shapes_dir, out=out, update=True)
    assert "1 new, 0 changed, 0 removed file(s); 12 indexed before" in capsys.readouterr().err
    assert len(idx) == 13 and zoo.load_index(out).paths[-1].endswith("square/new.png")


def test_search_with_another_model_is_refused(shapes_dir, tmp_path):
    out = tmp_path / "m.index"
    idx = zoo.build_index(shapes_dir, tiny_model(), out=out)
    other = zoo.ZooModel("timm/resnet18", pretrained=False, data_config={"image_size": 64})
    with pytest.raises(ZooError, match="model mismatch: the index was built with resnet50\\+frozen \\(dim 2048.*timm/resnet18\\+frozen \\(dim 512"):
        idx.search(str(shapes_dir / "circle" / "000.png"), model=other.build())
    with pytest.raises(ZooError, match="query embeddings have dim 512, the index has dim 2048"):
        idx.search_vectors(np.ones((1, 512), np.float32))


def test_float16_embeddings_and_factory(shapes_dir, tmp_path):
    from zoo.data.images import scan_folder
    from zoo.embed.runner import embed

    m = tiny_model(float16_embeddings=True)
    e = embed(m, scan_folder(shapes_dir))
    assert e.vectors.dtype == np.float16 and e.vectors.shape == (12, 2048)
    idx = zoo.build_index(shapes_dir, m, out=tmp_path / "h.index", factory="SQfp16")
    hits = idx.search(str(shapes_dir / "square" / "001.png"), k=1)
    assert hits[0].path.endswith("square/001.png") and hits[0].similarity == pytest.approx(1.0, abs=1e-2)
    with pytest.raises(ZooError, match="bad FAISS index factory string 'Nope'"):
        zoo.build_index(shapes_dir, m, factory="Nope")


def test_cli_index_search_json_and_grid(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "c.index"
    code, stdout, _ = zoo_cli("index", "--images", shapes_dir, "--out", out, *TINY)
    assert code == 0 and f"indexed 12 items of {shapes_dir} with resnet50+frozen" in stdout
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *TINY)
    assert code == 2 and "already exists; pass --overwrite" in err
    q = shapes_dir / "triangle" / "002.png"
    code, stdout, _ = zoo_cli("search", "--query", q, "--index", out, "-k", "4", "--json", "--grid", tmp_path / "grid.png")
    assert code == 0
    result = json.loads(stdout)
    assert result[0]["weights"] == "random init (seed 0)"
    assert [r["rank"] for r in result[0]["results"]] == [1, 2, 3, 4]
    assert result[0]["results"][0]["path"] == str(q) and result[0]["results"][0]["similarity"] == pytest.approx(1, abs=1e-4)
    assert Image.open(tmp_path / "grid.png").size[0] > 400
    code, stdout, _ = zoo_cli("search", "--query", q, "--index", out, "-k", "2")
    assert code == 0 and "   1   1.0000  " + str(q) in stdout
    code, _, err = zoo_cli("search", "--query", q, "--index", out, "--backbone", "vgg16")
    assert code == 2 and "model mismatch" in err


class StubModel:
    """Just enough of a ZooModel for an index of ready-made vectors."""

    def __init__(self, dim: int):
        self.embedding_dim, self.architecture, self.weights_id = dim, "stub+frozen", "random init (seed 0)"
        self.hparams, self.data_config, self.recipe = {"backbone": "stub", "head": "frozen"}, {}, {}


def test_auto_factory_by_size_and_memory():
    from zoo.index.factory import auto_factory

    gb = 1 << 30
    assert auto_factory(49_999, 2048, 24 * gb) == "Flat"
    assert auto_factory(1_000_000, 1280, 24 * gb) == "IVF4096,Flat"  # 5.1 GB of floats fit in a quarter of 24 GB
    assert auto_factory(1_000_000, 1280, 8 * gb) == "IVF4096,SQ8"
    assert auto_factory(10_000_000, 1280, 24 * gb) == "PCA256,IVF4096,SQ8"  # issue 23: PCA codes, re-ranked from disk


def test_ivf_knobs_persist_and_remove_by_id(tmp_path):
    from zoo.data.images import Record
    from zoo.index.core import ZooIndex
    from zoo.index.vectors import stored_vectors

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    for i in range(len(x)):
        (tmp_path / f"{i}.png").touch()
    records = [Record(str(tmp_path / f"{i}.png")) for i in range(len(x))]
    idx = ZooIndex.create(StubModel(16), "IVF64,Flat")
    idx.add(x, records)
    assert idx.meta["search"] == {"nprobe": 16} and idx.root == tmp_path
    exact = ZooIndex.create(StubModel(16), "Flat")
    exact.add(x, records)
    _, truth = exact.search_vectors(x[:200], 10)

    def recall(index):
        _, ids = index.search_vectors(x[:200], 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist())])

    idx.set_search(nprobe=1)
    low = recall(idx)
    idx.set_search(nprobe=64)
    assert low < 0.9 and recall(idx) == 1.0  # all lists visited: exact
    idx.set_search(nprobe=16)
    idx.save(tmp_path / "ivf.index")
    loaded = zoo.load_index(tmp_path / "ivf.index")  # memory-mapped, with the index's own nprobe
    import faiss

    assert faiss.extract_index_ivf(loaded.index).nprobe == 16 and recall(loaded) == recall(idx)
    with pytest.raises(ZooError, match="--nprobe 0: must be 1 or more"):
        loaded.set_search(nprobe=0)
    with pytest.raises(ZooError, match="this index takes no efSearch"):
        loaded.set_search(ef_search=8)
    # remove by id without rebuilding; HNSW, which cannot remove, is rebuilt from what stays
    for factory in ("IVF64,Flat", "HNSW8"):
        ix = ZooIndex.create(StubModel(16), factory)
        ix.add(x, records)
        ix.remove([0, 1, 2])
        sims, ids = ix.search_vectors(x[:3], 1)
        assert len(ix) == len(ix.store) == 1997 and not set(ids[:, 0].tolist()) & {0, 1, 2}
        ix.set_search(**({"nprobe": 64} if factory.startswith("IVF") else {"ef_search": 256}))
        sims, ids = ix.search_vectors(x[3:50], 1)  # every vector that stays still finds its own id
        assert ids[:, 0].tolist() == list(range(3, 50)) and np.allclose(sims[:, 0], 1, atol=1e-4)
        ix.add(x[:2], records[:2])  # new ids after the removal: 2000, 2001
        _, ids = ix.search_vectors(x[:2], 1)
        assert ids[:, 0].tolist() == [2000, 2001]
        ix.save(tmp_path / f"{factory}.index")
        back = zoo.load_index(tmp_path / f"{factory}.index")
        stored = {int(i): v for ids_, vs in stored_vectors(back.index) for i, v in zip(ids_, vs)}
        assert sorted(stored) == [*range(3, 2002)]  # every id once, by id after a reload too
        assert np.allclose(stored[2000], x[0] / np.linalg.norm(x[0]), atol=1e-5)
        assert np.allclose(back.index.reconstruct(7), x[7] / np.linalg.norm(x[7]), atol=1e-5)
        assert ix.item(3)["path"] == str(tmp_path / "3.png")
        with pytest.raises(ZooError, match="no item with id 0"):
            ix.item(0)


def test_index_reads_numpy_vectors_after_faiss_torch_utils_is_imported(shapes_dir, tmp_path):
    """pytorch-metric-learning's samplers import faiss.contrib.torch_utils, which makes FAISS return
    torch tensors for the rest of the process: an update that removes a file (vectors read back
    and re-added) and the vector readers must still work, in a process where that happened."""
    import subprocess
    import sys

    script = f"""
import sys
import numpy as np
import pytorch_metric_learning.samplers  # imports faiss.contrib.torch_utils: patches faiss for the process
import zoo
from zoo.cli.main import main
out = {str(tmp_path / "p.index")!r}
model = ["--model.backbone", "timm/test_resnet", "--model.pretrained", "false", "--model.data_config",
         "{{image_size: 32}}", "--num_workers", "0"]
from zoo.index.vectors import stored_vectors
for factory in ("Flat", "IVF2,Flat", "HNSW8"):
    assert main(["index", "--images", {str(shapes_dir)!r}, "--out", out, "--factory", factory, "--overwrite", *model]) == 0
    idx = zoo.load_index(out)
    ids, vectors, _ = idx.vectors()
    assert isinstance(vectors, np.ndarray) and vectors.shape == (12, idx.dim), type(vectors)
    assert isinstance(idx.vectors_of(ids[:3]), np.ndarray)
    assert all(isinstance(v, np.ndarray) for _, v in stored_vectors(idx.index)), factory
    gone = {str(shapes_dir / "circle" / "000.png")!r}
    kept = open(gone, "rb").read()
    import os; os.remove(gone)
    assert main(["index", "--update", "--out", out, "--num_workers", "0"]) == 0
    assert len(zoo.load_index(out)) == 11
    open(gone, "wb").write(kept)
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_flat_vectors_outlive_the_index_object(shapes_dir, tmp_path):
    """ZooIndex.vectors() on Flat storage is a view on FAISS's memory: it must keep the index
    alive when the caller keeps only the vectors."""
    import gc

    out = tmp_path / "v.index"
    zoo.build_index(shapes_dir, zoo.ZooModel("timm/test_resnet", pretrained=False, data_config={"image_size": 32}),
                    out=out, factory="Flat", num_workers=0)
    expected = np.array(zoo.load_index(out).vectors()[1])
    ids, vectors, lossy = zoo.load_index(out).vectors()  # the index object is dropped at once
    gc.collect()
    _ = [np.ones((256, 1024), np.float32) for _ in range(64)]  # reuse freed memory, if any was freed
    assert not lossy and np.array_equal(np.asarray(vectors[:5]), expected[:5])
    assert np.array_equal(np.asarray(vectors), expected)
