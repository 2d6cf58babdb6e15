"""Integration tests of one trial: real Ray Train V2, real DeepSpeed (gloo on CPU), tiny-random-llama, twins.

Every trial here uses two datasets' synthetic twins and two CPU workers, with
one Ray instance for the module (starting Ray costs ~10 s per test otherwise).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from harness.trial import TrialConfig
from harness.trial.step import trial_precision

pytestmark = pytest.mark.slow

DATASETS = ("boolq", "copa")
# Learning check: two twins whose conventions a short run learns (docs/benchmarks.md, "Twins: zero-shot and learning checks"). On the
# 14-twin mixture at 48 steps (python -m harness.data.learncheck) piqa gained 58 and hellaswag 55 points.
LEARN_DATASETS = ("piqa", "hellaswag")
LEARN_STEPS = 60


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    from harness.data import write_synthetic

    out = tmp_path_factory.mktemp("twins")
    write_synthetic(out, seed=0, n_train=48, n_validation=16, datasets=DATASETS)
    return str(out)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from harness.ray_env import init_ray

    init_ray(num_cpus=8)
    yield
    ray.shutdown()


def tiny_config(twins, **overrides) -> TrialConfig:
    kwargs = dict(method="mor1e", model="tiny-random-llama", datasets=DATASETS, data_dir=twins,
                  hparams={"r1": 2, "r2": 4, "num_clusters": 4}, learning_rate=1e-2, steps=12, eval_every=6,
                  batch_size=4, warmup_steps=2, train_limit=24, selection_limit=8, report_limit=8,
                  num_workers=2, zero_stage=2, seed=0, torch_threads=1)
    kwargs.update(overrides)
    return TrialConfig(**kwargs)


def reported(run_dir: Path) -> list[dict]:
    """The metrics of every checkpoint the Ray Train controller registered, oldest first."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return []
    try:
        state = json.loads(snapshot.read_text())
    except json.JSONDecodeError:  # being rewritten
        return []
    return [r["metrics"] for r in state.get("checkpoint_results", [])]


def check_trial_result(result: dict, cfg: TrialConfig) -> None:
    assert result["finished"] and result["step"] == cfg.steps
    assert set(result["selection"]) == set(result["report"]) == set(DATASETS)
    for role, limit in (("selection", cfg.selection_limit), ("report", cfg.report_limit)):
        for m in result[role].values():
            assert m["n_examples"] == limit
            assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["acc_norm"] <= 1.0
    assert result["selection_accuracy"] == pytest.approx(
        sum(m["accuracy"] for m in result["selection"].values()) / len(DATASETS))
    assert result["trainable_params"] > 0
    assert result["tokens_per_s"] > 0 and result["peak_rss_mb"] > 100
    assert len(result["peak_rss_mb_per_worker"]) == cfg.num_workers
    assert result["time_to_first_step_s"] > 0
    # Where the worker's time went: every part measured (a resumed run may have saved nothing
    # before its final report).
    parts = ("worker_start_s", "setup_s", "train_time_s", "eval_time_s")
    assert all(result[k] > 0 for k in parts) and result["checkpoint_time_s"] >= 0, result
    assert result["precision"] == trial_precision(cfg, use_gpu=False)
    ckpt = Path(result["checkpoint_path"])
    assert (ckpt / "latest").read_text().strip() == f"step{cfg.steps}"
    assert any((ckpt / f"step{cfg.steps}").iterdir())


def test_mor1e_zero2_two_workers_loss_falls_checkpoint_and_per_dataset_metrics(twins, ray_session, tmp_path):
    from harness.records import append_rows, read_rows
    from harness.trial.driver import run_trial, trial_rows

    cfg = tiny_config(twins, keep_checkpoints=2)  # both evaluations' checkpoints stay, so both reports read back
    result = run_trial(cfg, name="zero2", storage_path=tmp_path)
    check_trial_result(result, cfg)
    history = reported(tmp_path / "zero2")
    assert [m["step"] for m in history] == [6, 12]
    # Loss of the random 49k-vocab model starts near ln(49152) = 10.8 and must fall.
    assert history[0]["loss"] > history[1]["loss"]
    assert history[0]["loss"] < 11.5
    # ZeRO-2 shards optimizer states by rank: both ranks' files are in the merged checkpoint.
    files = {p.name for p in (Path(result["checkpoint_path"]) / "step12").iterdir()}
    assert {f for f in files if "optim_states" in f} >= {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    # The adapter is exported beside the DeepSpeed state and loads into a fresh base model.
    import mor1e
    from harness.models import load_model

    base, _ = load_model("tiny-random-llama", seed=0)
    loaded = mor1e.load_adapter(base, Path(result["checkpoint_path"]) / "adapter")
    assert mor1e.count_trainable(loaded) == result["trainable_params"]
    # The DeepSpeed checkpoint holds the trained tensors and no frozen one, not even the output
    # head that tiny-random-llama ties to its frozen input embedding.
    import torch

    from harness.methods import apply_method

    wrapped = apply_method(load_model("tiny-random-llama", seed=0)[0], cfg.method, cfg.hparams)
    trained = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    assert wrapped.config.tie_word_embeddings
    states = torch.load(Path(result["checkpoint_path"]) / "step12" / "mp_rank_00_model_states.pt",
                        weights_only=False)
    assert set(states["module"]) == trained

    rows = trial_rows(cfg, result, study="test", trial_id="zero2", status="completed")
    append_rows(tmp_path / "leaderboard.parquet", rows)
    table = read_rows(tmp_path / "leaderboard.parquet").to_pandas()
    assert sorted(zip(table["dataset"], table["role"])) == sorted(
        (d, r) for d in DATASETS for r in ("selection", "report"))
    assert (table["steps"] == 12).all() and (table["num_workers"] == 2).all()
    assert (table["precision"] == result["precision"]).all()


def test_zeroshot_run_returns_its_metrics_and_records_rows(twins, ray_session, tmp_path):
    """An evaluation-only run (no weights to checkpoint) still hands its metrics back to the caller."""
    from harness.trial.driver import run_trial, trial_rows

    cfg = tiny_config(twins, method="zeroshot", hparams={}, num_workers=1, steps=None)
    result = run_trial(cfg, name="zs", storage_path=tmp_path)
    assert result["step"] == 0 and result["finished"] and result["trainable_params"] == 0
    assert result["precision"] == "fp32"  # scoring only
    assert result["eval_time_s"] > 0  # which is all its time went to after setup
    assert set(result["selection"]) == set(result["report"]) == set(DATASETS)
    assert all(m["n_examples"] == cfg.report_limit for m in result["report"].values())
    saved = json.loads((Path(result["checkpoint_path"]) / "metrics.json").read_text())
    assert saved["report_accuracy"] == pytest.approx(result["report_accuracy"])
    rows = trial_rows(cfg, result, study="test", trial_id="zs", status="completed")
    assert sorted((r["dataset"], r["role"]) for r in rows) == sorted(
        (d, r) for d in DATASETS for r in ("selection", "report"))


def test_lora_trial_inside_tune_reports_every_evaluation(twins, ray_session, tmp_path):
    """A Tune trial's driver function runs the Train job; each worker report reaches Tune (for ASHA)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from harness.trial.driver import run_trial

    cfg = tiny_config(twins, method="lora", hparams={"rank": 4, "alpha": 8.0}, eval_every=4)
    storage = str(tmp_path / "train")

    def driver(config):
        run_trial(cfg, name=tune.get_context().get_trial_id(), storage_path=storage,
                  callbacks=[TuneReportCallback()])

    tuner = tune.Tuner(
        tune.with_resources(driver, {"cpu": 0.01}),
        tune_config=tune.TuneConfig(metric="selection_accuracy", mode="max", num_samples=1),
        run_config=tune.RunConfig(name="tune", storage_path=str(tmp_path / "tune"), verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors
    history = grid[0].metrics_dataframe
    assert history["step"].tolist() == [4, 8, 12]
    assert history["selection_accuracy"].notna().all()
    final = grid[0].metrics
    assert final["finished"] and final["trainable_params"] > 0
    assert set(final["report"]) == set(DATASETS)
    assert history["loss"].iloc[0] > history["loss"].iloc[-1]


def test_zero3_killed_worker_resumes_from_last_checkpoint(twins, ray_session, tmp_path):
    """ZeRO-3, 2 workers; SIGKILL rank 1 after the first checkpoint: the group restarts from the
    step-6 checkpoint (every rank's parameter shard) and finishes at step 12."""
    from harness.trial.driver import run_trial

    probe = tmp_path / "probe"
    # keep_checkpoints=2: the step-6 checkpoint stays beside step 12, so both reports read back
    cfg = tiny_config(twins, zero_stage=3, fault_probe_dir=str(probe), max_failures=1, keep_checkpoints=2)
    run_dir = tmp_path / "runs" / "fault"
    killed: dict = {}

    def kill_rank1_once():
        deadline = time.time() + 300
        pid_file = probe / "rank1.pid"
        while time.time() < deadline and not pid_file.exists():
            time.sleep(0.2)
        # Kill only once the controller has registered the step-6 checkpoint,
        # so the restart has something to resume from.
        while time.time() < deadline and not any(m["step"] == 6 for m in reported(run_dir)):
            time.sleep(0.2)
        if pid_file.exists():
            killed["pid"] = int(pid_file.read_text())
            os.kill(killed["pid"], signal.SIGKILL)

    watcher = threading.Thread(target=kill_rank1_once, daemon=True)
    watcher.start()
    result = run_trial(cfg, name="fault", storage_path=tmp_path / "runs")
    watcher.join(timeout=5)
    assert "pid" in killed, "the worker never published its pid"
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    check_trial_result(result, cfg)
    assert result["resumed_from_step"] == 6
    history = reported(run_dir)
    assert [m["step"] for m in history] == [6, 12]
    assert history[0]["loss"] > history[1]["loss"]
    # ZeRO-3 partitions the parameters too: every rank wrote its shard.
    files = {p.name for p in (Path(result["checkpoint_path"]) / "step12").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"} <= files


def test_smollm2_mor1e_trial_learns_two_twins_above_zero_shot(ray_session, tmp_path):
    """Learning check: one worker, ZeRO-0, SmolLM2-135M with MoR1E on two short-prompt twins.

    Zero-shot is scored on the same report examples with the plain base model.
    """
    import torch

    from harness.data import write_synthetic
    from harness.evaluate import evaluate_examples
    from harness.models import load_model
    from harness.trial.driver import prepare_data, run_trial

    data_dir = tmp_path / "twins"
    write_synthetic(data_dir, seed=0, n_train=160, n_validation=50, datasets=LEARN_DATASETS)
    cfg = TrialConfig(method="mor1e", model="smollm2-135m", datasets=LEARN_DATASETS, data_dir=str(data_dir),
                      hparams={"num_clusters": 4}, learning_rate=3e-3, steps=LEARN_STEPS, batch_size=8,
                      warmup_steps=3, train_limit=128, selection_limit=16, report_limit=50, eval_every=0,
                      num_workers=1, zero_stage=0, seed=0, scoring="cloze")
    data = prepare_data(cfg)
    base, tokenizer = load_model("smollm2-135m")
    threads = torch.get_num_threads()
    zero_shot = evaluate_examples(base, tokenizer, data.report, progress=False)
    del base
    result = run_trial(cfg, name="learn", storage_path=tmp_path / "runs", data=data)
    torch.set_num_threads(threads)
    gains = {}
    for name in LEARN_DATASETS:
        before, after = zero_shot[name]["accuracy"], result["report"][name]["accuracy"]
        print(f"{name}: zero-shot {100 * before:.0f}% -> trained {100 * after:.0f}% (n={cfg.report_limit})")
        gains[name] = after - before
    # piqa's two cue words name the answer's position: learnt within the budget.
    assert gains["piqa"] >= 0.25, gains
    assert sum(gains.values()) / len(gains) >= 0.15, gains


def test_trial_cli_trains_prints_and_records(twins, tmp_path):
    """`python harness/train.py` end to end, in its own process with its own embedded Ray."""
    import os
    import subprocess
    import sys

    from harness.records import read_rows

    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "out"
    cmd = [sys.executable, str(repo / "harness" / "train.py"), "--method", "lora", "--model", "tiny-random-llama",
           "--datasets", ",".join(DATASETS), "--data-dir", twins, "--steps", "2", "--batch-size", "4",
           "--train-limit", "8", "--selection-limit", "4", "--report-limit", "4", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-3000:]
    table = read_rows(out / "leaderboard.parquet").to_pandas()
    assert sorted(zip(table.dataset, table.role)) == sorted((d, r) for d in DATASETS for r in ("selection", "report"))
    assert (table.status == "completed").all() and (table.steps == 2).all()
    precision = table.precision.iloc[0]
    assert precision in ("fp32", "bf16") and (table.precision == precision).all()
    assert f"| {precision} | tokens/s " in run.stdout
    assert f"recorded {len(table)} rows in {out / 'leaderboard.parquet'}" in run.stdout
