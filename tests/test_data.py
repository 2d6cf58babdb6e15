"""Dataset adapters: hand-written rows in each dataset's real HF schema, loading, CLI."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.data import (DATASETS, KNOWN_DATASETS, SUITES, DataError, Example, LoadStats, carve_sizes, convert_row,
                          load_examples, load_split, min_train_size, resolve_datasets, selection_rows, selection_size,
                          split_name)
from harness.data.adapters import ADAPTERS, RowError

REPO = Path(__file__).resolve().parents[1]

# (dataset, raw row in the dataset's own schema, expected letter prompt, expected choices, gold)
ROWS = [
    ("boolq",
     {"question": "is the sky blue", "passage": "The sky is blue on clear days.", "idx": 3, "label": 1},
     "The sky is blue on clear days.\nQuestion: is the sky blue?\nA. no\nB. yes\nAnswer:", ["no", "yes"], 1),
    ("multirc",
     {"paragraph": "Ann has a cat.", "question": "What does Ann have?", "answer": "A dog",
      "idx": {"paragraph": 0, "question": 0, "answer": 1}, "label": 0},
     "Ann has a cat.\nQuestion: What does Ann have?\nCandidate answer: A dog\n"
     "Is the candidate answer correct?\nA. no\nB. yes\nAnswer:", ["no", "yes"], 0),
    ("wic",
     {"word": "bank", "sentence1": "He sat on the river bank.", "sentence2": "She robbed the bank.",
      "start1": 19, "start2": 16, "end1": 23, "end2": 20, "idx": 0, "label": 0},
     "1: He sat on the river bank.\n2: She robbed the bank.\nIs 'bank' used with the same meaning in 1 and 2?"
     "\nA. no\nB. yes\nAnswer:", ["no", "yes"], 0),
    ("wsc",
     {"text": "Mark told Pete many lies about himself, which Pete included in his book.",
      "span1_index": 0, "span2_index": 13, "span1_text": "Mark", "span2_text": "his", "idx": 0, "label": 0},
     "Mark told Pete many lies about himself, which Pete included in his book.\nDoes \"his\" refer to Mark?"
     "\nA. no\nB. yes\nAnswer:", ["no", "yes"], 0),
    ("rte",
     {"premise": "Dana Reeve died of lung cancer.", "hypothesis": "Dana Reeve is alive.", "idx": 0, "label": 1},
     "Dana Reeve died of lung cancer.\nClaim: Dana Reeve is alive.\nTrue or false?\nA. true\nB. false\nAnswer:",
     ["true", "false"], 1),
    ("copa",
     {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
      "choice2": "The grass was cut.", "question": "cause", "idx": 0, "label": 0},
     "My body cast a shadow over the grass.\nWhat was the cause?\nA. The sun was rising.\nB. The grass was cut."
     "\nAnswer:", ["The sun was rising.", "The grass was cut."], 0),
    ("winogrande",
     {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
      "option1": "Sarah", "option2": "Maria", "answer": "1"},
     "Sarah was a much better surgeon than Maria so _ always got the harder cases.\nWho or what is _?"
     "\nA. Sarah\nB. Maria\nAnswer:", ["Sarah", "Maria"], 0),
    ("anli",
     {"uid": "abc", "premise": "The cat sat.", "hypothesis": "An animal sat.", "label": 2, "reason": ""},
     "The cat sat.\nClaim: An animal sat.\nTrue, false, or neither?\nA. true\nB. neither\nC. false\nAnswer:",
     ["true", "neither", "false"], 2),
    ("hellaswag",
     {"ind": 4, "activity_label": "Removing ice from car",
      "ctx_a": "Then, the man writes over the snow covering the window of a car.",
      "ctx_b": "a woman wearing winter clothes", "ctx": "unused",
      "endings": [", the man stops.", "smiles.", "waves.", "leaves."],
      "source_id": "x", "split": "val", "split_type": "indomain", "label": "3"},
     "Removing ice from car: Then, the man writes over the snow covering the window of a car. "
     "A woman wearing winter clothes\nWhat comes next?\nA. , the man stops.\nB. smiles.\nC. waves.\nD. leaves."
     "\nAnswer:", [", the man stops.", "smiles.", "waves.", "leaves."], 3),
    ("piqa",
     {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0},
     "Goal: Open a jar\nA. Twist the lid.\nB. Eat the lid.\nAnswer:", ["Twist the lid.", "Eat the lid."], 0),
    ("siqa",
     {"context": "Tracy gave Riley a gift.", "question": "How would Riley feel?",
      "answerA": "sad", "answerB": "thankful", "answerC": "angry", "label": "2"},
     "Tracy gave Riley a gift.\nQuestion: How would Riley feel?\nA. sad\nB. thankful\nC. angry\nAnswer:",
     ["sad", "thankful", "angry"], 1),
    ("openbookqa",
     {"id": "7-980", "question_stem": "The sun is responsible for",
      "choices": {"text": ["puppies", "plants sprouting", "lamps", "fog"], "label": ["A", "B", "C", "D"]},
      "answerKey": "B"},
     "Question: The sun is responsible for\nA. puppies\nB. plants sprouting\nC. lamps\nD. fog\nAnswer:",
     ["puppies", "plants sprouting", "lamps", "fog"], 1),
    ("mmlu",
     {"question": "What is 2+2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"],
      "answer": 1},
     "Subject: elementary mathematics\nQuestion: What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:",
     ["3", "4", "5", "6"], 1),
    ("commonsense_qa",
     {"id": "q1", "question": "Where do fish live?", "question_concept": "fish",
      "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["tree", "water", "sky", "car", "desk"]},
      "answerKey": "B"},
     "Question: Where do fish live?\nA. tree\nB. water\nC. sky\nD. car\nE. desk\nAnswer:",
     ["tree", "water", "sky", "car", "desk"], 1),
]


def test_rows_cover_all_datasets_in_design_order():
    assert DATASETS == ("boolq", "multirc", "wic", "wsc", "rte", "copa", "winogrande", "anli", "hellaswag",
                        "piqa", "siqa", "openbookqa", "mmlu", "commonsense_qa")
    assert [r[0] for r in ROWS] == list(DATASETS)


def test_registry_suites_and_their_resolution():
    assert KNOWN_DATASETS == DATASETS + ("arc_easy", "arc_challenge")
    assert SUITES["all"] == DATASETS
    assert SUITES["commonsense8"] == ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy",
                                      "arc_challenge", "openbookqa")
    assert resolve_datasets("all") == DATASETS
    assert resolve_datasets("commonsense8") == SUITES["commonsense8"]
    assert resolve_datasets("arc_easy,boolq") == ("arc_easy", "boolq")
    assert resolve_datasets(["arc_challenge"]) == ("arc_challenge",)
    for bad, message in (("boolq,nope", "unknown dataset"), ("boolq,boolq", "duplicates"), ("", "at least one"),
                         (["boolq", 3], "suite name or a list")):
        with pytest.raises(ValueError, match=message):
            resolve_datasets(bad)


# Real ai2_arc rows: letter keys in most rows, digit keys in some; 3 to 5 choices.
ARC_ROWS = [
    ("arc_easy",
     {"id": "Mercury_7179953", "question": "Which two body systems are directly involved in movement?",
      "choices": {"text": ["muscular and skeletal", "digestive and muscular", "skeletal and respiratory",
                           "respiratory and digestive"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
     "Question: Which two body systems are directly involved in movement?\nA. muscular and skeletal\n"
     "B. digestive and muscular\nC. skeletal and respiratory\nD. respiratory and digestive\nAnswer:", 0),
    ("arc_challenge",
     {"id": "NYSEDREGENTS_2015_8_20", "question": "Which statement best describes a mineral?",
      "choices": {"text": ["It is a liquid.", "It is a solid.", "It is a gas."], "label": ["1", "2", "3"]},
      "answerKey": "2"},
     "Question: Which statement best describes a mineral?\nA. It is a liquid.\nB. It is a solid.\n"
     "C. It is a gas.\nAnswer:", 1),
    ("arc_challenge",
     {"id": "Mercury_SC_416133", "question": "Which is a renewable resource?",
      "choices": {"text": ["coal", "oil", "natural gas", "wood", "uranium"], "label": ["A", "B", "C", "D", "E"]},
      "answerKey": "D"},
     "Question: Which is a renewable resource?\nA. coal\nB. oil\nC. natural gas\nD. wood\nE. uranium\nAnswer:", 3),
    ("arc_easy",
     {"id": "MCAS_2000_4_6", "question": "Which tool measures mass?",
      "choices": {"text": ["ruler", "balance", "thermometer", "clock", "cup"], "label": ["1", "2", "3", "4", "5"]},
      "answerKey": "5"},
     "Question: Which tool measures mass?\nA. ruler\nB. balance\nC. thermometer\nD. clock\nE. cup\nAnswer:", 4),
]


@pytest.mark.parametrize("dataset,row,prompt,gold", ARC_ROWS, ids=["easy-letters-4", "challenge-digits-3",
                                                                   "challenge-letters-5", "easy-digits-5"])
def test_arc_rows_both_label_kinds_and_three_to_five_choices(dataset, row, prompt, gold):
    ex = convert_row(dataset, row, id="x")
    assert ex.prompt == prompt and ex.gold == gold and ex.choices == tuple(row["choices"]["text"])
    assert ex.options == tuple(" " + "ABCDE"[i] for i in range(len(ex.choices)))
    cloze = convert_row(dataset, row, id="x", fmt="cloze")
    assert cloze.prompt == f"Question: {row['question']}\nAnswer:" and cloze.gold == gold
    assert cloze.options == tuple(" " + t for t in row["choices"]["text"])
    assert ex.text == row["question"]


@pytest.mark.parametrize("row,message", [
    (dict(ARC_ROWS[0][1], answerKey="E"), "not among"),
    (dict(ARC_ROWS[1][1], answerKey="C"), "not among"),  # a letter key for digit labels
    (dict(ARC_ROWS[0][1], answerKey=""), "unlabeled"),
    ({"id": "x", "question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"},
     "3 to 5 choices"),
    ({"id": "x", "question": "q", "choices": {"text": list("abcdef"), "label": list("ABCDEF")}, "answerKey": "A"},
     "3 to 5 choices"),
])
def test_malformed_arc_rows_raise(row, message):
    with pytest.raises(RowError, match=message):
        convert_row("arc_easy", row, id="x")


def test_arc_adapters_read_ai2_arc_and_report_on_test():
    for name, config in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
        a = ADAPTERS[name]
        assert (a.hub_id, a.config, a.train_split, a.report_split) == ("allenai/ai2_arc", config, "train", "test")
        assert split_name(name, "report") == "test" and split_name(name, "selection") == "train[selection]"


@pytest.mark.parametrize("dataset,row,prompt,choices,gold", ROWS, ids=[r[0] for r in ROWS])
def test_letter_format(dataset, row, prompt, choices, gold):
    ex = convert_row(dataset, row, id="x")
    assert isinstance(ex, Example)
    assert ex.prompt == prompt
    assert list(ex.choices) == choices
    assert ex.gold == gold
    assert list(ex.options) == [" " + "ABCDE"[i] for i in range(len(choices))]
    assert ex.target == " " + "ABCDE"[gold]
    assert ex.training_text == prompt + ex.target
    assert ex.prompt == ex.prompt.rstrip() and ex.text and "Answer:" not in ex.text


@pytest.mark.parametrize("dataset,row,prompt,choices,gold", ROWS, ids=[r[0] for r in ROWS])
def test_cloze_options_are_spaced_choice_texts(dataset, row, prompt, choices, gold):
    ex = convert_row(dataset, row, id="x", fmt="cloze")
    assert ex.gold == gold and list(ex.choices) == choices
    assert all(o.startswith(" ") and not o.startswith("  ") for o in ex.options)
    assert ex.prompt == ex.prompt.rstrip()
    if dataset not in ("copa",):
        assert [o[1:] for o in ex.options] == choices


def test_cloze_exact_prompts():
    boolq = convert_row("boolq", ROWS[0][1], id="x", fmt="cloze")
    assert boolq.prompt == "The sky is blue on clear days.\nQuestion: is the sky blue?\nAnswer:"
    assert boolq.options == (" no", " yes")
    copa = convert_row("copa", ROWS[5][1], id="x", fmt="cloze")
    assert copa.prompt == "My body cast a shadow over the grass because"
    assert copa.options == (" the sun was rising.", " the grass was cut.")
    effect = dict(ROWS[5][1], question="effect")
    assert convert_row("copa", effect, id="x", fmt="cloze").prompt.endswith(" therefore")
    hs = convert_row("hellaswag", ROWS[8][1], id="x", fmt="cloze")
    assert hs.prompt == ("Removing ice from car: Then, the man writes over the snow covering the window of a car. "
                         "A woman wearing winter clothes")
    assert hs.options[3] == " leaves."
    wino = convert_row("winogrande", ROWS[6][1], id="x", fmt="cloze")
    assert wino.prompt.endswith("\nIn the sentence above, _ is") and wino.options == (" Sarah", " Maria")


@pytest.mark.parametrize("dataset,row,expected_gold", [
    ("winogrande", {"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "2"}, 1),
    ("siqa", {"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c", "label": "3"}, 2),
    ("hellaswag", dict(ROWS[8][1], label="0"), 0),
    ("rte", {"premise": "p", "hypothesis": "h", "idx": 0, "label": 0}, 0),
    ("anli", {"uid": "u", "premise": "p", "hypothesis": "h", "label": 1, "reason": ""}, 1),
    ("boolq", {"question": "q", "passage": "p", "idx": 0, "label": 0}, 0),
    ("openbookqa", dict(ROWS[11][1], answerKey="D"), 3),
    ("mmlu", {"train": {"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 3}}, 3),
])
def test_label_conventions(dataset, row, expected_gold):
    assert convert_row(dataset, row, id="x").gold == expected_gold


@pytest.mark.parametrize("dataset,row,message", [
    ("winogrande", {"sentence": "a _ b", "option1": "x", "option2": "y", "answer": ""}, "unlabeled"),
    ("winogrande", {"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "3"}, "out of range"),
    ("boolq", {"question": "q", "passage": "p", "idx": 0, "label": -1}, "unlabeled"),
    ("boolq", {"question": "q", "passage": "p", "idx": 0, "label": 2}, "out of range"),
    ("boolq", {"question": "q", "idx": 0, "label": 1}, "missing field 'passage'"),
    ("rte", {"premise": "p", "hypothesis": "h", "idx": 0, "label": True}, "not an integer"),
    ("siqa", {"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c", "label": "0"},
     "out of range"),
    ("openbookqa", dict(ROWS[11][1], answerKey="E"), "not among"),
    ("mmlu", {"question": "q", "subject": "s", "choices": ["a", "b", "c"], "answer": 0}, "expected 4"),
    ("copa", dict(ROWS[5][1], question="why"), "'cause' or 'effect'"),
    ("hellaswag", dict(ROWS[8][1], label=""), "unlabeled"),
])
def test_malformed_rows_raise(dataset, row, message):
    from harness.data.adapters import RowError

    with pytest.raises(RowError, match=message):
        convert_row(dataset, row, id="x")


def test_split_names():
    assert split_name("boolq", "report") == "validation"
    assert split_name("anli", "report") == "dev_r1"
    assert split_name("anli", "train") == "train_r1"
    assert split_name("anli", "selection") == "train_r1[selection]"
    assert split_name("mmlu", "train") == "auxiliary_train"
    assert split_name("mmlu", "report") == "validation"
    assert all(split_name(d, "report") == "validation" for d in DATASETS if d != "anli")
    with pytest.raises(DataError, match="unknown role"):
        split_name("boolq", "test")
    with pytest.raises(DataError, match="unknown dataset"):
        split_name("glue", "train")
    assert ADAPTERS["winogrande"].config == "winogrande_xl" and ADAPTERS["mmlu"].hub_id == "cais/mmlu"
    assert ADAPTERS["anli"].splits == ("train_r1", "dev_r1", "test_r1", "train_r2", "dev_r2", "test_r2",
                                       "train_r3", "dev_r3", "test_r3")


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _boolq_rows(n):
    return [{"question": f"q{i}", "passage": f"p{i}", "idx": i, "label": i % 2} for i in range(n)]


def test_selection_is_disjoint_deterministic_and_covers_train(tmp_path):
    _write_jsonl(tmp_path / "boolq" / "train.jsonl", _boolq_rows(50))
    train = load_examples("boolq", "train", data_dir=tmp_path)
    selection = load_examples("boolq", "selection", data_dir=tmp_path)
    assert len(selection) == 10 and len(train) == 40
    assert not {e.id for e in train} & {e.id for e in selection}
    assert {e.id for e in train} | {e.id for e in selection} == {f"boolq-train-{i}" for i in range(1, 51)}
    assert [e.id for e in load_examples("boolq", "selection", data_dir=tmp_path)] == [e.id for e in selection]
    other_seed = load_examples("boolq", "selection", data_dir=tmp_path, seed=1)
    assert {e.id for e in other_seed} != {e.id for e in selection}
    raw = _boolq_rows(50)
    assert selection_rows("boolq", raw) == selection_rows("boolq", raw)
    many = [{"question": f"q{i}", "choices": ["a", "b", "c", "d"], "answer": 0} for i in range(100_000)]
    assert len(selection_rows("mmlu", many)) == 500  # capped
    assert [e.id for e in load_examples("boolq", "train", data_dir=tmp_path, limit=3)] == [e.id for e in train[:3]]


def test_parquet_and_jsonl_read_alike(tmp_path):
    rows = _boolq_rows(6)
    _write_jsonl(tmp_path / "a" / "boolq" / "validation.jsonl", rows)
    (tmp_path / "b" / "boolq").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b" / "boolq" / "validation.parquet")
    a = load_examples("boolq", "report", data_dir=tmp_path / "a")
    b = load_examples("boolq", "report", data_dir=tmp_path / "b")
    assert [(e.id, e.prompt, e.gold) for e in a] == [(e.id, e.prompt, e.gold) for e in b]


def test_offline_without_data_names_dataset_and_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        load_examples("copa", "report", data_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "copa" in msg and "--data-dir" in msg and "copa/validation.jsonl" in msg and "aps/super_glue" in msg
    with pytest.raises(DataError, match="network access"):
        load_examples("anli", "report")


def test_malformed_row_names_file_and_row_and_can_be_skipped(tmp_path, caplog):
    rows = _boolq_rows(5)
    rows[2] = {"question": "q", "passage": "p", "idx": 2, "label": 7}
    rows[3] = "{not json"
    path = tmp_path / "boolq" / "validation.jsonl"
    _write_jsonl(path, rows)
    with pytest.raises(DataError) as info:
        load_examples("boolq", "report", data_dir=tmp_path)
    assert str(path) in str(info.value) and "row 3" in str(info.value) and "out of range" in str(info.value)
    stats = LoadStats()
    examples = load_examples("boolq", "report", data_dir=tmp_path, skip_bad_rows=True, stats=stats)
    assert [e.id for e in examples] == ["boolq-validation-1", "boolq-validation-2", "boolq-validation-5"]
    assert (stats.n_rows, stats.n_skipped, stats.n_examples) == (5, 2, 3)
    assert "skipped 2 bad row(s)" in caplog.text


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(DataError, match="no split 'dev_r1'"):
        load_split("boolq", "dev_r1", data_dir=tmp_path)


def _cli(*args, env=None):
    full_env = dict(os.environ, HF_DATASETS_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "harness.data", *args], capture_output=True, text=True,
                          cwd=REPO, env=full_env, timeout=60)


def test_cli_synth_then_show(tmp_path):
    out = tmp_path / "twins"
    res = _cli("synth", "--out", str(out), "--seed", "3", "--train", "20", "--validation", "8")
    assert res.returncode == 0, res.stderr
    assert (out / "anli" / "train_r1.jsonl").is_file() and (out / "mmlu" / "auxiliary_train.jsonl").is_file()
    res = _cli("show", "--dataset", "anli", "--split", "dev_r1", "--data-dir", str(out), "--limit", "3", "--json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 3 and set(lines[0]) == {"id", "prompt", "choices", "options", "gold"}
    assert lines[0]["options"] == [" A", " B", " C"] and lines[0]["prompt"].endswith("Answer:")
    res = _cli("show", "--dataset", "piqa", "--split", "validation", "--data-dir", str(out), "--format", "cloze",
               "--json", "--limit", "1")
    row = json.loads(res.stdout)
    assert row["options"] == [" " + c for c in row["choices"]]
    res = _cli("show", "--dataset", "boolq", "--split", "selection", "--data-dir", str(out), "--json")
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 4


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    for args in (["show", "--dataset", "nope", "--json"],
                 ["show", "--dataset", "boolq", "--split", "validation", "--data-dir", str(tmp_path), "--json"],
                 ["show", "--dataset", "boolq", "--split", "dev_r9", "--json"],
                 ["synth", "--out", str(tmp_path / "x"), "--train", "-1"]):
        res = _cli(*args)
        assert res.returncode == 2, args
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "x").exists()
    _write_jsonl(tmp_path / "boolq" / "validation.jsonl", _boolq_rows(3) + ['{"label": 1}'])
    res = _cli("show", "--dataset", "boolq", "--split", "validation", "--data-dir", str(tmp_path), "--json")
    assert res.returncode == 2 and "row 4" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = _cli("show", "--dataset", "boolq", "--split", "validation", "--data-dir", str(tmp_path), "--json",
               "--skip-bad-rows")
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 3 and "skipped 1 bad row(s)" in res.stderr


# ------------------------------------------------------------------ grouped selection carve

def _multirc_rows(n_paragraphs, answers_per_paragraph):
    """Real MultiRC schema: one row per (paragraph, question, candidate answer)."""
    rows = []
    for p in range(n_paragraphs):
        for q in range(2):
            for a in range(answers_per_paragraph):
                rows.append({"paragraph": f"Paragraph {p} tells a story about person {p}.",
                             "question": f"What did person {p} do ({q})?", "answer": f"answer {a}",
                             "idx": {"paragraph": p, "question": q, "answer": a}, "label": a % 2})
    return rows


def _wsc_rows(n_texts):
    rows = []
    for t in range(n_texts):
        text = f"Ann{t} thanked Bea{t} because she helped with task {t}."
        for noun, label in ((f"Ann{t}", 0), (f"Bea{t}", 1)):
            rows.append({"text": text, "span1_index": 0 if label == 0 else 2, "span2_index": 4,
                         "span1_text": noun, "span2_text": "she", "idx": len(rows), "label": label})
    return rows


def _boolq_passage_rows(n_passages, questions):
    return [{"question": f"is fact {q} of passage {p} true", "passage": f"Passage {p} states {questions} facts.",
             "idx": p * questions + q, "label": q % 2} for p in range(n_passages) for q in range(questions)]


def _anli_rows(n_premises):
    return [{"uid": f"u{p}-{h}", "premise": f"Premise number {p}.", "hypothesis": f"Hypothesis {h}.", "label": h,
             "reason": ""} for p in range(n_premises) for h in range(3)]


CARVE_CASES = [
    ("multirc", _multirc_rows(30, 3), "paragraph"),   # 6 rows per paragraph
    ("wsc", _wsc_rows(40), "text"),                   # 2 rows per text
    ("boolq", _boolq_passage_rows(25, 4), "passage"),  # 4 questions per passage
    ("anli", _anli_rows(30), "premise"),              # 3 hypotheses per premise
]


@pytest.mark.parametrize("dataset,rows,field", CARVE_CASES, ids=[c[0] for c in CARVE_CASES])
def test_rows_sharing_a_context_never_straddle_the_carve(tmp_path, dataset, rows, field):
    split = ADAPTERS[dataset].train_split
    _write_jsonl(tmp_path / dataset / f"{split}.jsonl", rows)
    for seed in (0, 1, 2):
        train = load_examples(dataset, "train", data_dir=tmp_path, seed=seed)
        selection = load_examples(dataset, "selection", data_dir=tmp_path, seed=seed)
        ids = [e.id for e in train + selection]
        # no row lost or duplicated
        assert sorted(ids) == sorted(f"{dataset}-{split}-{i}" for i in range(1, len(rows) + 1))
        contexts = {side: {rows[int(e.id.rsplit("-", 1)[1]) - 1][field] for e in exs}
                    for side, exs in (("train", train), ("selection", selection))}
        assert contexts["selection"] and not contexts["train"] & contexts["selection"], seed
        # whole groups, as many rows as fit under the target, never over it
        assert 0 < len(selection) <= selection_size(len(rows))
        assert len(train) >= min_train_size(len(rows))
        assert carve_sizes(dataset, rows, seed) == (len(train), len(selection))
    # seeded: another seed moves other groups; the same seed the same ones
    assert selection_rows(dataset, rows, 0) != selection_rows(dataset, rows, 1)
    assert selection_rows(dataset, rows, 0) == selection_rows(dataset, copy_rows(rows), 0)


def copy_rows(rows):
    return json.loads(json.dumps(rows))


def test_carve_is_stable_when_the_file_is_reordered_and_fills_its_target():
    rows = _multirc_rows(40, 1)  # 2 rows per paragraph; target 16 of 80 rows: exactly fillable
    chosen = selection_rows("multirc", rows, 0)
    assert len(chosen) == selection_size(len(rows)) == 16
    shuffled = list(reversed(rows))
    chosen_again = selection_rows("multirc", shuffled, 0)
    assert {rows[i]["paragraph"] for i in chosen} == {shuffled[i]["paragraph"] for i in chosen_again}


def test_a_group_larger_than_the_target_stays_in_train_and_bad_rows_are_their_own_group(tmp_path):
    rows = _boolq_passage_rows(1, 30) + _boolq_rows(20)  # one passage with 30 questions, 20 single rows
    chosen = selection_rows("boolq", rows, 0)
    assert len(chosen) == selection_size(50) == 10 and not chosen & set(range(30))
    with_bad = rows + ["{not json", {"label": 1}]
    path = tmp_path / "boolq" / "train.jsonl"
    _write_jsonl(path, with_bad)
    stats_train, stats_sel = LoadStats(), LoadStats()
    train = load_examples("boolq", "train", data_dir=tmp_path, skip_bad_rows=True, stats=stats_train)
    selection = load_examples("boolq", "selection", data_dir=tmp_path, skip_bad_rows=True, stats=stats_sel)
    assert stats_train.n_rows + stats_sel.n_rows == 52 and len(train) + len(selection) == 50


@pytest.mark.parametrize("dataset", ["boolq", "multirc", "wsc", "rte", "anli", "siqa", "winogrande", "hellaswag"])
def test_twins_carve_by_their_shared_contexts_too(tmp_path, dataset):
    from harness.data import write_synthetic
    from harness.data.groups import group_key

    write_synthetic(tmp_path, seed=0, n_train=64, n_validation=8, datasets=(dataset,))
    split = ADAPTERS[dataset].train_split
    rows = [json.loads(line) for line in (tmp_path / dataset / f"{split}.jsonl").read_text().splitlines()]
    chosen = selection_rows(dataset, rows, 0)
    keys = {side: {group_key(dataset, r) for i, r in enumerate(rows) if (i in chosen) == side} for side in (True, False)}
    assert len(rows) - len(chosen) >= min_train_size(64) == 52
    assert keys[True] and not keys[True] & keys[False]
    assert any(n > 1 for n in Counter(group_key(dataset, r) for r in rows).values())
