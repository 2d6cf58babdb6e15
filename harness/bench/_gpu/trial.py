"""GPU check section ``trial``: ``harness.trial.driver.run_trial`` as a search runs it.

Embedded Ray, one Ray Train worker (NCCL on GPU), DeepSpeed at each ZeRO stage asked for, the
trial's ``dtype: auto``, a few steps on two synthetic twins, selection and report scoring, adapter
export and checkpoint. The trials run in a child process (``python -m harness.bench.gpu
--trial-child``) with a deadline, so a hang is reported as a failure rather than waited on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

from harness.bench._gpu.common import TRIAL_DATASETS, Report, twins


TRIAL_JSON_PREFIX = "GPU-TRIAL-RESULT "


def hashed_embeddings(texts: list[str], dim: int = 256) -> np.ndarray:
    """L2-normalised hashed bag-of-words vectors: a deterministic stand-in for the sentence embedder."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            out[i, h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def trial_specs(text: str) -> list[tuple[str, int]]:
    specs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        method, _, stage = item.partition(":")
        if method not in ("mor1e", "lora", "molora", "dense") or stage not in ("0", "1", "2", "3"):
            raise ValueError(f"--trials item {item!r}: expected METHOD:STAGE with a training method and stage 0-3")
        specs.append((method, int(stage)))
    if not specs:
        raise ValueError("--trials names no trial")
    return specs


def _trial_data(cfg, report_lines: list[str]):
    """``prepare_data``; for MoR1E without the packaged embedder, scores from the hashed stand-in."""
    from harness.methods import method_config, uses_intuition
    from harness.trial.driver import prepare_data
    from harness.trial import TrialConfig

    if not uses_intuition(cfg.method, cfg.hparams):
        return prepare_data(cfg)
    try:
        from mor1e.intuition import packaged_embedder_path

        packaged_embedder_path()
        return prepare_data(cfg)
    except FileNotFoundError as exc:
        report_lines.append(f"note: {exc}; intuition scores from hashed bag-of-words embeddings instead")
    from mor1e.intuition import cluster_scores, kmeans

    plain = TrialConfig.from_dict({**cfg.to_dict(), "hparams": {**cfg.hparams, "use_intuition": False}})
    data = prepare_data(plain)
    k = method_config(cfg.method, cfg.hparams).num_clusters
    sets = [data.train, data.selection, data.report]
    emb = [hashed_embeddings([e.text for e in s]) for s in sets]
    centroids = kmeans(emb[0], k, seed=cfg.seed)
    s = [cluster_scores(e, centroids) for e in emb]
    return dataclasses.replace(data, train_scores=s[0], selection_scores=s[1], report_scores=s[2])


def run_trials_child(args) -> int:
    """Child process: run each trial, print one JSON line per trial as it finishes."""
    import torch

    from harness.ray_env import init_ray
    from harness.trial.driver import _export_repo_path, _quiet_logs, run_trial
    from harness.trial import TrialConfig

    use_gpu = args.device != "cpu" and torch.cuda.is_available()
    _quiet_logs()
    _export_repo_path()
    init_ray(num_cpus=max(8, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="mor1e-gpu-trial-") as tmp:
        data_dir = twins(tmp, n_train=80, n_validation=args.trial_eval)
        for method, stage in trial_specs(args.trials):
            hparams = {"num_clusters": 4} if method == "mor1e" else {}
            cfg = TrialConfig(method=method, model="tiny-random-llama", datasets=TRIAL_DATASETS, hparams=hparams,
                              steps=args.trial_steps, batch_size=8, warmup_steps=1,
                              eval_every=max(1, args.trial_steps // 2), train_limit=64,
                              selection_limit=args.trial_eval, report_limit=args.trial_eval, num_workers=1,
                              zero_stage=stage, use_gpu=use_gpu, scoring="cloze", learning_rate=3e-3,
                              data_dir=data_dir)
            notes: list[str] = []
            out = {"method": method, "zero_stage": stage, "use_gpu": use_gpu,
                   "dtype": cfg.resolved_dtype(use_gpu), "steps": cfg.steps}
            start = time.time()
            try:
                data = _trial_data(cfg, notes)
                r = run_trial(cfg, name=f"{method}-z{stage}", storage_path=os.path.join(tmp, "runs"), data=data)
                ckpt = r.get("checkpoint_path")
                out.update(ok=True, result={k: r.get(k) for k in (
                    "finished", "step", "loss", "selection_accuracy", "report_accuracy", "selection", "report",
                    "trainable_params", "tokens_per_s", "time_to_first_step_s", "peak_rss_mb", "use_gpu")},
                    checkpoint_files=sorted(os.listdir(ckpt)) if ckpt and os.path.isdir(ckpt) else [],
                    adapter_files=sorted(os.listdir(os.path.join(ckpt, "adapter")))
                    if ckpt and os.path.isdir(os.path.join(ckpt, "adapter")) else [])
            except Exception as exc:  # reported by the parent as a failed check
                out.update(ok=False, error=f"{type(exc).__name__}: {exc}"[-2000:],
                           traceback=traceback.format_exc()[-4000:])
            out["wall_s"] = time.time() - start
            out["notes"] = notes
            print(TRIAL_JSON_PREFIX + json.dumps(out, default=str), flush=True)
    return 0


def check_trial_result(t: dict) -> list[str]:
    """Problems with one trial's result (empty when it is what a completed trial reports)."""
    r = t.get("result") or {}
    problems = []
    if not r.get("finished") or r.get("step") != t["steps"]:
        problems.append(f"finished={r.get('finished')} step={r.get('step')}")
    loss = r.get("loss")
    if not isinstance(loss, (int, float)) or not np.isfinite(loss):
        problems.append(f"loss {loss!r}")
    for role in ("selection", "report"):
        got = set((r.get(role) or {}).keys())
        if got != set(TRIAL_DATASETS):
            problems.append(f"{role} datasets {sorted(got)}")
    if not (r.get("tokens_per_s") or 0) > 0:
        problems.append("no tokens/s")
    if r.get("use_gpu") != t["use_gpu"]:
        problems.append(f"use_gpu {r.get('use_gpu')}")
    if f"step{t['steps']}" not in t.get("checkpoint_files", []):
        problems.append(f"checkpoint has {t.get('checkpoint_files')}")
    if "adapter_model.safetensors" not in t.get("adapter_files", []):
        problems.append(f"adapter export has {t.get('adapter_files')}")
    return problems


def run(report: Report, args, device, tmp: str) -> list[dict]:
    """Run the trials in a child process with a deadline; one check line per trial."""
    section = "trial"
    import importlib.util

    missing = [m for m in ("ray", "deepspeed") if importlib.util.find_spec(m) is None]
    if missing:
        report.add(section, "ray and deepspeed installed", False, f"missing: {', '.join(missing)}")
        return []
    cmd = [sys.executable, "-m", "harness.bench.gpu", "--trial-child", "--trials", args.trials,
           "--trial-steps", str(args.trial_steps), "--trial-eval", str(args.trial_eval), "--device", args.device]
    trials: list[dict] = []
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.trial_timeout,
                              env=os.environ.copy())
        stdout, timed_out = proc.stdout, False
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        timed_out = True
    for line in stdout.splitlines():
        if line.startswith(TRIAL_JSON_PREFIX):
            trials.append(json.loads(line[len(TRIAL_JSON_PREFIX):]))
    for t in trials:
        name = f"{t['method']} ZeRO-{t['zero_stage']} ({'GPU, NCCL' if t['use_gpu'] else 'CPU, gloo'}, {t['dtype']})"
        for note in t.get("notes", []):
            print(note, file=sys.stderr)
        if not t["ok"]:
            print(t.get("traceback", ""), file=sys.stderr)
            report.add(section, name, False, t["error"].splitlines()[-1][:300] if t["error"] else "failed")
            continue
        problems = check_trial_result(t)
        r = t["result"]
        report.add(section, name, not problems,
                   "; ".join(problems) if problems else
                   f"{t['steps']} steps, loss {r['loss']:.3f}, selection {100 * r['selection_accuracy']:.1f}%, "
                   f"{r['tokens_per_s']:.0f} tokens/s")
    if timed_out:
        report.add(section, "trials finished in time", False,
                   f"child stopped after {args.trial_timeout} s with {len(trials)} of "
                   f"{len(trial_specs(args.trials))} trials done")
    elif proc.returncode != 0 or len(trials) != len(trial_specs(args.trials)):
        report.add(section, "trial child process", False, f"exit {proc.returncode}, {len(trials)} trial results")
    return trials


def table(trials: list[dict], args, device) -> str:
    lines = ["| method | ZeRO | device | dtype | steps | final loss | selection acc | report acc | train tokens/s "
             "| time to first step (s) | peak RSS (MB) | trial wall (s) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in trials:
        r = t.get("result") or {}

        def f(key, fmt, scale=1.0):
            v = r.get(key)
            return "-" if not isinstance(v, (int, float)) else format(scale * v, fmt)

        lines.append(f"| {t['method']} | {t['zero_stage']} | {'GPU' if t['use_gpu'] else 'CPU'} | {t['dtype']} "
                     f"| {r.get('step', '-')} | {f('loss', '.3f')} | {f('selection_accuracy', '.1f', 100)} "
                     f"| {f('report_accuracy', '.1f', 100)} | {f('tokens_per_s', '.0f')} "
                     f"| {f('time_to_first_step_s', '.1f')} | {f('peak_rss_mb', '.0f')} | {t['wall_s']:.0f} |")
    return "\n".join(lines)
