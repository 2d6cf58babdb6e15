"""A study on two Ray nodes that share no disk, with its checkpoints in S3 (moto's server on loopback).

The head (no CPUs: it runs only the study's process) and a worker node w1 whose `ray start` runs in
its own mount namespace, with an empty tmpfs over the study's results dir: w1 cannot see the
leaderboard, the predictions or anything the head writes there, and the head cannot see what w1
writes on its disk. Every trial (Tune's trial driver, the Train controller and its worker) runs
on w1; the checkpoints go to `--storage s3://…`, which both nodes reach through pyarrow's S3 file
system. The study must record every trial with its report rows and every prediction behind them,
and leave in S3 only the final run's adapter (harness.study.disk).

The same study with the default storage (inside the results dir) records each trial failed:
its checkpoint is on w1's tmpfs, which the head cannot read ("predictions unreadable: ...").
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from multinode import LoopbackCluster
from s3server import S3Server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
STUDY_TIMEOUT_S = 1500


def write_profile(path: Path) -> Path:
    """One search trial and one final run of LoRA on the tiny model, two twins, a few steps."""
    profile = {
        "kind": "profile", "study": "noshare", "model": "tiny-random-llama", "datasets": ["boolq", "copa"],
        "data": {"synthetic": True, "seed": 0, "n_train": 24, "n_validation": 8},
        "methods": ["lora"], "reference": [],
        "trials_per_method": 1, "max_concurrent_trials": 1,
        "search": {"algorithm": "random", "seed": 0, "scheduler": "none"},
        "final": {"seeds": [0]},
        "resources": {"num_workers": 1, "use_gpu": False, "zero_stage": 0, "trial_timeout_s": 900},
        "training": {"steps": 4, "batch_size": 4, "eval_every": 2, "warmup_steps": 1, "train_limit": 16,
                     "selection_limit": 8, "report_limit": 8, "max_seq_len": 128, "torch_threads": 1},
    }
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path / "moto.log").start()
    server.make_bucket("studies")
    try:
        yield server
    finally:
        server.stop()


def run_noshare_study(tmp_path: Path, s3: S3Server, storage: str | None):
    """Head + w1 (private tmpfs over the results dir); run the study; return its outcome and where things ran."""
    results = tmp_path / "results"
    results.mkdir()
    data = tmp_path / "data"  # inputs every node has, as a cluster's nodes each have the model and the data
    subprocess.run([sys.executable, "-m", "harness.data", "synth", "--out", str(data), "--seed", "0", "--train", "24",
                    "--validation", "8"], check=True, cwd=REPO, capture_output=True)
    hide = f"mount -t tmpfs -o size=16m,mode=0755 noshare {results} && exec \"$@\""
    cluster = LoopbackCluster(tmp_path / "cluster", env_extra=s3.env(), start_attempts=4,
                              node_prefix={"w1": ["unshare", "--mount", "--propagation", "private",
                                                  "sh", "-c", hide, "sh"]})
    log_path = tmp_path / "search.log"
    try:
        cluster.start_head(num_cpus=0)
        w1 = cluster.add_worker("w1", num_cpus=2)
        # What w1 sees of the results dir: its own empty tmpfs.
        w1_pid = w1.raylet().pid
        env = cluster.env()
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        cmd = [sys.executable, str(REPO / "harness" / "search.py"), "--address", cluster.address,
               "--config", str(write_profile(tmp_path / "profile.yaml")), "--results-dir", str(results),
               "--data-dir", str(data)]
        if storage:
            cmd += ["--storage", storage]
        started = time.monotonic()
        with open(log_path, "wb") as log:
            run = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 timeout=STUDY_TIMEOUT_S)
        took = time.monotonic() - started
        log_text = log_path.read_text(errors="replace")
        assert run.returncode == 0, log_text[-4000:]
        state = cluster.probe()
        seen = subprocess.run(["nsenter", f"--mount=/proc/{w1_pid}/ns/mnt", "ls", "-A", str(results)],
                              capture_output=True, text=True, check=True).stdout.split()
    finally:
        cluster.shutdown()
    from harness.records import read_rows

    rows = read_rows(results / "leaderboard.parquet").to_pandas()
    import pyarrow.parquet as pq

    predictions = results / "predictions.parquet"
    preds = pq.read_table(predictions).to_pandas() if predictions.exists() else None
    return dict(rows=rows, preds=preds, state=state, w1_sees=seen, log=log_text, took=took, results=results)


def test_a_study_whose_nodes_share_no_disk_records_everything_through_s3(tmp_path, s3):
    out = run_noshare_study(tmp_path, s3, storage="s3://studies/mor1e")
    state, rows, preds = out["state"], out["rows"], out["preds"]

    # The worker node never saw the head's results dir (its own tmpfs is there, empty), and the study
    # kept no checkpoint in it.
    assert out["w1_sees"] == [], out["w1_sees"]
    assert not (out["results"] / "ray" / "noshare" / "train").exists()
    # Every trial ran on w1: its Tune driver, Train controller and Train worker.
    names = state["node_names"]
    placed = {(names.get(a["node_id"]), a["class_name"]) for a in state["actors"]
              if a["class_name"] in ("ImplicitFunc", "TrainController", "RayTrainWorker")}
    assert {cls for _, cls in placed} == {"ImplicitFunc", "TrainController", "RayTrainWorker"}, placed
    assert {node for node, _ in placed} == {"w1"}, placed

    # Every trial completed, and every row's accuracy is reproduced by the predictions read from S3.
    trials = rows.groupby("trial_id").agg(status=("status", "first"), phase=("phase", "first"))
    assert sorted(trials.phase) == ["final", "search"] and set(trials.status) == {"completed"}, trials
    assert set(rows.role) == {"selection", "report"}
    assert preds is not None
    for r in rows.itertuples():
        mine = preds[(preds.trial_id == r.trial_id) & (preds.role == r.role) & (preds.dataset == r.dataset)]
        assert len(mine) == r.n_examples > 0, (r.trial_id, r.role, r.dataset)
        assert abs((mine.pred == mine.gold).mean() - r.accuracy) < 1e-9

    # Disk economy: the search trial's checkpoints are gone; the final run keeps one checkpoint, with its
    # adapter and predictions and no optimizer state.
    import pyarrow.fs as pafs

    files = [f.path for f in s3.filesystem().get_file_info(pafs.FileSelector("studies/mor1e", recursive=True))
             if f.type == pafs.FileType.File]
    final_id, search_id = (trials.index[trials.phase == p][0] for p in ("final", "search"))
    assert not [f for f in files if f"/{search_id}/" in f], files
    kept = [f.split(f"/{final_id}/", 1)[1] for f in files if f"/{final_id}/" in f]
    checkpoints = {k.split("/")[0] for k in kept if k.startswith("checkpoint_")}
    assert len(checkpoints) == 1, kept
    inside = {k.split("/", 1)[1] for k in kept if k.startswith("checkpoint_")}
    assert "adapter/adapter_model.safetensors" in inside and "predictions.parquet" in inside, inside
    assert not [k for k in inside if k.endswith("states.pt")], inside
    print(f"\nno-shared-disk study on w1 through S3: {out['took']:.0f}s; kept in S3: {sorted(inside)}")
