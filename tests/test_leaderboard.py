import json

import pandas as pd
import pytest

from harness import leaderboard
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
    lora = again[again.method == "lora"].set_index("dataset")
    assert lora.loc["rte", "accuracy_mean"] == pytest.approx(0.8)
    assert lora.loc["boolq", "mean_accuracy"] == pytest.approx(0.75)
    assert lora.loc["boolq", "best_trial_id"] == "lora_1"
    assert json.loads(lora.loc["boolq", "hparams_json"]) == {"rank": 8}


def test_cli_prints_table_sql_and_plot(results, capsys, tmp_path):
    assert leaderboard.main(["--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| method | boolq | rte | mean | params |" in out
    assert "| lora | 70.0±14.1 | 80.0±0.0 | 75.0 | 1.00K |" in out
    assert "| zeroshot | 50.0 | 25.0 | 37.5 | 0 |" in out
    assert "3 search trials (completed 2, pruned 1, failed 0)" in out

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
    assert "study s1" not in out and "| dense | 90.0 | 90.0 | 5 |" in out


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
