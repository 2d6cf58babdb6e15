"""The Ray Train worker loop: one process per worker, DeepSpeed inside, everything read from its config.

``train_loop_per_worker(config)`` receives ``{"trial": TrialConfig.to_dict(),
"data": ObjectRef[TrialData], "use_gpu": bool, "fit_started_at": float}``. The
driver (``harness.train``) loaded the examples and computed the intuition
scores once; every worker gets the same ``TrialData`` from the object store.

Per worker: build the preset, apply the method, ``deepspeed.initialize`` on
the process group Ray set up (gloo on CPU, NCCL on GPU), train on its shard of
the shuffled multi-task mixture with the loss on answer tokens only, evaluate
on the selection split every ``eval_every`` steps and on the report split at
the end (each if ``scored_roles`` has it), and ``ray.train.report`` the
metrics with a DeepSpeed checkpoint saved on every rank (so ZeRO-3 shards are
complete); rank 0 adds the evaluation's per-example predictions
(``harness.predictions.EXAMPLES_FILE``) to it. A restarted worker group resumes from the newest reported
checkpoint; the data order is a function of the step, so it resumes exactly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.predictions import EXAMPLES_FILE, write_examples
from harness.trial import TrialConfig

# Seconds a fault-probe run waits for the test to kill a worker.
FAULT_PROBE_WAIT_S = 60.0


@dataclass
class TrialData:
    """What the driver prepares once per trial and ships to every worker through the object store."""

    train: list  # list[harness.data.Example], the mixture before shuffling (dataset order)
    selection: list
    report: list
    train_scores: np.ndarray | None  # (len(train), k) intuition scores, or None
    selection_scores: np.ndarray | None
    report_scores: np.ndarray | None
    total_steps: int


# ---------------------------------------------------------------- pure helpers (unit-tested)


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


def answer_loss(model, batch: Batch, keep_arg: str | None):
    """Mean cross-entropy over the answer tokens of a batch: the loss of ``model(labels=...)``.

    A left-padded batch asks the model for logits at its last ``keep + 1``
    positions only (``keep_arg``, e.g. ``logits_to_keep``): every answer token
    is predicted from there, and the vocabulary projection of the context
    positions, which the loss ignores, is never computed.
    """
    import torch.nn.functional as F

    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if batch.position_ids is None or keep_arg is None:
        return model(**kwargs, labels=batch.labels).loss
    kwargs["position_ids"] = batch.position_ids
    kwargs[keep_arg] = batch.keep + 1
    logits = model(**kwargs).logits[:, :-1].float()
    targets = batch.labels[:, -batch.keep:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def cpu_has_bf16_matmul() -> bool:
    """True on CPUs with bf16 matrix units (AMX), where bf16 matrix products run several times faster."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def trial_precision(cfg: TrialConfig, use_gpu: bool) -> str:
    """The precision this process trains ``cfg`` in (``dtype: auto`` looks at the hardware)."""
    return cfg.resolved_dtype(use_gpu, cpu_bf16=not use_gpu and cpu_has_bf16_matmul())


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


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


# ---------------------------------------------------------------- distributed helpers


class _Collectives:
    """All-reduce/all-gather over the process group Ray set up (a no-op with one worker)."""

    def __init__(self, world: int, device):
        self.world = world
        self.device = device

    def sum(self, values: list[float]) -> list[float]:
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def gather_object(self, value: Any) -> list[Any]:
        import torch

        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def gather(self, value: float) -> list[float]:
        import torch

        if self.world == 1:
            return [value]
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        out = [torch.zeros_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(out, t)
        return [float(x.item()) for x in out]


def evaluate_split(model, tokenizer, examples, scores, *, role: str, cfg: TrialConfig, rank: int, world: int,
                   replicate: bool, comm: _Collectives) -> tuple[dict[str, dict], list[dict]]:
    """Per-dataset accuracy / acc_norm / n_examples over ``examples``, and their per-example predictions.

    Ranks score disjoint shards and share their per-option log-likelihoods, so every rank holds the
    whole split's numbers. Under ZeRO-3 every forward gathers parameters collectively, so all ranks
    must run the same forwards: ``replicate`` makes each rank score every example instead.
    """
    from harness.evaluate import metrics, score_examples
    from harness.predictions import example_predictions

    idx = list(range(len(examples))) if replicate else list(range(rank, len(examples), world))
    part = [examples[i] for i in idx]
    part_scores = None if scores is None else scores[idx]
    loglikes = []
    if part:
        loglikes = score_examples(model, tokenizer, part, batch_size=cfg.eval_batch_size,
                                  intuition_scores=part_scores, progress=False)
    if not replicate:
        full: list = [None] * len(examples)
        for shard_idx, shard in comm.gather_object((idx, loglikes)):
            for i, ll in zip(shard_idx, shard):
                full[i] = ll
        loglikes = full
    if not examples:
        return {}, []
    return metrics(examples, loglikes), example_predictions(examples, loglikes, role=role)


def mean_accuracy(per_dataset: dict[str, dict]) -> float:
    """Unweighted mean over datasets (each dataset counts once, whatever its size)."""
    if not per_dataset:
        return float("nan")
    return float(np.mean([m["accuracy"] for m in per_dataset.values()]))


# ---------------------------------------------------------------- the worker loop


def _setup_process(cfg: TrialConfig, use_gpu: bool, world: int) -> None:
    """Environment and threads; must run before deepspeed is imported in this process."""
    import torch

    os.environ["DS_ACCELERATOR"] = "cuda" if use_gpu else "cpu"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = cfg.torch_threads or max(1, (os.cpu_count() or 1) // max(1, world))
    torch.set_num_threads(threads)
    for name in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _fault_probe(cfg: TrialConfig, rank: int) -> None:
    """Tests only: publish this rank's pid, then give the test time to kill a worker."""
    probe = Path(cfg.fault_probe_dir)
    probe.mkdir(parents=True, exist_ok=True)
    tmp = probe / f".rank{rank}.pid.tmp"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, probe / f"rank{rank}.pid")
    deadline = time.time() + FAULT_PROBE_WAIT_S
    while time.time() < deadline and not (probe / "continue").exists():
        time.sleep(0.2)


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train

    entered_at = time.time()
    cfg = TrialConfig.from_dict(config["trial"])
    use_gpu = bool(config["use_gpu"])
    data: TrialData = config["data"]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _setup_process(cfg, use_gpu, world)

    import torch

    from harness.evaluate import forward_options
    from harness.methods import apply_method
    from harness.models import load_model
    import mor1e

    device = torch.device("cpu")
    if use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    comm = _Collectives(world, device)

    precision = trial_precision(cfg, use_gpu)
    # Under CPU autocast, SDPA's bf16 backward is ~7x slower than eager attention's bf16 matmuls.
    attention = "eager" if precision == "bf16" and not use_gpu and cfg.trains else None
    model, tokenizer = load_model(cfg.model, dtype=torch.float32, seed=cfg.seed, attn_implementation=attention)
    torch.manual_seed(cfg.seed)  # identical adapter init on every rank
    model = apply_method(model, cfg.method, cfg.hparams)
    trainable_params = mor1e.count_trainable(model)
    if mor1e.needs_intuition(model):
        # Every pass of a MoR1E model with intuition needs its examples' scores (the driver's prepare_data).
        wanted = {"train": cfg.trains, "selection": "selection" in cfg.scored_roles,
                  "report": "report" in cfg.scored_roles}
        missing = [name for name, scores in (("train", data.train_scores), ("selection", data.selection_scores),
                                             ("report", data.report_scores))
                   if wanted[name] and scores is None]
        if missing:
            raise mor1e.MissingIntuitionError(f"trial data has no intuition scores for {', '.join(missing)}")

    # What a device-second is here: one GPU per worker, or the worker's CPU threads.
    devices_per_worker = 1 if use_gpu else torch.get_num_threads()
    if not cfg.trains:
        _evaluate_only(model.to(device), tokenizer, data, cfg, rank, world, comm, trainable_params, entered_at,
                       devices_per_worker)
        return

    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    total = data.total_steps

    def make_scheduler(optimizer):
        return LambdaLR(optimizer, lambda s: lr_multiplier(
            s, total=total, warmup=cfg.warmup_steps, schedule=cfg.schedule, min_ratio=cfg.min_lr_ratio))

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg, use_gpu=use_gpu, precision=precision),
        lr_scheduler=make_scheduler,
    )
    module = engine.module
    replicate_eval = cfg.zero_stage == 3 and world > 1
    dense = cfg.method == "dense"

    # Resume: the newest checkpoint the controller registered (None on a fresh run).
    state = {"step": 0, "tokens": 0.0, "train_time_s": 0.0, "time_to_first_step_s": None,
             "resumed_from_step": None}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            _, client = engine.load_checkpoint(ckpt_dir, load_module_strict=dense)
        state.update({k: client[k] for k in state if k in client})
        state["resumed_from_step"] = client["step"]

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode_training_example(tokenizer, ex.prompt, ex.target, cfg.max_seq_len) for ex in data.train]
    n_train = len(encoded)
    lengths = tuple(len(ids) for ids, _ in encoded) if cfg.length_group > 1 else None
    opts = forward_options(module)
    left_pad = opts["position_ids"] and opts["keep_arg"] is not None

    def evaluate(examples, scores, role):
        return evaluate_split(module, tokenizer, examples, scores, role=role, cfg=cfg, rank=rank, world=world,
                              replicate=replicate_eval, comm=comm)

    def save_and_report(metrics: dict, predictions: list[dict], *, final: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="mor1e-ckpt-") as tmp:
            engine.save_checkpoint(tmp, tag=f"step{state['step']}", client_state=dict(state),
                                   exclude_frozen_parameters=not dense)
            if final and cfg.method in ("mor1e", "lora", "molora"):
                _export_adapter(module, Path(tmp) / "adapter", rank=rank, zero3=cfg.zero_stage == 3)
            if rank == 0 and predictions:
                write_examples(Path(tmp) / EXAMPLES_FILE, predictions)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    loss_sum, loss_count = 0.0, 0
    first_probe_pending = checkpoint is None and cfg.fault_probe_dir is not None
    engine.train()
    while state["step"] < total:
        t0 = time.perf_counter()
        for accum in range(cfg.grad_accum):
            micro = state["step"] * cfg.grad_accum + accum
            idx = batch_indices(n_train, seed=cfg.seed, micro_step=micro, batch_size=cfg.batch_size,
                                rank=rank, world=world, lengths=lengths, group=cfg.length_group)
            batch = collate([encoded[i] for i in idx], pad_id, left=left_pad).to(device)
            if data.train_scores is not None:
                mor1e.set_intuition(module, torch.from_numpy(data.train_scores[idx]))
            # The routers' load-balancing loss counts this micro-batch's real tokens only; every
            # layer sees the full (B, T) batch, so the attention mask applies as it is.
            with mor1e.token_mask(module, batch.attention_mask):
                lm_loss = answer_loss(engine, batch, opts["keep_arg"] if left_pad else None)
                # The load-balancing term (0 unless an aux_loss_coef is set) joins the LM loss.
                loss = lm_loss + mor1e.aux_loss(module).to(lm_loss.device)
            engine.backward(loss)
            engine.step()
            loss_sum += float(lm_loss.detach())
            loss_count += 1
            state["tokens"] += float(batch.attention_mask.sum())
        state["step"] += 1
        state["train_time_s"] += time.perf_counter() - t0
        if state["time_to_first_step_s"] is None:
            state["time_to_first_step_s"] = time.time() - config["fit_started_at"]

        last = state["step"] == total
        if last or (cfg.eval_every and state["step"] % cfg.eval_every == 0):
            loss_total, count_total = comm.sum([loss_sum, float(loss_count)])
            loss_sum, loss_count = 0.0, 0
            metrics = {
                "step": state["step"],
                "total_steps": total,
                "epoch": state["step"] * cfg.effective_batch() / max(n_train, 1),
                "loss": loss_total / max(count_total, 1.0),
                "learning_rate": float(engine.get_lr()[0]),
                "precision": precision,
                "devices_per_worker": devices_per_worker,
                "tokens": comm.sum([state["tokens"]])[0],
            }
            predictions = _score(evaluate, data, cfg, metrics, final=last)
            if last:
                metrics.update(_final_metrics(state, trainable_params, comm, entered_at))
            save_and_report(metrics, predictions, final=last)
            if first_probe_pending:
                first_probe_pending = False
                _fault_probe(cfg, rank)
    mor1e.set_intuition(module, None)


def _score(evaluate, data: TrialData, cfg: TrialConfig, metrics: dict, *, final: bool) -> list[dict]:
    """Score what this evaluation scores into ``metrics``; return the per-example predictions.

    Selection at every evaluation, the report split at the end, each only if the trial scores it.
    """
    predictions: list[dict] = []
    if "selection" in cfg.scored_roles:
        selection, rows = evaluate(data.selection, data.selection_scores, "selection")
        metrics.update(selection_accuracy=mean_accuracy(selection), selection=selection)
        predictions += rows
    if final and "report" in cfg.scored_roles:
        report, rows = evaluate(data.report, data.report_scores, "report")
        metrics.update(report=report, report_accuracy=mean_accuracy(report))
        predictions += rows
    return predictions


def _final_metrics(state: dict, trainable_params: int, comm: _Collectives, entered_at: float) -> dict:
    import ray

    tokens = comm.sum([state["tokens"]])[0]
    rss = comm.gather(_peak_rss_mb())
    nodes = comm.gather_object(ray.get_runtime_context().get_node_id())
    return {
        "trainable_params": trainable_params,
        "tokens": tokens,
        "train_time_s": state["train_time_s"],
        "tokens_per_s": tokens / state["train_time_s"] if state["train_time_s"] > 0 else float("nan"),
        "time_to_first_step_s": state["time_to_first_step_s"],
        "peak_rss_mb": max(rss),
        "peak_rss_mb_per_worker": rss,
        "worker_nodes": nodes,
        "resumed_from_step": state["resumed_from_step"],
        "worker_wall_s": time.time() - entered_at,
        "finished": True,
    }


def _export_adapter(module, directory: Path, *, rank: int, zero3: bool) -> None:
    """Rank 0 writes the adapter (mor1e.save_adapter); under ZeRO-3 all ranks gather it first."""
    import mor1e

    gathered = contextlib.nullcontext()
    if zero3:
        import deepspeed

        params = [p for p in module.parameters() if p.requires_grad]
        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gathered:
        if rank == 0:
            mor1e.save_adapter(module, directory)


def _evaluate_only(model, tokenizer, data: TrialData, cfg: TrialConfig, rank, world, comm, trainable_params,
                   entered_at, devices_per_worker) -> None:
    """zeroshot: no training, one report with the scored splits' metrics."""
    import ray.train

    def evaluate(examples, scores, role):
        return evaluate_split(model, tokenizer, examples, scores, role=role, cfg=cfg, rank=rank, world=world,
                              replicate=False, comm=comm)

    state = {"tokens": 0.0, "train_time_s": 0.0, "time_to_first_step_s": None, "resumed_from_step": None}
    metrics = {"step": 0, "total_steps": 0, "epoch": 0.0, "loss": float("nan"), "learning_rate": 0.0,
               "precision": "fp32",  # scoring only, always fp32
               "devices_per_worker": devices_per_worker}
    predictions = _score(evaluate, data, cfg, metrics, final=True)
    metrics.update(_final_metrics(state, trainable_params, comm, entered_at))
    # Ray Train returns the metrics of the last report that carried a checkpoint; this run has no
    # weights to save, so its checkpoint is the metrics (and the predictions) themselves.
    with tempfile.TemporaryDirectory(prefix="mor1e-eval-") as tmp:
        if rank == 0:
            (Path(tmp) / "metrics.json").write_text(json.dumps(metrics, default=float))
            if predictions:
                write_examples(Path(tmp) / EXAMPLES_FILE, predictions)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
