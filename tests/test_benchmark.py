import csv
import json

import pytest
import torch

from zoo.benchmark import make_protocol
from zoo.data import records_from
from zoo.embed import embed
from zoo.metrics import retrieval_metrics
from zoo.model import ZooModel
from conftest import TINY


def test_benchmark_two_architectures_outputs_and_exact_numbers(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "bench"
    code, stdout, err = zoo_cli("benchmark", "--images", shapes_dir, "--backbone", "resnet50", "timm/resnet18",
                                "--out", out, "--samples", "2", "-k", "3", *TINY)
    assert code == 0, err
    assert "resnet50+frozen" in stdout and "timm/resnet18+frozen" in stdout and "hit@1" in stdout
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["architecture"] for r in rows] == ["resnet50+frozen", "timm/resnet18+frozen"]
    assert all(r["weights"] == "random init (seed 0)" and r["protocol"] == "leave-one-out" for r in rows)
    res = json.load(open(out / "results.json"))
    assert res["meta"]["protocol"] == "leave-one-out" and res["meta"]["classes"] == ["circle", "square", "triangle"]
    first = res["results"][0]
    assert set(first["per_class"]) == {"circle", "square", "triangle"}
    assert len(first["confusion"]["matrix"]) == 3 and first["dim"] == 2048 and first["img_per_s"] > 0
    assert first["search_ms_p95"] >= first["search_ms_median"] > 0
    # the row's numbers are the metric code's numbers on the same embeddings
    m = ZooModel("resnet50", pretrained=False, data_config={"image_size": 64})
    recs = records_from([shapes_dir])
    e = embed(m, recs, report=False)
    labels = torch.tensor([["circle", "square", "triangle"].index(r.label) for r in e.records])
    expected = retrieval_metrics(torch.from_numpy(e.vectors), labels)["summary"]
    for key in ("hit@1", "hit@10", "p@10", "map", "map@r"):
        assert float(rows[0][key]) == pytest.approx(expected[key], abs=1e-4), key
    for name in ("report.md", "comparison.png", "grid_resnet50_frozen.png".replace("_frozen", "+frozen")):
        assert (out / name).is_file(), name
    assert "random init (seed 0)" in (out / "report.md").read_text()
    code, _, err = zoo_cli("benchmark", "--images", shapes_dir, "--out", out, *TINY)
    assert code == 2 and "already holds benchmark results" in err


def test_protocols(shapes_dir, tmp_path):
    split = make_protocol(shapes_dir, protocol="split", query_fraction=0.25, seed=3)
    assert split.name == "split" and len(split.queries) == 3 and len(split.gallery) == 9
    again = make_protocol(shapes_dir, protocol="split", query_fraction=0.25, seed=3)
    assert [r.path for r in again.queries] == [r.path for r in split.queries]
    from shapes import make_shapes

    queries = make_shapes(tmp_path / "queries", per_class=2, seed=5, shapes=("circle", "square"))
    qg = make_protocol(query=queries, gallery=shapes_dir)
    assert qg.name == "query-gallery" and len(qg.queries) == 4 and len(qg.gallery) == 12
    demo = make_protocol()
    assert demo.classes == [f"digit_{d}" for d in range(10)] and len(demo.queries) == 300


def test_wandb_offline_run_is_logged_and_readable(shapes_dir, tmp_path, zoo_cli, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wb"
    code, _, err = zoo_cli("benchmark", "--images", shapes_dir, "--out", out, "--wandb", "--samples", "1", *TINY)
    assert code == 0, err
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    row = json.load(open(out / "results.json"))["results"][0]
    tables = list((runs[0] / "files" / "media" / "table").glob("benchmark_*.table.json"))
    assert len(tables) == 1 and (runs[0] / f"run-{runs[0].name.rsplit('-', 1)[1]}.wandb").stat().st_size > 0
    table = json.load(open(tables[0]))
    logged = dict(zip(table["columns"], table["data"][0]))
    assert logged["architecture"] == "resnet50+frozen" and logged["weights"] == "random init (seed 0)"
    for key in ("hit@1", "hit@10", "p@10", "map", "img_per_s"):
        assert logged[key] == pytest.approx(row[key]), key
    assert list((runs[0] / "files" / "media" / "images").glob("comparison_*.png"))
