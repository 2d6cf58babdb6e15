"""The dataset audit: it finds shortcuts where they exist, and the twins have none."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.data import KNOWN_DATASETS, Example, load_split, write_synthetic
from harness.data.adapters import ADAPTERS
from harness.data.audit import audit_examples, format_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROFILE = yaml.safe_load((REPO / "search_spaces" / "default.yaml").read_text())


@pytest.fixture(scope="module")
def token_count():
    from harness.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def _audit_twins(tmp_path, token_count, *, seed, n_train, n_report, report_limit=None):
    write_synthetic(tmp_path, seed=seed, n_train=n_train, n_validation=n_report, datasets=KNOWN_DATASETS)
    out = []
    for name in KNOWN_DATASETS:
        a = ADAPTERS[name]
        train = load_split(name, a.train_split, data_dir=tmp_path, fmt="cloze")
        report = load_split(name, a.report_split, data_dir=tmp_path, fmt="cloze", limit=report_limit)
        out.append(audit_examples(name, train, report, token_count=token_count))
    return out


@pytest.mark.parametrize("seed,n_train,n_report", [(0, 400, 100), (1, 400, 100), (0, 200, 64)])
def test_twins_have_no_duplicates_and_no_option_only_shortcut(tmp_path, token_count, seed, n_train, n_report):
    for r in _audit_twins(tmp_path, token_count, seed=seed, n_train=n_train, n_report=n_report):
        assert r.duplicate_rate == 0.0, r
        assert r.best_rule_accuracy <= r.chance + 0.15, (r.dataset, r.best_rule, r.best_rule_accuracy)
        assert r.majority_rate <= r.chance + 0.15, r
        assert r.prompt_dependence == 1.0, r  # every repeated option set occurs with several golds
        assert {"longest (tokens)", "largest number", "most frequent gold text in train", "position 1"} <= set(r.rules)


def test_twins_pass_at_the_default_profile_sizes(tmp_path, token_count):
    data, training = DEFAULT_PROFILE["data"], DEFAULT_PROFILE["training"]
    results = _audit_twins(tmp_path, token_count, seed=data["seed"], n_train=data["n_train"],
                           n_report=data["n_validation"], report_limit=training["report_limit"])
    for r in results:
        assert r.n_report == training["report_limit"]
        assert r.duplicate_rate == 0.0, r
        # whole option-balanced groups: every option-only rule is at chance up to the last, cut group
        assert r.best_rule_accuracy <= r.chance + 0.15, (r.dataset, r.best_rule, r.best_rule_accuracy)
        assert r.majority_rate <= r.chance + 0.15, r


def _ex(prompt, choices, gold, i=0):
    return Example(id=str(i), dataset="x", prompt=prompt, choices=tuple(choices),
                   options=tuple(" " + c for c in choices), gold=gold, text=prompt)


def test_audit_finds_duplicates_and_option_only_rules():
    # The shortcuts the previous twins had: repeated items, the largest number, the longest
    # option, the option nearest the mean, and a text that is always gold.
    train = [_ex(f"p{i % 5}", [str(i), str(i + 7)], 1, i) for i in range(40)]
    report = [_ex(f"p{i % 5}", [str(i), str(i + 7)], 1, i) for i in range(10)]
    r = audit_examples("x", train, report)
    assert r.duplicate_rate == 1.0 and r.best_rule_accuracy == 1.0 and r.majority_rate == 1.0
    assert r.rules["largest number"] == 1.0 and r.rules["smallest number"] == 0.0 and r.rules["position 2"] == 1.0
    longest = [_ex(f"q{i}", ["short", "a much longer one"][:: 1 if i % 2 else -1], i % 2, i) for i in range(20)]
    r = audit_examples("x", [], longest, token_count=lambda t: len(t.split()))
    assert r.rules["longest (chars)"] == 1.0 and r.rules["longest (tokens)"] == 1.0 and r.rules["position 1"] == 0.5
    assert r.best_rule in ("longest (chars)", "longest (tokens)", "odd one out (word overlap)",
                           "most typical (word overlap)", "alphabetically first", "alphabetically last",
                           "nearest the mean length (chars)") and r.duplicate_rate == 0.0
    mean = [_ex(f"s{i}", [str(v) for v in (i, i + 3, i + 4, i + 5)], 1, i) for i in range(12)]  # mean i + 3
    assert audit_examples("x", [], mean).rules["nearest the mean number"] == 1.0
    gold_text = [_ex(f"t{i}", ["blue", "red", "green"][i % 3:] + ["blue", "red", "green"][:i % 3],
                     (["blue", "red", "green"][i % 3:] + ["blue", "red", "green"][:i % 3]).index("red"), i)
                 for i in range(30)]
    r = audit_examples("x", gold_text[:20], gold_text[20:])
    assert r.rules["most frequent gold text in train"] == 1.0 and r.rules["highest gold rate in train"] == 1.0
    assert r.prompt_dependence == 0.0  # each option set always has the same gold
    assert "| x | 20 | 10 |" in format_table([r])


def _cli(*args):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "harness.data", "audit", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_cli_audits_twins_and_real_schema_files(tmp_path):
    res = _cli("--datasets", "boolq,arc_easy", "--train", "40", "--validation", "16", "--tokenizer", "none", "--json")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["dataset"] for r in rows] == ["boolq", "arc_easy"] and all(r["duplicate_rate"] == 0 for r in rows)
    assert "40 train / 16 report rows each" in res.stderr
    # real-schema files: ARC report items that repeat a training item are counted
    arc = {"id": "a", "question": "Which is a solid?", "answerKey": "B",
           "choices": {"text": ["water", "rock", "steam"], "label": ["A", "B", "C"]}}
    other = dict(arc, id="b", question="Which is a gas?", answerKey="C")
    for split, rows in (("train", [arc, other]), ("test", [arc, dict(arc, id="c", question="Which is hard?")])):
        path = tmp_path / "arc_easy" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _cli("--data-dir", str(tmp_path), "--tokenizer", "none")
    assert res.returncode == 0, res.stderr
    assert "| arc_easy | 2 | 2 | 33.3% | 50.0% |" in res.stdout


@pytest.mark.parametrize("args,message", [
    (["--data-dir", "/nonexistent/dir"], "not a directory"),
    (["--datasets", "boolq,nope"], "unknown dataset"),
    (["--train", "0"], "must be >= 1"),
    (["--tokenizer", "not a model"], "unknown model"),
])
def test_cli_bad_input_is_one_line_exit_2(args, message):
    res = _cli(*args)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
