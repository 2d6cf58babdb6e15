"""Training-step throughput of the adapter methods on one model.

    python -m harness.bench adapters [--model smollm2-135m] [--batch 8] [--seq 128] [--warmup 2] [--steps 5]
                                     [--threads 2] [--dtype fp32|bf16]

Each method runs in its own subprocess (so peak RSS is its own) and times full steps:
forward, loss backward, AdamW step, on random token ids.  Methods:

- dense: every parameter trainable;
- lora: PEFT LoRA r=8, alpha=16 on all attention and MLP projections;
- molora: 8 LoRA experts of rank 4 (32 rank-1 directions in A, like MoR1E's grid), softmax router;
- mor1e: the authors' layer (``MoR1EConfig.authors``: one router per projection), r1=4 × r2=8 = 32
  rank-1 experts, k=8 intuition clusters, with intuition scores set (a model built with intuition
  refuses to run without them).

Prints a markdown table: trainable params, median step time, tokens/s, peak RSS and the
ratio of tokens/s to PEFT LoRA's; also median CPU seconds per step and the LoRA ratio by
CPU time, which stay meaningful when other jobs share the cores (run ``uptime`` first).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

METHODS = {
    "dense": ("dense", {}),
    "lora": ("lora", {"rank": 8, "alpha": 16.0}),
    "molora": ("molora", {"num_experts": 8, "rank": 4}),
    "mor1e": ("mor1e", {"r1": 4, "r2": 8, "num_clusters": 8}),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.bench adapters", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="measured steps per method")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--repeats", type=int, default=1, help="runs per method; the fastest median is kept")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast over fp32 weights with eager attention, as trials on AMX CPUs train")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    return p


def run_one(method: str, args) -> dict:
    import torch

    import mor1e
    from harness.methods import apply_method, uses_intuition
    from harness.models import load_model

    torch.set_num_threads(args.threads)
    name, hparams = METHODS[method]
    bf16 = args.dtype == "bf16"
    model, _ = load_model(args.model, seed=0, attn_implementation="eager" if bf16 else None)
    apply_method(model, name, hparams)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=gen)
    # Random (batch, k) scores: the same shapes and work as the cosine similarities a trial computes.
    scores = torch.rand(args.batch, hparams["num_clusters"], generator=gen) if uses_intuition(name, hparams) else None
    times, cpu_times = [], []
    with mor1e.intuition(model, scores):
        for step in range(args.warmup + args.steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, labels=ids).loss + mor1e.aux_loss(model)
            loss.backward()
            optimizer.step()
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    median = statistics.median(times)
    return {
        "method": method,
        "trainable": mor1e.count_trainable(model),
        "median_s": median,
        # CPU seconds barely move when other processes compete for the cores (wall time does).
        "median_cpu_s": statistics.median(cpu_times),
        "tokens_per_s": args.batch * args.seq / median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _spawn(method: str, args) -> dict:
    cmd = [sys.executable, "-m", "harness.bench.adapters", "--one", method]
    for flag in ("model", "batch", "seq", "warmup", "steps", "threads", "dtype"):
        cmd += [f"--{flag}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"{method} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        print(f"error: unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    for flag in ("batch", "seq", "steps", "threads", "repeats"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag} must be >= 1", file=sys.stderr)
            return 2
    if args.warmup < 0:
        print("error: --warmup must be >= 0", file=sys.stderr)
        return 2
    from harness.models import check_model_name

    try:
        check_model_name(args.model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for method in methods:
            print(f"[{repeat + 1}/{args.repeats}] {method}: {args.warmup}+{args.steps} steps ...", file=sys.stderr, flush=True)
            r = _spawn(method, args)
            if method not in results or r["median_s"] < results[method]["median_s"]:
                results[method] = r
    lora = results.get("lora")
    print(f"\n{args.model}, {args.dtype}, batch {args.batch} x {args.seq} tokens, {args.threads} threads, "
          f"median of {args.steps} steps after {args.warmup} warmup\n")
    print("| method | config | trainable params | median step (s) | tokens/s | peak RSS (MB) | vs LoRA tokens/s "
          "| CPU s/step | vs LoRA (CPU time) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in methods:
        r = results[method]
        ratio = f"{r['tokens_per_s'] / lora['tokens_per_s']:.2f}x" if lora else "n/a"
        cpu_ratio = f"{lora['median_cpu_s'] / r['median_cpu_s']:.2f}x" if lora else "n/a"
        config = ", ".join(f"{k}={v}" for k, v in METHODS[method][1].items()) or "all params"
        print(
            f"| {method} | {config} | {r['trainable']:,} | {r['median_s']:.3f} | {r['tokens_per_s']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {ratio} | {r['median_cpu_s']:.2f} | {cpu_ratio} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
