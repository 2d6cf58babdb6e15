"""What one trial is: the typed, validated configuration a Ray Train worker learns everything from.

A trial is one method with one hyperparameter set, trained on the multi-task
mixture of ``datasets`` and evaluated on their selection and report splits.
``TrialConfig`` holds values only; it never reads files, the environment or the
working directory (``harness.trial.driver.check_trial`` does the checks that need to). It is built on
the driver and travels to each Ray Train worker as ``to_dict()``; both sides import this module.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from harness.data import DATASETS, FORMATS, resolve_datasets

SCHEDULES = ("cosine", "linear", "constant")
LOSS_REDUCTIONS = ("token", "example")
DTYPES = ("auto", "fp32", "bf16", "fp16")
KEEP = ("state", "final", "none")  # what a run's last checkpoint holds (TrialConfig.keep)
SCORING_DTYPES = ("fp32", "bf16", "auto")
ZERO_STAGES = (0, 1, 2, 3)
SCORED_ROLES = ("selection", "report")
DEFAULT_STEPS = 100


def _positive_int(name: str, value: Any, *, allow_zero: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(name: str, value: Any, *, low: float, low_inclusive: bool, high: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if low_inclusive else value > low) and (high is None or value <= high)
    if not ok:
        bound = f">= {low}" if low_inclusive else f"> {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass
class TrialConfig:
    """One trial. Field names are the keys of a profile's ``training:`` block and of ``--`` flags."""

    method: str
    """A method of the registry (harness.methods): a built-in one, or one a module in ``plugins`` registers."""
    model: str = "smollm2-135m"
    """A preset of harness.models, a hub id or a local directory."""
    datasets: tuple[str, ...] = DATASETS
    """The training mixture and the evaluation sets: names of harness.data.KNOWN_DATASETS, or a suite
    name (``all``: the paper's 14; ``commonsense8``), or a comma-separated string of names."""
    hparams: dict[str, Any] = field(default_factory=dict)
    """Method hyperparameters (harness.methods.apply_method keys)."""
    learning_rate: float = 1e-3
    """Peak learning rate (AdamW), reached after ``warmup_steps``."""
    steps: int | None = None
    """Optimizer steps. None: from ``epochs`` if given, else DEFAULT_STEPS."""
    epochs: float | None = None
    """Passes over the training mixture; used only when ``steps`` is None."""
    batch_size: int = 8
    """Examples per micro-batch per worker."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the effective batch is batch_size * grad_accum * num_workers."""
    length_group: int = 1
    """Micro-steps whose examples are sorted by length together: less padding, but batches more
    alike (on two twins, 8 halved a 60-step learning check's gain); 1: plain shuffle."""
    warmup_steps: int = 10
    """Linear warmup from 0 to ``learning_rate`` (capped at steps - 1)."""
    schedule: str = "cosine"
    """Decay after warmup: cosine, linear (both to min_lr_ratio * lr) or constant."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    """Gradient clipping (DeepSpeed ``gradient_clipping``); 0 disables it."""
    loss_reduction: str = "token"
    """How the answer tokens' cross-entropy is averaged (``harness.trial.step.answer_loss``): "token",
    the mean over every answer token of the micro-batch (the authors'), or "example", the mean over
    examples of each one's mean over its own answer tokens (a one-token answer weighs as much as a long one)."""
    max_seq_len: int = 512
    """Training sequences longer than this lose context tokens from the left (the answer is kept)."""
    dtype: str = "auto"
    """auto, fp32, bf16 or fp16 (fp16 needs a GPU). auto is bf16 on a GPU and on a CPU with bf16
    matrix instructions (AMX or AVX512-BF16), fp32 on other CPUs. On a CPU, bf16 is autocast mixed precision: weights,
    gradients and optimizer state stay fp32, matrix products run in bf16; scoring there follows ``scoring_dtype``."""
    scoring_dtype: str = "fp32"
    """Option scoring on a CPU: fp32, bf16 (autocast over the fp32 weights) or auto (what ``dtype``
    resolves to, for a scoring-only run too, so a study's zero-shot rows score as its trained ones).
    On a GPU scoring runs in the module's own dtype: the training dtype, fp32 for a scoring-only run."""
    train_limit: int | None = 200
    """Training examples per dataset (first N of the train role); None keeps all."""
    selection_limit: int | None = 64
    """Selection examples per dataset scored at each evaluation; None keeps all."""
    report_limit: int | None = None
    """Report-split examples per dataset scored at the end; None keeps all."""
    eval_every: int = 0
    """Optimizer steps between selection evaluations (each one a report to Tune); 0: only at the end."""
    log_every: int = 8
    """Optimizer steps between reports of rank 0's training curves (loss, learning rate, gradient norm,
    tokens/s of that step) to Tune, which logs them (TensorBoard, MLflow); 0: none."""
    scored_roles: tuple[str, ...] = ("selection", "report")
    """What the trial scores: ``selection`` at every evaluation and at the end, ``report`` at the end.
    A study's search trials score selection only (they choose); its final runs report only (they publish)."""
    resumable: bool = True
    """Evaluations before the last one save the DeepSpeed state (weights, optimizer, step) beside their
    predictions, for a restarted run to resume from. False: they save their predictions only, and a
    restarted run starts over (a dense SmolLM2 state is 1.6 GB; a 2-minute run is cheaper to redo)."""
    keep_checkpoints: int = 1
    """Checkpoints Ray keeps in storage while the run goes on (the newest ones; each evaluation saves one,
    reported with its metrics). One is enough to resume: a new one is complete before the older goes."""
    keep: str = "state"
    """What the run's last checkpoint holds besides its predictions. ``state``: the DeepSpeed state too (and
    an adapter's export), to train on from; ``final``: only the trained tensors (the adapter, or a dense
    run's weights); ``none``: nothing else. A study keeps ``none`` for search runs and ``final`` for an
    adapter's final runs (``final.keep`` of the profile for dense)."""
    eval_batch_size: int = 16
    scoring: str = "letter"
    """Prompt format for training and scoring: letter or cloze (harness.data.FORMATS)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage, 0 to 3."""
    num_workers: int = 1
    """Ray Train workers (one process each; one GPU each with use_gpu)."""
    use_gpu: bool | None = None
    """None: use GPUs when the Ray cluster has at least num_workers of them."""
    seed: int = 0
    """Model init (tiny preset), adapter init and the mixture's shuffle."""
    split_seed: int = 0
    """Carves selection out of train; fixed across trials so every trial is selected on the same examples."""
    embedder: str | None = None
    """The sentence embedder behind MoR1E's intuition scores: None is the packaged all-MiniLM-L6-v2
    (offline); otherwise a local directory or a sentence-transformers hub id (the authors':
    ``nomic-ai/nomic-embed-text-v1``). Mean pooling and L2 normalisation either way."""
    embedder_trust_remote_code: bool = False
    """Let a hub embedder run its own code (nomic-embed-text-v1 needs it)."""
    data_dir: str | None = None
    """DATA_DIR/<dataset>/<split>.jsonl|parquet; None: the HF hub (needs the network)."""
    max_failures: int = 1
    """Worker-group restarts (from the last checkpoint) before the trial fails."""
    torch_threads: int | None = None
    """Threads per worker; None: the node's CPUs divided by num_workers."""
    plugins: tuple[str, ...] = ()
    """Modules imported before ``method`` is looked up, each registering methods (a profile's ``plugins:``)."""
    fault_probe_dir: str | None = None
    """Tests only: after the first checkpoint of a fresh (not resumed) run, every rank writes
    ``rank<r>.pid`` here and waits up to 60 s, so a test can kill a worker at a known step."""

    def __post_init__(self) -> None:
        # Imported here: a process that only unpickles the worker loop (Ray Train's controller)
        # then never imports peft, transformers and torch, about 4 s of CPU per trial.
        from harness.methods import get, load_plugins, method_config

        self.plugins = tuple(self.plugins or ())
        load_plugins(self.plugins)
        get(self.method)  # unknown method -> ValueError naming it
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        self.datasets = resolve_datasets(self.datasets)
        if not isinstance(self.hparams, dict):
            raise ValueError(f"hparams must be a dict, got {type(self.hparams).__name__}")
        self.hparams = dict(self.hparams)
        method_config(self.method, self.hparams)  # unknown keys / bad values -> ValueError
        _number("learning_rate", self.learning_rate, low=0.0, low_inclusive=False)
        _positive_int("steps", self.steps, allow_none=True)
        if self.epochs is not None:
            _number("epochs", self.epochs, low=0.0, low_inclusive=False)
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        _positive_int("batch_size", self.batch_size)
        _positive_int("grad_accum", self.grad_accum)
        _positive_int("length_group", self.length_group)
        _positive_int("warmup_steps", self.warmup_steps, allow_zero=True)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _number("min_lr_ratio", self.min_lr_ratio, low=0.0, low_inclusive=True, high=1.0)
        _number("weight_decay", self.weight_decay, low=0.0, low_inclusive=True)
        _number("max_grad_norm", self.max_grad_norm, low=0.0, low_inclusive=True)
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {', '.join(LOSS_REDUCTIONS)}, got {self.loss_reduction!r}")
        _positive_int("max_seq_len", self.max_seq_len)
        if self.max_seq_len < 8:
            raise ValueError(f"max_seq_len must be >= 8, got {self.max_seq_len}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.scoring_dtype not in SCORING_DTYPES:
            raise ValueError(f"scoring_dtype must be one of {', '.join(SCORING_DTYPES)}, got {self.scoring_dtype!r}")
        for name in ("train_limit", "selection_limit", "report_limit"):
            _positive_int(name, getattr(self, name), allow_none=True)
        _positive_int("eval_every", self.eval_every, allow_zero=True)
        _positive_int("log_every", self.log_every, allow_zero=True)
        if isinstance(self.scored_roles, str):
            self.scored_roles = tuple(r for r in self.scored_roles.split(",") if r)
        self.scored_roles = tuple(self.scored_roles)
        if not self.scored_roles or not set(self.scored_roles) <= set(SCORED_ROLES) \
                or len(set(self.scored_roles)) != len(self.scored_roles):
            raise ValueError(f"scored_roles must name selection and/or report once each, got {self.scored_roles!r}")
        if not isinstance(self.resumable, bool):
            raise ValueError(f"resumable must be true or false, got {self.resumable!r}")
        if self.keep not in KEEP:
            raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        _positive_int("keep_checkpoints", self.keep_checkpoints)
        _positive_int("eval_batch_size", self.eval_batch_size)
        if self.scoring not in FORMATS:
            raise ValueError(f"scoring must be one of {', '.join(FORMATS)}, got {self.scoring!r}")
        if self.zero_stage not in ZERO_STAGES or isinstance(self.zero_stage, bool):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        _positive_int("num_workers", self.num_workers)
        if self.use_gpu not in (None, True, False):
            raise ValueError(f"use_gpu must be true, false or null, got {self.use_gpu!r}")
        if self.use_gpu is False and self.dtype == "fp16":
            raise ValueError("dtype fp16 needs a GPU; use fp32, bf16 or auto on CPU")
        _positive_int("seed", self.seed, allow_zero=True)
        _positive_int("split_seed", self.split_seed, allow_zero=True)
        if self.embedder is not None and (not isinstance(self.embedder, str) or not self.embedder):
            raise ValueError(f"embedder must be null or a non-empty string (a directory or a hub id), got {self.embedder!r}")
        if not isinstance(self.embedder_trust_remote_code, bool):
            raise ValueError(f"embedder_trust_remote_code must be true or false, got {self.embedder_trust_remote_code!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            self.data_dir = str(self.data_dir)
        _positive_int("max_failures", self.max_failures, allow_zero=True)
        _positive_int("torch_threads", self.torch_threads, allow_none=True)

    @property
    def trains(self) -> bool:
        """False for zeroshot: the trial only evaluates."""
        from harness.methods import get

        return get(self.method).trains

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["datasets"] = list(self.datasets)
        d["scored_roles"] = list(self.scored_roles)
        d["plugins"] = list(self.plugins)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrialConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.num_workers

    def total_steps(self, n_train_examples: int) -> int:
        """Optimizer steps this trial runs, given the size of the training mixture."""
        if not self.trains:
            return 0
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * n_train_examples / self.effective_batch()))
        return DEFAULT_STEPS

    def resolved_dtype(self, use_gpu: bool, cpu_bf16: bool = False) -> str:
        """The precision the trial trains in; ``cpu_bf16``: the CPU multiplies bf16 matrices fast."""
        if self.dtype == "auto":
            return "bf16" if use_gpu or cpu_bf16 else "fp32"
        return self.dtype
