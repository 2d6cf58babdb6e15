"""BIG-bench tasks: the fetch (on a small tarball in the sdist's layout, made-up content) and the adapter.

Nothing here downloads the real sdist; the last test reads the real SIQA file only where it was fetched.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from harness.data import SUITES, DataError, load_examples, load_split, resolve_datasets
from harness.data import bigbench as bb
from harness.data.groups import group_key

REPO = Path(__file__).resolve().parents[1]
REAL_CACHE = bb.cache_root().parent  # before any test points MOR1E_CACHE elsewhere
TOP = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def _task(name, examples, **fields):
    return {"canary": "made-up test data", "name": name, "description": "d", "keywords": ["k"],
            "metrics": ["multiple_choice_grade"], "preferred_score": "multiple_choice_grade",
            "examples": examples, **fields}


def _mc(text, gold, *others, **extra):
    return {"input": text, "target_scores": {gold: 1, **{o: 0 for o in others}}, **extra}


# Contexts shared by two questions each (grouped by GROUP_RULES["social_iqa"]), plus oddities.
SIQA_ROWS = [_mc(f"Person{i} went to place {i}. What did Person{i} want{q}?", f"right{i}{q}", f"wrong{i}{q}a",
                 f"wrong{i}{q}b") for i in range(30) for q in ("", " next")]
SIQA_ROWS += [
    SIQA_ROWS[0],  # an exact duplicate: dropped
    {"input": "A tie. Which?", "target_scores": {"x": 1, "y": 1, "z": 0}},  # refused
    {"input": "Generative only?", "target": "text"},  # not multiple choice: skipped
]

FILES = {
    "social_iqa/task.json": _task("social_iqa", SIQA_ROWS),
    "toy_prefixed/task.json": _task("toy_prefixed", [_mc(f"claim {i}", "True", "False", "Neither")
                                                     for i in range(10)],
                                    task_prefix="Decide.\n", example_input_prefix="\nClaim: ",
                                    example_output_prefix="\nTrue, False, or Neither? ",
                                    append_choices_to_input=False),
    "toy_parent/task.json": {"canary": "c", "name": "toy_parent", "description": "d", "keywords": []},
    "toy_parent/sub_a/task.json": _task("sub_a", [_mc(f"q{i}", "a", "b") for i in range(6)]),
    "toy_parent/sub_b/task.json": _task("sub_b", [_mc(f"r{i}", "c", "d") for i in range(6)]),
    "toy_generative/task.json": _task("toy_generative", [{"input": "x", "target": "y"}]),
    "toy_wide/task.json": _task("toy_wide", [_mc("w", "g", *[f"o{k}" for k in range(10)])]),
    "toy_parent/README.md": "not a task file",
    "programmatic/task.py": "# no task.json",
}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """A .tar.gz in the sdist's layout and its sha256."""
    path = tmp_path_factory.mktemp("sdist") / "bigbench-1.0.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for rel, content in FILES.items():
            data = (content if isinstance(content, str) else json.dumps(content)).encode()
            info = tarfile.TarInfo(TOP + rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cache(sdist, tmp_path_factory):
    """A cache with the toy tasks fetched; MOR1E_CACHE points at it for the module's tests."""
    path, digest = sdist
    root = tmp_path_factory.mktemp("cache")
    bb.fetch(["social_iqa", "toy_prefixed", "toy_parent__sub_a", "toy_generative", "toy_wide"], source=str(path),
             sha256=digest, cache=root)
    old = os.environ.get("MOR1E_CACHE")
    os.environ["MOR1E_CACHE"] = str(root)
    yield root
    if old is None:
        del os.environ["MOR1E_CACHE"]
    else:
        os.environ["MOR1E_CACHE"] = old


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------ fetch

def test_fetch_extracts_only_the_chosen_task_files_and_a_second_call_does_nothing(sdist, tmp_path):
    path, digest = sdist
    report = bb.fetch(["bigbench_social_iqa", "toy_parent__sub_b"], source=str(path), sha256=digest,
                      cache=tmp_path)
    assert report.extracted == ("social_iqa", "toy_parent")
    assert report.downloaded_bytes == path.stat().st_size and report.extracted_bytes > 0
    assert _files(tmp_path) == ["bigbench-1.0.0/social_iqa/task.json", "bigbench-1.0.0/toy_parent/sub_a/task.json",
                                "bigbench-1.0.0/toy_parent/sub_b/task.json", "bigbench-1.0.0/toy_parent/task.json"]
    assert json.loads((tmp_path / "bigbench-1.0.0/social_iqa/task.json").read_text()) == FILES["social_iqa/task.json"]
    again = bb.fetch(["social_iqa"], source=str(tmp_path / "absent.tar.gz"), sha256="0" * 64, cache=tmp_path)
    assert again.extracted == () and "nothing to fetch" in again.line()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bigbench-1.0.0"]  # no temp dir left


@pytest.mark.parametrize("tasks, digest, message", [
    (["social_iqa"], "0" * 64, "checksum mismatch"),
    (["social_iqa", "no_such_task"], None, "unknown BIG-bench task 'no_such_task'"),
    (["programmatic"], None, "unknown BIG-bench task 'programmatic'"),
    (["toy_parent__sub_z"], None, "unknown subtask 'sub_z'"),
])
def test_a_failed_fetch_says_so_in_one_line_and_writes_nothing(sdist, tmp_path, tasks, digest, message):
    path, real = sdist
    with pytest.raises(DataError, match=message) as info:
        bb.fetch(tasks, source=str(path), sha256=digest or real, cache=tmp_path)
    assert "\n" not in str(info.value)
    assert _files(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] in ([], ["bigbench-1.0.0"])


def test_fetch_offline_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, MOR1E_CACHE=str(tmp_path), PYTHONPATH=str(REPO))
    for flag in (["--sdist", "http://127.0.0.1:9/bigbench-1.0.0.tar.gz"], ["--index-url", "http://127.0.0.1:9/simple"]):
        out = subprocess.run([sys.executable, "-m", "harness.data", "fetch", "bigbench", *flag], env=env,
                             capture_output=True, text=True, cwd=REPO, timeout=120)
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert "nothing written" in out.stderr or "offline" in out.stderr
        assert _files(tmp_path) == []


def test_cache_root_is_the_model_cache(tmp_path, monkeypatch):
    from harness.models import cache_dir

    monkeypatch.setenv("MOR1E_CACHE", str(tmp_path / "c"))
    assert bb.cache_root() == cache_dir() / "bigbench-1.0.0"
    monkeypatch.delenv("MOR1E_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert bb.cache_root() == cache_dir() / "bigbench-1.0.0"


# ------------------------------------------------------------------ the adapter

def test_rows_splits_and_gold(cache):
    rows = bb.read_task("bigbench_social_iqa")
    assert (rows.n_examples, rows.n_duplicates, rows.n_refused) == (len(SIQA_ROWS), 1, 1)
    train, report = rows.splits["train"], rows.splits["validation"]
    assert len(train) + len(report) == 60 and len(report) == bb.report_size(60) == 18
    numbers = [n for n, _ in train + report]
    assert sorted(numbers) == list(range(1, 61))  # the 60 distinct MC rows, by file position
    # whole contexts on one side: each context's two questions travel together
    context = lambda raw: raw["group"]  # noqa: E731
    assert not {context(r) for _, r in train} & {context(r) for _, r in report}
    assert len({context(r) for _, r in report}) == 9
    # roles: selection carved from train by the grouped carve, disjoint from the train role
    ids = {role: [ex.id for ex in load_examples("bigbench_social_iqa", role)] for role in ("train", "selection", "report")}
    assert len(ids["selection"]) > 0 and not set(ids["selection"]) & set(ids["train"])
    assert len(ids["train"]) + len(ids["selection"]) == 42 and len(ids["report"]) == 18
    for fmt in ("letter", "cloze"):
        for ex in load_split("bigbench_social_iqa", "validation", fmt=fmt):
            number = int(ex.id.rsplit("-", 1)[1])
            scores = SIQA_ROWS[number - 1]["target_scores"]
            assert ex.choices[ex.gold] == max(scores, key=scores.get)
            assert ex.options[ex.gold] == (f" {'ABC'[ex.gold]}" if fmt == "letter" else " " + ex.choices[ex.gold])


def test_prompts_follow_bigbench_prefixes(cache):
    raw = {"input": "What now?", "target_scores": {"yes": 0, "no": 1}}
    parsed = bb.convert("bigbench_x", raw)
    # BIG-bench's defaults: "\nQ: " + input + "\n  choice: " per option + "\nA: "; the prompt is stripped at its ends
    assert parsed.cloze_prompt == "Q: What now?" + "".join(f"\n  choice: {c}" for c in parsed.choices) + "\nA:"
    assert parsed.question == "Q: What now?"  # the default "A: " cue becomes the letter format's "Answer:"
    assert parsed.choices[parsed.gold] == "no"
    ex = load_split("bigbench_toy_prefixed", "validation", limit=1)[0]
    assert ex.prompt.startswith("Decide.\n\nClaim: claim ")
    assert ex.prompt.endswith("\nTrue, False, or Neither?\nA. " + "\nB. ".join(ex.choices[:2]) + f"\nC. {ex.choices[2]}"
                              + "\nAnswer:")
    cloze = load_split("bigbench_toy_prefixed", "validation", limit=1, fmt="cloze")[0]
    assert cloze.prompt == ex.prompt.split("\nTrue, False")[0] + "\nTrue, False, or Neither?"  # no choice list
    assert cloze.options == tuple(" " + c for c in ex.choices)


def test_option_shuffle_is_fixed_and_ignores_the_files_key_order():
    a = bb.convert("bigbench_t", {"input": "q", "target_scores": {"g": 1, "b": 0, "c": 0, "d": 0}})
    b = bb.convert("bigbench_t", {"input": "q", "target_scores": {"d": 0, "c": 0, "b": 0, "g": 1}})
    assert a.choices == b.choices and a.gold == b.gold
    # over many rows with the gold always listed first, the shuffle spreads it over every position
    golds = [bb.convert("bigbench_t", {"input": f"q{i}", "target_scores": {"g": 1, "b": 0, "c": 0, "d": 0}}).gold
             for i in range(400)]
    assert all(60 < golds.count(k) < 140 for k in range(4))
    # the order depends only on (seed, dataset, input, option): the documented hash
    expect = sorted(["g", "b", "c", "d"], key=lambda o: hashlib.sha256(f"0\x1fbigbench_t\x1fq\x1f{o}".encode()).digest())
    assert list(a.choices) == expect


@pytest.mark.parametrize("raw, message", [
    ({"input": "q", "target_scores": {"a": 1, "b": 1}}, "tie"),
    ({"input": "q", "target_scores": {"a": 1}}, "at least two"),
    ({"input": "", "target_scores": {"a": 1, "b": 0}}, "input"),
    ({"input": "q", "target_scores": {"a": "1", "b": 0}}, "not a number"),
    ({"input": "q", "target_scores": {f"o{k}": int(k == 0) for k in range(11)}}, "at most 10"),
])
def test_bad_rows_are_refused(raw, message):
    from harness.data.adapters import RowError

    with pytest.raises(RowError, match=message):
        bb.convert("bigbench_t", raw)


@pytest.mark.parametrize("dataset, message", [
    ("bigbench_toy_parent", "has subtasks; name one: bigbench_toy_parent__sub_a"),
    ("bigbench_toy_generative", "bigbench_toy_generative: no usable multiple-choice examples"),
    ("bigbench_toy_wide", "bigbench_toy_wide: rows with 11 options; the scorer supports at most 10"),
    ("bigbench_not_fetched", "fetch it with `python -m harness.data fetch bigbench --tasks bigbench_not_fetched`"),
    ("bigbench_toy_parent__sub_q", "has no subtask 'sub_q'"),
])
def test_bad_tasks_name_themselves(cache, dataset, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")) as info:
        load_examples(dataset, "report")
    assert "\n" not in str(info.value)


def test_show_prints_json_and_refuses_a_bad_task_with_exit_2(cache):
    env = dict(os.environ, MOR1E_CACHE=str(cache), PYTHONPATH=str(REPO))
    run = lambda *a: subprocess.run([sys.executable, "-m", "harness.data", "show", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, cwd=REPO, timeout=120)
    out = run("--dataset", "bigbench_toy_parent__sub_a", "--split", "report", "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and rows and all(r["choices"][r["gold"]] == "a" for r in rows)
    bad = run("--dataset", "bigbench_toy_wide", "--split", "report")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "bigbench_toy_wide" in bad.stderr


def test_names_and_the_suite():
    assert resolve_datasets("bigbench") == SUITES["bigbench"] == tuple(bb.SUITE)
    assert len(SUITES["bigbench"]) >= 10
    # every task type of the 14 datasets is stood for
    covered = {d for v in bb.SUITE.values() for d in v.split(" / ")}
    assert covered >= set(SUITES["all"])
    assert resolve_datasets("boolq,bigbench_goal_step_wikihow__step_inference")[1] == \
        "bigbench_goal_step_wikihow__step_inference"
    for bad in ("bigbench_", "bigbench_Bad", "bigbench_a__", "bigbench_a/b"):
        with pytest.raises(ValueError, match="unknown dataset"):
            resolve_datasets(bad)
    assert bb.task_path("bigbench_goal_step_wikihow__step_inference") == ("goal_step_wikihow", "step_inference")
    assert group_key("bigbench_x", {"group": "ctx", "input": "q"}) == "ctx"


def test_group_rules_find_the_shared_context():
    assert bb._group("bigbench_winowhy", "The man lifted the boy because he was strong. The 'he' refers to the man "
                                         "because men are strong.") == "The man lifted the boy because he was strong."
    assert bb._group("bigbench_vitaminc_fact_verification", "Page: evidence text .\nClaim: a claim .") == \
        "Page: evidence text ."
    assert bb._group("bigbench_social_iqa", "Kai ate. Kai slept. Why did Kai do this? ") == "Kai ate. Kai slept."
    assert bb._group("bigbench_physics", "What  is\nF?") == "What is F?"  # no rule: the collapsed input


def test_real_social_iqa_matches_its_task_file(monkeypatch):
    monkeypatch.setenv("MOR1E_CACHE", str(REAL_CACHE))
    path = bb.task_file("bigbench_social_iqa")
    if not path.is_file():
        pytest.skip(f"{path} not fetched (python -m harness.data fetch bigbench)")
    examples = json.loads(path.read_text())["examples"]
    report = load_examples("bigbench_social_iqa", "report")
    assert 500 <= len(report) <= 1000
    for ex in report:
        scores = examples[int(ex.id.rsplit("-", 1)[1]) - 1]["target_scores"]
        assert ex.choices[ex.gold] == " ".join(max(scores, key=scores.get).split())
