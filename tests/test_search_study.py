"""Whole studies through `python harness/search.py`: real Ray Tune, Optuna (SQLite), Train, Parquet.

One results dir is shared by the module: study s1 (2 methods x 3 trials on
tiny-random-llama, two twin datasets) is killed after its first recorded
trial and finished with --resume; then a second study is appended to the same
directory. Slow: each trial starts a Ray Train worker.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from harness.records import ROW_KEY, read_rows

REPO = Path(__file__).resolve().parent.parent
SEARCH = [sys.executable, str(REPO / "harness" / "search.py")]
DATASETS = ["boolq", "copa"]

pytestmark = pytest.mark.slow


def _profile(path: Path, **changes) -> str:
    data = {
        "kind": "profile", "study": "s1", "model": "tiny-random-llama", "datasets": DATASETS,
        "data": {"synthetic": True, "seed": 0, "n_train": 40, "n_validation": 8},
        "methods": ["mor1e", "lora"], "reference": [], "trials_per_method": 3,
        "search": {"algorithm": "tpe", "quasi_random_trials": 1, "scheduler": "asha", "grace_period": 1,
                   "reduction_factor": 2, "seed": 0},
        "final": {"seeds": [0, 1]},
        "resources": {"num_workers": 1, "zero_stage": 0, "ray_num_cpus": 8},
        "training": {"steps": 4, "batch_size": 4, "eval_every": 2, "warmup_steps": 1, "train_limit": 32,
                     "selection_limit": 8, "report_limit": 8, "torch_threads": 1},
        "overrides": {"mor1e": {"num_clusters": {"role": "scientific", "type": "int", "low": 2, "high": 4}}},
        "param_budget": {"match": "mor1e", "at": {"expert_shape": "4x8", "share_routers": False, "num_clusters": 4},
                         "tolerance": 0.3},
    }
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _env():
    env = dict(os.environ)
    env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    return env


def _search_rows(lb: Path, study: str):
    if not lb.exists():
        return None
    df = read_rows(lb).to_pandas()
    return df[(df.study == study) & (df.phase == "search")]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("study") / "results"


@pytest.fixture(scope="module")
def study_s1(results, tmp_path_factory):
    """Start s1, SIGKILL it once one search trial is recorded, then finish it with --resume."""
    config = _profile(tmp_path_factory.mktemp("cfg") / "s1.yaml")
    lb = results / "leaderboard.parquet"
    proc = subprocess.Popen([*SEARCH, "--config", config, "--results-dir", str(results)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    first = None
    deadline = time.time() + 900  # generous: CI machines may be busy
    try:
        while time.time() < deadline and proc.poll() is None:
            rows = _search_rows(lb, "s1")
            if rows is not None and rows.trial_id.nunique() >= 1:
                first = rows.copy()
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole study, driver and its Ray processes
        out, _ = proc.communicate(timeout=60)
    assert first is not None, f"no trial recorded before the deadline:\n{out[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, out[-3000:]

    resumed = subprocess.run([*SEARCH, "--config", config, "--results-dir", str(results), "--resume"],
                             env=_env(), capture_output=True, text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return first, out, resumed.stdout


def test_interrupted_study_resumes_without_lost_or_duplicate_trials(study_s1, results):
    first, first_out, resumed_out = study_s1
    df = read_rows(results / "leaderboard.parquet").to_pandas()
    s1 = df[df.study == "s1"]
    # no record twice
    assert not s1.duplicated(list(ROW_KEY)).any()
    search = s1[s1.phase == "search"]
    for method in ("mor1e", "lora"):
        trials = search[search.method == method].drop_duplicates("trial_id")
        assert len(trials) == 3, trials[["trial_id", "status", "status_reason"]]
    # the trial recorded before the kill is still there, recorded once, unchanged
    (tid,) = first.trial_id.unique()
    again = search[search.trial_id == tid]
    assert sorted(again.created_at) == sorted(first.created_at)
    assert "resuming" in resumed_out


def test_leaderboard_rows_and_statuses(study_s1, results):
    df = read_rows(results / "leaderboard.parquet").to_pandas()
    s1 = df[df.study == "s1"]
    search = s1[s1.phase == "search"]
    assert set(search.status) <= {"completed", "pruned"}, search[search.status == "failed"].status_reason.tolist()
    for trial_id, rows in search.groupby("trial_id"):
        status = rows.status.iloc[0]
        assert (rows.status == status).all()
        # Search trials choose: they score the selection split only, never the report split.
        assert sorted(zip(rows.role, rows.dataset)) == sorted(("selection", d) for d in DATASETS)
        if status == "completed":
            assert rows.status_reason.isna().all()
        else:
            assert re.fullmatch(r"asha stopped at step \d+", rows.status_reason.iloc[0])
        assert rows.git_sha.notna().all() and rows.package_versions.notna().all()
        if status == "completed":  # where the trial ran: Ray node ids of its driver and its one Train worker
            assert rows.driver_node.str.fullmatch(r"[0-9a-f]{56}").all(), rows.driver_node.tolist()
            assert rows.worker_nodes.str.fullmatch(r"[0-9a-f]{56}").all(), rows.worker_nodes.tolist()
        assert (rows.model == "tiny-random-llama").all() and (rows.scoring == "letter").all()
        assert rows.precision.isin(["fp32", "bf16"]).all(), rows.precision.tolist()  # reported by every trial
    # provenance: one profile hash for the whole study (the resumed run's rows included), the twins
    # by seed and sizes, the budget with the parameter band, and every trial's size inside that band
    assert s1.profile_sha256.nunique() == 1 and s1.profile_sha256.notna().all() and s1.profile_override.isna().all()
    for row in s1.itertuples():
        source, budget = json.loads(row.data_source), json.loads(row.budget_json)
        assert source["kind"] == "synthetic" and (source["n_train"], source["n_validation"]) == (40, 8)
        assert sorted(source["files"]) == sorted(f"{d}/{s}.jsonl" for d in DATASETS for s in ("train", "validation"))
        assert (budget["steps"], budget["batch_size"], budget["scoring"]) == (4, 4, "letter")
        low, high = budget["param_band"]
        if row.status == "completed":
            assert low <= row.trainable_params <= high, (row.method, row.hparams_json, row.trainable_params)
        assert row.scoring_precision == "fp32"
    assert set(search[search.role == "selection"].split) == {"train[selection]"}
    mor1e = search[search.method == "mor1e"]
    assert (mor1e.num_experts == mor1e.hparams_json.map(lambda j: eval_shape(j))).all()
    # final phase: fresh runs, one per method and final seed, each a record per dataset on the report split
    final = s1[s1.phase == "final"]
    assert sorted(zip(final.method, final.seed, final.dataset)) == sorted(
        (m, s, d) for m in ("mor1e", "lora") for s in (0, 1) for d in DATASETS)
    assert (final.role == "report").all() and (final.status == "completed").all()
    assert set(final.split) == {"validation"}
    # No search run is a final row: the search trains with a seed no final run uses, and every
    # final row is a trial of its own.
    assert set(search.seed) == {2}
    assert not set(final.trial_id) & set(search.trial_id)
    assert final.groupby(["method", "seed"]).trial_id.nunique().eq(1).all()
    assert final.trial_id.nunique() == 4
    for (method, _), rows in final.groupby(["method", "seed"]):
        done = search[(search.method == method) & (search.status == "completed")]
        score = done.groupby("trial_id").accuracy.mean()
        best = set(done[done.trial_id.isin(score[score == score.max()].index)].hparams_json)
        assert rows.hparams_json.nunique() == 1 and rows.hparams_json.iloc[0] in best  # chosen on selection
    # router telemetry from each trial's final scoring: in [0, 1] for MoR1E, null for LoRA (no routers)
    telemetry = ["router_gate_mean", "router_load_entropy", "router_max_share", "router_dead_fraction",
                 "router_token_entropy"]
    done = s1[s1.status == "completed"]
    routed = done[done.method == "mor1e"][telemetry]
    assert routed.notna().all().all() and ((routed >= 0) & (routed <= 1)).all().all(), routed
    assert done[done.method == "lora"][telemetry].isna().all().all()
    # cost: every trial that ran records its device-seconds and trained tokens
    ran = s1[s1.phase.isin(["search", "final"])]
    assert (ran.device_s > 0).all() and (ran.train_tokens > 0).all(), ran[["trial_id", "device_s", "train_tokens"]]


def test_predictions_reproduce_every_selection_and_report_row(study_s1, results):
    from harness.predictions import mismatches, read_predictions

    lb = read_rows(results / "leaderboard.parquet").to_pandas()
    rows = lb[(lb.study == "s1") & lb.dataset.notna()]
    preds = read_predictions(results / "predictions.parquet", study="s1")
    assert not preds.duplicated(["trial_id", "role", "dataset", "example_id"]).any()
    covered = preds.groupby(["trial_id", "role", "dataset"]).size()
    for r in rows.itertuples():
        assert covered.get((r.trial_id, r.role, r.dataset)) == r.n_examples, (r.trial_id, r.role, r.dataset)
    assert len(covered) == len(rows)  # and no predictions without a row
    assert mismatches(rows, preds).empty
    # Optuna kept the studies in SQLite under the results dir
    storage = f"sqlite:///{results / 'optuna' / 's1.sqlite'}"
    for method in ("mor1e", "lora"):
        study = optuna.load_study(study_name=f"s1-{method}", storage=storage)
        finished = [t for t in study.trials if t.state.is_finished()]
        assert 3 <= len(finished) <= 4  # a trial interrupted by the kill may stay behind as RUNNING/FAIL


def test_first_run_work_is_done_before_the_clock(study_s1):
    _, out, _ = study_s1
    # the model cache, the intuition embeddings and DeepSpeed's CPU op (CPU trials), each timed
    assert re.search(r"prepared: model cache (built|found) \(\d+ s\), intuition embeddings \d+ s "
                     r"\(on disk for every trial\), DeepSpeed's CPU op \d+ s\n", out), out[-3000:]


def eval_shape(hparams_json: str) -> int:
    import json

    hp = json.loads(hparams_json)
    return hp["r1"] * hp["r2"]


def test_summary_and_cli_print_the_study(study_s1, results):
    import pandas as pd

    summary = pd.read_parquet(results / "summary.parquet")
    assert set(summary[summary.study == "s1"].method) == {"mor1e", "lora"}
    out = subprocess.run([sys.executable, str(REPO / "harness" / "leaderboard.py"), "--results-dir", str(results)],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 0, out.stderr
    assert "| method | boolq | copa | mean | 95% CI | vs lora | params | search cost |" in out.stdout
    cell = r"[\d.]+±[\d.]+"  # mean±std over the two final seeds
    assert re.search(rf"^\| mor1e \| {cell} \| {cell} \| [\d.]+ \| \[[\d.]+, [\d.]+\] \| [^|]+ \| [\d.]+K \| [^|]+ \|$",
                     out.stdout, re.M), out.stdout
    assert re.search(r"^\| lora \| ", out.stdout, re.M)
    assert "study s1: 6 search trials" in out.stdout


def test_second_study_appends_and_keeps_the_first(study_s1, results, tmp_path):
    lb = results / "leaderboard.parquet"
    before = read_rows(lb).to_pandas()
    config = _profile(tmp_path / "s2.yaml", study="s2", methods=[], reference=["zeroshot"],
                      resources={"num_workers": 1, "zero_stage": 0, "ray_num_cpus": 8, "measure_unit": True})
    run = subprocess.run([*SEARCH, "--config", config, "--results-dir", str(results)], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # the unit step was timed before the study, and the study's time is stated in units of it
    unit = re.search(r"unit: ([\d.]+) s, one fp32 PEFT-LoRA r=8 AdamW step", run.stdout)
    done = re.search(r"study s2 finished in (\d+):(\d+):(\d+) = (\d+) units of ([\d.]+) s", run.stdout)
    assert unit and done, run.stdout[-3000:]
    summary = pytest.importorskip("pandas").read_parquet(results / "summary.parquet")
    s2_timing = summary[summary.study == "s2"].iloc[0]
    # ... and again after it; the shorter of the two counts
    again = re.search(r"unit again: ([\d.]+) s; the study counts in the shorter", run.stdout)
    assert again, run.stdout[-3000:]
    assert s2_timing.unit_s == pytest.approx(min(float(unit.group(1)), float(again.group(1))), abs=0.01)
    assert s2_timing.unit_s > 0
    assert s2_timing.study_units == pytest.approx(s2_timing.study_s / s2_timing.unit_s)
    assert round(s2_timing.study_units) == int(done.group(4))
    after = read_rows(lb).to_pandas()
    kept = after[after.study == "s1"].reset_index(drop=True)
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(kept, before[before.study == "s1"].reset_index(drop=True))
    s2 = after[after.study == "s2"]
    assert sorted(s2.dataset) == sorted(DATASETS * 2)  # selection + report rows of the reference run
    assert (s2.method == "zeroshot").all() and (s2.phase == "reference").all()
    assert "| zeroshot |" in run.stdout


def test_a_trial_past_its_deadline_is_recorded_failed_and_the_study_ends(tmp_path):
    """resources.trial_timeout_s below a trial's start-up: the trial fails with that reason, nothing waits."""
    results = tmp_path / "results"
    config = _profile(tmp_path / "late.yaml", study="late", methods=["lora"], trials_per_method=1,
                      search={"algorithm": "random", "scheduler": "none", "seed": 0},
                      resources={"num_workers": 1, "zero_stage": 0, "ray_num_cpus": 8, "trial_timeout_s": 2})
    started = time.monotonic()
    run = subprocess.run([*SEARCH, "--config", config, "--results-dir", str(results)], env=_env(),
                         capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = read_rows(results / "leaderboard.parquet").to_pandas()
    assert list(rows.status) == ["failed"] and rows.phase.iloc[0] == "search"
    assert "trial_timeout_s=2s" in rows.status_reason.iloc[0], rows.status_reason.iloc[0]
    assert "final: lora has no completed search trial" in run.stdout
    print(f"\nstudy with a 2 s trial deadline ended in {elapsed:.0f}s")


def test_a_diverging_trial_is_recorded_failed_and_the_search_goes_on(tmp_path):
    """An absurd learning rate makes the loss non-finite: the trial stops at once, is recorded failed with
    the step and the reason, is not restarted from its checkpoints, and the next trial still runs."""
    results = tmp_path / "results"
    config = _profile(tmp_path / "nan.yaml", study="nan", methods=["lora"], trials_per_method=2,
                      search={"algorithm": "random", "scheduler": "none", "seed": 0},
                      overrides={"lora": {"learning_rate": {"value": 1.0e30}}})
    run = subprocess.run([*SEARCH, "--config", config, "--results-dir", str(results)], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = read_rows(results / "leaderboard.parquet").to_pandas()
    search = rows[rows.phase == "search"]
    assert search.trial_id.nunique() == 2  # the search went on after the first divergence
    assert (search.status == "failed").all()
    for reason in search.status_reason:
        assert re.fullmatch(r"diverged: non-finite (loss|gradient norm) \(\S+\) at step \d+", reason), reason
    assert (search.role != "report").all()
    # Not restarted (the reasons above name no restart), and once recorded its checkpoints are gone.
    for trial_id in search.trial_id.unique():
        assert not (results / "ray" / "nan" / "train" / trial_id).exists(), trial_id
    assert "final: lora has no completed search trial" in run.stdout
