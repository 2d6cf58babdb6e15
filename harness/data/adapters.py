"""One adapter per dataset: where it lives, which split plays which role, and how
one raw record in that dataset's own schema becomes an :class:`Example`.

Label conventions differ between datasets and are the classic source of silently
wrong leaderboards, so every converter checks its fields and its label range and
raises :class:`RowError` rather than guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

LETTERS = "ABCDEFGHIJ"
FORMATS = ("letter", "cloze")
ROLES = ("train", "selection", "report")


class DataError(Exception):
    """A dataset cannot be loaded or a row cannot be read. The message is one line."""


class RowError(ValueError):
    """A single raw record is malformed; the loader adds the file and row number."""


@dataclass(frozen=True)
class Example:
    """One multiple-choice instance, ready to score or train on.

    ``prompt`` ends without trailing whitespace; every option starts with a space
    (lm-evaluation-harness convention), so ``prompt + options[i]`` is the scored text.
    ``choices`` are the answer texts, ``options`` the continuations actually scored
    (letters in ``letter`` format, the texts themselves in ``cloze``); ``gold`` is
    the 0-based index into both. ``text`` is the natural instance text the
    intuition embedder sees (no letters, no "Answer:").
    """

    id: str
    dataset: str
    prompt: str
    choices: tuple[str, ...]
    options: tuple[str, ...]
    gold: int
    text: str

    @property
    def target(self) -> str:
        """The gold continuation; the training text is ``prompt + target``."""
        return self.options[self.gold]

    @property
    def training_text(self) -> str:
        return self.prompt + self.target

    def to_json(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "choices": list(self.choices),
                "options": list(self.options), "gold": self.gold}


@dataclass(frozen=True)
class Parsed:
    """What a converter extracts from one record, before formatting.

    ``question`` is the block shown above the lettered choices; ``cloze_prompt`` and
    ``cloze_options`` give the lm-eval style continuation form when it is not
    simply ``question + "\\nAnswer:"`` followed by the choice texts.
    """

    question: str
    choices: tuple[str, ...]
    gold: int
    text: str
    cloze_prompt: str | None = None
    cloze_options: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Adapter:
    name: str
    hub_id: str
    config: str | None
    splits: tuple[str, ...]
    train_split: str
    report_split: str
    convert: Callable[[dict], Parsed] = field(repr=False)
    id_field: str | None = None

    @property
    def num_choices(self) -> int | None:
        return NUM_CHOICES.get(self.name)


# ---------------------------------------------------------------- helpers

def _get(row: dict, key: str) -> Any:
    if not isinstance(row, dict) or key not in row or row[key] is None:
        raise RowError(f"missing field {key!r}")
    return row[key]


def _text(row: dict, key: str) -> str:
    value = _get(row, key)
    if not isinstance(value, str):
        raise RowError(f"field {key!r} is not a string")
    value = " ".join(value.split())
    if not value:
        raise RowError(f"field {key!r} is empty")
    return value


def _int_label(row: dict, key: str, n: int, offset: int = 0) -> int:
    """An integer label in ``offset .. offset+n-1`` (also accepts its decimal string);
    -1 or "" marks an unlabeled test row."""
    value = _get(row, key)
    if isinstance(value, bool):
        raise RowError(f"label {key!r}={value!r} is not an integer")
    if isinstance(value, str):
        if value.strip() == "":
            raise RowError(f"label {key!r} is empty (unlabeled test row)")
        try:
            value = int(value.strip())
        except ValueError:
            raise RowError(f"label {key!r}={value!r} is not an integer") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise RowError(f"label {key!r}={value!r} is not an integer")
    if value == -1:
        raise RowError(f"label {key!r}=-1 (unlabeled test row)")
    if not offset <= value < offset + n:
        raise RowError(f"label {key!r}={value!r} out of range {offset}..{offset + n - 1}")
    return value - offset


def _choice_list(row: dict, key: str, n: int | None = None) -> tuple[str, ...]:
    value = _get(row, key)
    if not isinstance(value, (list, tuple)) or not value:
        raise RowError(f"field {key!r} is not a non-empty list")
    if n is not None and len(value) != n:
        raise RowError(f"field {key!r} has {len(value)} entries, expected {n}")
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise RowError(f"field {key!r}[{i}] is not a non-empty string")
        out.append(" ".join(v.split()))
    return tuple(out)


def _keyed_choices(row: dict, n: int | None) -> tuple[tuple[str, ...], int]:
    """``choices = {"label": [...], "text": [...]}`` with a letter ``answerKey``."""
    choices = _get(row, "choices")
    if not isinstance(choices, dict):
        raise RowError("field 'choices' is not a {label, text} mapping")
    texts = _choice_list(choices, "text", n)
    labels = _choice_list(choices, "label", len(texts))
    key = _get(row, "answerKey")
    if not isinstance(key, str) or key.strip() == "":
        raise RowError("label 'answerKey' is empty (unlabeled test row)")
    key = key.strip()
    if key not in labels:
        raise RowError(f"label 'answerKey'={key!r} not among choice labels {list(labels)}")
    return texts, labels.index(key)


def _sentence(s: str) -> str:
    return s if s[-1:] in ".?!" else s + "."


def _question(s: str) -> str:
    return s if s.endswith("?") else s + "?"


# ------------------------------------------------------------- converters
# Each returns a Parsed; the letter/cloze formatting is shared (see format_example).

def _boolq(row: dict) -> Parsed:
    passage, question = _text(row, "passage"), _text(row, "question")
    gold = _int_label(row, "label", 2)  # 0 = false, 1 = true
    return Parsed(f"{passage}\nQuestion: {_question(question)}", ("no", "yes"), gold,
                  f"{passage} {_question(question)}")


def _multirc(row: dict) -> Parsed:
    paragraph, question, answer = _text(row, "paragraph"), _text(row, "question"), _text(row, "answer")
    gold = _int_label(row, "label", 2)  # 1 = the candidate answer is correct
    q = f"{paragraph}\nQuestion: {_question(question)}\nCandidate answer: {answer}\nIs the candidate answer correct?"
    return Parsed(q, ("no", "yes"), gold, f"{paragraph} {_question(question)} {answer}")


def _wic(row: dict) -> Parsed:
    word, s1, s2 = _text(row, "word"), _text(row, "sentence1"), _text(row, "sentence2")
    gold = _int_label(row, "label", 2)  # 1 = same sense
    q = f"1: {s1}\n2: {s2}\nIs '{word}' used with the same meaning in 1 and 2?"
    return Parsed(q, ("no", "yes"), gold, f"{s1} {s2}")


def _wsc(row: dict) -> Parsed:
    text, noun, pronoun = _text(row, "text"), _text(row, "span1_text"), _text(row, "span2_text")
    gold = _int_label(row, "label", 2)  # 1 = the pronoun (span2) refers to span1
    q = f"{text}\nDoes \"{pronoun}\" refer to {noun}?"
    return Parsed(q, ("no", "yes"), gold, text)


def _rte(row: dict) -> Parsed:
    premise, hypothesis = _text(row, "premise"), _text(row, "hypothesis")
    gold = _int_label(row, "label", 2)  # super_glue: 0 = entailment, 1 = not_entailment
    q = f"{premise}\nClaim: {hypothesis}\nTrue or false?"
    return Parsed(q, ("true", "false"), gold, f"{premise} {hypothesis}")


def _anli(row: dict) -> Parsed:
    premise, hypothesis = _text(row, "premise"), _text(row, "hypothesis")
    gold = _int_label(row, "label", 3)  # 0 = entailment, 1 = neutral, 2 = contradiction
    q = f"{premise}\nClaim: {hypothesis}\nTrue, false, or neither?"
    return Parsed(q, ("true", "neither", "false"), gold, f"{premise} {hypothesis}")


_COPA_CONNECTOR = {"cause": "because", "effect": "therefore"}


def _copa(row: dict) -> Parsed:
    premise = _text(row, "premise")
    c1, c2 = _text(row, "choice1"), _text(row, "choice2")
    kind = _text(row, "question")
    if kind not in _COPA_CONNECTOR:
        raise RowError(f"field 'question'={kind!r} is not 'cause' or 'effect'")
    gold = _int_label(row, "label", 2)  # 0 = choice1, 1 = choice2
    # cloze as in lm-eval: "<premise without final period> because|therefore <choice, lower-cased first letter>"
    stem = premise[:-1] if premise.endswith(".") else premise
    lower = tuple(c[:1].lower() + c[1:] for c in (c1, c2))
    return Parsed(f"{premise}\nWhat was the {kind}?", (c1, c2), gold, premise,
                  cloze_prompt=f"{stem} {_COPA_CONNECTOR[kind]}", cloze_options=lower)


def _winogrande(row: dict) -> Parsed:
    sentence = _text(row, "sentence")
    o1, o2 = _text(row, "option1"), _text(row, "option2")
    if "_" not in sentence:
        raise RowError("field 'sentence' has no blank '_'")
    gold = _int_label(row, "answer", 2, offset=1)  # "1" = option1, "2" = option2; "" in test
    return Parsed(f"{sentence}\nWho or what is _?", (o1, o2), gold, sentence,
                  cloze_prompt=f"{sentence}\nIn the sentence above, _ is")


_HELLASWAG_JUNK = re.compile(r"\[[^\]]*\]")


def _hellaswag_clean(s: str) -> str:
    # WikiHow contexts carry markup like "[header]" / "[title]" (cf. lm-eval preprocess)
    s = s.replace(" [title]", ". ")
    s = _HELLASWAG_JUNK.sub("", s)
    return " ".join(s.replace("  ", " ").split())


def _hellaswag(row: dict) -> Parsed:
    activity = _text(row, "activity_label")
    ctx_a = _text(row, "ctx_a")
    ctx_b = row.get("ctx_b") or ""
    if not isinstance(ctx_b, str):
        raise RowError("field 'ctx_b' is not a string")
    ctx_b = " ".join(ctx_b.split())
    ctx = ctx_a + (" " + ctx_b[:1].upper() + ctx_b[1:] if ctx_b else "")
    ctx = _hellaswag_clean(f"{activity}: {ctx}")
    endings = tuple(_hellaswag_clean(e) for e in _choice_list(row, "endings", 4))
    gold = _int_label(row, "label", 4)  # a string "0".."3"; "" in test
    return Parsed(f"{ctx}\nWhat comes next?", endings, gold, ctx, cloze_prompt=ctx)


def _piqa(row: dict) -> Parsed:
    goal, s1, s2 = _text(row, "goal"), _text(row, "sol1"), _text(row, "sol2")
    gold = _int_label(row, "label", 2)  # 0 = sol1, 1 = sol2
    return Parsed(f"Goal: {goal}", (s1, s2), gold, goal)


def _siqa(row: dict) -> Parsed:
    context, question = _text(row, "context"), _text(row, "question")
    answers = tuple(_text(row, k) for k in ("answerA", "answerB", "answerC"))
    gold = _int_label(row, "label", 3, offset=1)  # a string "1".."3"
    return Parsed(f"{context}\nQuestion: {question}", answers, gold, f"{context} {question}")


def _openbookqa(row: dict) -> Parsed:
    stem = _text(row, "question_stem")
    texts, gold = _keyed_choices(row, None)
    return Parsed(f"Question: {stem}", texts, gold, stem)


def _commonsense_qa(row: dict) -> Parsed:
    question = _text(row, "question")
    texts, gold = _keyed_choices(row, None)
    return Parsed(f"Question: {question}", texts, gold, question)


def _arc(row: dict) -> Parsed:
    # ai2_arc: 3 to 5 choices; labels and answerKey are letters in most rows, digits "1".."5" in some.
    question = _text(row, "question")
    texts, gold = _keyed_choices(row, None)
    if not 3 <= len(texts) <= 5:
        raise RowError(f"expected 3 to 5 choices, got {len(texts)}")
    return Parsed(f"Question: {question}", texts, gold, question)


def _mmlu(row: dict) -> Parsed:
    # cais/mmlu auxiliary_train rows were once nested as {"train": {...}}; unwrap them.
    if isinstance(row, dict) and "question" not in row and isinstance(row.get("train"), dict):
        row = row["train"]
    question = _text(row, "question")
    choices = _choice_list(row, "choices", 4)
    gold = _int_label(row, "answer", 4)  # int 0..3 (A..D)
    subject = row.get("subject") or ""
    head = f"Subject: {subject.replace('_', ' ')}\n" if isinstance(subject, str) and subject else ""
    return Parsed(f"{head}Question: {question}", choices, gold, question)


# The usual choice count; None where rows differ (ARC has 3 to 5).
NUM_CHOICES = {"boolq": 2, "multirc": 2, "wic": 2, "wsc": 2, "rte": 2, "copa": 2, "winogrande": 2,
               "anli": 3, "hellaswag": 4, "piqa": 2, "siqa": 3, "openbookqa": 4, "mmlu": 4,
               "commonsense_qa": 5, "arc_easy": None, "arc_challenge": None}

_SG = "aps/super_glue"
_SG_SPLITS = ("train", "validation", "test")

ADAPTERS: dict[str, Adapter] = {a.name: a for a in (
    Adapter("boolq", _SG, "boolq", _SG_SPLITS, "train", "validation", _boolq, "idx"),
    Adapter("multirc", _SG, "multirc", _SG_SPLITS, "train", "validation", _multirc, "idx"),
    Adapter("wic", _SG, "wic", _SG_SPLITS, "train", "validation", _wic, "idx"),
    Adapter("wsc", _SG, "wsc.fixed", _SG_SPLITS, "train", "validation", _wsc, "idx"),
    Adapter("rte", _SG, "rte", _SG_SPLITS, "train", "validation", _rte, "idx"),
    Adapter("copa", _SG, "copa", _SG_SPLITS, "train", "validation", _copa, "idx"),
    Adapter("winogrande", "allenai/winogrande", "winogrande_xl", _SG_SPLITS, "train", "validation", _winogrande),
    # ANLI: three rounds; the paper reports dev_r1, so we train on train_r1 by default.
    Adapter("anli", "facebook/anli", None,
            tuple(f"{s}_r{r}" for r in (1, 2, 3) for s in ("train", "dev", "test")),
            "train_r1", "dev_r1", _anli, "uid"),
    Adapter("hellaswag", "Rowan/hellaswag", None, _SG_SPLITS, "train", "validation", _hellaswag, "ind"),
    Adapter("piqa", "ybisk/piqa", None, _SG_SPLITS, "train", "validation", _piqa),
    Adapter("siqa", "allenai/social_i_qa", None, ("train", "validation"), "train", "validation", _siqa),
    Adapter("openbookqa", "allenai/openbookqa", "main", _SG_SPLITS, "train", "validation", _openbookqa, "id"),
    # MMLU has no real train split; auxiliary_train is the documented training source.
    Adapter("mmlu", "cais/mmlu", "all", ("auxiliary_train", "dev", "validation", "test"),
            "auxiliary_train", "validation", _mmlu),
    Adapter("commonsense_qa", "tau/commonsense_qa", None, _SG_SPLITS, "train", "validation", _commonsense_qa, "id"),
    # ARC reports on test, as lm-evaluation-harness and LLM-Adapters do; its validation split stays unused.
    Adapter("arc_easy", "allenai/ai2_arc", "ARC-Easy", _SG_SPLITS, "train", "test", _arc, "id"),
    Adapter("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", _SG_SPLITS, "train", "test", _arc, "id"),
)}

# The paper's 14 datasets: `datasets: all` and every default.
DATASETS: tuple[str, ...] = ("boolq", "multirc", "wic", "wsc", "rte", "copa", "winogrande", "anli",
                             "hellaswag", "piqa", "siqa", "openbookqa", "mmlu", "commonsense_qa")
# Every dataset with an adapter: the paper's 14, then ARC for the commonsense-8 suite.
KNOWN_DATASETS: tuple[str, ...] = DATASETS + ("arc_easy", "arc_challenge")
# Named suites a profile's `datasets:` (or a trial's --datasets) may give instead of a list.
# commonsense8 is the LLM-Adapters commonsense-reasoning suite (Hu et al., 2023), also used by DoRA and MixLoRA.
# bigbench: BIG-bench multiple-choice tasks, read from the fetched sdist (harness.data.bigbench), that
# together cover the 14 datasets' task types. Any `bigbench_<task>[__<subtask>]` name is a dataset too.
BIGBENCH_PREFIX = "bigbench_"
SUITES: dict[str, tuple[str, ...]] = {
    "all": DATASETS,
    "commonsense8": ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"),
    "bigbench": ("bigbench_strategyqa", "bigbench_causal_judgment", "bigbench_metaphor_boolean", "bigbench_winowhy",
                 "bigbench_vitaminc_fact_verification", "bigbench_goal_step_wikihow__step_ordering",
                 "bigbench_timedial", "bigbench_disambiguation_qa", "bigbench_presuppositions_as_nli",
                 "bigbench_goal_step_wikihow__step_inference", "bigbench_social_iqa", "bigbench_physics",
                 "bigbench_elementary_math_qa__question_only",
                 "bigbench_abstract_narrative_understanding__4_distractors"),
}
assert tuple(ADAPTERS) == KNOWN_DATASETS


def is_known_dataset(dataset: str) -> bool:
    """A name of KNOWN_DATASETS, or a well-formed ``bigbench_<task>[__<subtask>]``."""
    if dataset in ADAPTERS:
        return True
    if not isinstance(dataset, str) or not dataset.startswith(BIGBENCH_PREFIX):
        return False
    from harness.data.bigbench import check_name

    try:
        check_name(dataset)
    except DataError:
        return False
    return True


assert all(is_known_dataset(d) for suite in SUITES.values() for d in suite)


def get_adapter(dataset: str) -> Adapter:
    if isinstance(dataset, str) and dataset.startswith(BIGBENCH_PREFIX):
        from harness.data.bigbench import adapter

        return adapter(dataset)
    if dataset not in ADAPTERS:
        raise DataError(f"unknown dataset {dataset!r}; expected one of: {' '.join(KNOWN_DATASETS)} "
                        f"or bigbench_<task>")
    return ADAPTERS[dataset]


def resolve_datasets(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Dataset names from a suite name (``all``, ``commonsense8``, ``bigbench``), a comma-separated string or a list.

    Raises ValueError (one line) for an unknown name, a repeat or an empty selection.
    """
    if isinstance(spec, str):
        names = SUITES[spec] if spec in SUITES else tuple(d.strip() for d in spec.split(",") if d.strip())
    elif isinstance(spec, (list, tuple)) and all(isinstance(d, str) for d in spec):
        names = tuple(spec)
    else:
        raise ValueError(f"datasets must be a suite name or a list of names, got {spec!r}")
    if not names:
        raise ValueError("datasets must name at least one dataset")
    unknown = [d for d in names if not is_known_dataset(d)]
    if unknown:
        raise ValueError(f"unknown dataset {', '.join(map(repr, unknown))}: expected names from "
                         f"{' '.join(KNOWN_DATASETS)}, bigbench_<task>[__<subtask>], or a suite ({', '.join(SUITES)})")
    if len(set(names)) != len(names):
        raise ValueError(f"datasets has duplicates: {', '.join(names)}")
    return names


def format_example(parsed: Parsed, *, id: str, dataset: str, fmt: str = "letter") -> Example:
    """Render a parsed record in ``letter`` or ``cloze`` format."""
    if fmt == "letter":
        lines = [parsed.question] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(parsed.choices)]
        prompt = "\n".join(lines) + "\nAnswer:"
        options = tuple(" " + LETTERS[i] for i in range(len(parsed.choices)))
    elif fmt == "cloze":
        prompt = parsed.cloze_prompt if parsed.cloze_prompt is not None else parsed.question + "\nAnswer:"
        texts = parsed.cloze_options if parsed.cloze_options is not None else parsed.choices
        options = tuple(" " + t for t in texts)
    else:
        raise DataError(f"unknown format {fmt!r}; expected one of: {' '.join(FORMATS)}")
    return Example(id=id, dataset=dataset, prompt=prompt.rstrip(), choices=tuple(parsed.choices),
                   options=options, gold=parsed.gold, text=parsed.text)


def convert_row(dataset: str, row: dict, *, id: str, fmt: str = "letter") -> Example:
    """Convert one raw record; raises RowError if it is malformed."""
    adapter = get_adapter(dataset)
    parsed = adapter.convert(row)
    n = NUM_CHOICES.get(dataset)  # None: rows differ (ARC, BIG-bench tasks)
    if n is not None and dataset not in ("openbookqa", "commonsense_qa") and len(parsed.choices) != n:
        raise RowError(f"expected {n} choices, got {len(parsed.choices)}")
    return format_example(parsed, id=id, dataset=dataset, fmt=fmt)
