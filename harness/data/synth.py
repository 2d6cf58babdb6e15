"""Synthetic twins of the 14 datasets: the offline default data and the test data.

Each twin writes rows in exactly its dataset's HF schema and label conventions, so
the real adapter reads them unchanged. Content is generated here, procedurally,
from small fixed vocabularies of invented names; every answer follows from one
simple rule (see ``TWIN_RULES``) that a small LM can pick up from a few hundred
examples, while the prompt never states which rule applies, so a model that has
not been trained on the twin sits near chance.

Two pairs share a surface form but answer by opposite rules (``CONFLICTS``): one
shared adapter trained on both is pulled in opposite directions, which is the
interference a mixture of experts is meant to resolve.

Difficulty: each row draws a level 1..3 that sets the number of distractor facts or
items (and, for numbers, how close they are).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Callable

from harness.data.adapters import DATASETS, get_adapter

DEFAULT_N_TRAIN = 400
DEFAULT_N_VALIDATION = 100

TWIN_RULES: dict[str, str] = {
    "boolq": "yes iff the passage states exactly the asked owner-colour-object fact (1-3 facts; negatives swap colour or owner)",
    "multirc": "candidate answer correct iff it names the person with the MOST items among 2-4 stated counts",
    "wic": "same meaning iff the cue words around the nonce word in both sentences come from the same topic group",
    "wsc": "the pronoun refers to the subject after verbs of class S (called, visited, texted, emailed) and to the object after class O (thanked, praised, paid, hugged)",
    "rte": "'X has more/fewer N than Y' is entailment (0) iff the stated counts make it literally true",
    "copa": "a fixed table of 12 invented cause->effect event pairs; the correct alternative is the premise's partner",
    "winogrande": "after 'X has more A than Y, so _ V', the blank is the one with more A iff V is the attribute's 'high' verb",
    "anli": "same template as rte with the comparison INVERTED: 'X has more N than Y' is entailment (0) iff X has fewer; neutral (1) iff the hypothesis names someone absent",
    "hellaswag": "the right ending continues the arithmetic sequence in the context (step 1-4)",
    "piqa": "the right solution uses the HEAVIER of two boxes",
    "siqa": "the right answer is the LIGHTEST of three boxes",
    "openbookqa": "'Every K is C' rules plus 'T is a K': the answer is T's colour via its kind (2-4 rules stated)",
    "mmlu": "a score table 'X scored n, ...'; the answer is the asked person's score",
    "commonsense_qa": "odd one out: four choices share a material, the answer is the one made of another",
}

CONFLICTS: tuple[tuple[str, str, str], ...] = (
    ("rte", "anli", "same premise/hypothesis comparison template; anli twin inverts what 'more'/'fewer' entail"),
    ("piqa", "siqa", "same boxes-with-weights surface; piqa twin picks the heaviest, siqa twin the lightest"),
)

NAMES = ("Tarka", "Pell", "Miva", "Dole", "Brin", "Sefa", "Oru", "Kest", "Lumo", "Vane", "Jora", "Fenn",
         "Rilo", "Nax", "Quil", "Zeb", "Ama", "Teo", "Ysa", "Gund")
COLOURS = ("red", "blue", "green", "white", "black", "yellow", "brown", "grey")
OBJECTS = ("kite", "cup", "lamp", "boat", "hat", "drum", "key", "bell", "bag", "bowl")
ITEMS = ("coins", "shells", "stones", "beads", "cards", "pens", "nuts", "rings")
KINDS = ("blick", "wug", "dax", "zorp", "tove", "fep", "mip", "slon")


def _names(rng: random.Random, k: int) -> list[str]:
    return rng.sample(NAMES, k)


def _distinct_numbers(rng: random.Random, k: int, level: int) -> list[int]:
    hi = {1: 9, 2: 20, 3: 50}[level]
    return rng.sample(range(1, hi + 1), k)


def _place(rng: random.Random, right: str, wrong: list[str], gold: int) -> list[str]:
    wrong = list(wrong)
    rng.shuffle(wrong)
    return wrong[:gold] + [right] + wrong[gold:]


# --------------------------------------------------------------- generators
# Each takes (rng, index, gold, level) and returns one raw row in the real schema.

def _boolq(rng, i, gold, level):
    owners = _names(rng, level + 1)
    objects = rng.sample(OBJECTS, level)
    colours = [rng.choice(COLOURS) for _ in range(level)]
    facts = [f"{owners[j]} owns a {colours[j]} {objects[j]}." for j in range(level)]
    j = rng.randrange(level)
    owner, colour, obj = owners[j], colours[j], objects[j]
    if not gold:
        # negatives: a wrong colour, a named person who owns nothing, or another owner's name
        kind = rng.choice(("colour", "absent", "other") if level > 1 else ("colour", "absent"))
        if kind == "colour":
            colour = rng.choice([c for c in COLOURS if c != colour])
        elif kind == "absent":
            owner = owners[-1]
        else:
            owner = owners[(j + 1) % level]
    passage = " ".join(facts)
    return {"question": f"does {owner.lower()} own a {colour} {obj}", "passage": passage, "idx": i, "label": gold}


def _counts(rng, level):
    people = _names(rng, level + 1)
    return people, _distinct_numbers(rng, level + 1, level)


def _multirc(rng, i, gold, level):
    people, counts = _counts(rng, level)
    item = rng.choice(ITEMS)
    paragraph = " ".join(f"{p} has {n} {item}." for p, n in zip(people, counts))
    best = people[counts.index(max(counts))]
    answer = best if gold else rng.choice([p for p in people if p != best])
    question = f"Who has the most {item}?"
    return {"paragraph": paragraph, "question": question, "answer": answer,
            "idx": {"paragraph": i, "question": 0, "answer": 0}, "label": gold}


WIC_GROUPS = (("river", "lake", "boat", "fish"), ("coins", "loan", "cash", "debt"),
              ("song", "drum", "choir", "tune"), ("bread", "soup", "salt", "meal"))
WIC_WORDS = ("dax", "wug", "blick", "toma", "fep", "mip")


def _wic(rng, i, gold, level):
    word = rng.choice(WIC_WORDS)
    g1, g2 = rng.sample(range(len(WIC_GROUPS)), 2)
    cue1 = rng.choice(WIC_GROUPS[g1])
    cue2 = rng.choice([c for c in WIC_GROUPS[g1] if c != cue1] if gold else WIC_GROUPS[g2])
    a, b = _names(rng, 2)
    frames = ("{n} saw the {w} near the {c}.", "The {w} of the {c} was new to {n}.",
              "{n} kept the {w} with the {c}.")
    s1 = rng.choice(frames).format(n=a, w=word, c=cue1)
    s2 = rng.choice(frames).format(n=b, w=word, c=cue2)
    st1, st2 = s1.index(word), s2.index(word)
    return {"word": word, "sentence1": s1, "sentence2": s2, "start1": st1, "start2": st2,
            "end1": st1 + len(word), "end2": st2 + len(word), "idx": i, "label": gold}


WSC_SUBJECT_VERBS = ("called", "visited", "texted", "emailed")
WSC_OBJECT_VERBS = ("thanked", "praised", "paid", "hugged")
WSC_REASONS = ("was glad", "had time", "felt ready", "was free")


def _wsc(rng, i, gold, level):
    a, b = _names(rng, 2)
    to_subject = rng.random() < 0.5
    verb = rng.choice(WSC_SUBJECT_VERBS if to_subject else WSC_OBJECT_VERBS)
    pronoun = rng.choice(("he", "she"))
    words = f"{a} {verb} {b} because {pronoun} {rng.choice(WSC_REASONS)}.".split()
    referent, other = (a, b) if to_subject else (b, a)
    span1 = referent if gold else other
    return {"text": " ".join(words), "span1_index": words.index(span1), "span2_index": words.index(pronoun),
            "span1_text": span1, "span2_text": pronoun, "idx": i, "label": gold}


def _comparison(rng, level):
    """Premise with 2-4 counts and a true/false 'more/fewer' claim about two of them."""
    people, counts = _counts(rng, level)
    item = rng.choice(ITEMS)
    premise = " ".join(f"{p} has {n} {item}." for p, n in zip(people, counts))
    x, y = rng.sample(range(len(people)), 2)
    return people, counts, item, premise, x, y


def _rte(rng, i, gold, level):
    people, counts, item, premise, x, y = _comparison(rng, level)
    true = gold == 0  # 0 = entailment
    more = (counts[x] > counts[y]) == true
    hypothesis = f"{people[x]} has {'more' if more else 'fewer'} {item} than {people[y]}."
    return {"premise": premise, "hypothesis": hypothesis, "idx": i, "label": gold}


def _anli(rng, i, gold, level):
    people, counts, item, premise, x, y = _comparison(rng, level)
    if gold == 1:  # neutral: the claim is about someone the premise never mentions
        absent = rng.choice([n for n in NAMES if n not in people])
        hypothesis = f"{absent} has {rng.choice(('more', 'fewer'))} {item} than {people[y]}."
    else:
        # Inverted convention (the twin's deliberate conflict with rte): "more" is entailed when X has fewer.
        entailed = gold == 0
        more = (counts[x] < counts[y]) == entailed
        hypothesis = f"{people[x]} has {'more' if more else 'fewer'} {item} than {people[y]}."
    return {"uid": f"synth-{i:06d}", "premise": premise, "hypothesis": hypothesis, "label": gold,
            "reason": ""}


COPA_PAIRS = (
    ("The bell rang", "The lamp turned green"), ("The drum was struck", "The door opened"),
    ("The whistle blew", "The birds flew off"), ("The red flag went up", "The market closed"),
    ("The horn sounded", "The river rose"), ("The candle was lit", "The dog barked"),
    ("The gate was painted", "The bread went stale"), ("The clock stopped", "The garden froze"),
    ("The kite was raised", "The cart rolled away"), ("The well ran dry", "The choir sang"),
    ("The mirror cracked", "The fish jumped"), ("The rope was cut", "The tower glowed"),
)


def _copa(rng, i, gold, level):
    k = rng.randrange(len(COPA_PAIRS))
    cause, effect = COPA_PAIRS[k]
    other = COPA_PAIRS[rng.choice([j for j in range(len(COPA_PAIRS)) if j != k])]
    question = rng.choice(("cause", "effect"))
    if question == "effect":
        premise, right, wrong = cause, effect, other[1]
    else:
        premise, right, wrong = effect, cause, other[0]
    alts = _place(rng, right + ".", [wrong + "."], gold)
    return {"premise": premise + ".", "choice1": alts[0], "choice2": alts[1], "question": question,
            "idx": i, "label": gold}


# (attribute, verb when the blank is the one with more, verb when it is the one with less)
WINO_FRAMES = (
    ("coins", "pays for lunch", "borrows money"), ("books", "lends a novel", "visits the library"),
    ("height", "reaches the shelf", "fits under the table"), ("speed", "wins the race", "arrives last"),
)


def _winogrande(rng, i, gold, level):
    a, b = _names(rng, 2)
    attr, high, low = rng.choice(WINO_FRAMES)
    use_high = rng.random() < 0.5
    comparative = {"height": "is taller than", "speed": "is faster than"}.get(attr, f"has more {attr} than")
    sentence = f"{a} {comparative} {b}, so _ {high if use_high else low}."
    right, wrong = (a, b) if use_high else (b, a)
    opts = _place(rng, right, [wrong], gold)
    return {"sentence": sentence, "option1": opts[0], "option2": opts[1], "answer": str(gold + 1)}


def _hellaswag(rng, i, gold, level):
    step = rng.randint(1, 1 + level)
    start = rng.randint(1, 10 * level)
    seq = [start + step * j for j in range(3)]
    nxt = seq[-1] + step
    wrong = set()
    while len(wrong) < 3:
        w = nxt + rng.choice((-3, -2, -1, 1, 2, 3, step + 1, -step - 1))
        if w != nxt and w > 0:
            wrong.add(w)
    name = rng.choice(NAMES)
    endings = _place(rng, f"{nxt}.", [f"{w}." for w in sorted(wrong)], gold)
    ctx_a = f"{name} counts {', '.join(map(str, seq))}."
    ctx_b = "the next number is"
    return {"ind": i, "activity_label": "Counting", "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}", "endings": endings, "source_id": f"synth-{i}",
            "split": "", "split_type": "indomain", "label": str(gold)}


def _piqa(rng, i, gold, level):
    name = rng.choice(NAMES)
    w = _distinct_numbers(rng, 2, level)
    sols = _place(rng, f"Use the {max(w)} kg box.", [f"Use the {min(w)} kg box."], gold)
    return {"goal": f"{name} needs a box.", "sol1": sols[0], "sol2": sols[1], "label": gold}


def _siqa(rng, i, gold, level):
    name = rng.choice(NAMES)
    w = _distinct_numbers(rng, 3, level)
    answers = _place(rng, f"the {min(w)} kg box", [f"the {x} kg box" for x in w if x != min(w)], gold)
    context = f"{name} has boxes of {w[0]} kg, {w[1]} kg and {w[2]} kg."
    return {"context": context, "question": f"Which box does {name} take?",
            "answerA": answers[0], "answerB": answers[1], "answerC": answers[2], "label": str(gold + 1)}


def _openbookqa(rng, i, gold, level):
    n_rules = level + 1
    kinds = rng.sample(KINDS, n_rules)
    colours = rng.sample(COLOURS, n_rules)
    target = rng.randrange(n_rules)
    name = rng.choice(NAMES)
    rules = " ".join(f"Every {k} is {c}." for k, c in zip(kinds, colours))
    stem = f"{rules} {name} is a {kinds[target]}. What colour is {name}?"
    # distractors: the other stated colours first, so copying any colour is not enough
    others = [c for c in colours if c != colours[target]]
    others += [c for c in COLOURS if c not in colours]
    texts = _place(rng, colours[target], others[:3], gold)
    return {"id": f"synth-{i:06d}", "question_stem": stem,
            "choices": {"text": texts, "label": list("ABCD")}, "answerKey": "ABCD"[gold]}


def _mmlu(rng, i, gold, level):
    people = _names(rng, level + 1)
    scores = _distinct_numbers(rng, level + 1, level)
    asked = rng.randrange(len(people))
    table = ", ".join(f"{p} scored {s}" for p, s in zip(people, scores))
    others = [s for s in scores if s != scores[asked]]
    pool = [s for s in range(1, 60) if s not in scores]
    others += rng.sample(pool, 3 - len(others)) if len(others) < 3 else []
    choices = _place(rng, str(scores[asked]), [str(s) for s in rng.sample(others, 3)], gold)
    return {"question": f"{table}. What did {people[asked]} score?", "subject": "synthetic_lookup",
            "choices": choices, "answer": gold}


MATERIALS = {"glass": ("cup", "jar", "bowl", "vase", "bead", "lamp"),
             "wooden": ("spoon", "chair", "box", "comb", "toy", "stool"),
             "metal": ("key", "pan", "bell", "nail", "fork", "pipe"),
             "paper": ("bag", "hat", "fan", "cup", "kite", "map")}


def _commonsense_qa(rng, i, gold, level):
    common, odd = rng.sample(sorted(MATERIALS), 2)
    same = [f"{common} {o}" for o in rng.sample(MATERIALS[common], 4)]
    texts = _place(rng, f"{odd} {rng.choice(MATERIALS[odd])}", same, gold)
    return {"id": f"synth-{i:06d}", "question": "Which one is not like the others?", "question_concept": common,
            "choices": {"label": list("ABCDE"), "text": texts}, "answerKey": "ABCDE"[gold]}


GENERATORS: dict[str, Callable] = {
    "boolq": _boolq, "multirc": _multirc, "wic": _wic, "wsc": _wsc, "rte": _rte, "copa": _copa,
    "winogrande": _winogrande, "anli": _anli, "hellaswag": _hellaswag, "piqa": _piqa, "siqa": _siqa,
    "openbookqa": _openbookqa, "mmlu": _mmlu, "commonsense_qa": _commonsense_qa,
}
NUM_LABELS = {"boolq": 2, "multirc": 2, "wic": 2, "wsc": 2, "rte": 2, "copa": 2, "winogrande": 2, "anli": 3,
              "hellaswag": 4, "piqa": 2, "siqa": 3, "openbookqa": 4, "mmlu": 4, "commonsense_qa": 5}
assert tuple(GENERATORS) == DATASETS and tuple(TWIN_RULES) == DATASETS


def synthetic_rows(dataset: str, split: str, n: int, *, seed: int = 0) -> list[dict]:
    """``n`` rows of ``dataset``'s twin for ``split``; gold labels are balanced, then shuffled."""
    # A string seed is hashed with SHA-512 by random.Random, so this is stable across runs and machines.
    rng = random.Random(f"mor1e-synth:{seed}:{dataset}:{split}")
    k = NUM_LABELS[dataset]
    golds = [j % k for j in range(n)]
    rng.shuffle(golds)
    gen = GENERATORS[dataset]
    return [gen(rng, i, golds[i], rng.randint(1, 3)) for i in range(n)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_synthetic(out_dir: str | os.PathLike, *, seed: int = 0, n_train: int = DEFAULT_N_TRAIN,
                    n_validation: int = DEFAULT_N_VALIDATION, datasets: tuple[str, ...] = DATASETS
                    ) -> dict[str, dict[str, int]]:
    """Write ``OUT/<dataset>/<split>.jsonl`` for each twin: its train split (``train_r1``
    for anli, ``auxiliary_train`` for mmlu) with ``n_train`` rows and its report split
    (``validation``; ``dev_r1`` for anli) with ``n_validation`` rows. Returns the counts."""
    if n_train < 0 or n_validation < 0:
        raise ValueError(f"row counts must be >= 0, got train={n_train} validation={n_validation}")
    for name in datasets:
        get_adapter(name)
    written: dict[str, dict[str, int]] = {}
    for name in datasets:
        adapter = get_adapter(name)
        written[name] = {}
        for split, n in ((adapter.train_split, n_train), (adapter.report_split, n_validation)):
            _write_jsonl(Path(out_dir) / name / f"{split}.jsonl", synthetic_rows(name, split, n, seed=seed))
            written[name][split] = n
    return written
