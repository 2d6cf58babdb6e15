"""Can a short finetune learn the twins? Zero-shot vs trained accuracy per twin, in one process.

    python -m harness.data.learncheck [--datasets all] [--steps 48] [--batch-size 8] [--lr 3e-3]
        [--n-train 64] [--train-limit 52] [--report 64] [--format cloze] [--rank 8] [--threads 2]
        [--method lora|mor1e|molora] [--hparams JSON] [--seed S] [--loss-reduction token|example] [--json]

A plain loop without Ray or DeepSpeed, built from the trial's own pieces: the twins
are written as the default study writes them (``--n-train`` rows per train split, the
selection carve taken out, the first ``--train-limit`` train-role rows kept), each
example is encoded, batched and scored as a Train worker does it
(``harness.trial.step.encode_training_example`` / ``batch_indices`` / ``collate`` /
``answer_loss``, ``harness.evaluate.evaluate_examples``), on the default preset with
PEFT LoRA, or any adapter method with ``--method``/``--hparams``
(``harness.methods.apply_method``; MoR1E gets its intuition scores as a trial computes them,
``harness.trial.driver.intuition_scores``, for training and scoring alike), AdamW with the trial's warmup + cosine
schedule. Defaults are the default profile's budget: 48 steps of batch 8, cloze, max
length 256. It prints one markdown row per twin: chance, zero-shot and trained
accuracy on ``--report`` report rows, and the gain in points.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from harness.data.adapters import FORMATS, resolve_datasets


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.data.learncheck", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--datasets", default="all", help="a suite name or comma-separated names (default: all)")
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--n-train", type=int, default=64, help="rows per twin's train split (before the carve)")
    p.add_argument("--train-limit", type=int, default=52, help="train-role rows kept per twin")
    p.add_argument("--report", type=int, default=64, help="report rows per twin")
    p.add_argument("--format", default="cloze", choices=FORMATS)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--method", default="lora", choices=("lora", "mor1e", "molora"))
    p.add_argument("--hparams", default=None,
                   help="JSON hyperparameters of --method (default for lora: rank and alpha from --rank)")
    p.add_argument("--loss-reduction", default="token", choices=("token", "example"),
                   help="mean over the batch's answer tokens, or over examples of each one's token mean")
    p.add_argument("--json", action="store_true", help="also print one JSON line with every accuracy")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="twin seed, LoRA init and batch order")
    p.add_argument("--threads", type=int, default=2)
    return p


def run(args: argparse.Namespace) -> dict[str, tuple[float, float, float]]:
    """{dataset: (chance, zero-shot accuracy, trained accuracy)}; prints progress to stderr."""
    import torch

    import mor1e
    from harness.data.loading import load_examples
    from harness.data.synth import write_synthetic
    from harness.evaluate import evaluate_examples, forward_options
    from harness.methods import apply_method, method_config, uses_intuition
    from harness.models import load_model
    from harness.trial.driver import intuition_scores
    from harness.trial.step import answer_loss, batch_indices, collate, encode_training_example, lr_multiplier

    datasets = resolve_datasets(args.datasets)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, seed=args.seed, n_train=args.n_train, n_validation=args.report, datasets=datasets)
        train = [ex for d in datasets
                 for ex in load_examples(d, "train", data_dir=tmp, fmt=args.format, limit=args.train_limit)]
        report = [ex for d in datasets for ex in load_examples(d, "report", data_dir=tmp, fmt=args.format)]
    hparams = _hparams(args)
    train_scores = report_scores = None
    if uses_intuition(args.method, hparams):
        config = method_config(args.method, hparams)
        train_scores, report_scores = intuition_scores([train, report], k=config.num_clusters, seed=args.seed,
                                                       score=config.intuition_score)
    model, tokenizer = load_model(args.model)
    model.eval()
    t0 = time.perf_counter()
    zero_shot = evaluate_examples(model, tokenizer, report, progress=False)
    print(f"zero-shot scoring: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    model = apply_method(model, args.method, hparams)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    keep_arg = forward_options(model)["keep_arg"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode_training_example(tokenizer, ex.prompt, ex.target, args.max_seq_len) for ex in train]
    model.train()
    t0 = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_multiplier(step, total=args.steps, warmup=args.warmup, schedule="cosine",
                                                   min_ratio=0.1)
        idx = batch_indices(len(encoded), seed=args.seed, micro_step=step, batch_size=args.batch_size,
                            rank=0, world=1)
        if train_scores is not None:
            mor1e.set_intuition(model, torch.from_numpy(train_scores[idx]))
        loss = answer_loss(model, collate([encoded[i] for i in idx], pad_id, left=True), keep_arg,
                           args.loss_reduction)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 8 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    model.eval()
    trained = evaluate_examples(model, tokenizer, report, progress=False, intuition_scores=report_scores)
    out = {}
    for d in datasets:
        n_options = len(next(ex for ex in report if ex.dataset == d).options)
        out[d] = (1.0 / n_options, zero_shot[d]["accuracy"], trained[d]["accuracy"])
    return out


def _hparams(args: argparse.Namespace) -> dict:
    if args.hparams is None:
        return {"rank": args.rank, "alpha": 2.0 * args.rank} if args.method == "lora" else {}
    hparams = json.loads(args.hparams)
    if not isinstance(hparams, dict):
        raise ValueError(f"--hparams must be a JSON object, got {args.hparams!r}")
    return hparams


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        resolve_datasets(args.datasets)
        from harness.methods import method_config

        method_config(args.method, _hparams(args))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if min(args.steps, args.batch_size, args.n_train, args.train_limit, args.report, args.rank, args.threads) < 1:
        print("error: --steps, --batch-size, --n-train, --train-limit, --report, --rank and --threads must be >= 1",
              file=sys.stderr)
        return 2
    results = run(args)
    print(f"| twin | chance | zero-shot | after {args.steps} steps | gain (points) |")
    print("|---|---|---|---|---|")
    for d, (chance, before, after) in results.items():
        print(f"| {d} | {100 * chance:.0f} | {100 * before:.1f} | {100 * after:.1f} | {100 * (after - before):+.1f} |")
    gains = [after - before for _, before, after in results.values()]
    print(f"\n{sum(g >= 0.10 for g in gains)} of {len(gains)} twins gained >= 10 points; "
          f"mean gain {100 * sum(gains) / len(gains):+.1f} points")
    if args.json:
        print(json.dumps({"method": args.method, "hparams": _hparams(args), "lr": args.lr, "seed": args.seed,
                          "steps": args.steps, "loss_reduction": args.loss_reduction, "accuracy": {d: r[2] for d, r in results.items()},
                          "zero_shot": {d: r[1] for d, r in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
