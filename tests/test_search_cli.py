"""Bad input to harness/search.py: one line, exit 2, before Ray starts, leaderboard bytes untouched."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from profiles import default_profile_with

from harness import search
from harness.study.outcomes import error_line
from harness.records import append_rows, row_template

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    append_rows(d / "leaderboard.parquet", [row_template(
        study="old", method="lora", trial_id="t0", status="completed", status_reason=None, dataset="boolq",
        split="validation", role="report", accuracy=0.5, acc_norm=None, n_examples=4, trainable_params=1,
        num_experts=None, num_clusters=None, router_temperature=None, learning_rate=1e-3, zero_stage=0,
        num_workers=1, model="tiny-random-llama", seed=0, scoring="letter", phase="final")])
    return d


def _profile(tmp_path, **changes):
    data = default_profile_with(**changes)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


BAD = [
    (lambda t: ["--config", "nope"], "unknown profile 'nope'"),
    (lambda t: ["--config", "lora"], "not a profile"),
    (lambda t: ["--config", _profile(t, methods=["mor1e", "adalora"])], "unknown method 'adalora'"),
    (lambda t: ["--config", _profile(t, datasets=["boolq", "squad"])], "unknown dataset 'squad'"),
    (lambda t: ["--config", _profile(t, epochz=3)], "unknown key 'epochz'"),
    (lambda t: ["--config", _profile(t, overrides__mor1e={"expert_shape": {"choices": ["4x0"]}})],
     "expert count must be >= 1"),
    (lambda t: ["--config", _profile(t, overrides__molora={"num_experts": {"choices": [0]}})],
     "expert count must be >= 1"),
    (lambda t: ["--config", _profile(t, overrides__mor1e={"router_temperature": {"role": "fixed", "value": 0}})],
     "router temperature (tau) must be > 0"),
    (lambda t: ["--config", _profile(t, overrides__lora={"learning_rate": {"role": "fixed", "value": -1e-3}})],
     "lr must be > 0"),
    (lambda t: ["--config", _profile(t, data__n_train=10, overrides__mor1e={
        "num_clusters": {"role": "scientific", "type": "int", "low": 4, "high": 200}})],
     "200 clusters exceed the 112 training examples"),
    (lambda t: ["--data-dir", str(t / "missing")], "data dir"),
    (lambda t: ["--study", "a b"], "study name"),
    (lambda t: ["--resume", "--study", "never-ran"], "nothing to resume"),
    (lambda t: ["--study", "old"], "already exists"),
    (lambda t: ["--frobnicate"], "unrecognized arguments"),
    (lambda t: ["--show-plan", "--target-mde", "0"], "--target-mde must be a positive number"),
    (lambda t: ["--show-plan", "--target-mde", "nan"], "--target-mde must be a positive number"),
]


@pytest.mark.parametrize("make_args, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_exits_2_without_touching_anything(tmp_path, results, capsys, make_args, message):
    import ray

    lb = results / "leaderboard.parquet"
    before = lb.read_bytes()
    listing = sorted(p.name for p in results.iterdir())
    with pytest.raises(SystemExit) as info:
        sys.exit(search.main(["--results-dir", str(results), *make_args(tmp_path)]))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1
    assert lb.read_bytes() == before
    assert sorted(p.name for p in results.iterdir()) == listing
    assert not ray.is_initialized()


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unwritable_results_dir(tmp_path, capsys, where):
    if where == "file":
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "results"
    else:
        target = Path("/proc/1/results")
    assert search.main(["--results-dir", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert "results dir" in err and len(err.splitlines()) == 1


def test_foreign_leaderboard_file_is_refused(tmp_path, capsys):
    (tmp_path / "leaderboard.parquet").write_bytes(b"not parquet")
    assert search.main(["--results-dir", str(tmp_path)]) == 2
    assert "not a readable leaderboard" in capsys.readouterr().err


def test_cli_subprocess_exit_code_and_single_line(tmp_path, results):
    before = (results / "leaderboard.parquet").read_bytes()
    proc = subprocess.run(
        [sys.executable, str(REPO / "harness" / "search.py"), "--results-dir", str(results), "--config", "nope"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "unknown profile" in proc.stderr
    assert proc.stdout == ""
    assert (results / "leaderboard.parquet").read_bytes() == before


def test_failed_trial_reason_is_the_exception_line():
    text = (
        "Traceback (most recent call last):\n"
        '  File "w.py", line 3, in f\n'
        '    raise ValueError(f"bad: {x}")\n'
        "ValueError: num_clusters=40 is more than the 32 training examples\n"
    )
    assert error_line(text) == "ValueError: num_clusters=40 is more than the 32 training examples"
    assert error_line("") == "trial failed"
    wrapped = ("ray.train.ControllerError: Training failed due to controller error:\n"
               "The actor 5de6 is unavailable: RpcError: Socket closed\n")
    assert error_line(wrapped) == ("ray.train.ControllerError: Training failed due to controller error: "
                                          "The actor 5de6 is unavailable: RpcError: Socket closed")
    assert "\n" not in error_line("x\n" * 10)


def test_show_plan_states_the_power_of_the_study(tmp_path, capsys):
    """The default profile's 2 seeds x 16 twin examples: an mde far above a few points, and what 3 points needs."""
    from harness import stats
    from harness.study import power

    assert search.main(["--results-dir", str(tmp_path / "r"), "--show-plan", "--target-mde", "30"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("power: "))
    expected = stats.planned(2, [16] * 14, power.TWIN_PRIOR)["mde"]
    assert f"power: 2 final seeds per method, 16 report examples per dataset: mde {100 * expected:.1f} points" in line
    need = stats.seeds_for(0.30, [16] * 14, power.TWIN_PRIOR)
    assert need and f"an mde of 30 points needs {need} final seeds" in out
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
