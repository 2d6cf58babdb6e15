"""How long a study takes, in units of a reference step timed on the same machine just before it.

Machines of one class differ by about 2x in absolute time (another CPU model, AMX or not), so a
study's time is stated as a ratio: the *unit* is one fp32 PEFT-LoRA r=8 AdamW training step of
SmolLM2-135M at 8 x 128 tokens on all of this machine's cores, the median of a few steps after a
warm-up (``python -m harness.bench adapters --methods lora``), timed in a process of its own
before Ray starts and again after the study; the shorter counts, since a unit timed while something
else runs is too long and would flatter the study. What a first run on a fresh machine adds (SmolLM2's
conversion, the sentence embeddings of every example, the compilation of DeepSpeed's CPU op) is
done and timed before the study's clock starts, and reported apart from it.
"""

from __future__ import annotations

import argparse
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
    from harness.train import prepare_data
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
        built = subprocess.run([sys.executable, "-c", "from harness.training import build_deepspeed_cpu_op as b; b()"],
                               capture_output=True, text=True, cwd=REPO_DIR)
        timing["deepspeed_op_s"] = time.time() - start
        line += f", DeepSpeed's CPU op {timing['deepspeed_op_s']:.0f} s"
        if built.returncode != 0:
            line += f" (failed; each trial will try again: {(built.stderr.strip().splitlines() or ['?'])[-1]})"
    progress.line(line)
    return timing
