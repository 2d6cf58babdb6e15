"""Dataset adapters: hand-written rows in each dataset's real HF schema, loading, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.data import (DATASETS, DataError, Example, LoadStats, convert_row, load_examples, load_split,
                          selection_rows, split_name)
from harness.data.adapters import ADAPTERS

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
    assert selection_rows("boolq", 50) == selection_rows("boolq", 50)
    assert len(selection_rows("mmlu", 100_000)) == 500  # capped
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
