"""The driver side of one trial: runs in the process that starts the trial (``harness/train.py``, or a
Tune trial's driver function, ``harness.study.tune``), never in a Ray Train worker.

It checks the trial, loads the data once and hands it to a Ray Train ``TorchTrainer`` whose
workers (``harness.trial.worker``) finetune under DeepSpeed ZeRO; then it turns the result into
leaderboard and prediction rows. The command line is ``harness/train.py``.

- ``check_trial``: the checks that need the filesystem or the cluster (model
  name, data dir, workers vs CPUs/GPUs), before any worker starts;
- ``prepare_data``: load the train/selection/report examples once, and for
  methods that use it compute the intuition (embeddings, k-means, cluster
  scores) once; the workers get it through the object store;
- ``run_trial``: build and fit the ``TorchTrainer``; returns the final metrics.
  Inside a Tune trial, pass ``callbacks=[TuneReportCallback()]`` and every
  worker report reaches Tune (``selection_accuracy`` for ASHA);
- ``trial_rows``: leaderboard rows (harness.records schema) for a trial, and
  ``trial_predictions``: the per-example predictions behind them; ``format_table``: the CLI's summary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ray.train.v2.api.callback import UserCallback

from harness.background import Background
from harness.trial.config import TrialConfig

# Logical CPUs of an embedded Ray: above the physical count, so a finished
# trial's placement group being released late never starves the next trial's
# workers (DESIGN.md, machine facts). Workers cap their torch threads instead.
MIN_EMBEDDED_CPUS = 8


# ---------------------------------------------------------------- checks


def check_trial(cfg: TrialConfig, *, embedded: bool = True) -> None:
    """ValueError naming the problem: model, data dir, or more workers than this machine/cluster has.

    With ``embedded`` the worker count is checked against this machine's CPUs
    (or GPUs); otherwise against the running Ray cluster's resources.
    """
    from harness.models import check_model_name

    check_model_name(cfg.model)
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
        raise ValueError(f"data dir {cfg.data_dir} does not exist")
    if embedded:
        if cfg.use_gpu:
            import torch

            have, kind = torch.cuda.device_count(), "GPUs"
        else:
            have, kind = os.cpu_count() or 1, "CPUs"
    else:
        import ray

        resources = ray.cluster_resources()
        kind = "GPUs" if resolve_use_gpu(cfg) else "CPUs"
        have = int(resources.get(kind[:-1], 0))
    if cfg.num_workers > have:
        raise ValueError(f"{cfg.num_workers} workers requested but only {have} {kind} are available")


def resolve_use_gpu(cfg: TrialConfig) -> bool:
    """``cfg.use_gpu``, or when None: whether Ray (initialised) has any GPU."""
    if cfg.use_gpu is not None:
        return cfg.use_gpu
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1


# ---------------------------------------------------------------- data and intuition


def prepare_data(cfg: TrialConfig, *, embed_cache_dir: str | os.PathLike | None = None):
    """Examples of every role and, for intuition methods, their cluster scores (computed once, here)."""
    from harness.data import load_examples
    from harness.methods import method_config, uses_intuition
    from harness.trial.worker import TrialData

    def load(role: str, limit: int | None) -> list:
        out = []
        for name in cfg.datasets:
            out += load_examples(name, role, data_dir=cfg.data_dir, fmt=cfg.scoring, limit=limit,
                                 seed=cfg.split_seed)
        return out

    train = load("train", cfg.train_limit) if cfg.trains else []
    selection = load("selection", cfg.selection_limit) if "selection" in cfg.scored_roles else []
    report = load("report", cfg.report_limit) if "report" in cfg.scored_roles else []
    if cfg.trains and not train:
        raise ValueError(f"no training examples for {', '.join(cfg.datasets)}")
    scores: list = [None, None, None]
    intuition: dict = {}
    if uses_intuition(cfg.method, cfg.hparams):
        config = method_config(cfg.method, cfg.hparams)
        scores = intuition_scores([train, selection, report], k=config.num_clusters, seed=cfg.seed,
                                  cache_dir=embed_cache_dir, score=config.intuition_score, embedder=cfg.embedder,
                                  trust_remote_code=cfg.embedder_trust_remote_code, keep=intuition)
    return TrialData(train=train, selection=selection, report=report, train_scores=scores[0],
                     selection_scores=scores[1], report_scores=scores[2],
                     total_steps=cfg.total_steps(len(train)), intuition=intuition or None)


def intuition_scores(example_sets: list[list], *, k: int, seed: int, cache_dir=None, score: str = "dot",
                     embedder: str | None = None, trust_remote_code: bool = False,
                     keep: dict | None = None) -> list:
    """Cluster scores s (n, k) for each set: k-means on the first set's embeddings (the training mixture).
    ``keep``: if given, receives ``centroids`` (k, d), which an exported adapter carries.

    T-REX §3.2: the intuition of an instance is its similarity to each of k
    centroids of the training instances' sentence embeddings; ``score`` is how
    (``mor1e.intuition.cluster_scores``: "dot", the authors' ``centroids @ emb``, or "cosine");
    ``embedder`` which sentence embedder (None: the packaged all-MiniLM-L6-v2).
    """
    from mor1e.intuition import cluster_scores, embed_texts, kmeans

    if cache_dir is None:
        from harness.models import cache_dir as model_cache

        cache_dir = model_cache() / "embeddings"
    train = example_sets[0]
    if len(train) < k:
        raise ValueError(f"num_clusters={k} is more than the {len(train)} training examples")
    embeddings = [embed_texts([e.text for e in s], cache_dir=cache_dir, embedder=embedder,
                              trust_remote_code=trust_remote_code) if s else None for s in example_sets]
    centroids = kmeans(embeddings[0], k, seed=seed)
    if keep is not None:
        keep["centroids"] = centroids
    return [None if e is None else cluster_scores(e, centroids, score) for e in embeddings]


# ---------------------------------------------------------------- running


class _ProgressCallback(UserCallback):
    """Runs in the Ray Train controller: forwards rank 0's reports to the driver through a queue."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put(metrics[0] if metrics else {})


def _progress_line(m: dict) -> str:
    if m.get("diverged"):
        return f"step {m.get('step')}/{m.get('total_steps')}: diverged, {m['diverged']}; the trial stops here"
    per = " ".join(f"{d} {100 * v['accuracy']:.1f}" for d, v in sorted(m.get("selection", {}).items()))
    loss = m.get("loss")
    loss_s = "" if loss is None or (isinstance(loss, float) and math.isnan(loss)) else f" loss {loss:.4f}"
    return (f"step {m.get('step')}/{m.get('total_steps')}{loss_s} "
            f"selection {100 * m.get('selection_accuracy', float('nan')):.1f}% ({per})")


def run_trial(cfg: TrialConfig, *, name: str, storage_path: str | os.PathLike, callbacks: Iterable = (),
              progress: bool = False, data=None, storage_filesystem=None) -> dict[str, Any]:
    """Run one trial as a Ray Train job (Ray must be initialised, or is started embedded); return its final metrics.

    Reported metrics (every report; Tune sees them through TuneReportCallback):
    ``step``, ``total_steps``, ``epoch``, ``loss`` (mean since the last report),
    ``learning_rate``, ``selection_accuracy`` (mean over datasets) and
    ``selection`` ({dataset: {accuracy, acc_norm, n_examples}}). The last report
    adds ``report`` (same shape, report split), ``report_accuracy``,
    ``trainable_params``, ``tokens``, ``tokens_per_s``, ``train_time_s``,
    ``time_to_first_step_s``, where a worker's time went (``worker_start_s``: from ``fit()`` to the
    worker's entry; ``setup_s``: model, adapter and DeepSpeed; ``train_time_s``; ``eval_time_s``:
    scoring; ``checkpoint_time_s``: saving and reporting, before the final report), ``peak_rss_mb`` (max over workers),
    ``peak_rss_mb_per_worker``, ``resumed_from_step`` and ``finished``.
    The returned dict is that last report plus ``checkpoint_path``,
    ``run_path``, ``use_gpu`` and ``wall_s``. A run whose name already exists
    under ``storage_path`` resumes from its last checkpoint (Ray Train V2).
    ``storage_filesystem``: a pyarrow file system ``storage_path`` lies in (e.g. S3); None: a local path.
    ``checkpoint_path`` is then a path in that file system, to read through it.
    Raises ``ray.train.TrainingFailedError`` when the workers fail more than
    ``cfg.max_failures`` times.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from harness.trial.worker import train_loop_per_worker

    started = time.time()
    if not ray.is_initialized():
        from harness.ray_env import init_ray

        init_ray(num_cpus=max(MIN_EMBEDDED_CPUS, os.cpu_count() or 1))
    use_gpu = resolve_use_gpu(cfg)
    resources = ray.cluster_resources()
    have = int(resources.get("GPU" if use_gpu else "CPU", 0))
    if cfg.num_workers > have:
        kind = "GPUs" if use_gpu else "CPUs"
        raise ValueError(f"{cfg.num_workers} workers requested but the Ray cluster has {have} {kind}")
    if data is None:
        data = prepare_data(cfg)

    callbacks = list(callbacks)
    queue = None
    if progress:
        from ray.util.queue import Queue

        queue = Queue(actor_options={"num_cpus": 0})
        callbacks.append(_ProgressCallback(queue))

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"trial": cfg.to_dict(), "data": ray.put(data), "use_gpu": use_gpu,
                           "fit_started_at": time.time()},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"GPU": 1, "CPU": 1} if use_gpu else {"CPU": 1}),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            callbacks=callbacks,
        ),
    )
    if queue is None:
        result = trainer.fit()
    else:
        result = _fit_with_progress(trainer, queue)
    out = dict(result.metrics or {})
    out["checkpoint_path"] = result.checkpoint.path if result.checkpoint else None
    out["run_path"] = result.path
    out["use_gpu"] = use_gpu
    out["wall_s"] = time.time() - started
    return out


def _fit_with_progress(trainer, queue):
    fit = Background(trainer.fit, name="fit")
    while fit.is_alive() or not queue.empty():
        try:
            metrics = queue.get(timeout=0.5)
        except Exception:
            continue
        print(_progress_line(metrics), flush=True)
    fit.join()
    with contextlib.suppress(Exception):
        import ray

        ray.kill(queue.actor)
    return fit.result()


# ---------------------------------------------------------------- records


def trial_rows(cfg: TrialConfig, result: dict | None, *, study: str, trial_id: str, status: str,
               status_reason: str | None = None, phase: str = "single",
               roles: tuple[str, ...] = ("selection", "report"), wall_s: float | None = None,
               data_source: dict | None = None) -> list[dict]:
    """Leaderboard rows for one trial: one per (dataset, role) with numbers, or one bare row (failed).

    ``data_source``: harness.provenance.data_source of the data the trial read (computed while that
    data exists; the CLI's twins live in a temp dir). A single trial has no profile, so its rows
    leave ``profile_sha256`` null.
    """
    from harness.data import split_name
    from harness.methods import method_config, num_clusters, num_experts
    from harness.provenance import scoring_precision, to_json, trial_budget
    from harness.records import TELEMETRY_KEYS, device_seconds, row_template

    result = result or {}
    config = method_config(cfg.method, cfg.hparams)
    clusters = num_clusters(cfg.method, cfg.hparams)
    temperature = getattr(config, "router_temperature", None)

    def num(v, kind):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        return kind(v)

    common = dict(
        study=study, method=cfg.method, trial_id=trial_id, status=status, status_reason=status_reason,
        trainable_params=num(result.get("trainable_params"), int),
        num_experts=num_experts(cfg.method, cfg.hparams), num_clusters=clusters,
        router_temperature=num(temperature, float),
        learning_rate=cfg.learning_rate if cfg.trains else None,
        zero_stage=cfg.zero_stage, num_workers=cfg.num_workers, model=cfg.model, seed=cfg.seed,
        scoring=cfg.scoring, phase=phase,
        hparams_json=json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("data_dir", "fault_probe_dir")},
                                sort_keys=True, default=str),
        steps=num(result.get("step"), int), tokens_per_s=num(result.get("tokens_per_s"), float),
        precision=result.get("precision"), peak_rss_mb=num(result.get("peak_rss_mb"), float),
        wall_s=num(wall_s if wall_s is not None else result.get("wall_s"), float),
        train_tokens=num(result.get("tokens"), int),
        **{k: num(result.get(k), float) for k in TELEMETRY_KEYS},
        data_source=to_json(data_source),
        budget_json=to_json(trial_budget(cfg, total_steps=num(result.get("total_steps"), int))),
        scoring_precision=scoring_precision(result, method=cfg.method,
                                            use_gpu=result.get("use_gpu", cfg.use_gpu)),
    )
    common["device_s"] = device_seconds(common["wall_s"], cfg.num_workers, result.get("devices_per_worker"))
    rows = []
    for role in roles:
        for dataset in cfg.datasets:
            m = (result.get(role) or {}).get(dataset)
            if m is None:
                continue
            rows.append(row_template(**common, dataset=dataset, split=split_name(dataset, role), role=role,
                                     accuracy=num(m.get("accuracy"), float), acc_norm=num(m.get("acc_norm"), float),
                                     n_examples=num(m.get("n_examples"), int)))
    if not rows:
        rows.append(row_template(**common, dataset=None, split=None, role=None, accuracy=None, acc_norm=None,
                                 n_examples=None))
    return rows


def trial_predictions(cfg: TrialConfig, result: dict | None, *, study: str, trial_id: str,
                      phase: str = "single") -> list[dict]:
    """The per-example predictions the trial's last checkpoint holds, as predictions.parquet rows."""
    from harness.predictions import EXAMPLES_FILE, identified, read_examples

    path = (result or {}).get("checkpoint_path")
    if not path:
        return []
    return identified(read_examples(Path(path) / EXAMPLES_FILE), study=study, trial_id=trial_id, phase=phase,
                      method=cfg.method, seed=cfg.seed)


def format_table(cfg: TrialConfig, result: dict) -> str:
    """Markdown table: per dataset selection and report accuracy / acc_norm / n."""
    lines = ["| dataset | selection acc | report acc | report acc_norm | report n |",
             "|---|---|---|---|---|"]

    def pct(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"

    for d in cfg.datasets:
        s = (result.get("selection") or {}).get(d, {})
        r = (result.get("report") or {}).get(d, {})
        lines.append(f"| {d} | {pct(s.get('accuracy'))} | {pct(r.get('accuracy'))} | {pct(r.get('acc_norm'))} "
                     f"| {r.get('n_examples', '-')} |")
    lines.append(f"| **mean** | {pct(result.get('selection_accuracy'))} | {pct(result.get('report_accuracy'))} "
                 "| | |")
    return "\n".join(lines)


# ---------------------------------------------------------------- process set-up


def _quiet_logs() -> None:
    for name in ("ray", "ray.train", "ray.tune", "ray.data", "deepspeed", "DeepSpeed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _export_repo_path() -> None:
    """Let embedded Ray's worker processes import this repository even when it is not pip-installed."""
    root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])
