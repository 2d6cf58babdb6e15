"""A study whose storage fills up mid-trial (a 512 KiB tmpfs): the trial fails with the reason, the rest stands.

The zero-shot reference (a few KB of predictions) fits and is recorded; the LoRA trial trains and
then cannot write its first checkpoint (1.6 MB of state). That trial must end `failed` with a
reason naming the lack of space, the leaderboard and predictions recorded before it must stay
readable and whole, and the study must carry on to its end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "storage"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "mor1e-full", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_storage_fails_the_trial_with_the_reason_and_the_study_goes_on(tmp_path, small_tmpfs):
    profile = {
        "kind": "profile", "study": "full", "model": "tiny-random-llama", "datasets": ["boolq", "copa"],
        "data": {"synthetic": True, "seed": 0, "n_train": 24, "n_validation": 8},
        "methods": ["lora"], "reference": ["zeroshot"], "trials_per_method": 1, "max_concurrent_trials": 1,
        "search": {"algorithm": "random", "seed": 0, "scheduler": "none"},
        "final": {"seeds": [0]},
        "resources": {"num_workers": 1, "use_gpu": False, "zero_stage": 0, "trial_retries": 0, "ray_num_cpus": 4},
        "training": {"steps": 2, "batch_size": 4, "eval_every": 1, "warmup_steps": 1, "train_limit": 16,
                     "selection_limit": 8, "report_limit": 8, "max_seq_len": 128, "torch_threads": 1,
                     "max_failures": 0},
        "overrides": {"lora": {"rank": {"value": 64}}},
    }
    config = tmp_path / "full.yaml"
    config.write_text(yaml.safe_dump(profile))
    results = tmp_path / "results"
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    run = subprocess.run([sys.executable, str(REPO / "harness" / "search.py"), "--config", str(config),
                          "--results-dir", str(results), "--storage", str(small_tmpfs)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]

    from harness.records import read_rows

    rows = read_rows(results / "leaderboard.parquet").to_pandas()
    import pyarrow.parquet as pq

    preds = pq.read_table(results / "predictions.parquet").to_pandas()
    reference = rows[rows.phase == "reference"]
    assert set(reference.status) == {"completed"} and len(reference) == 4  # 2 datasets x selection, report
    for r in reference.itertuples():
        mine = preds[(preds.trial_id == r.trial_id) & (preds.role == r.role) & (preds.dataset == r.dataset)]
        assert len(mine) == r.n_examples and abs((mine.pred == mine.gold).mean() - r.accuracy) < 1e-9
    search = rows[rows.phase == "search"]
    assert len(search) >= 1 and set(search.status) == {"failed"}, search[["status", "status_reason"]]
    reason = search.status_reason.iloc[0]
    assert "no space left on device" in reason.lower(), reason
    assert "final: lora has no completed search trial" in run.stdout
    print(f"\nfull storage: the LoRA trial failed with: {reason}")
