"""A study on a real multi-node Ray cluster (`ray start` on loopback), losing a node mid-study.

Head and one worker node, 2 logical CPUs each, every node on its own 127/8
address. `harness/search.py --address` runs two concurrent trials (one Train
worker each); the GCS actor table shows which node each trial driver, Train
controller and Train worker ran on. As soon as a Train worker is up on the
worker node and another on the head, the worker node's raylet is SIGKILLed: its trial must be retried on the
head or recorded as failed with a reason, and the study must still finish
with a leaderboard.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from multinode import LoopbackCluster

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TRIAL_ACTORS = {"ImplicitFunc", "TrainController", "RayTrainWorker"}  # Tune trial driver, Train V2 controller, worker
STUDY_TIMEOUT_S = 600
TRIAL_TIMEOUT_S = 240  # a trial stuck after the node loss is recorded failed well before STUDY_TIMEOUT_S


def write_profile(path: Path, *, study: str, trials: int, concurrent: int) -> Path:
    """The smallest real study: tiny model, two synthetic twins, LoRA, one Train worker per trial."""
    profile = {
        "kind": "profile", "study": study, "model": "tiny-random-llama", "datasets": ["boolq", "copa"],
        "data": {"synthetic": True, "seed": 0, "n_train": 24, "n_validation": 8},
        "methods": ["lora"], "reference": [],
        "trials_per_method": trials, "max_concurrent_trials": concurrent,
        "search": {"algorithm": "tpe", "quasi_random_trials": trials, "seed": 0, "scheduler": "none"},
        "final": {"seeds": [0]},
        "resources": {"num_workers": 1, "use_gpu": False, "zero_stage": 0, "trial_timeout_s": TRIAL_TIMEOUT_S},
        "training": {"steps": 4, "batch_size": 4, "eval_every": 4, "warmup_steps": 1, "train_limit": 16,
                     "selection_limit": 8, "report_limit": 8, "max_seq_len": 128},
    }
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the driver and anything it forked
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def cluster(tmp_path):
    c = LoopbackCluster(tmp_path / "cluster")
    try:
        yield c
    finally:
        c.shutdown()
        leftover = c.leftover_pids()
        assert not leftover, f"processes left running: {leftover}"


def run_study(cluster, tmp_path, *, kill_worker_node: bool):
    """Run a 2-trial study across head + w1; optionally SIGKILL w1's raylet once both nodes run a Train worker."""
    started = time.monotonic()
    cluster.start_head(num_cpus=2)
    cluster.add_worker("w1", num_cpus=2)
    up_s = time.monotonic() - started

    results = tmp_path / "results"
    profile = write_profile(tmp_path / "profile.yaml", study="multinode", trials=2, concurrent=2)
    env = cluster.env()
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the driver too stays on loopback
    log_path = tmp_path / "search.log"
    with open(log_path, "wb") as log:
        search = subprocess.Popen(
            [sys.executable, str(REPO / "harness" / "search.py"), "--address", cluster.address,
             "--config", str(profile), "--results-dir", str(results)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    killed_at = None
    try:
        deadline = time.monotonic() + STUDY_TIMEOUT_S
        while search.poll() is None:
            assert time.monotonic() < deadline, f"study still running after {STUDY_TIMEOUT_S}s:\n{log_tail()}"
            if kill_worker_node and killed_at is None:
                state = cluster.probe()
                workers_on = {state["node_names"].get(a["node_id"]) for a in state["actors"]
                              if a["state"] == "ALIVE" and a["class_name"] == "RayTrainWorker"}
                # Kill only once each node runs a Train worker: the head's trial is then under
                # way and must finish while w1's trial is lost.
                if {"head", "w1"} <= workers_on:
                    cluster.kill_raylet("w1")
                    killed_at = time.monotonic() - started
                    continue
            time.sleep(2)
        assert search.returncode == 0, log_tail()
        # Read placements before the cluster goes: the GCS keeps dead actors too.
        state = cluster.probe()
    finally:
        stop(search)
    total_s = time.monotonic() - started

    from harness.records import read_rows

    state["rows"] = read_rows(results / "leaderboard.parquet").to_pandas()
    state["log"] = log_path.read_text(errors="replace")
    return state, killed_at, up_s, total_s


def placements(state):
    return collections.Counter(
        (state["node_names"].get(a["node_id"]), a["class_name"]) for a in state["actors"]
        if a["class_name"] in TRIAL_ACTORS
    )


def test_study_spreads_over_nodes(cluster, tmp_path):
    state, _, up_s, total_s = run_study(cluster, tmp_path, kill_worker_node=False)
    nodes = {n["name"]: n for n in state["nodes"] if n["name"]}
    assert set(nodes) == {"head", "w1"}
    assert all(n["address"].startswith("127.") for n in nodes.values()), nodes
    placed = placements(state)
    assert placed[("w1", "RayTrainWorker")] >= 1 and placed[("head", "RayTrainWorker")] >= 1, placed
    rows = state["rows"]
    rows = rows[rows.study == "multinode"]
    trials = rows[rows.phase == "search"].groupby("trial_id").status.first()
    assert len(trials) == 2 and set(trials) == {"completed"}, trials
    assert (rows[rows.status == "completed"].role == "report").any()
    assert "study multinode finished" in state["log"]
    per_node = {node: {cls: n for (nd, cls), n in placed.items() if nd == node} for node in ("head", "w1")}
    print(f"\nmulti-node study: 2 nodes up in {up_s:.0f}s; actors per node {per_node}; total {total_s:.0f}s")


def test_study_survives_losing_a_node(cluster, tmp_path):
    state, killed_at, up_s, total_s = run_study(cluster, tmp_path, kill_worker_node=True)
    assert killed_at is not None, "Train workers never ran on both nodes at once:\n" + state["log"][-4000:]
    nodes = {n["name"]: n for n in state["nodes"] if n["name"]}
    assert set(nodes) == {"head", "w1"}
    assert all(n["address"].startswith("127.") for n in nodes.values()), nodes
    assert nodes["head"]["alive"] and not nodes["w1"]["alive"]

    placed = placements(state)
    assert {node for node, _ in placed} == {"head", "w1"}, placed
    assert placed[("w1", "RayTrainWorker")] >= 1 and placed[("head", "RayTrainWorker")] >= 1, placed

    rows = state["rows"]
    rows = rows[rows.study == "multinode"]
    search_rows = rows[rows.phase == "search"]
    trials = search_rows.groupby("trial_id").status.first()
    assert len(trials) == 2, trials
    assert set(trials) <= {"completed", "failed"}, trials
    assert "completed" in set(trials), trials
    failed = search_rows[search_rows.status == "failed"]
    assert failed.status_reason.fillna("").str.len().gt(0).all(), failed.status_reason.tolist()
    # The node's loss reached at least one trial: restarted (from its last checkpoint) or failed, with the reason.
    per_trial = search_rows.drop_duplicates("trial_id")
    reasons = per_trial.status_reason.fillna("")
    assert (reasons.str.contains("restart") | (per_trial.status == "failed")).any(), reasons.tolist()
    # A trial that completed after a restart ran its driver and its Train worker on the head
    head_id = nodes["head"]["node_id"]
    restarted = per_trial[reasons.str.contains("restart") & (per_trial.status == "completed")]
    for r in restarted.itertuples():
        assert r.driver_node == head_id and r.worker_nodes == head_id, r
    assert (rows[rows.status == "completed"].role == "report").any()
    assert "study multinode finished" in state["log"]

    per_node = {node: {cls: n for (nd, cls), n in placed.items() if nd == node} for node in ("head", "w1")}
    print(f"\nmulti-node study: 2 nodes up in {up_s:.0f}s; actors per node {per_node}; "
          f"w1 raylet killed at {killed_at:.0f}s; trials {dict(trials)}; "
          f"reasons {dict(zip(per_trial.trial_id, reasons))}; total {total_s:.0f}s")
