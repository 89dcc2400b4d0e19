import pytest
import torch
import torchmetrics.functional.retrieval as R

from zoo.metrics.retrieval import RetrievalMetrics, per_class, ranking_metrics, retrieval_metrics


def test_ranking_metrics_hand_computed():
    # one query, ranked relevance 1 0 1 0 0, 2 relevant items in the gallery
    rel = torch.tensor([[True, False, True, False, False]])
    m = {k: float(v) for k, v in ranking_metrics(rel, torch.tensor([2]), ks=(1, 2, 5)).items()}
    assert m["hit@1"] == 1 and m["hit@2"] == 1
    assert m["p@1"] == 1 and m["p@2"] == 0.5 and m["p@5"] == pytest.approx(2 / 5)
    assert m["ap"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["r_precision"] == pytest.approx(0.5)
    assert m["map@r"] == pytest.approx((1 / 1) / 2)
    # a first miss: relevance 0 1 1, R = 3 (one relevant item never retrieved in this list)
    m = {k: float(v) for k, v in ranking_metrics(torch.tensor([[False, True, True]]), torch.tensor([3]), ks=(1,)).items()}
    assert m["hit@1"] == 0 and m["ap"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert m["r_precision"] == pytest.approx(2 / 3) and m["map@r"] == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_ties_keep_gallery_order_and_loo_excludes_self():
    # 4 items on two directions; items 1 and 2 tie exactly for query 0
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    res = retrieval_metrics(emb, labels, ks=(1, 2))
    pq = res["per_query"]
    # query 0 ranks (1, 2) tied -> gallery order 1 (wrong) then 2 (right), then 3
    assert pq["hit@1"][0] == 0 and pq["hit@2"][0] == 1 and pq["ap"][0] == pytest.approx(1 / 2)
    # query 1: item 2 is identical (sim 1, wrong class), then 3 (0.8, right)
    assert pq["ap"][1] == pytest.approx(1 / 2)
    assert res["summary"]["hit@1"] == pytest.approx(float(pq["hit@1"].mean()))


def test_single_image_class_is_left_out_and_counted():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])  # class 1 has one image: no relevant item in leave-one-out
    res = retrieval_metrics(emb, labels, ks=(1,))
    assert res["queries_without_relevant"] == 1
    assert torch.isnan(res["per_query"]["ap"][2])
    assert res["summary"]["map"] == 1.0 and res["summary"]["hit@1"] == 1.0


def test_query_gallery_and_confusion():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2]])
    res = retrieval_metrics(q, torch.tensor([0, 1]), g, torch.tensor([0, 1, 1]), ks=(1,), confusion_k=2)
    # query 0 (class 0): ranking g0 (0), g2 (1), g1 (1); query 1 (class 1): g1 (1), g2 (1), g0 (0)
    assert res["confusion"].tolist() == [[0.5, 0.5], [0.0, 1.0]]
    assert res["per_query"]["ap"].tolist() == [1.0, 1.0]
    assert per_class(res["per_query"], torch.tensor([0, 1]), 2)[1]["queries"] == 1


def test_agrees_with_torchmetrics_on_tie_free_data():
    torch.manual_seed(0)
    q, g = torch.randn(20, 8), torch.randn(50, 8)
    ql, gl = torch.randint(0, 3, (20,)), torch.randint(0, 3, (50,))
    res = retrieval_metrics(q, ql, g, gl, ks=(1, 5, 10))["per_query"]
    # shifted to be positive: torchmetrics counts a score <= 0 as "not retrieved"
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T + 2
    for i in range(20):
        target = gl == ql[i]
        assert float(R.retrieval_average_precision(sim[i], target)) == pytest.approx(float(res["ap"][i]), abs=1e-5)
        assert float(R.retrieval_precision(sim[i], target, top_k=10)) == pytest.approx(float(res["p@10"][i]), abs=1e-6)
        assert float(R.retrieval_hit_rate(sim[i], target, top_k=5)) == float(res["hit@5"][i])
        assert float(R.retrieval_r_precision(sim[i], target)) == pytest.approx(float(res["r_precision"][i]), abs=1e-6)


def test_metric_class_accumulates_batches():
    torch.manual_seed(1)
    emb, lab = torch.randn(12, 4), torch.arange(12) % 3
    metric = RetrievalMetrics()
    metric.update(emb[:5], lab[:5])
    metric.update(emb[5:], lab[5:])
    assert metric.compute() == retrieval_metrics(emb, lab)["summary"]


def test_map_at_r_and_hit1_agree_with_pytorch_metric_learning():
    """The benchmark's MAP@R and hit@1 (leave-one-out) are pytorch-metric-learning's
    AccuracyCalculator figures on the same embeddings."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat_interleave(8)
    emb = torch.nn.functional.normalize(torch.randn(5, 16, generator=g)[labels] + torch.randn(40, 16, generator=g), dim=1)
    ours = retrieval_metrics(emb, labels)["summary"]
    theirs = AccuracyCalculator(include=("mean_average_precision_at_r", "precision_at_1"), k="max_bin_count",
                                device=torch.device("cpu")).get_accuracy(emb, labels)
    assert float(ours["map@r"]) == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-5)
    assert float(ours["hit@1"]) == pytest.approx(theirs["precision_at_1"], abs=1e-5)
