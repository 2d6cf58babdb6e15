"""Zero-shot check of the synthetic twins: is an untrained model near chance?

    python -m harness.data.probe [--model smollm2-135m] [--format letter|cloze] [--data-dir DIR]
        [--n 64] [--role report] [--datasets NAMES|SUITE]

``letter``: every option is one token (" A", " B", ...), so one forward pass per batch
scores all options by their logit at the last prompt position. ``cloze``: each option
text is scored as a continuation (``harness.evaluate.evaluate_examples``, the scoring
the trials use). Without --data-dir the twins are generated (seed 0) into a temporary
directory. Prints a markdown table: dataset, chance, accuracy, the share of the most
picked option position (a positional bias shows up there), the mean prompt length in
tokens, and in letter format the accuracy after removing each letter's mean score.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter

from harness.data.adapters import FORMATS, KNOWN_DATASETS, resolve_datasets
from harness.data.loading import load_examples
from harness.data.synth import write_synthetic


def letter_accuracy(model, tokenizer, examples, batch_size: int = 16) -> tuple[float, float, float, float]:
    """(accuracy, most-picked-letter share, mean prompt tokens, calibrated accuracy) in letter format.

    Calibrated accuracy subtracts each letter's mean score over the examples before the
    argmax, so a model that always prefers one letter is judged on what remains.
    Examples may differ in their number of options (ARC); each is scored over its own.
    """
    import torch

    width_options = max(len(ex.options) for ex in examples)
    option_ids = [tokenizer.encode(" " + chr(ord("A") + i), add_special_tokens=False) for i in range(width_options)]
    if any(len(ids) != 1 for ids in option_ids):
        raise ValueError(f"letter options are not single tokens: {option_ids}")
    option_ids = [ids[0] for ids in option_ids]
    correct, picks, lengths, all_scores = 0, Counter(), [], []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        enc = [tokenizer.encode(ex.prompt, add_special_tokens=False) for ex in batch]
        width = max(len(e) for e in enc)
        pad = tokenizer.pad_token_id
        # left padding puts every prompt's last token at the final position, so only
        # that position's logits are computed (logits_to_keep=1)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        scores = logits[:, -1, option_ids].float()  # (B, width_options)
        for row, ex in enumerate(batch):
            scores[row, len(ex.options):] = float("-inf")  # letters past this example's options
        all_scores.append(scores)
        pred = scores.argmax(-1).tolist()
        for ex, p, e in zip(batch, pred, enc):
            correct += int(p == ex.gold)
            picks[p] += 1
            lengths.append(len(e))
    n = len(examples)
    stacked = torch.cat(all_scores)  # (n, width_options)
    finite = torch.where(torch.isinf(stacked), torch.zeros_like(stacked), stacked)
    counts = (~torch.isinf(stacked)).sum(0).clamp(min=1)
    calibrated = (stacked - finite.sum(0) / counts).argmax(-1).tolist()
    cal_acc = sum(int(p == ex.gold) for p, ex in zip(calibrated, examples)) / n
    return correct / n, max(picks.values()) / n, sum(lengths) / n, cal_acc


def cloze_accuracy(model, tokenizer, examples, batch_size: int = 16) -> tuple[float, float, float]:
    """(accuracy, most-picked-position share, mean prompt tokens) in cloze format."""
    import numpy as np

    from harness.evaluate import score_examples

    loglikes = score_examples(model, tokenizer, examples, batch_size=batch_size, progress=False)
    preds = [int(np.argmax(ll)) for ll in loglikes]
    n = len(examples)
    accuracy = sum(int(p == ex.gold) for p, ex in zip(preds, examples)) / n
    top = Counter(preds).most_common(1)[0][1] / n
    length = sum(len(tokenizer.encode(ex.prompt, add_special_tokens=False)) for ex in examples) / n
    return accuracy, top, length


def probe(model, tokenizer, data_dir, datasets, *, fmt: str, n: int, role: str = "report"
          ) -> dict[str, dict[str, float]]:
    """{dataset: {chance, accuracy, top_share, prompt_tokens[, calibrated]}} of zero-shot scoring."""
    out = {}
    for name in datasets:
        examples = load_examples(name, role, data_dir=data_dir, fmt=fmt, limit=n)
        chance = sum(1 / len(ex.options) for ex in examples) / len(examples)
        if fmt == "letter":
            acc, top, length, cal = letter_accuracy(model, tokenizer, examples)
            out[name] = {"chance": chance, "accuracy": acc, "top_share": top, "prompt_tokens": length,
                         "calibrated": cal, "n": len(examples)}
        else:
            acc, top, length = cloze_accuracy(model, tokenizer, examples)
            out[name] = {"chance": chance, "accuracy": acc, "top_share": top, "prompt_tokens": length,
                         "n": len(examples)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.data.probe", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--format", default="letter", choices=FORMATS)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=64, help="examples per dataset (the first N of the role)")
    p.add_argument("--role", default="report", choices=("train", "selection", "report"))
    p.add_argument("--datasets", default=",".join(KNOWN_DATASETS), help="a suite or comma-separated names")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    try:
        datasets = resolve_datasets(args.datasets)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.n < 1:
        print("error: --n must be >= 1", file=sys.stderr)
        return 2

    import torch

    from harness.models import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or tmp
        twins = tuple(d for d in datasets if not d.startswith("bigbench_"))  # BIG-bench: the fetched files
        if args.data_dir is None and twins:
            # enough rows that --n of them exist in every role (selection is a fifth of train)
            write_synthetic(tmp, n_train=max(64, 5 * args.n), n_validation=args.n, datasets=twins)
        extra = " calibrated acc |" if args.format == "letter" else ""
        print(f"| dataset | n | chance | zero-shot acc ({args.format}) | top position share | prompt tokens |{extra}")
        print("|---|---|---|---|---|---|" + ("---|" if extra else ""), flush=True)
        for name in datasets:  # a row as soon as its dataset is scored
            r = probe(model, tokenizer, data_dir, [name], fmt=args.format, n=args.n, role=args.role)[name]
            cal = f" {100 * r['calibrated']:.1f} |" if extra else ""
            print(f"| {name} | {r['n']} | {100 * r['chance']:.1f} | {100 * r['accuracy']:.1f} | "
                  f"{100 * r['top_share']:.0f}% | {r['prompt_tokens']:.0f} |{cal}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
