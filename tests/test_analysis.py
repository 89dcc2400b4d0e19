"""Bootstrap intervals, near-identical twins and worst queries, on constructed embeddings."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from zoo.evaluate.analysis import (QueryDiagnostics, bootstrap_ci, query_diagnostics, twin_note, twin_report, twin_warning,
                          worst_queries)
from zoo.metrics.retrieval import retrieval_metrics
from conftest import TINY

# leave-one-out over 4 items: q0, q1 (class 0) are near-identical (cosine 0.985); q2, q3 are
# class 1, but q3 lies nearer to q0 (0.8) and q1 (0.788) than to q2 (0.6)
C10, S10 = math.cos(math.radians(10)), math.sin(math.radians(10))
VECTORS = torch.tensor([[1.0, 0, 0], [C10, S10, 0], [0, 0, 1.0], [0.8, 0, 0.6]])
LABELS = torch.tensor([0, 0, 1, 1])


def test_bootstrap_interval_exact_on_small_cases():
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    assert bootstrap_ci([0, 1]) == (0.0, 1.0)  # a quarter of the resamples are all 0, a quarter all 1
    # [1, 1, 1, 0]: a resample mean <= 0.25 has probability 0.051, mean 1 has 0.316
    assert bootstrap_ci([1, 1, 1, 0], resamples=1000, seed=0) == (0.25, 1.0)
    assert bootstrap_ci([1, 1, 1, 0], seed=7) == bootstrap_ci([1, 1, 1, 0], seed=7)  # seeded
    assert bootstrap_ci([1.0, float("nan"), 0.0, 1, 1]) == bootstrap_ci([1, 0, 1, 1])  # NaN: no relevant item


def test_constructed_embeddings_metrics_ci_twins_and_worst():
    res = retrieval_metrics(VECTORS, LABELS)
    hit1, ap = res["per_query"]["hit@1"].numpy(), res["per_query"]["ap"].numpy()
    assert hit1.tolist() == [1, 1, 1, 0] and ap == pytest.approx([1, 1, 1, 1 / 3])
    assert bootstrap_ci(hit1) == (0.25, 1.0)
    assert bootstrap_ci(ap) == pytest.approx((0.5, 1.0))  # 3 or 4 draws of q3 (p = 0.051): mean 1 - 3/6
    diag = query_diagnostics(VECTORS, LABELS)
    assert diag.top1_relevant.tolist() == [True, True, True, False]
    assert diag.top1_similarity == pytest.approx([C10, C10, 0.6, 0.8], abs=1e-6)
    assert diag.best_relevant_similarity == pytest.approx([C10, C10, 0.6, 0.6], abs=1e-6)
    assert worst_queries(diag, 3) == [3]
    twins = twin_report(VECTORS.numpy(), diag, hit1, ap, threshold=0.9)
    assert twins["twin_groups"] == 1 and twins["twin_images"] == 2 and twins["twin_queries"] == 2
    assert twins["hit@1_no_twin"] == 0.5 and twins["map_no_twin"] == pytest.approx(2 / 3)  # q2 and q3 only
    assert twin_report(VECTORS.numpy(), diag, hit1, ap, threshold=0.99)["twin_queries"] == 0
    row = {"queries": 4, "protocol": "leave-one-out", "hit@1": 0.75, "map": 0.8333, **twins}
    assert "1 group(s) of near-identical images (cosine >= 0.9)" in twin_warning("m", row)
    assert "hit@1 0.750 overall, 0.500 on queries without a twin" in twin_warning("m", row) and twin_note("m", row) is None
    # when most queries have such a neighbour, the threshold singles out nothing: a note, no warning
    most = twin_report(VECTORS.numpy(), diag, hit1, ap, threshold=0.55)
    assert most["twin_queries"] == 4 and most["nn_cosine_median"] == pytest.approx((C10 + 0.8) / 2, abs=1e-6)
    row = {**row, **most}
    assert twin_warning("m", row) is None and "does not single out near-identical images" in twin_note("m", row)


def test_worst_queries_order_by_lowest_similarity_to_own_class():
    diag = QueryDiagnostics(np.array([0.9, 0.8, 0.7, 0.95]), np.array([False, True, False, False]),
                            np.array([0.5, 0.8, 0.2, 0.6]))
    assert worst_queries(diag, 2) == [2, 0] and worst_queries(diag, 10) == [2, 0, 3]


def test_benchmark_warns_of_twins_and_reports_hit1_without_them(shapes_dir, tmp_path, zoo_cli):
    from zoo.data.images import records_from
    from zoo.embed.runner import embed
    from zoo.model.module import ZooModel

    for cls, name in (("circle", "000.png"), ("square", "001.png")):  # byte-identical copies: cosine 1
        shutil.copy(shapes_dir / cls / name, shapes_dir / cls / f"copy_{name}")
    out = tmp_path / "b"
    code, stdout, err = zoo_cli("benchmark", "--images", shapes_dir, "--backbone", "test_resnet", "--out", out,
                                "--twin_threshold", "0.99999", "--samples", "2", *TINY)
    assert code == 0, err
    row = json.load(open(out / "results.json"))["results"][0]
    assert row["twin_groups"] == 2 and row["twin_queries"] == 4 and row["queries"] == 14
    warning = [l for l in err.splitlines() if l.startswith("zoo: warning:")]
    assert len(warning) == 1 and "2 group(s) of near-identical images" in warning[0] and "4 of 14 queries" in warning[0]
    report = (out / "report.md").read_text()
    assert "## Warnings" in report and "without a twin" in report
    # the figure without twins is the mean over the 10 other queries, from the same embeddings
    m = ZooModel("test_resnet", pretrained=False, data_config={"image_size": 64})
    e = embed(m, records_from([shapes_dir]), report=False)
    labels = torch.tensor([["circle", "square", "triangle"].index(r.label) for r in e.records])
    hit1 = retrieval_metrics(torch.from_numpy(e.vectors), labels)["per_query"]["hit@1"].numpy()
    copies = np.array(["copy_" in r.path or r.path.endswith(("circle/000.png", "square/001.png")) for r in e.records])
    assert hit1[copies].tolist() == [1, 1, 1, 1]
    assert row["hit@1_no_twin"] == pytest.approx(hit1[~copies].mean(), abs=1e-4)
    lo, hi = bootstrap_ci(hit1, seed=0)
    assert (row["hit@1_ci_low"], row["hit@1_ci_high"]) == pytest.approx((lo, hi), abs=1e-4)
    assert "hit@1 95% CI" in stdout and (out / "worst_test_resnet+frozen.png").is_file()
    assert len(row["worst_queries"]) == min(2, int((hit1 == 0).sum()))
