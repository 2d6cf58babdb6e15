import json

import numpy as np
import pandas as pd
import pytest

from harness import evaluate, leaderboard, stats
from harness.data import Example
from harness.predictions import PREDICTIONS_FILE, append_predictions, prediction_rows
from harness.records import append_rows, row_template


def _rows(study, method, trial_id, phase, role, accs, *, seed=0, status="completed", params=1000, lr=1e-3, hp=None):
    out = []
    for dataset, acc in accs.items():
        out.append(row_template(
            study=study, method=method, trial_id=trial_id, status=status, status_reason=None,
            dataset=dataset, split="validation" if role == "report" else "train[selection]", role=role,
            accuracy=acc, acc_norm=None, n_examples=20, trainable_params=params, num_experts=None,
            num_clusters=None, router_temperature=None, learning_rate=lr, zero_stage=0, num_workers=1,
            model="tiny-random-llama", seed=seed, scoring="letter", phase=phase,
            hparams_json=json.dumps(hp or {}),
        ))
    return out


@pytest.fixture
def results(tmp_path):
    lb = tmp_path / "leaderboard.parquet"
    rows = []
    # search: lora t1 beats t0 on selection; t2 pruned with a higher (partial) number
    rows += _rows("s1", "lora", "lora_0", "search", "selection", {"boolq": 0.5, "rte": 0.5}, lr=1e-4, hp={"rank": 4})
    rows += _rows("s1", "lora", "lora_1", "search", "selection", {"boolq": 0.7, "rte": 0.6}, lr=2e-3, hp={"rank": 8})
    rows += _rows("s1", "lora", "lora_2", "search", "selection", {"boolq": 0.9, "rte": 0.9}, status="pruned")
    rows += _rows("s1", "lora", "lora_final_s0", "final", "report", {"boolq": 0.6, "rte": 0.8}, seed=0)
    rows += _rows("s1", "lora", "lora_final_s1", "final", "report", {"boolq": 0.8, "rte": 0.8}, seed=1)
    rows += _rows("s1", "zeroshot", "zeroshot", "reference", "report", {"boolq": 0.5, "rte": 0.25}, params=0)
    append_rows(lb, rows)
    return tmp_path


def test_published_means_and_stds_over_seeds(results):
    df = leaderboard.load(results)
    pub = leaderboard.published(df, "s1").set_index(["method", "dataset"])
    assert pub.loc[("lora", "boolq"), "accuracy_mean"] == pytest.approx(0.7)
    assert pub.loc[("lora", "boolq"), "accuracy_std"] == pytest.approx(pd.Series([0.6, 0.8]).std())
    assert pub.loc[("lora", "rte"), "n_seeds"] == 2
    assert pub.loc[("zeroshot", "rte"), "accuracy_mean"] == pytest.approx(0.25)


def test_best_trial_is_chosen_on_completed_selection_rows(results):
    best = leaderboard.best_trials(leaderboard.load(results), "s1").set_index("method")
    assert best.loc["lora", "trial_id"] == "lora_1"  # the pruned trial's partial score does not count
    assert best.loc["lora", "selection_accuracy"] == pytest.approx(0.65)


def test_summary_is_computed_from_records(results):
    summary = leaderboard.write_summary(results)
    again = pd.read_parquet(results / "summary.parquet")
    assert len(again) == len(summary) == 4
    assert list(again.columns) == leaderboard.SUMMARY_SCHEMA.names
    lora = again[again.method == "lora"].set_index("dataset")
    assert lora.loc["rte", "accuracy_mean"] == pytest.approx(0.8)
    assert lora.loc["boolq", "mean_accuracy"] == pytest.approx(0.75)
    assert lora.loc["boolq", "best_trial_id"] == "lora_1"
    assert json.loads(lora.loc["boolq", "hparams_json"]) == {"rank": 8}
    assert (lora.n_seeds == 2).all() and (lora.n_examples == 20).all()
    # without predictions there are no intervals or tests; trials are counted, their cost is unknown
    assert again[["ci_low", "ci_high", "mean_ci_low", "p_vs_best_baseline"]].isna().all().all()
    assert (lora.search_trials == 3).all() and (lora.search_trials_costed == 0).all()
    assert lora.search_cost_s.isna().all()
    assert (again.best_baseline == "lora").all()
    zeroshot = again[again.method == "zeroshot"].iloc[0]
    assert zeroshot.delta_vs_best_baseline == pytest.approx(0.375 - 0.75) and zeroshot.search_trials == 0


def test_cli_prints_table_sql_and_plot(results, capsys, tmp_path):
    assert leaderboard.main(["--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| method | boolq | rte | mean | 95% CI | vs lora | params | search cost |" in out
    # no predictions.parquet: no interval, no test; no device_s recorded: the cost is unknown
    assert "| lora | 70.0±14.1 | 80.0±0.0 | 75.0 | - | best baseline | 1.00K | ? (3 trials) |" in out
    assert "| zeroshot | 50.0 | 25.0 | 37.5 | - | -37.5 | 0 | - |" in out
    assert "3 search trials (completed 2, pruned 1, failed 0)" in out
    assert "no predictions recorded" in out

    leaderboard.write_summary(results)
    assert leaderboard.main(["--results-dir", str(results), "--sql",
                             "SELECT method, count(*) AS n FROM leaderboard GROUP BY method ORDER BY method"]) == 0
    out = capsys.readouterr().out.split("\n")
    assert out[1].split() == ["lora", "10"] and out[2].split() == ["zeroshot", "2"]
    assert leaderboard.main(["--results-dir", str(results), "--sql", "SELECT count(*) AS n FROM summary"]) == 0
    assert capsys.readouterr().out.split()[-1] == "4"

    png = tmp_path / "plot.png"
    assert leaderboard.main(["--results-dir", str(results), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_studies_are_both_shown_and_selectable(results, capsys):
    append_rows(results / "leaderboard.parquet",
                _rows("s2", "dense", "d0", "final", "report", {"boolq": 0.9}, params=5))
    assert leaderboard.main(["--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert "study s1" in out and "study s2" in out
    assert leaderboard.main(["--results-dir", str(results), "--study", "s2"]) == 0
    out = capsys.readouterr().out
    assert "study s1" not in out and "| dense | 90.0 | 90.0 | - | best baseline | 5 | - |" in out


@pytest.mark.parametrize("args, message", [
    (["--study", "nope"], "no study 'nope'"),
    (["--sql", "SELEC nonsense"], "SQL"),
    (["--plot", "x.pdf"], ".png"),
])
def test_cli_bad_input_exits_2(results, capsys, args, message):
    before = (results / "leaderboard.parquet").read_bytes()
    assert leaderboard.main(["--results-dir", str(results), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert (results / "leaderboard.parquet").read_bytes() == before


def test_cli_without_leaderboard_exits_2(tmp_path, capsys):
    assert leaderboard.main(["--results-dir", str(tmp_path)]) == 2
    assert "no leaderboard" in capsys.readouterr().err


# ---------------------------------------------------------------- with per-example predictions


def _record(results, study, method, trial_id, phase, correct_by_dataset, *, seed=0, status="completed",
            params=1000, device_s=None, train_tokens=None, role="report", budget=None, router=None,
            profile_sha256=None):
    """Leaderboard rows and their prediction rows for one trial, as a study records them."""
    examples, loglikes = [], []
    for dataset, correct in correct_by_dataset.items():
        for i, ok in enumerate(correct):
            gold = i % 3
            pred = gold if ok else (gold + 1) % 3
            examples.append(Example(id=f"{dataset}-{i}", dataset=dataset, prompt="q", choices=(" a", " b", " c"),
                                    options=(" a", " b", " c"), gold=gold, text="q"))
            loglikes.append([0.0 if j == pred else -2.0 for j in range(3)])
    rows = []
    for dataset, m in evaluate.metrics(examples, loglikes).items():
        rows.append(row_template(
            study=study, method=method, trial_id=trial_id, status=status, status_reason=None, dataset=dataset,
            split="validation" if role == "report" else "train[selection]", role=role, accuracy=m["accuracy"],
            acc_norm=m["acc_norm"], n_examples=m["n_examples"], trainable_params=params, num_experts=None,
            num_clusters=None, router_temperature=None, learning_rate=1e-3, zero_stage=0, num_workers=1,
            model="tiny-random-llama", seed=seed, scoring="letter", phase=phase, hparams_json="{}",
            device_s=device_s, train_tokens=train_tokens, budget_json=json.dumps(budget) if budget else None,
            profile_sha256=profile_sha256,
            **(router or {})))
    append_rows(results / "leaderboard.parquet", rows)
    append_predictions(results / PREDICTIONS_FILE, prediction_rows(
        examples, loglikes, study=study, trial_id=trial_id, phase=phase, method=method, seed=seed, role=role,
        split="validation" if role == "report" else "train[selection]"))


ROUTER = dict(router_gate_mean=0.5, router_load_entropy=0.9, router_max_share=0.2, router_dead_fraction=0.0,
              router_token_entropy=0.7)


@pytest.fixture(scope="module")
def study_with_predictions(tmp_path_factory):
    """Study "old" (lora only), then study "s": lora, dense, mor1e (3 final seeds each) and zero-shot.

    mor1e is right wherever lora is, and on 30% more of the boolq examples and 20% more of the
    rte examples lora gets wrong; dense is lora with a few examples lost.
    """
    tmp_path = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    n = {"boolq": 300, "rte": 200}
    _record(tmp_path, "old", "lora", "old_final", "final", {"boolq": rng.random(50) < 0.5})
    for seed in (100, 101, 102):
        lora = {d: rng.random(k) < 0.55 for d, k in n.items()}
        mor1e = {d: c | (rng.random(len(c)) < (0.3 if d == "boolq" else 0.2)) for d, c in lora.items()}
        dense = {d: c & (rng.random(len(c)) < 0.97) for d, c in lora.items()}
        band = {"param_band": [5e5, 5e6]}
        _record(tmp_path, "s", "lora", f"lora_final_{seed}", "final", lora, seed=seed, params=1_000_000, budget=band)
        _record(tmp_path, "s", "mor1e", f"mor1e_final_{seed}", "final", mor1e, seed=seed, params=800_000,
                router=ROUTER)
        _record(tmp_path, "s", "dense", f"dense_final_{seed}", "final", dense, seed=seed, params=100_000_000)
    _record(tmp_path, "s", "zeroshot", "zeroshot", "reference", {d: rng.random(k) < 0.35 for d, k in n.items()},
            params=0)
    # search trials: every status costs device time; one dense trial recorded none
    sel = {"boolq": rng.random(20) < 0.5}
    best_sel = {"boolq": sel["boolq"] | (np.arange(20) < 5)}  # lora's search trial wins on selection
    for trial, method, status, device_s in (("lora_0", "lora", "completed", 100.0), ("lora_1", "lora", "pruned", 50.0),
                                            ("mor1e_0", "mor1e", "completed", 30.0),
                                            ("mor1e_1", "mor1e", "failed", 10.0),
                                            ("mor1e_2", "mor1e", "pruned", 40.0), ("dense_0", "dense", "completed", None)):
        _record(tmp_path, "s", method, trial, "search", best_sel if trial == "lora_0" else sel, status=status,
                role="selection", device_s=device_s,
                train_tokens=None if device_s is None else int(device_s * 10))
    return tmp_path


def test_summary_carries_intervals_tests_and_search_cost(study_with_predictions):
    summary = leaderboard.write_summary(study_with_predictions)
    again = pd.read_parquet(study_with_predictions / "summary.parquet")
    assert len(again) == len(summary)
    s = again[again.study == "s"].set_index(["method", "dataset"])
    assert (s.ci_low < s.accuracy_mean).all() and (s.accuracy_mean < s.ci_high).all()
    assert (s.mean_ci_low < s.mean_accuracy).all() and (s.mean_accuracy < s.mean_ci_high).all()
    assert s.loc[("mor1e", "boolq"), "n_seeds"] == 3 and s.loc[("mor1e", "boolq"), "n_examples"] == 300
    assert s.loc[("zeroshot", "rte"), "n_seeds"] == 1
    # lora is the best baseline; mor1e beats it, zero-shot loses to it
    assert (s.best_baseline == "lora").all()
    mor1e = s.loc[("mor1e", "boolq")]
    assert mor1e.delta_vs_best_baseline > 0.1 and mor1e.p_vs_best_baseline < 0.01
    assert s.loc[("lora", "boolq"), "p_vs_best_baseline"] != s.loc[("lora", "boolq"), "p_vs_best_baseline"]  # NaN
    assert s.loc[("zeroshot", "rte"), "delta_vs_best_baseline"] < 0
    # search cost: all of a method's search trials, pruned and failed included
    assert (mor1e.search_trials, mor1e.search_trials_costed, mor1e.search_cost_s, mor1e.search_train_tokens) \
        == (3, 3, 80.0, 800)
    assert s.loc[("lora", "rte"), "search_cost_s"] == 150.0
    dense = s.loc[("dense", "rte")]
    assert (dense.search_trials, dense.search_trials_costed) == (1, 0) and pd.isna(dense.search_cost_s)
    # the study without search still summarises, its interval from its own predictions
    old = again[again.study == "old"].iloc[0]
    assert old.ci_low < old.accuracy_mean < old.ci_high and old.search_trials == 0


def test_table_shows_intervals_the_best_baseline_and_cost(study_with_predictions, capsys):
    assert leaderboard.main(["--results-dir", str(study_with_predictions), "--study", "s"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert lines["method"] == "| method | boolq | rte | mean | 95% CI | vs lora | params | search cost |"
    assert " | best baseline | 1.00M | 2.5 min (2 trials) |" in lines["lora"]
    mor1e = lines["mor1e"].split(" | ")
    low, high = (float(x) for x in mor1e[4].strip("[]").split(", "))
    assert low < float(mor1e[3]) < high
    assert mor1e[5].startswith("+") and mor1e[5].endswith(" *")  # significant against lora
    assert mor1e[7] == "1.3 min (3 trials) |"
    assert lines["dense"].endswith("| 100.00M | ? (1 trial) |")
    assert lines["zeroshot"].split(" | ")[5].startswith("-") and lines["zeroshot"].endswith("| 0 | - |")
    assert "95% CI of the mean over datasets" in out


def test_compare_prints_a_table_and_a_verdict(study_with_predictions, capsys):
    assert leaderboard.main(["--results-dir", str(study_with_predictions), "--compare", "mor1e", "lora"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("mor1e vs lora, study s:")  # the latest study by default
    assert out[2] == "| dataset | n | mor1e | lora | Δ | 95% CI | p | p (Holm) |"
    assert out[4].startswith("| boolq | 300 |") and out[6].startswith("| mean | 500 |")
    assert out[-1].startswith("verdict: mor1e beats lora on the mean over 2 datasets")


def test_compare_json_is_one_object_of_the_documented_shape(study_with_predictions, capsys):
    assert leaderboard.main(["--results-dir", str(study_with_predictions), "--compare", "dense", "zeroshot",
                             "--study", "s", "--json"]) == 0
    out = capsys.readouterr().out
    obj = json.loads(out)  # exactly one JSON document: anything else would not parse
    assert set(obj) == {"a", "b", "study", "n_seeds", "datasets", "mean"}
    # zero-shot is one deterministic run: dense's 3 runs carry the run part
    assert (obj["a"], obj["b"], obj["study"], obj["n_seeds"]) == ("dense", "zeroshot", "s", 3)
    assert [d["dataset"] for d in obj["datasets"]] == ["boolq", "rte"]
    lb = leaderboard.published(leaderboard.load(study_with_predictions), "s").set_index(["method", "dataset"])
    for d in obj["datasets"]:
        assert d["a"] == pytest.approx(lb.loc[("dense", d["dataset"]), "accuracy_mean"])
        assert d["b"] == pytest.approx(lb.loc[("zeroshot", d["dataset"]), "accuracy_mean"])
        assert d["ci_low"] < d["delta"] < d["ci_high"] and 0 <= d["p"] <= d["p_holm"] <= 1
    assert obj["mean"]["delta"] == pytest.approx(np.mean([d["delta"] for d in obj["datasets"]]))


@pytest.mark.parametrize("args, message", [
    (["--compare", "mor1e", "lora", "--study", "nope"], "no study 'nope'"),
    (["--compare", "molora", "lora"], "'molora' has no final report predictions in study 's'"),
    (["--compare", "mor1e", "lora", "--study", "old"], "'mor1e' has no final report predictions in study 'old'"),
    (["--json"], "--json goes with --compare"),
    (["--compare", "mor1e", "lora", "--sql", "SELECT 1"], "cannot be combined"),
])
def test_compare_bad_input_exits_2_with_one_line(study_with_predictions, capsys, args, message):
    files = {p: p.read_bytes() for p in study_with_predictions.glob("*.parquet")}
    assert leaderboard.main(["--results-dir", str(study_with_predictions), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in study_with_predictions.glob("*.parquet")} == files


def test_compare_without_predictions_or_paired_examples_exits_2(results, tmp_path, capsys):
    assert leaderboard.main(["--results-dir", str(results), "--compare", "lora", "zeroshot"]) == 2
    assert "no predictions at" in capsys.readouterr().err
    other = tmp_path / "other"
    _record(other, "s", "lora", "l0", "final", {"boolq": np.ones(10, bool)})
    _record(other, "s", "dense", "d0", "final", {"rte": np.ones(10, bool)})
    assert leaderboard.main(["--results-dir", str(other), "--compare", "lora", "dense"]) == 2
    err = capsys.readouterr().err
    assert "no datasets in common" in err and len(err.strip().splitlines()) == 1


def test_plot_draws_intervals_param_band_and_router_telemetry(study_with_predictions, tmp_path):
    df = leaderboard.load(study_with_predictions)
    assert leaderboard._param_band(df, "s") == (5e5, 5e6)
    telemetry = leaderboard._router_telemetry(df, "s")
    assert list(telemetry.index) == ["mor1e"] and telemetry.loc["mor1e"].to_dict() == pytest.approx(ROUTER)
    png = tmp_path / "s.png"
    assert leaderboard.main(["--results-dir", str(study_with_predictions), "--study", "s", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sql_sees_the_predictions(study_with_predictions, capsys):
    assert leaderboard.main(["--results-dir", str(study_with_predictions), "--sql",
                             "SELECT count(*) AS n FROM predictions WHERE study = 's' AND role = 'report' "
                             "AND method = 'zeroshot'"]) == 0
    assert capsys.readouterr().out.split()[-1] == "500"


def test_end_of_study_verdicts_say_what_the_study_can_claim(study_with_predictions):
    preds = leaderboard.load_predictions(study_with_predictions, "s")
    lines = leaderboard.format_verdicts(preds, "s").splitlines()
    assert lines[0].startswith("mor1e vs dense: Δ +") and lines[1].startswith("mor1e vs lora: Δ +")
    assert "a_better" in lines[1] and "(3 runs per method)" in lines[1]
    c = stats.compare(preds, "mor1e", "lora", study="s")
    assert f"mde {100 * c.mean.mde:.1f} points" in lines[1]
    # 3 runs of 200-300 examples still leave an mde above 5 points here: said so
    worst = max(stats.compare(preds, "mor1e", b, study="s").mean.mde for b in ("dense", "lora"))
    assert (100 * worst > leaderboard.PIPELINE_RUN_MDE) == lines[-1].startswith("this study is a run of the pipeline")
    assert leaderboard.format_verdicts(None, "s") == ""


def test_show_plan_measures_its_prior_on_an_earlier_study_of_the_same_profile(tmp_path):
    from harness.study import power

    rng = np.random.default_rng(4)
    n = 120
    for seed, shift in ((0, 0.1), (1, 0.3), (2, 0.2)):
        lora = rng.random(n) < 0.5
        mor1e = lora | (rng.random(n) < shift)
        _record(tmp_path, "s", "lora", f"lora_{seed}", "final", {"boolq": lora}, seed=seed, profile_sha256="abc")
        _record(tmp_path, "s", "mor1e", f"mor1e_{seed}", "final", {"boolq": mor1e}, seed=seed, profile_sha256="abc")
    assert power.measured_prior(tmp_path, "another profile") is None
    prior = power.measured_prior(tmp_path, "abc")
    c = stats.compare(leaderboard.load_predictions(tmp_path, "s"), "mor1e", "lora", study="s")
    assert prior.sigma_seed == pytest.approx(c.mean.sigma_seed) and "study 's'" in prior.source
    # the example part it implies gives back the comparison's own SE
    planned = stats.planned(c.n_seeds, [n], prior)
    assert planned["se"] == pytest.approx(c.mean.se, rel=1e-6)
