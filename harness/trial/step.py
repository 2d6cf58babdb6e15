"""What a trial's training step is made of, as pure functions (unit-tested without Ray); they run in each
Ray Train worker (``harness.trial.worker`` calls them).

The learning-rate schedule, the data order (a function of the step alone, so a resumed run sees
the batches an uninterrupted one would have), training examples encoded exactly as they are
scored, left-padded batches and the answer-only loss, the precision a trial trains in, and its
DeepSpeed config.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.trial.config import LOSS_REDUCTIONS, TrialConfig


def lr_multiplier(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Factor on the peak learning rate for optimizer step ``step`` (0-based).

    Linear warmup over ``warmup`` steps (capped so at least one step follows it),
    then cosine or linear decay to ``min_ratio`` at the last step, or constant.
    """
    warmup = min(warmup, max(total - 1, 0))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(total - 1 - warmup, 1)
    progress = min(max((step - warmup) / span, 0.0), 1.0)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - min_ratio) * progress


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int, lengths: tuple[int, ...] | None = None, group: int = 1) -> np.ndarray:
    """Permutation of the mixture for one epoch; the same on every rank and after a restart.

    With ``lengths`` and ``group`` > 1, each run of ``group`` consecutive
    positions of the shuffle is sorted longest first: a micro-batch then holds
    examples of similar length and carries little padding, while the shuffle
    still decides which examples meet.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if lengths is None or group <= 1:
        return order
    lens = np.asarray(lengths)
    for start in range(0, n, group):
        chunk = order[start:start + group]
        order[start:start + group] = chunk[np.argsort(-lens[chunk], kind="stable")]
    return order


def batch_indices(n: int, *, seed: int, micro_step: int, batch_size: int, rank: int, world: int,
                  lengths: tuple[int, ...] | None = None, group: int = 1) -> list[int]:
    """Mixture indices of ``rank``'s micro-batch number ``micro_step`` (counted over the whole run).

    Micro-step m consumes positions [m·world·B, (m+1)·world·B) of the endless
    stream of shuffled epochs; rank r takes the r-th slice of B. Disjoint across
    ranks, and a function of the step alone, so a resumed run sees the data an
    uninterrupted run would have. ``lengths`` and ``group`` (micro-steps per
    length-sorted run) reduce padding; see ``epoch_order``.
    """
    span = group * world * batch_size if lengths is not None else 1
    start = (micro_step * world + rank) * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, n)
        out.append(int(epoch_order(n, seed, epoch, lengths, span)[offset]))
    return out


def encode_training_example(tokenizer, prompt: str, target: str, max_seq_len: int) -> tuple[list[int], int]:
    """``(input_ids, n_context)`` for one example, tokenised exactly as it is scored.

    Too-long sequences lose context tokens from the left; the answer is kept.
    """
    from harness.evaluate import encode_pair

    ctx, cont = encode_pair(tokenizer, prompt, target)
    cont = cont[: max_seq_len - 1]
    ctx = ctx[-(max_seq_len - len(cont)):]
    return ctx + cont, len(ctx)


@dataclass
class Batch:
    """One training micro-batch. Left-padded (``position_ids`` set) or right-padded (``position_ids`` None)."""

    input_ids: Any
    attention_mask: Any
    labels: Any  # -100 except on answer tokens
    position_ids: Any
    keep: int  # the longest answer in tokens; left-padded, every answer lies in the last ``keep`` columns

    def to(self, device) -> "Batch":
        move = (lambda t: None if t is None else t.to(device))
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.labels), move(self.position_ids),
                     self.keep)


def collate(encoded: list[tuple[list[int], int]], pad_id: int, *, left: bool = True) -> Batch:
    """Pad ``(input_ids, n_context)`` rows into a ``Batch``; ``left`` puts the padding first."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for b, (ids, n_ctx) in enumerate(encoded):
        start = width - len(ids) if left else 0
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[b, start:start + len(ids)] = t
        attention[b, start:start + len(ids)] = 1
        labels[b, start + n_ctx:start + len(ids)] = t[n_ctx:]
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0) if left else None
    keep = max(len(ids) - n_ctx for ids, n_ctx in encoded)
    return Batch(input_ids, attention, labels, position_ids, keep)


def answer_loss(model, batch: Batch, keep_arg: str | None, reduction: str = "token"):
    """Cross-entropy over the answer tokens of a batch.

    ``reduction``: "token" is the mean over every answer token of the batch (the loss of
    ``model(labels=...)``, as the authors train), so an example weighs as much as it has answer
    tokens; "example" is the mean over examples of each example's mean over its own answer
    tokens, so a one-token " yes" weighs as much as a ten-token answer beside it.

    A left-padded batch asks the model for logits at its last ``keep + 1``
    positions only (``keep_arg``, e.g. ``logits_to_keep``): every answer token
    is predicted from there, and the vocabulary projection of the context
    positions, which the loss ignores, is never computed.
    """
    import torch.nn.functional as F

    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(LOSS_REDUCTIONS)}, got {reduction!r}")
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if batch.position_ids is None or keep_arg is None:
        if reduction == "token":
            return model(**kwargs, labels=batch.labels).loss
        if batch.position_ids is not None:
            kwargs["position_ids"] = batch.position_ids
        logits = model(**kwargs).logits[:, :-1].float()
        targets = batch.labels[:, 1:]
    else:
        kwargs["position_ids"] = batch.position_ids
        kwargs[keep_arg] = batch.keep + 1
        logits = model(**kwargs).logits[:, :-1].float()
        targets = batch.labels[:, -batch.keep:]
    if reduction == "token":
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    # (B, T) per-token losses, 0 off the answer; each row's mean over its own answer tokens.
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    counts = (targets != -100).sum(-1)
    per_example = per_token.sum(-1) / counts.clamp(min=1)
    return per_example[counts > 0].mean()


def cpu_has_bf16_matmul() -> bool:
    """True on CPUs with bf16 matrix instructions: AMX tiles (Intel) or AVX512-BF16 (e.g. AMD EPYC).

    On both, bf16 autocast trains faster than fp32 (docs/benchmarks.md, "Precision": 1.28x per trial step with
    AMX; 1.66x per LoRA step of 8x48 tokens on one thread of an EPYC with AVX512-BF16), so
    ``dtype: auto`` picks it there.
    """
    import torch

    for probe_name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(torch.cpu, probe_name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:
            continue
    return False


def trial_precision(cfg: TrialConfig, use_gpu: bool) -> str:
    """The precision this process trains ``cfg`` in (``dtype: auto`` looks at the hardware)."""
    return cfg.resolved_dtype(use_gpu, cpu_bf16=not use_gpu and cpu_has_bf16_matmul())


def build_deepspeed_cpu_op() -> None:
    """Build, or load from torch's extension cache, the C++ op DeepSpeed's CPU accelerator loads in
    every process that starts its communication backend (its shared-memory collectives). The first
    load on a machine compiles it, a minute or more; later loads find it in the cache. Call it in
    a process of its own: it selects DeepSpeed's CPU accelerator before importing deepspeed."""
    import os

    os.environ["DS_ACCELERATOR"] = "cpu"
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def scoring_precision(cfg: TrialConfig, use_gpu: bool, precision: str) -> str:
    """The precision a trial scores in; ``precision`` is ``trial_precision``'s answer.

    On a GPU the module's own dtype: DeepSpeed's bf16/fp16 modes hold a training module in the
    training dtype, a scoring-only run keeps fp32. On a CPU ``cfg.scoring_dtype``, where ``auto``
    follows ``precision`` (bf16 there is autocast over fp32 weights, as in training).
    """
    if use_gpu:
        return precision if cfg.trains else "fp32"
    return precision if cfg.scoring_dtype == "auto" else cfg.scoring_dtype


def scoring_autocast(precision: str, use_gpu: bool):
    """The context scoring runs in: bf16 autocast on a CPU scoring in bf16, else nothing."""
    import torch

    if precision == "bf16" and not use_gpu:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def deepspeed_config(cfg: TrialConfig, *, use_gpu: bool, precision: str | None = None) -> dict[str, Any]:
    """The DeepSpeed config of a trial (optimizer AdamW through torch; scheduler given separately).

    ``precision`` is ``trial_precision``'s answer (default: ``cfg.resolved_dtype(use_gpu)``). bf16
    on a GPU is DeepSpeed's bf16 mode; on a CPU it is DeepSpeed's ``torch_autocast``: fp32
    weights, gradients and optimizer state, with the forward's matrix products in bf16.
    """
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * cfg.num_workers,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": cfg.weight_decay,
                # DeepSpeed's fused/CPU Adam need compiled ops; torch's AdamW runs everywhere.
                "torch_adam": True,
                # torch's fused kernel (CPU and GPU): one pass over each parameter instead of a
                # dozen ops. A full-finetuning step of SmolLM2-135M: 0.10 s against 0.41 s (1 thread).
                "fused": True,
            },
        },
        "zero_optimization": {"stage": cfg.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.max_grad_norm > 0:
        ds["gradient_clipping"] = cfg.max_grad_norm
    dtype = precision or cfg.resolved_dtype(use_gpu)
    if dtype == "bf16" and use_gpu:
        ds["bf16"] = {"enabled": True}
    elif dtype == "bf16":
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif dtype == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0}
    return ds
