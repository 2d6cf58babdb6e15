"""The single-trial command line: parse the arguments, then run one trial through ``harness.trial.driver``.

    python harness/train.py --method mor1e --model tiny-random-llama --datasets boolq,copa --steps 40

The trial itself (checks, data, the ``TorchTrainer``, the worker loop, the rows) is the
``harness.trial`` package; this file only turns arguments into a ``TrialConfig``, writes the twins
when no data dir is given, and records the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # `python harness/train.py`: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.trial.config import TrialConfig  # noqa: E402
from harness.trial.driver import (  # noqa: E402
    MIN_EMBEDDED_CPUS,
    _export_repo_path,
    _quiet_logs,
    check_trial,
    format_table,
    prepare_data,
    run_trial,
    trial_predictions,
    trial_rows,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults beside each option, the examples kept as written."""


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python harness/train.py", formatter_class=_Help,
                description="Run one trial (one method, one hyperparameter set) as a Ray Train job, without a "
                            "search; print its selection and report accuracy per dataset.",
                epilog="examples:\n"
                       "  python harness/train.py --method lora --model tiny-random-llama --datasets copa,boolq "
                       "--steps 8\n"
                       "  python harness/train.py --method mor1e --workers 2 --zero-stage 2 --hparams "
                       "'{\"r1\": 4, \"r2\": 8}'\n"
                       "  python harness/train.py --method zeroshot --datasets all --scoring cloze\n\n"
                       "writes <out>/leaderboard.parquet (study --study), <out>/predictions.parquet and\n"
                       "<out>/runs/ (Ray's checkpoints); without --data-dir the twins are written to a\n"
                       "temporary directory. A default of None is the trial's own (harness/trial/config.py).")
    p.add_argument("--method", required=True, help="a method of harness.methods (python -m harness.methods list)")
    p.add_argument("--model", default="smollm2-135m", help="preset (tiny-random-llama, smollm2-135m), hub id or dir")
    p.add_argument("--datasets", default="all", help="'all' or comma-separated names")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 100, or from --epochs)")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2, 3))
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (processes)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="auto: GPU if Ray has one")
    p.add_argument("--data-dir", default=None, help="DATA_DIR/<dataset>/<split>.jsonl; default: synthetic twins")
    p.add_argument("--synthetic-train", type=int, default=200, help="train rows per twin (no --data-dir)")
    p.add_argument("--synthetic-validation", type=int, default=50, help="report rows per twin (no --data-dir)")
    p.add_argument("--out", default="results/single", help="writes <out>/leaderboard.parquet and <out>/runs/")
    p.add_argument("--study", default="single", help="leaderboard study name")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--train-limit", type=int, default=None, help="training examples per dataset")
    p.add_argument("--selection-limit", type=int, default=None)
    p.add_argument("--report-limit", type=int, default=None)
    p.add_argument("--max-seq-len", type=int, default=None)
    p.add_argument("--scoring", choices=("letter", "cloze"), default="letter")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    p.add_argument("--hparams", default="{}", help='method hyperparameters as JSON, e.g. \'{"r1": 4, "r2": 8}\'')
    p.add_argument("--max-failures", type=int, default=None)
    p.add_argument("--address", default=None, help="join a running Ray cluster (default: embedded Ray)")
    return p


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    try:
        hparams = json.loads(args.hparams)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--hparams is not valid JSON: {exc.msg}") from None
    kwargs: dict[str, Any] = dict(
        method=args.method, model=args.model, datasets=args.datasets, hparams=hparams, steps=args.steps,
        epochs=args.epochs, zero_stage=args.zero_stage, num_workers=args.workers, data_dir=args.data_dir,
        seed=args.seed, scoring=args.scoring, dtype=args.dtype,
        use_gpu={"auto": None, "cpu": False, "gpu": True}[args.device],
    )
    optional = {"learning_rate": args.lr, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
                "warmup_steps": args.warmup_steps, "eval_every": args.eval_every, "train_limit": args.train_limit,
                "selection_limit": args.selection_limit, "report_limit": args.report_limit,
                "max_seq_len": args.max_seq_len, "max_failures": args.max_failures}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return TrialConfig(**kwargs)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        check_trial(cfg, embedded=args.address is None and not os.environ.get("RAY_ADDRESS"))
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a directory")
        if args.data_dir is None and (args.synthetic_train < 1 or args.synthetic_validation < 1):
            raise ValueError("--synthetic-train and --synthetic-validation must be >= 1")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    _quiet_logs()
    _export_repo_path()
    from harness.data import DataError, write_synthetic
    from harness.predictions import PREDICTIONS_FILE, append_predictions
    from harness.ray_env import init_ray
    from harness.records import append_rows

    from harness.provenance import data_source

    trial_id = f"{cfg.method}-{secrets.token_hex(4)}"
    with contextlib.ExitStack() as stack:
        synthetic = None
        twins = tuple(d for d in cfg.datasets if not d.startswith("bigbench_"))  # BIG-bench: the fetched files
        if cfg.data_dir is None and len(twins) < len(cfg.datasets):
            from harness.data.bigbench import ensure_fetched

            try:
                fetched = ensure_fetched(cfg.datasets)
            except DataError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(fetched.line(), flush=True)
        if cfg.data_dir is None and twins:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mor1e-twins-"))
            synthetic = {"seed": 0, "n_train": args.synthetic_train, "n_validation": args.synthetic_validation}
            write_synthetic(tmp, datasets=twins, **synthetic)
            cfg = TrialConfig.from_dict({**cfg.to_dict(), "data_dir": tmp})
            print(f"data: synthetic twins ({args.synthetic_train} train / {args.synthetic_validation} "
                  f"report rows each)", flush=True)
        source = data_source(cfg.datasets, data_dir=cfg.data_dir, synthetic=synthetic)
        try:
            data = prepare_data(cfg)
        except (DataError, ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"trial {trial_id}: {cfg.method} on {cfg.model}, {len(cfg.datasets)} dataset(s), "
              f"{len(data.train)} train / {len(data.selection)} selection / {len(data.report)} report examples, "
              f"{data.total_steps} steps, {cfg.num_workers} worker(s), ZeRO-{cfg.zero_stage}", flush=True)
        init_ray(args.address, num_cpus=max(MIN_EMBEDDED_CPUS, os.cpu_count() or 1))
        start = time.time()
        try:
            result = run_trial(cfg, name=trial_id, storage_path=(out / "runs").resolve(), progress=True, data=data)
            status, reason = ("failed", f"diverged: {result['diverged']}") if result.get("diverged") \
                else ("completed", None)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # recorded as a failed trial, then reported
            result, status, reason = {}, "failed", " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        wall = time.time() - start
    rows = trial_rows(cfg if args.data_dir else TrialConfig.from_dict({**cfg.to_dict(), "data_dir": None}),
                      result, study=args.study, trial_id=trial_id, status=status, status_reason=reason,
                      wall_s=wall, data_source=source)
    if status == "completed":  # the rows of a failed trial carry no accuracies to back
        append_predictions(out / PREDICTIONS_FILE, trial_predictions(cfg, result, study=args.study,
                                                                     trial_id=trial_id))
    append_rows(out / "leaderboard.parquet", rows)
    if status != "completed":
        print(f"trial {trial_id} failed: {reason}", file=sys.stderr)
        print(f"recorded in {out / 'leaderboard.parquet'}", file=sys.stderr)
        return 1
    print()
    print(format_table(cfg, result))
    print()
    print(f"trainable params {result.get('trainable_params'):,} | {result.get('precision', '?')} | "
          f"tokens/s {result.get('tokens_per_s', 0):.0f} | "
          f"peak RSS {result.get('peak_rss_mb', 0):.0f} MB/worker | first step after "
          f"{_fmt(result.get('time_to_first_step_s'))} s | wall {wall:.0f} s")
    print(f"checkpoint: {result.get('checkpoint_path')}")
    print(f"recorded {len(rows)} rows in {out / 'leaderboard.parquet'}")
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


if __name__ == "__main__":
    sys.exit(main())
