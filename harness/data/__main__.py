"""CLI: ``python -m harness.data show|synth|audit|fetch ...``.

    show  --dataset NAME --split SPLIT [--data-dir DIR] [--limit N] [--format letter|cloze]
          [--skip-bad-rows] [--seed S] [--json]
    synth --out DIR [--seed S] [--train N] [--validation M] [--datasets NAMES|SUITE]
    fetch bigbench [--tasks NAMES] [--sdist PATH|URL] [--index-url URL]
    audit [--data-dir DIR] [--datasets NAMES|SUITE] [--train N] [--validation M] [--seed S]
          [--limit N] [--tokenizer NAME|none] [--json] [--conflicts]

SPLIT is a split name of the dataset (``validation``, ``dev_r1``, ...), or
``NAME[selection]`` / ``NAME[train]`` for the two carved parts of the train split,
or a role (``train``, ``selection``, ``report``). Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from harness.data.adapters import (FORMATS, KNOWN_DATASETS, ROLES, DataError, get_adapter, is_known_dataset,
                                   resolve_datasets)
from harness.data.loading import LoadStats, load_split, split_name
from harness.data.synth import DEFAULT_N_TRAIN, DEFAULT_N_VALIDATION, write_synthetic


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m harness.data", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Datasets: print examples as a trial sees them, write the synthetic twins, fetch "
                            "BIG-bench's task files, audit what the options alone give away.",
                epilog="""examples:
  python -m harness.data show --dataset copa --split report --limit 3 --json
  python -m harness.data synth --out data/twins --train 64 --validation 16
  python -m harness.data fetch bigbench
  python -m harness.data audit --datasets commonsense8

writes: synth, DIR/<dataset>/<split>.jsonl; fetch, the task files under $MOR1E_CACHE
(default ~/.cache/mor1e); show and audit write nothing. A COMMAND --help lists its options
and defaults. Bad input: one line on stderr, exit 2.""")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    show = sub.add_parser("show", help="print examples of one split")
    show.add_argument("--dataset", required=True, type=_dataset_name, metavar="NAME",
                      help=f"one of {' '.join(KNOWN_DATASETS)}, or bigbench_<task>[__<subtask>]")
    show.add_argument("--split", default="report", help="split name, NAME[selection], or a role (default: report)")
    show.add_argument("--data-dir", default=None, help="DIR with DIR/<dataset>/<split>.jsonl or .parquet")
    show.add_argument("--limit", type=int, default=None)
    show.add_argument("--format", default="letter", choices=FORMATS)
    show.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows")
    show.add_argument("--seed", type=int, default=0, help="seed of the selection carve")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    synth = sub.add_parser("synth", help="write the synthetic twins (default: the paper's 14)")
    synth.add_argument("--out", required=True, help="output DIR (DIR/<dataset>/<split>.jsonl)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train", type=int, default=DEFAULT_N_TRAIN, help=f"train rows (default {DEFAULT_N_TRAIN})")
    synth.add_argument("--validation", type=int, default=DEFAULT_N_VALIDATION,
                       help=f"report-split rows (default {DEFAULT_N_VALIDATION})")
    synth.add_argument("--datasets", default="all", help="a suite (all, commonsense8) or comma-separated names")
    fetch = sub.add_parser("fetch", help="download BIG-bench's task files into the cache (harness.data.bigbench)")
    fetch.add_argument("source", choices=["bigbench"], help="what to fetch: bigbench (the bigbench==1.0.0 sdist)")
    fetch.add_argument("--tasks", default="bigbench",
                       help="the suite 'bigbench' (default) or comma-separated BIG-bench tasks (task or "
                            "task__subtask, with or without the bigbench_ prefix)")
    fetch.add_argument("--sdist", default=None, help="a local path or URL of bigbench-1.0.0.tar.gz (default: "
                                                     "found on the package index; $PIP_INDEX_URL or PyPI)")
    fetch.add_argument("--index-url", default=None, help="a PEP 503/691 package index to find the sdist on")
    audit = sub.add_parser("audit", help="duplicates, option-only rules and majority class, per dataset")
    audit.add_argument("--data-dir", default=None,
                       help="audit DIR/<dataset>/<split>.jsonl|.parquet; default: freshly generated twins")
    audit.add_argument("--datasets", default=None,
                       help="a suite or comma-separated names (default: every twin, or every dataset in DIR)")
    audit.add_argument("--train", type=int, default=DEFAULT_N_TRAIN, help="twins only: train rows per twin")
    audit.add_argument("--validation", type=int, default=DEFAULT_N_VALIDATION,
                       help="twins only: report rows per twin")
    audit.add_argument("--seed", type=int, default=0, help="twins only: generator seed")
    audit.add_argument("--limit", type=int, default=None, help="first N rows of each split")
    audit.add_argument("--tokenizer", default="smollm2-135m",
                       help="model preset whose tokenizer counts option tokens; 'none' skips the token rules")
    audit.add_argument("--skip-bad-rows", action="store_true")
    audit.add_argument("--json", action="store_true", help="one JSON object per dataset")
    audit.add_argument("--conflicts", action="store_true",
                       help="also: how cleanly k-means on the intuition embeddings of the training rows separates "
                            "each conflicting pair of twins (cluster purity)")
    return p


def _dataset_name(name: str) -> str:
    if not is_known_dataset(name):
        raise argparse.ArgumentTypeError(f"unknown dataset {name!r}: expected one of {' '.join(KNOWN_DATASETS)}, "
                                         "or bigbench_<task>[__<subtask>]")
    return name


def _fetch(args: argparse.Namespace) -> int:
    from harness.data.bigbench import fetch

    tasks = _datasets(args.tasks) if args.tasks == "bigbench" else [t.strip() for t in args.tasks.split(",")
                                                                     if t.strip()]
    if not tasks:
        raise DataError("--tasks names no task")
    report = fetch(tasks, source=args.sdist, index_url=args.index_url)
    print(report.line(), file=sys.stderr)
    return 0


def _resolve_split(dataset: str, split: str) -> str:
    if split in ROLES and split not in get_adapter(dataset).splits:
        return split_name(dataset, split)
    if split == "selection":
        return split_name(dataset, "selection")
    base = split.split("[", 1)[0]
    if base not in get_adapter(dataset).splits:
        raise DataError(f"{dataset} has no split {split!r}; expected one of: "
                        f"{' '.join(get_adapter(dataset).splits)} (or a role: {' '.join(ROLES)})")
    return split


def _show(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise DataError(f"--limit must be >= 0, got {args.limit}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise DataError(f"--data-dir {args.data_dir} is not a directory")
    split = _resolve_split(args.dataset, args.split)
    stats = LoadStats()
    examples = load_split(args.dataset, split, data_dir=args.data_dir, fmt=args.format, limit=args.limit,
                          seed=args.seed, skip_bad_rows=args.skip_bad_rows, stats=stats)
    for ex in examples:
        if args.json:
            print(json.dumps(ex.to_json(), ensure_ascii=False))
        else:
            print(f"--- {ex.id} (gold {ex.gold}: {ex.options[ex.gold].strip()})\n{ex.prompt}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    if args.train < 0 or args.validation < 0:
        raise DataError(f"--train and --validation must be >= 0, got {args.train} and {args.validation}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory")
    datasets = _datasets(args.datasets)
    written = write_synthetic(out, seed=args.seed, n_train=args.train, n_validation=args.validation,
                              datasets=datasets)
    n_files = sum(len(v) for v in written.values())
    print(f"wrote {n_files} files for {len(written)} synthetic twins under {out}", file=sys.stderr)
    return 0


def _datasets(spec: str) -> tuple[str, ...]:
    try:
        return resolve_datasets(spec)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _audit(args: argparse.Namespace) -> int:
    import tempfile

    from harness.data.audit import audit_examples, format_table

    if min(args.train, args.validation) < 1 or (args.limit is not None and args.limit < 1):
        raise DataError("--train, --validation and --limit must be >= 1")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise DataError(f"--data-dir {args.data_dir} is not a directory")
    if args.data_dir is None:
        datasets = _datasets(args.datasets or ",".join(KNOWN_DATASETS))
    elif args.datasets is not None:
        datasets = _datasets(args.datasets)
    else:
        datasets = tuple(d for d in KNOWN_DATASETS if (Path(args.data_dir) / d).is_dir())
        if not datasets:
            raise DataError(f"--data-dir {args.data_dir} holds no dataset folder ({' '.join(KNOWN_DATASETS)})")
    token_count = None
    if args.tokenizer != "none":
        from harness.models import check_model_name, load_tokenizer

        try:
            check_model_name(args.tokenizer)
        except ValueError as exc:
            raise DataError(str(exc)) from None
        tokenizer = load_tokenizer(args.tokenizer)
        token_count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731

    def load(data_dir, name: str, split: str):
        return load_split(name, split, data_dir=data_dir, fmt="cloze", limit=args.limit,
                          skip_bad_rows=args.skip_bad_rows)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        twins = tuple(d for d in datasets if not d.startswith("bigbench_"))  # BIG-bench: the fetched files
        if data_dir is None:
            data_dir = tmp
            if twins:
                write_synthetic(tmp, seed=args.seed, n_train=args.train, n_validation=args.validation,
                                datasets=twins)
                print(f"synthetic twins, seed {args.seed}: {args.train} train / {args.validation} report rows each",
                      file=sys.stderr)
        results, train_rows = [], []
        for name in datasets:
            adapter = get_adapter(name)
            train, report = load(data_dir, name, adapter.train_split), load(data_dir, name, adapter.report_split)
            results.append(audit_examples(name, train, report, token_count=token_count))
            train_rows += train
    if args.json:
        for r in results:
            print(json.dumps(r.as_dict()))
    else:
        print(format_table(results))
    if args.conflicts:
        _print_conflicts(train_rows, datasets, as_json=args.json)
    return 0


CONFLICT_KS = (2, 4, 8, 16, 32)  # 2: the pair alone; the rest: the whole mixture, MoR1E's num_clusters range


def _print_conflicts(train_rows, datasets, *, as_json: bool) -> None:
    from harness.data.audit import conflict_separation
    from harness.data.synth import CONFLICTS

    pairs = [(a, b) for a, b, _ in CONFLICTS if a in datasets and b in datasets]
    if not pairs:
        raise DataError(f"--conflicts: no conflicting pair among {' '.join(datasets)}")
    purity = {}
    for a, b in pairs:
        pair_rows = [ex for ex in train_rows if ex.dataset in (a, b)]
        purity.update(conflict_separation(pair_rows, [(a, b)], ks=CONFLICT_KS[:1]))
    purity.update(conflict_separation(train_rows, pairs, ks=[k for k in CONFLICT_KS[1:] if k <= len(train_rows)]))
    if as_json:
        for (a, b, k), value in purity.items():
            print(json.dumps({"pair": [a, b], "k": k, "mixture": k != CONFLICT_KS[0], "purity": value}))
        return
    ks = sorted({k for _, _, k in purity})
    print("\n| conflicting pair | " + " | ".join(f"k={k}" + (" (pair alone)" if k == 2 else "") for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    for a, b in pairs:
        print(f"| {a} / {b} | " + " | ".join(f"{purity[(a, b, k)]:.2f}" for k in ks) + " |")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    commands = {"show": _show, "synth": _synth, "audit": _audit, "fetch": _fetch}
    try:
        return commands[args.command](args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `show ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
