import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness import evaluate, predictions, records
from harness.data import Example
from harness.predictions import (
    PREDICTIONS_FILE,
    SCHEMA,
    append_predictions,
    mismatches,
    prediction_rows,
    read_predictions,
    recompute_accuracies,
)
from harness.records import append_rows, read_rows, row_template

REPO = Path(__file__).resolve().parent.parent


def _examples(dataset, n, *, seed=0, cloze=True):
    """Examples with 2-5 options; cloze options of different byte lengths make acc_norm differ from accuracy."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(2, 6))
        options = tuple(" " + "x" * int(rng.integers(1, 12)) if cloze else f" {chr(65 + j)}" for j in range(k))
        out.append(Example(id=f"{dataset}-{i}", dataset=dataset, prompt=f"q{i}", choices=options, options=options,
                           gold=int(rng.integers(k)), text=f"q{i}"))
    return out


def _loglikes(examples, *, seed=0):
    """Per-option log-likelihoods with deliberate ties: rounded to a coarse grid, some all equal."""
    rng = np.random.default_rng(seed)
    out = []
    for i, ex in enumerate(examples):
        ll = np.round(-rng.gamma(2.0, 2.0, len(ex.options)), 0)
        if i % 7 == 0:
            ll[:] = -3.0  # a full tie: both predictions must be option 0
        out.append([float(x) for x in ll])
    return out


def _rows(examples, loglikes, *, trial_id="t0", role="report", phase="final", method="lora", seed=0, study="s"):
    return prediction_rows(examples, loglikes, study=study, trial_id=trial_id, phase=phase, method=method,
                           seed=seed, role=role, split="validation")


def test_rows_follow_the_evaluate_tie_rule_and_reproduce_its_metrics(tmp_path):
    examples = _examples("boolq", 60) + _examples("copa", 40, seed=1) + _examples("wic", 21, seed=4, cloze=False)
    loglikes = _loglikes(examples)
    path = tmp_path / PREDICTIONS_FILE
    assert append_predictions(path, _rows(examples, loglikes)) == 121
    df = read_predictions(path)
    assert list(df.columns) == list(SCHEMA.names)
    assert list(zip(df.pred, df.pred_norm)) == evaluate.predictions(examples, loglikes)
    # full ties go to the first option; divided by bytes, to the first of the longest options
    assert (df.pred[::7] == 0).all()
    longest_first = [int(np.argmax([evaluate.option_bytes(o) for o in ex.options])) for ex in examples[::7]]
    assert df.pred_norm[::7].tolist() == longest_first
    assert df.option_bytes[0].tolist() == [evaluate.option_bytes(o) for o in examples[0].options]

    expected = evaluate.metrics(examples, loglikes)
    got = recompute_accuracies(df).set_index("dataset")
    assert (got.accuracy != got.acc_norm).any()  # the byte lengths matter here
    for dataset, m in expected.items():
        row = got.loc[dataset]
        # exact equality: the leaderboard stores these very floats
        assert row.accuracy == row.accuracy_ll == m["accuracy"]
        assert row.acc_norm == row.acc_norm_ll == m["acc_norm"]
        assert row.n_examples == m["n_examples"]


def test_mismatches_finds_a_leaderboard_row_the_predictions_do_not_reproduce(tmp_path):
    examples = _examples("boolq", 30) + _examples("rte", 20, seed=2)
    loglikes = _loglikes(examples, seed=3)
    append_predictions(tmp_path / PREDICTIONS_FILE, _rows(examples, loglikes))
    lb = tmp_path / "leaderboard.parquet"
    rows = []
    for dataset, m in evaluate.metrics(examples, loglikes).items():
        rows.append(row_template(
            study="s", method="lora", trial_id="t0", status="completed", status_reason=None, dataset=dataset,
            split="validation", role="report", accuracy=m["accuracy"], acc_norm=m["acc_norm"],
            n_examples=m["n_examples"], trainable_params=1, num_experts=None, num_clusters=None,
            router_temperature=None, learning_rate=1e-3, zero_stage=0, num_workers=1, model="m", seed=0,
            scoring="cloze", phase="final"))
    append_rows(lb, rows)
    preds = read_predictions(tmp_path / PREDICTIONS_FILE)
    assert mismatches(read_rows(lb).to_pandas(), preds).empty

    # a stored prediction that disagrees with its log-likelihoods is caught
    flipped = preds.copy()
    flipped.loc[0, "pred"] = (flipped.loc[0, "pred"] + 1) % len(flipped.loc[0, "option_loglikes"])
    bad = mismatches(read_rows(lb).to_pandas(), flipped)
    assert bad.dataset.tolist() == ["boolq"]


def test_append_keeps_earlier_rows_and_dedupes_like_the_leaderboard(tmp_path):
    path = tmp_path / PREDICTIONS_FILE
    ex = _examples("boolq", 5)
    ll = _loglikes(ex)
    assert append_predictions(path, _rows(ex, ll, trial_id="t0")) == 5
    assert append_predictions(path, _rows(ex, ll, trial_id="t1")) == 5
    # dedupe skips rows already recorded, keeps new ones (another seed is another record)
    again = _rows(ex, ll, trial_id="t1") + _rows(ex[:2], ll[:2], trial_id="t1", seed=1)
    assert append_predictions(path, again, dedupe=True) == 2
    # without dedupe, rows are appended as given, as append_rows does
    assert append_predictions(path, _rows(ex[:1], ll[:1], trial_id="t0")) == 1
    df = read_predictions(path)
    assert len(df) == 13 and df.groupby("trial_id").size().to_dict() == {"t0": 6, "t1": 7}
    assert pq.read_table(path).schema == SCHEMA
    assert not list(tmp_path.glob("*.tmp"))
    # filtering while reading
    assert len(read_predictions(path, study="s", roles=["report"], phases=["final"], columns=["pred"])) == 13
    assert read_predictions(path, study="other").empty


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(role="train"), "role 'train'"),
    (lambda r: r.update(phase="warmup"), "phase 'warmup'"),
    (lambda r: r.update(pred=9), "pred=9"),
    (lambda r: r.update(option_bytes=[1]), "byte lengths"),
    (lambda r: r.pop("example_id"), "missing column(s) example_id"),
    (lambda r: r.update(extra=1), "unknown column(s) extra"),
])
def test_bad_rows_are_refused_and_the_file_is_untouched(tmp_path, mutate, message):
    path = tmp_path / PREDICTIONS_FILE
    ex = _examples("boolq", 3, cloze=False)
    append_predictions(path, _rows(ex, _loglikes(ex)))
    before = path.read_bytes()
    rows = _rows(ex, _loglikes(ex), trial_id="t9")
    mutate(rows[1])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        append_predictions(path, rows)
    assert path.read_bytes() == before


def test_an_example_twice_in_one_append_is_refused(tmp_path):
    ex = _examples("boolq", 2)
    rows = _rows(ex, _loglikes(ex))
    with pytest.raises(ValueError, match="recorded twice"):
        append_predictions(tmp_path / PREDICTIONS_FILE, rows + rows[:1])
    assert not (tmp_path / PREDICTIONS_FILE).exists()


def test_crash_while_writing_leaves_old_file_byte_identical(tmp_path, monkeypatch):
    path = tmp_path / PREDICTIONS_FILE
    ex = _examples("boolq", 4)
    append_predictions(path, _rows(ex, _loglikes(ex)))
    before = path.read_bytes()

    def half_write_then_crash(table, where, **kw):
        where.write(b"PAR1" + b"\0" * 100)
        raise KeyboardInterrupt("killed mid-write")

    # the write the leaderboard uses is the one that runs (harness.records.write_table_atomic)
    monkeypatch.setattr(records.pq, "write_table", half_write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        append_predictions(path, _rows(ex, _loglikes(ex), trial_id="t1"))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [PREDICTIONS_FILE]


# A separate interpreter per writer (no fork of the test process): rows built by hand, four appends each.
_WRITER = """
import sys
from harness.predictions import append_predictions
from harness.records import now_utc
path, worker = sys.argv[1], int(sys.argv[2])
for j in range(4):
    append_predictions(path, [dict(
        study="s", trial_id=f"w{worker}_{j}", phase="final", method="lora", seed=0, dataset="boolq",
        split="validation", role="report", example_id=f"boolq-{i}", gold=0, pred=i % 2, pred_norm=0,
        option_loglikes=[-1.0, -2.0], option_bytes=[1, 1], created_at=now_utc()) for i in range(20)])
"""


def test_concurrent_appends_from_two_processes_lose_nothing(tmp_path):
    path = tmp_path / PREDICTIONS_FILE
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w)], cwd=REPO) for w in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    df = read_predictions(path)
    assert len(df) == 2 * 4 * 20
    assert sorted(df.trial_id.unique()) == sorted(f"w{w}_{j}" for w in range(2) for j in range(4))


def test_reading_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_predictions(tmp_path / "nope.parquet")
    foreign = tmp_path / "foreign.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(foreign)
    with pytest.raises(ValueError, match="not a predictions file"):
        read_predictions(foreign)
    ex = _examples("boolq", 1)
    with pytest.raises(ValueError, match="not a predictions file"):
        append_predictions(foreign, _rows(ex, _loglikes(ex)))


def test_studies_are_listed_oldest_first(tmp_path):
    path = tmp_path / PREDICTIONS_FILE
    ex = _examples("boolq", 2)
    append_predictions(path, _rows(ex, _loglikes(ex), study="zeta"))
    append_predictions(path, _rows(ex, _loglikes(ex), study="alpha"))
    assert predictions.studies(path) == ["zeta", "alpha"]


def test_split_defaults_to_the_datasets_own_split_name():
    ex = _examples("anli", 2, cloze=False)
    rows = prediction_rows(ex, _loglikes(ex), study="s", trial_id="t", phase="final", method="lora", seed=0,
                           role="report")
    assert {r["split"] for r in rows} == {"dev_r1"}
    rows = prediction_rows(ex, _loglikes(ex), study="s", trial_id="t", phase="search", method="lora", seed=0,
                           role="selection")
    assert {r["split"] for r in rows} == {"train_r1[selection]"}
    with pytest.raises(ValueError, match="2 examples but 1"):
        prediction_rows(ex, _loglikes(ex)[:1], study="s", trial_id="t", phase="final", method="lora", seed=0,
                        role="report")
