"""How long a study takes, in units of a reference step timed on the same machine just before it.

Machines of one class differ by about 2x in absolute time (another CPU model, AMX or not), so a
study's time is stated as a ratio: the *unit* is one fp32 PEFT-LoRA r=8 AdamW training step of
SmolLM2-135M at 8 x 128 tokens on all of this machine's cores, the median of a few steps after a
warm-up (``python -m harness.bench adapters --methods lora``), timed in a process of its own
before Ray starts and again after the study; the shorter counts, since a unit timed while something
else runs is too long and would flatter the study. What a first run on a fresh machine adds (SmolLM2's
conversion, the sentence embeddings of every example, the compilation of DeepSpeed's CPU op) is
done and timed before the study's clock starts, and reported apart from it.

It also owns the study's time model, used by ``--show-plan`` and by the ETA a running study prints:
the work of a trial (optimizer steps to train, examples to score, ``trial_work``), a prior cost of
that work in units (``PRIOR_UNITS``), and ``estimate_remaining_s``, which times the work left
from the trials that have finished (see its doc).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from harness.study.plan import Plan
from harness.study.progress import Progress

REPO_DIR = Path(__file__).resolve().parents[2]
UNIT = dict(model="smollm2-135m", batch=8, seq=128, warmup=2, steps=3, dtype="fp32")
UNIT_NAME = "fp32 PEFT-LoRA r=8 AdamW step of SmolLM2-135M at 8x128 tokens"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what the platform says elsewhere."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_unit(threads: int | None = None) -> dict:
    """Time the unit step in a child process; {"unit_s", "threads", "cpu"}."""
    from harness.bench.adapters import _spawn

    threads = threads or os.cpu_count() or 1
    result = _spawn("lora", argparse.Namespace(**UNIT, threads=threads))
    return {"unit_s": result["median_s"], "threads": threads, "cpu": cpu_model()}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def prepare(plan: Plan, progress: Progress) -> dict:
    """Do, and time, what a first run on a fresh machine adds: BIG-bench's task files, the model's cache, the intuition
    embeddings of every example the study's MoR1E trials score (cached on disk, keyed by the texts)
    and, for CPU trials on this machine, DeepSpeed's CPU op (cached by torch, built on first use)."""
    from harness.models import prepare as prepare_model
    from harness.trial.driver import prepare_data
    from harness.trial import TrialConfig

    p = plan.profile
    fetched = None
    if plan.data_dir is None:  # BIG-bench datasets read the fetched task files (harness.data.bigbench)
        from harness.data import DataError
        from harness.data.bigbench import ensure_fetched

        try:
            fetched = ensure_fetched(p.datasets)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        if fetched is not None:
            progress.line(fetched.line())
    start = time.time()
    converted = prepare_model(p.model)
    model_s = time.time() - start
    start = time.time()
    from harness.methods import reads_intuition

    # Methods that read intuition scores embed their examples once, here (cached for every trial).
    embedder = next((m for m in p.methods if reads_intuition(m)), None)
    if embedder is not None:
        for phase in ("search", "final"):
            prepare_data(TrialConfig(**plan.base_trial(embedder, phase)))
    embed_s = time.time() - start
    timing = {"model_s": model_s, "embed_s": embed_s, "model_built": converted}
    if fetched is not None:
        timing["bigbench_fetch_s"] = fetched.seconds
    line = (f"prepared: model cache {'built' if converted else 'found'} ({model_s:.0f} s), "
            f"intuition embeddings {embed_s:.0f} s (on disk for every trial)")
    use_gpu = p.resources.get("use_gpu")
    if p.methods and plan.address is None and (use_gpu is False or use_gpu is None and not _has_cuda()):
        start = time.time()
        built = subprocess.run([sys.executable, "-c", "from harness.trial.step import build_deepspeed_cpu_op as b; b()"],
                               capture_output=True, text=True, cwd=REPO_DIR)
        timing["deepspeed_op_s"] = time.time() - start
        line += f", DeepSpeed's CPU op {timing['deepspeed_op_s']:.0f} s"
        if built.returncode != 0:
            line += f" (failed; each trial will try again: {(built.stderr.strip().splitlines() or ['?'])[-1]})"
    progress.line(line)
    return timing


# ---------------------------------------------------------------- the time model

# The prior: what one trial costs, in units, before any trial of its method has finished. From the
# default study's timings on two CPUs (docs/benchmarks.md, "Where the time goes": per-step training, scoring and
# Ray Train's start-up and teardown, each divided by that machine's unit), at 1 torch thread per
# trial: a training step of an 8-example batch, one scored example, and the fixed cost of a trial.
PRIOR_UNITS = {
    "step": 0.35,        # adapters: 0.27 (bf16) to 0.44 (fp32) units per 8-example step
    "dense_step": 0.55,  # full finetuning: 0.45 to 0.61
    "example": 0.02,     # 0.014 to 0.025 units per scored example
    "trial": 6.0,        # Ray Train start-up, model and DeepSpeed set-up, last checkpoint, teardown: 5-7 units
}
# Seconds per unit when none was measured (no unit step and no earlier study's timing record): the
# middle of the units this machine class measured (4.7-11.3 s). The first finished trial corrects it.
DEFAULT_UNIT_S = 8.0


@dataclasses.dataclass(frozen=True)
class Work:
    """What one trial does: optimizer steps of ``batch`` examples, and examples scored."""

    method: str
    phase: str
    steps: int
    examples: int
    batch: int = 8

    def units(self, fraction_left: float = 1.0) -> float:
        """The prior's cost of the work, in units; ``fraction_left`` of the training and scoring left."""
        step = PRIOR_UNITS["dense_step" if self.method == "dense" else "step"] * self.batch / 8
        return PRIOR_UNITS["trial"] * (fraction_left >= 1.0) + fraction_left * (
            self.steps * step + self.examples * PRIOR_UNITS["example"])


@dataclasses.dataclass(frozen=True)
class Finished:
    """A finished trial as the ETA learns from it: its work (the steps it did train) and its wall time."""

    work: Work
    wall_s: float


def estimate_remaining_s(pending: list[tuple[Work, float]], finished: list[Finished], *, unit_s: float | None,
                         slots: int) -> float:
    """Seconds until ``pending`` is done on ``slots`` concurrent trials.

    ``pending``: (a trial's work, the fraction of its steps still to run: 1 for a trial not yet
    started). Each method's trials are timed by the ratio of its finished trials' wall time to the
    prior's prediction for the work they did (pruned trials did fewer steps and are predicted so);
    a method with no finished trial takes the ratio of all finished trials, and with none at all the
    prior stands (``unit_s``, or ``DEFAULT_UNIT_S`` when no unit was measured). Work is spread over
    the slots, but no estimate is shorter than the longest single trial left.
    """
    unit_s = unit_s or DEFAULT_UNIT_S
    observed: dict[str, list[float]] = {}
    for f in finished:
        predicted = f.work.units() * unit_s
        if predicted > 0 and f.wall_s > 0 and math.isfinite(f.wall_s):
            totals = observed.setdefault(f.work.method, [0.0, 0.0])
            totals[0] += f.wall_s
            totals[1] += predicted
    overall = [sum(t[0] for t in observed.values()), sum(t[1] for t in observed.values())]
    ratios = {m: t[0] / t[1] for m, t in observed.items()}
    default = overall[0] / overall[1] if overall[1] else 1.0
    costs = [work.units(left) * unit_s * ratios.get(work.method, default) for work, left in pending]
    if not costs:
        return 0.0
    return max(sum(costs) / max(1, slots), max(costs))


def trial_work(plan: Plan) -> dict[tuple[str, str], Work]:
    """{(phase, method): the work of one full trial} for every trial the study runs.

    A search trial trains the budget's steps and scores the selection split at every evaluation;
    a final run trains them and scores the report split once; the reference scores both splits.
    Example counts follow the data the profile names (the twins' sizes, or the rows of
    ``--data-dir``) and the per-dataset limits; on the hub they are taken at the limits.
    """
    from harness.data.loading import selection_size
    from harness.study.plan import _default_field

    p = plan.profile
    t = p.training
    limit = {name: t.get(name, _default_field(name)) for name in
             ("train_limit", "selection_limit", "report_limit", "eval_every")}
    n_train, n_selection, n_report = 0, 0, 0
    for d in p.datasets:
        rows, report = _split_rows(plan, d)
        rows = rows if rows is not None else (limit["train_limit"] or 0)
        carve = selection_size(rows)
        train = rows - carve
        n_train += min(train, limit["train_limit"]) if limit["train_limit"] else train
        n_selection += min(carve, limit["selection_limit"]) if limit["selection_limit"] else carve
        report = report if report is not None else (limit["report_limit"] or 0)
        n_report += min(report, limit["report_limit"]) if limit["report_limit"] else report
    batch = t.get("batch_size", _default_field("batch_size")) * t.get("grad_accum", 1) \
        * p.resources["num_workers"]
    steps = _total_steps(t, n_train, batch)
    every = limit["eval_every"]
    evaluations = math.ceil(steps / every) if every else 1
    out = {}
    for method in p.reference:
        out[("reference", method)] = Work(method, "reference", 0, n_selection + n_report, batch)
    for method in p.methods:
        out[("search", method)] = Work(method, "search", steps, evaluations * n_selection, batch)
        out[("final", method)] = Work(method, "final", steps, n_report, batch)
    return out


def _split_rows(plan: Plan, dataset: str) -> tuple[int | None, int | None]:
    """(rows of the train split, rows of the report split) of ``dataset``, or None where unknown."""
    from harness.data.adapters import get_adapter
    from harness.study.plan import _count_rows

    if plan.synthetic:
        return plan.profile.data.get("n_train", 64), plan.profile.data.get("n_validation", 16)
    if plan.data_dir is None:
        return None, None
    a = get_adapter(dataset)
    return _count_rows(plan.data_dir, dataset, a.train_split), _count_rows(plan.data_dir, dataset, a.report_split)


def _total_steps(training: dict, n_train: int, batch: int) -> int:
    """Optimizer steps of a training trial, as ``harness.trial.config.TrialConfig.total_steps`` counts them
    (mirrored: a TrialConfig validates its method, which imports peft)."""
    from harness.trial.config import DEFAULT_STEPS

    if training.get("steps") is not None:
        return int(training["steps"])
    if training.get("epochs") is not None:
        return max(1, math.ceil(training["epochs"] * n_train / batch))
    return DEFAULT_STEPS


def previous_trials(results_dir: Path, *, study: str | None = None) -> list[Finished]:
    """The finished trials the leaderboard in ``results_dir`` holds (of ``study``, or of every study),
    with the steps they trained and their driver's wall time, for the time model."""
    from harness.study.plan import LEADERBOARD_FILE

    path = Path(results_dir) / LEADERBOARD_FILE
    if not path.exists():
        return []
    from harness.records import read_rows

    df = read_rows(path).to_pandas()
    if study is not None:
        df = df[df.study == study]
    df = df[df.wall_s.notna()]
    out = []
    for _, rows in df.groupby(["study", "trial_id"], sort=False):
        row = rows.iloc[0]
        phase = row.phase
        steps = 0 if row.steps is None or row.steps != row.steps else int(row.steps)
        scored = rows[rows.role.notna()]
        examples = int(scored.n_examples.fillna(0).sum())
        budget = _budget(row.budget_json)
        if phase == "search" and steps and budget.get("eval_every"):
            examples *= max(1, math.ceil(steps / budget["eval_every"]))
        batch = (budget.get("batch_size") or 8) * (budget.get("grad_accum") or 1) * (budget.get("num_workers") or 1)
        out.append(Finished(Work(row.method, phase, steps, examples, batch), float(row.wall_s)))
    return out


def recorded_statuses(results_dir: Path, study: str) -> dict[str, int]:
    """{status: trials} of ``study`` in the leaderboard of ``results_dir``."""
    from harness.study.plan import LEADERBOARD_FILE

    path = Path(results_dir) / LEADERBOARD_FILE
    if not path.exists():
        return {}
    from harness.records import read_rows

    df = read_rows(path).to_pandas()
    df = df[df.study == study].drop_duplicates("trial_id")
    return {str(k): int(v) for k, v in df.status.value_counts().items()}


def _budget(budget_json) -> dict:
    import json

    try:
        return json.loads(budget_json) or {} if isinstance(budget_json, str) else {}
    except ValueError:
        return {}


def known_unit_s(results_dir: Path, study: str | None = None) -> tuple[float | None, str]:
    """(seconds per unit, where it comes from): the timing record of ``study`` in ``results_dir``,
    else of the newest study there that timed one; (None, why) when none did."""
    from harness.records import read_timings

    timings = read_timings(results_dir)
    if study in timings and timings[study].get("unit_s"):
        return float(timings[study]["unit_s"]), f"timing/{study}.json"
    timed = [(name, t) for name, t in timings.items() if t.get("unit_s")]
    if timed:
        name, t = max(timed, key=lambda nt: Path(results_dir, "timing", f"{nt[0]}.json").stat().st_mtime)
        return float(t["unit_s"]), f"timing/{name}.json"
    return None, "no unit timed in this results dir"


class Eta:
    """The ETA of a running study: its remaining work, timed by ``estimate_remaining_s``.

    Counts, per (phase, method), the trials left to start; follows each running trial's step (its
    reports); learns from each finished trial's work and wall time. ``seed`` takes the trials a
    resumed study had already finished. Called with no argument it gives the seconds left.
    """

    def __init__(self, plan: Plan, unit_s: float | None):
        from harness.study.plan import trial_counts

        self.work = trial_work(plan)
        self.left = {(phase, m): n for phase, methods in trial_counts(plan).items() for m, n in methods.items()}
        self.unit_s = unit_s
        self.slots = plan.profile.max_concurrent_trials
        self.running: dict[str, tuple[Work, int]] = {}  # trial id -> (its work, its last reported step)
        self.finished: list[Finished] = []

    def seed(self, finished: list[Finished]) -> None:
        for f in finished:
            key = (f.work.phase, f.work.method)
            if self.left.get(key, 0) > 0:
                self.left[key] -= 1
            self.finished.append(f)

    def started(self, trial_id: str, method: str, phase: str) -> None:
        key = (phase, method)
        if trial_id not in self.running and key in self.work:
            self.left[key] = max(0, self.left[key] - 1)
            self.running[trial_id] = (self.work[key], 0)

    def progressed(self, trial_id: str, step) -> None:
        if trial_id in self.running and isinstance(step, (int, float)):
            work, _ = self.running[trial_id]
            self.running[trial_id] = (work, int(step))

    def ended(self, trial_id: str, steps, wall_s) -> None:
        """A trial ended: the steps it trained (pruned ones fewer) and its driver's wall time."""
        work, last = self.running.pop(trial_id, (None, 0))
        if work is None or not isinstance(wall_s, (int, float)):
            return
        steps = int(steps) if isinstance(steps, (int, float)) and steps == steps else last
        done = dataclasses.replace(work, steps=min(steps, work.steps))
        if work.steps and steps < work.steps and work.phase == "search":  # pruned: fewer evaluations too
            done = dataclasses.replace(done, examples=round(work.examples * steps / work.steps))
        self.finished.append(Finished(done, float(wall_s)))

    def __call__(self) -> float:
        pending = [(self.work[key], 1.0) for key, n in self.left.items() for _ in range(n)]
        pending += [(w, 1.0 if not w.steps else max(0.0, 1 - step / w.steps)) for w, step in self.running.values()]
        return estimate_remaining_s(pending, self.finished, unit_s=self.unit_s, slots=self.slots)
