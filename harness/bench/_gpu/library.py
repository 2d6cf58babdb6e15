"""GPU check section ``library``: the adapter library on the device (``tiny-random-llama``).

For mor1e, molora and lora: a freshly wrapped model equals its base exactly (fp32 and bf16),
gradients reach the adapter parameters and nothing else, and bf16 and fp32 logits of a model with
nonzero adapters agree; ``option_logprobs`` gives the same numbers batched as one pair at a time.
"""

from __future__ import annotations

import copy

import numpy as np

from harness.bench._gpu.common import TRIAL_DATASETS, Report, cast_params, randomise_adapters, twins


ADAPTER_METHODS = {
    "mor1e": {"r1": 4, "r2": 8, "num_clusters": 3},
    "molora": {"num_experts": 4, "rank": 2},
    "lora": {"rank": 4},
}
# Tolerances. Batched vs one-at-a-time is the evaluate module's own contract (fp32); bf16 vs
# fp32 is the relative L2 error of the logits, which for bf16's 8-bit mantissa stays at a few
# parts in a thousand per layer.
LOGPROB_ATOL = 1e-4
BF16_REL_TOL = 5e-2


def run(report: Report, args, device, tmp: str) -> None:
    """The adapter library on ``device``: exact at init, gradients, bf16 vs fp32, batched scoring."""
    import torch

    import mor1e
    from harness.data import load_examples
    from harness.evaluate import option_logprobs
    from harness.methods import apply_method
    from harness.models import load_model

    section = f"library ({device.type})"
    base, tok = load_model("tiny-random-llama", seed=0)
    base.to(device)
    batch = tok(["The quick brown fox jumps over", "Hello"], return_tensors="pt", padding=True).to(device)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    scores = torch.rand(2, 3, generator=torch.Generator().manual_seed(0))

    def logits(model, with_scores):
        with torch.no_grad(), mor1e.intuition(model, scores if with_scores else None):
            return model(**batch).logits

    for method, hparams in ADAPTER_METHODS.items():
        # Exact equality at init, in fp32 and in bf16 (parameters cast after wrapping, as in a trial).
        for dtype in (torch.float32, torch.bfloat16):
            ref = copy.deepcopy(base)
            cast_params(ref, dtype)
            expected = logits(ref, False)
            model = apply_method(copy.deepcopy(base), method, hparams)
            cast_params(model, dtype)
            got = logits(model, method == "mor1e")
            diff = (got.float() - expected.float()).abs().max().item()
            name = str(dtype).removeprefix("torch.")
            report.add(section, f"{method}: wrapped == base at init ({name})", torch.equal(got, expected),
                       "exactly equal" if torch.equal(got, expected) else f"max abs diff {diff:.3g}")
            del ref, model

        # Gradients: every adapter parameter and nothing else.
        model = apply_method(copy.deepcopy(base), method, hparams)
        model.train()
        with mor1e.intuition(model, scores if method == "mor1e" else None):
            loss = model(**batch, labels=labels).loss + mor1e.aux_loss(model).to(device)
        loss.backward()
        params = dict(model.named_parameters())
        with_grad = {n for n, p in params.items() if p.grad is not None}
        adapter = {n for n in params if mor1e.is_adapter_param(n)}
        on_device = all(params[n].grad.device.type == device.type for n in with_grad)
        finite = all(bool(torch.isfinite(params[n].grad).all()) for n in with_grad)
        ok = bool(with_grad) and with_grad == adapter and on_device and finite
        report.add(section, f"{method}: gradients reach only adapter params", ok,
                   f"{len(with_grad)}/{len(params)} tensors have a grad, {len(adapter)} adapter tensors"
                   + ("" if on_device and finite else ", grads not on device or not finite"))
        del model

        # bf16 vs fp32 with nonzero adapters.
        model = apply_method(copy.deepcopy(base), method, hparams)
        randomise_adapters(model)
        ref32 = logits(model, method == "mor1e").float()
        model16 = copy.deepcopy(model)
        cast_params(model16, torch.bfloat16)
        got16 = logits(model16, method == "mor1e").float()
        mask = batch["attention_mask"].bool()
        rel = ((got16 - ref32)[mask].norm() / ref32[mask].norm()).item()
        report.add(section, f"{method}: bf16 logits vs fp32 (nonzero adapters)", rel <= BF16_REL_TOL,
                   f"relative L2 error {rel:.2e} (tolerance {BF16_REL_TOL:g})")
        del model, model16

    # option_logprobs: batched == one pair at a time.
    data_dir = twins(tmp)
    model = apply_method(copy.deepcopy(base), "mor1e", ADAPTER_METHODS["mor1e"])
    randomise_adapters(model)
    for fmt in ("cloze", "letter"):
        examples = []
        for name in TRIAL_DATASETS:
            examples += load_examples(name, "report", data_dir=data_dir, fmt=fmt, limit=6)
        contexts = [e.prompt for e in examples for _ in e.options]
        conts = [o for e in examples for o in e.options]
        pair_scores = np.random.default_rng(0).random((len(conts), 3), dtype=np.float32)
        results = {}
        for dtype in (torch.float32, torch.bfloat16):
            m = copy.deepcopy(model)
            cast_params(m, dtype)
            batched = option_logprobs(m, tok, contexts, conts, batch_size=16, intuition_scores=pair_scores)
            single = [option_logprobs(m, tok, [c], [o], batch_size=1, intuition_scores=pair_scores[i:i + 1])[0]
                      for i, (c, o) in enumerate(zip(contexts, conts))]
            results[dtype] = float(np.max(np.abs(np.array(batched) - np.array(single))))
            del m
        diff32, diff16 = results[torch.float32], results[torch.bfloat16]
        report.add(section, f"option_logprobs batched == single ({fmt}, {len(conts)} pairs)",
                   diff32 <= LOGPROB_ATOL,
                   f"fp32 max abs diff {diff32:.2e} (tolerance {LOGPROB_ATOL:g}); bf16 max abs diff {diff16:.2e} (info)")
    del model, base
