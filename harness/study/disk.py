"""How much disk a study's checkpoints take: one small, replaceable model.

``expected_disk(plan, trainable)`` is all the rest of the study package asks of it. The model:

- a checkpoint holds the trained tensors in fp32 and AdamW's two moments (12 bytes per trainable
  parameter; adapters save their trained tensors only, full finetuning the whole model);
- a trial reports a checkpoint at every evaluation (search: ``ceil(steps / eval_every)``; final
  runs and the reference: one, at the end) and storage keeps its newest ``keep_checkpoints``;
- at the end every trial's kept checkpoints remain; at the peak, the trials that run at the same
  time also hold one more checkpoint each on its way to storage (the worker's temporary copy).

Predictions, the leaderboard and the twins are small beside the checkpoints and are left out.
"""

from __future__ import annotations

import math

# fp32 weights + AdamW's exp_avg and exp_avg_sq, per trainable parameter.
BYTES_PER_TRAINABLE = 12


def expected_disk(plan, trainable: dict[str, int | None]) -> dict:
    """{"peak_bytes", "end_bytes", "per_method": {method: bytes at the end}} of ``plan``'s study, or
    None values where a method's trainable parameters are unknown. ``trainable``: {method: count}."""
    from harness.study.plan import _default_field, trial_counts

    p = plan.profile
    t = p.training
    keep = t.get("keep_checkpoints", _default_field("keep_checkpoints"))
    steps, every = t.get("steps"), t.get("eval_every", _default_field("eval_every"))
    search_ckpts = min(keep, math.ceil(steps / every)) if steps and every else 1
    per_method: dict[str, int | None] = {}
    largest = 0
    for phase, methods in trial_counts(plan).items():
        for method, trials in methods.items():
            params = trainable.get(method)
            if method not in per_method:
                per_method[method] = 0
            if params is None:
                per_method[method] = None
                continue
            if phase == "reference" or params == 0:
                continue  # an evaluation-only run keeps its metrics, no weights
            size = params * BYTES_PER_TRAINABLE
            largest = max(largest, size)
            if per_method[method] is not None:
                per_method[method] += trials * size * (search_ckpts if phase == "search" else 1)
    if any(v is None for v in per_method.values()):
        return {"peak_bytes": None, "end_bytes": None, "per_method": per_method}
    end = sum(per_method.values())
    return {"peak_bytes": end + p.max_concurrent_trials * largest, "end_bytes": end, "per_method": per_method}
