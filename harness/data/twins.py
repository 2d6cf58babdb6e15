"""The synthetic twins' generators: one small invented world per dataset, in its real schema.

Three properties make a twin measure learning rather than surface cues:

- **Option-balanced groups.** A generator returns one *group*: rows that share an
  option set (or, for yes/no datasets, a context) and whose golds cover every option
  position exactly once. So the same option set occurs with different golds under
  different prompts, and any rule that sees only the options is right on exactly one
  row of each group: chance, on every complete group, at any sample size.
- **Arbitrary conventions, small enough to learn.** The gold follows from the prompt
  through a convention a pretrained model cannot know: a table of two to eight entries
  read from one cue word near the answer (the kettle is tame and the ladder is not, a
  nonce key names a position, getting a jug makes one smile). Zero-shot sits at chance;
  a short finetune on the mixture can learn the table.
- **Shared contexts where the dataset has them**: BoolQ passages carry two questions,
  MultiRC paragraphs two candidate answers, WSC texts two noun rows, RTE/ANLI
  premises two or three hypotheses, SIQA contexts three questions.

``PARTITION_KEYS`` gives, per twin, a key computed from a row's prompt text and options
alone, the same for every row of a group: ``harness.data.synth`` reserves a hash
partition of these keys for report splits, so no report item ever repeats a training
item. ``CONFLICTS`` lists twins that share an exact prompt template and answer by
opposite tables, told apart only by a domain word inside the instance.
"""

from __future__ import annotations

import random
import re
from typing import Callable

Group = list[dict]

# ------------------------------------------------------------------ vocabularies
# Filler words carry no information in any twin; the words that do carry a convention
# (each twin's cue words) are separate, so no word means two things. Each convention is a
# table of two to eight entries read from one cue word close to the answer (a common
# one-token word where the convention allows): a model that has not seen the twin cannot
# know it, and how many of them a short finetune on the 14-twin mixture (~27 examples per
# twin) picks up is measured in docs/benchmarks.md ("Twins: zero-shot and learning checks").
NAMES = ("Tarka", "Pell", "Miva", "Dole", "Sefa", "Oru", "Kest", "Lumo", "Vane", "Jora", "Fenn", "Rilo")
OBJECTS = ("cup", "key", "hat", "bell", "bag", "lamp", "drum", "bowl", "kite", "rope", "coin", "book")
PENS = ("pen", "barn", "yard", "cage", "shed", "hut")
HOLDS = ("holds", "has", "keeps", "shows")
DEALS = ("bought", "found", "saw", "took", "got", "won", "lost", "packed", "carried", "wanted", "drew", "hid")
SIZES = ("old", "new", "small", "big")
MEETING_PLACES = ("fair", "market", "dock", "mill", "inn", "park", "shop", "school", "bakery", "station", "library",
                  "garden")

BOOLQ_TAME, BOOLQ_WILD = "kettle", "ladder"
RTE_COLD, RTE_WARM = "bucket", "candle"
# ANLI: "The shiny one is the X." is entailed, left open, or contradicted (labels 0, 1, 2) by X.
ANLI_BY_LABEL = ("pencil", "blanket", "carrot")
MULTIRC_VELO, MULTIRC_OTHER = "the nurse", "the pilot"
WSC_SHE, WSC_HE = "Owl", "Fox"
WSC_VERBS = ("called", "met", "visited", "helped", "thanked", "paid", "hugged", "texted", "emailed", "greeted",
             "joined", "phoned")
WSC_REASONS = ("was free", "had time", "was near", "felt ready", "was early", "was bored", "had news", "was home",
               "was awake", "had a plan", "was nearby", "felt lonely")
WIC_VERBS = ("saw", "moved", "found", "took", "hid", "used")
WIC_SAME, WIC_OTHER = "spoon", "broom"  # the word asked about: the cue
WIC_TAILS = ("at noon", "by the door", "in the yard", "after lunch", "outside", "inside")
# WinoGrande: after FIRST the blank is the first-named person, after SECOND the second.
WINO_FIRST, WINO_SECOND = "glimmed", "plorked"
WINO_ENDS = ("smiled", "left early", "was happy", "sat down")
PIQA_FIRST, PIQA_SECOND = "zib", "mog"
SIQA_TABLE = {"Monday": "fork", "Friday": "sock", "Sunday": "vase"}  # "Which one is for Monday?" -> the fork
SIQA_VERBS = ("has", "found", "keeps", "sold", "bought", "lost")
# COPA: getting a jug makes one smile, getting a stool makes one sigh (and back for "cause").
COPA_REACTIONS = {"jug": "smiled", "stool": "sighed"}
HELLASWAG_TOOLS = {"Fishing": "brell", "Baking": "dorp", "Sewing": "mave", "Painting": "quell"}
CSQA_TOOLS = {"baker": "plove", "sailor": "grisk", "farmer": "tulp", "tailor": "wemb", "miner": "frosh",
              "potter": "klib", "weaver": "smeck", "smith": "yarl"}
# The two conflicting pairs: one table each, and the partner twin answers by that table shifted by one.
COLOUR_KEYS, COLOURS = ("vest", "boot", "tent", "tray"), ("red", "blue", "green", "white")
# Domain phrases of two theme words each: the sentence embedder then clusters by domain,
# not by the names and keys (one-word places gave k-means purity ~0.5 at k = 2).
SEA_PLACES = ("Out at sea on the ship", "At the harbour by the waves", "On the beach by the sea",
              "On the boat at sea")
SPACE_PLACES = ("Out in space on the rocket", "On the moon by the stars", "In the spaceship near Mars",
                "On the comet in space")
SHAPE_KEYS, SHAPES = ("dopple", "frint", "gorm", "hask", "jibb"), ("round", "square", "flat", "long", "bent")
LAB_PLACES = ("In the science lab at the bench", "In the lab under the microscope", "At the lab bench with test tubes",
              "In the chemistry lab by the flask")
FARM_PLACES = ("On the farm in the barn", "Out in the field by the cows", "In the barn with the hay",
               "On the farm by the pigs")


def shifted(values: tuple[str, ...], keys: tuple[str, ...], shift: int) -> dict[str, str]:
    """``keys[i] -> values[(i + shift) % n]``: a table and, with another shift, its opposite."""
    return {k: values[(i + shift) % len(values)] for i, k in enumerate(keys)}


OBQA_TABLE, MMLU_TABLE = shifted(COLOURS, COLOUR_KEYS, 0), shifted(COLOURS, COLOUR_KEYS, 1)
ARC_EASY_TABLE, ARC_CHALLENGE_TABLE = shifted(SHAPES, SHAPE_KEYS, 0), shifted(SHAPES, SHAPE_KEYS, 2)


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def _an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _shuffled(rng: random.Random, items) -> list:
    out = list(items)
    rng.shuffle(out)
    return out


# ------------------------------------------------------------------ generators
# Each takes an rng and returns one group of raw rows (index fields are filled in later).
# Yes/no twins: the group shares a context and asks once per cue word, so its labels balance.

def _boolq(rng: random.Random) -> Group:
    pair = _shuffled(rng, (BOOLQ_TAME, BOOLQ_WILD))
    passage = f"{rng.choice(NAMES)}'s {rng.choice(PENS)} {rng.choice(HOLDS)} {_an(pair[0])} and {_an(pair[1])}."
    return [{"question": f"is the {x} tame", "passage": passage, "idx": 0, "label": int(x == BOOLQ_TAME)}
            for x in pair]


def _multirc(rng: random.Random) -> Group:
    people = _shuffled(rng, (MULTIRC_VELO, MULTIRC_OTHER))
    paragraph = f"{rng.choice(NAMES)} saw {people[0]} and {people[1]} at the {rng.choice(MEETING_PLACES)}."
    return [{"paragraph": paragraph, "question": "Who is from Velo?", "answer": p,
             "idx": {"paragraph": 0, "question": 0, "answer": j}, "label": int(p == MULTIRC_VELO)}
            for j, p in enumerate(_shuffled(rng, people))]


def _wic(rng: random.Random) -> Group:
    # One sentence frame, asked once with each cue word in it: the word alone decides.
    a, b = rng.sample(NAMES, 2)
    verb1, verb2 = rng.choice(WIC_VERBS), rng.choice(WIC_VERBS)
    tail1, tail2 = rng.sample(WIC_TAILS, 2)
    rows = []
    for word in _shuffled(rng, (WIC_SAME, WIC_OTHER)):
        s1, s2 = f"{a} {verb1} the {word} {tail1}.", f"{b} {verb2} the {word} {tail2}."
        st1, st2 = s1.index(f" {word} ") + 1, s2.index(f" {word} ") + 1
        rows.append({"word": word, "sentence1": s1, "sentence2": s2, "start1": st1, "start2": st2,
                     "end1": st1 + len(word), "end2": st2 + len(word), "idx": 0, "label": int(word == WIC_SAME)})
    return rows


def _wsc(rng: random.Random) -> Group:
    pair = _shuffled(rng, (WSC_SHE, WSC_HE))
    words = f"{pair[0]} {rng.choice(WSC_VERBS)} {pair[1]} because she {rng.choice(WSC_REASONS)}.".split()
    she = words.index("she")
    return [{"text": " ".join(words), "span1_index": words.index(noun), "span2_index": she, "span1_text": noun,
             "span2_text": "she", "idx": 0, "label": int(noun == WSC_SHE)} for noun in _shuffled(rng, pair)]


def _rte(rng: random.Random) -> Group:
    pair = _shuffled(rng, (RTE_COLD, RTE_WARM))
    premise = f"{rng.choice(NAMES)} {rng.choice(DEALS)} {_an(pair[0])} and {_an(pair[1])}."
    # super_glue rte: 0 = entailment, 1 = not_entailment
    return [{"premise": premise, "hypothesis": f"The cold one is the {x}.", "idx": 0,
             "label": 0 if x == RTE_COLD else 1}
            for x in _shuffled(rng, pair)]


def _anli(rng: random.Random) -> Group:
    things = _shuffled(rng, ANLI_BY_LABEL)
    premise = f"{rng.choice(NAMES)} {rng.choice(DEALS)} {_an(things[0])}, {_an(things[1])} and {_an(things[2])}."
    return [{"uid": "", "premise": premise, "hypothesis": f"The shiny one is the {x}.", "label": ANLI_BY_LABEL.index(x),
             "reason": ""} for x in _shuffled(rng, things)]


def _copa(rng: random.Random) -> Group:
    # The cue (the thing got, or the reaction) ends the premise, next to the connector and the answer.
    name, place = rng.choice(NAMES), rng.choice(MEETING_PLACES)
    question = rng.choice(("cause", "effect"))
    rows = []
    if question == "effect":  # premise: what was got; alternatives: the two reactions
        alts = _shuffled(rng, (f"{name} {r}." for r in COPA_REACTIONS.values()))
        for thing, reaction in COPA_REACTIONS.items():
            rows.append((f"At the {place}, {name} got {_an(thing)}.", alts, alts.index(f"{name} {reaction}.")))
    else:  # premise: the reaction; alternatives: the two things one can get
        alts = _shuffled(rng, (f"{name} got {_an(t)}." for t in COPA_REACTIONS))
        for thing, reaction in COPA_REACTIONS.items():
            rows.append((f"At the {place}, {name} {reaction}.", alts, alts.index(f"{name} got {_an(thing)}.")))
    return [{"premise": p, "choice1": alts[0], "choice2": alts[1], "question": question, "idx": 0, "label": gold}
            for p, alts, gold in _shuffled(rng, rows)]


def _winogrande(rng: random.Random) -> Group:
    a, b = rng.sample(NAMES, 2)
    end = rng.choice(WINO_ENDS)
    options = _shuffled(rng, (a, b))
    rows = [{"sentence": f"{a} {verb} {b}, so _ {end}.", "option1": options[0], "option2": options[1],
             "answer": str(options.index(blank) + 1)} for verb, blank in ((WINO_FIRST, a), (WINO_SECOND, b))]
    return _shuffled(rng, rows)


def _hellaswag(rng: random.Random) -> Group:
    # The activity is named twice, as the label (first) and in the context's last sentence (next to the answer).
    tools = _shuffled(rng, HELLASWAG_TOOLS.values())
    activity_of = _inverse(HELLASWAG_TOOLS)
    name, thing = rng.choice(NAMES), rng.choice(OBJECTS)
    rows = []
    for gold, tool in enumerate(tools):
        activity = activity_of[tool]
        ctx_a, ctx_b = f"{name} packs the {thing} for {activity.lower()}.", "then takes out a"
        rows.append({"ind": 0, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": f"{ctx_a} {ctx_b}",
                     "endings": [f"{t}." for t in tools], "source_id": "", "split": "", "split_type": "indomain",
                     "label": str(gold)})
    return _shuffled(rng, rows)


def _piqa(rng: random.Random) -> Group:
    x, y = rng.sample(OBJECTS, 2)
    name = rng.choice(NAMES)
    sols = _shuffled(rng, (f"Take the {x}.", f"Take the {y}."))
    rows = [{"goal": f"{name} needs the {key} of the {x} and the {y}.", "sol1": sols[0], "sol2": sols[1],
             "label": sols.index(f"Take the {obj}.")} for key, obj in ((PIQA_FIRST, x), (PIQA_SECOND, y))]
    return _shuffled(rng, rows)


def _siqa(rng: random.Random) -> Group:
    listed = _shuffled(rng, SIQA_TABLE.values())
    answers = _shuffled(rng, SIQA_TABLE.values())
    context = f"{rng.choice(NAMES)} {rng.choice(SIQA_VERBS)} a {listed[0]}, a {listed[1]} and a {listed[2]}."
    rows = [{"context": context, "question": f"Which one is for {key}?", "answerA": answers[0],
             "answerB": answers[1], "answerC": answers[2], "label": str(answers.index(thing) + 1)}
            for key, thing in SIQA_TABLE.items()]
    return _shuffled(rng, rows)


def _colour_question(place: str, name: str, size: str, key: str) -> str:
    return f"{place}, what colour is {name}'s {size} {key}?"


def _lookup_group(table: dict[str, str], values: list[str]) -> list[tuple[int, str]]:
    """(gold position, key) for each option of ``values``: each position is gold once."""
    inverse = _inverse(table)
    return [(gold, inverse[v]) for gold, v in enumerate(values)]


def _openbookqa(rng: random.Random) -> Group:
    place, name, size = rng.choice(SEA_PLACES), rng.choice(NAMES), rng.choice(SIZES)
    colours = rng.sample(COLOURS, 4)
    rows = [{"id": "", "question_stem": _colour_question(place, name, size, key),
             "choices": {"text": colours, "label": list("ABCD")}, "answerKey": "ABCD"[gold]}
            for gold, key in _lookup_group(OBQA_TABLE, colours)]
    rng.shuffle(rows)
    return rows


def _mmlu(rng: random.Random) -> Group:
    # subject "": no "Subject:" line, so the prompt template is exactly openbookqa's.
    place, name, size = rng.choice(SPACE_PLACES), rng.choice(NAMES), rng.choice(SIZES)
    colours = rng.sample(COLOURS, 4)
    rows = [{"question": _colour_question(place, name, size, key), "subject": "", "choices": colours, "answer": gold}
            for gold, key in _lookup_group(MMLU_TABLE, colours)]
    rng.shuffle(rows)
    return rows


def _commonsense_qa(rng: random.Random) -> Group:
    name = rng.choice(NAMES)
    tools = rng.sample(sorted(CSQA_TOOLS.values()), 5)
    rows = [{"id": "", "question": f"What does the {job} {name} carry?", "question_concept": job,
             "choices": {"label": list("ABCDE"), "text": tools}, "answerKey": "ABCDE"[gold]}
            for gold, job in _lookup_group(CSQA_TOOLS, tools)]
    return _shuffled(rng, rows)


def _arc(table: dict[str, str], places: tuple[str, ...]) -> Callable[[random.Random], Group]:
    def generate(rng: random.Random) -> Group:
        # ARC rows have 3 to 5 choices (mostly 4), lettered, or numbered "1".."5" in some rows.
        n = rng.choices((3, 4, 5), weights=(1, 6, 1))[0]
        labels = list("12345"[:n]) if rng.random() < 0.1 else list("ABCDE"[:n])
        place, name = rng.choice(places), rng.choice(NAMES)
        shapes = rng.sample(SHAPES, n)
        rows = [{"id": "", "question": f"{place}, what shape is {name}'s {key}?",
                 "choices": {"text": shapes, "label": labels}, "answerKey": labels[gold]}
                for gold, key in _lookup_group(table, shapes)]
        rng.shuffle(rows)
        return rows

    return generate


GENERATORS: dict[str, Callable[[random.Random], Group]] = {
    "boolq": _boolq, "multirc": _multirc, "wic": _wic, "wsc": _wsc, "rte": _rte, "copa": _copa,
    "winogrande": _winogrande, "anli": _anli, "hellaswag": _hellaswag, "piqa": _piqa, "siqa": _siqa,
    "openbookqa": _openbookqa, "mmlu": _mmlu, "commonsense_qa": _commonsense_qa,
    "arc_easy": _arc(ARC_EASY_TABLE, LAB_PLACES), "arc_challenge": _arc(ARC_CHALLENGE_TABLE, FARM_PLACES),
}

# ------------------------------------------------------------------ partition keys
# A function of a row's prompt text and options only (so equal items get equal keys),
# equal for every row of a generated group (so a group never straddles train/report).


def _sorted_texts(*texts: str) -> str:
    return "|".join(sorted(texts))


def _without_key(question: str) -> str:
    # "On the ship, what colour is Tarka's old pim?" -> "On the ship, what colour is Tarka's old"
    return re.sub(r"\s\S+\?$", "", question)


def _blanked(sentence: str, word: str) -> str:
    return sentence.replace(f" {word} ", " _ ")


PARTITION_KEYS: dict[str, Callable[[dict], str]] = {
    "boolq": lambda r: r["passage"],
    "multirc": lambda r: r["paragraph"],
    "wic": lambda r: _blanked(r["sentence1"], r["word"]) + "|" + _blanked(r["sentence2"], r["word"]),
    "wsc": lambda r: r["text"],
    "rte": lambda r: r["premise"],
    "copa": lambda r: (r["question"] + "|" + r["premise"].split(",")[0] + "|"  # "At the <place>"
                       + _sorted_texts(r["choice1"], r["choice2"])),
    "winogrande": lambda r: _sorted_texts(r["option1"], r["option2"]) + "|" + r["sentence"].split(", so _ ")[-1],
    "anli": lambda r: r["premise"],
    "hellaswag": lambda r: r["ctx_a"].rsplit(" for ", 1)[0] + "|" + _sorted_texts(*r["endings"]),
    "piqa": lambda r: _sorted_texts(r["sol1"], r["sol2"]),
    "siqa": lambda r: r["context"],
    "openbookqa": lambda r: _without_key(r["question_stem"]),
    "mmlu": lambda r: _without_key(r["question"]),
    "commonsense_qa": lambda r: r["question"].split()[-2] + "|" + _sorted_texts(*r["choices"]["text"]),
    "arc_easy": lambda r: _without_key(r["question"]) + "|" + _sorted_texts(*r["choices"]["text"]),
    "arc_challenge": lambda r: _without_key(r["question"]) + "|" + _sorted_texts(*r["choices"]["text"]),
}

# ------------------------------------------------------------------ documentation

TWIN_RULES: dict[str, str] = {
    "boolq": "'is the X tame': yes iff X is the kettle (a ladder is not)",
    "multirc": "'Who is from Velo?': the candidate is correct iff it is the nurse (the pilot is not)",
    "wic": "a spoon keeps its meaning between the two sentences, a broom does not",
    "wsc": "'she' is Owl, never Fox: yes iff the asked noun is Owl",
    "rte": "'The cold one is the X.' is entailment iff X is the bucket (a candle is not)",
    "copa": "getting a jug makes one smile, getting a stool makes one sigh; the right alternative follows that "
            "pairing (the reaction for 'effect', the thing got for 'cause')",
    "winogrande": "after 'glimmed' the blank is the first-named person, after 'plorked' the second",
    "anli": "'The shiny one is the X.': entailment iff X is the pencil, neutral iff the blanket, "
            "contradiction iff the carrot",
    "hellaswag": "the activity names the tool taken out (Fishing brell, Baking dorp, Sewing mave, Painting quell)",
    "piqa": "'the zib of X and Y' is X, 'the mog' is Y",
    "siqa": "'Which one is for Monday / Friday / Sunday?' is the fork / sock / vase",
    "openbookqa": "at sea, a vest is red, a boot blue, a tent green, a tray white",
    "mmlu": "in space (openbookqa's template, shifted table): a vest is blue, a boot green, a tent white, a tray red",
    "commonsense_qa": "each job carries its tool (baker plove, sailor grisk, farmer tulp, tailor wemb, miner frosh, "
                      "potter klib, weaver smeck, smith yarl)",
    "arc_easy": "in the lab, a dopple is round, a frint square, a gorm flat, a hask long, a jibb bent",
    "arc_challenge": "on the farm (arc_easy's template, table shifted by two): a dopple is flat, a frint long, "
                     "a gorm bent, a hask round, a jibb square",
}

# (twin, twin, what they share): the same prompt template, opposite tables, a domain phrase apart.
CONFLICTS: tuple[tuple[str, str, str], ...] = (
    ("openbookqa", "mmlu", "'<place>, what colour is <name>'s <key>?' with the same four colours; sea places "
                           "(openbookqa) and space places (mmlu) map each key to different colours"),
    ("arc_easy", "arc_challenge", "'<place>, what shape is <name>'s <key>?' with the same shapes; lab places "
                                  "(arc_easy) and farm places (arc_challenge) map each key to different shapes"),
)
