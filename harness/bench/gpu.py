"""Checks and timings of the code paths that only a GPU exercises.

    python -m harness.bench gpu [--checks library,trial,throughput] [--device auto|cuda|cpu]
                                [--trials mor1e:2,mor1e:0,lora:2] [--hidden 2048 --layers 8 ...]

Three sections, run in this order, each printed as a markdown table:

1. ``library``: the adapter library on the device (``tiny-random-llama``): for mor1e, molora and
   lora a freshly wrapped model equals its base exactly (fp32 and bf16), gradients reach the
   adapter parameters and nothing else, bf16 and fp32 logits of a model with nonzero adapters
   agree (relative error of the logits), and ``harness.evaluate.option_logprobs`` gives the same
   numbers batched as one pair at a time (fp32, cloze and letter options of synthetic twins,
   with intuition scores; the bf16 difference is shown for information).
2. ``trial``: ``harness.train.run_trial`` as a search runs it: embedded Ray, one Ray Train
   worker (NCCL on GPU), DeepSpeed at each ZeRO stage asked for, bf16 on GPU (the trial's
   ``dtype: auto``), a few steps on two synthetic twins, selection and report scoring, adapter
   export and checkpoint. The trials run in a child process with a deadline, so a hang is
   reported as a failure rather than waited on.
3. ``throughput``: training-step tokens/s of dense, PEFT LoRA r=8, MoLoRA 8x4 and MoR1E 4x8
   (the ``harness.bench adapters`` configurations) on a random Llama of realistic width, in
   bf16 parameters as DeepSpeed casts them, forward + backward + torch AdamW, CUDA-synchronised
   median of the measured steps; methods are timed in turns and the best median is kept.
   ``--methods`` also takes ``mor1e-unshared`` and ``mor1e-token-only`` (no intuition term);
   ``--profile`` adds one profiled step per method: aten ops, kernel launches and summed kernel
   time, which tell a GPU-bound step from one that waits on the host.

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
import copy
import dataclasses
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

from harness.bench.adapters import METHODS as ADAPTER_BENCH_METHODS

ADAPTER_METHODS = {
    "mor1e": {"r1": 4, "r2": 8, "num_clusters": 3},
    "molora": {"num_experts": 4, "rank": 2},
    "lora": {"rank": 4},
}
TRIAL_DATASETS = ("copa", "boolq")
TRIAL_JSON_PREFIX = "GPU-TRIAL-RESULT "

# Tolerances. Batched vs one-at-a-time is the evaluate module's own contract (fp32); bf16 vs
# fp32 is the relative L2 error of the logits, which for bf16's 8-bit mantissa stays at a few
# parts in a thousand per layer.
LOGPROB_ATOL = 1e-4
BF16_REL_TOL = 5e-2


class Report:
    """Collects PASS / FAIL / SKIP lines per section and prints them as markdown tables."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, section: str, check: str, ok: bool | None, detail: str) -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append((section, check, status, detail))
        print(f"[{section}] {status} {check}: {detail}", file=sys.stderr, flush=True)

    @property
    def failed(self) -> bool:
        return any(r[2] == "FAIL" for r in self.rows)

    def table(self) -> str:
        lines = ["| section | check | result | detail |", "|---|---|---|---|"]
        lines += [f"| {s} | {c} | {st} | {d} |" for s, c, st, d in self.rows]
        return "\n".join(lines)


# ---------------------------------------------------------------- helpers


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no GPU")
    return torch.device(name)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cast_params(model, dtype) -> None:
    """Cast parameters only, keeping buffers (rotary inv_freq) in fp32, as DeepSpeed does for bf16."""
    for module in model.modules():
        for p in module.parameters(recurse=False):
            p.data = p.data.to(dtype)


def _randomise_adapters(model, seed: int = 1) -> None:
    """Nonzero adapter parameters, as after training (a fresh B = 0 would hide the update)."""
    import torch

    import mor1e

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in mor1e.adapter_parameters(model):
            p.copy_((torch.randn(p.shape, generator=g) * 0.05).to(p.device, p.dtype))


def _twins(tmp: str, n_train: int = 40, n_validation: int = 16) -> str:
    from harness.data import write_synthetic

    out = os.path.join(tmp, "twins")
    if not os.path.isdir(out):
        write_synthetic(out, seed=0, n_train=n_train, n_validation=n_validation, datasets=TRIAL_DATASETS)
    return out


def hashed_embeddings(texts: list[str], dim: int = 256) -> np.ndarray:
    """L2-normalised hashed bag-of-words vectors: a deterministic stand-in for the sentence embedder."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            out[i, h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


# ---------------------------------------------------------------- 1. library


def check_library(report: Report, device, tmp: str) -> None:
    import torch

    import mor1e
    from harness.data import load_examples
    from harness.evaluate import option_logprobs
    from harness.methods import apply_method
    from harness.models import load_model

    section = f"library ({device.type})"
    base, tok = load_model("tiny-random-llama", seed=0)
    base.to(device)
    batch = tok(["The quick brown fox jumps over", "Hello"], return_tensors="pt", padding=True).to(device)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    scores = torch.rand(2, 3, generator=torch.Generator().manual_seed(0))

    def logits(model, with_scores):
        with torch.no_grad(), mor1e.intuition(model, scores if with_scores else None):
            return model(**batch).logits

    for method, hparams in ADAPTER_METHODS.items():
        # Exact equality at init, in fp32 and in bf16 (parameters cast after wrapping, as in a trial).
        for dtype in (torch.float32, torch.bfloat16):
            ref = copy.deepcopy(base)
            _cast_params(ref, dtype)
            expected = logits(ref, False)
            model = apply_method(copy.deepcopy(base), method, hparams)
            _cast_params(model, dtype)
            got = logits(model, method == "mor1e")
            diff = (got.float() - expected.float()).abs().max().item()
            name = str(dtype).removeprefix("torch.")
            report.add(section, f"{method}: wrapped == base at init ({name})", torch.equal(got, expected),
                       "exactly equal" if torch.equal(got, expected) else f"max abs diff {diff:.3g}")
            del ref, model

        # Gradients: every adapter parameter and nothing else.
        model = apply_method(copy.deepcopy(base), method, hparams)
        model.train()
        with mor1e.intuition(model, scores if method == "mor1e" else None):
            loss = model(**batch, labels=labels).loss + mor1e.aux_loss(model).to(device)
        loss.backward()
        params = dict(model.named_parameters())
        with_grad = {n for n, p in params.items() if p.grad is not None}
        adapter = {n for n in params if mor1e.is_adapter_param(n)}
        on_device = all(params[n].grad.device.type == device.type for n in with_grad)
        finite = all(bool(torch.isfinite(params[n].grad).all()) for n in with_grad)
        ok = bool(with_grad) and with_grad == adapter and on_device and finite
        report.add(section, f"{method}: gradients reach only adapter params", ok,
                   f"{len(with_grad)}/{len(params)} tensors have a grad, {len(adapter)} adapter tensors"
                   + ("" if on_device and finite else ", grads not on device or not finite"))
        del model

        # bf16 vs fp32 with nonzero adapters.
        model = apply_method(copy.deepcopy(base), method, hparams)
        _randomise_adapters(model)
        ref32 = logits(model, method == "mor1e").float()
        model16 = copy.deepcopy(model)
        _cast_params(model16, torch.bfloat16)
        got16 = logits(model16, method == "mor1e").float()
        mask = batch["attention_mask"].bool()
        rel = ((got16 - ref32)[mask].norm() / ref32[mask].norm()).item()
        report.add(section, f"{method}: bf16 logits vs fp32 (nonzero adapters)", rel <= BF16_REL_TOL,
                   f"relative L2 error {rel:.2e} (tolerance {BF16_REL_TOL:g})")
        del model, model16

    # option_logprobs: batched == one pair at a time.
    data_dir = _twins(tmp)
    model = apply_method(copy.deepcopy(base), "mor1e", ADAPTER_METHODS["mor1e"])
    _randomise_adapters(model)
    for fmt in ("cloze", "letter"):
        examples = []
        for name in TRIAL_DATASETS:
            examples += load_examples(name, "report", data_dir=data_dir, fmt=fmt, limit=6)
        contexts = [e.prompt for e in examples for _ in e.options]
        conts = [o for e in examples for o in e.options]
        pair_scores = np.random.default_rng(0).random((len(conts), 3), dtype=np.float32)
        results = {}
        for dtype in (torch.float32, torch.bfloat16):
            m = copy.deepcopy(model)
            _cast_params(m, dtype)
            batched = option_logprobs(m, tok, contexts, conts, batch_size=16, intuition_scores=pair_scores)
            single = [option_logprobs(m, tok, [c], [o], batch_size=1, intuition_scores=pair_scores[i:i + 1])[0]
                      for i, (c, o) in enumerate(zip(contexts, conts))]
            results[dtype] = float(np.max(np.abs(np.array(batched) - np.array(single))))
            del m
        diff32, diff16 = results[torch.float32], results[torch.bfloat16]
        report.add(section, f"option_logprobs batched == single ({fmt}, {len(conts)} pairs)",
                   diff32 <= LOGPROB_ATOL,
                   f"fp32 max abs diff {diff32:.2e} (tolerance {LOGPROB_ATOL:g}); bf16 max abs diff {diff16:.2e} (info)")
    del model, base


# ---------------------------------------------------------------- 2. trial


def _trial_specs(text: str) -> list[tuple[str, int]]:
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
    from harness.train import prepare_data
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
    from harness.train import _export_repo_path, _quiet_logs, run_trial
    from harness.trial import TrialConfig

    use_gpu = args.device != "cpu" and torch.cuda.is_available()
    _quiet_logs()
    _export_repo_path()
    init_ray(num_cpus=max(8, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="mor1e-gpu-trial-") as tmp:
        data_dir = _twins(tmp, n_train=80, n_validation=args.trial_eval)
        for method, stage in _trial_specs(args.trials):
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


def _check_trial_result(t: dict) -> list[str]:
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


def check_trials(report: Report, args) -> list[dict]:
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
        problems = _check_trial_result(t)
        r = t["result"]
        report.add(section, name, not problems,
                   "; ".join(problems) if problems else
                   f"{t['steps']} steps, loss {r['loss']:.3f}, selection {100 * r['selection_accuracy']:.1f}%, "
                   f"{r['tokens_per_s']:.0f} tokens/s")
    if timed_out:
        report.add(section, "trials finished in time", False,
                   f"child stopped after {args.trial_timeout} s with {len(trials)} of "
                   f"{len(_trial_specs(args.trials))} trials done")
    elif proc.returncode != 0 or len(trials) != len(_trial_specs(args.trials)):
        report.add(section, "trial child process", False, f"exit {proc.returncode}, {len(trials)} trial results")
    return trials


def trial_table(trials: list[dict]) -> str:
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


# ---------------------------------------------------------------- 3. throughput

THROUGHPUT_METHODS = {
    **ADAPTER_BENCH_METHODS,  # the configurations of `python -m harness.bench adapters`
    # Variants, to see where MoR1E's time goes (not in the default --methods).
    "mor1e-unshared": ("mor1e", {"r1": 4, "r2": 8, "num_clusters": 8, "share_routers": False}),
    "mor1e-token-only": ("mor1e", {"r1": 4, "r2": 8, "num_clusters": 8, "use_intuition": False}),
}
DEFAULT_THROUGHPUT = ("dense", "lora", "molora", "mor1e")


def _llama_config(args):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, max_position_embeddings=max(2048, args.seq),
                       tie_word_embeddings=False)


def time_method(method: str, args, device) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    import mor1e
    from harness.methods import apply_method

    name, hparams = THROUGHPUT_METHODS[method]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(_llama_config(args))
    apply_method(model, name, hparams)
    _cast_params(model, dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    adapter_dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    uses_scores = name == "mor1e" and hparams.get("use_intuition", True)
    scores = torch.rand(args.batch, hparams["num_clusters"], generator=gen) if uses_scores else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss + mor1e.aux_loss(model).to(device)
        loss.backward()
        optimizer.step()
        return loss

    times = []
    with mor1e.intuition(model, scores):
        for i in range(args.warmup + args.steps):
            _sync(device)
            start = time.perf_counter()
            loss = step()
            _sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        profile = _profile_step(step, device) if args.profile else None
    out = {
        "method": method,
        "trainable": mor1e.count_trainable(model),
        "total": sum(p.numel() for p in model.parameters()),
        "median_s": statistics.median(times),
        "tokens_per_s": args.batch * args.seq / statistics.median(times),
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
        "param_dtypes": adapter_dtypes,
        "loss": float(loss.detach()),
        "profile": profile,
    }
    del model, optimizer, params
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _profile_step(step, device) -> dict:
    """One step under torch.profiler: kernel launches, summed kernel time and the top kernels.

    Kernel time far below the step's wall time means the step waits on the host (Python and
    launch overhead), not on the GPU.
    """
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            step()
            _sync(device)
        kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
        ops = [e for e in prof.key_averages() if e.device_type == DeviceType.CPU and e.key.startswith("aten::")]
        top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:5]
        return {
            "kernel_launches": sum(e.count for e in kernels),
            "kernel_ms": sum(e.self_device_time_total for e in kernels) / 1000,
            "aten_ops": sum(e.count for e in ops),
            "top": [(e.key[:60], e.count, e.self_device_time_total / 1000) for e in top],
        }
    except Exception as exc:  # the timings stand without it
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def check_throughput(report: Report, args, device) -> dict[str, dict]:
    section = f"throughput ({device.type})"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for method in methods:
            try:
                r = time_method(method, args, device)
            except Exception as exc:
                traceback.print_exc()
                report.add(section, f"{method} step", False, f"{type(exc).__name__}: {exc}"[:300])
                continue
            print(f"[{repeat + 1}/{args.repeats}] {method}: {r['tokens_per_s']:.0f} tokens/s "
                  f"(median step {1000 * r['median_s']:.1f} ms)", file=sys.stderr, flush=True)
            if method not in results or r["median_s"] < results[method]["median_s"]:
                results[method] = r
    for method, r in results.items():
        report.add(section, f"{method} step", bool(np.isfinite(r["loss"])), f"{r['tokens_per_s']:.0f} tokens/s, "
                   f"loss {r['loss']:.3f}")
    return results


def throughput_table(results: dict[str, dict], args, device) -> str:
    lora = results.get("lora")
    lines = [f"Random Llama: hidden {args.hidden}, intermediate {args.intermediate}, {args.layers} layers, "
             f"{args.heads} heads ({args.kv_heads} KV), vocab {args.vocab}; batch {args.batch} x {args.seq} tokens; "
             f"{'bf16' if device.type == 'cuda' else 'fp32'} parameters; median of {args.steps} steps after "
             f"{args.warmup} warmup, best of {args.repeats} turns.", "",
             "| method | config | trainable params | trainable dtype | median step (ms) | tokens/s "
             "| vs LoRA tokens/s | peak GPU memory (GiB) |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for method, r in results.items():
        ratio = f"{r['tokens_per_s'] / lora['tokens_per_s']:.2f}x" if lora else "n/a"
        config = ", ".join(f"{k}={v}" for k, v in THROUGHPUT_METHODS[method][1].items()) or "all params"
        lines.append(f"| {method} | {config} | {r['trainable']:,} | {'/'.join(r['param_dtypes'])} "
                     f"| {1000 * r['median_s']:.1f} | {r['tokens_per_s']:,.0f} | {ratio} | {r['peak_mem_gb']:.1f} |")
    profiled = {m: r["profile"] for m, r in results.items() if r.get("profile")}
    if profiled:
        lines += ["", "One profiled step per method (torch.profiler):", "",
                  "| method | aten ops | kernel launches | summed kernel time (ms) | median step (ms) "
                  "| top kernels (count, ms) |", "|---|---:|---:|---:|---:|---|"]
        for method, p in profiled.items():
            if "error" in p:
                lines.append(f"| {method} | | | | | profiler failed: {p['error']} |")
                continue
            top = "; ".join(f"{k} ({n}, {ms:.1f})" for k, n, ms in p["top"])
            lines.append(f"| {method} | {p['aten_ops']} | {p['kernel_launches']} | {p['kernel_ms']:.1f} "
                         f"| {1000 * results[method]['median_s']:.1f} | {top} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--checks", default="library,trial,throughput", help="comma-separated sections to run")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--trials", default="mor1e:2,mor1e:0,lora:2",
                   help="comma-separated METHOD:ZERO_STAGE trials (tiny-random-llama, copa+boolq twins)")
    p.add_argument("--trial-steps", type=int, default=6)
    p.add_argument("--trial-eval", type=int, default=16, help="selection and report examples per dataset")
    p.add_argument("--trial-timeout", type=int, default=240, help="seconds for all trials together")
    p.add_argument("--methods", default=",".join(DEFAULT_THROUGHPUT),
                   help="throughput methods, from " + ",".join(THROUGHPUT_METHODS))
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


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.trial_child:
        return run_trials_child(args)
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    bad = [c for c in checks if c not in ("library", "trial", "throughput")]
    if bad or not checks:
        print(f"error: unknown check(s) {', '.join(bad) or '(none)'}; choose from library, trial, throughput",
              file=sys.stderr)
        return 2
    unknown = [m for m in args.methods.split(",") if m.strip() and m.strip() not in THROUGHPUT_METHODS]
    if unknown:
        print(f"error: unknown method(s) {', '.join(unknown)}; choose from {', '.join(THROUGHPUT_METHODS)}",
              file=sys.stderr)
        return 2
    try:
        _trial_specs(args.trials)
        device = _device(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for flag in ("trial_steps", "trial_eval", "trial_timeout", "hidden", "intermediate", "layers", "heads",
                 "kv_heads", "vocab", "batch", "seq", "steps", "repeats"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2

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
    trials: list[dict] = []
    throughput: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mor1e-gpu-") as tmp:
        if "library" in checks:
            start = time.time()
            try:
                check_library(report, device, tmp)
            except Exception as exc:
                traceback.print_exc()
                report.add(f"library ({device.type})", "ran to the end", False, f"{type(exc).__name__}: {exc}"[:300])
            print(f"library checks: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        if "trial" in checks:
            if gpu_only:
                report.add("trial", "Ray Train + DeepSpeed trial on GPU", None, "no CUDA device")
            else:
                start = time.time()
                trials = check_trials(report, args)
                print(f"trials: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        if "throughput" in checks:
            if gpu_only:
                report.add("throughput", "adapter step throughput", None, "no CUDA device")
            else:
                start = time.time()
                throughput = check_throughput(report, args, device)
                print(f"throughput: {time.time() - start:.0f} s", file=sys.stderr, flush=True)

    print()
    print(report.table())
    if trials:
        print()
        print(trial_table(trials))
    if throughput:
        print()
        print(throughput_table(throughput, args, device))
    print()
    print("RESULT: " + ("FAIL" if report.failed else "PASS"), flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
