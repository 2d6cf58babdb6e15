"""Does a dataset measure learning? Shortcuts an evaluation should not reward, per dataset.

- **duplicate rate**: the share of report items that repeat a training item (the same
  prompt and the same set of answer texts);
- **option-only rules**: the accuracy of rules that never read the prompt (the longest
  or shortest option in characters or tokens, the largest, smallest or middle number,
  the one nearest the options' mean, each fixed position, alphabetical order, the odd
  one out by word overlap, and three rules learnt from the training split: the text
  most often gold, the text with the highest gold rate, and the gold most often seen
  with the same option set). A rule that ties several options gets 1/ties credit;
- **majority-class rate**: the share of the most frequent gold position in the report split;
- **prompt dependence**: of the option sets seen more than once (train and report),
  the share that occur with more than one gold text, i.e. where the prompt decides.

``python -m harness.data audit`` prints these per dataset (see ``harness.data.__main__``).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

from harness.data.adapters import Example

Rule = Callable[[Example], list[float]]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class AuditResult:
    """One dataset's audit; accuracies are fractions."""

    dataset: str
    n_train: int
    n_report: int
    chance: float
    """Mean over report items of 1 / number of options."""
    duplicate_rate: float
    best_rule: str
    best_rule_accuracy: float
    majority_rate: float
    prompt_dependence: float | None
    """None when no option set occurs twice."""
    rules: dict[str, float]

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def identity(ex: Example) -> tuple[str, tuple[str, ...]]:
    """The prompt in the example's own format (use cloze to ignore option order) and the answer-text set."""
    return ex.prompt, tuple(sorted(ex.choices))


def _credit(scores: list[float], gold: int) -> float:
    best = max(scores)
    winners = [i for i, s in enumerate(scores) if s == best]
    return 1.0 / len(winners) if gold in winners else 0.0


def _numbers(ex: Example) -> list[float] | None:
    found = [_NUMBER.findall(c) for c in ex.choices]
    if not all(len(f) == 1 for f in found):
        return None
    return [float(f[0]) for f in found]


def _number_rule(pick: Callable[[list[float]], list[float]]) -> Rule:
    def rule(ex: Example) -> list[float]:
        values = _numbers(ex)
        return pick(values) if values is not None else [0.0] * len(ex.choices)

    return rule


def _nearest(values: list[float], target: float) -> list[float]:
    return [-abs(v - target) for v in values]


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _overlap(ex: Example) -> list[float]:
    """How many words each option shares with the others."""
    words = [_words(c) for c in ex.choices]
    return [float(sum(len(w & o) for j, o in enumerate(words) if j != i)) for i, w in enumerate(words)]


def static_rules(max_options: int, token_count: Callable[[str], int] | None) -> dict[str, Rule]:
    rules: dict[str, Rule] = {
        "longest (chars)": lambda ex: [float(len(c)) for c in ex.choices],
        "shortest (chars)": lambda ex: [-float(len(c)) for c in ex.choices],
        "nearest the mean length (chars)": lambda ex: _nearest([len(c) for c in ex.choices],
                                                               statistics.mean(len(c) for c in ex.choices)),
        "largest number": _number_rule(lambda v: v),
        "smallest number": _number_rule(lambda v: [-x for x in v]),
        "middle number": _number_rule(lambda v: _nearest(v, statistics.median(v))),
        "nearest the mean number": _number_rule(lambda v: _nearest(v, statistics.mean(v))),
        "alphabetically first": lambda ex: [-float(r) for r in _ranks(ex.choices)],
        "alphabetically last": lambda ex: [float(r) for r in _ranks(ex.choices)],
        "odd one out (word overlap)": lambda ex: [-s for s in _overlap(ex)],
        "most typical (word overlap)": _overlap,
    }
    if token_count is not None:
        rules["longest (tokens)"] = lambda ex: [float(token_count(" " + c)) for c in ex.choices]
        rules["shortest (tokens)"] = lambda ex: [-float(token_count(" " + c)) for c in ex.choices]
    for k in range(max_options):
        rules[f"position {k + 1}"] = lambda ex, k=k: [1.0 if i == k else 0.0 for i in range(len(ex.choices))]
    return rules


def _ranks(texts: Sequence[str]) -> list[int]:
    order = sorted(range(len(texts)), key=lambda i: texts[i].lower())
    ranks = [0] * len(texts)
    for r, i in enumerate(order):
        ranks[i] = r
    return ranks


def learned_rules(train: Sequence[Example]) -> dict[str, Rule]:
    """Rules fitted on the training split's golds, never on its prompts."""
    gold_count: Counter = Counter()
    seen_count: Counter = Counter()
    by_set: dict[tuple[str, ...], Counter] = defaultdict(Counter)
    for ex in train:
        gold_text = ex.choices[ex.gold]
        gold_count[gold_text] += 1
        seen_count.update(ex.choices)
        by_set[tuple(sorted(ex.choices))][gold_text] += 1

    def set_memory(ex: Example) -> list[float]:
        counts = by_set.get(tuple(sorted(ex.choices)))
        return [float(counts[c]) if counts else 0.0 for c in ex.choices]

    return {
        "most frequent gold text in train": lambda ex: [float(gold_count[c]) for c in ex.choices],
        "highest gold rate in train": lambda ex: [gold_count[c] / seen_count[c] if seen_count[c] else 0.0
                                                  for c in ex.choices],
        "gold most seen with this option set in train": set_memory,
    }


def prompt_dependence(examples: Sequence[Example]) -> float | None:
    golds: dict[tuple[str, ...], set[str]] = defaultdict(set)
    count: Counter = Counter()
    for ex in examples:
        key = tuple(sorted(ex.choices))
        golds[key].add(ex.choices[ex.gold])
        count[key] += 1
    repeated = [k for k, n in count.items() if n > 1]
    if not repeated:
        return None
    return sum(len(golds[k]) > 1 for k in repeated) / len(repeated)


def audit_examples(dataset: str, train: Sequence[Example], report: Sequence[Example], *,
                   token_count: Callable[[str], int] | None = None) -> AuditResult:
    """Audit one dataset from its training and report examples (same format, cloze recommended)."""
    if not report:
        raise ValueError(f"{dataset}: no report examples to audit")
    train_items = {identity(ex) for ex in train}
    duplicates = sum(identity(ex) in train_items for ex in report)
    max_options = max(len(ex.choices) for ex in report)
    rules = {**static_rules(max_options, token_count), **learned_rules(train)}
    accuracy = {name: sum(_credit(rule(ex), ex.gold) for ex in report) / len(report) for name, rule in rules.items()}
    best = max(accuracy, key=lambda name: accuracy[name])
    majority = Counter(ex.gold for ex in report).most_common(1)[0][1] / len(report)
    return AuditResult(
        dataset=dataset, n_train=len(train), n_report=len(report),
        chance=sum(1.0 / len(ex.choices) for ex in report) / len(report),
        duplicate_rate=duplicates / len(report), best_rule=best, best_rule_accuracy=accuracy[best],
        majority_rate=majority, prompt_dependence=prompt_dependence(list(train) + list(report)), rules=accuracy)


def format_table(results: Sequence[AuditResult]) -> str:
    lines = ["| dataset | train | report | chance | duplicates | best option-only rule | its accuracy | "
             "majority class | prompt decides |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        dependence = "-" if r.prompt_dependence is None else f"{100 * r.prompt_dependence:.0f}%"
        lines.append(f"| {r.dataset} | {r.n_train} | {r.n_report} | {100 * r.chance:.1f}% | "
                     f"{100 * r.duplicate_rate:.1f}% | {r.best_rule} | {100 * r.best_rule_accuracy:.1f}% | "
                     f"{100 * r.majority_rate:.1f}% | {dependence} |")
    return "\n".join(lines)


def pair_purity(assignments: Sequence[int], owners: Sequence[str], a: str, b: str) -> float:
    """How cleanly clusters separate twins ``a`` and ``b``: over the examples of the two, the share
    that sits in a cluster where its own twin is the majority of the pair (1.0: never mixed; 0.5: no better
    than chance for two equal twins). Examples of other twins are ignored."""
    counts: dict[int, Counter] = defaultdict(Counter)
    for cluster, owner in zip(assignments, owners):
        if owner in (a, b):
            counts[cluster][owner] += 1
    total = sum(sum(c.values()) for c in counts.values())
    if total == 0:
        raise ValueError(f"no examples of {a} or {b}")
    return sum(max(c[a], c[b]) for c in counts.values()) / total


def conflict_separation(examples: Sequence[Example], pairs: Sequence[tuple[str, str]], ks: Sequence[int],
                        seed: int = 0) -> dict[tuple[str, str, int], float]:
    """{(a, b, k): purity} of k-means (MoR1E's intuition clustering: the packaged sentence
    embedder on ``Example.text``) over ``examples``, for each conflicting pair."""
    import numpy as np

    from mor1e.intuition import cluster_scores, embed_texts, kmeans

    embeddings = embed_texts([ex.text for ex in examples])
    owners = [ex.dataset for ex in examples]
    out = {}
    for k in ks:
        centroids = kmeans(embeddings, k, seed=seed)
        assignments = np.argmax(cluster_scores(embeddings, centroids, "cosine"), axis=1).tolist()  # nearest by cosine
        for a, b in pairs:
            out[(a, b, k)] = pair_purity(assignments, owners, a, b)
    return out
