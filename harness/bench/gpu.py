"""Checks and timings of the code paths that only a GPU exercises.

    python -m harness.bench gpu [--checks library,trial,throughput] [--device auto|cuda|cpu]
                                [--trials mor1e:2,mor1e:0,lora:2] [--hidden 2048 --layers 8 ...]

Three sections, run in this order, each printed as a markdown table. Each is one module of
``harness/bench/_gpu/``; ``SECTIONS`` below is the table the script loops over:

1. ``library``: the adapter library on the device (``tiny-random-llama``): for mor1e, molora and
   lora a freshly wrapped model equals its base exactly (fp32 and bf16), gradients reach the
   adapter parameters and nothing else, bf16 and fp32 logits of a model with nonzero adapters
   agree (relative error of the logits), and ``harness.evaluate.option_logprobs`` gives the same
   numbers batched as one pair at a time (fp32, cloze and letter options of synthetic twins,
   with intuition scores; the bf16 difference is shown for information).
2. ``trial``: ``harness.trial.driver.run_trial`` as a search runs it: embedded Ray, one Ray Train
   worker (NCCL on GPU), DeepSpeed at each ZeRO stage asked for, bf16 on GPU (the trial's
   ``dtype: auto``), a few steps on two synthetic twins, selection and report scoring, adapter
   export and checkpoint. The trials run in a child process with a deadline, so a hang is
   reported as a failure rather than waited on.
3. ``throughput``: training-step tokens/s of dense, PEFT LoRA r=8, MoLoRA 8x4 and MoR1E 4x8
   (the ``harness.bench adapters`` configurations) on a random Llama of realistic width, in
   bf16 parameters as DeepSpeed casts them, forward + backward + torch AdamW, CUDA-synchronised
   median of the measured steps; methods are timed in turns and the best median is kept.
   ``--methods`` also takes ``mor1e-unshared`` and ``mor1e-token-only`` (no intuition term);
   ``--profile`` adds one profiled step per method: aten ops and kernel launches for the forward,
   the backward and the optimizer step, and summed kernel time, which tell a GPU-bound step from
   one that waits on the host. The aten-op counts need no GPU (``--device cpu --profile``).

``--device auto`` uses CUDA when torch sees a GPU; without one the library checks run on the
CPU and the GPU-only sections are skipped with a message. ``--device cpu`` runs every section
on the CPU (fp32, gloo), which is how the script itself is tested on a machine without a GPU.
MoR1E trials need intuition scores: when the packaged sentence embedder is not installed, the
scores come from hashed bag-of-words embeddings of the same texts (said so in the output);
everything downstream of the embedder (k-means, cluster scores, their trip to the workers) is
the real code.

Exit status: 0 when every check passed (skipped sections do not fail), 1 when one failed,
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from harness.bench._gpu import library, throughput, trial
from harness.bench._gpu.common import Report, resolve_device


@dataclass(frozen=True)
class Section:
    """One section of the check: what runs it, what prints its table, and whether it needs a GPU."""

    name: str
    run: Callable[..., Any]  # (report, args, device, tmp) -> what ``table`` prints, or None
    table: Callable[..., str] | None  # (result, args, device) -> markdown
    needs_gpu: bool  # skipped (not failed) on a machine without CUDA, unless --device cpu
    check: str  # the check line shown when the section is skipped
    per_device: bool  # label the section with its device, e.g. "library (cuda)"

    def label(self, device) -> str:
        return f"{self.name} ({device.type})" if self.per_device else self.name


SECTIONS = (
    Section("library", library.run, None, needs_gpu=False, check="adapter library", per_device=True),
    Section("trial", trial.run, trial.table, needs_gpu=True, check="Ray Train + DeepSpeed trial on GPU",
            per_device=False),
    Section("throughput", throughput.run, throughput.table, needs_gpu=True, check="adapter step throughput",
            per_device=True),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)
POSITIVE_FLAGS = ("trial_steps", "trial_eval", "trial_timeout", "hidden", "intermediate", "layers", "heads",
                  "kv_heads", "vocab", "batch", "seq", "steps", "repeats")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--checks", default="library,trial,throughput", help="comma-separated sections to run")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--trials", default="mor1e:2,mor1e:0,lora:2",
                   help="comma-separated METHOD:ZERO_STAGE trials (tiny-random-llama, copa+boolq twins)")
    p.add_argument("--trial-steps", type=int, default=6)
    p.add_argument("--trial-eval", type=int, default=16, help="selection and report examples per dataset")
    p.add_argument("--trial-timeout", type=int, default=240, help="seconds for all trials together")
    p.add_argument("--methods", default=",".join(throughput.DEFAULT_THROUGHPUT),
                   help="throughput methods, from " + ",".join(throughput.THROUGHPUT_METHODS))
    p.add_argument("--profile", action="store_true", help="also profile one step per throughput method")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--trial-child", action="store_true", help=argparse.SUPPRESS)
    return p


def _check_args(args) -> str | None:
    """The first problem with the arguments, as one line, or None."""
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    bad = [c for c in checks if c not in SECTION_NAMES]
    if bad or not checks:
        return f"unknown check(s) {', '.join(bad) or '(none)'}; choose from {', '.join(SECTION_NAMES)}"
    unknown = [m for m in args.methods.split(",") if m.strip() and m.strip() not in throughput.THROUGHPUT_METHODS]
    if unknown:
        return f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(throughput.THROUGHPUT_METHODS)}"
    try:
        trial.trial_specs(args.trials)
        resolve_device(args.device)
    except ValueError as exc:
        return str(exc)
    for flag in POSITIVE_FLAGS:
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be >= 1"
    return None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.trial_child:
        return trial.run_trials_child(args)
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    checks = {c.strip() for c in args.checks.split(",") if c.strip()}
    device = resolve_device(args.device)

    import torch
    import transformers

    gpu_only = device.type == "cpu" and args.device == "auto"
    env = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.insert(0, f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})")
    else:
        env.insert(0, f"CPU ({os.cpu_count()} cores)")
    print("device: " + ", ".join(env), flush=True)
    if gpu_only:
        print("no CUDA device: the library checks run on the CPU; the trial and throughput sections need a GPU "
              "and are skipped (--device cpu runs them on the CPU)", flush=True)

    report = Report()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mor1e-gpu-") as tmp:
        for section in SECTIONS:
            if section.name not in checks:
                continue
            if section.needs_gpu and gpu_only:
                report.add(section.name, section.check, None, "no CUDA device")
                continue
            start = time.time()
            try:
                results[section.name] = section.run(report, args, device, tmp)
            except Exception as exc:
                traceback.print_exc()
                report.add(section.label(device), "ran to the end", False, f"{type(exc).__name__}: {exc}"[:300])
            print(f"{section.name}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)

    print()
    print(report.table())
    for section in SECTIONS:
        if section.table is not None and results.get(section.name):
            print()
            print(section.table(results[section.name], args, device))
    print()
    print("RESULT: " + ("FAIL" if report.failed else "PASS"), flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
