"""Storage by URI (harness.study.storage): local paths and S3 on a loopback moto server, no Ray.

What the driver reads from a checkpoint goes through the storage's file system: a checkpoint
written into S3 is read back from S3; one that is not in the storage fails the trial with a
reason that says so, instead of recording numbers without their predictions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3server import S3Server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log").start()
    server.make_bucket("studies")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return s3


def test_local_storage_defaults_inside_the_results_dir(tmp_path):
    from harness.study.storage import resolve_storage

    default = resolve_storage(None, tmp_path / "results" / "ray")
    assert default.local and default.path == str((tmp_path / "results" / "ray").resolve())
    shared = resolve_storage(str(tmp_path / "shared"), tmp_path / "unused")
    assert shared.local and shared.path == str((tmp_path / "shared").resolve())
    assert resolve_storage(f"file://{tmp_path}/x", tmp_path).path == str(tmp_path / "x")
    shared.check_writable()
    assert (tmp_path / "shared").is_dir() and not list((tmp_path / "shared").iterdir())  # the probe is gone


def test_s3_storage_with_the_endpoint_from_the_environment(s3_env):
    import pyarrow.fs as pafs

    from harness.study.storage import resolve_storage

    storage = resolve_storage("s3://studies/mor1e", Path("/unused"))
    assert isinstance(storage.filesystem, pafs.S3FileSystem) and storage.path == "studies/mor1e"
    storage.check_writable()
    path = storage.join("s1", "train", "t1", "file.bin")
    with storage.filesystem.open_output_stream(path) as out:
        out.write(b"x" * 1000)
    # Seen from the server itself, not only through the storage object.
    assert s3_env.filesystem().get_file_info(path).size == 1000
    assert storage.size(storage.join("s1")) == 1000
    storage.delete(storage.join("s1", "train", "t1"))
    assert not storage.exists(path) and storage.size(storage.join("s1")) == 0


def test_an_unreachable_bucket_is_one_line_before_anything_starts(s3_env, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, str(REPO / "harness" / "search.py"), "--config", "default", "--results-dir",
         str(tmp_path / "results"), "--storage", "s3://no-such-bucket/x"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "no-such-bucket" in out.stderr and "not writable" in out.stderr
    assert not (tmp_path / "results" / "leaderboard.parquet").exists()


def test_checkpoint_examples_are_read_from_the_storage_not_a_local_path(s3_env, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.predictions import EXAMPLE_COLUMNS, EXAMPLES_FILE, SCHEMA
    from harness.study.outcomes import MissingCheckpoint, read_checkpoint_examples
    from harness.study.storage import resolve_storage

    storage = resolve_storage("s3://studies/read", Path("/unused"))
    rows = [dict(dataset="boolq", split="validation", role="report", example_id=f"e{i}", gold=i % 2, pred=1,
                 pred_norm=1, option_loglikes=[-1.0, -0.5]) for i in range(3)]
    rows = [{c: r.get(c) for c in EXAMPLE_COLUMNS} for r in rows]
    table = pa.Table.from_pylist(rows, schema=pa.schema([SCHEMA.field(c) for c in EXAMPLE_COLUMNS]))
    checkpoint = storage.join("t1", "checkpoint_0")
    pq.write_table(table, f"{checkpoint}/{EXAMPLES_FILE}", filesystem=storage.filesystem)
    assert not Path(checkpoint).exists()  # no local copy to fall back on
    got = read_checkpoint_examples(storage, checkpoint)
    assert [r["example_id"] for r in got] == ["e0", "e1", "e2"] and got[1]["gold"] == 1
    with pytest.raises(MissingCheckpoint, match="not in storage s3://studies/read"):
        read_checkpoint_examples(storage, storage.join("t2", "checkpoint_0"))


def _plan(tmp_path, config="default", **changes):
    import argparse

    from harness.study.plan import build_plan

    args = argparse.Namespace(config=config, results_dir=str(tmp_path / "results"), data_dir=None, study=None,
                              address=None, resume=False, show_plan=True, storage=None)
    args.__dict__.update(changes)
    return build_plan(args)


def test_expected_disk_of_the_default_study_is_within_its_bounds(tmp_path):
    from harness.study.disk import STATE_BYTES_PER_PARAM, expected_disk

    plan = _plan(tmp_path)
    disk = expected_disk(plan)
    dense = disk["per_method"]["dense"]
    assert dense["trained_params"] > 100e6 and dense["state_bytes"] == STATE_BYTES_PER_PARAM * dense["trained_params"]
    # resumable: false and final.keep: none -> no state at an evaluation, no dense weights kept.
    assert dense["trial_peak_bytes"] == 0 and dense["kept_bytes"] == 0
    adapters = [disk["per_method"][m] for m in ("mor1e", "lora", "molora")]
    assert all(0 < m["kept_bytes"] < 40e6 for m in adapters)
    assert disk["end_bytes"] == 2 * sum(m["kept_bytes"] for m in adapters)  # two final seeds
    assert disk["end_bytes"] <= 1.5e9 and disk["peak_bytes"] < 3e9
    # With resumable state at the first evaluation, two dense search trials at once would hold 2 x 1.6 GB.
    plan.profile.training["resumable"] = True
    resumable = expected_disk(plan, trainable={m: v["trained_params"] for m, v in disk["per_method"].items()})
    assert resumable["peak_bytes"] - resumable["end_bytes"] == 2 * dense["state_bytes"] > 3e9


def test_a_recorded_trial_leaves_only_a_final_runs_kept_checkpoint(tmp_path):
    from harness.study.disk import prune_trial, run_path

    plan = _plan(tmp_path)

    def run(trial_id):
        root = Path(run_path(plan, trial_id))
        for name in ("checkpoint_1/step24/mp_rank_00_model_states.pt", "checkpoint_2/adapter/a.safetensors",
                     "checkpoint_2/predictions.parquet", "checkpoint_manager_snapshot.json"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"x" * 100)
        return root

    search = run("s1")
    assert prune_trial(plan, "s1", phase="search", method="lora", checkpoint_path=str(search / "checkpoint_2")) == 400
    assert not search.exists()
    final = run("f1")
    assert prune_trial(plan, "f1", phase="final", method="lora", checkpoint_path=str(final / "checkpoint_2")) == 200
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()) == [
        "checkpoint_2/adapter/a.safetensors", "checkpoint_2/predictions.parquet"]
    dense = run("f2")  # final.keep: none in the default profile
    prune_trial(plan, "f2", phase="final", method="dense", checkpoint_path=str(dense / "checkpoint_2"))
    assert not dense.exists()
    prune_trial(plan, "gone", phase="search", method="lora", checkpoint_path=None)  # nothing there: no error
