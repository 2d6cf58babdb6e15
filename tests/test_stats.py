import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from harness import stats
from harness.data import Example
from harness.predictions import prediction_rows


def _frame(method, correct_by_dataset, *, seed=0, phase=None, study="s", trial_id=None):
    """Real prediction rows for ``method``: per dataset a bool vector saying which examples it gets right."""
    rows = []
    for dataset, correct in correct_by_dataset.items():
        examples, loglikes = [], []
        for i, ok in enumerate(correct):
            gold = i % 2
            examples.append(Example(id=f"{dataset}-{i}", dataset=dataset, prompt="q", choices=(" a", " b"),
                                    options=(" a", " b"), gold=gold, text="q"))
            pred = gold if ok else 1 - gold
            loglikes.append([0.0, -1.0] if pred == 0 else [-1.0, 0.0])
        rows += prediction_rows(examples, loglikes, study=study, trial_id=trial_id or f"{method}_{seed}",
                                phase=phase or stats.published_phase(method), method=method, seed=seed,
                                role="report", split="validation")
    return pd.DataFrame(rows)


def _seeds(method, correct_by_seed, **kw):
    return pd.concat([_frame(method, c, seed=s, **kw) for s, c in correct_by_seed.items()], ignore_index=True)


def test_bootstrap_agrees_with_the_normal_approximation():
    rng = np.random.default_rng(1)
    n = 2000
    a = (rng.random(n) < 0.62).astype(float)
    b = np.where(rng.random(n) < 0.7, a, (rng.random(n) < 0.55)).astype(float)  # correlated, as paired methods are
    reps = stats.bootstrap_replicates([a[:, None]], [b[:, None]], paired_seeds=False, n_resamples=20_000,
                                      rng=np.random.default_rng(0))
    low, high = stats.percentile_interval(reps[:, 0])
    d = a - b
    half = 1.959964 * d.std(ddof=1) / np.sqrt(n)
    assert low == pytest.approx(d.mean() - half, abs=0.002)
    assert high == pytest.approx(d.mean() + half, abs=0.002)
    # one method alone: the binomial normal interval
    reps = stats.bootstrap_replicates([a[:, None]], None, paired_seeds=False, n_resamples=20_000,
                                      rng=np.random.default_rng(0))
    low, high = stats.percentile_interval(reps[:, 0])
    half = 1.959964 * np.sqrt(a.mean() * (1 - a.mean()) / n)
    assert (low, high) == pytest.approx((a.mean() - half, a.mean() + half), abs=0.002)


def test_bootstrap_agrees_with_scipy_paired_percentile_bootstrap():
    rng = np.random.default_rng(2)
    a = (rng.random(500) < 0.7).astype(float)
    b = (rng.random(500) < 0.6).astype(float)
    ours = stats.percentile_interval(stats.bootstrap_replicates(
        [a[:, None]], [b[:, None]], paired_seeds=False, n_resamples=20_000, rng=np.random.default_rng(0))[:, 0])
    ref = scipy_stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), paired=True,
                                method="percentile", n_resamples=20_000, rng=np.random.default_rng(1))
    assert ours[0] == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert ours[1] == pytest.approx(ref.confidence_interval.high, abs=0.004)


def test_seed_resampling_widens_the_interval_when_seeds_disagree():
    rng = np.random.default_rng(3)
    n = 400
    same = np.repeat((rng.random(n) < 0.6)[:, None], 3, axis=1).astype(float)  # 3 seeds, identical
    differ = (rng.random((n, 3)) < np.array([0.45, 0.6, 0.75])).astype(float)  # 3 seeds, far apart
    width = []
    for mat in (same, differ):
        reps = stats.bootstrap_replicates([mat], None, paired_seeds=False, n_resamples=5000,
                                          rng=np.random.default_rng(0))
        low, high = stats.percentile_interval(reps[:, 0])
        width.append(high - low)
    assert width[1] > 2 * width[0]


def test_sign_flip_matches_scipy_permutation_test():
    rng = np.random.default_rng(4)
    values = rng.choice([-1, -0.5, 0, 0.5, 1, 1.0 / 3], size=60) / 7 + 0.01 * rng.choice([0, 1], size=60)
    ours = stats.sign_flip_pvalue(values, n_resamples=40_000, rng=np.random.default_rng(0))
    ref = scipy_stats.permutation_test((values,), lambda x, axis: np.sum(x, axis=axis), vectorized=True,
                                       permutation_type="samples", n_resamples=40_000,
                                       rng=np.random.default_rng(1)).pvalue
    assert 0.01 < ref < 0.99  # a p-value in the interesting range
    assert ours == pytest.approx(ref, abs=0.015)
    assert stats.sign_flip_pvalue(np.zeros(10), n_resamples=100, rng=rng) == 1.0


def test_mcnemar_is_the_exact_binomial_test_of_discordant_pairs():
    a = np.array([1] * 10 + [1] * 5 + [0] * 5, bool)
    b = np.array([0] * 10 + [1] * 5 + [0] * 5, bool)  # 10 discordant pairs, all A right
    assert stats.mcnemar_pvalue(a, b) == pytest.approx(2 * 0.5 ** 10)
    assert stats.mcnemar_pvalue(a, a) == 1.0


def test_holm_adjustment():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone: 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.02]) == pytest.approx([0.02])


def test_a_method_compared_with_itself():
    rng = np.random.default_rng(5)
    preds = _seeds("lora", {s: {"boolq": rng.random(200) < 0.6, "rte": rng.random(150) < 0.5} for s in (0, 1, 2)})
    c = stats.compare(preds, "lora", "lora", study="s")
    assert c.n_seeds == 3
    for d in c.datasets:
        assert (d.delta, d.ci_low, d.ci_high, d.p, d.p_holm) == (0.0, 0.0, 0.0, 1.0, 1.0)
    assert (c.mean.delta, c.mean.p) == (0.0, 1.0)
    assert c.verdict().startswith("verdict: no significant difference between lora and lora")


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_a_planted_ten_point_difference_over_1000_examples_is_found(n_seeds):
    rng = np.random.default_rng(6)
    n = 1000
    base = rng.random(n) < 0.5
    correct_a, correct_b = {}, {}
    for s in range(n_seeds):
        # B is right on half the examples; A is also right on a tenth of the rest: a 10-point gain
        flip = rng.random(n) < 0.2
        correct_b[s] = {"boolq": base.copy()}
        correct_a[s] = {"boolq": base | (flip & ~base)}
    preds = pd.concat([_seeds("mor1e", correct_a), _seeds("lora", correct_b)], ignore_index=True)
    c = stats.compare(preds, "mor1e", "lora", study="s")
    d = c.datasets[0]
    assert d.n == n and d.delta == pytest.approx(0.1, abs=0.02)
    assert d.p < 0.01 and d.p_holm < 0.01 and c.mean.p < 0.01
    assert 0 < d.ci_low < d.delta < d.ci_high
    assert c.test.startswith("exact McNemar" if n_seeds == 1 else "sign-flip")
    assert c.verdict().startswith("verdict: mor1e beats lora")
    # the reverse comparison is the mirror image
    r = stats.compare(preds, "lora", "mor1e", study="s")
    assert r.mean.delta == pytest.approx(-c.mean.delta) and r.verdict().startswith("verdict: mor1e beats lora")


def test_json_shape_means_and_seed_counts():
    rng = np.random.default_rng(7)
    preds = pd.concat([
        _seeds("mor1e", {s: {"copa": rng.random(100) < 0.7, "rte": rng.random(40) < 0.6} for s in (10, 11)}),
        _frame("zeroshot", {"copa": rng.random(100) < 0.5, "rte": rng.random(40) < 0.5, "boolq": rng.random(9) < .5}),
        # search-phase predictions never enter a comparison
        _frame("mor1e", {"copa": np.ones(100, bool)}, seed=0, phase="search", trial_id="mor1e_search_0"),
    ], ignore_index=True)
    c = stats.compare(preds, "mor1e", "zeroshot", study="s")
    out = json.loads(c.dumps())
    assert set(out) == {"a", "b", "study", "n_seeds", "datasets", "mean"}
    assert (out["a"], out["b"], out["study"]) == ("mor1e", "zeroshot", "s")
    assert out["n_seeds"] == 1  # the smaller side: zero-shot's one reference run
    assert c.seeds_a == (10, 11) and c.seeds_b == (0,)
    assert [d["dataset"] for d in out["datasets"]] == ["rte", "copa"]  # the paper's order
    assert c.unpaired_datasets == ("boolq",)
    for d in out["datasets"]:
        assert set(d) == {"dataset", "n", "a", "b", "delta", "ci_low", "ci_high", "p", "p_holm"}
        assert 0 <= d["a"] <= 1 and 0 <= d["b"] <= 1
        assert d["delta"] == pytest.approx(d["a"] - d["b"])
    assert set(out["mean"]) == {"a", "b", "delta", "ci_low", "ci_high", "p"}
    assert out["mean"]["a"] == pytest.approx(np.mean([d["a"] for d in out["datasets"]]))  # unweighted
    copa = preds[(preds.method == "mor1e") & (preds.phase == "final") & (preds.dataset == "copa")]
    assert out["datasets"][1]["a"] == pytest.approx((copa.pred == copa.gold).mean())
    # reproducible: the same input gives the same output
    assert stats.compare(preds, "mor1e", "zeroshot", study="s").dumps() == c.dumps()


def test_errors_name_the_problem():
    preds = pd.concat([_frame("lora", {"boolq": np.ones(5, bool)}),
                       _frame("dense", {"rte": np.ones(5, bool)}),
                       _frame("mor1e", {"boolq": np.ones(5, bool)}, phase="search")], ignore_index=True)
    with pytest.raises(stats.StatsError, match="'mor1e' has no final report predictions.*dense, lora"):
        stats.compare(preds, "mor1e", "lora", study="s")
    with pytest.raises(stats.StatsError, match="no report examples in common"):
        stats.compare(preds, "lora", "dense", study="s")


def test_method_interval_covers_its_mean():
    rng = np.random.default_rng(8)
    preds = _seeds("lora", {s: {"boolq": rng.random(300) < 0.6, "wic": rng.random(200) < 0.55} for s in (0, 1)})
    mi = stats.method_interval(preds, "lora")
    assert mi.seeds == (0, 1) and mi.datasets.dataset.tolist() == ["boolq", "wic"]
    assert (mi.datasets.ci_low < mi.datasets.accuracy).all() and (mi.datasets.accuracy < mi.datasets.ci_high).all()
    assert mi.mean == pytest.approx(mi.datasets.accuracy.mean())
    assert mi.mean_ci_low < mi.mean < mi.mean_ci_high
    assert stats.method_interval(preds, "dense") is None


def test_verdict_needs_both_a_small_p_and_an_interval_without_zero():
    def verdict(p, low, high):
        mean = stats.MeanResult(a=0.6, b=0.55, delta=0.05, ci_low=low, ci_high=high, p=p)
        return stats.Comparison("mor1e", "lora", "s", 3, [], mean).verdict()

    assert verdict(0.01, 0.01, 0.09).startswith("verdict: mor1e beats lora")
    assert verdict(0.01, -0.01, 0.09).startswith("verdict: mor1e is ahead of lora on these examples, but")
    assert verdict(0.20, 0.01, 0.09).startswith("verdict: no significant difference")
