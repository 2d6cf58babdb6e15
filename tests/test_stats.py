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


def _reference_variance(a, b):
    """Var(Δ̂) of one dataset by the two-way random-effects ANOVA, written out with loops (paired seeds).

    V = S²(Δ̄_s)/k + max(0, (MS_examples − MS_residual)/k)/n, with S² floored at MS_residual/n;
    also returns S²/k, the seeds' own variance of the mean.
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    n, k = d.shape
    row = [sum(d[i]) / k for i in range(n)]
    col = [sum(d[i][s] for i in range(n)) / n for s in range(k)]
    grand = sum(row) / n
    ms_examples = k * sum((r - grand) ** 2 for r in row) / (n - 1)
    ms_residual = sum((d[i][s] - row[i] - col[s] + grand) ** 2 for i in range(n) for s in range(k)) / ((n - 1) * (k - 1))
    s2 = sum((c - grand) ** 2 for c in col) / (k - 1)
    run = max(s2, ms_residual / n) / k
    return run + max(0.0, (ms_examples - ms_residual) / k) / n, s2 / k


def test_the_standard_error_is_the_two_way_decomposition():
    rng = np.random.default_rng(1)
    n, k = 120, 4
    q = rng.random(n)
    a = (rng.random((n, k)) < np.clip(q[:, None] + rng.normal(0, 0.1, k), 0, 1)).astype(float)
    b = (rng.random((n, k)) < np.clip(q[:, None] - 0.1 + rng.normal(0, 0.1, k), 0, 1)).astype(float)
    est = stats.estimate([stats.dataset_stats(a, b, paired=True)], [1.0], paired=True)
    assert float(est.delta) == pytest.approx((a - b).mean())
    var, seeds_only = _reference_variance(a, b)
    assert float(est.se) ** 2 == pytest.approx(var, rel=1e-9)
    assert k - 1 <= float(est.df)
    low, high = float(est.ci_low), float(est.ci_high)
    # the wider of the Satterthwaite interval and the seeds' own t interval on k - 1 df
    half = max(scipy_stats.t.ppf(0.975, float(est.df)) * float(est.se),
               scipy_stats.t.ppf(0.975, k - 1) * np.sqrt(seeds_only))
    assert (high - low) / 2 == pytest.approx(half)
    # p comes from the same t statistic: p < .05 exactly when the interval excludes 0
    assert (float(est.p) < 0.05) == (low > 0 or high < 0)
    assert float(est.sigma_seed) == pytest.approx(max(np.std((a - b).mean(axis=0), ddof=1),
                                                      np.sqrt(_residual(a - b) / n)))


def _residual(d):
    n, k = d.shape
    resid = d - d.mean(axis=1, keepdims=True) - d.mean(axis=0, keepdims=True) + d.mean()
    return (resid ** 2).sum() / ((n - 1) * (k - 1))


def test_two_disagreeing_seeds_give_a_wide_interval_and_no_verdict():
    """Seed differences of +2.0 and +10.1 points: a t interval on 1 df, not [Δ seed 0, Δ seed 1]."""
    n = 1000
    rng = np.random.default_rng(2)
    base = rng.random(n) < 0.5
    correct_a, correct_b = {}, {}
    for s, gain in ((0, 20), (1, 101)):
        extra = np.zeros(n, bool)
        extra[np.flatnonzero(~base)[:gain]] = True
        correct_a[s], correct_b[s] = {"boolq": base | extra}, {"boolq": base}
    preds = pd.concat([_seeds("mor1e", correct_a), _seeds("lora", correct_b)], ignore_index=True)
    c = stats.compare(preds, "mor1e", "lora", study="s")
    m = c.mean
    assert m.delta == pytest.approx(0.0605) and m.n_seeds == 2
    sd = np.std([0.020, 0.101], ddof=1)
    assert (m.ci_high - m.ci_low) / 2 >= scipy_stats.t.ppf(0.975, 1) * sd / np.sqrt(2) - 1e-12
    assert m.ci_low < 0 < m.ci_high and m.verdict == "inconclusive" and m.p > 0.05
    assert m.sigma_seed == pytest.approx(sd)
    assert m.mde > 0.5  # two runs: half a dataset's range is within training noise
    assert c.verdict().startswith("verdict: inconclusive on the mean over 1 dataset: 2 runs per method: "
                                  f"differences under {100 * m.mde:.0f} points can't be told from training noise")


def test_holm_adjustment():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone: 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.02]) == pytest.approx([0.02])
    # an untestable comparison stays NaN and does not count in m
    out = stats.holm([0.01, np.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_a_method_compared_with_itself_is_equivalent():
    rng = np.random.default_rng(5)
    preds = _seeds("lora", {s: {"boolq": rng.random(200) < 0.6, "rte": rng.random(150) < 0.5} for s in (0, 1, 2)})
    c = stats.compare(preds, "lora", "lora", study="s")
    assert c.n_seeds == 3 and c.paired_seeds
    for d in c.datasets:
        assert (d.delta, d.ci_low, d.ci_high, d.p, d.p_holm, d.verdict) == (0.0, 0.0, 0.0, 1.0, 1.0, "equivalent")
    assert (c.mean.delta, c.mean.p, c.mean.verdict) == (0.0, 1.0, "equivalent")
    assert c.verdict().startswith("verdict: lora and lora are equivalent within ±1 points")


def test_a_planted_ten_point_difference_over_1000_examples_and_3_runs_is_found():
    rng = np.random.default_rng(6)
    n = 1000
    base = rng.random(n) < 0.5
    correct_a, correct_b = {}, {}
    for s in range(3):
        # B is right on half the examples; A is also right on a fifth of the rest: a 10-point gain
        flip = rng.random(n) < 0.2
        correct_b[s] = {"boolq": base.copy()}
        correct_a[s] = {"boolq": base | (flip & ~base)}
    preds = pd.concat([_seeds("mor1e", correct_a), _seeds("lora", correct_b)], ignore_index=True)
    c = stats.compare(preds, "mor1e", "lora", study="s")
    d = c.datasets[0]
    assert d.n == n and d.delta == pytest.approx(0.1, abs=0.02)
    assert d.p < 0.01 and d.p_holm < 0.01 and c.mean.p < 0.01 and d.verdict == "a_better"
    assert 0 < d.ci_low < d.delta < d.ci_high
    assert c.verdict().startswith("verdict: mor1e beats lora")
    # the reverse comparison is the mirror image
    r = stats.compare(preds, "lora", "mor1e", study="s")
    assert r.mean.delta == pytest.approx(-c.mean.delta) and r.mean.verdict == "b_better"
    assert r.verdict().startswith("verdict: mor1e beats lora")
    assert (r.mean.ci_low, r.mean.ci_high) == pytest.approx((-c.mean.ci_high, -c.mean.ci_low))


def test_one_trained_run_per_method_has_no_interval():
    rng = np.random.default_rng(3)
    preds = pd.concat([_frame("mor1e", {"boolq": rng.random(500) < 0.9}),
                       _frame("lora", {"boolq": rng.random(500) < 0.5})], ignore_index=True)
    c = stats.compare(preds, "mor1e", "lora", study="s")
    assert c.mean.delta > 0.3 and np.isnan(c.mean.ci_low) and np.isnan(c.mean.p)
    assert c.mean.verdict == "inconclusive"
    assert "single trained run, so training noise can't be estimated" in c.verdict()
    out = json.loads(c.dumps())
    assert out["mean"]["ci_low"] is None and out["mean"]["verdict"] == "inconclusive"


def test_json_shape_means_and_seed_counts():
    rng = np.random.default_rng(7)
    preds = pd.concat([
        _seeds("mor1e", {s: {"copa": rng.random(100) < 0.7, "rte": rng.random(40) < 0.6} for s in (10, 11, 12)}),
        _frame("zeroshot", {"copa": rng.random(100) < 0.5, "rte": rng.random(40) < 0.5, "boolq": rng.random(9) < .5}),
        # search-phase predictions never enter a comparison
        _frame("mor1e", {"copa": np.ones(100, bool)}, seed=0, phase="search", trial_id="mor1e_search_0"),
    ], ignore_index=True)
    c = stats.compare(preds, "mor1e", "zeroshot", study="s")
    out = json.loads(c.dumps())
    assert set(out) == {"a", "b", "study", "n_seeds", "datasets", "mean"}
    assert (out["a"], out["b"], out["study"]) == ("mor1e", "zeroshot", "s")
    # zero-shot is one deterministic run: no run part of its own, the trained side's 3 runs count
    assert out["n_seeds"] == 3 and not c.paired_seeds
    assert c.seeds_a == (10, 11, 12) and c.seeds_b == (0,)
    assert [d["dataset"] for d in out["datasets"]] == ["rte", "copa"]  # the paper's order
    assert c.unpaired_datasets == ("boolq",)
    fields = {"dataset", "n", "a", "b", "delta", "ci_low", "ci_high", "p", "p_holm", "se", "df", "sigma_seed",
              "mde", "verdict"}
    for d in out["datasets"]:
        assert set(d) == fields
        assert 0 <= d["a"] <= 1 and 0 <= d["b"] <= 1
        assert d["delta"] == pytest.approx(d["a"] - d["b"])
        assert d["verdict"] in stats.VERDICTS
    assert set(out["mean"]) == {"a", "b", "delta", "ci_low", "ci_high", "p", "se", "df", "n_seeds", "sigma_seed",
                                "mde", "verdict"}
    assert out["mean"]["a"] == pytest.approx(np.mean([d["a"] for d in out["datasets"]]))  # unweighted
    # the run part is mor1e's alone: its per-seed means over datasets
    per_seed = [np.mean([(preds[(preds.method == "mor1e") & (preds.phase == "final") & (preds.seed == s)
                                & (preds.dataset == d)].pipe(lambda f: (f.pred == f.gold).mean()))
                         for d in ("copa", "rte")]) for s in (10, 11, 12)]
    assert out["mean"]["sigma_seed"] == pytest.approx(np.std(per_seed, ddof=1), rel=0.3)  # or the churn floor
    copa = preds[(preds.method == "mor1e") & (preds.phase == "final") & (preds.dataset == "copa")]
    assert out["datasets"][1]["a"] == pytest.approx((copa.pred == copa.gold).mean())
    # reproducible: the same input gives the same output
    assert stats.compare(preds, "mor1e", "zeroshot", study="s").dumps() == c.dumps()


def test_errors_name_the_problem():
    preds = pd.concat([_frame("lora", {"boolq": np.ones(5, bool)}),
                       _frame("dense", {"rte": np.ones(5, bool)}),
                       _frame("molora", {"boolq": np.ones(5, bool)}),
                       _frame("mor1e", {"boolq": np.ones(5, bool)}, phase="search")], ignore_index=True)
    with pytest.raises(stats.StatsError, match="'mor1e' has no final report predictions.*dense, lora"):
        stats.compare(preds, "mor1e", "lora", study="s")
    with pytest.raises(stats.StatsError, match="no datasets in common"):
        stats.compare(preds, "lora", "dense", study="s")
    with pytest.raises(stats.StatsError, match="margin must be a positive"):
        stats.compare(preds, "lora", "molora", study="s", margin=0)


def test_method_interval_carries_seeds_and_is_never_narrower_than_clopper_pearson():
    rng = np.random.default_rng(8)
    preds = _seeds("lora", {s: {"boolq": rng.random(300) < 0.6, "wic": rng.random(200) < 0.55} for s in (0, 1)})
    mi = stats.method_interval(preds, "lora")
    assert mi.seeds == (0, 1) and mi.datasets.dataset.tolist() == ["boolq", "wic"] and mi.run_level
    assert (mi.datasets.ci_low < mi.datasets.accuracy).all() and (mi.datasets.accuracy < mi.datasets.ci_high).all()
    assert mi.mean == pytest.approx(mi.datasets.accuracy.mean())
    assert mi.mean_ci_low < mi.mean < mi.mean_ci_high
    assert stats.method_interval(preds, "dense") is None
    # 16 of 16 right on both seeds: not [100, 100] but Clopper-Pearson's [79.4, 100]
    perfect = _seeds("lora", {s: {"wsc": np.ones(16, bool)} for s in (0, 1)})
    row = stats.method_interval(perfect, "lora").datasets.iloc[0]
    assert row.ci_low == pytest.approx(0.794, abs=1e-3) and row.ci_high == 1.0
    # one trained run: a within-run interval, said so
    single = stats.method_interval(_frame("lora", {"wsc": rng.random(50) < 0.5}), "lora")
    assert not single.run_level and single.mean_ci_low < single.mean < single.mean_ci_high


def test_power_shift_and_planning():
    # infinite df: the normal shift 1.96 + 0.84; few df need far more
    assert stats.power_shift(np.inf) == pytest.approx(2.8016, abs=1e-3)
    assert stats.power_shift(1.0) > 15 > stats.power_shift(2.0) > stats.power_shift(4.0) > 2.8
    # the shift really gives 80% power to a noncentral t test
    shift, crit = stats.power_shift(4.0), scipy_stats.t.ppf(0.975, 4)
    assert scipy_stats.nct.sf(crit, 4, shift) + scipy_stats.nct.cdf(-crit, 4, shift) == pytest.approx(0.8, abs=1e-6)
    prior = stats.Prior(sigma_seed=0.03, example_sd=0.4, source="test")
    mdes = [stats.planned(k, [500] * 14, prior)["mde"] for k in (2, 3, 5, 10)]
    assert mdes == sorted(mdes, reverse=True)
    k = stats.seeds_for(0.05, [500] * 14, prior)
    assert stats.planned(k, [500] * 14, prior)["mde"] <= 0.05 < stats.planned(k - 1, [500] * 14, prior)["mde"]
    assert stats.seeds_for(1e-6, [16] * 14, prior, most=20) is None


def test_calibration_command_prints_a_table(capsys):
    assert stats.main(["calibrate", "--studies", "0"]) == 2
    assert "--studies must be a positive integer" in capsys.readouterr().err
