"""A threshold for the library in hand: per-pair false-match rate, its tail model, the threshold
the maths gives for two library sizes, the sample size advice, and the one-line refusals."""
import json
import math

import numpy as np
import pytest

from zoo.dedup.autothreshold import AutoThreshold
from zoo.errors import ZooError
from zoo.metrics.falsematch import (
    FalseMatchRate,
    choose_threshold,
    estimated_precision,
    fit_tail,
    library_pairs,
    photos_needed,
    required_rate,
    sample_negatives,
    search_floor,
    tail_survival,
)

GRID = 0.9 - 1e-4 * np.arange(5000)  # kept non-copy scores: count(>= GRID[m]) = m + 1


def grid_rate(n=100_000, positives=()):
    """Measured rate only (no tail model): FPR(GRID[m]) = (m + 1) / n."""
    return FalseMatchRate(top=GRID.copy(), n=n, tail=None, positives=np.asarray(positives, dtype=np.float64))


def test_false_match_rate_is_the_measured_share_of_non_copy_pairs():
    rate = grid_rate()
    assert rate(GRID[[0, 9, 249]]).tolist() == [1e-5, 10e-5, 250e-5]
    assert rate(0.95) == 0.0 and rate.lowest == GRID[-1]
    scores = np.r_[GRID, np.full(3, 0.97)]
    positive = np.r_[np.zeros(len(GRID), bool), np.ones(3, bool)]
    measured = FalseMatchRate.measure(scores, positive, keep=100, tail=50)
    assert measured.n == 5000 and len(measured.top) == 100 and measured.recall(0.96) == 1.0
    assert measured(GRID[29]) == pytest.approx(30 / 5000)  # 30 >= EMPIRICAL_MIN: measured, not modelled
    again = FalseMatchRate.from_json(json.loads(json.dumps(measured.to_json())))
    assert np.array_equal(again.top, np.round(measured.top, 6)) and again.tail == measured.tail
    with pytest.raises(ValueError, match="bad size-aware calibration"):
        FalseMatchRate.from_json({"negative_pairs": 10, "top_negatives": list(range(11))})  # more kept than measured
    with pytest.raises(ValueError, match="bad size-aware calibration"):
        FalseMatchRate.from_json({"negative_pairs": "many"})


def test_threshold_for_two_library_sizes_is_the_one_the_maths_gives():
    """2000 copy pairs at 0.95 and one found pair at each GRID[m], m < 300. At GRID[m]:
    O = 2001 + m, F = (m + 1) / 1e5 * N (N - 1) / 2; precision >= 0.95 <=> 0.05 O >= F.
    N = 300 (44,850 pairs): 0.05 (2001 + m) >= 0.4485 (m + 1) <=> m <= 99.6015 / 0.3985 = 249.9 -> m = 249.
    N = 1500 (1,124,250 pairs): 0.05 (2001 + m) >= 11.2425 (m + 1) <=> m <= 88.8075 / 11.1925 = 7.93 -> m = 7."""
    rate = grid_rate()
    observed = np.r_[np.full(2000, 0.95), GRID[:300]]
    small = choose_threshold(rate, 300, observed, 0.95)
    assert small["threshold"] == GRID[249] and small["pairs"] == 2250
    assert small["false_pairs"] == pytest.approx(250 * 0.4485)
    assert small["precision"] == pytest.approx((2250 - 112.125) / 2250)
    large = choose_threshold(rate, 1500, observed, 0.95)
    assert large["threshold"] == GRID[7] and large["pairs"] == 2008
    assert large["false_pairs"] == pytest.approx(8 * 11.2425) and large["precision"] >= 0.95
    # one step lower misses the target at each size
    p, _, _ = estimated_precision(rate, 300, observed, np.array([GRID[250]]))
    assert p[0] < 0.95
    p, _, _ = estimated_precision(rate, 1500, observed, np.array([GRID[8]]))
    assert p[0] < 0.95
    # another target moves the threshold the same way: 0.9 at N = 1500: 0.1 (2001 + m) >= 11.2425 (m + 1) -> m = 16
    assert choose_threshold(rate, 1500, observed, 0.9)["threshold"] == GRID[16]
    assert choose_threshold(rate, 1500, GRID[:300], 0.95) is None  # no copies: the pairs are what chance predicts


def test_search_floor_and_required_rate():
    rate = grid_rate(positives=np.linspace(0.99, 0.8, 100))  # recall(t) = share of positives >= t
    # N = 300: F(GRID[m]) = 0.4485 (m + 1) <= 100 <=> m <= 221.96: the floor is GRID[221]
    assert search_floor(rate, 300, 100.0) == GRID[221]
    assert search_floor(rate, 10**6, 1.0) == GRID[0]  # never above the highest measured non-copy score
    need = required_rate(rate, 300, copy_pairs=40, precision=0.95)
    t = need["threshold"]
    tp, fp = rate.recall(t) * 40, float(rate(t)) * library_pairs(300)
    assert tp / (tp + fp) >= 0.95 and need["false_match_rate"] == float(rate(t))
    lower = GRID[GRID < t][0]  # the next kept score below fails
    tp2, fp2 = rate.recall(lower) * 40, float(rate(lower)) * library_pairs(300)
    assert tp2 / (tp2 + fp2) < 0.95


def test_tail_fit_recovers_a_known_generalised_pareto():
    from scipy import stats

    rng = np.random.default_rng(0)
    xi, sigma, u = -0.2, 0.02, 0.6
    # 100,000 non-copy scores whose top 2,000 exceed u by GPD(xi, sigma) excesses; the rest below u
    excess = stats.genpareto.rvs(xi, scale=sigma, size=2000, random_state=rng)
    below = u - rng.uniform(0.0, 0.5, 98_000)
    scores = np.r_[u + excess, below, u]
    top = np.sort(scores)[::-1][:5000]
    fit = fit_tail(top, 2000)
    assert fit["model"] == "generalised Pareto" and fit["u"] == pytest.approx(u)
    assert fit["xi"] == pytest.approx(xi, abs=0.06) and fit["sigma"] == pytest.approx(sigma, rel=0.1)
    assert fit["ks_pvalue"] > 0.05
    rate = FalseMatchRate(top=top, n=len(scores), tail=fit)
    t = u + stats.genpareto.ppf(1 - 1e-3, xi, scale=sigma)  # true FPR(t) = 2000 / 100,001 * 1e-3
    assert float(rate(t)) == pytest.approx(2000 / len(scores) * 1e-3, rel=0.35)
    assert rate.method(t).startswith("tail model (generalised Pareto")
    assert float(tail_survival(fit, u + 10)) == 0.0  # xi < 0: nothing beyond the end point
    # a small tail: exponential, sigma = mean excess
    ex = fit_tail(np.r_[u + np.arange(1, 21) * 0.01, u, u - 0.1], 20)
    assert ex["model"] == "exponential" and ex["sigma"] == pytest.approx(0.105) and ex["xi"] == 0.0
    with pytest.raises(ValueError, match="a tail fit needs"):
        fit_tail(np.arange(5.0), 3)


def test_photos_needed_to_measure_a_rate():
    assert sample_negatives(3, 1) == 15 - 3  # 6 items, 15 pairs, 3 of them copies
    n = photos_needed(1e-5, copies=2)  # 25 non-copy pairs above a rate of 1e-5: 2.5M non-copy pairs
    assert sample_negatives(n, 2) >= 2_500_000 > sample_negatives(n - 1, 2)
    assert photos_needed(0.0, 1) == 0


def test_auto_threshold_reports_and_refuses_in_one_line(capsys):
    auto = AutoThreshold(grid_rate(positives=[0.95] * 10), 0.95, "cal.json [m]", copies=2)
    observed = np.r_[np.full(2000, 0.95), GRID[:300]]
    t, report = auto.choose(300, observed, floor=GRID[299])
    assert t == GRID[249] and report["library_pairs"] == 44850 and report["expected_recall"] == 1.0
    assert report["expected_false_pairs"] == pytest.approx(112.125) and report["pairs_found"] == 2250
    err = capsys.readouterr().err
    assert "--threshold auto: 0.8751 for 300 images (44850 pairs): expected precision 0.950" in err
    assert "112.1 expected false pair(s) among the 2250 found" in err and "measured: 250 of 100000" in err
    # no copies in a library of 1500: the pairs found are chance; none is reported, with a note
    t, report = auto.choose(1500, GRID[:300], floor=GRID[299])
    assert t > GRID[0] and report["pairs_found"] == 0 and report["expected_precision"] is None
    assert "no near duplicates at precision 0.95 among 1500 images" in capsys.readouterr().err
    # a library whose threshold needs a rate beyond what the sample measured: recalibrate
    with pytest.raises(ZooError, match=r"need a false-match rate of about 5.00e-10 .*zoo calibrate --sample 1054\d\d --copies 2") as e:
        auto.choose(100_000, np.full(50, 0.95), floor=GRID[0])
    assert "\n" not in str(e.value)
    assert math.isclose(grid_rate().resolution, 1e-7)


def test_calibration_entries_old_new_and_damaged(tmp_path, monkeypatch, capsys):
    from zoo.evaluate import calibration

    monkeypatch.setattr(calibration, "_identity", lambda model=None, index=None: ("arch", "w1"))
    path = tmp_path / "cal.json"
    rate = FalseMatchRate.measure(np.r_[GRID[:1000], [0.97] * 5], np.r_[np.zeros(1000, bool), np.ones(5, bool)])
    entry = {"threshold": 0.8, "precision_target": 0.95, "copies": 2, "size_aware": rate.to_json()}
    calibration.save_entry(path, "arch | w1", entry, overwrite=False)
    assert json.loads(path.read_text())["version"] == 2
    fixed, auto = calibration.auto_threshold(path)
    assert fixed == 0.8 and auto.precision == 0.95 and auto.copies == 2 and auto.rate.n == 1000
    assert calibration.auto_threshold(path, precision=0.99)[1].precision == 0.99
    with pytest.raises(ZooError, match=r"--precision 1.5: a target precision in \(0, 1\)"):
        calibration.auto_threshold(path, precision=1.5)
    # version 1: one threshold, with a note; no other precision can be asked of it
    calibration.save_entry(path, "arch | w1", {"threshold": 0.7, "precision_target": 0.95, "images": 200}, overwrite=True)
    fixed, auto = calibration.auto_threshold(path)
    assert (fixed, auto) == (0.7, None) and "is version 1 (one threshold, measured on 200 photos)" in capsys.readouterr().err
    with pytest.raises(ZooError, match="holds one threshold for precision 0.95"):
        calibration.auto_threshold(path, precision=0.9)
    # a damaged size-aware entry (a file built to break it): one line, no traceback
    for bad in ({"negative_pairs": 3, "top_negatives": [0.9, 0.8, 0.7, 0.6]}, {"negative_pairs": 10, "top_negatives": ["x"]},
                {"negative_pairs": 10, "top_negatives": [0.5], "tail": {"model": "e", "u": float("nan"), "k": 1, "xi": 0,
                                                                          "sigma": 1, "ks_pvalue": 1}}, "not an object"):
        calibration.save_entry(path, "arch | w1", {"threshold": 0.7, "precision_target": 0.95, "size_aware": bad},
                               overwrite=True)
        with pytest.raises(ZooError, match=r"the entry of arch \| w1 is damaged") as e:
            calibration.auto_threshold(path)
        assert "\n" not in str(e.value)


def test_near_groups_apply_the_chosen_threshold():
    from zoo.dedup.duplicates import near_groups

    angle = lambda deg: [math.cos(math.radians(deg)), math.sin(math.radians(deg))]  # noqa: E731
    vectors = np.array([angle(0), angle(5), angle(30), angle(90), angle(120)], np.float32)
    seen = []

    def choose(sims):
        seen.append(sorted(np.round(sims.astype(np.float64), 4).tolist()))
        return math.cos(math.radians(10)), {"chosen": True}

    near, rows, _, info = near_groups(vectors, list("abcde"), threshold=0.8, search="exact", choose=choose)
    # the search at the floor 0.8 finds 0-5, 0-30, 5-30, 90-120 (cos 30 = 0.866); the choice keeps 0-5 only
    assert seen == [sorted(np.round([math.cos(math.radians(d)) for d in (5, 30, 25, 30)], 4).tolist())]
    assert [(a, b) for a, b, _ in rows] == [("a", "b")] and [g["paths"] for g in near] == [["a", "b"]]
    assert info["threshold"] == math.cos(math.radians(10)) and info["auto_threshold"] == {"chosen": True}
