"""Fast tests of one trial's pieces: config validation, schedule, data order, tokenisation, rows, CLI bad input."""

from __future__ import annotations

import math

import pytest

from harness.data import DATASETS, Example
from harness.trial.config import DEFAULT_STEPS, TrialConfig
from harness.trial.step import (
    answer_loss,
    batch_indices,
    collate,
    deepspeed_config,
    encode_training_example,
    lr_multiplier,
)
from harness.trial.worker import evaluate_split, mean_accuracy


# ---------------------------------------------------------------- TrialConfig


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(method="nope"), "method"),
        (dict(datasets=("boolq", "nope")), "dataset"),
        (dict(datasets=()), "datasets"),
        (dict(datasets=("boolq", "boolq")), "duplicates"),
        (dict(zero_stage=4), "zero_stage"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(steps=0), "steps"),
        (dict(steps=10, epochs=1.0), "steps or epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_workers=0), "num_workers"),
        (dict(schedule="step"), "schedule"),
        (dict(dtype="fp8"), "dtype"),
        (dict(scoring_dtype="fp16"), "scoring_dtype"),
        (dict(use_gpu=False, dtype="fp16"), "GPU"),
        (dict(scoring="free"), "scoring"),
        (dict(hparams={"r3": 2}), "r3"),
        (dict(hparams={"router_temperature": 0.0}), "router_temperature"),
        (dict(max_seq_len=4), "max_seq_len"),
        (dict(min_lr_ratio=1.5), "min_lr_ratio"),
    ],
)
def test_trial_config_rejects_bad_values_naming_the_field(kwargs, field):
    base = dict(method="mor1e", model="tiny-random-llama")
    with pytest.raises(ValueError, match=field):
        TrialConfig(**{**base, **kwargs})


def test_trial_config_defaults_round_trip_and_steps():
    cfg = TrialConfig(method="lora", datasets=["boolq", "copa"], batch_size=4, grad_accum=2, num_workers=2)
    assert cfg.datasets == ("boolq", "copa")
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    assert TrialConfig(method="mor1e", datasets="all").datasets == DATASETS
    assert TrialConfig(method="mor1e", datasets="copa,rte").datasets == ("copa", "rte")
    assert cfg.effective_batch() == 16
    assert cfg.total_steps(1000) == DEFAULT_STEPS
    assert TrialConfig(method="lora", steps=7).total_steps(1000) == 7
    # 2 epochs of 100 examples at effective batch 16 -> ceil(200 / 16) = 13 steps
    assert TrialConfig(method="lora", epochs=2.0, batch_size=4, grad_accum=2, num_workers=2).total_steps(100) == 13
    assert TrialConfig(method="zeroshot").total_steps(100) == 0
    with pytest.raises(ValueError, match="unknown TrialConfig field"):
        TrialConfig.from_dict({"method": "lora", "stepz": 3})


def test_resolved_dtype_and_deepspeed_config():
    cfg = TrialConfig(method="mor1e", zero_stage=3, batch_size=4, grad_accum=2, num_workers=2, max_grad_norm=0.5)
    ds = deepspeed_config(cfg, use_gpu=False)
    assert ds["zero_optimization"] == {"stage": 3}
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["optimizer"]["params"]["fused"] is True  # passed through to torch.optim.AdamW
    assert "bf16" not in ds and "fp16" not in ds and "torch_autocast" not in ds  # fp32 on a CPU by default
    assert deepspeed_config(cfg, use_gpu=True)["bf16"] == {"enabled": True}
    # auto: bf16 on a GPU and on a CPU with bf16 matrix units, where it is autocast over fp32 weights.
    assert cfg.resolved_dtype(False) == "fp32" and cfg.resolved_dtype(False, cpu_bf16=True) == "bf16"
    assert TrialConfig(method="mor1e", dtype="fp32").resolved_dtype(True, cpu_bf16=True) == "fp32"
    cpu_bf16 = deepspeed_config(cfg, use_gpu=False, precision="bf16")
    assert cpu_bf16["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in cpu_bf16
    fp16 = TrialConfig(method="mor1e", dtype="fp16")
    assert deepspeed_config(fp16, use_gpu=True)["fp16"]["enabled"] is True
    assert "gradient_clipping" not in deepspeed_config(TrialConfig(method="dense", max_grad_norm=0.0), use_gpu=False)


# ---------------------------------------------------------------- schedule and data order


def test_lr_multiplier_warmup_then_cosine_to_min_ratio():
    f = lambda s: lr_multiplier(s, total=11, warmup=2, schedule="cosine", min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0)
    # after warmup, progress p = (s - 2) / 8; cosine: 0.1 + 0.9 * (1 + cos(pi p)) / 2
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(10) == pytest.approx(0.1)
    values = [f(s) for s in range(2, 11)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_multiplier(5, total=11, warmup=0, schedule="linear", min_ratio=0.0) == pytest.approx(0.5)
    assert lr_multiplier(9, total=11, warmup=3, schedule="constant", min_ratio=0.0) == 1.0
    # warmup longer than the run is capped so the last step is at the peak, not beyond
    assert lr_multiplier(0, total=1, warmup=5, schedule="cosine", min_ratio=0.0) == pytest.approx(1.0)


def test_batch_indices_shard_disjointly_cover_each_epoch_and_depend_only_on_the_step():
    n, world, bs = 24, 2, 3
    per_epoch = n // (world * bs)  # 4 micro-steps per epoch
    for epoch in range(2):
        seen = []
        for m in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            shards = [batch_indices(n, seed=5, micro_step=m, batch_size=bs, rank=r, world=world) for r in range(world)]
            assert not set(shards[0]) & set(shards[1])
            seen += shards[0] + shards[1]
        assert sorted(seen) == list(range(n))  # every example exactly once per epoch
    first = [batch_indices(n, seed=5, micro_step=m, batch_size=bs, rank=0, world=world) for m in range(4)]
    other_seed = [batch_indices(n, seed=6, micro_step=m, batch_size=bs, rank=0, world=world) for m in range(4)]
    assert first != other_seed
    assert batch_indices(n, seed=5, micro_step=2, batch_size=bs, rank=0, world=world) == first[2]
    # the order of epoch 1 is a different permutation than epoch 0
    e0 = sum((batch_indices(n, seed=5, micro_step=m, batch_size=bs, rank=0, world=1) for m in range(8)), [])
    e1 = sum((batch_indices(n, seed=5, micro_step=m, batch_size=bs, rank=0, world=1) for m in range(8, 16)), [])
    assert sorted(e0) == sorted(e1) == list(range(n)) and e0 != e1


def test_length_grouping_keeps_each_epoch_a_permutation_and_cuts_padding():
    n, world, bs, group = 60, 2, 3, 4
    lengths = tuple((i * 37) % 50 + 5 for i in range(n))
    steps = math.ceil(n / (world * bs))

    def epoch(**kw):
        return [[batch_indices(n, seed=1, micro_step=m, batch_size=bs, rank=r, world=world, **kw)
                 for r in range(world)] for m in range(steps)]

    plain, grouped = epoch(), epoch(lengths=lengths, group=group)
    for shards in (plain, grouped):
        flat = [i for step in shards for shard in step for i in shard]
        assert sorted(flat) == list(range(n))  # still every example once per epoch
        assert all(not set(a) & set(b) for a, b in shards)  # ranks still disjoint

    def padded(shards):  # tokens computed when each micro-batch is padded to its longest row
        return sum(len(shard) * max(lengths[i] for i in shard) for step in shards for shard in step)

    assert padded(grouped) < 0.8 * padded(plain)
    # a run of `group` micro-steps holds the same examples as without grouping: only their order changed
    span = group
    assert sorted(sum((sum(s, []) for s in grouped[:span]), [])) == sorted(sum((sum(s, []) for s in plain[:span]), []))


# ---------------------------------------------------------------- tokenisation


@pytest.fixture(scope="module")
def tokenizer():
    from harness.models import load_tokenizer

    return load_tokenizer("tiny-random-llama")


def test_training_tokens_are_the_scored_tokens(tokenizer):
    from harness.evaluate import encode_pair

    prompt, target = "Q: is the sky blue?\nA. no\nB. yes\nAnswer:", " B"
    ids, n_ctx = encode_training_example(tokenizer, prompt, target, max_seq_len=512)
    ctx, cont = encode_pair(tokenizer, prompt, target)
    assert ids == ctx + cont and n_ctx == len(ctx)
    short, n_short = encode_training_example(tokenizer, prompt, target, max_seq_len=8)
    assert len(short) == 8 and short[-len(cont):] == cont and short[:n_short] == ctx[-n_short:]

    right = collate([(ids, n_ctx), (short, n_short)], pad_id=0, left=False)
    pad = len(ids) - len(short)
    assert right.input_ids.shape == (2, len(ids)) and right.position_ids is None
    assert right.labels[0].tolist() == [-100] * n_ctx + cont
    assert right.labels[1].tolist() == [-100] * n_short + cont + [-100] * pad
    assert right.attention_mask[1].tolist() == [1] * len(short) + [0] * pad

    left = collate([(ids, n_ctx), (short, n_short)], pad_id=0)
    assert left.keep == len(cont)
    assert left.labels[1].tolist() == [-100] * (pad + n_short) + cont
    assert left.attention_mask[1].tolist() == [0] * pad + [1] * len(short)
    assert left.position_ids[1].tolist() == [0] * pad + list(range(len(short)))
    assert left.input_ids[1, pad:].tolist() == short


@pytest.mark.parametrize("method, hparams", [("lora", {"rank": 4}), ("mor1e", {"r1": 2, "r2": 2, "num_clusters": 2})])
def test_answer_only_loss_equals_the_full_model_loss(tokenizer, method, hparams):
    """Left padding + logits at the answer positions only: the loss and gradients of model(labels=...)."""
    import torch

    import mor1e
    from harness.evaluate import forward_options
    from harness.methods import apply_method
    from harness.models import load_model

    model, _ = load_model("tiny-random-llama", seed=0)
    torch.manual_seed(0)
    model = apply_method(model, method, hparams)
    for p in model.parameters():  # adapters start as a no-op; make them matter
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    pairs = [("Q: is the sky blue?\nAnswer:", " yes it is"), ("Premise: a man sleeps. So", " he rests"),
             ("Pick the odd one out: cat dog car\nAnswer:", " car")]
    encoded = [encode_training_example(tokenizer, p, t, max_seq_len=64) for p, t in pairs]
    opts = forward_options(model)
    assert opts["position_ids"] and opts["keep_arg"]

    def loss_and_grads(batch, keep_arg):
        model.zero_grad()
        if method == "mor1e":
            mor1e.set_intuition(model, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
        loss = answer_loss(model, batch, keep_arg)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    full, full_grads = loss_and_grads(collate(encoded, 0, left=False), None)
    fast, fast_grads = loss_and_grads(collate(encoded, 0, left=True), opts["keep_arg"])
    assert fast == pytest.approx(full, rel=1e-5)
    for name, g in full_grads.items():
        torch.testing.assert_close(fast_grads[name], g, rtol=1e-3, atol=1e-6, msg=name)


def test_example_reduction_weighs_every_example_alike(tokenizer):
    """loss_reduction "example": the mean over examples of each one's mean answer-token loss, on the
    left-padded fast path and the right-padded full path alike; "token" weighs answers by length."""
    import torch

    from harness.evaluate import forward_options
    from harness.models import load_model

    model, _ = load_model("tiny-random-llama", seed=0)
    pairs = [("Q: is the sky blue?\nAnswer:", " yes"), ("Premise: a man sleeps. So", " he rests in a chair now"),
             ("Pick the odd one out: cat dog car\nAnswer:", " car")]
    encoded = [encode_training_example(tokenizer, p, t, max_seq_len=64) for p, t in pairs]
    keep_arg = forward_options(model)["keep_arg"]
    with torch.no_grad():
        alone = [float(answer_loss(model, collate([e], 0, left=False), None)) for e in encoded]
        sizes = [len(ids) - n_ctx for ids, n_ctx in encoded]
        by_example = sum(alone) / len(alone)
        by_token = sum(a * n for a, n in zip(alone, sizes)) / sum(sizes)
        assert abs(by_example - by_token) > 1e-3  # the two reductions differ on this batch
        for left, arg in ((True, keep_arg), (False, None)):
            batch = collate(encoded, 0, left=left)
            assert float(answer_loss(model, batch, arg, "example")) == pytest.approx(by_example, rel=1e-5)
            assert float(answer_loss(model, batch, arg, "token")) == pytest.approx(by_token, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        answer_loss(model, collate(encoded, 0), keep_arg, "sum")
    with pytest.raises(ValueError, match="loss_reduction"):
        TrialConfig(method="lora", loss_reduction="sum")


def test_mean_accuracy_weighs_datasets_equally():
    per = {"a": {"accuracy": 1.0, "n_examples": 100}, "b": {"accuracy": 0.0, "n_examples": 2}}
    assert mean_accuracy(per) == 0.5
    assert math.isnan(mean_accuracy({}))


def test_evaluate_split_on_one_worker_matches_evaluate_examples(tokenizer):
    from harness.evaluate import evaluate_examples
    from harness.models import load_model
    from harness.trial.worker import _Collectives

    model, tok = load_model("tiny-random-llama", seed=0)
    examples = [
        Example(id=f"{d}-{i}", dataset=d, prompt=f"Item {i} of {d}.\nA. one\nB. two\nAnswer:", choices=("one", "two"),
                options=(" A", " B"), gold=i % 2, text=f"Item {i} of {d}.")
        for d in ("boolq", "copa") for i in range(5)
    ]
    cfg = TrialConfig(method="zeroshot", model="tiny-random-llama", datasets=("boolq", "copa", "rte"))
    got, predictions = evaluate_split(model, tok, examples, None, role="report", cfg=cfg, rank=0, world=1,
                                      replicate=False, comm=_Collectives(1, "cpu"))
    want = evaluate_examples(model, tok, examples, progress=False)
    assert set(got) == {"boolq", "copa"}  # rte has no examples: no entry
    for d in want:
        assert got[d]["n_examples"] == want[d]["n_examples"] == 5
        assert got[d]["accuracy"] == pytest.approx(want[d]["accuracy"])
        assert got[d]["acc_norm"] == pytest.approx(want[d]["acc_norm"])
    # One prediction per example, in order, whose hits are the accuracy exactly.
    assert [p["example_id"] for p in predictions] == [e.id for e in examples]
    assert {p["role"] for p in predictions} == {"report"}
    for d in want:
        rows = [p for p in predictions if p["dataset"] == d]
        assert sum(p["pred"] == p["gold"] for p in rows) / len(rows) == got[d]["accuracy"]
        assert sum(p["pred_norm"] == p["gold"] for p in rows) / len(rows) == got[d]["acc_norm"]


def test_scoring_precision_follows_scoring_dtype_on_a_cpu_and_the_module_on_a_gpu():
    from harness.trial.step import scoring_precision

    trained, zeroshot = TrialConfig(method="lora"), TrialConfig(method="zeroshot")
    assert scoring_precision(trained, False, "bf16") == "fp32"  # the default: exact scoring
    assert scoring_precision(TrialConfig(method="lora", scoring_dtype="auto"), False, "bf16") == "bf16"
    assert scoring_precision(TrialConfig(method="lora", scoring_dtype="auto"), False, "fp32") == "fp32"
    # A scoring-only run with auto scores as the study's trained runs do (dtype auto -> bf16 here).
    assert scoring_precision(TrialConfig(method="zeroshot", scoring_dtype="auto"), False, "bf16") == "bf16"
    assert scoring_precision(TrialConfig(method="lora", scoring_dtype="bf16"), False, "fp32") == "bf16"
    assert scoring_precision(trained, True, "bf16") == "bf16" and scoring_precision(zeroshot, True, "bf16") == "fp32"


def test_bf16_scoring_runs_under_autocast_and_stays_close_to_fp32(tokenizer):
    import torch

    from harness.evaluate import score_examples
    from harness.models import load_model
    from harness.trial.step import scoring_autocast

    model, tok = load_model("tiny-random-llama", seed=0)
    examples = [Example(id=f"copa-{i}", dataset="copa", prompt=f"Item {i} is", choices=("one", "two"),
                        options=(" one more", " two of them"), gold=0, text=f"Item {i}") for i in range(4)]
    fp32 = score_examples(model, tok, examples, progress=False)
    with scoring_autocast("bf16", use_gpu=False):
        assert torch.is_autocast_enabled("cpu")
        bf16 = score_examples(model, tok, examples, progress=False)
    with scoring_autocast("fp32", use_gpu=False):
        assert not torch.is_autocast_enabled("cpu")
    flat32, flat16 = [x for row in fp32 for x in row], [x for row in bf16 for x in row]
    assert flat32 != flat16  # the matrix products really ran in bf16
    assert flat16 == pytest.approx(flat32, rel=0.05)


# ---------------------------------------------------------------- rows


def test_trial_rows_fit_the_leaderboard_schema(tmp_path):
    from harness.records import append_rows, read_rows
    from harness.trial.driver import trial_rows

    cfg = TrialConfig(method="mor1e", model="tiny-random-llama", datasets=("boolq", "anli"),
                      hparams={"r1": 2, "r2": 4, "num_clusters": 3, "router_temperature": 0.5}, seed=3)
    m = lambda a: {"accuracy": a, "acc_norm": a / 2, "n_examples": 10}  # noqa: E731
    result = {"step": 30, "selection": {"boolq": m(0.6), "anli": m(0.4)}, "report": {"boolq": m(0.7), "anli": m(0.3)},
              "trainable_params": 1234, "tokens_per_s": 99.0, "peak_rss_mb": 900.0, "wall_s": 12.0}
    rows = trial_rows(cfg, result, study="s", trial_id="t1", status="completed")
    assert len(rows) == 4
    by = {(r["dataset"], r["role"]): r for r in rows}
    assert by[("anli", "report")]["split"] == "dev_r1" and by[("boolq", "report")]["split"] == "validation"
    assert by[("anli", "report")]["accuracy"] == 0.3 and by[("boolq", "selection")]["acc_norm"] == 0.3
    r = rows[0]
    assert (r["num_experts"], r["num_clusters"], r["router_temperature"]) == (8, 3, 0.5)
    assert (r["trainable_params"], r["steps"], r["seed"], r["scoring"]) == (1234, 30, 3, "letter")
    failed = trial_rows(TrialConfig(method="lora"), None, study="s", trial_id="t2", status="failed",
                        status_reason="WorkerGroupError: boom")
    assert len(failed) == 1 and failed[0]["accuracy"] is None and failed[0]["num_clusters"] is None
    path = tmp_path / "leaderboard.parquet"
    assert append_rows(path, rows + failed) == 5
    assert read_rows(path).num_rows == 5


# ---------------------------------------------------------------- CLI bad input


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "nope"], "unknown method"),
        (["--method", "mor1e", "--model", "not a model"], "unknown model"),
        (["--method", "mor1e", "--data-dir", "/nonexistent/mor1e-data"], "does not exist"),
        (["--method", "mor1e", "--workers", "4096"], "4096 workers"),
        (["--method", "mor1e", "--datasets", "boolq,nope"], "unknown dataset"),
        (["--method", "mor1e", "--hparams", "{not json"], "--hparams"),
        (["--method", "lora", "--hparams", '{"r1": 2}'], "r1"),
        (["--method", "mor1e", "--zero-stage", "5"], "zero-stage"),
        (["--method", "mor1e", "--steps", "0"], "steps"),
    ],
)
def test_cli_bad_input_one_line_exit_2_before_ray(argv, message, capsys, tmp_path):
    import ray

    from harness.train import main

    with pytest.raises(SystemExit) as exc_info:
        raise SystemExit(main([*argv, "--out", str(tmp_path / "out")]))
    assert exc_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not ray.is_initialized()
    assert not (tmp_path / "out").exists()


def test_scored_roles_are_checked_and_round_trip():
    cfg = TrialConfig(method="lora", model="tiny-random-llama", datasets=("boolq",), scored_roles=["report"])
    assert cfg.scored_roles == ("report",)
    assert TrialConfig.from_dict(cfg.to_dict()).scored_roles == ("report",)
    assert TrialConfig(method="lora", scored_roles="selection,report").scored_roles == ("selection", "report")
    for bad in ((), ("train",), ("report", "report"), ("selection", "test")):
        with pytest.raises(ValueError, match="scored_roles"):
            TrialConfig(method="lora", scored_roles=bad)
