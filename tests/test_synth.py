"""Synthetic twins: deterministic, in each dataset's schema, read by the real adapters, and built
so that only learning the documented rule scores above chance."""

import copy
import json
import re
from collections import Counter, defaultdict

import pytest

from harness.data import CONFLICTS, DATASETS, KNOWN_DATASETS, TWIN_RULES, load_examples, split_name, write_synthetic
from harness.data.adapters import ADAPTERS, convert_row
from harness.data.synth import in_report_partition, item_identity, synthetic_rows
from harness.data.twins import PARTITION_KEYS

# The field names of each dataset's HF schema (what the real files carry).
SCHEMA = {
    "boolq": {"question", "passage", "idx", "label"},
    "multirc": {"paragraph", "question", "answer", "idx", "label"},
    "wic": {"word", "sentence1", "sentence2", "start1", "start2", "end1", "end2", "idx", "label"},
    "wsc": {"text", "span1_index", "span2_index", "span1_text", "span2_text", "idx", "label"},
    "rte": {"premise", "hypothesis", "idx", "label"},
    "copa": {"premise", "choice1", "choice2", "question", "idx", "label"},
    "winogrande": {"sentence", "option1", "option2", "answer"},
    "anli": {"uid", "premise", "hypothesis", "label", "reason"},
    "hellaswag": {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split",
                  "split_type", "label"},
    "piqa": {"goal", "sol1", "sol2", "label"},
    "siqa": {"context", "question", "answerA", "answerB", "answerC", "label"},
    "openbookqa": {"id", "question_stem", "choices", "answerKey"},
    "mmlu": {"question", "subject", "choices", "answer"},
    "commonsense_qa": {"id", "question", "question_concept", "choices", "answerKey"},
    "arc_easy": {"id", "question", "choices", "answerKey"},
    "arc_challenge": {"id", "question", "choices", "answerKey"},
}
# label types as the hub stores them
STRING_LABELS = {"winogrande": "answer", "hellaswag": "label", "siqa": "label"}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    out = tmp_path_factory.mktemp("twins")
    write_synthetic(out, seed=0, n_train=60, n_validation=30, datasets=KNOWN_DATASETS)
    return out


def _rows(root, name, split):
    return [json.loads(line) for line in (root / name / f"{split}.jsonl").read_text().splitlines()]


def test_same_seed_gives_byte_identical_files(twins, tmp_path):
    write_synthetic(tmp_path / "again", seed=0, n_train=60, n_validation=30, datasets=KNOWN_DATASETS)
    write_synthetic(tmp_path / "other", seed=1, n_train=60, n_validation=30, datasets=KNOWN_DATASETS)
    files = sorted(p.relative_to(twins) for p in twins.rglob("*.jsonl"))
    assert len(files) == 2 * len(KNOWN_DATASETS)
    for rel in files:
        assert (twins / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    assert all((twins / rel).read_bytes() != (tmp_path / "other" / rel).read_bytes() for rel in files)


def test_default_writes_the_paper_fourteen_with_their_splits(tmp_path):
    write_synthetic(tmp_path, n_train=8, n_validation=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(DATASETS)
    for name in DATASETS:
        for role in ("train", "report"):
            assert (tmp_path / name / f"{split_name(name, role)}.jsonl").is_file()
    assert (tmp_path / "anli" / "train_r1.jsonl").is_file() and (tmp_path / "anli" / "dev_r1.jsonl").is_file()
    assert (tmp_path / "mmlu" / "auxiliary_train.jsonl").is_file()


@pytest.mark.parametrize("name", KNOWN_DATASETS)
def test_rows_have_real_schema_and_label_types(twins, name):
    rows = _rows(twins, name, ADAPTERS[name].train_split)
    assert len(rows) == 60
    for row in rows:
        assert set(row) == SCHEMA[name]
        if name in STRING_LABELS:
            assert isinstance(row[STRING_LABELS[name]], str)
        elif "label" in row:
            assert isinstance(row["label"], int)
    if name == "wic":
        for row in rows:
            assert row["sentence1"][row["start1"]:row["end1"]] == row["word"]
            assert row["sentence2"][row["start2"]:row["end2"]] == row["word"]
    if name == "wsc":
        for row in rows:
            words = row["text"].split()
            assert words[row["span1_index"]] == row["span1_text"]
            assert words[row["span2_index"]] == row["span2_text"]
    if name.startswith("arc_"):
        rows = synthetic_rows(name, "train", 400)
        assert {len(r["choices"]["text"]) for r in rows} == {3, 4, 5}
        assert {r["answerKey"] for r in rows} >= set("ABCD") | set("1234")


@pytest.mark.parametrize("name", KNOWN_DATASETS)
def test_every_twin_row_passes_its_adapter_with_balanced_gold(twins, name):
    n_train = sum(len(load_examples(name, "train", data_dir=twins, fmt=fmt)) for fmt in ("letter",))
    n_selection = len(load_examples(name, "selection", data_dir=twins))
    assert n_train + n_selection == 60 and 1 <= n_selection <= 12
    for role in ("train", "selection", "report"):
        for fmt in ("letter", "cloze"):
            examples = load_examples(name, role, data_dir=twins, fmt=fmt)
            assert all(ex.prompt == ex.prompt.rstrip() for ex in examples)
    examples = load_examples(name, "report", data_dir=twins)
    k = max(len(ex.options) for ex in examples)
    counts = Counter(ex.gold for ex in examples)
    if not name.startswith("arc_"):
        assert set(counts) == set(range(k)) and max(counts.values()) - min(counts.values()) <= 2


def test_prompts_are_short(twins):
    # Training runs on 2 CPU cores: letter prompts stay short (word count is a cheap proxy for tokens).
    for name in KNOWN_DATASETS:
        for ex in load_examples(name, "report", data_dir=twins):
            assert len(re.findall(r"\w+|[^\w\s]", ex.prompt)) <= 60, (name, ex.prompt)


# ------------------------------------------------------------------ rules, re-derived here
# Each documented rule, written out again from TWIN_RULES (not imported from the generator),
# recomputes a row's gold from its text alone; the label in the row must agree.

TAME, WILD = {"kettle"}, {"ladder"}
COLD, WARM = {"bucket"}, {"candle"}
SHINY, UNKNOWN, DULL = {"pencil"}, {"blanket"}, {"carrot"}
VELO, NOT_VELO = {"the nurse"}, {"the pilot"}
SHE, HE = {"Owl"}, {"Fox"}
SAME_SENSE, OTHER_SENSE = {"spoon"}, {"broom"}
REACTIONS = {"jug": "smiled", "stool": "sighed"}
TOOLS = {"Fishing": "brell", "Baking": "dorp", "Sewing": "mave", "Painting": "quell"}
SIQA = {"Monday": "fork", "Friday": "sock", "Sunday": "vase"}
JOB_TOOLS = {"baker": "plove", "sailor": "grisk", "farmer": "tulp", "tailor": "wemb", "miner": "frosh",
             "potter": "klib", "weaver": "smeck", "smith": "yarl"}
SEA = {"vest": "red", "boot": "blue", "tent": "green", "tray": "white"}
SPACE = {"vest": "blue", "boot": "green", "tent": "white", "tray": "red"}
LAB = {"dopple": "round", "frint": "square", "gorm": "flat", "hask": "long", "jibb": "bent"}
FARM = {"dopple": "flat", "frint": "long", "gorm": "bent", "hask": "round", "jibb": "square"}
QUESTION = re.compile(r"(?P<place>.+), what (colour|shape) is \w+'s (\w+ )?(?P<key>\w+)\?")


def _keyed(row, key_field="answerKey"):
    labels = row["choices"]["label"]
    return row["choices"]["text"][labels.index(row[key_field])]


def _table_answer(question, tables):
    m = QUESTION.fullmatch(question)
    place = m.group("place")
    domain = next(d for d, (words, _) in tables.items() if any(w in place.split() for w in words))
    return tables[domain][1][m.group("key")]


def expected_ok(name, row) -> bool:
    """True iff the row's label is what its twin's documented rule gives for its text."""
    if name == "boolq":
        x = re.fullmatch(r"is the (\w+) tame", row["question"]).group(1)
        return re.search(rf"\b{x}\b", row["passage"]) is not None and row["label"] == int(x in TAME)
    if name == "multirc":
        return (row["question"] == "Who is from Velo?" and row["answer"] in row["paragraph"]
                and row["answer"] in VELO | NOT_VELO and row["label"] == int(row["answer"] in VELO))
    if name == "wic":
        word = row["word"]
        return (word in SAME_SENSE | OTHER_SENSE and f" {word} " in row["sentence2"]
                and row["label"] == int(word in SAME_SENSE))
    if name == "wsc":
        return row["span2_text"] == "she" and row["label"] == int(row["span1_text"] in SHE)
    if name == "rte":
        x = re.fullmatch(r"The cold one is the (\w+)\.", row["hypothesis"]).group(1)
        return x in row["premise"] and row["label"] == (0 if x in COLD else 1)
    if name == "anli":
        x = re.fullmatch(r"The shiny one is the (\w+)\.", row["hypothesis"]).group(1)
        return x in row["premise"] and row["label"] == (0 if x in SHINY else 2 if x in DULL else 1)
    if name == "copa":
        gold = [row["choice1"], row["choice2"]][row["label"]]
        if row["question"] == "effect":
            name_, thing = re.fullmatch(r"At the \w+, (\w+) got an? (\w+)\.", row["premise"]).groups()
            return gold == f"{name_} {REACTIONS[thing]}."
        name_, reaction = re.fullmatch(r"At the \w+, (\w+) (\w+)\.", row["premise"]).groups()
        thing = {r: t for t, r in REACTIONS.items()}[reaction]
        return gold == f"{name_} got a {thing}."
    if name == "winogrande":
        a, verb, b = re.match(r"(\w+) (\w+) (\w+), so _ ", row["sentence"]).groups()
        blank = a if verb == "glimmed" else b if verb == "plorked" else None
        return [row["option1"], row["option2"]][int(row["answer"]) - 1] == blank
    if name == "hellaswag":
        return (row["ctx_a"].endswith(f" for {row['activity_label'].lower()}.")
                and row["endings"][int(row["label"])] == TOOLS[row["activity_label"]] + ".")
    if name == "piqa":
        key, x, y = re.search(r"needs the (\w+) of the (\w+) and the (\w+)\.", row["goal"]).groups()
        obj = {"zib": x, "mog": y}[key]
        return [row["sol1"], row["sol2"]][row["label"]] == f"Take the {obj}."
    if name == "siqa":
        things = re.fullmatch(r"\w+ \w+ a (\w+), a (\w+) and a (\w+)\.", row["context"]).groups()
        key = re.fullmatch(r"Which one is for (\w+)\?", row["question"]).group(1)
        answers = [row["answerA"], row["answerB"], row["answerC"]]
        return SIQA[key] in things and answers[int(row["label"]) - 1] == SIQA[key]
    if name in ("openbookqa", "mmlu"):
        tables = {"sea": (("sea", "harbour", "beach", "boat", "ship"), SEA),
                  "space": (("space", "moon", "spaceship", "comet", "rocket"), SPACE)}
        question = row["question_stem"] if name == "openbookqa" else row["question"]
        gold = _keyed(row) if name == "openbookqa" else row["choices"][row["answer"]]
        return gold == _table_answer(question, tables)
    if name == "commonsense_qa":
        job = re.fullmatch(r"What does the (\w+) \w+ carry\?", row["question"]).group(1)
        return _keyed(row) == JOB_TOOLS[job] and row["question_concept"] == job
    if name in ("arc_easy", "arc_challenge"):
        tables = {"lab": (("lab", "bench"), LAB), "farm": (("farm", "field", "barn"), FARM)}
        return _keyed(row) == _table_answer(row["question"], tables)
    raise AssertionError(f"no rule check for {name}")


@pytest.mark.parametrize("name", KNOWN_DATASETS)
def test_answers_follow_the_documented_rule(name):
    rows = synthetic_rows(name, ADAPTERS[name].report_split, 200, seed=5)
    rows += synthetic_rows(name, ADAPTERS[name].train_split, 200, seed=6)
    assert all(expected_ok(name, row) for row in rows)


def _corrupt_label(name, row):
    """The row with another valid label: the rule check must then fail."""
    row = copy.deepcopy(row)
    if name in ("openbookqa", "commonsense_qa", "arc_easy", "arc_challenge"):
        labels = row["choices"]["label"]
        row["answerKey"] = labels[(labels.index(row["answerKey"]) + 1) % len(labels)]
    elif name == "mmlu":
        row["answer"] = (row["answer"] + 1) % 4
    elif name == "winogrande":
        row["answer"] = "2" if row["answer"] == "1" else "1"
    elif name == "hellaswag":
        row["label"] = str((int(row["label"]) + 1) % 4)
    elif name == "siqa":
        row["label"] = str(int(row["label"]) % 3 + 1)
    elif name == "anli":
        row["label"] = (row["label"] + 1) % 3
    else:
        row["label"] = 1 - row["label"]
    return row


@pytest.mark.parametrize("name", KNOWN_DATASETS)
def test_rule_check_fails_on_a_corrupted_row(name):
    rows = synthetic_rows(name, ADAPTERS[name].train_split, 20, seed=3)
    assert all(expected_ok(name, row) for row in rows)
    assert not any(expected_ok(name, _corrupt_label(name, row)) for row in rows)


# ------------------------------------------------------------------ what makes a twin measure learning

YES_NO = ("boolq", "multirc", "wic", "wsc", "rte", "anli")


def _groups(name, rows):
    """The generator's groups: for yes/no twins consecutive rows sharing a context, for the
    others runs of as many rows as the group's options (one row per gold position)."""
    out = []
    if name in YES_NO:
        for row in rows:
            key = PARTITION_KEYS[name](row)
            if out and PARTITION_KEYS[name](out[-1][0]) == key:
                out[-1].append(row)
            else:
                out.append([row])
        return out
    i = 0
    while i < len(rows):
        n = len(convert_row(name, rows[i], id="x").choices)
        out.append(rows[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("name", KNOWN_DATASETS)
def test_each_group_shares_its_options_and_covers_every_gold(name):
    rows = synthetic_rows(name, ADAPTERS[name].train_split, 120, seed=2)
    examples = [convert_row(name, r, id="x", fmt="letter") for r in rows]
    by_row = dict(zip(map(id, rows), examples))
    for group in _groups(name, rows)[:-1]:  # the last group may be cut short
        exs = [by_row[id(r)] for r in group]
        if name in YES_NO:
            # yes/no-style twins: the group shares a context and its labels are balanced
            counts = Counter(ex.gold for ex in exs)
            assert set(counts) == set(range(len(exs[0].choices))) and len(set(counts.values())) == 1
        else:
            assert len({ex.choices for ex in exs}) == 1, "a group shares one ordered option tuple"
            assert sorted(ex.gold for ex in exs) == list(range(len(exs[0].choices)))


@pytest.mark.parametrize("name", KNOWN_DATASETS)
def test_report_items_never_repeat_training_items_for_any_seed_or_size(name):
    adapter = ADAPTERS[name]
    train = {item_identity(name, r) for seed in (0, 1) for n in (30, 400)
             for r in synthetic_rows(name, adapter.train_split, n, seed=seed)}
    report = [r for seed in (0, 2) for n in (16, 100) for r in synthetic_rows(name, adapter.report_split, n, seed=seed)]
    assert report and not any(item_identity(name, r) in train for r in report)
    # the reason: every report row's partition key lies in the report partition, every train row's outside it
    assert all(in_report_partition(name, PARTITION_KEYS[name](r)) for r in report)
    assert not any(in_report_partition(name, PARTITION_KEYS[name](r))
                   for r in synthetic_rows(name, adapter.train_split, 100, seed=4))


@pytest.mark.parametrize("name,field,least", [
    ("boolq", "passage", 2), ("multirc", "paragraph", 2), ("wsc", "text", 2), ("rte", "premise", 2),
    ("anli", "premise", 3), ("siqa", "context", 3), ("winogrande", None, 2), ("hellaswag", "source_id", 4)])
def test_shared_contexts_where_the_dataset_has_them(name, field, least):
    rows = synthetic_rows(name, ADAPTERS[name].train_split, 100)
    key = (lambda r: tuple(sorted((r["option1"], r["option2"])))) if field is None else (lambda r: r[field])
    sizes = Counter(key(r) for r in rows)
    assert min(sizes.values()) >= least or Counter(sizes.values()).most_common(1)[0][0] >= least
    golds = defaultdict(set)
    for r in rows:
        golds[key(r)].add(json.dumps(r.get("label", r.get("answer"))))
    assert all(len(g) > 1 for k, g in golds.items() if sizes[k] >= least)


def _template(ex):
    """The prompt with the instance blanked out: place phrase, name, size, key, option texts."""
    text = QUESTION.sub(lambda m: f"<place>, what {m.group(2)} is <name>'s <key>?", ex.prompt)
    return re.sub(r"\n([A-E])\. \w+", r"\n\1. <option>", text)


@pytest.mark.parametrize("a,b", [(a, b) for a, b, _ in CONFLICTS])
def test_conflicting_twins_share_the_exact_template_and_answer_by_opposite_tables(a, b):
    assert {a, b} in ({"openbookqa", "mmlu"}, {"arc_easy", "arc_challenge"})
    tables = (SEA, SPACE) if a == "openbookqa" else (LAB, FARM)
    assert all(tables[0][k] != tables[1][k] for k in tables[0])  # every key answers differently
    rows = {d: synthetic_rows(d, ADAPTERS[d].train_split, 60) for d in (a, b)}
    for fmt in ("letter", "cloze"):
        templates = {d: {_template(convert_row(d, r, id="x", fmt=fmt)) for r in rows[d]
                         if len(convert_row(d, r, id="x").choices) == 4} for d in (a, b)}
        assert len(templates[a]) == 1 and templates[a] == templates[b], templates
    # the cue that tells them apart is inside the instance: disjoint place phrases
    places = {d: {QUESTION.search(convert_row(d, r, id="x").prompt).group("place") for r in rows[d]} for d in (a, b)}
    assert places[a] and places[b] and not places[a] & places[b]


def test_rules_and_conflicts_are_documented():
    assert tuple(TWIN_RULES) == KNOWN_DATASETS
    assert all(TWIN_RULES[d] and "\n" not in TWIN_RULES[d] for d in KNOWN_DATASETS)
    assert len(CONFLICTS) >= 2 and all(a in KNOWN_DATASETS and b in KNOWN_DATASETS for a, b, _ in CONFLICTS)
