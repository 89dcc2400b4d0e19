import csv
import json

import pytest
import torch

from zoo.evaluate.benchmark import make_protocol
from zoo.data.images import records_from
from zoo.embed.runner import embed
from zoo.metrics.retrieval import retrieval_metrics
from zoo.model.module import ZooModel
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


def test_wandb_offline_group_one_run_per_architecture_and_a_comparison_run(shapes_dir, tmp_path, zoo_cli, monkeypatch):
    from wandb_offline import read_run

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # offline by default
    out = tmp_path / "wb"
    code, _, err = zoo_cli("benchmark", "--images", shapes_dir, "--backbone", "test_resnet", "timm/resnet18",
                           "--out", out, "--wandb", "--samples", "1", *TINY)
    assert code == 0, err
    runs = [read_run(d) for d in sorted((out / "wandb").glob("offline-run-*"))]
    assert len(runs) == 3
    archs = {r["name"]: r for r in runs if r["job_type"] == "architecture"}
    comparison = [r for r in runs if r["job_type"] == "comparison"]
    assert set(archs) == {"test_resnet+frozen", "timm/resnet18+frozen"} and len(comparison) == 1
    assert len({r["group"] for r in runs}) == 1 and runs[0]["group"].startswith("benchmark-")
    rows = {r["architecture"]: r for r in json.load(open(out / "results.json"))["results"]}
    for name, run in archs.items():
        row, cfg, summary = rows[name], run["config"], run["summary"]
        assert cfg["backbone"] == name.split("+")[0] and cfg["head"] == "frozen" and cfg["pretrained"] is False
        assert cfg["weights_id"] == "random init (seed 0)" and cfg["input_size"] == [3, 64, 64]
        assert cfg["dim"] == row["dim"] and cfg["params_m"] == row["params_m"] and cfg["checkpoint"] is None
        for key in ("hit@1", "hit@10", "p@10", "map", "map@r", "img_per_s", "search_ms_median", "peak_rss_mb",
                    "hit@1_ci_low", "map_ci_high", "hit@1_no_twin", "twin_groups"):
            if row[key] != row[key]:  # NaN (e.g. no query without a twin) is logged as null
                assert summary[key] is None, (name, key)
            else:
                assert summary[key] == pytest.approx(row[key]), (name, key)
        assert not any("/" in k or "." in k for k in summary if not k.startswith("_"))  # flat keys
    comp = comparison[0]
    logged = {k.split("/")[0] for h in comp["history"] for k in h}  # a media value nests its fields
    for key in ("comparison_table", "comparison_chart", "per_class", "class_confusion", "grid_timm_resnet18+frozen",
                "worst_test_resnet+frozen"):
        assert key in logged, key
    assert comp["summary"]["timm_resnet18+frozen__hit@1"] == pytest.approx(rows["timm/resnet18+frozen"]["hit@1"])
    results_artifact = [a for a in comp["artifacts"] if a["type"] == "benchmark"]  # tables are artifacts too
    assert len(results_artifact) == 1 and {"results.json", "report.md"} <= set(results_artifact[0]["files"])
