"""Zero-shot check of the synthetic twins: is an untrained model near chance?

    python -m harness.data.probe [--model smollm2-135m] [--data-dir DIR] [--n 50] [--split report]

Letter format only: every option is one token (" A", " B", ...), so one forward
pass per batch scores all options by their logit at the last prompt position.
Without --data-dir the twins are generated (seed 0) into a temporary directory.
Prints a markdown table: dataset, chance, accuracy, the share of the most-picked
letter (a positional bias shows up there), accuracy after removing each letter's
mean score (calibrated), and the mean prompt length in tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter

from harness.data.adapters import DATASETS
from harness.data.loading import load_examples
from harness.data.synth import write_synthetic


def letter_accuracy(model, tokenizer, examples, batch_size: int = 16) -> tuple[float, float, float, float]:
    """(accuracy, most-picked-letter share, mean prompt tokens, calibrated accuracy) in letter format.

    Calibrated accuracy subtracts each letter's mean score over the examples before the
    argmax, so a model that always prefers one letter is judged on what remains.
    """
    import torch

    option_ids = [tokenizer.encode(o, add_special_tokens=False) for o in examples[0].options]
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
        scores = logits[:, -1, option_ids]  # (B, n_options)
        all_scores.append(scores.float())
        pred = scores.argmax(-1).tolist()
        for ex, p, e in zip(batch, pred, enc):
            correct += int(p == ex.gold)
            picks[p] += 1
            lengths.append(len(e))
    n = len(examples)
    stacked = torch.cat(all_scores)  # (n, n_options)
    calibrated = (stacked - stacked.mean(0)).argmax(-1).tolist()
    cal_acc = sum(int(p == ex.gold) for p, ex in zip(calibrated, examples)) / n
    return correct / n, max(picks.values()) / n, sum(lengths) / n, cal_acc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.data.probe")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--role", default="report", choices=("train", "selection", "report"))
    p.add_argument("--datasets", nargs="*", default=list(DATASETS))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from harness.models import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or tmp
        if args.data_dir is None:
            write_synthetic(tmp)
        print("| dataset | chance | zero-shot acc | top letter share | calibrated acc | prompt tokens |")
        print("|---|---|---|---|---|---|")
        for name in args.datasets:
            examples = load_examples(name, args.role, data_dir=data_dir, limit=args.n)
            acc, top, length, cal = letter_accuracy(model, tokenizer, examples)
            chance = 1 / len(examples[0].options)
            print(f"| {name} | {chance:.2f} | {acc:.2f} | {top:.2f} | {cal:.2f} | {length:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
