"""Benchmark of one short trial: 1 and 2 Ray Train workers at ZeRO-0/2/3.

    python -m harness.bench trial [--model smollm2-135m] [--steps 8] [--workers 1,2] [--stages 0,2,3]

For each (workers, stage) it runs a short MoR1E trial on two synthetic twins
and prints a markdown table of training tokens/s (all workers together),
per-worker peak RSS, and time to first step: from ``TorchTrainer.fit()`` to
the end of the first optimizer step, i.e. Ray worker start-up, imports, model
load and ``deepspeed.initialize``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.bench trial")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="mor1e")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--stages", default="0,2,3", help="comma-separated ZeRO stages")
    p.add_argument("--datasets", default="copa,boolq")
    args = p.parse_args(argv)

    from harness.data import write_synthetic
    from harness.ray_env import init_ray
    from harness.trial.driver import MIN_EMBEDDED_CPUS, _quiet_logs, prepare_data, run_trial
    from harness.trial import TrialConfig

    try:
        workers, stages = _ints(args.workers), _ints(args.stages)
        datasets = tuple(args.datasets.split(","))
        configs = [
            TrialConfig(method=args.method, model=args.model, datasets=datasets, steps=args.steps,
                        batch_size=args.batch_size, warmup_steps=1, eval_every=0, train_limit=64, selection_limit=8,
                        report_limit=8, num_workers=w, zero_stage=s, use_gpu=False,
                        hparams={"num_clusters": 4} if args.method == "mor1e" else {})
            for w in workers for s in stages
        ]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if max(workers) > (os.cpu_count() or 1):
        print(f"note: {max(workers)} workers on {os.cpu_count()} CPUs", file=sys.stderr)

    _quiet_logs()
    init_ray(num_cpus=max(MIN_EMBEDDED_CPUS, os.cpu_count() or 1))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mor1e-bench-trial-") as tmp:
        write_synthetic(os.path.join(tmp, "data"), seed=0, n_train=80, n_validation=8, datasets=datasets)
        for cfg in configs:
            cfg = TrialConfig.from_dict({**cfg.to_dict(), "data_dir": os.path.join(tmp, "data")})
            data = prepare_data(cfg)
            start = time.time()
            r = run_trial(cfg, name=f"w{cfg.num_workers}-z{cfg.zero_stage}", storage_path=os.path.join(tmp, "runs"),
                          data=data)
            rows.append((cfg, r, time.time() - start))
            print(f"workers {cfg.num_workers} ZeRO-{cfg.zero_stage}: {r['tokens_per_s']:.0f} tokens/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, first step after {r['time_to_first_step_s']:.1f} s",
                  file=sys.stderr, flush=True)

    print(f"One {args.method} trial on {args.model}: {args.steps} steps, micro-batch {args.batch_size} per worker, "
          f"twins {', '.join(datasets)}, on CPU (gloo), {os.cpu_count()} CPUs.")
    print()
    print("| workers | ZeRO | precision | train tokens/s (all workers) | peak RSS per worker (MB) "
          "| time to first step (s) | trial wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for cfg, r, wall in rows:
        rss = " / ".join(f"{x:.0f}" for x in r["peak_rss_mb_per_worker"])
        print(f"| {cfg.num_workers} | {cfg.zero_stage} | {r['precision']} | {r['tokens_per_s']:.0f} | {rss} | "
              f"{r['time_to_first_step_s']:.1f} | {wall:.0f} |")
    print()
    if (os.cpu_count() or 1) <= 2 and max(workers) > 1:
        print("On this machine the 2 workers share the same 2 cores: compare memory and start-up overhead "
              "across rows, not tokens/s.")
    return 0
