"""The Ray Train worker loop: runs in each Ray Train worker process (one per worker), DeepSpeed inside,
everything read from its config. The driver imports it only for ``TrialData`` and to hand
``train_loop_per_worker`` to the ``TorchTrainer``.

``train_loop_per_worker(config)`` receives ``{"trial": TrialConfig.to_dict(),
"data": ObjectRef[TrialData], "use_gpu": bool, "fit_started_at": float}``. The
driver (``harness.trial.driver``) loaded the examples and computed the intuition
scores once; every worker gets the same ``TrialData`` from the object store.

Per worker: build the preset, apply the method, ``deepspeed.initialize`` on
the process group Ray set up (gloo on CPU, NCCL on GPU), train on its shard of
the shuffled multi-task mixture with the loss on answer tokens only, evaluate
on the selection split every ``eval_every`` steps and on the report split at
the end (each if ``scored_roles`` has it), and ``ray.train.report`` the
metrics with a DeepSpeed checkpoint saved on every rank (so ZeRO-3 shards are
complete); rank 0 adds the evaluation's per-example predictions
(``harness.predictions.EXAMPLES_FILE``) to it. A restarted worker group resumes
from the newest reported checkpoint; the data order is a function of the step
(``harness.trial.step``), so it resumes exactly. The last checkpoint of a run holds the
state only if ``TrialConfig.keep`` is ``state``; otherwise just the trained tensors (``final``)
or nothing (``none``) beside the predictions, and a restart from it reports it again and ends. A non-finite loss or gradient
norm ends the run at once, reported as diverged, with a checkpoint that holds
no weights, so nothing trains on from it.
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
from harness.trial.step import (
    answer_loss,
    batch_indices,
    collate,
    deepspeed_config,
    encode_training_example,
    lr_multiplier,
    scoring_autocast,
    scoring_precision,
    trial_precision,
)
from harness.trial.config import TrialConfig

# Seconds a fault-probe run waits for the test to kill a worker.
FAULT_PROBE_WAIT_S = 60.0
# The marker a diverged run's last checkpoint holds instead of weights.
DIVERGED_FILE = "diverged.json"
# The marker (its last metrics) of a finished run whose last checkpoint holds no resumable state (TrialConfig.keep).
FINISHED_FILE = "finished.json"
# Where a last checkpoint keeps the trained tensors (TrialConfig.keep: final): an adapter, or dense weights.
ADAPTER_DIR, WEIGHTS_DIR = "adapter", "weights"
# A curve report waits at least this long after the previous report. Ray Train's result queue holds
# one report, and its controller takes it every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s): a report
# sooner than that blocks the step until the previous one is taken (2.0 s a report when sent back
# to back, 6 ms when 3 s apart; docs/watching.md, "Measurements"). Closer curve points are skipped.
CURVE_GAP_S = 1.5 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))


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
    intuition: dict | None = None  # what an exported adapter carries to compute intuition itself (centroids)


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

    def sum_tensors(self, tensors) -> None:
        """Sum each tensor across ranks, in place."""
        import torch

        if self.world > 1:
            for t in tensors:
                torch.distributed.all_reduce(t)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (every rank must call it)."""
        return self.sum([float(flag)])[0] > 0 if self.world > 1 else flag

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
    from harness.methods import apply_method, count_prepared, get
    from harness.models import load_model
    import mor1e

    device = torch.device("cpu")
    if use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    comm = _Collectives(world, device)

    precision = trial_precision(cfg, use_gpu)
    scoring = scoring_precision(cfg, use_gpu, precision)
    # Under CPU autocast, SDPA's bf16 backward is ~7x slower than eager attention's bf16 matmuls.
    attention = "eager" if precision == "bf16" and not use_gpu and cfg.trains else None
    model, tokenizer = load_model(cfg.model, dtype=torch.float32, seed=cfg.seed, attn_implementation=attention)
    torch.manual_seed(cfg.seed)  # identical adapter init on every rank
    model = apply_method(model, cfg.method, cfg.hparams)
    trainable_params = count_prepared(model, cfg.method)
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
                       devices_per_worker, scoring=scoring, use_gpu=use_gpu)
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
    dense = get(cfg.method).role == "full"  # the whole model trains, so checkpoints hold all of it
    if not dense:
        _checkpoint_trained_tensors_only(engine)

    this_attempt = {"worker_start_s": entered_at - config["fit_started_at"], "setup_s": time.time() - entered_at}
    # Resume: the newest checkpoint the controller registered (None on a fresh run).
    state = {"step": 0, "tokens": 0.0, "train_time_s": 0.0, "time_to_first_step_s": None,
             "resumed_from_step": None, "eval_time_s": 0.0, "checkpoint_time_s": 0.0,
             "worker_start_s": 0.0, "setup_s": 0.0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            for name in (DIVERGED_FILE, FINISHED_FILE):
                marker = Path(ckpt_dir) / name
                if marker.exists():  # a diverged or finished run ends as it ended; nothing trains on from it
                    ray.train.report(json.loads(marker.read_text()),
                                     checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir))
                    return
            client = None
            if (Path(ckpt_dir) / "latest").exists():  # else an evaluation of a run that is not resumable
                _, client = engine.load_checkpoint(ckpt_dir, load_module_strict=dense)
        if client is not None:
            state.update({k: client[k] for k in state if k in client})
            state["resumed_from_step"] = client["step"]
    for key, seconds in this_attempt.items():  # summed over attempts, as train_time_s is
        state[key] += seconds

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode_training_example(tokenizer, ex.prompt, ex.target, cfg.max_seq_len) for ex in data.train]
    n_train = len(encoded)
    lengths = tuple(len(ids) for ids, _ in encoded) if cfg.length_group > 1 else None
    opts = forward_options(module)
    left_pad = opts["position_ids"] and opts["keep_arg"] is not None

    def evaluate(examples, scores, role):
        with scoring_autocast(scoring, use_gpu):
            return evaluate_split(module, tokenizer, examples, scores, role=role, cfg=cfg, rank=rank, world=world,
                                  replicate=replicate_eval, comm=comm)

    def save_and_report(metrics: dict, predictions: list[dict], *, final: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="mor1e-ckpt-") as tmp:
            if not final and not cfg.resumable:
                pass  # predictions only: a restart starts over
            elif final and cfg.keep != "state":
                # The run is over and nothing trains on from it: no optimizer state (12 bytes a
                # trained parameter), only what cfg.keep asks for and a marker a restart ends on.
                if cfg.keep == "final":
                    _export_trained(module, Path(tmp), method=cfg.method, rank=rank, zero3=cfg.zero_stage == 3,
                                    intuition=data.intuition)
                if rank == 0:
                    (Path(tmp) / FINISHED_FILE).write_text(json.dumps(metrics, default=float))
            else:
                engine.save_checkpoint(tmp, tag=f"step{state['step']}", client_state=dict(state),
                                       exclude_frozen_parameters=not dense)
                if final and get(cfg.method).save_adapter is not None:
                    _export_trained(module, Path(tmp), method=cfg.method, rank=rank, zero3=cfg.zero_stage == 3,
                                    intuition=data.intuition)
            if rank == 0 and predictions:
                write_examples(Path(tmp) / EXAMPLES_FILE, predictions)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    loss_sum, loss_count = 0.0, 0
    first_probe_pending = checkpoint is None and cfg.fault_probe_dir is not None
    last_predictions: list[dict] = []  # the latest evaluation's, kept for a divergence report
    diverged = None
    norm = None
    reported_at = -math.inf  # time.monotonic() of this worker's last report
    engine.train()
    while state["step"] < total and diverged is None:
        t0 = time.perf_counter()
        step_loss, step_tokens = 0.0, state["tokens"]
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
                lm_loss = answer_loss(engine, batch, opts["keep_arg"] if left_pad else None, cfg.loss_reduction)
                # The load-balancing term (0 unless an aux_loss_coef is set) joins the LM loss.
                loss = lm_loss + mor1e.aux_loss(module).to(lm_loss.device)
            # A non-finite loss or gradient norm stops the trial at once: nothing after it is trained or scored.
            diverged = _nonfinite("loss", float(loss.detach()), state["step"] + 1, comm)
            if diverged:
                break
            boundary = engine.is_gradient_accumulation_boundary()
            engine.backward(loss)
            own_norm = _grad_norm(module) if boundary and cfg.zero_stage == 0 else None
            engine.step()
            if boundary:
                norm = own_norm if own_norm is not None else engine.get_global_grad_norm()
                diverged = _nonfinite("gradient norm", norm, state["step"] + 1, comm)
                if diverged:
                    break
            value = float(lm_loss.detach())
            loss_sum += value
            step_loss += value
            loss_count += 1
            state["tokens"] += float(batch.attention_mask.sum())
        if diverged:
            break
        state["step"] += 1
        state["train_time_s"] += time.perf_counter() - t0
        if state["time_to_first_step_s"] is None:
            state["time_to_first_step_s"] = time.time() - config["fit_started_at"]

        last = state["step"] == total
        curve = None
        evaluating = last or (cfg.eval_every and state["step"] % cfg.eval_every == 0)
        if cfg.log_every and (evaluating or state["step"] % cfg.log_every == 0):
            # This rank's own values of this step (rank 0's reach Tune): no collective, no sync.
            step_s = time.perf_counter() - t0
            curve = {"step": state["step"], "timesteps_total": state["step"],
                     "train/loss": step_loss / cfg.grad_accum, "train/learning_rate": float(engine.get_lr()[0]),
                     "train/grad_norm": None if norm is None else float(norm),
                     "train/tokens_per_s": (state["tokens"] - step_tokens) / step_s if step_s > 0 else None}
        if evaluating:
            loss_total, count_total = comm.sum([loss_sum, float(loss_count)])
            loss_sum, loss_count = 0.0, 0
            metrics = {
                "step": state["step"],
                "total_steps": total,
                "epoch": state["step"] * cfg.effective_batch() / max(n_train, 1),
                "loss": loss_total / max(count_total, 1.0),
                "learning_rate": float(engine.get_lr()[0]),
                "precision": precision,
                # Scoring calls the module itself, outside DeepSpeed's CPU autocast (see scoring_precision).
                "scoring_precision": scoring,
                "devices_per_worker": devices_per_worker,
                "tokens": comm.sum([state["tokens"]])[0],
                # ASHA's time (harness.study.phases.scheduler_for) and the x-axis of Tune's loggers.
                "evaluation": math.ceil(state["step"] / cfg.eval_every) if cfg.eval_every else 1,
                "timesteps_total": state["step"],
                **(curve or {}),
            }
            t0 = time.perf_counter()
            last_predictions = _score(evaluate, data, cfg, metrics, final=last, module=module, comm=comm,
                                      device=device)
            state["eval_time_s"] += time.perf_counter() - t0
            if last:
                metrics.update(_final_metrics(state, trainable_params, comm, entered_at))
            t0 = time.perf_counter()
            save_and_report(metrics, last_predictions, final=last)
            reported_at = time.monotonic()
            state["checkpoint_time_s"] += time.perf_counter() - t0
            if first_probe_pending:
                first_probe_pending = False
                _fault_probe(cfg, rank)
        elif curve is not None and comm.any(time.monotonic() - reported_at >= CURVE_GAP_S):
            # Every rank reports (Train's report is collective); they decide together.
            ray.train.report({k: v for k, v in curve.items() if v is not None})
            reported_at = time.monotonic()
    if diverged:
        metrics = {"step": state["step"], "total_steps": total, "diverged": diverged, "precision": precision,
                   "devices_per_worker": devices_per_worker, "tokens": comm.sum([state["tokens"]])[0]}
        _report_divergence(metrics, last_predictions, rank=rank)
    mor1e.set_intuition(module, None)


def _score(evaluate, data: TrialData, cfg: TrialConfig, metrics: dict, *, final: bool, module=None,
           comm: _Collectives | None = None, device=None) -> list[dict]:
    """Score what this evaluation scores into ``metrics``; return the per-example predictions.

    Selection at every evaluation, the report split at the end, each only if the trial scores it.
    The final evaluation also records how the routers route (``mor1e.router_telemetry``: forward
    hooks on the scoring passes themselves, no extra forward), summed over ranks.
    """
    import mor1e

    predictions: list[dict] = []
    telemetry = mor1e.router_telemetry(module) if final and module is not None else contextlib.nullcontext()
    with telemetry as routers:
        if "selection" in cfg.scored_roles:
            selection, rows = evaluate(data.selection, data.selection_scores, "selection")
            metrics.update(selection_accuracy=mean_accuracy(selection), selection=selection)
            predictions += rows
        if final and "report" in cfg.scored_roles:
            report, rows = evaluate(data.report, data.report_scores, "report")
            metrics.update(report=report, report_accuracy=mean_accuracy(report))
            predictions += rows
    if routers is not None:
        counts = routers.counts(device)
        comm.sum_tensors(counts.tensors())  # every rank scored its own shard
        metrics.update(counts.summary())
    return predictions


def _nonfinite(what: str, value, step: int, comm: _Collectives) -> str | None:
    """The divergence reason when ``value`` is not finite on any rank, else None (every rank calls it)."""
    bad = value is not None and not math.isfinite(float(value))
    if not comm.any(bad):
        return None
    return f"non-finite {what} ({float(value) if bad else 'on another rank'}) at step {step}"


def _grad_norm(module) -> float | None:
    """L2 norm of the trainable parameters' gradients (ZeRO-0, where DeepSpeed does not keep it)."""
    import torch

    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.requires_grad and p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else None


def _report_divergence(metrics: dict, predictions: list[dict], *, rank: int) -> None:
    """Report a diverged run with a marker checkpoint, no weights: a restart ends at once (see resume),
    and the driver records the trial as failed. The latest evaluation's predictions ride along."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="mor1e-diverged-") as tmp:
        if rank == 0:
            (Path(tmp) / DIVERGED_FILE).write_text(json.dumps(metrics, default=float))
            if predictions:
                write_examples(Path(tmp) / EXAMPLES_FILE, predictions)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


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
        "eval_time_s": state.get("eval_time_s", 0.0),
        "checkpoint_time_s": state.get("checkpoint_time_s", 0.0),
        "worker_start_s": state.get("worker_start_s"),
        "setup_s": state.get("setup_s"),
        "worker_wall_s": time.time() - entered_at,
        "finished": True,
    }


def _checkpoint_trained_tensors_only(engine) -> None:
    """Make ``engine.save_checkpoint(..., exclude_frozen_parameters=True)`` leave out every frozen tensor.

    DeepSpeed drops the frozen parameters it finds by ``named_parameters()``, which names a tied
    tensor once. A model whose output head shares its frozen input embedding (SmolLM2's) kept
    ``lm_head.weight`` in every adapter checkpoint: 28.3M of a LoRA r=8 checkpoint's 30.8M values
    (113 MB of a 143 MB file). Resuming loads non-strict, and the base model supplies the head.
    """
    frozen = {name for name, p in engine.module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    module_state_dict = engine.module_state_dict

    def trained_only(*args, **kwargs):
        sd = module_state_dict(*args, **kwargs)
        if sd is not None and kwargs.get("exclude_frozen_parameters"):
            for name in frozen & sd.keys():
                del sd[name]
        return sd

    engine.module_state_dict = trained_only


def _export_adapter(module, directory: Path, *, rank: int, zero3: bool, save) -> None:
    """Rank 0 writes the adapter (the method's ``save_adapter``); under ZeRO-3 all ranks gather it first."""
    gathered = contextlib.nullcontext()
    if zero3:
        import deepspeed

        params = [p for p in module.parameters() if p.requires_grad]
        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gathered:
        if rank == 0:
            save(module, directory)


def _export_trained(module, directory: Path, *, method: str, rank: int, zero3: bool,
                    intuition: dict | None = None) -> None:
    """The trained tensors alone: an adapter (the method's own save_adapter, which carries the
    intuition centroids it was trained with) or a dense run's weights (safetensors)."""
    from harness.methods import get

    save_adapter = get(method).save_adapter
    if save_adapter is not None:
        _export_adapter(module, directory / ADAPTER_DIR, rank=rank, zero3=zero3,
                        save=functools.partial(save_adapter, **(intuition or {})))
        return
    from safetensors.torch import save_model

    gathered = contextlib.nullcontext()
    if zero3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gathered:
        if rank == 0:
            (directory / WEIGHTS_DIR).mkdir(parents=True, exist_ok=True)
            save_model(module, str(directory / WEIGHTS_DIR / "model.safetensors"))  # tied tensors once


def _evaluate_only(model, tokenizer, data: TrialData, cfg: TrialConfig, rank, world, comm, trainable_params,
                   entered_at, devices_per_worker, *, scoring: str, use_gpu: bool) -> None:
    """zeroshot: no training, one report with the scored splits' metrics."""
    import ray.train

    def evaluate(examples, scores, role):
        with scoring_autocast(scoring, use_gpu):
            return evaluate_split(model, tokenizer, examples, scores, role=role, cfg=cfg, rank=rank, world=world,
                                  replicate=False, comm=comm)

    state = {"tokens": 0.0, "train_time_s": 0.0, "time_to_first_step_s": None, "resumed_from_step": None}
    metrics = {"step": 0, "total_steps": 0, "epoch": 0.0, "loss": float("nan"), "learning_rate": 0.0,
               "precision": "fp32", "scoring_precision": scoring,  # no training: fp32 weights throughout
               "devices_per_worker": devices_per_worker}
    t0 = time.perf_counter()
    predictions = _score(evaluate, data, cfg, metrics, final=True)
    state["eval_time_s"] = time.perf_counter() - t0
    metrics.update(_final_metrics(state, trainable_params, comm, entered_at))
    # Ray Train returns the metrics of the last report that carried a checkpoint; this run has no
    # weights to save, so its checkpoint is the metrics (and the predictions) themselves.
    with tempfile.TemporaryDirectory(prefix="mor1e-eval-") as tmp:
        if rank == 0:
            (Path(tmp) / "metrics.json").write_text(json.dumps(metrics, default=float))
            if predictions:
                write_examples(Path(tmp) / EXAMPLES_FILE, predictions)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
