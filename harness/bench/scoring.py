"""Batched option scoring against per-example greedy one-token generation; the cost of router telemetry.

    python -m harness.bench scoring [--model smollm2-135m] [--examples 96] [--batch-size 16] [--threads 2]
                                    [--telemetry-methods mor1e,molora]

The authors' evaluation generates one token per example, one example at a
time, and compares it with the answer letter. This harness instead scores every
option by log-likelihood, many examples per forward pass. Both run here on the
same letter-format examples (synthetic twins, spread over several datasets);
cloze scoring of the same examples (option texts as continuations, several
tokens each) is timed too, and so is option scoring one example per forward,
which separates the gain of batching from the overhead of ``generate``. Prints
a markdown table and the agreement between the predictions.

A second table times batched letter scoring of adapter-wrapped models (MoR1E in
the authors' parameterisation, 4x8 experts, k = 8, given real intuition scores:
k-means over the twins' training texts, as a trial computes them; MoLoRA with 8
experts) with and without ``mor1e.router_telemetry``, and prints the overhead and
the statistics. The adapters get small random values (seeded), as after training,
so that the statistics are not those of a uniform router. Two overheads are printed:
the difference of the best-of-``--repeat`` wall times, which on a small shared machine
moves by several percent between identical runs, and the observers' own time, summed
inside them over one more telemetry pass (on a CPU every op they run completes before
they return), as a share of that pass's scoring time: the steadier of the two.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

DEFAULT_DATASETS = ("boolq", "rte", "copa", "anli", "hellaswag", "piqa", "siqa", "mmlu")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m harness.bench scoring", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="preset, hub id or local path")
    p.add_argument("--examples", type=int, default=96, help="number of examples, spread over --datasets")
    p.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass of the batched scorer")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--repeat", type=int, default=1, help="time each method this many times, keep the fastest")
    p.add_argument("--no-cloze", action="store_true", help="skip the cloze-scoring row")
    p.add_argument("--seed", type=int, default=0, help="synthetic twin seed")
    p.add_argument("--telemetry-methods", default="mor1e,molora",
                   help="adapters whose scoring is timed with and without router telemetry "
                        f"(comma-separated subset of {','.join(TELEMETRY_METHODS)}; 'none' skips the table)")
    p.add_argument("--train-examples", type=int, default=16,
                   help="training rows per twin, clustered for the MoR1E intuition scores")
    return p


# Adapters of the telemetry table: (method, hparams) for harness.methods.apply_method.
TELEMETRY_METHODS = {
    "mor1e": ("mor1e", {"r1": 4, "r2": 8, "num_clusters": 8}),
    "molora": ("molora", {"num_experts": 8, "rank": 4}),
}


def _examples(datasets, n, fmt, tmp):
    """``n`` examples taken round-robin over ``datasets``, from twins written under ``tmp``."""
    from harness.data import load_examples

    per = [load_examples(d, "report", data_dir=tmp, fmt=fmt) for d in datasets]
    out = []
    for i in range(max(len(p) for p in per)):
        out += [p[i] for p in per if i < len(p)]
    return out[:n]


def _predict(model, tokenizer, examples, batch_size) -> list[int]:
    """Argmax of the summed option log-likelihoods (the accuracy prediction)."""
    from harness.evaluate import predictions, score_examples

    loglikes = score_examples(model, tokenizer, examples, batch_size=batch_size, progress=False)
    return [p for p, _ in predictions(examples, loglikes)]


def generation_predictions(model, tokenizer, examples) -> list[int]:
    """The authors' scoring: greedy-generate one token per example, match it to an option.

    -1 when the generated token is none of the options.
    """
    import torch

    preds = []
    with torch.no_grad():
        for ex in examples:
            enc = tokenizer(ex.prompt, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            word = tokenizer.decode(out[0, enc["input_ids"].shape[1]:]).strip()
            options = [o.strip() for o in ex.options]
            preds.append(options.index(word) if word in options else -1)
    return preds


def _time_interleaved(methods: dict, repeat: int) -> dict:
    """Best-of-``repeat`` wall seconds, CPU seconds and the result of each method, taking turns.

    Taking turns, rather than timing one method ``repeat`` times and then the
    next, spreads a change in machine load over all methods alike.
    """
    best = {name: (float("inf"), float("inf"), None) for name in methods}
    for r in range(repeat):
        for name, fn in methods.items():
            print(f"[{r + 1}/{repeat}] {name[0]} ({name[1]}) ...", file=sys.stderr)
            start, cpu_start = time.perf_counter(), time.process_time()
            result = fn()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if seconds < best[name][0]:
                best[name] = (seconds, min(cpu, best[name][1]), result)
            else:
                best[name] = (best[name][0], min(cpu, best[name][1]), best[name][2])
    return best


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from harness.data import DATASETS

    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        print(f"scoring: unknown dataset {unknown[0]!r}; expected some of: {' '.join(DATASETS)}", file=sys.stderr)
        return 2
    methods = [] if args.telemetry_methods == "none" else [m for m in args.telemetry_methods.split(",") if m]
    bad = [m for m in methods if m not in TELEMETRY_METHODS]
    if bad:
        print(f"scoring: unknown --telemetry-methods {bad[0]!r}; expected some of: {' '.join(TELEMETRY_METHODS)}",
              file=sys.stderr)
        return 2
    args.telemetry_methods = methods
    for name in ("examples", "batch_size", "threads", "repeat", "train_examples"):
        if getattr(args, name) < 1:
            print(f"scoring: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    from harness.models import check_model_name

    try:
        check_model_name(args.model)
    except ValueError as e:
        print(f"scoring: {e}", file=sys.stderr)
        return 2

    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)


def _run(args) -> int:
    import numpy as np

    from harness.data import write_synthetic
    from harness.evaluate import score_examples
    from harness.models import load_model

    with tempfile.TemporaryDirectory() as tmp:
        per_dataset = -(-args.examples // len(args.datasets))
        write_synthetic(tmp, seed=args.seed, n_train=0, n_validation=per_dataset, datasets=tuple(args.datasets))
        letter = _examples(args.datasets, args.examples, "letter", tmp)
        cloze = _examples(args.datasets, args.examples, "cloze", tmp)
    train = _train_examples(args) if args.telemetry_methods else []
    model, tokenizer = load_model(args.model)
    print(f"{len(letter)} examples from {', '.join(args.datasets)}; {args.model}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f} before timing", file=sys.stderr)

    # Warm-up, so that neither method pays for first-call allocation.
    score_examples(model, tokenizer, letter[:4], batch_size=args.batch_size, progress=False)
    generation_predictions(model, tokenizer, letter[:2])

    batched = f"batched option scoring, batch {args.batch_size}"
    methods = {  # (method, format) -> predictions
        ("greedy 1-token generation, batch 1 (authors)", "letter"):
            lambda: generation_predictions(model, tokenizer, letter),
        ("option scoring, batch 1", "letter"): lambda: _predict(model, tokenizer, letter, 1),
        (batched, "letter"): lambda: _predict(model, tokenizer, letter, args.batch_size),
    }
    if not args.no_cloze:
        methods[(batched, "cloze")] = lambda: _predict(model, tokenizer, cloze, args.batch_size)
    timed = _time_interleaved(methods, args.repeat)
    gold = np.array([ex.gold for ex in letter])
    gen_s, gen_cpu, gen_pred = next(iter(timed.values()))
    score_pred = timed[(batched, "letter")][2]
    rows = [(name, fmt, seconds, cpu, np.mean(np.array(pred) == gold))
            for (name, fmt), (seconds, cpu, pred) in timed.items()]
    load_after = os.getloadavg()[0]

    n = len(letter)
    # CPU seconds (this process, all threads) are the steadier measure on a shared machine.
    print("| method | format | examples | seconds | examples/s | speed-up | CPU seconds | CPU speed-up | accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, fmt, seconds, cpu, acc in rows:
        print(f"| {method} | {fmt} | {n} | {seconds:.2f} | {n / seconds:.2f} | {gen_s / seconds:.2f}x "
              f"| {cpu:.2f} | {gen_cpu / cpu:.2f}x | {acc:.3f} |")
    agree = np.mean(np.array(gen_pred) == np.array(score_pred))
    valid = np.array(gen_pred) >= 0
    agree_valid = np.mean(np.array(gen_pred)[valid] == np.array(score_pred)[valid]) if valid.any() else float("nan")
    print()
    print(f"Agreement of generation and batched letter scoring: {agree:.3f} of {n} examples; "
          f"{agree_valid:.3f} of the {int(valid.sum())} where the generated token was one of the letters.")
    print(f"Load average (1 min): {load_after:.2f} after timing; "
          f"torch threads {args.threads}; best of {args.repeat}.")
    if args.telemetry_methods:
        _telemetry_cost(model, tokenizer, letter, train, args)
    return 0


def _train_examples(args) -> list:
    """The twins' training texts that the MoR1E intuition k-means clusters (as a trial's driver does)."""
    from harness.data import load_examples, write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, seed=args.seed, n_train=args.train_examples, n_validation=0,
                        datasets=tuple(args.datasets))
        return [ex for d in args.datasets for ex in load_examples(d, "train", data_dir=tmp, fmt="letter")]


def _telemetry_cost(base, tokenizer, examples, train, args) -> None:
    """Batched letter scoring of each adapter with and without ``mor1e.router_telemetry``."""
    import copy

    import torch

    import mor1e
    from harness.evaluate import score_examples
    from harness.methods import apply_method, uses_intuition
    from harness.trial.driver import intuition_scores

    rows = []
    for name in args.telemetry_methods:
        method, hparams = TELEMETRY_METHODS[name]
        model = apply_method(copy.deepcopy(base), method, hparams)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # as after training: B and the routers away from their initial values
            for _, p in mor1e.adapter_parameters(model):
                p.add_(torch.randn(p.shape, generator=generator) * 0.02)
        scores = None
        if uses_intuition(method, hparams):
            k = hparams["num_clusters"]
            scores = intuition_scores([train, examples], k=k, seed=args.seed)[1]
        collected = {}

        def plain():
            return score_examples(model, tokenizer, examples, batch_size=args.batch_size,
                                  intuition_scores=scores, progress=False)

        def with_telemetry():
            with mor1e.router_telemetry(model) as telemetry:
                out = plain()
            collected["summary"] = telemetry.summary()  # one host copy, after scoring
            return out

        plain()  # warm-up
        timed = _time_interleaved({(name, "scoring"): plain, (name, "scoring + telemetry"): with_telemetry},
                                  args.repeat)
        (base_s, base_cpu, base_out), (tel_s, tel_cpu, tel_out) = timed.values()
        if base_out != tel_out:
            raise RuntimeError(f"{name}: router telemetry changed the scores")
        with mor1e.router_telemetry(model) as telemetry:
            inside = _time_observers(telemetry)
            start = time.perf_counter()
            plain()
            pass_s = time.perf_counter() - start
        rows.append((name, hparams, base_s, tel_s, base_cpu, tel_cpu, inside[0] / pass_s, collected["summary"]))
    n = len(examples)
    print()
    print(f"Router telemetry cost: batched letter scoring of {n} examples, batch {args.batch_size}, "
          f"best of {args.repeat}")
    print()
    print("| method | config | seconds | with telemetry | overhead | CPU overhead | in observers "
          "| gate mean | load entropy | max share | dead fraction | token entropy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, hparams, base_s, tel_s, base_cpu, tel_cpu, observed, summary in rows:
        stats = " | ".join("-" if summary[k] is None else f"{summary[k]:.3f}" for k in mor1e.TELEMETRY_KEYS)
        config = ", ".join(f"{k}={v}" for k, v in hparams.items())
        print(f"| {name} | {config} | {base_s:.2f} | {tel_s:.2f} | {100 * (tel_s / base_s - 1):+.1f}% "
              f"| {100 * (tel_cpu / base_cpu - 1):+.1f}% | {100 * observed:.1f}% | {stats} |")


def _time_observers(telemetry) -> list[float]:
    """Time spent inside ``telemetry``'s observers from now on, summed into the returned one-item list.

    Wraps each router's accumulator (what its observer calls); CPU ops finish before it returns,
    so the sum is their cost. Not valid on a GPU, where the ops would only be queued.
    """
    spent = [0.0]
    for counts in telemetry._counts:
        def timed(*args, _add=counts.add):
            start = time.perf_counter()
            _add(*args)
            spent[0] += time.perf_counter() - start

        counts.add = timed
    return spent


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
