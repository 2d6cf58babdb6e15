"""GPU check section ``throughput``: training-step tokens/s of the adapter methods.

Dense, PEFT LoRA r=8, MoLoRA 8x4 and MoR1E 4x8 (the ``harness.bench adapters`` configurations)
on a random Llama of realistic width, in bf16 parameters as DeepSpeed casts them, forward +
backward + torch AdamW, device-synchronised median of the measured steps; methods are timed in
turns and the best median is kept. With ``--profile``, one profiled step per method: aten ops,
kernel launches and summed kernel time, which tell a GPU-bound step from one that waits on the host.
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback

import numpy as np

from harness.bench._gpu.common import Report, cast_params, sync
from harness.bench.adapters import METHODS as ADAPTER_BENCH_METHODS


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
    cast_params(model, dtype)
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

    def forward():
        optimizer.zero_grad(set_to_none=True)
        return model(input_ids=ids, labels=ids).loss + mor1e.aux_loss(model).to(device)

    def step():
        loss = forward()
        loss.backward()
        optimizer.step()
        return loss

    times = []
    with mor1e.intuition(model, scores):
        for i in range(args.warmup + args.steps):
            sync(device)
            start = time.perf_counter()
            loss = step()
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        profile = _profile_step(forward, optimizer, device) if args.profile else None
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


PHASES = ("forward", "backward", "optimizer")


def _profile_step(forward, optimizer, device) -> dict:
    """One step under torch.profiler, a profile per phase (forward, backward, optimizer step):
    aten ops and kernel launches per phase, summed kernel time and the top kernels.

    Kernel time far below the step's wall time means the step waits on the host (Python and
    launch overhead), not on the GPU. The aten-op counts need no GPU: each op costs the host a
    dispatch, and on a GPU most launch a kernel. (On a CPU torch's AdamW steps tensor by tensor;
    on CUDA it steps many tensors per kernel.)
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=activities) as forward_prof:
            loss = forward()
            sync(device)
        with profile(activities=activities) as backward_prof:
            loss.backward()
            sync(device)
        with profile(activities=activities) as optimizer_prof:
            optimizer.step()
            sync(device)
        kernels, ops = {}, {}
        for phase, prof in zip(PHASES, (forward_prof, backward_prof, optimizer_prof)):
            events = prof.key_averages()
            kernels[phase] = [e for e in events if e.device_type == DeviceType.CUDA]
            ops[phase] = sum(e.count for e in events if e.device_type == DeviceType.CPU and e.key.startswith("aten::"))
        every_kernel = [e for phase in PHASES for e in kernels[phase]]
        top = sorted(every_kernel, key=lambda e: e.self_device_time_total, reverse=True)[:5]
        return {
            "kernel_launches": sum(e.count for e in every_kernel),
            "kernel_launches_by_phase": {phase: sum(e.count for e in kernels[phase]) for phase in PHASES},
            "kernel_ms": sum(e.self_device_time_total for e in every_kernel) / 1000,
            "aten_ops": sum(ops.values()),
            "aten_ops_by_phase": ops,
            "top": [(e.key[:60], e.count, e.self_device_time_total / 1000) for e in top],
        }
    except Exception as exc:  # the timings stand without it
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def run(report: Report, args, device, tmp: str) -> dict[str, dict]:
    """Time each method in turns; keep each one's best median."""
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


def table(results: dict[str, dict], args, device) -> str:
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
        lines += ["", "One profiled step per method (torch.profiler), counts as forward / backward / optimizer:", "",
                  "| method | aten ops | aten ops vs LoRA | kernel launches | summed kernel time (ms) "
                  "| median step (ms) | top kernels (count, ms) |", "|---|---:|---:|---:|---:|---:|---|"]
        base = profiled.get("lora")
        for method, p in profiled.items():
            if "error" in p:
                lines.append(f"| {method} | | | | | | profiler failed: {p['error']} |")
                continue
            ops, launches = p["aten_ops_by_phase"], p["kernel_launches_by_phase"]
            vs = " / ".join(f"{ops[ph] / base['aten_ops_by_phase'][ph]:.2f}x" for ph in PHASES) \
                if base and "error" not in base else "n/a"
            top = "; ".join(f"{k} ({n}, {ms:.1f})" for k, n, ms in p["top"])
            lines.append(f"| {method} | {' / '.join(str(ops[ph]) for ph in PHASES)} | {vs} "
                         f"| {' / '.join(str(launches[ph]) for ph in PHASES)} | {p['kernel_ms']:.1f} "
                         f"| {1000 * results[method]['median_s']:.1f} | {top} |")
    return "\n".join(lines)
