"""Property tests of the readers of hostile index files: whatever a field of meta.json or a shard
holds, zoo gives a working index (or embeddings) or a ZooError, never another exception.

One tiny index is built once; the properties rewrite only its meta.json, or write shards by hand
(no model runs inside the loops).
"""
import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.extra.numpy import array_shapes, arrays  # noqa: E402

import zoo  # noqa: E402
from shapes import make_shapes  # noqa: E402
from test_hostile import fast_model, version_dir  # noqa: E402
from zoo.errors import ZooError  # noqa: E402
from zoo.index.shards import ShardJob  # noqa: E402
from zoo.model.inference import PRECISIONS  # noqa: E402

# derandomized: CI runs the same examples every time (run with ZOO_FUZZ_EXAMPLES=N to search further)
FAST = settings(max_examples=int(os.environ.get("ZOO_FUZZ_EXAMPLES", 50)), deadline=None, database=None,
                derandomize="ZOO_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=8)
DELETE = object()
FIELDS = [("root",), ("count",), ("dim",), ("factory",), ("precision",), ("search",), ("search", "nprobe"), ("search", "efSearch"),
          ("model",), ("model", "architecture"), ("model", "dim"), ("model", "weights"), ("model", "own_weights"),
          ("model", "hparams"), ("model", "hparams", "backbone"), ("model", "hparams", "head"),
          ("model", "hparams", "seed"), ("model", "hparams", "pretrained"), ("model", "hparams", "head_kwargs"),
          ("model", "hparams", "data_config"), ("model", "hparams", "model_kwargs"), ("model", "recipe"),
          ("model", "recipe", "model_kwargs"), ("model", "recipe", "data_config"),
          ("model", "recipe", "data_config", "image_size"), ("model", "recipe", "model_kwargs", "global_pool"),
          ("model", "recipe", "model_kwargs", "gem_p")]


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    images = make_shapes(root / "shapes", per_class=2, seed=0, shapes=("circle", "square"))
    out = root / "tiny.index"
    zoo.build_index(images, fast_model(), out=out)
    meta_path = version_dir(out) / "meta.json"
    return out, meta_path, json.loads(meta_path.read_text())


def use_index(path) -> None:
    """What search and serve do with an index, short of embedding a query."""
    index = zoo.load_index(path)
    index.describe()
    assert index.precision in PRECISIONS
    index.model()
    sims, ids = index.search_vectors(np.ones((1, index.dim), np.float32), k=3)
    assert len(index.hits(sims[0], ids[0])) == 3


@FAST
@given(field=st.sampled_from(FIELDS), value=JSON | st.just(DELETE))
def test_any_value_in_meta_json_gives_an_index_or_a_zoo_error(tiny_index, field, value):
    path, meta_path, good = tiny_index
    meta = copy.deepcopy(good)
    target = meta
    for key in field[:-1]:
        target = target[key]
    if value is DELETE:
        target.pop(field[-1], None)
    else:
        target[field[-1]] = value
    meta_path.write_text(json.dumps(meta))
    try:
        use_index(path)
    except ZooError as e:
        assert "\n" not in str(e)
    finally:
        meta_path.write_text(json.dumps(good))


def test_the_fuzzed_index_itself_is_usable(tiny_index):
    use_index(tiny_index[0])


DTYPES = st.sampled_from([np.int64, np.int32, np.uint8, np.float16, np.float32, np.float64, np.bool_, np.complex64])


def npy(dtype_strategy, max_dims=2):
    return arrays(dtype_strategy, array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=5))


@FAST
@given(positions=npy(DTYPES, 2) | st.binary(max_size=40), vectors=npy(DTYPES, 3) | st.binary(max_size=40),
       skipped=JSON.map(json.dumps) | st.binary(max_size=20).map(lambda b: b.decode("latin-1")))
def test_any_shard_gives_finite_embeddings_or_a_zoo_error(positions, vectors, skipped):
    with tempfile.TemporaryDirectory() as tmp:
        job = ShardJob(Path(tmp), "0" * 24, n_records=6, dim=4)
        job.folder.mkdir()
        stem = job.folder / "r000-000001"
        for name, data in (("vectors.npy", vectors), ("index.npy", positions)):
            if isinstance(data, bytes):
                (job.folder / f"r000-000001.{name}").write_bytes(data)
            else:
                np.save(f"{stem}.{name}", data)
        Path(f"{stem}.skipped.json").write_text(skipped)
        try:
            remaining = job.remaining()
            assert set(remaining) <= set(range(6))
            n = job.count()
            rows = list(job.ordered(chunk=2))
            assert sum(len(p) for p, _ in rows) == n
            for p, v in rows:
                assert v.shape == (len(p), 4) and v.dtype == np.float32 and np.isfinite(v).all()
                assert ((0 <= p) & (p < 6)).all()
        except ZooError as e:
            assert "\n" not in str(e) and str(job.folder) in str(e)
