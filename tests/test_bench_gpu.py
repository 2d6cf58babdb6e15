"""The GPU check script's own logic, without a GPU: argument checks, trial parsing and verdicts."""

import numpy as np
import pytest

from harness.bench import gpu
from harness.bench._gpu import trial
from harness.bench._gpu.common import TRIAL_DATASETS


def test_trial_specs_parse_and_refuse_bad_items():
    assert trial.trial_specs("mor1e:2, mor1e:0,lora:3") == [("mor1e", 2), ("mor1e", 0), ("lora", 3)]
    for bad in ("zeroshot:2", "mor1e", "mor1e:4", "", "bogus:1"):
        with pytest.raises(ValueError):
            trial.trial_specs(bad)


@pytest.mark.parametrize("argv", [["--checks", "nope"], ["--methods", "lora,nope"], ["--trials", "mor1e:9"],
                                  ["--steps", "0"]])
def test_bad_arguments_exit_2(argv, capsys):
    assert gpu.main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_hashed_embeddings_are_deterministic_unit_rows():
    texts = ["Anna has more apples than Bob.", "Anna has more apples than Bob.", "A red box is heavy.", ""]
    a, b = trial.hashed_embeddings(texts), trial.hashed_embeddings(texts)
    assert a.shape == (4, 256) and a.dtype == np.float32
    assert np.array_equal(a, b) and np.array_equal(a[0], a[1])
    assert np.allclose(np.linalg.norm(a[:3], axis=1), 1.0) and not a[3].any()


def _trial(**result):
    ok = {"finished": True, "step": 6, "loss": 10.5, "selection": {d: {} for d in TRIAL_DATASETS},
          "report": {d: {} for d in TRIAL_DATASETS}, "tokens_per_s": 100.0, "use_gpu": True}
    return {"steps": 6, "use_gpu": True, "result": {**ok, **result},
            "checkpoint_files": ["latest", "step6"], "adapter_files": ["adapter_config.json",
                                                                       "adapter_model.safetensors"]}


def test_trial_verdict_accepts_a_complete_result_and_names_each_problem():
    assert trial.check_trial_result(_trial()) == []
    assert trial.check_trial_result(_trial(step=3, finished=False))
    assert trial.check_trial_result(_trial(loss=float("nan")))
    assert trial.check_trial_result(_trial(use_gpu=False))
    assert trial.check_trial_result(_trial(report={"copa": {}}))
    missing_adapter = {**_trial(), "adapter_files": []}
    assert any("adapter" in p for p in trial.check_trial_result(missing_adapter))


def test_profiled_step_counts_aten_ops_per_phase_on_the_cpu():
    """--device cpu --profile: each phase's aten ops are counted, and the table sets them against LoRA's."""
    import torch

    from harness.bench._gpu import throughput

    args = gpu._parser().parse_args(["--device", "cpu", "--profile", "--hidden", "64", "--intermediate", "128",
                                     "--layers", "2", "--heads", "4", "--kv-heads", "2", "--vocab", "256",
                                     "--batch", "2", "--seq", "16", "--warmup", "1", "--steps", "1"])
    results = {m: throughput.time_method(m, args, torch.device("cpu")) for m in ("lora", "mor1e")}
    for r in results.values():
        ops = r["profile"]["aten_ops_by_phase"]
        assert set(ops) == set(throughput.PHASES) and all(n > 0 for n in ops.values()), r["profile"]
        assert r["profile"]["aten_ops"] == sum(ops.values()) and r["profile"]["kernel_launches"] == 0
    # MoR1E's routers add operators to every phase; its adapters have more tensors for AdamW to step.
    lora, ours = (results[m]["profile"]["aten_ops_by_phase"] for m in ("lora", "mor1e"))
    assert all(ours[ph] > lora[ph] for ph in throughput.PHASES)
    text = throughput.table(results, args, torch.device("cpu"))
    row = next(line for line in text.splitlines() if line.startswith("| mor1e |") and "aten" not in line
               and " / " in line)
    assert f"{ours['forward'] / lora['forward']:.2f}x" in row
