"""Watching a running study: a quiet console with an ETA, TensorBoard curves, MLflow runs.

One tiny study (LoRA on two twins: 2 search trials and 1 final run on tiny-random-llama, curves
logged at every step) runs once for the module, with ``--mlflow`` on an SQLite store in a
temporary dir; every test reads what it left. Slow: each trial starts a Ray Train worker.
"""

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
STUDY = "watched"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("watch")
    profile = {
        "kind": "profile", "study": STUDY, "model": "tiny-random-llama", "datasets": ["boolq", "copa"],
        "data": {"synthetic": True, "seed": 0, "n_train": 40, "n_validation": 8},
        "methods": ["lora"], "reference": [], "trials_per_method": 2, "max_concurrent_trials": 2,
        "search": {"algorithm": "tpe", "quasi_random_trials": 1, "seed": 0, "scheduler": "asha"},
        "final": {"seeds": [0]},
        "resources": {"num_workers": 1, "zero_stage": 0, "ray_num_cpus": 8},
        "training": {"steps": 4, "batch_size": 4, "eval_every": 2, "log_every": 1, "warmup_steps": 1,
                     "train_limit": 32, "selection_limit": 8, "report_limit": 8, "torch_threads": 1},
    }
    config = root / "p.yaml"
    config.write_text(yaml.safe_dump(profile))
    results = root / "results"
    mlflow_uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MOR1E_CACHE": str(root / "cache")}
    run = subprocess.run([sys.executable, str(REPO / "harness" / "search.py"), "--config", str(config),
                          "--results-dir", str(results), "--mlflow", mlflow_uri],
                         env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return results, mlflow_uri, run


def _leaderboard(results: Path):
    from harness.records import read_rows

    df = read_rows(results / "leaderboard.parquet").to_pandas()
    return df[df.study == STUDY].drop_duplicates("trial_id")


def _trial_ids(results: Path) -> dict[str, str]:
    """{trial id: phase} from the leaderboard."""
    df = _leaderboard(results)
    return dict(zip(df.trial_id, df.phase))


def _events(path: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of a TensorBoard event file: TFRecord framing around tensorboardX's Event."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    data = path.read_bytes()
    at = 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        record = data[at + 12:at + 12 + length]  # after the length and its crc
        at += 12 + length + 4  # the record and its crc
        event = event_pb2.Event.FromString(record)
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_console_is_quiet_and_the_rest_goes_to_the_log(study):
    results, _, run = study
    log = results / "logs" / f"{STUDY}.log"
    assert log.is_file() and log.stat().st_size > 0
    assert f"messages go to {log}" in run.stdout
    own = re.compile(r"^(\[\d+:\d\d:\d\d\] |\||\(Ray's|$|study |parameter band|  \w+: )")
    strays = [line for line in run.stdout.splitlines() if not own.match(line)]
    assert not strays, strays[:10]
    assert run.stderr.strip() == "", run.stderr[-2000:]
    # the ETA is a clock, printed with the status after each trial
    etas = re.findall(r"\| ETA (\d+:\d\d:\d\d)$", run.stdout, re.M)
    assert len(etas) >= 3, run.stdout[-3000:]
    assert etas[-1] == "0:00:00"


def test_every_trial_has_tensorboard_curves(study):
    results, _, _ = study
    trials = _trial_ids(results)
    assert sorted(trials.values()) == ["final", "search", "search"]
    for trial_id, phase in trials.items():
        files = list((results / "ray" / STUDY / "study").glob(f"{trial_id}/events.out.tfevents.*"))
        assert files, f"no event file for {trial_id}"
        tags = {}
        for f in files:
            tags.update(_events(f))
        loss = tags.get("ray/tune/train/loss", [])
        assert len(loss) >= 2 and all(v == v for _, v in loss), (trial_id, sorted(tags))
        assert [s for s, _ in loss] == sorted(s for s, _ in loss) and loss[0][0] == 1  # x-axis: optimizer step
        for tag in ("ray/tune/train/learning_rate", "ray/tune/train/grad_norm", "ray/tune/train/tokens_per_s"):
            assert len(tags.get(tag, [])) == len(loss), (trial_id, tag)
        if phase == "search":
            assert tags.get("ray/tune/selection_accuracy"), (trial_id, sorted(tags))


def test_mlflow_holds_one_run_per_trial_with_params_curves_and_final_metrics(study):
    from mlflow.tracking import MlflowClient

    results, uri, _ = study
    trials = _trial_ids(results)
    board = _leaderboard(results)
    status = dict(zip(board.trial_id, board.status))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(STUDY)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == sorted(trials)
    for trial_id, phase in trials.items():
        run = by_name[trial_id]
        assert run.info.status == "FINISHED"
        assert run.data.params["method"] == "lora" and run.data.params["phase"] == phase
        curve = client.get_metric_history(run.info.run_id, "train/loss")
        # the first step, and every evaluation (search: 2 and 4, or 2 alone when ASHA pruned it there;
        # final: 4); others unless too close to the previous report (harness.trial.worker.CURVE_GAP_S)
        last = 2 if status[trial_id] == "pruned" else 4
        steps = {m.step for m in curve}
        assert {1, last} <= steps <= set(range(1, last + 1)), (trial_id, status[trial_id], sorted(steps))
        if phase == "search":
            assert 2 in steps
        final = run.data.metrics
        if status[trial_id] == "pruned":  # ASHA stopped it: no closing report from the driver
            assert "done_final" not in final
            continue
        assert final.get("done_final") == 1.0 and final.get("wall_s", 0) > 0
        key = "selection_accuracy" if phase == "search" else "report_accuracy"
        assert 0.0 <= final[key] <= 1.0, (trial_id, sorted(final))
