"""`--show-plan`: the study it would run (trials, time, disk, outputs), fast, started by nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from profiles import tiny_profile, write_profile

from harness import leaderboard, predictions
from harness.study import plan as plan_mod
from harness.study.disk import KEPT_BYTES_PER_PARAM, STATE_BYTES_PER_PARAM, expected_disk

REPO = Path(__file__).resolve().parent.parent
SEARCH = [sys.executable, str(REPO / "harness" / "search.py")]

BUDGET = {"match": "mor1e", "at": {"expert_shape": "4x8", "share_routers": False, "num_clusters": 4},
          "tolerance": 0.3}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("MOR1E_CACHE", str(d))
    return d


def _run(args, cache, *probe):
    """search.main in a fresh interpreter; ``probe``: modules whose import is reported on stderr."""
    code = ("import sys; from harness import search; rc = search.main(sys.argv[1:]); "
            f"print('IMPORTED', sorted(m for m in {list(probe)!r} if m in sys.modules), file=sys.stderr); "
            "sys.exit(rc)")
    env = {**__import__("os").environ, "MOR1E_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


def test_show_plan_counts_trials_time_disk_and_outputs_then_answers_from_its_cache(tmp_path, cache):
    config = write_profile(tmp_path / "p.yaml", tiny_profile(param_budget=BUDGET))
    results = tmp_path / "results"
    args = ["--config", config, "--results-dir", str(results), "--show-plan", "--json"]
    first = _run(args, cache, "ray", "torch")
    assert first.returncode == 0, first.stderr
    o = json.loads(first.stdout)
    assert "'ray'" not in first.stderr.splitlines()[-1]  # no Ray, not even imported
    assert o["profile"]["checks"] == "now"
    # tiny_profile: 4 methods x 2 search trials, 4 x 1 final seed, 1 zero-shot reference
    phases = {ph["phase"]: {m["method"]: m for m in ph["methods"]} for ph in o["phases"]}
    assert {p: {m: r["trials"] for m, r in rows.items()} for p, rows in phases.items()} == {
        "reference": {"zeroshot": 1},
        "search": {"mor1e": 2, "lora": 2, "molora": 2, "dense": 2},
        "final": {"mor1e": 1, "lora": 1, "molora": 1, "dense": 1}}
    assert o["trials"] == 13
    # 2 twins of 40 rows: 8 carved for selection each (limit 8), 32 train (limit 32), 8 report rows each
    assert phases["search"]["lora"]["steps_per_trial"] == 4
    assert phases["search"]["lora"]["examples_per_trial"] == 2 * 16  # 2 evaluations (eval_every 2) x 16
    assert phases["final"]["lora"]["examples_per_trial"] == 16
    assert phases["reference"]["zeroshot"]["examples_per_trial"] == 32
    assert phases["reference"]["zeroshot"]["steps_per_trial"] == 0
    # dense trains every parameter, the adapters a band's worth; each trial's time is positive
    assert phases["search"]["dense"]["trainable_params"] > 10 * phases["search"]["lora"]["trainable_params"]
    assert all(r["expected_s_per_trial"] > 0 for rows in phases.values() for r in rows.values())
    assert phases["search"]["dense"]["expected_s_per_trial"] > phases["search"]["lora"]["expected_s_per_trial"]
    total = sum(r["expected_s"] for rows in phases.values() for r in rows.values())
    assert total / 1 >= o["time"]["expected_wall_s"] >= total / o["slots"] - 1
    assert o["disk"]["end_bytes"] > 0 and o["disk"]["peak_bytes"] > o["disk"]["end_bytes"]
    assert o["outputs"]["leaderboard"] == str(results.resolve() / leaderboard.LEADERBOARD_FILE)
    assert o["outputs"]["predictions"] == str(results.resolve() / predictions.PREDICTIONS_FILE)
    assert o["outputs"]["optuna"].endswith("optuna/tiny.sqlite")
    assert not results.exists()  # nothing written

    second = _run(args, cache, "ray", "torch", "peft", "transformers")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["profile"]["checks"] == "cached"
    assert second.stderr.splitlines()[-1] == "IMPORTED []"  # neither torch nor peft: seconds saved
    assert {k: v for k, v in again.items() if k != "profile"} == {k: v for k, v in o.items() if k != "profile"}
    assert again["profile"]["sha256"] == o["profile"]["sha256"]

    text = _run(args[:-1], cache)
    assert text.returncode == 0, text.stderr
    assert "13 trials, 1 at a time" in text.stdout and "expected wall time" in text.stdout
    assert "parameter band" in text.stdout and "disk (checkpoints)" in text.stdout


def test_the_check_cache_key_follows_the_profile(tmp_path, cache):
    import argparse

    def key(**changes):
        config = write_profile(tmp_path / "p.yaml", tiny_profile(param_budget=BUDGET, **changes))
        args = argparse.Namespace(config=config, results_dir=str(tmp_path / "r"), data_dir=None, study=None,
                                  address=None, resume=False)
        plan = plan_mod.build_plan(args)
        return plan_mod.check_key(plan), plan

    k1, p1 = key()
    k2, p2 = key()
    assert k1 == k2 and p2._memo["checked"] == "cached"
    assert p1.profile_sha256() == p2.profile_sha256()
    assert p1.profile.spaces["lora"].params.keys() == p2.profile.spaces["lora"].params.keys()
    k3, p3 = key(trials_per_method=3)
    assert k3 != k1 and p3._memo["checked"] == "now"
    k4, _ = key(overrides={"mor1e": {"num_clusters": {"role": "scientific", "type": "int", "low": 2, "high": 3}}})
    assert k4 not in (k1, k3)


def test_plan_file_names_match_the_writers():
    assert plan_mod.LEADERBOARD_FILE == leaderboard.LEADERBOARD_FILE
    assert plan_mod.PREDICTIONS_FILE == predictions.PREDICTIONS_FILE
    from harness.study.dryrun import SUMMARY_FILE

    assert SUMMARY_FILE == leaderboard.SUMMARY_FILE


def test_expected_disk_counts_kept_checkpoints_per_trial(tmp_path, cache):
    import argparse

    config = write_profile(tmp_path / "p.yaml", tiny_profile(
        training={"steps": 10, "batch_size": 4, "eval_every": 2, "train_limit": 32, "keep_checkpoints": 3}))
    plan = plan_mod.build_plan(argparse.Namespace(config=config, results_dir=str(tmp_path / "r"), data_dir=None,
                                                  study=None, address=None, resume=False))
    counts = {"zeroshot": 0, "mor1e": 100, "lora": 200, "molora": 300, "dense": 1000}
    d = expected_disk(plan, trainable=counts)
    # 5 evaluations, 4 before the last: a search trial holds keep_checkpoints (3) states and one more
    # while the next is written; a final run keeps an adapter's tensors, dense's none (final.keep: none)
    for m in ("mor1e", "lora", "molora", "dense"):
        assert d["per_method"][m]["trial_peak_bytes"] == counts[m] * STATE_BYTES_PER_PARAM * 4
    assert "zeroshot" not in d["per_method"] and d["per_method"]["dense"]["kept_bytes"] == 0
    assert d["end_bytes"] == KEPT_BYTES_PER_PARAM * (100 + 200 + 300)  # one final seed
    # one slot: the largest search trial's states on top of what the finals keep
    assert d["peak_bytes"] == d["end_bytes"] + 1000 * STATE_BYTES_PER_PARAM * 4
    assert expected_disk(plan, trainable={**counts, "dense": None})["end_bytes"] is None


def test_mlflow_without_the_package_is_one_line_and_exit_2(tmp_path, cache):
    config = write_profile(tmp_path / "p.yaml", tiny_profile())
    code = ("import sys; sys.modules['mlflow'] = None; from harness import search; "
            "sys.exit(search.main(sys.argv[1:]))")
    env = {**__import__("os").environ, "MOR1E_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", code, "--config", config, "--results-dir", str(tmp_path / "r"),
                          "--mlflow", f"sqlite:///{tmp_path / 'm.db'}"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: MLflow tracking (sqlite:///{tmp_path / 'm.db'}) needs the mlflow client: pip install '.[mlflow]'"]
    assert not (tmp_path / "r").exists() and not (tmp_path / "m.db").exists()


def test_tracking_in_a_profile_is_checked_and_left_out_of_its_hash(tmp_path, cache):
    import argparse

    from harness.searchspace import ConfigError

    def plan(**changes):
        config = write_profile(tmp_path / "p.yaml", tiny_profile(**changes))
        return plan_mod.build_plan(argparse.Namespace(config=config, results_dir=str(tmp_path / "r"), data_dir=None,
                                                      study=None, address=None, resume=False))

    plain = plan()
    tracked = plan(tracking={"mlflow": "sqlite:///x.db"})
    assert plain.mlflow_uri is None and tracked.mlflow_uri == "sqlite:///x.db"
    assert tracked.profile_sha256() == plain.profile_sha256()
    with pytest.raises(ConfigError, match="tracking: unknown key 'wandb'"):
        plan(tracking={"wandb": "x"})
    with pytest.raises(ConfigError, match="tracking.mlflow must be an MLflow tracking URI"):
        plan(tracking={"mlflow": 3})
    with pytest.raises(ConfigError, match="log_every must be an integer >= 0"):
        plan(training={"steps": 4, "log_every": -1})
